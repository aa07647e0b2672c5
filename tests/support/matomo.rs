//! A Matomo 5 stand-in that behaves exactly as `../shared/design/matomo-contract.md` says (sessions
//! with idle expiry, AutoLogin with its dangerous headers and an FPM mode, the two API calls, the
//! who-am-i page, logout, 403 for anonymous UI, brute-force counting per IP, tracker endpoints).
//! It also records what it received so tests can check what reached "Matomo".
//!
//! Used in-process by the Rust tests and as its own process (`cargo run --example matomo-standin`)
//! by the browser journey and the benchmarks. Nothing in `src/` may use it.
//!
//! **Version profiles.** The contract was measured on the real 5.1.2; newer Matomo 5 changed parts
//! of it. [`Version`] (env `STANDIN_MATOMO`, default 5.1.2; or [`StandInState::set_version`])
//! selects which rules the stand-in follows, each modelled on Matomo's source as
//! `tests/CONTRACT.md` "By Matomo version" cites it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;

pub const COOKIE: &str = "MATOMO_SESSID";

#[derive(Debug, Clone)]
pub struct User {
    pub login: String,
    pub email: String,
    pub password: String,
    pub superuser: bool,
    /// Site ids with view access.
    pub sites: Vec<u32>,
}

#[derive(Debug, Clone)]
struct MSession {
    login: Option<String>,
    last: Instant,
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// The login of the session the request was served as (None: anonymous).
    pub as_login: Option<String>,
}

#[derive(Default)]
pub struct Inner {
    pub users: HashMap<String, User>,
    sessions: HashMap<String, MSession>,
    tokens: HashMap<String, (String, Instant)>,
    failures: HashMap<IpAddr, Vec<Instant>>,
    pub log: Vec<Seen>,
    pub mints: u64,
    /// jti values of UnikGate assertions already used.
    jtis: std::collections::HashSet<String>,
}

pub struct StandInState {
    pub inner: Mutex<Inner>,
    /// Idle timeout of sessions, in milliseconds (default 3600 s).
    pub idle_ms: AtomicU64,
    /// PHP-FPM mode: getallheaders() capitalises names, so AutoLogin never reads its header.
    pub fpm: AtomicBool,
    pub auto_registration: AtomicBool,
    /// When set, every request waits this long first (for timeouts).
    pub delay_ms: AtomicU64,
    pub trusted_host: Mutex<Option<String>>,
    /// The UnikGate plugin: installed when a shared secret is set (`[UnikGate] shared_secret`).
    pub unikgate_secret: Mutex<Option<String>>,
    /// `[UnikGate] allow_superusers`.
    pub unikgate_allow_superusers: AtomicBool,
    /// Seconds added to the stand-in's clock (clock skew).
    pub clock_offset: std::sync::atomic::AtomicI64,
    /// Which Matomo this is.
    pub version: Mutex<Version>,
    /// `[General] proxy_scheme_headers[]` (from 5.7 on the only headers that give the scheme).
    pub proxy_scheme_headers: Mutex<Vec<String>>,
    /// `[General] assume_secure_protocol`.
    pub assume_secure_protocol: AtomicBool,
    /// `[UnikGate] public_url` (the plugin's audience when set).
    pub unikgate_public_url: Mutex<Option<String>>,
    /// Apache's `CGIPassAuth On`: without it Apache hands PHP no `HTTP_AUTHORIZATION` (mod_php
    /// as CGI; Matomo issue #24572). PHP-FPM behind nginx always gets it.
    pub cgi_pass_auth: AtomicBool,
}

pub type Shared = Arc<StandInState>;

/// A Matomo version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    /// The one the contract was measured on.
    pub const MEASURED: Version = Version(5, 1, 2);
    /// The profiles the suite runs (tests/run loops over them with `STANDIN_MATOMO`).
    pub const PROFILES: &'static [Version] =
        &[Version(5, 1, 2), Version(5, 7, 0), Version(5, 14, 1)];

    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.trim().split('.').map(|p| p.parse::<u16>().ok());
        let v = Version(it.next()??, it.next()??, it.next().unwrap_or(Some(0))?);
        Some(v)
    }

    /// `STANDIN_MATOMO`, else [`Version::MEASURED`].
    pub fn from_env() -> Version {
        match std::env::var("STANDIN_MATOMO") {
            Ok(s) if !s.is_empty() => Version::parse(&s)
                .unwrap_or_else(|| panic!("STANDIN_MATOMO={s:?} is not a Matomo version")),
            _ => Version::MEASURED,
        }
    }

    pub fn at_least(self, major: u16, minor: u16) -> bool {
        self >= Version(major, minor, 0)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

fn token_hex() -> String {
    let mut b = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
    hex::encode(b)
}

pub fn default_users() -> Vec<User> {
    let u = |login: &str, email: &str, password: &str, superuser: bool| User {
        login: login.into(),
        email: email.into(),
        password: password.into(),
        superuser,
        sites: vec![1],
    };
    vec![
        u("admin", "admin@example.com", "admin-password", true),
        u("alice", "alice@example.com", "alice-password", false),
        u("bob", "bob@example.com", "bob-password", false),
        u(
            "jane.doe-x@example.com",
            "jane@example.com",
            "jane-password",
            false,
        ),
    ]
}

pub fn new_state() -> Shared {
    let mut inner = Inner::default();
    for u in default_users() {
        inner.users.insert(u.login.clone(), u);
    }
    Arc::new(StandInState {
        inner: Mutex::new(inner),
        idle_ms: AtomicU64::new(3_600_000),
        fpm: AtomicBool::new(false),
        auto_registration: AtomicBool::new(true),
        delay_ms: AtomicU64::new(0),
        trusted_host: Mutex::new(None),
        unikgate_secret: Mutex::new(None),
        unikgate_allow_superusers: AtomicBool::new(true),
        clock_offset: std::sync::atomic::AtomicI64::new(0),
        version: Mutex::new(Version::from_env()),
        proxy_scheme_headers: Mutex::new(Vec::new()),
        assume_secure_protocol: AtomicBool::new(false),
        unikgate_public_url: Mutex::new(None),
        cgi_pass_auth: AtomicBool::new(false),
    })
}

pub fn router(state: Shared) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// PHP-style parameters: last duplicate wins, GET before POST.
fn params(q: &str) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        m.insert(k.into_owned(), v.into_owned());
    }
    m
}

/// What `getallheaders()` returns under mod_php (names as sent; hyper lower-cases them, which is
/// what unikgate sends anyway) or PHP-FPM (capitalised).
fn php_headers(h: &HeaderMap, fpm: bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in h {
        let v = value.to_str().unwrap_or("").to_string();
        // Read `_` as `-` (the stricter reading: every spelling counts as the header).
        let mut n = name.as_str().replace('_', "-");
        if fpm {
            n = n
                .split('-')
                .map(|p| {
                    let mut c = p.chars();
                    match c.next() {
                        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                        None => String::new(),
                    }
                })
                .collect::<Vec<_>>()
                .join("-");
        }
        // Apache merges duplicates into one comma-separated value.
        if let Some(e) = out.iter_mut().find(|(k, _)| *k == n) {
            e.1 = format!("{}, {}", e.1, v);
        } else {
            out.push((n, v));
        }
    }
    out
}

fn header_of<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn request_cookie(h: &HeaderMap) -> Option<String> {
    for v in h.get_all(header::COOKIE) {
        for part in v.to_str().unwrap_or("").split(';') {
            if let Some(val) = part.trim().strip_prefix("MATOMO_SESSID=") {
                return Some(val.to_string());
            }
        }
    }
    None
}

fn client_ip(peer: IpAddr, h: &HeaderMap) -> IpAddr {
    // proxy_client_headers[] = HTTP_X_FORWARDED_FOR: the last address of the list.
    h.get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.split(',').next_back())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(peer)
}

/// `$_SERVER['HTTP_…']` for `key` (`HTTP_X_FORWARDED_PROTO`): Apache joins duplicates with ", ".
fn server_var(h: &HeaderMap, key: &str) -> Option<String> {
    let name = key
        .strip_prefix("HTTP_")?
        .replace('_', "-")
        .to_ascii_lowercase();
    let values: Vec<&str> = h
        .get_all(name.as_str())
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

impl StandInState {
    /// `ProxyHttp::isHttps()` (the stand-in is reached over plain http: `$_SERVER['HTTPS']` is
    /// never on).
    ///
    /// - up to 5.6 (`core/Url.php` getCurrentScheme, as in 5.1.2): `X-Forwarded-Scheme` or
    ///   `X-Url-Scheme` equal to https (any case), or `X-Forwarded-Proto` exactly `https`;
    ///   nothing to configure.
    /// - from 5.7 (PR #23968): `assume_secure_protocol`, else the first header that
    ///   `proxy_scheme_headers[]` names whose value, trimmed and lower-cased, is `http` or
    ///   `https` (other values are skipped); no such header: http.
    fn is_https(&self, h: &HeaderMap) -> bool {
        if self.assume_secure_protocol.load(Ordering::Relaxed) {
            return true;
        }
        if !self.version().at_least(5, 7) {
            let ci = |n: &str| {
                h.get(n)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.eq_ignore_ascii_case("https"))
            };
            return ci("x-forwarded-scheme")
                || ci("x-url-scheme")
                || h.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
        }
        for key in self.proxy_scheme_headers.lock().unwrap().iter() {
            if let Some(v) = server_var(h, key) {
                match v.trim().to_ascii_lowercase().as_str() {
                    "https" => return true,
                    "http" => return false,
                    _ => {}
                }
            }
        }
        false
    }

    pub fn version(&self) -> Version {
        *self.version.lock().unwrap()
    }

    pub fn set_version(&self, v: Version) {
        *self.version.lock().unwrap() = v;
    }

    /// What `deploy/matomo-setup.sh` writes that the stand-in models: the scheme header, and the
    /// plugin's audience when `public_url` is given.
    pub fn run_setup_script(&self, public_url: Option<&str>) {
        let mut headers = self.proxy_scheme_headers.lock().unwrap();
        if !headers.iter().any(|h| h == "HTTP_X_FORWARDED_PROTO") {
            headers.push("HTTP_X_FORWARDED_PROTO".into());
        }
        if let Some(u) = public_url {
            *self.unikgate_public_url.lock().unwrap() = Some(u.trim_end_matches('/').to_string());
        }
    }
}

fn cookie_header(id: &str, https: bool, long: bool) -> HeaderValue {
    let expires = if long {
        "; expires=Thu, 10-Dec-2026 10:00:00 GMT"
    } else {
        ""
    };
    let secure = if https { "; secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}{expires}; path=/{secure}; HttpOnly; SameSite=Lax"
    ))
    .unwrap()
}

/// Matomo's JavaScript string escaping as measured: letters, digits, `.` and `_` stay, the rest
/// become \uXXXX (`jane.doe-x@example.com` → `jane.doe\u002Dx\u0040example.com`).
fn js_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{:04X}", c as u32));
        }
    }
    out.push('"');
    out
}

fn page(login: &str, body: &str) -> String {
    // Matomo's real pages are ~150 KB; pad so that "read the whole page" code is exercised.
    let pad = "<!-- padding -->\n".repeat(2000);
    format!(
        "<!DOCTYPE html><html><head><title>Matomo stand-in</title><script>var piwik = {{}};\npiwik.userLogin = {};\npiwik.token_auth = \"standin\";</script></head><body>{body}\n{pad}</body></html>",
        js_string(login)
    )
}

fn login_page() -> String {
    page(
        "anonymous",
        "<h1>Sign in</h1><form method=\"post\" action=\"index.php?module=Login&amp;action=login\"><input name=\"form_login\"><input name=\"form_password\" type=\"password\"><button>Sign in</button></form>",
    )
}

fn json(v: serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

fn api_error(msg: &str) -> Response {
    json(serde_json::json!({"result": "error", "message": msg}))
}

/// An API answer: from 5.14 with `SecurityHeaders::sendForDataResponse()`'s headers (one value
/// each: PHP's header() replaces).
fn api_json(version: Version, v: serde_json::Value) -> Response {
    let mut r = json(v);
    if version.at_least(5, 14) {
        let h = r.headers_mut();
        h.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        h.insert("x-frame-options", HeaderValue::from_static("deny"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none';"),
        );
    }
    r
}

impl StandInState {
    fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms.load(Ordering::Relaxed))
    }

    /// The login of a valid session (resetting its idle timer), or None.
    fn session_login(&self, inner: &mut Inner, id: Option<&str>) -> Option<String> {
        let id = id?;
        let idle = self.idle();
        let s = inner.sessions.get_mut(id)?;
        if s.last.elapsed() > idle {
            s.login = None;
        }
        s.last = Instant::now();
        s.login.clone()
    }

    fn new_session(&self, inner: &mut Inner, login: Option<String>) -> String {
        let id = token_hex();
        inner.sessions.insert(
            id.clone(),
            MSession {
                login,
                last: Instant::now(),
            },
        );
        id
    }

    fn blocked(&self, inner: &mut Inner, ip: IpAddr) -> bool {
        let f = inner.failures.entry(ip).or_default();
        f.retain(|t| t.elapsed() < Duration::from_secs(3600));
        f.len() >= 20
    }

    fn fail(&self, inner: &mut Inner, ip: IpAddr) {
        inner.failures.entry(ip).or_default().push(Instant::now());
    }

    /// Test helpers.
    pub fn sessions_of(&self, login: &str) -> usize {
        let inner = self.inner.lock().unwrap();
        inner
            .sessions
            .values()
            .filter(|s| s.login.as_deref() == Some(login))
            .count()
    }

    pub fn is_superuser(&self, login: &str) -> bool {
        self.inner
            .lock()
            .unwrap()
            .users
            .get(login)
            .is_some_and(|u| u.superuser)
    }

    pub fn user_exists(&self, login: &str) -> bool {
        self.inner.lock().unwrap().users.contains_key(login)
    }

    pub fn log(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.inner.lock().unwrap().log.clear();
    }

    pub fn mints(&self) -> u64 {
        self.inner.lock().unwrap().mints
    }

    /// Logs a browser in with the password form (what `password_login` lets through).
    pub fn login_with_password(&self, login: &str) -> String {
        let mut inner = self.inner.lock().unwrap();
        self.new_session(&mut inner, Some(login.to_string()))
    }
}

async fn handle(
    State(st): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let delay = st.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let (parts, body) = req.into_parts();
    let path = apache_path(parts.uri.path());
    let query = parts.uri.query().unwrap_or("").to_string();
    let h = parts.headers.clone();
    let ip = client_ip(peer.ip(), &h);
    let https = st.is_https(&h);
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();

    // Large streaming endpoints (never buffered).
    if path == "/plugins/StandIn/big.js" {
        let n: u64 = params(&query)
            .get("bytes")
            .and_then(|b| b.parse().ok())
            .unwrap_or(1024);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(n, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let take = left.min(chunk.len() as u64);
                Some((
                    Ok::<_, std::io::Error>(chunk.slice(..take as usize)),
                    left - take,
                ))
            }
        });
        let mut res = Response::new(Body::from_stream(stream));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/javascript"),
        );
        record(&st, &parts.method, &parts.uri.to_string(), &h, 0, None);
        return res;
    }
    if path == "/plugins/StandIn/reset.js" {
        // Sends the head and part of the body, then drops the connection.
        let stream = futures_util::stream::unfold(0u8, |step| async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 1024])), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Some((Err(std::io::Error::other("reset")), 2))
                }
                _ => None,
            }
        });
        let mut res = Response::new(Body::from_stream(stream));
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("100000"));
        return res;
    }

    // Read the body counting bytes (uploads up to any size are streamed, not kept).
    let mut body_len = 0u64;
    let mut kept = Vec::new();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(d) = frame.data_ref() {
            body_len += d.len() as u64;
            if kept.len() < 1024 * 1024 {
                kept.extend_from_slice(d);
            }
        }
    }
    let is_form = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let post = if parts.method == Method::POST && is_form {
        params(&String::from_utf8_lossy(&kept))
    } else {
        HashMap::new()
    };
    let get = params(&query);
    let var = |k: &str| {
        get.get(k)
            .or_else(|| post.get(k))
            .cloned()
            .unwrap_or_default()
    };

    let fpm = st.fpm.load(Ordering::Relaxed);
    let ph = php_headers(&h, fpm);
    let cookie = request_cookie(&h);

    // Tracker and static files.
    if path == "/matomo.php" || path == "/piwik.php" || path == "/js/tracker.php" {
        record(
            &st,
            &parts.method,
            &parts.uri.to_string(),
            &h,
            body_len,
            None,
        );
        return json(serde_json::json!({"tracked": true, "bytes": body_len}));
    }
    if path == "/matomo.js" || path == "/piwik.js" || path.starts_with("/js/") {
        record(
            &st,
            &parts.method,
            &parts.uri.to_string(),
            &h,
            body_len,
            None,
        );
        return (
            [(header::CONTENT_TYPE, "application/javascript")],
            "/* tracker */",
        )
            .into_response();
    }
    if path == "/robots.txt" {
        return (
            [(header::CONTENT_TYPE, "text/plain")],
            "User-agent: *\nDisallow: /\n",
        )
            .into_response();
    }
    if path.starts_with("/plugins/")
        || path.starts_with("/libs/")
        || path.starts_with("/misc/")
        || path.starts_with("/node_modules/")
    {
        record(
            &st,
            &parts.method,
            &parts.uri.to_string(),
            &h,
            body_len,
            None,
        );
        if path.ends_with(".php") {
            return (StatusCode::FORBIDDEN, "no direct access").into_response();
        }
        return (
            [(header::CONTENT_TYPE, "text/plain")],
            format!("asset {path}"),
        )
            .into_response();
    }
    if path == "/upload" {
        record(
            &st,
            &parts.method,
            &parts.uri.to_string(),
            &h,
            body_len,
            None,
        );
        return json(serde_json::json!({"bytes": body_len}));
    }
    if path != "/" && path != "/index.php" && !path.starts_with("/index.php/") {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }

    let module = var("module");
    let action = var("action");
    let mut inner = st.inner.lock().unwrap();

    if module == "UnikGate" {
        let secret = st.unikgate_secret.lock().unwrap().clone();
        let Some(secret) = secret else {
            drop(inner);
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "<p>The plugin UnikGate is not activated.</p>",
            )
                .into_response();
        };
        if action == "whoami" {
            let login = st.session_login(&mut inner, cookie.as_deref());
            drop(inner);
            return json(serde_json::json!({ "login": login }));
        }
        if action != "login" || parts.method != Method::POST {
            return unikgate_refuse("POST only");
        }
        inner.mints += 1;
        let scheme = if https { "https" } else { "http" };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + st.clock_offset.load(Ordering::Relaxed);
        // Controller.php: the audience is [UnikGate] public_url, else the URL Matomo computes.
        let seen = format!("{scheme}://{host}/");
        let configured = st
            .unikgate_public_url
            .lock()
            .unwrap()
            .clone()
            .map(|u| format!("{}/", u.trim_end_matches('/')));
        let claims = match verify_assertion(
            &post.get("assertion").cloned().unwrap_or_default(),
            &secret,
            configured.as_deref().unwrap_or(&seen),
            now,
            &mut inner.jtis,
        ) {
            Ok(c) => c,
            Err((mut why, signed)) => {
                if why.starts_with("wrong audience") {
                    why.push_str(&match &configured {
                        Some(_) => format!(
                            " (from [UnikGate] public_url; Matomo sees its own URL as {seen})"
                        ),
                        None => " (the URL Matomo computes for this request)".to_string(),
                    });
                }
                let v = st.version();
                let facts = signed.then(|| {
                    serde_json::json!({
                        "matomo": v.to_string(),
                        "sees": seen,
                        "public_url": configured.clone().unwrap_or_default(),
                        "proxy_scheme_headers": *st.proxy_scheme_headers.lock().unwrap(),
                        "proxy_client_headers": ["HTTP_X_FORWARDED_FOR"],
                        "proxy_host_headers": [],
                        "logout_user": v.at_least(5, 9),
                    })
                });
                drop(inner);
                record(
                    &st,
                    &parts.method,
                    &parts.uri.to_string(),
                    &h,
                    body_len,
                    None,
                );
                return unikgate_refuse_with(&why, facts);
            }
        };
        let (sub, rd) = claims;
        let Some(user) = inner.users.get(&sub).cloned() else {
            drop(inner);
            return unikgate_refuse("unknown login");
        };
        if user.superuser && !st.unikgate_allow_superusers.load(Ordering::Relaxed) {
            drop(inner);
            return unikgate_refuse("superusers may not sign in through unikgate");
        }
        if let Some(old) = &cookie {
            inner.sessions.remove(old);
        }
        let id = st.new_session(&mut inner, Some(sub.clone()));
        drop(inner);
        record(
            &st,
            &parts.method,
            &parts.uri.to_string(),
            &h,
            body_len,
            Some(sub),
        );
        let mut r = StatusCode::FOUND.into_response();
        r.headers_mut()
            .insert(header::SET_COOKIE, cookie_header(&id, https, false));
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_str(&rd).unwrap());
        return r;
    }

    // Dangerous AutoLogin side headers: they act on any AutoLogin request.
    if module == "AutoLogin" {
        inner.mints += 1;
        let username = header_of(&ph, "matomo-username").map(str::to_string);
        let role = header_of(&ph, "matomo-role").map(str::to_string);
        let email = header_of(&ph, "matomo-email").map(str::to_string);
        let anon = st.new_session(&mut inner, None);
        let fail = |msg: &str| -> Response {
            let mut r = (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("<html><body><p>{msg}</p></body></html>"),
            )
                .into_response();
            r.headers_mut()
                .insert(header::SET_COOKIE, cookie_header(&anon, https, false));
            r
        };
        let Some(username) = username else {
            drop(inner);
            record(
                &st,
                &parts.method,
                &parts.uri.to_string(),
                &h,
                body_len,
                None,
            );
            return fail("Autologin error. No username defined in the request header");
        };
        if !inner.users.contains_key(&username) {
            if username.contains(',') {
                drop(inner);
                record(
                    &st,
                    &parts.method,
                    &parts.uri.to_string(),
                    &h,
                    body_len,
                    None,
                );
                return fail(&format!("Autologin error. User '{username}' is not valid"));
            }
            if !st.auto_registration.load(Ordering::Relaxed) {
                drop(inner);
                record(
                    &st,
                    &parts.method,
                    &parts.uri.to_string(),
                    &h,
                    body_len,
                    None,
                );
                return fail(&format!(
                    "AutoRegistration is disabled. User '{username}' does not exist in matomo"
                ));
            }
            let Some(email) = email else {
                drop(inner);
                record(
                    &st,
                    &parts.method,
                    &parts.uri.to_string(),
                    &h,
                    body_len,
                    None,
                );
                return fail("Autologin error. No email address defined in the request header. Required for AutoRegistration");
            };
            inner.users.insert(
                username.clone(),
                User {
                    login: username.clone(),
                    email,
                    password: token_hex(),
                    superuser: false,
                    sites: vec![],
                },
            );
        }
        match role.as_deref() {
            Some("superuser") => {
                if let Some(u) = inner.users.get_mut(&username) {
                    u.superuser = true;
                }
            }
            Some("noaccess") => {
                if let Some(u) = inner.users.get_mut(&username) {
                    u.sites.clear();
                }
            }
            _ => {}
        }
        // A new login ends the browser's previous session.
        if let Some(old) = &cookie {
            inner.sessions.remove(old);
        }
        let id = st.new_session(&mut inner, Some(username.clone()));
        drop(inner);
        record(
            &st,
            &parts.method,
            &parts.uri.to_string(),
            &h,
            body_len,
            Some(username),
        );
        let scheme = if https { "https" } else { "http" };
        let trusted = st.trusted_host.lock().unwrap().clone();
        let shown_host = match trusted {
            Some(t) if t != host => "127.0.0.1".to_string(),
            _ => host.clone(),
        };
        let mut r = StatusCode::FOUND.into_response();
        r.headers_mut()
            .insert(header::SET_COOKIE, cookie_header(&id, https, false));
        r.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_str(&format!("{scheme}://{shown_host}/index.php")).unwrap(),
        );
        return r;
    }

    let version = st.version();
    // 5.4 (PR #23335, core/Request/AuthenticationToken.php): `$_SERVER['HTTP_AUTHORIZATION']`
    // starting with exactly "Bearer " is a token_auth, on every module.
    let bearer = if version.at_least(5, 4) && (fpm || st.cgi_pass_auth.load(Ordering::Relaxed)) {
        h.get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    } else {
        None
    };
    // 5.8 (validateNoConflictingAuthParameters, on the root request): two different non-empty
    // token_auth values among the header, the body and the query, or force_api_session differing
    // between the query and the body, are a 400 before anything runs.
    if version.at_least(5, 8) {
        let mut tokens: Vec<&str> = [
            bearer.as_deref(),
            post.get("token_auth").map(String::as_str),
            get.get("token_auth").map(String::as_str),
        ]
        .into_iter()
        .flatten()
        .filter(|t| !t.is_empty())
        .collect();
        tokens.dedup();
        let truthy = |v: Option<&String>| v.is_some_and(|v| !v.is_empty() && v != "0");
        let forced_differs = get.contains_key("force_api_session")
            && post.contains_key("force_api_session")
            && truthy(get.get("force_api_session")) != truthy(post.get("force_api_session"));
        if tokens.len() > 1 || forced_differs {
            drop(inner);
            record(
                &st,
                &parts.method,
                &parts.uri.to_string(),
                &h,
                body_len,
                None,
            );
            return (
                StatusCode::BAD_REQUEST,
                api_error("Conflicting authentication parameters were provided in the request."),
            )
                .into_response();
        }
    }

    // API and Widgetize authenticate by token_auth (Matomo checks it itself).
    if module == "API" || module == "Widgetize" {
        let method = var("method");
        match method.as_str() {
            "UsersManager.createAppSpecificTokenAuth" => {
                // 5.13 (PR #24821/#24843): a signed-in caller may make a token only for itself;
                // an anonymous caller still exchanges a login and password for that user's token.
                if version.at_least(5, 13) {
                    let acting = st.session_login(&mut inner, cookie.as_deref());
                    let who = var("userLogin");
                    if acting.is_some_and(|a| a != who) {
                        return api_error(
                            "You can only create an app specific token for yourself.",
                        );
                    }
                }
                if st.blocked(&mut inner, ip) {
                    return api_error("You are currently not allowed to log in because you had too many failed logins, try again later.");
                }
                let who = var("userLogin");
                let pw = var("passwordConfirmation");
                let user = inner
                    .users
                    .values()
                    .find(|u| u.login == who || u.email == who)
                    .cloned();
                match user {
                    Some(u) if u.password == pw => {
                        let t = token_hex();
                        inner
                            .tokens
                            .insert(t.clone(), (u.login.clone(), Instant::now()));
                        return json(serde_json::json!({"value": t}));
                    }
                    _ => {
                        st.fail(&mut inner, ip);
                        if pw.chars().count() < 6 {
                            return api_error("This password is too weak, please supply another value or reset it.");
                        }
                        return api_error("The current password you entered is not correct.");
                    }
                }
            }
            _ => {
                // Which token Matomo runs the request as: up to 5.3 the parameter; 5.4 to 5.7 a
                // token_auth parameter wins over the header (query before body); from 5.8 they
                // cannot differ (above), the header first.
                let token = match (&bearer, version.at_least(5, 8)) {
                    (Some(b), true) => b.clone(),
                    (Some(b), false) => {
                        let t = var("token_auth");
                        if t.is_empty() {
                            b.clone()
                        } else {
                            t
                        }
                    }
                    (None, _) => var("token_auth"),
                };
                let owner = inner
                    .tokens
                    .get(&token)
                    .filter(|(_, at)| at.elapsed() < Duration::from_secs(3600))
                    .map(|(l, _)| l.clone())
                    .or_else(|| {
                        inner
                            .users
                            .values()
                            .find(|u| format!("tok-{}", u.login) == token)
                            .map(|u| u.login.clone())
                    });
                // force_api_session=1 with a session cookie keeps the session alive.
                if var("force_api_session") == "1" {
                    let _ = st.session_login(&mut inner, cookie.as_deref());
                }
                let Some(owner) = owner else {
                    drop(inner);
                    record(
                        &st,
                        &parts.method,
                        &parts.uri.to_string(),
                        &h,
                        body_len,
                        None,
                    );
                    return (
                        StatusCode::UNAUTHORIZED,
                        api_error("You can't access this resource as it requires 'view' access."),
                    )
                        .into_response();
                };
                // 5.9 (PR #24226): a superuser ends every Matomo session of a login.
                if method == "UsersManager.logoutUser" {
                    if !version.at_least(5, 9) {
                        return api_error("The method 'logoutUser' does not exist or is not available in the module 'UsersManager'.");
                    }
                    if !inner.users.get(&owner).is_some_and(|u| u.superuser) {
                        return api_error(
                            "You can't access this resource as it requires Super User access.",
                        );
                    }
                    let target = var("userLogin");
                    if !inner.users.contains_key(&target) {
                        return api_error(&format!("The user '{target}' doesn't exist."));
                    }
                    inner
                        .sessions
                        .retain(|_, s| s.login.as_deref() != Some(target.as_str()));
                    return api_json(
                        version,
                        serde_json::json!({"result": "success", "message": "ok"}),
                    );
                }
                if method == "UsersManager.getUser" {
                    let target = var("userLogin");
                    let owner_user = inner.users.get(&owner).cloned();
                    let Some(ou) = owner_user else {
                        return api_error("no user");
                    };
                    if ou.login != target && !ou.superuser {
                        return api_error(&format!(
                            "The user has to be either a Super User or the user '{}' itself.",
                            ou.email
                        ));
                    }
                    let Some(t) = inner.users.get(&target).cloned() else {
                        return api_error("The user does not exist.");
                    };
                    return json(serde_json::json!({
                        "login": t.login, "email": t.email,
                        "superuser_access": if t.superuser { 1 } else { 0 },
                        "last_seen": "2026-11-01 10:00:00", "invite_status": "active"
                    }));
                }
                drop(inner);
                record(
                    &st,
                    &parts.method,
                    &parts.uri.to_string(),
                    &h,
                    body_len,
                    Some(owner.clone()),
                );
                return api_json(version, serde_json::json!({"method": method, "as": owner}));
            }
        }
    }

    if module == "Login" && action == "logout" {
        if let Some(c) = &cookie {
            inner.sessions.remove(c);
        }
        drop(inner);
        record(
            &st,
            &parts.method,
            &parts.uri.to_string(),
            &h,
            body_len,
            None,
        );
        let mut r = StatusCode::FOUND.into_response();
        r.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "MATOMO_SESSID=; expires=Tue, 01-Jan-1980 06:00:00 GMT; path=/; SameSite=Lax",
            ),
        );
        r.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_static("index.php?module=CoreHome&action="),
        );
        return r;
    }

    if module == "Login" && parts.method == Method::POST {
        let login = var("form_login");
        let pw = var("form_password");
        let ok = inner.users.get(&login).is_some_and(|u| u.password == pw);
        if !ok {
            st.fail(&mut inner, ip);
            let mut r = (StatusCode::OK, login_page()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            return r;
        }
        if let Some(old) = &cookie {
            inner.sessions.remove(old);
        }
        let id = st.new_session(&mut inner, Some(login));
        let mut r = StatusCode::FOUND.into_response();
        r.headers_mut()
            .insert(header::SET_COOKIE, cookie_header(&id, https, false));
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("index.php"));
        return r;
    }

    // 5.4: a Bearer token authenticates every module and switches the session off
    // (makeSessionAuthenticator() is null); outside the API a superuser's token is refused
    // (checkTokenAuthIsNotLimited).
    let login = match &bearer {
        Some(t) => inner
            .users
            .values()
            .find(|u| format!("tok-{}", u.login) == *t)
            .or_else(|| inner.tokens.get(t).and_then(|(l, _)| inner.users.get(l)))
            .filter(|u| !u.superuser)
            .map(|u| u.login.clone()),
        None => st.session_login(&mut inner, cookie.as_deref()),
    };
    // Who-am-i: the login page names its user, and with no valid session makes a new anonymous one.
    if module == "Login" {
        let mut r = match &login {
            Some(l) => (StatusCode::OK, page(l, "<p>Already signed in.</p>")).into_response(),
            None => (StatusCode::OK, login_page()).into_response(),
        };
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        let id = match (&login, &cookie) {
            (Some(_), Some(c)) => c.clone(),
            _ => st.new_session(&mut inner, None),
        };
        r.headers_mut().insert(
            header::SET_COOKIE,
            cookie_header(&id, https, login.is_some()),
        );
        drop(inner);
        record(
            &st,
            &parts.method,
            &parts.uri.to_string(),
            &h,
            body_len,
            login,
        );
        return r;
    }

    if (module == "CoreAdminHome" && (action == "optOut" || action == "optOutJS"))
        || module == "Proxy"
    {
        drop(inner);
        record(
            &st,
            &parts.method,
            &parts.uri.to_string(),
            &h,
            body_len,
            login,
        );
        return ([(header::CONTENT_TYPE, "text/html")], "<p>opt-out</p>").into_response();
    }

    // The UI.
    let Some(l) = login else {
        let id = st.new_session(&mut inner, None);
        drop(inner);
        record(
            &st,
            &parts.method,
            &parts.uri.to_string(),
            &h,
            body_len,
            None,
        );
        let mut r = (StatusCode::FORBIDDEN, login_page()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r.headers_mut()
            .insert(header::SET_COOKIE, cookie_header(&id, https, false));
        return r;
    };
    drop(inner);
    record(
        &st,
        &parts.method,
        &parts.uri.to_string(),
        &h,
        body_len,
        Some(l.clone()),
    );
    let html = page(
        &l,
        &format!(
            "<h1>Matomo</h1><p id=\"who\">Signed in to Matomo as <strong>{l}</strong></p><p id=\"where\">module={} action={} idSite={} period={} date={}</p><p><a id=\"logout\" href=\"index.php?module=Login&amp;action=logout\">Sign out</a></p>",
            html_escape(&module),
            html_escape(&action),
            html_escape(&var("idSite")),
            html_escape(&var("period")),
            html_escape(&var("date"))
        ),
    );
    let mut r = (StatusCode::OK, html).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Some(c) = &cookie {
        r.headers_mut()
            .insert(header::SET_COOKIE, cookie_header(c, https, true));
    }
    r
}

/// The path as Apache serves it: `%xx` decoded (an encoded slash stays encoded), dot segments
/// resolved, repeated slashes merged (MergeSlashes On).
fn apache_path(raw: &str) -> String {
    let mut segs: Vec<String> = Vec::new();
    for seg in raw.split('/') {
        let mut out = Vec::new();
        let b = seg.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let Ok(v) =
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    if v != b'/' {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                }
            }
            out.push(b[i]);
            i += 1;
        }
        let s = String::from_utf8_lossy(&out).into_owned();
        match s.as_str() {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            _ => segs.push(s),
        }
    }
    let mut p = format!("/{}", segs.join("/"));
    if raw.ends_with('/') && p.len() > 1 {
        p.push('/');
    }
    p
}

fn unikgate_refuse(reason: &str) -> Response {
    unikgate_refuse_with(reason, None)
}

/// The plugin's 403: the reason, then for a caller who proved the secret the facts line.
fn unikgate_refuse_with(reason: &str, facts: Option<serde_json::Value>) -> Response {
    let mut body = format!("UnikGate: {reason}\n");
    if let Some(f) = facts {
        body.push_str(&format!("UnikGate-Facts: {f}\n"));
    }
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The UnikGate plugin's verification rules (matomo-plugin/UnikGate/Assertion.php), written
/// independently of unikgate's signer: returns (sub, rd) or the one-line reason and whether the
/// signature was good (then the refusal carries the facts).
fn verify_assertion(
    token: &str,
    secret: &str,
    audience: &str,
    now: i64,
    seen: &mut std::collections::HashSet<String>,
) -> Result<(String, String), (String, bool)> {
    let unsigned = |e: String| (e, false);
    let signed = |e: String| (e, true);
    use base64::Engine;
    use hmac::Mac;
    let dec = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| unsigned("malformed token".to_string()))
    };
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts.iter().take(2).any(|p| p.is_empty()) {
        return Err(unsigned("malformed token".into()));
    }
    let header: serde_json::Value =
        serde_json::from_slice(&dec(parts[0])?).map_err(|_| unsigned("malformed token".into()))?;
    if header != serde_json::json!({"alg": "HS256", "typ": "JWT"}) {
        return Err(unsigned(
            "unsupported header: only {\"alg\":\"HS256\",\"typ\":\"JWT\"}".into(),
        ));
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    if mac.verify_slice(&dec(parts[2])?).is_err() {
        return Err(unsigned("bad signature".into()));
    }
    let c: serde_json::Value = serde_json::from_slice(&dec(parts[1]).map_err(|(e, _)| signed(e))?)
        .map_err(|_| signed("malformed claims".into()))?;
    let s = |k: &str| {
        c.get(k)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or(signed(format!("missing claim {k}")))
    };
    let n = |k: &str| {
        c.get(k)
            .and_then(|v| v.as_i64())
            .ok_or(signed(format!("missing claim {k}")))
    };
    let (iss, aud, sub, jti, rd) = (s("iss")?, s("aud")?, s("sub")?, s("jti")?, s("rd")?);
    let (iat, exp) = (n("iat")?, n("exp")?);
    if iss != "unikgate" {
        return Err(signed("wrong issuer".into()));
    }
    if format!("{}/", aud.trim_end_matches('/')) != audience {
        return Err(signed(format!(
            "wrong audience: the assertion is for {}/, this Matomo is {audience}",
            aud.trim_end_matches('/')
        )));
    }
    if exp <= iat || exp - iat > 60 {
        return Err(signed("lifetime longer than 60 s".into()));
    }
    if iat > now + 30 {
        return Err(signed(format!("not yet valid (server time {now})")));
    }
    if exp + 30 <= now {
        return Err(signed(format!("expired (server time {now})")));
    }
    if sub.len() > 100
        || !sub
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_.@+-ÄäÖöÜüß".contains(ch))
    {
        return Err(signed("sub is not a Matomo login".into()));
    }
    if !rd.starts_with('/')
        || rd.starts_with("//")
        || rd.starts_with("/\\")
        || rd
            .chars()
            .any(|ch| ch == '\\' || ch.is_whitespace() || ch.is_control())
    {
        return Err(signed("rd is not a relative path".into()));
    }
    if !seen.insert(jti) {
        return Err(signed("replayed assertion".into()));
    }
    Ok((sub, rd))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn record(
    st: &Shared,
    m: &Method,
    uri: &str,
    h: &HeaderMap,
    body_len: u64,
    as_login: Option<String>,
) {
    let mut inner = st.inner.lock().unwrap();
    if inner.log.len() > 5000 {
        inner.log.drain(..1000);
    }
    inner.log.push(Seen {
        method: m.clone(),
        uri: uri.to_string(),
        headers: h.clone(),
        body_len,
        as_login,
    });
}

/// Serves the stand-in on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: Shared) {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let _ = axum::serve(listener, app).await;
}
