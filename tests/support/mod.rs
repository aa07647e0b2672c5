//! Test harness: unikgate started in-process exactly as the binary assembles it, the Matomo
//! stand-in, an in-process fake provider for fault injection, the real `oidc-provider`, and a small
//! cookie-jar browser that follows redirects by hand.
#![allow(dead_code)]

pub mod ca;
pub mod compose;
pub mod matomo;
pub mod payloads;
pub mod pebble;
pub mod provider;
pub mod real;
pub mod servers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

/// A 64+ byte session key for tests.
pub const TEST_KEY: &str =
    "test-key-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub struct StandIn {
    pub addr: SocketAddr,
    pub state: matomo::Shared,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    pub async fn start() -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = matomo::new_state();
        let task = tokio::spawn(matomo::serve(listener, state.clone()));
        StandIn { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub app: Arc<unikgate::App>,
    pub dir: Arc<tempfile::TempDir>,
    task: tokio::task::JoinHandle<()>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApp {
    /// Starts unikgate with `toml` (the `public_url` is filled in with the listening address when
    /// it contains `{public}`; `{dir}` is the data folder).
    pub async fn start(toml: &str) -> TestApp {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_in(toml, dir).await
    }

    pub async fn start_in(toml: &str, dir: Arc<tempfile::TempDir>) -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self::start_on(toml, dir, listener, addr).await
    }

    pub async fn start_on(
        toml: &str,
        dir: Arc<tempfile::TempDir>,
        listener: TcpListener,
        addr: SocketAddr,
    ) -> TestApp {
        let text = toml
            .replace("{public}", &format!("http://{addr}"))
            .replace("{dir}", &dir.path().display().to_string());
        let cfg = unikgate::config::Config::from_toml(&text, &HashMap::<String, String>::new())
            .unwrap_or_else(|e| panic!("test config: {e:?}\n{text}"));
        let (gate, app) = unikgate::build_app(cfg).await.expect("build_app");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = unikgate::server::serve(listener, gate, async {
                let _ = rx.await;
            })
            .await;
        });
        TestApp {
            addr,
            app,
            dir,
            task,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops serving (graceful) and waits for the listener to close.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A config for tests: the stand-in as upstream, `provider` settings as given.
pub fn config(upstream: &str, provider: &str, extra: &str) -> String {
    format!(
        r#"
[server]
public_url = "{{public}}"
[upstream]
url = "{upstream}"
connect_timeout = "1s"
timeout = "5s"
[provider]
{provider}
[session]
key = "{TEST_KEY}"
[store]
url = "sqlite://{{dir}}/unikgate.db"
{extra}
"#
    )
}

/// A browser: a cookie jar, no automatic redirects.
pub struct Browser {
    pub client: reqwest::Client,
    pub jar: Arc<reqwest::cookie::Jar>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Self::speaking("")
    }

    /// A browser that finds `host` at `addr` (a name the compose tests' containers know).
    pub fn resolving(host: &str, addr: std::net::SocketAddr) -> Browser {
        Self::build("", &[(host, addr)], None)
    }

    /// A browser that finds each name at its address, and trusts `root` (PEM) besides the public
    /// roots: the compose stack over https with pebble's certificate.
    pub fn reaching(names: &[(&str, std::net::SocketAddr)], root: Option<&str>) -> Browser {
        Self::build("", names, root)
    }

    /// A browser that sends `Accept-Language: <lang>` (none when empty).
    pub fn speaking(lang: &str) -> Browser {
        Self::build(lang, &[], None)
    }

    fn build(lang: &str, resolve: &[(&str, std::net::SocketAddr)], root: Option<&str>) -> Browser {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let mut headers = reqwest::header::HeaderMap::new();
        if !lang.is_empty() {
            headers.insert(
                reqwest::header::ACCEPT_LANGUAGE,
                reqwest::header::HeaderValue::from_str(lang).unwrap(),
            );
        }
        let mut client = reqwest::Client::builder()
            .default_headers(headers)
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20));
        for (host, addr) in resolve {
            client = client.resolve(host, *addr);
        }
        if let Some(pem) = root {
            client = client
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        }
        let client = client.build().unwrap();
        Browser { client, jar }
    }

    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.client
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// A GET with extra request headers (what a page's script or another site would send).
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut r = self.client.get(url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    pub async fn post(&self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(url)
            .form(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
    }

    /// Follows redirects from `res` while they stay within `hosts` (host:port), returning the
    /// first answer that is not a redirect, and the URL it came from.
    pub async fn follow(
        &self,
        mut res: reqwest::Response,
        max: usize,
    ) -> (reqwest::Response, String) {
        let mut url = res.url().to_string();
        for _ in 0..max {
            if !res.status().is_redirection() {
                return (res, url);
            }
            let loc = location(&res);
            let next = res.url().join(&loc).unwrap().to_string();
            url = next.clone();
            res = self.get(&next).await;
        }
        (res, url)
    }

    /// The value of a cookie for `url` as the browser would send it.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        use reqwest::cookie::CookieStore;
        let u: reqwest::Url = url.parse().unwrap();
        let h = self.jar.cookies(&u)?;
        h.to_str()
            .unwrap()
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    pub fn set_cookie(&self, url: &str, cookie: &str) {
        let u: reqwest::Url = url.parse().unwrap();
        self.jar.add_cookie_str(cookie, &u);
    }
}

pub fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A whole sign-in through the fake provider as `sub`, returning to `rd`; returns the callback's
/// answer (a redirect to the link page, to `rd`, or an error page).
pub async fn sign_in(
    b: &Browser,
    app: &TestApp,
    p: &provider::FakeProvider,
    sub: &str,
    rd: &str,
) -> reqwest::Response {
    sign_in_at(b, &app.url(""), p, sub, rd).await
}

/// [`sign_in`] through the unikgate at `base` (e.g. a separate process).
pub async fn sign_in_at(
    b: &Browser,
    base: &str,
    p: &provider::FakeProvider,
    sub: &str,
    rd: &str,
) -> reqwest::Response {
    p.set_sub(sub);
    let res = start_sign_in(b, base, rd).await;
    let res = b.get(&location(&res)).await;
    b.get(&location(&res)).await
}

/// The sign-in page's form at `base`, returning to `rd`, posted: the answer is the redirect to
/// the provider (checked).
pub async fn start_sign_in(b: &Browser, base: &str, rd: &str) -> reqwest::Response {
    let html = b
        .get(&format!("{base}/_unikgate/sign_in?rd={}", enc(rd)))
        .await
        .text()
        .await
        .unwrap();
    let res = b
        .post(
            &format!("{base}/_unikgate/start"),
            &[("csrf", &csrf_of(&html)), ("rd", rd)],
        )
        .await;
    assert_eq!(res.status(), 303, "start redirects to the provider");
    res
}

/// The link page's form, posted with a Matomo login and password.
pub async fn link_password(
    b: &Browser,
    app: &TestApp,
    rd: &str,
    login: &str,
    password: &str,
) -> reqwest::Response {
    link_password_at(b, &app.url(""), rd, login, password).await
}

/// [`link_password`] through the unikgate at `base`.
pub async fn link_password_at(
    b: &Browser,
    base: &str,
    rd: &str,
    login: &str,
    password: &str,
) -> reqwest::Response {
    let html = b
        .get(&format!("{base}/_unikgate/link?rd={}", enc(rd)))
        .await
        .text()
        .await
        .unwrap();
    b.post(
        &format!("{base}/_unikgate/link"),
        &[
            ("csrf", &csrf_of(&html)),
            ("rd", rd),
            ("mode", "password"),
            ("login", login),
            ("password", password),
        ],
    )
    .await
}

/// A browser signed in as `sub` and linked to `login`.
pub async fn linked(
    app: &TestApp,
    p: &provider::FakeProvider,
    sub: &str,
    login: &str,
    password: &str,
) -> Browser {
    let b = Browser::new();
    let res = sign_in(&b, app, p, sub, "/").await;
    assert!(
        location(&res).contains("/_unikgate/link"),
        "{}",
        location(&res)
    );
    let res = link_password(&b, app, "/", login, password).await;
    assert_eq!(res.status(), 302, "linking {login}");
    b
}

/// The hidden CSRF token of a unikgate page.
pub fn csrf_of(html: &str) -> String {
    let i = html.find("name=\"csrf\" value=\"").expect("a csrf field");
    let rest = &html[i + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Sends an oversized request on its own connection. A server that refuses an oversized body
/// answers before reading it all and closes the connection, so a client still writing may see the
/// reset before the answer: both are a refusal. Returns the status, or 0 for "closed".
pub async fn oversized(req: reqwest::RequestBuilder) -> u16 {
    match req.send().await {
        Ok(r) => r.status().as_u16(),
        Err(e) if e.is_request() || e.is_connect() || e.is_body() => 0,
        Err(e) => panic!("unexpected client error: {e}"),
    }
}

/// A client that opens a new connection for every request (no reuse of a refused one).
pub fn unpooled() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Captured log lines of the whole test process (for "no secret in any log line").
pub mod logs {
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};

    static BUF: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

    struct W;
    impl Write for W {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Some(m) = BUF.get() {
                m.lock().unwrap().extend_from_slice(b);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Installs a subscriber writing every event (debug and up) into memory.
    pub fn capture() {
        if BUF.set(Mutex::new(Vec::new())).is_ok() {
            let _ = tracing_subscriber::fmt()
                // Everything the server side says; the test browser (reqwest, cookie_store) is not unikgate.
                .with_env_filter("debug,cookie_store=off,reqwest=info,hyper=info,hyper_util=info,h2=info,rustls=info,sqlx=info")
                .with_writer(|| W)
                .with_ansi(false)
                .try_init();
        }
    }

    pub fn text() -> String {
        BUF.get()
            .map(|m| String::from_utf8_lossy(&m.lock().unwrap()).into_owned())
            .unwrap_or_default()
    }
}
