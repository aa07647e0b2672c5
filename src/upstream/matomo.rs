//! unikgate's own calls to Matomo, exactly as `matomo-contract.md` describes them: minting a
//! session (the [`Minter`] seam: the UnikGate plugin's signed assertions, or AutoLogin), proving an account by password, asking who owns a
//! Matomo session, and logging a session out.
//!
//! Invariants: `matomo` never touches unikgate's session or the provider; a password or an API
//! token never leaves a function's stack (not stored, not logged); a cookie Matomo sets on an
//! answer to these calls never reaches the browser except the one [`Minter::mint`] returns.

use std::net::IpAddr;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, COOKIE, SET_COOKIE};
use http::{Method, StatusCode};

use crate::config::SiteAccess;
use crate::error::{Error, MintBy};
use crate::upstream::proxy::{Answer, Upstream};

pub use crate::config::MATOMO_COOKIE;

/// Mints a genuine Matomo session for a login, and tells who owns one.
#[async_trait]
pub trait Minter: Send + Sync + 'static {
    /// Returns the new `MATOMO_SESSID` value.
    async fn mint(&self, up: &Upstream, login: &str, client_ip: IpAddr) -> Result<String, Error>;
    fn name(&self) -> &'static str;
    /// Who owns a Matomo session (`None`: anonymous). Default: the contract's login-page probe.
    async fn who_am_i(
        &self,
        up: &Upstream,
        cookie_value: &str,
        client_ip: IpAddr,
    ) -> Result<Option<String>, Error> {
        who_am_i(up, cookie_value, client_ip).await
    }
    /// Whether `login` is a Matomo superuser now (asked at this moment: a superuser demoted in
    /// Matomo is seen at once). Default: the page Matomo renders for the browser's session
    /// (`matomo_cookie`) says it (`piwik.hasSuperUserAccess`) and is `login`'s.
    async fn is_superuser(
        &self,
        up: &Upstream,
        login: &str,
        matomo_cookie: Option<&str>,
        client_ip: IpAddr,
    ) -> Result<bool, Error> {
        let Some(cookie) = matomo_cookie else {
            return Ok(false);
        };
        let a = get_with_cookie(
            up,
            "/index.php?module=UsersManager&action=userSettings",
            cookie,
            client_ip,
        )
        .await?;
        let html = String::from_utf8_lossy(&a.body);
        Ok(a.status == StatusCode::OK
            && parse_user_login(&html).as_deref() == Some(login)
            && has_superuser_access(&html))
    }
    /// Makes a Matomo account and opens its first session. Default: not possible (only the
    /// UnikGate plugin makes accounts).
    async fn provision(
        &self,
        _up: &Upstream,
        _account: &NewAccount,
        _rd: &str,
        _client_ip: IpAddr,
    ) -> Result<Provisioned, Error> {
        Err(Error::ProvisionFailed(
            "accounts are made by the UnikGate plugin: set matomo.minter = \"signed\"".into(),
        ))
    }
    /// Sets a login's site access (`prune`: also removes access to sites not in `access`).
    async fn set_access(
        &self,
        _up: &Upstream,
        _login: &str,
        _access: &[SiteAccess],
        _prune: bool,
        _client_ip: IpAddr,
    ) -> Result<AccessChange, Error> {
        Err(Error::ProvisionFailed(
            "site access is set by the UnikGate plugin: set matomo.minter = \"signed\"".into(),
        ))
    }
}

/// A Matomo account to make for a person signing in for the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    pub login: String,
    pub email: String,
    /// Never superuser (the plugin refuses anything but view, write and admin).
    pub access: Vec<SiteAccess>,
    /// Who the account is made for: SHA-256 (hex) of the provider and the subject, so that a
    /// retry after a lost answer finds the account made for the same person.
    pub owner: String,
}

/// What the plugin did with a [`NewAccount`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    /// Made (or found made for the same person): the new session's `MATOMO_SESSID`.
    Created(String),
    /// An account with that login exists (made by somebody else, or by hand).
    LoginExists(String),
    /// An account with that e-mail exists: its login.
    EmailExists(String),
}

/// What a [`Minter::set_access`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct AccessChange {
    /// Site id → the access now given (only what changed).
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Sites whose access was removed.
    #[serde(default)]
    pub removed: Vec<u64>,
    /// The login is a superuser: nothing was changed.
    #[serde(default)]
    pub superuser: bool,
}

/// `SHA-256(issuer "\n" subject)`, hex: [`NewAccount::owner`].
pub fn owner_of(issuer: &str, subject: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{issuer}\n{subject}").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// `{"1": "view", "3": "admin"}`: a site given twice keeps its highest access.
fn acc_claim(access: &[SiteAccess]) -> serde_json::Value {
    let mut m: std::collections::BTreeMap<String, crate::config::AccessLevel> = Default::default();
    for a in access {
        let e = m.entry(a.site.to_string()).or_insert(a.level);
        *e = (*e).max(a.level);
    }
    serde_json::Value::Object(
        m.into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v.as_str().into())))
            .collect(),
    )
}

/// The UnikGate plugin of this repository: `POST index.php?module=UnikGate&action=login` with a
/// compact HS256 JWS that is valid for 30 s and usable once.
pub struct Signed {
    secret: secrecy::SecretString,
    /// Matomo's base URL as Matomo computes it behind unikgate: the public origin and path, plus
    /// `/`.
    audience: String,
    /// The public URL's path where Matomo is (`""` or `"/analytics"`).
    base: String,
}

/// Lifetime of an assertion (the plugin accepts at most 60 s).
pub const ASSERTION_LIFETIME: u64 = 30;

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Signs claims as a compact JWS with header `{"alg":"HS256","typ":"JWT"}`.
pub fn sign_hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    use hmac::Mac;
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64(claims.to_string().as_bytes());
    let signing_input = format!("{head}.{body}");
    let sig = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(signing_input.as_bytes());
            b64(&mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!("{signing_input}.{sig}")
}

impl Signed {
    /// `public_base`: the public origin and path where Matomo is, without a trailing slash.
    pub fn new(secret: secrecy::SecretString, public_base: &str) -> Signed {
        let base = url::Url::parse(public_base)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        Signed {
            secret,
            audience: format!("{public_base}/"),
            base,
        }
    }

    /// An assertion for `login`, issued at `iat` (seconds), returning to `rd`.
    pub fn assertion(&self, login: &str, iat: u64, rd: &str) -> String {
        self.assertion_for("login", login, iat, rd, serde_json::Map::new())
    }

    /// An assertion for the plugin's action `act` (`login`, `provision`, `access`), with the
    /// action's own claims in `more`. The plugin refuses a token made for another action.
    pub fn assertion_for(
        &self,
        act: &str,
        login: &str,
        iat: u64,
        rd: &str,
        more: serde_json::Map<String, serde_json::Value>,
    ) -> String {
        use secrecy::ExposeSecret;
        let mut claims = serde_json::json!({
            "iss": "unikgate",
            "aud": self.audience,
            "sub": login,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME,
            "jti": crate::util::random_token(),
            "rd": rd,
        });
        if act != "login" {
            claims["act"] = act.into();
        }
        if let Some(c) = claims.as_object_mut() {
            c.extend(more);
        }
        sign_hs256(&claims, self.secret.expose_secret().as_bytes())
    }

    /// Posts an assertion to the plugin's action `act`.
    async fn post_to(
        &self,
        up: &Upstream,
        act: &str,
        assertion: &str,
        client_ip: IpAddr,
    ) -> Result<Answer, Error> {
        up.call(
            Method::POST,
            &format!("/index.php?module=UnikGate&action={act}"),
            HeaderMap::new(),
            Some(form(&[("assertion", assertion)])),
            client_ip,
        )
        .await
    }

    /// The plugin's refusal (`UnikGate: …` with a 400/403), or Matomo's answer to an action an
    /// old plugin does not have, in words.
    fn action_failed(&self, act: &str, a: &Answer) -> Error {
        if a.body.starts_with(b"UnikGate: ") {
            let reason = unikgate_reason(&a.body);
            return Error::ProvisionFailed(match audience_advice(&reason, &self.audience) {
                Some(advice) => format!("the UnikGate plugin refused: {reason} — {advice}"),
                None => format!("the UnikGate plugin refused: {reason}"),
            });
        }
        Error::ProvisionFailed(format!(
            "Matomo answered {} to the UnikGate plugin's {act} action: is the plugin 1.2.0 or later installed and activated?",
            a.status.as_u16()
        ))
    }

    /// Posts an assertion to the plugin.
    pub async fn post(
        &self,
        up: &Upstream,
        assertion: &str,
        client_ip: IpAddr,
    ) -> Result<Answer, Error> {
        up.call(
            Method::POST,
            "/index.php?module=UnikGate&action=login",
            HeaderMap::new(),
            Some(form(&[("assertion", assertion)])),
            client_ip,
        )
        .await
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The one-line reason of a UnikGate refusal.
pub fn unikgate_reason(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(1024)]);
    let line = text.lines().next().unwrap_or("").trim();
    line.strip_prefix("UnikGate: ")
        .unwrap_or(line)
        .chars()
        .take(400)
        .collect()
}

/// What the UnikGate plugin says of its Matomo after a refused assertion whose signature was good
/// (the `UnikGate-Facts:` line: only a holder of the shared secret reads it). Plugins before
/// unikgate 0.x's version checks send none.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Facts {
    /// Matomo's version, e.g. `5.14.1`.
    pub matomo: String,
    /// The URL Matomo computes for itself on this request (`Url::getCurrentUrlWithoutFileName`).
    pub sees: String,
    /// `[UnikGate] public_url` (the audience when set), `""` when unset.
    #[serde(default)]
    pub public_url: String,
    #[serde(default)]
    pub proxy_scheme_headers: Vec<String>,
    #[serde(default)]
    pub proxy_client_headers: Vec<String>,
    #[serde(default)]
    pub proxy_host_headers: Vec<String>,
    /// `UsersManager.logoutUser` exists (Matomo 5.9 and later).
    #[serde(default)]
    pub logout_user: bool,
    /// The plugin's actions (1.2.0 and later: `provision` and `access` for `[provision]`).
    #[serde(default)]
    pub actions: Vec<String>,
}

impl Facts {
    /// `(major, minor, patch)` of [`Facts::matomo`] (`5.14.0-b2` → `(5, 14, 0)`).
    pub fn version(&self) -> Option<(u16, u16, u16)> {
        let mut it = self.matomo.split(['.', '-']);
        let n = |p: Option<&str>| p.and_then(|p| p.parse::<u16>().ok());
        Some((n(it.next())?, n(it.next())?, n(it.next()).unwrap_or(0)))
    }
}

/// The facts line of a plugin refusal, if any.
pub fn unikgate_facts(body: &[u8]) -> Option<Facts> {
    let text = String::from_utf8_lossy(&body[..body.len().min(8192)]);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("UnikGate-Facts: "))?;
    serde_json::from_str(line.trim()).ok()
}

/// What to change when the plugin refused an assertion for its audience (`audience`: what
/// unikgate signed, `server.public_url` + `/`): the lines of `config.ini.php` that make Matomo
/// take it, the scheme one named first when Matomo sees the same host over plain http (Matomo
/// 5.7 and later ignore `X-Forwarded-Proto` unless `proxy_scheme_headers[]` names it).
pub fn audience_advice(reason: &str, audience: &str) -> Option<String> {
    if !reason.starts_with("wrong audience") {
        return None;
    }
    let public = audience.trim_end_matches('/');
    let plain = public
        .strip_prefix("https://")
        .map(|rest| format!("http://{rest}/"));
    let scheme_guessed = plain.as_deref().is_some_and(|p| reason.contains(p));
    let scheme_line = "[General] proxy_scheme_headers[] = \"HTTP_X_FORWARDED_PROTO\"";
    let url_line = format!("[UnikGate] public_url = \"{public}\"");
    Some(if scheme_guessed {
        format!(
            "Matomo believes its URL is http:// behind TLS: add {scheme_line} to its config.ini.php (Matomo 5.7 and later ignore X-Forwarded-Proto without it), and {url_line}; deploy/matomo-setup.sh writes both"
        )
    } else {
        format!(
            "Matomo does not take {public} as its own URL: add {url_line} and {scheme_line} to its config.ini.php, and the public host to [General] trusted_hosts[]; deploy/matomo-setup.sh writes them"
        )
    })
}

#[async_trait]
impl Minter for Signed {
    async fn mint(&self, up: &Upstream, login: &str, client_ip: IpAddr) -> Result<String, Error> {
        let a = self
            .post(
                up,
                &self.assertion(login, unix_now(), &format!("{}/index.php", self.base)),
                client_ip,
            )
            .await?;
        match a.status {
            StatusCode::FOUND | StatusCode::SEE_OTHER => set_cookie_value(&a.headers, MATOMO_COOKIE)
                .ok_or_else(|| Error::MintFailed(MintBy::Plugin, "the UnikGate plugin redirected without a session cookie".into())),
            StatusCode::FORBIDDEN if a.body.starts_with(b"UnikGate: ") => {
                let reason = unikgate_reason(&a.body);
                Err(Error::MintFailed(MintBy::Plugin, match audience_advice(&reason, &self.audience) {
                    Some(advice) => format!("the UnikGate plugin refused: {reason} — {advice}"),
                    None => format!("the UnikGate plugin refused: {reason}"),
                }))
            }
            s => Err(Error::MintFailed(MintBy::Plugin, format!(
                "Matomo answered {} to the UnikGate plugin's login (is the plugin installed and activated?)",
                s.as_u16()
            ))),
        }
    }

    fn name(&self) -> &'static str {
        "signed"
    }

    async fn provision(
        &self,
        up: &Upstream,
        account: &NewAccount,
        rd: &str,
        client_ip: IpAddr,
    ) -> Result<Provisioned, Error> {
        let mut more = serde_json::Map::new();
        more.insert("email".into(), account.email.clone().into());
        more.insert("acc".into(), acc_claim(&account.access));
        more.insert("owner".into(), account.owner.clone().into());
        let token = self.assertion_for("provision", &account.login, unix_now(), rd, more);
        let a = self.post_to(up, "provision", &token, client_ip).await?;
        match a.status {
            StatusCode::FOUND | StatusCode::SEE_OTHER => {
                const NO_COOKIE: &str =
                    "the UnikGate plugin made the account but answered without a session cookie";
                set_cookie_value(&a.headers, MATOMO_COOKIE)
                    .map(Provisioned::Created)
                    .ok_or_else(|| Error::ProvisionFailed(NO_COOKIE.into()))
            }
            StatusCode::CONFLICT if a.body.starts_with(b"UnikGate: exists ") => {
                let reason = unikgate_reason(&a.body);
                let rest = reason.strip_prefix("exists ").unwrap_or("");
                match rest.split_once(' ') {
                    Some(("login", l)) => Ok(Provisioned::LoginExists(l.trim().to_string())),
                    Some(("email", l)) => Ok(Provisioned::EmailExists(l.trim().to_string())),
                    _ => Err(self.action_failed("provision", &a)),
                }
            }
            _ => Err(self.action_failed("provision", &a)),
        }
    }

    async fn is_superuser(
        &self,
        up: &Upstream,
        login: &str,
        _matomo_cookie: Option<&str>,
        client_ip: IpAddr,
    ) -> Result<bool, Error> {
        let token = self.assertion_for("superuser", login, unix_now(), "/", serde_json::Map::new());
        let a = self.post_to(up, "superuser", &token, client_ip).await?;
        if a.status != StatusCode::OK {
            return Err(match self.action_failed("superuser", &a) {
                Error::ProvisionFailed(why) => Error::MatomoUnexpected(why),
                e => e,
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&a.body).map_err(|_| {
            Error::MatomoUnexpected(
                "the UnikGate plugin's superuser action did not answer JSON (is the plugin 1.2.0 or later?)".into(),
            )
        })?;
        Ok(v.get("login").and_then(|l| l.as_str()) == Some(login)
            && v.get("superuser").and_then(|s| s.as_bool()) == Some(true))
    }

    async fn set_access(
        &self,
        up: &Upstream,
        login: &str,
        access: &[SiteAccess],
        prune: bool,
        client_ip: IpAddr,
    ) -> Result<AccessChange, Error> {
        let mut more = serde_json::Map::new();
        more.insert("acc".into(), acc_claim(access));
        more.insert("prune".into(), prune.into());
        let token = self.assertion_for("access", login, unix_now(), "/", more);
        let a = self.post_to(up, "access", &token, client_ip).await?;
        if a.status != StatusCode::OK {
            return Err(self.action_failed("access", &a));
        }
        serde_json::from_slice(&a.body).map_err(|_| {
            Error::ProvisionFailed(
                "the UnikGate plugin's access action did not answer JSON (is the plugin 1.2.0 or later?)".into(),
            )
        })
    }

    async fn who_am_i(
        &self,
        up: &Upstream,
        cookie_value: &str,
        client_ip: IpAddr,
    ) -> Result<Option<String>, Error> {
        let a = get_with_cookie(
            up,
            "/index.php?module=UnikGate&action=whoami",
            cookie_value,
            client_ip,
        )
        .await?;
        let v: serde_json::Value = serde_json::from_slice(&a.body).map_err(|_| {
            Error::MatomoUnexpected(
                "UnikGate's whoami did not answer JSON (is the plugin active?)".into(),
            )
        })?;
        match v.get("login") {
            Some(serde_json::Value::String(l)) if !l.is_empty() => Ok(Some(l.clone())),
            Some(serde_json::Value::Null) => Ok(None),
            _ => Err(Error::MatomoUnexpected(
                "UnikGate's whoami answered without a login".into(),
            )),
        }
    }
}

/// The AutoLogin plugin: `GET index.php?module=AutoLogin&action=index` with exactly one
/// lowercase `matomo-username` header.
pub struct AutoLogin;

#[async_trait]
impl Minter for AutoLogin {
    async fn mint(&self, up: &Upstream, login: &str, client_ip: IpAddr) -> Result<String, Error> {
        let value = HeaderValue::from_str(login).map_err(|_| {
            Error::MintFailed(
                MintBy::AutoLogin,
                "the Matomo login cannot be sent in a header".into(),
            )
        })?;
        let a = up
            .call_as_user(
                Method::GET,
                "/index.php?module=AutoLogin&action=index",
                value,
                client_ip,
            )
            .await?;
        match a.status {
            StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::MOVED_PERMANENTLY
            | StatusCode::TEMPORARY_REDIRECT => set_cookie_value(&a.headers, MATOMO_COOKIE)
                .ok_or_else(|| {
                    Error::MintFailed(
                        MintBy::AutoLogin,
                        "Matomo redirected without a session cookie".into(),
                    )
                }),
            StatusCode::INTERNAL_SERVER_ERROR => Err(Error::MintFailed(
                MintBy::AutoLogin,
                autologin_message(&a.body),
            )),
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Err(Error::MintFailed(
                MintBy::AutoLogin,
                format!(
                    "Matomo answered {} to AutoLogin (is the plugin installed and activated?)",
                    a.status.as_u16()
                ),
            )),
            s => Err(Error::MintFailed(
                MintBy::AutoLogin,
                format!("Matomo answered {} to AutoLogin", s.as_u16()),
            )),
        }
    }

    fn name(&self) -> &'static str {
        "autologin"
    }
}

/// The message of an AutoLogin error page, as text (HTML tags removed, bounded).
pub fn autologin_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]);
    let known = [
        "No email address defined in the request header",
        "No username defined in the request header",
        "AutoRegistration is disabled",
    ];
    for k in known {
        if let Some(i) = text.find(k) {
            let rest = &text[i..];
            let end = rest.find(['<', '\n']).unwrap_or(rest.len()).min(300);
            return rest[..end].trim().to_string();
        }
    }
    "AutoLogin failed (Matomo answered 500)".into()
}

/// The value of cookie `name` in an answer's `Set-Cookie` headers (the last one wins).
pub fn set_cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = None;
    for v in headers.get_all(SET_COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        if let Ok(c) = cookie::Cookie::parse(s) {
            if c.name() == name && !c.value().is_empty() {
                found = Some(c.value().to_string());
            }
        }
    }
    found
}

/// `GET path` on Matomo with the Matomo session cookie `value` as the only cookie.
async fn get_with_cookie(
    up: &Upstream,
    path: &str,
    value: &str,
    client_ip: IpAddr,
) -> Result<Answer, Error> {
    let v = HeaderValue::from_str(&format!("{MATOMO_COOKIE}={value}"))
        .map_err(|_| Error::BadRequest("the Matomo cookie is not valid".into()))?;
    let mut h = HeaderMap::new();
    h.insert(COOKIE, v);
    up.call(Method::GET, path, h, None, client_ip).await
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn request_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    // The first one, as PHP's `$_COOKIE` keeps it.
    crate::session::cookie_values(headers, name)
        .next()
        .map(str::to_string)
}

/// What a password proof said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// The password is right and `login` is the account's login.
    Valid { login: String, superuser: bool },
    /// Wrong password, or no such user (Matomo does not tell them apart).
    WrongPassword,
    /// The password is right for what was typed, but it is not the login (an email).
    NotTheLogin,
    /// The account uses two-factor authentication and no code was sent (the password was right:
    /// Matomo asks for the code only then).
    CodeRequired,
    /// The two-factor code was wrong, or already used.
    WrongCode,
    /// Matomo requires two-factor authentication for every account, and this one has none yet.
    TwoFactorSetupRequired,
    /// Matomo's brute-force protection blocks logins from this client address for now.
    Blocked,
}

/// Matomo's own words (English and French) for the proof's refusals that are not a wrong password.
fn classify_refusal(status: StatusCode, message: &str, sent_code: bool) -> Option<Proof> {
    let m = message.to_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    if any(&["too many failed logins", "trop de connexions"]) {
        return Some(Proof::Blocked);
    }
    if any(&[
        "must set up two-factor",
        "devez configurer l'authentification",
    ]) {
        return Some(Proof::TwoFactorSetupRequired);
    }
    // TwoFactorAuth answers 401 only once the password is right: a code is missing or wrong.
    if status == StatusCode::UNAUTHORIZED
        || any(&["two-factor authentication code", "code d'authentification"])
    {
        return Some(if sent_code {
            Proof::WrongCode
        } else {
            Proof::CodeRequired
        });
    }
    None
}

fn form(pairs: &[(&str, &str)]) -> Bytes {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    Bytes::from(s.finish())
}

fn json(a: &Answer) -> Result<serde_json::Value, Error> {
    serde_json::from_slice(&a.body).map_err(|_| {
        Error::MatomoUnexpected(format!(
            "the API answered {} with something that is not JSON",
            a.status.as_u16()
        ))
    })
}

/// Proves a Matomo account by its password (and, for an account with two-factor authentication,
/// the current code, sent as Matomo's `authCode`) through Matomo's own API (contract: "Proving a
/// Matomo account by password"). The app token Matomo returns is used once and dropped.
pub async fn prove_password(
    up: &Upstream,
    login: &str,
    password: &str,
    auth_code: Option<&str>,
    client_ip: IpAddr,
) -> Result<Proof, Error> {
    let mut fields = vec![
        ("userLogin", login),
        ("passwordConfirmation", password),
        ("description", "unikgate account check"),
        ("expireHours", "1"),
    ];
    if let Some(code) = auth_code {
        fields.push(("authCode", code));
    }
    let a = up
        .call(
            Method::POST,
            "/index.php?module=API&method=UsersManager.createAppSpecificTokenAuth&format=json",
            HeaderMap::new(),
            Some(form(&fields)),
            client_ip,
        )
        .await?;
    let v = json(&a)?;
    let Some(token) = v.get("value").and_then(|t| t.as_str()) else {
        if v.get("result").and_then(|r| r.as_str()) == Some("error") {
            let message = v.get("message").and_then(|m| m.as_str()).unwrap_or("");
            return Ok(classify_refusal(a.status, message, auth_code.is_some())
                .unwrap_or(Proof::WrongPassword));
        }
        return Err(Error::MatomoUnexpected(
            "createAppSpecificTokenAuth gave neither a token nor an error".into(),
        ));
    };
    let a = up
        .call(
            Method::POST,
            "/index.php?module=API&method=UsersManager.getUser&format=json",
            HeaderMap::new(),
            Some(form(&[("userLogin", login), ("token_auth", token)])),
            client_ip,
        )
        .await?;
    let v = json(&a)?;
    match v.get("login").and_then(|l| l.as_str()) {
        Some(l) if l == login => Ok(Proof::Valid {
            login: l.to_string(),
            superuser: matches!(v.get("superuser_access"), Some(serde_json::Value::Number(n)) if n.as_i64() == Some(1))
                || v.get("superuser_access").and_then(|s| s.as_str()) == Some("1")
                || v.get("superuser_access").and_then(|s| s.as_bool()) == Some(true),
        }),
        _ => Ok(Proof::NotTheLogin),
    }
}

/// Who owns a Matomo session (contract: "who-am-i probe"). `None` for anonymous. The answer's
/// cookies are dropped.
pub async fn who_am_i(
    up: &Upstream,
    cookie_value: &str,
    client_ip: IpAddr,
) -> Result<Option<String>, Error> {
    let a = get_with_cookie(
        up,
        "/index.php?module=Login&action=login",
        cookie_value,
        client_ip,
    )
    .await?;
    let body = String::from_utf8_lossy(&a.body);
    let login = parse_user_login(&body).ok_or_else(|| {
        Error::MatomoUnexpected("the login page does not name its user (piwik.userLogin)".into())
    })?;
    Ok((login != "anonymous").then_some(login))
}

/// Reads `piwik.userLogin = "…";` and decodes the JavaScript string as JSON.
/// `piwik.hasSuperUserAccess = 1;` in a Matomo page (its global variables).
pub fn has_superuser_access(html: &str) -> bool {
    html.split("piwik.hasSuperUserAccess")
        .nth(1)
        .and_then(|r| r.trim_start().strip_prefix('='))
        .map(|r| r.trim_start())
        .is_some_and(|r| r.starts_with('1') || r.starts_with("true"))
}

pub fn parse_user_login(html: &str) -> Option<String> {
    let i = html.find("piwik.userLogin")?;
    let rest = &html[i + "piwik.userLogin".len()..];
    let rest = rest.trim_start().strip_prefix('=')?.trim_start();
    if !rest.starts_with('"') {
        return None;
    }
    // Find the closing quote, honouring backslash escapes.
    let bytes = rest.as_bytes();
    let mut j = 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            b'"' => break,
            _ => j += 1,
        }
    }
    if j >= bytes.len() {
        return None;
    }
    serde_json::from_str::<String>(&rest[..=j]).ok()
}

/// Ends a Matomo session (contract: "Logout").
pub async fn logout(up: &Upstream, cookie_value: &str, client_ip: IpAddr) -> Result<(), Error> {
    match get_with_cookie(
        up,
        "/index.php?module=Login&action=logout",
        cookie_value,
        client_ip,
    )
    .await
    {
        // A cookie that cannot even be sent has no Matomo session to end.
        Err(Error::BadRequest(_)) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// True when an answer is Matomo's sign-in page for an anonymous visitor (contract: 403 with the
/// `module=Login` form).
pub fn is_anonymous_page(status: StatusCode, body: &[u8]) -> bool {
    if status != StatusCode::FORBIDDEN {
        return false;
    }
    let text = String::from_utf8_lossy(body);
    text.contains("module=Login") || parse_user_login(&text).as_deref() == Some("anonymous")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_read_from_the_second_line() {
        let body = b"UnikGate: expired (server time 5)\nUnikGate-Facts: {\"matomo\":\"5.14.0-b2\",\"sees\":\"http://a/\",\"proxy_scheme_headers\":[\"HTTP_X_FORWARDED_PROTO\"],\"logout_user\":true}\n";
        let f = unikgate_facts(body).unwrap();
        assert_eq!(f.version(), Some((5, 14, 0)));
        assert_eq!(f.sees, "http://a/");
        assert!(f.logout_user && f.public_url.is_empty());
        assert_eq!(unikgate_reason(body), "expired (server time 5)");
        assert!(unikgate_facts(b"UnikGate: bad signature\n").is_none());
        assert!(unikgate_facts(b"UnikGate: x\nUnikGate-Facts: {not json\n").is_none());
    }

    #[test]
    fn a_wrong_audience_names_the_lines_to_add() {
        let a = audience_advice(
            "wrong audience: the assertion is for https://a.example/, this Matomo is http://a.example/ (the URL Matomo computes for this request)",
            "https://a.example/",
        )
        .unwrap();
        assert!(a.starts_with("Matomo believes its URL is http://"), "{a}");
        assert!(a.contains("[General] proxy_scheme_headers[] = \"HTTP_X_FORWARDED_PROTO\""));
        assert!(a.contains("[UnikGate] public_url = \"https://a.example\""));
        let a = audience_advice(
            "wrong audience: the assertion is for https://a.example/, this Matomo is https://b.example/",
            "https://a.example/",
        )
        .unwrap();
        assert!(a.contains("trusted_hosts"), "{a}");
        assert_eq!(
            audience_advice("expired (server time 1)", "https://a.example/"),
            None
        );
    }

    #[test]
    fn user_login_is_a_js_string() {
        assert_eq!(
            parse_user_login("x piwik.userLogin = \"alice\";").as_deref(),
            Some("alice")
        );
        assert_eq!(
            parse_user_login("piwik.userLogin = \"jane.doe\\u002Dx\\u0040example.com\";")
                .as_deref(),
            Some("jane.doe-x@example.com")
        );
        assert_eq!(
            parse_user_login("piwik.userLogin = \"a\\\"b\";").as_deref(),
            Some("a\"b")
        );
        assert_eq!(parse_user_login("nothing"), None);
    }

    #[test]
    fn proof_refusals_in_matomos_words() {
        let c = |s: u16, m: &str, code: bool| {
            classify_refusal(StatusCode::from_u16(s).unwrap_or(StatusCode::OK), m, code)
        };
        assert_eq!(
            c(
                200,
                "The current password you entered is not correct.",
                false
            ),
            None
        );
        assert_eq!(
            c(
                401,
                "Please specify a two-factor authentication code.",
                false
            ),
            Some(Proof::CodeRequired)
        );
        assert_eq!(
            c(401, "Incorrect two-factor authentication code.", true),
            Some(Proof::WrongCode)
        );
        assert_eq!(
            c(
                401,
                "Le code d'authentification à deux facteurs est incorrect.",
                true
            ),
            Some(Proof::WrongCode)
        );
        assert_eq!(
            c(
                200,
                "You must set up two-factor authentication. Please log in to do so.",
                false
            ),
            Some(Proof::TwoFactorSetupRequired)
        );
        assert_eq!(
            c(
                200,
                "Too many failed logins. Please wait and try logging in again later.",
                false
            ),
            Some(Proof::Blocked)
        );
        assert_eq!(
            c(
                200,
                "Trop de connexions échouées, veuillez réessayer ultérieurement.",
                true
            ),
            Some(Proof::Blocked)
        );
    }

    #[test]
    fn autologin_messages() {
        assert_eq!(
            autologin_message(b"<p>Autologin error. No email address defined in the request header. Required for AutoRegistration</p>"),
            "No email address defined in the request header. Required for AutoRegistration"
        );
    }
}
