//! A Matomo 5 stand-in that behaves exactly as `../shared/design/matomo-contract.md` says (sessions
//! with idle expiry, AutoLogin with its dangerous headers and an FPM mode, the two API calls, the
//! who-am-i page, logout, 403 for anonymous UI, brute-force counting per IP, tracker endpoints).
//! It also records what it received so tests can check what reached "Matomo".
//!
//! Used in-process by the Rust tests and as its own process (`cargo run --example matomo-standin`)
//! by the browser journey and the benchmarks. Nothing in `src/` may use it.
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
}

pub type Shared = Arc<StandInState>;

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

fn is_https(h: &HeaderMap) -> bool {
    ["x-forwarded-proto", "x-forwarded-scheme", "x-url-scheme"]
        .iter()
        .any(|n| h.get(*n).and_then(|v| v.to_str().ok()) == Some("https"))
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
    let https = is_https(&h);
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
        let claims = match verify_assertion(
            &post.get("assertion").cloned().unwrap_or_default(),
            &secret,
            &format!("{scheme}://{host}/"),
            now,
            &mut inner.jtis,
        ) {
            Ok(c) => c,
            Err(why) => {
                drop(inner);
                record(
                    &st,
                    &parts.method,
                    &parts.uri.to_string(),
                    &h,
                    body_len,
                    None,
                );
                return unikgate_refuse(&why);
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

    // API and Widgetize authenticate by token_auth (Matomo checks it itself).
    if module == "API" || module == "Widgetize" {
        let method = var("method");
        match method.as_str() {
            "UsersManager.createAppSpecificTokenAuth" => {
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
                let token = var("token_auth");
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
                return json(serde_json::json!({"method": method, "as": owner}));
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

    let login = st.session_login(&mut inner, cookie.as_deref());
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
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("UnikGate: {reason}\n"),
    )
        .into_response()
}

/// The UnikGate plugin's verification rules (matomo-plugin/UnikGate/Assertion.php), written
/// independently of unikgate's signer: returns (sub, rd) or the one-line reason.
fn verify_assertion(
    token: &str,
    secret: &str,
    audience: &str,
    now: i64,
    seen: &mut std::collections::HashSet<String>,
) -> Result<(String, String), String> {
    use base64::Engine;
    use hmac::Mac;
    let dec = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| "malformed token".to_string())
    };
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts.iter().take(2).any(|p| p.is_empty()) {
        return Err("malformed token".into());
    }
    let header: serde_json::Value =
        serde_json::from_slice(&dec(parts[0])?).map_err(|_| "malformed token")?;
    if header != serde_json::json!({"alg": "HS256", "typ": "JWT"}) {
        return Err("unsupported header: only {\"alg\":\"HS256\",\"typ\":\"JWT\"}".into());
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    if mac.verify_slice(&dec(parts[2])?).is_err() {
        return Err("bad signature".into());
    }
    let c: serde_json::Value =
        serde_json::from_slice(&dec(parts[1])?).map_err(|_| "malformed claims")?;
    let s = |k: &str| {
        c.get(k)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or(format!("missing claim {k}"))
    };
    let n = |k: &str| {
        c.get(k)
            .and_then(|v| v.as_i64())
            .ok_or(format!("missing claim {k}"))
    };
    let (iss, aud, sub, jti, rd) = (s("iss")?, s("aud")?, s("sub")?, s("jti")?, s("rd")?);
    let (iat, exp) = (n("iat")?, n("exp")?);
    if iss != "unikgate" {
        return Err("wrong issuer".into());
    }
    if format!("{}/", aud.trim_end_matches('/')) != audience {
        return Err(format!(
            "wrong audience: Matomo sees its own URL as {audience}"
        ));
    }
    if exp <= iat || exp - iat > 60 {
        return Err("lifetime longer than 60 s".into());
    }
    if iat > now + 30 {
        return Err(format!("not yet valid (server time {now})"));
    }
    if exp + 30 <= now {
        return Err(format!("expired (server time {now})"));
    }
    if sub.len() > 100
        || !sub
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_.@+-ÄäÖöÜüß".contains(ch))
    {
        return Err("sub is not a Matomo login".into());
    }
    if !rd.starts_with('/')
        || rd.starts_with("//")
        || rd.starts_with("/\\")
        || rd
            .chars()
            .any(|ch| ch == '\\' || ch.is_whitespace() || ch.is_control())
    {
        return Err("rd is not a relative path".into());
    }
    if !seen.insert(jti) {
        return Err("replayed assertion".into());
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
