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
//!
//! **Layout.** This file holds the state, the version profiles, the router and the dispatcher
//! (`handle`, then `index` for `index.php`), which routes a request as Apache and Matomo's front
//! controller do; each area answers in its own file:
//! - `php.rs`: the request as Matomo's PHP sees it (`Req`: Apache's path, `$_GET`/`$_POST`,
//!   `getallheaders()`, `$_SERVER`, the client IP, the scheme, the session cookie);
//! - `files.rs`: what Apache serves outside `index.php` (assets, `robots.txt`, the fault
//!   streams `/plugins/StandIn/big.js` and `reset.js`, the `/upload` sink);
//! - `tracker.rs`: `matomo.php` / `piwik.php` and the tracker JavaScript;
//! - `unikgate.rs`: the UnikGate plugin (`module=UnikGate`: whoami, and the signed assertions of
//!   login, provision, access and superuser);
//! - `autologin.rs`: the AutoLogin plugin (`module=AutoLogin` and its headers);
//! - `api.rs`: `module=API` and `Widgetize` (token_auth, Bearer, conflicting parameters,
//!   UsersManager);
//! - `login.rs`: `module=Login` (password form, logout, who-am-i);
//! - `ui.rs`: every other module (CoreHome and the rest: the pages, the anonymous 403, opt-out).
#![allow(dead_code)]

mod api;
mod autologin;
mod files;
mod login;
mod php;
mod tracker;
mod ui;
mod unikgate;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use php::Req;

pub const COOKIE: &str = "MATOMO_SESSID";

#[derive(Debug, Clone)]
pub struct User {
    pub login: String,
    pub email: String,
    pub password: String,
    pub superuser: bool,
    /// Site id → the user's level there (view, write, admin).
    pub sites: BTreeMap<u32, String>,
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
    /// The sites that exist (site 1 from the start).
    pub site_ids: BTreeSet<u32>,
    /// The option `UnikGate_owner_<login>`: who the UnikGate plugin made a user for.
    pub owners: HashMap<String, String>,
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
    /// The plugin is the old 1.1.0: login and whoami only (no `act` read, no `actions` in its
    /// facts; provision and access are Matomo's "Action not found" page).
    pub unikgate_old_plugin: AtomicBool,
    /// `[General] enable_users_admin` (off: Matomo refuses to create users or change access).
    pub enable_users_admin: AtomicBool,
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

/// The lock on [`Inner`] a module's handler holds (dropped before [`record`], which locks it).
type Guard<'a> = MutexGuard<'a, Inner>;

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
        sites: BTreeMap::from([(1, "view".to_string())]),
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
    inner.site_ids.insert(1);
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
        unikgate_old_plugin: AtomicBool::new(false),
        enable_users_admin: AtomicBool::new(true),
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

impl StandInState {
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

/// Matomo's session table (idle expiry) and its brute-force counter (per IP: 20 failures within
/// an hour block).
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

    /// Makes `login` a superuser or takes it back, as a superuser of Matomo would (the flag
    /// only: Matomo's UsersManager.setSuperUserAccess also drops the user's site access, which a
    /// test does with [`StandInState::set_site_access`] when it matters). The plugin's
    /// `superuser` action sees the change at once.
    pub fn set_superuser(&self, login: &str, superuser: bool) {
        if let Some(u) = self.inner.lock().unwrap().users.get_mut(login) {
            u.superuser = superuser;
        }
    }

    pub fn user_exists(&self, login: &str) -> bool {
        self.inner.lock().unwrap().users.contains_key(login)
    }

    /// A user's sites and levels (empty for an unknown login).
    pub fn site_access(&self, login: &str) -> BTreeMap<u32, String> {
        self.inner
            .lock()
            .unwrap()
            .users
            .get(login)
            .map(|u| u.sites.clone())
            .unwrap_or_default()
    }

    /// Gives `login` the level `level` on site `id` (None: no access), as Matomo's admin would.
    pub fn set_site_access(&self, login: &str, id: u32, level: Option<&str>) {
        if let Some(u) = self.inner.lock().unwrap().users.get_mut(login) {
            match level {
                Some(l) => u.sites.insert(id, l.to_string()),
                None => u.sites.remove(&id),
            };
        }
    }

    /// Makes site `id` exist.
    pub fn add_site(&self, id: u32) {
        self.inner.lock().unwrap().site_ids.insert(id);
    }

    /// Who the UnikGate plugin made `login` for (its `UnikGate_owner_<login>` option).
    pub fn owner_of(&self, login: &str) -> Option<String> {
        self.inner.lock().unwrap().owners.get(login).cloned()
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

/// Matomo's `Set-Cookie` for its session (`long`: with an expiry, as on a signed-in page).
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

fn json(v: serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

/// The front door: Apache's own files, then `index.php`.
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
    let path = php::apache_path(parts.uri.path());
    // Large streaming endpoints (never buffered).
    if let Some(r) = files::streamed(&st, &parts, &path) {
        return r;
    }
    let rq = Req::read(st, peer, parts, path, body).await;
    if let Some(r) = tracker::answer(&rq) {
        return r;
    }
    if let Some(r) = files::answer(&rq) {
        return r;
    }
    if rq.path != "/" && rq.path != "/index.php" && !rq.path.starts_with("/index.php/") {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    index(&rq)
}

/// `index.php`: the module answers. The plugins' sign-ins come first; every other module goes
/// through Matomo's token_auth checks.
fn index(rq: &Req) -> Response {
    let module = rq.var("module");
    let inner = rq.st.inner.lock().unwrap();
    match module.as_str() {
        "UnikGate" => return unikgate::answer(rq, inner),
        "AutoLogin" => return autologin::answer(rq, inner),
        _ => {}
    }
    let version = rq.st.version();
    let bearer = api::bearer(rq, version);
    if let Some(r) = api::conflicting(rq, version, bearer.as_deref()) {
        drop(inner);
        rq.record(None);
        return r;
    }
    match module.as_str() {
        "API" | "Widgetize" => api::answer(rq, inner, version, bearer),
        "Login" => login::answer(rq, inner, bearer.as_deref()),
        _ => ui::answer(rq, inner, bearer.as_deref()),
    }
}

/// Adds a request to the log (past 5000 entries, the oldest 1000 go).
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
