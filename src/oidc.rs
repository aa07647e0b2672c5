//! The OpenID Connect relying party: discovery (with fallback to the configured URLs), the
//! authorization request (code flow, PKCE S256, state, nonce), the code exchange, ID token
//! verification and the userinfo identity.
//!
//! Invariants: `oidc` never touches Matomo nor a session (callers pass the pending state in and
//! get an identity out); HTTP redirects are never followed; every provider call has a timeout;
//! a token, code or secret is never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    ClaimsVerificationError, ClientId, ClientSecret, IssuerUrl, Nonce, PkceCodeChallenge,
};
use secrecy::ExposeSecret;
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use crate::config::{Config, ProviderConfig, TokenAuthMethod};
use crate::error::Error;
use crate::session::PendingAuth;
use crate::util::now_ms;

/// The provider's endpoints as resolved (discovery, else configuration).
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Expected `iss` of ID tokens.
    pub issuer: Option<String>,
    pub authorize: Url,
    pub token: Url,
    pub userinfo: Url,
    pub jwks: Option<CoreJsonWebKeySet>,
    pub end_session: Option<Url>,
    /// What discovery says of back-channel logout (`None`: not said, or no discovery).
    pub backchannel_logout_supported: Option<bool>,
    pub backchannel_logout_session_supported: Option<bool>,
    pub from_discovery: bool,
}

/// A signed-in person, as the provider vouches for them.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub id_token: Option<String>,
    pub email: Option<String>,
    /// The provider's session id (`sid` of the verified ID token), for back-channel logout.
    pub sid: Option<String>,
    /// The verified ID token's `sub`.
    pub id_sub: Option<String>,
    /// Every claim the provider gave: the userinfo answer, plus the verified ID token's claims
    /// for the names userinfo lacks (`[access]` and `[provision]` read them).
    pub claims: serde_json::Value,
}

/// What a verified back-channel logout token names (at least one of the two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutClaims {
    pub jti: String,
    pub sub: Option<String>,
    pub sid: Option<String>,
}

/// The event a logout token must carry.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How old a logout token's `iat` may be (and so how long its `jti` is remembered).
pub const LOGOUT_TOKEN_MAX_AGE: Duration = Duration::from_secs(300);
/// Clock skew allowed for a logout token issued "in the future".
const LOGOUT_TOKEN_SKEW: i64 = 60;

pub struct Oidc {
    cfg: ProviderConfig,
    client_id: String,
    client_secret: secrecy::SecretString,
    redirect_uri: String,
    /// The issuer recorded with links: stable whether discovery works or not.
    pub identity_issuer: String,
    http: reqwest::Client,
    cache: Mutex<Option<(Arc<Endpoints>, Instant)>>,
    /// When an unknown `kid` in a logout token last made unikgate fetch the keys again: at most
    /// once a minute, so that unauthenticated posts cannot make it hammer the provider.
    logout_refetch: Mutex<Option<Instant>>,
}

const CACHE_OK: Duration = Duration::from_secs(600);
const CACHE_FALLBACK: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: Option<Url>,
    token_endpoint: Option<Url>,
    userinfo_endpoint: Option<Url>,
    jwks_uri: Option<Url>,
    end_session_endpoint: Option<Url>,
    backchannel_logout_supported: Option<bool>,
    backchannel_logout_session_supported: Option<bool>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

fn alg(name: &str) -> Option<CoreJwsSigningAlgorithm> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

fn trim_slash(s: &str) -> &str {
    s.trim_end_matches('/')
}

/// Classifies a failed HTTP call to the provider.
fn send_error(what: &str, e: &reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        " (timed out)"
    } else if e.is_connect() {
        " (could not connect)"
    } else {
        ""
    };
    Error::ProviderUnreachable(crate::error::Cause::msg(format!(
        "{what}{kind}: {}",
        without_url(e)
    )))
}

/// reqwest errors print the URL, which for the token call holds nothing secret, but for an
/// authorize-style URL could; strip it everywhere for a uniform rule.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<url>");
    }
    s
}

impl Oidc {
    /// None when the provider credentials are missing (unikgate then fails closed).
    pub fn new(cfg: &Config) -> Result<Option<Oidc>, String> {
        let p = &cfg.provider;
        let (Some(client_id), Some(secret)) = (&p.client_id, &p.client_secret) else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(p.timeout)
            .connect_timeout(p.timeout)
            .user_agent(concat!("unikgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let identity_issuer = match &p.issuer {
            Some(i) => trim_slash(i.as_str()).to_string(),
            None => p.token_url.origin().ascii_serialization(),
        };
        Ok(Some(Oidc {
            cfg: p.clone(),
            client_id: client_id.clone(),
            client_secret: secret.clone(),
            redirect_uri: cfg.redirect_uri(),
            identity_issuer,
            http,
            cache: Mutex::new(None),
            logout_refetch: Mutex::new(None),
        }))
    }

    /// The endpoints, from a cached discovery (10 min) or the configuration (retried after 1 min).
    pub async fn endpoints(&self) -> Arc<Endpoints> {
        let mut cache = self.cache.lock().await;
        if let Some((e, at)) = cache.as_ref() {
            let ttl = if e.from_discovery {
                CACHE_OK
            } else {
                CACHE_FALLBACK
            };
            if at.elapsed() < ttl {
                return e.clone();
            }
        }
        let e = Arc::new(self.resolve().await);
        *cache = Some((e.clone(), Instant::now()));
        e
    }

    /// Forgets cached endpoints and keys (after a signature failure: keys may have rotated).
    pub async fn forget(&self) {
        *self.cache.lock().await = None;
    }

    async fn resolve(&self) -> Endpoints {
        let p = &self.cfg;
        let mut fallback = Endpoints {
            issuer: p
                .issuer
                .as_ref()
                .map(|i| trim_slash(i.as_str()).to_string()),
            authorize: p.authorize_url.clone(),
            token: p.token_url.clone(),
            userinfo: p.userinfo_url.clone(),
            jwks: None,
            end_session: p.end_session_url.clone(),
            backchannel_logout_supported: None,
            backchannel_logout_session_supported: None,
            from_discovery: false,
        };
        if let Some(issuer) = &p.issuer {
            match self.discover(issuer).await {
                Ok(e) => return e,
                Err(why) => {
                    tracing::warn!(issuer = %issuer, reason = %why, "discovery failed; using the configured provider URLs")
                }
            }
        }
        if let Some(j) = &p.jwks_url {
            match self.fetch_jwks(j).await {
                Ok(k) => fallback.jwks = Some(k),
                Err(why) => {
                    tracing::warn!(jwks = %j, reason = %why, "cannot fetch the provider's keys; ID tokens will not be verified")
                }
            }
        }
        fallback
    }

    async fn discover(&self, issuer: &Url) -> Result<Endpoints, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            trim_slash(issuer.as_str())
        );
        let res = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| without_url(&e))?;
        if !res.status().is_success() {
            return Err(format!("HTTP {}", res.status().as_u16()));
        }
        let body = res.bytes().await.map_err(|e| without_url(&e))?;
        let d: Discovery =
            serde_json::from_slice(&body).map_err(|e| format!("not a discovery document: {e}"))?;
        if trim_slash(&d.issuer) != trim_slash(issuer.as_str()) {
            return Err(format!(
                "its issuer is {:?}, not {:?}",
                d.issuer,
                issuer.as_str()
            ));
        }
        let p = &self.cfg;
        let jwks_url = d.jwks_uri.or_else(|| p.jwks_url.clone());
        let jwks = match &jwks_url {
            Some(u) => Some(self.fetch_jwks(u).await?),
            None => None,
        };
        Ok(Endpoints {
            issuer: Some(trim_slash(&d.issuer).to_string()),
            authorize: d
                .authorization_endpoint
                .unwrap_or_else(|| p.authorize_url.clone()),
            token: d.token_endpoint.unwrap_or_else(|| p.token_url.clone()),
            userinfo: d
                .userinfo_endpoint
                .unwrap_or_else(|| p.userinfo_url.clone()),
            jwks,
            end_session: p.end_session_url.clone().or(d.end_session_endpoint),
            backchannel_logout_supported: d.backchannel_logout_supported,
            backchannel_logout_session_supported: d.backchannel_logout_session_supported,
            from_discovery: true,
        })
    }

    async fn fetch_jwks(&self, url: &Url) -> Result<CoreJsonWebKeySet, String> {
        let res = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| without_url(&e))?;
        if !res.status().is_success() {
            return Err(format!("jwks: HTTP {}", res.status().as_u16()));
        }
        let body = res.bytes().await.map_err(|e| without_url(&e))?;
        serde_json::from_slice(&body).map_err(|e| format!("jwks is not a JSON Web Key Set: {e}"))
    }

    /// Begins a sign-in: the provider URL to send the browser to, and the state to keep.
    pub async fn start(&self, rd: String) -> (Url, PendingAuth) {
        let ep = self.endpoints().await;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = crate::util::random_token();
        let nonce = Nonce::new_random();
        let mut url = ep.authorize.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &self.cfg.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", nonce.secret())
            .append_pair("code_challenge", challenge.as_str())
            .append_pair("code_challenge_method", "S256");
        let pending = PendingAuth {
            state,
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            rd,
            created: now_ms(),
        };
        (url, pending)
    }

    /// Completes a sign-in: exchanges the code, verifies the ID token when keys are known, reads
    /// the identity from userinfo.
    pub async fn finish(&self, pending: &PendingAuth, code: &str) -> Result<Identity, Error> {
        let ep = self.endpoints().await;
        let tokens = self.exchange(&ep, pending, code).await?;
        // Verified when keys are known, or when a shared-secret algorithm (HS*) is allowed: its
        // key is the client secret.
        let hs = self.cfg.id_token_algs.iter().any(|a| a.starts_with("HS"));
        let id_sub = match (&tokens.id_token, &ep.jwks) {
            (Some(raw), Some(keys)) => {
                Some(self.verify_id_token(&ep, keys, raw, &pending.nonce).await?)
            }
            (Some(raw), None) if hs => {
                let none = CoreJsonWebKeySet::new(Vec::new());
                Some(
                    self.verify_id_token(&ep, &none, raw, &pending.nonce)
                        .await?,
                )
            }
            _ => None,
        };
        let info = self.userinfo(&ep, &tokens.access_token).await?;
        let subject = claim(&info, &self.cfg.userinfo_id)
            .or_else(|| {
                (self.cfg.userinfo_id == "sub")
                    .then(|| claim(&info, "id"))
                    .flatten()
            })
            .ok_or_else(|| {
                Error::ProviderBadAnswer(format!(
                    "the userinfo answer has no {:?} claim (provider.userinfo_id)",
                    self.cfg.userinfo_id
                ))
            })?;
        if let Some(sub) = &id_sub {
            if *sub != subject {
                tracing::warn!(target: "unikgate::audit", event = "refused", reason = "userinfo identity differs from the ID token subject");
                return Err(Error::SignInRejected(
                    "the userinfo identity does not match the ID token",
                ));
            }
        }
        // Read from the token only once it was verified above.
        let payload = id_sub
            .is_some()
            .then(|| tokens.id_token.as_deref().and_then(jwt_payload))
            .flatten();
        let sid = payload.as_ref().and_then(|p| claim(p, "sid"));
        let mut claims = info;
        if let (Some(serde_json::Value::Object(token)), Some(all)) =
            (payload, claims.as_object_mut())
        {
            for (k, v) in token {
                all.entry(k).or_insert(v);
            }
        }
        let email = claim(&claims, "email");
        Ok(Identity {
            issuer: self.identity_issuer.clone(),
            subject,
            id_token: tokens.id_token,
            email,
            sid,
            id_sub,
            claims,
        })
    }

    async fn exchange(
        &self,
        ep: &Endpoints,
        pending: &PendingAuth,
        code: &str,
    ) -> Result<TokenAnswer, Error> {
        let secret = self.client_secret.expose_secret();
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.redirect_uri),
            ("code_verifier", &pending.pkce_verifier),
        ];
        let mut req = self
            .http
            .post(ep.token.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        match self.cfg.token_auth_method {
            TokenAuthMethod::Basic => {
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                req = req.basic_auth(enc(&self.client_id), Some(enc(secret)));
            }
            TokenAuthMethod::Post => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", secret));
            }
        }
        let res = req
            .form(&form)
            .send()
            .await
            .map_err(|e| send_error("token", &e))?;
        let status = res.status();
        let ctype = content_type(&res);
        let body = res.bytes().await.map_err(|e| send_error("token", &e))?;
        if status.is_success() {
            return serde_json::from_slice::<TokenAnswer>(&body).map_err(|_| {
                Error::ProviderBadAnswer(format!(
                    "the token endpoint answered {status} with {ctype}, not a token response"
                ))
            });
        }
        let err = serde_json::from_slice::<ErrorAnswer>(&body)
            .ok()
            .map(|e| e.error);
        tracing::warn!(
            status = status.as_u16(),
            error = err.as_deref().unwrap_or("-"),
            "token endpoint refused the code"
        );
        match err.as_deref() {
            Some("invalid_client") | Some("unauthorized_client") => {
                Err(Error::ProviderClientRejected)
            }
            _ if status == reqwest::StatusCode::UNAUTHORIZED => Err(Error::ProviderClientRejected),
            Some("invalid_grant") => Err(Error::SignInRejected(
                "the sign-in code was already used or has expired",
            )),
            Some(e) => Err(Error::ProviderError(
                e.chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(64)
                    .collect(),
            )),
            None => Err(Error::ProviderBadAnswer(format!(
                "the token endpoint answered {status} with {ctype}"
            ))),
        }
    }

    async fn verify_id_token(
        &self,
        ep: &Endpoints,
        keys: &CoreJsonWebKeySet,
        raw: &str,
        nonce: &str,
    ) -> Result<String, Error> {
        let token: CoreIdToken = raw
            .parse()
            .map_err(|_| Error::SignInRejected("the ID token is malformed"))?;
        // With `issuer = "none"` and no discovery, the issuer is unknown: `iss` cannot be checked.
        let check_iss = ep.issuer.is_some();
        let issuer = ep
            .issuer
            .clone()
            .unwrap_or_else(|| self.identity_issuer.clone());
        let issuer = IssuerUrl::new(issuer)
            .map_err(|_| Error::Internal("the issuer is not a URL".into()))?;
        let algs: Vec<CoreJwsSigningAlgorithm> = self
            .cfg
            .id_token_algs
            .iter()
            .filter_map(|a| alg(a))
            .collect();
        let verifier = CoreIdTokenVerifier::new_confidential_client(
            ClientId::new(self.client_id.clone()),
            ClientSecret::new(self.client_secret.expose_secret().to_string()),
            issuer,
            keys.clone(),
        )
        .set_allowed_algs(algs)
        .require_issuer_match(check_iss);
        let expected = Nonce::new(nonce.to_string());
        match token.claims(&verifier, &expected) {
            Ok(c) => Ok(c.subject().as_str().to_string()),
            Err(e) => {
                if matches!(e, ClaimsVerificationError::SignatureVerification(_)) {
                    self.forget().await;
                }
                let why = match e {
                    ClaimsVerificationError::Expired(_) => "the ID token has expired",
                    ClaimsVerificationError::InvalidAudience(_) => {
                        "the ID token is for another application"
                    }
                    ClaimsVerificationError::InvalidIssuer(_) => {
                        "the ID token comes from another issuer"
                    }
                    ClaimsVerificationError::InvalidNonce(_) => {
                        "the ID token does not belong to this sign-in (nonce)"
                    }
                    ClaimsVerificationError::SignatureVerification(_) => {
                        "the ID token signature is not valid"
                    }
                    _ => "the ID token is not valid",
                };
                tracing::warn!(target: "unikgate::audit", event = "refused", reason = why);
                Err(Error::SignInRejected(why))
            }
        }
    }

    async fn userinfo(
        &self,
        ep: &Endpoints,
        access_token: &str,
    ) -> Result<serde_json::Value, Error> {
        let res = self
            .http
            .get(ep.userinfo.clone())
            .bearer_auth(access_token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| send_error("userinfo", &e))?;
        let status = res.status();
        let ctype = content_type(&res);
        let body = res.bytes().await.map_err(|e| send_error("userinfo", &e))?;
        if !status.is_success() {
            return Err(Error::ProviderBadAnswer(format!(
                "the userinfo endpoint answered {status}"
            )));
        }
        if ctype.starts_with("application/jwt") {
            return Err(Error::ProviderBadAnswer(
                "signed userinfo answers (application/jwt) are not supported".into(),
            ));
        }
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) if v.is_object() => Ok(v),
            _ => Err(Error::ProviderBadAnswer(format!(
                "the userinfo endpoint answered {ctype}, not a JSON object"
            ))),
        }
    }

    /// The RP-initiated logout URL, when the provider has one.
    pub async fn end_session_url(&self, id_token: Option<&str>, post_logout: &str) -> Option<Url> {
        let ep = self.endpoints().await;
        let mut url = ep.end_session.clone()?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(t) = id_token {
                q.append_pair("id_token_hint", t);
            }
            q.append_pair("post_logout_redirect_uri", post_logout);
            q.append_pair("client_id", &self.client_id);
        }
        Some(url)
    }

    /// Verifies a back-channel logout token (OpenID Connect Back-Channel Logout 1.0, 2.6): signed
    /// with the provider's keys in one of the ID token algorithms, `iss` the provider, `aud`
    /// holding the client id, `iat` recent, `events` holding the back-channel event, `sub` and/or
    /// `sid`, no `nonce`. The `jti` is returned for the caller to use once. `Err`: why, for the
    /// audit log and the `error_description`.
    pub async fn verify_logout_token(&self, raw: &str) -> Result<LogoutClaims, String> {
        use base64::Engine;
        use openidconnect::JsonWebKey;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = raw.trim().split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a signed JWT (three parts)".into());
        };
        let header = b64_json(h).ok_or("unreadable JWT header")?;
        let alg_name = header["alg"].as_str().unwrap_or("");
        if alg_name.eq_ignore_ascii_case("none")
            || !self.cfg.id_token_algs.iter().any(|a| a == alg_name)
        {
            return Err(format!(
                "algorithm {alg_name:?} is not one of provider.id_token_algs"
            ));
        }
        if let Some(typ) = header.get("typ").and_then(|t| t.as_str()) {
            if !["JWT", "logout+jwt", "application/logout+jwt"]
                .iter()
                .any(|t| t.eq_ignore_ascii_case(typ))
            {
                return Err(format!("typ {typ:?} is not a logout token"));
            }
        }
        let algorithm = alg(alg_name).ok_or("unknown algorithm")?;
        let signature = b64.decode(sig).map_err(|_| "unreadable signature")?;
        let message = format!("{h}.{p}");
        let kid = header["kid"].as_str();
        let mut verified = false;
        if alg_name.starts_with("HS") {
            let key = openidconnect::core::CoreJsonWebKey::new_symmetric(
                self.client_secret.expose_secret().as_bytes().to_vec(),
            );
            verified = key
                .verify_signature(&algorithm, message.as_bytes(), &signature)
                .is_ok();
        } else {
            // Keys may have rotated since they were fetched: a `kid` the cached set does not hold
            // fetches them again, at most once a minute (anybody can post to this endpoint; a known
            // `kid` with a wrong signature never causes a fetch).
            for attempt in 0..2 {
                let ep = self.endpoints().await;
                let Some(keys) = &ep.jwks else {
                    return Err("the provider's keys are unknown (no jwks_uri)".into());
                };
                let candidates: Vec<_> = keys
                    .keys()
                    .iter()
                    .filter(|k| kid.is_none() || k.key_id().map(|i| i.as_str()) == kid)
                    .collect();
                verified = candidates.iter().any(|k| {
                    k.verify_signature(&algorithm, message.as_bytes(), &signature)
                        .is_ok()
                });
                if verified || attempt == 1 || !candidates.is_empty() {
                    break;
                }
                let mut last = self.logout_refetch.lock().await;
                if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
                    break;
                }
                *last = Some(Instant::now());
                drop(last);
                self.forget().await;
            }
        }
        if !verified {
            return Err("signature is not the provider's".into());
        }
        let c = b64_json(p).ok_or("unreadable claims")?;
        let ep = self.endpoints().await;
        let issuer = ep
            .issuer
            .clone()
            .unwrap_or_else(|| self.identity_issuer.clone());
        if c["iss"].as_str().map(trim_slash) != Some(trim_slash(&issuer)) {
            return Err("iss is not the provider".into());
        }
        let aud_ok = match &c["aud"] {
            serde_json::Value::String(a) => *a == self.client_id,
            serde_json::Value::Array(v) => v.iter().any(|a| a.as_str() == Some(&self.client_id)),
            _ => false,
        };
        if !aud_ok {
            return Err("aud does not name this client".into());
        }
        let now = now_ms() / 1000;
        let iat = c["iat"].as_i64().ok_or("no iat")?;
        if iat > now + LOGOUT_TOKEN_SKEW {
            return Err("iat is in the future".into());
        }
        if now - iat > LOGOUT_TOKEN_MAX_AGE.as_secs() as i64 {
            return Err("iat is too old".into());
        }
        if let Some(exp) = c.get("exp").and_then(|e| e.as_i64()) {
            if exp + LOGOUT_TOKEN_SKEW < now {
                return Err("the token has expired".into());
            }
        }
        if !c["events"]
            .as_object()
            .is_some_and(|e| e.get(BACKCHANNEL_EVENT).is_some_and(|v| v.is_object()))
        {
            return Err("events does not hold the back-channel logout event".into());
        }
        if c.get("nonce").is_some() {
            return Err("a logout token carries no nonce".into());
        }
        let text = |k: &str| {
            c.get(k)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty() && s.len() <= 1024)
                .map(str::to_string)
        };
        let (sub, sid) = (text("sub"), text("sid"));
        if sub.is_none() && sid.is_none() {
            return Err("neither sub nor sid".into());
        }
        let jti = text("jti").ok_or("no jti")?;
        Ok(LogoutClaims { jti, sub, sid })
    }

    /// The provider's authorization origin (for the pages' `form-action`).
    pub fn authorize_origin(cfg: &Config) -> String {
        cfg.provider.authorize_url.origin().ascii_serialization()
    }

    /// For `doctor`: the token endpoint's verdict on a made-up code.
    pub async fn probe_credentials(&self) -> Result<(), Error> {
        let ep = self.endpoints().await;
        let pending = PendingAuth {
            state: String::new(),
            nonce: String::new(),
            pkce_verifier: "unikgate-doctor-probe-verifier-0000000000000000".into(),
            rd: "/".into(),
            created: now_ms(),
        };
        match self
            .exchange(&ep, &pending, "unikgate-doctor-bogus-code")
            .await
        {
            Err(Error::SignInRejected(_)) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Err(Error::ProviderBadAnswer(
                "the token endpoint accepted a made-up code".into(),
            )),
        }
    }
}

/// The claims of a JWT, unverified: only for a token verified elsewhere.
fn jwt_payload(raw: &str) -> Option<serde_json::Value> {
    b64_json(raw.split('.').nth(1)?)
}

/// One part of a compact JWS: base64url (no padding) of a JSON value.
fn b64_json(part: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn content_type(res: &reqwest::Response) -> String {
    res.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no content type")
        .chars()
        .take(64)
        .collect()
}

/// A claim by dotted path (`attributes.uid`), as a string (numbers are accepted).
pub fn claim(v: &serde_json::Value, path: &str) -> Option<String> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Every value of a claim by dotted path: a string or number, or each string or number of a
/// list (booleans as `true`/`false`). Empty when the claim is absent.
pub fn claim_values(v: &serde_json::Value, path: &str) -> Vec<String> {
    let mut cur = v;
    for part in path.split('.') {
        match cur.get(part) {
            Some(next) => cur = next,
            None => return Vec::new(),
        }
    }
    fn scalar(v: &serde_json::Value) -> Option<String> {
        match v {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match cur {
        serde_json::Value::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

/// A boolean claim: `true`, or the string `"true"` that some providers send.
pub fn claim_bool(v: &serde_json::Value, path: &str) -> bool {
    matches!(claim_values(v, path).as_slice(), [one] if one == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_lists_and_booleans() {
        let v = serde_json::json!({
            "email_verified": true, "flag": "true", "no": false,
            "groups": ["a", "b", 3, {"x": 1}], "org": {"team": "red"}, "empty": ""
        });
        assert!(claim_bool(&v, "email_verified"));
        assert!(claim_bool(&v, "flag"));
        assert!(!claim_bool(&v, "no"));
        assert!(!claim_bool(&v, "missing"));
        assert!(!claim_bool(&v, "groups"));
        assert_eq!(claim_values(&v, "groups"), vec!["a", "b", "3"]);
        assert_eq!(claim_values(&v, "org.team"), vec!["red"]);
        assert!(claim_values(&v, "empty").is_empty());
        assert!(claim_values(&v, "org").is_empty());
    }

    #[test]
    fn claims_by_path() {
        let v = serde_json::json!({"sub": "s1", "id": 7, "attributes": {"uid": "u1"}});
        assert_eq!(claim(&v, "sub").as_deref(), Some("s1"));
        assert_eq!(claim(&v, "id").as_deref(), Some("7"));
        assert_eq!(claim(&v, "attributes.uid").as_deref(), Some("u1"));
        assert_eq!(claim(&v, "attributes.none"), None);
    }

    #[test]
    fn algorithms_parse() {
        assert!(alg("RS256").is_some());
        assert!(alg("nope").is_none());
    }
}
