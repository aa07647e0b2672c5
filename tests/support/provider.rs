//! Providers for tests: an in-process fake (auto-approving, HS256 ID tokens, with switchable
//! faults), and the real npm `oidc-provider` shaped like Unikname Connect, run with node.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use http::{header, HeaderMap, StatusCode};
use tokio::io::AsyncBufReadExt;

pub const CLIENT_ID: &str = "matomo-unikgate";
pub const CLIENT_SECRET: &str = "s3cret-client-secret-for-tests";

/// What the fake provider does wrong, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    Deny,
    WrongAudience,
    WrongIssuer,
    Expired,
    BadSignature,
    NonceMismatch,
    SubMismatch,
    TokenHtml,
    TokenBrokenJson,
    UserinfoWrongType,
    Slow,
}

#[derive(Default)]
pub struct FakeState {
    pub fault: Fault,
    /// sub given to the next sign-in.
    pub next_sub: String,
    codes: HashMap<String, Grant>,
    pub authorize_queries: Vec<HashMap<String, String>>,
    pub token_calls: u32,
    /// The `sid` of the last ID token issued (each sign-in gets its own provider session).
    pub last_sid: String,
    /// How often `/oidc/jwks` (an empty key set) was fetched.
    pub jwks_calls: u32,
    /// Extra userinfo claims by subject (`email`, `email_verified`, `groups`, …), merged over
    /// the CAS-shaped answer.
    pub claims: HashMap<String, serde_json::Value>,
}

#[derive(Clone)]
struct Grant {
    sub: String,
    nonce: String,
    challenge: String,
}

pub struct FakeProvider {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A compact HS256 JWS.
pub fn hs256(claims: &serde_json::Value, secret: &str) -> String {
    use hmac::Mac;
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64(claims.to_string().as_bytes());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{head}.{body}").as_bytes());
    let sig = b64(&mac.finalize().into_bytes());
    format!("{head}.{body}.{sig}")
}

static CODE_RNG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl FakeProvider {
    /// The claims of a valid back-channel logout token from this provider (HS256 with the client
    /// secret, like its ID tokens), naming `sub` and/or `sid`; tests then spoil one thing.
    pub fn logout_claims(&self, sub: Option<&str>, sid: Option<&str>) -> serde_json::Value {
        let mut c = serde_json::json!({
            "iss": self.issuer(),
            "aud": CLIENT_ID,
            "iat": now(),
            "exp": now() + 120,
            "jti": format!("jti-{}", CODE_RNG.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        });
        if let Some(s) = sub {
            c["sub"] = s.into();
        }
        if let Some(s) = sid {
            c["sid"] = s.into();
        }
        c
    }

    /// A logout token signed as this provider signs.
    pub fn logout_token(&self, claims: &serde_json::Value) -> String {
        hs256(claims, CLIENT_SECRET)
    }

    pub fn last_sid(&self) -> String {
        self.state.lock().unwrap().last_sid.clone()
    }

    pub async fn start() -> FakeProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState {
            next_sub: "uns-alice-0001".into(),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/oidc/authorize", get(authorize))
            .route("/oidc/accessToken", post(token))
            .route("/oidc/profile", get(userinfo))
            .route("/oidc/jwks", get(jwks))
            .with_state((state.clone(), addr));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeProvider { addr, state, task }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}/oidc", self.addr)
    }

    pub fn set(&self, f: Fault) {
        self.state.lock().unwrap().fault = f;
    }

    pub fn set_sub(&self, sub: &str) {
        self.state.lock().unwrap().next_sub = sub.to_string();
    }

    /// Extra userinfo claims for `sub` from now on (a JSON object, merged over the usual answer;
    /// a null value removes that claim).
    pub fn set_claims(&self, sub: &str, claims: serde_json::Value) {
        self.state
            .lock()
            .unwrap()
            .claims
            .insert(sub.to_string(), claims);
    }

    /// The `[provider]` section for this fake: explicit URLs, HS256, no discovery.
    pub fn config(&self) -> String {
        let base = format!("http://{}/oidc", self.addr);
        format!(
            r#"issuer = "{base}"
authorize_url = "{base}/authorize"
token_url = "{base}/accessToken"
userinfo_url = "{base}/profile"
jwks_url = "{base}/jwks-unused"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
id_token_algs = ["HS256"]
timeout = "2s"
"#
        )
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

type St = (Arc<Mutex<FakeState>>, SocketAddr);

async fn authorize(
    State((st, _)): State<St>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = st.lock().unwrap();
    s.authorize_queries.push(q.clone());
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let state = q.get("state").cloned().unwrap_or_default();
    let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    let loc = if s.fault == Fault::Deny {
        format!(
            "{redirect}?error=access_denied&error_description=User+declined&state={}",
            enc(&state)
        )
    } else {
        let code = unikgate::random_token();
        let grant = Grant {
            sub: s.next_sub.clone(),
            nonce: q.get("nonce").cloned().unwrap_or_default(),
            challenge: q.get("code_challenge").cloned().unwrap_or_default(),
        };
        s.codes.insert(code.clone(), grant);
        format!("{redirect}?code={}&state={}", enc(&code), enc(&state))
    };
    (StatusCode::FOUND, [(header::LOCATION, loc)]).into_response()
}

fn basic_ok(h: &HeaderMap) -> bool {
    let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(b) = v.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b) else {
        return false;
    };
    String::from_utf8_lossy(&raw) == format!("{CLIENT_ID}:{CLIENT_SECRET}")
}

async fn token(State((st, addr)): State<St>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let fault = st.lock().unwrap().fault;
    st.lock().unwrap().token_calls += 1;
    if fault == Fault::Slow {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if !basic_ok(&parts.headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"invalid_client"}"#,
        )
            .into_response();
    }
    if fault == Fault::TokenHtml {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html>maintenance</html>",
        )
            .into_response();
    }
    if fault == Fault::TokenBrokenJson {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"access_token\": ",
        )
            .into_response();
    }
    let code = form.get("code").cloned().unwrap_or_default();
    let Some(grant) = st.lock().unwrap().codes.remove(&code) else {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"invalid_grant"}"#,
        )
            .into_response();
    };
    // PKCE S256.
    use sha2::Digest;
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if b64(&sha2::Sha256::digest(verifier.as_bytes())) != grant.challenge {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"invalid_grant"}"#,
        )
            .into_response();
    }
    let iss = format!("http://{addr}/oidc");
    let sid = format!(
        "sid-{}",
        &CODE_RNG.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    st.lock().unwrap().last_sid = sid.clone();
    let mut claims = serde_json::json!({
        "iss": iss, "aud": CLIENT_ID, "sub": grant.sub, "nonce": grant.nonce,
        "iat": now(), "exp": now() + 300, "sid": sid,
    });
    match fault {
        Fault::WrongAudience => claims["aud"] = "someone-else".into(),
        Fault::WrongIssuer => claims["iss"] = "http://evil.example/oidc".into(),
        Fault::Expired => {
            claims["iat"] = (now() - 7200).into();
            claims["exp"] = (now() - 3600).into();
        }
        Fault::NonceMismatch => claims["nonce"] = "another-nonce".into(),
        Fault::SubMismatch => claims["sub"] = "uns-somebody-else".into(),
        _ => {}
    }
    let secret = if fault == Fault::BadSignature {
        "not-the-secret"
    } else {
        CLIENT_SECRET
    };
    let id_token = hs256(&claims, secret);
    let access = format!("at-{}", grant.sub);
    axum::Json(serde_json::json!({
        "access_token": access, "token_type": "bearer", "expires_in": 300, "id_token": id_token
    }))
    .into_response()
}

async fn jwks(State((st, _)): State<St>) -> Response {
    st.lock().unwrap().jwks_calls += 1;
    axum::Json(serde_json::json!({ "keys": [] })).into_response()
}

async fn userinfo(State((st, _)): State<St>, h: HeaderMap) -> Response {
    let (fault, extra) = {
        let s = st.lock().unwrap();
        (s.fault, s.claims.clone())
    };
    let Some(sub) = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer at-"))
    else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if fault == Fault::UserinfoWrongType {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html>login</html>",
        )
            .into_response();
    }
    // Shaped like Apereo CAS: sub, id, attributes.
    let mut answer = serde_json::json!({
        "sub": sub, "id": sub, "attributes": {"uid": format!("uid-{sub}"), "email": format!("{sub}@example.com")}
    });
    if let Some(serde_json::Value::Object(more)) = extra.get(sub) {
        for (k, v) in more {
            if v.is_null() {
                answer.as_object_mut().unwrap().remove(k);
            } else {
                answer[k] = v.clone();
            }
        }
    }
    axum::Json(answer).into_response()
}

/// The real `oidc-provider` (npm), configured like Unikname Connect, as a child process.
pub struct NodeProvider {
    pub port: u16,
    child: tokio::process::Child,
}

impl Drop for NodeProvider {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Where the npm packages of the tests live (installed by `tests/run`).
pub fn node_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

impl NodeProvider {
    /// Starts the provider; `redirect_uri` is unikgate's callback, registered for the client.
    pub async fn start(redirect_uris: &[String], post_logout: &[String]) -> NodeProvider {
        Self::start_with(redirect_uris, post_logout, None).await
    }

    /// [`NodeProvider::start`], with back-channel logout to `backchannel` when given (the
    /// provider then also answers `POST /oidc/test/end_sessions` with `login`: an admin ending
    /// every provider session of that @unikname, which sends a logout token with `sub` only).
    pub async fn start_with(
        redirect_uris: &[String],
        post_logout: &[String],
        backchannel: Option<&str>,
    ) -> NodeProvider {
        let dir = node_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run tests/run (it installs the npm packages into tests/e2e/node_modules)"
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("provider.mjs"))
            .env("PORT", port.to_string())
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URIS", redirect_uris.join(" "))
            .env("POST_LOGOUT_REDIRECT_URIS", post_logout.join(" "))
            .env("BACKCHANNEL_LOGOUT_URI", backchannel.unwrap_or(""))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let out = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(out).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains("listening") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "oidc-provider did not start");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        NodeProvider { port, child }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}/oidc", self.port)
    }

    /// `[provider]` by discovery.
    pub fn config_discovery(&self) -> String {
        format!(
            "issuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n",
            self.issuer()
        )
    }

    /// `[provider]` by explicit URLs only (the seed's table, on this provider).
    pub fn config_explicit(&self) -> String {
        let b = self.issuer();
        format!(
            "issuer = \"none\"\nauthorize_url = \"{b}/authorize\"\ntoken_url = \"{b}/accessToken\"\nuserinfo_url = \"{b}/profile\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n"
        )
    }

    /// Logs in at the provider as `login` from the interaction page at `url` and approves (or
    /// declines); returns the response that leaves the provider (a redirect to unikgate).
    pub async fn interact(
        &self,
        b: &super::Browser,
        authorize_url: &str,
        login: &str,
        approve: bool,
    ) -> reqwest::Response {
        interact_at(b, self.port, authorize_url, login, approve).await
    }
}

/// [`NodeProvider::interact`] with the provider listening on `port` wherever it runs (in a
/// container, for the compose tests).
pub async fn interact_at(
    b: &super::Browser,
    port: u16,
    authorize_url: &str,
    login: &str,
    approve: bool,
) -> reqwest::Response {
    let mut res = b.get(authorize_url).await;
    // Follow the provider's own redirects to its interaction page; a provider that remembers
    // the person (its session and grant) sends the browser straight back instead.
    for _ in 0..6 {
        if !res.status().is_redirection() {
            break;
        }
        let next = res.url().join(&super::location(&res)).unwrap();
        if next.port() != Some(port) {
            return res;
        }
        res = b.get(next.as_str()).await;
    }
    let page_url = res.url().clone();
    let html = res.text().await.unwrap();
    assert!(html.contains("name=\"login\""), "interaction page: {html}");
    let decision = if approve { "approve" } else { "decline" };
    let mut res = b
        .post(
            page_url.as_str(),
            &[("login", login), ("decision", decision)],
        )
        .await;
    for _ in 0..6 {
        if !res.status().is_redirection() {
            break;
        }
        let next = res.url().join(&super::location(&res)).unwrap();
        if next.port() != Some(port) {
            // Leaving the provider: hand the redirect back to the caller.
            return res;
        }
        res = b.get(next.as_str()).await;
    }
    panic!("the provider did not redirect back: {}", res.status());
}
