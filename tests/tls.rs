//! HTTPS served by unikgate itself (`[tls]` with certificate files): HTTP/2 and HTTP/1.1 by ALPN,
//! HSTS, a certificate replaced on disk served without a restart (and a broken replacement kept
//! out, reported by `readyz`), plain HTTP redirected to the public origin, the health probe over
//! TLS, and `check`'s messages for each mistake.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Version;
use support::{StandIn, TestApp, TEST_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The test CA, with a client that trusts it only.
struct Ca(support::ca::Ca);

impl std::ops::Deref for Ca {
    type Target = support::ca::Ca;
    fn deref(&self) -> &support::ca::Ca {
        &self.0
    }
}

impl Ca {
    fn new(name: &str) -> Ca {
        Ca(support::ca::Ca::new(name))
    }

    /// A client that trusts this CA only and reaches `localhost` at `addr`.
    fn client(&self, addr: std::net::SocketAddr, http1_only: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .resolve("localhost", addr)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5));
        if http1_only {
            b = b.http1_only();
        }
        b.build().unwrap()
    }
}

fn tls_config(upstream: &str, port: u16, dir: &Path, extra: &str) -> String {
    format!(
        r#"
[server]
public_url = "https://localhost:{port}"
{extra}
[upstream]
url = "{upstream}"
[session]
key = "{TEST_KEY}"
[store]
url = "sqlite://{dir}/data/unikgate.db"
[tls]
cert_file = "{dir}/cert.pem"
key_file = "{dir}/key.pem"
"#,
        dir = dir.display()
    )
}

async fn start_tls(ca: &Ca, upstream: &str, extra: &str) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    ca.issue(&dir.path().join("cert.pem"), &dir.path().join("key.pem"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let toml = tls_config(upstream, addr.port(), dir.path(), extra);
    TestApp::start_on(&toml, dir, listener, addr).await
}

#[tokio::test]
async fn https_serves_http2_and_http1_with_hsts() {
    let m = StandIn::start().await;
    let ca = Ca::new("a");
    let app = start_tls(&ca, &m.url(), "").await;
    let base = format!("https://localhost:{}", app.addr.port());
    // ALPN: HTTP/2 when the client offers it, HTTP/1.1 when it offers only that.
    for (http1_only, want) in [(false, Version::HTTP_2), (true, Version::HTTP_11)] {
        let c = ca.client(app.addr, http1_only);
        let res = c
            .get(format!("{base}/_unikgate/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), want);
        assert_eq!(
            res.headers()["strict-transport-security"],
            "max-age=31536000"
        );
        // Proxied to Matomo (public traffic), which sees the public host and https.
        let res = c.get(format!("{base}/matomo.js")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{want:?}");
        assert_eq!(res.version(), want);
        assert!(res.headers().contains_key("strict-transport-security"));
        let seen = m.state.log();
        let last = seen.last().unwrap();
        assert_eq!(last.uri, "/matomo.js");
        assert_eq!(
            last.headers["x-forwarded-proto"], "https",
            "Matomo is told the browser used https"
        );
        // The UI without a session: to the sign-in page, on the https origin.
        let res = c
            .get(format!("{base}/index.php?module=CoreHome&action=index"))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_redirection() || res.status() == 503);
    }
    // Many requests on one HTTP/2 connection at once.
    let c = ca.client(app.addr, false);
    let all =
        futures_util::future::join_all((0..40).map(|_| c.get(format!("{base}/matomo.js")).send()))
            .await;
    assert!(all
        .into_iter()
        .all(|r| r.is_ok_and(|r| r.status() == 200 && r.version() == Version::HTTP_2)));
    // Plain HTTP on the TLS port gets no answer in clear.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /_unikgate/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}

#[tokio::test]
async fn hsts_can_be_turned_off() {
    let m = StandIn::start().await;
    let ca = Ca::new("a");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    ca.issue(&dir.path().join("cert.pem"), &dir.path().join("key.pem"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let toml = tls_config(&m.url(), addr.port(), dir.path(), "") + "hsts = false\n";
    let app = TestApp::start_on(&toml, dir, listener, addr).await;
    let res = ca
        .client(app.addr, false)
        .get(format!("https://localhost:{}/matomo.js", app.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(!res.headers().contains_key("strict-transport-security"));
}

/// Waits up to 15 s (the files are looked at every 5 s) for `check` to hold.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..60 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what} did not happen within 15 s");
}

#[tokio::test]
async fn a_replaced_certificate_is_served_without_a_restart_and_a_broken_one_is_kept_out() {
    let m = StandIn::start().await;
    let (a, b) = (Ca::new("a"), Ca::new("b"));
    let app = start_tls(&a, &m.url(), "").await;
    let base = format!("https://localhost:{}/_unikgate", app.addr.port());
    let addr = app.addr;
    // The status of healthz on a new connection of a client trusting `ca` (none: the handshake
    // failed). New connections: one made before a change keeps the certificate it began with.
    let ok = |ca: &Ca| {
        let (c, url) = (ca.client(addr, false), format!("{base}/healthz"));
        async move { c.get(&url).send().await.ok().map(|r| r.status().as_u16()) }
    };
    // What readyz says about TLS.
    let tls_problem = |ca: &Ca| {
        let (c, url) = (ca.client(addr, false), format!("{base}/readyz"));
        async move {
            let text = c.get(&url).send().await.ok()?.text().await.ok()?;
            text.lines()
                .find(|l| l.starts_with("tls: "))
                .map(str::to_string)
        }
    };
    let (by_a, by_b) = (&a, &b);
    assert_eq!(ok(by_a).await, Some(200));
    assert_eq!(
        ok(by_b).await,
        None,
        "b's clients do not trust a's certificate"
    );
    assert_eq!(tls_problem(by_a).await, None);
    // A renewal by another tool: a certificate of CA b in the same files.
    let (cert, key) = (
        app.dir.path().join("cert.pem"),
        app.dir.path().join("key.pem"),
    );
    b.issue(&cert, &key);
    eventually("the new certificate", async || ok(by_b).await == Some(200)).await;
    assert_eq!(
        ok(by_a).await,
        None,
        "the old certificate is no longer served"
    );
    // A broken replacement (a key of another certificate): the current one stays, and readyz
    // does not fail for it while the certificate served is good (every replica reads the same
    // files: failing readyz would take them all out while each still serves).
    let other = tempfile::tempdir().unwrap();
    a.issue(&other.path().join("c.pem"), &other.path().join("k.pem"));
    std::fs::copy(other.path().join("k.pem"), &key).unwrap();
    let Some(unikgate::tls::Served::Files(files)) = app.app.tls.clone() else {
        panic!("files mode");
    };
    eventually("the broken pair read and refused", async || {
        files.problem().is_some()
    })
    .await;
    let problem = files.problem().unwrap();
    assert!(
        problem.starts_with("tls.key_file:")
            && problem.contains("is not the key of the certificate"),
        "{problem}"
    );
    assert_eq!(tls_problem(by_b).await, None, "readyz stays ready for TLS");
    assert_eq!(
        ok(by_b).await,
        Some(200),
        "the last good certificate is still served"
    );
    // Mended: the mended pair is served and readyz no longer names TLS.
    a.issue(&cert, &key);
    eventually("the mended pair", async || ok(by_a).await == Some(200)).await;
    assert_eq!(tls_problem(by_a).await, None);
}

#[tokio::test]
async fn plain_http_is_redirected_to_the_public_https_origin() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = unikgate::config::Config::from_toml(
        r#"
[server]
public_url = "https://analytics.example.com"
[upstream]
url = "http://127.0.0.1:9"
"#,
        &HashMap::<String, String>::new(),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = unikgate::server::redirect::serve(listener, &cfg, None, async {
            let _ = rx.await;
        })
        .await;
    });
    let ask = |req: String| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).to_string()
    };
    let get = ask("GET /index.php?module=CoreHome&action=index HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".into()).await;
    assert!(get.starts_with("HTTP/1.1 301"), "{get}");
    assert!(
        get.contains(
            "\r\nlocation: https://analytics.example.com/index.php?module=CoreHome&action=index\r\n"
        ),
        "the public origin, never the client's Host: {get}"
    );
    let post = ask(
        "POST /matomo.php HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
            .into(),
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 308"), "{post}");
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

#[tokio::test]
async fn the_health_probe_speaks_tls() {
    let m = StandIn::start().await;
    let ca = Ca::new("a");
    let app = start_tls(&ca, &m.url(), "").await;
    let mut cfg = (*app.app.cfg).clone();
    cfg.server.listen = app.addr;
    unikgate::server::probe_health(&cfg).await.unwrap();
    // Asked in plain HTTP, a TLS listener does not answer 200: the probe with [tls] must use TLS.
    let mut plain = cfg.clone();
    plain.tls = None;
    assert!(unikgate::server::probe_health(&plain).await.is_err());
}

#[test]
fn check_names_each_mistake_of_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let a = Ca::new("a");
    a.issue(&cert, &key);
    let load = |extra_server: &str, tls: &str| {
        let text = format!(
            "[server]\npublic_url = \"https://localhost\"\n{extra_server}\n[upstream]\nurl = \"http://127.0.0.1:9\"\n{tls}"
        );
        match unikgate::config::Config::from_toml(&text, &HashMap::<String, String>::new()) {
            Ok(_) => Vec::new(),
            Err(errs) => errs
                .into_iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect(),
        }
    };
    let files = |c: &Path, k: &Path| {
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            c.display(),
            k.display()
        )
    };
    // Good.
    assert_eq!(load("", &files(&cert, &key)), Vec::<String>::new());
    // One of the two.
    let e = load("", &format!("[tls]\ncert_file = \"{}\"\n", cert.display()));
    assert!(
        e.iter()
            .any(|e| e
                .starts_with("tls.cert_file: tls.cert_file and tls.key_file are both required")),
        "{e:?}"
    );
    // A file that is not there.
    let e = load("", &files(&dir.path().join("nope.pem"), &key));
    assert!(
        e.iter()
            .any(|e| e.starts_with("tls.cert_file: cannot read") && e.contains("nope.pem")),
        "{e:?}"
    );
    // Not PEM.
    std::fs::write(dir.path().join("junk.pem"), "hello").unwrap();
    let e = load("", &files(&dir.path().join("junk.pem"), &key));
    assert!(
        e.iter()
            .any(|e| e.starts_with("tls.cert_file:") && e.contains("holds no certificate")),
        "{e:?}"
    );
    let e = load("", &files(&cert, &dir.path().join("junk.pem")));
    assert!(
        e.iter()
            .any(|e| e.starts_with("tls.key_file: no usable private key")),
        "{e:?}"
    );
    // A key of another certificate.
    let other = tempfile::tempdir().unwrap();
    a.issue(&other.path().join("c.pem"), &other.path().join("k.pem"));
    let e = load("", &files(&cert, &other.path().join("k.pem")));
    assert!(
        e.iter()
            .any(|e| e.starts_with("tls.key_file:")
                && e.contains("is not the key of the certificate")),
        "{e:?}"
    );
    // HTTPS needs an https public URL; the redirect listener needs HTTPS.
    let e = load("", &files(&cert, &key)).len();
    assert_eq!(e, 0);
    let text = format!(
        "[server]\npublic_url = \"http://localhost\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n{}",
        files(&cert, &key)
    );
    let e =
        unikgate::config::Config::from_toml(&text, &HashMap::<String, String>::new()).unwrap_err();
    assert!(
        e.iter()
            .any(|e| e.key == "server.public_url" && e.message.contains("[tls]")),
        "{e:?}"
    );
    let e = load("http_listen = \"127.0.0.1:0\"", "");
    assert!(
        e.iter()
            .any(|e| e.starts_with("server.http_listen: redirects to HTTPS")),
        "{e:?}"
    );
}

/// The TLS step of `doctor`, as `unikgate doctor` builds it: the App of the configuration,
/// nothing served.
async fn doctor_tls(toml: &str) -> Vec<unikgate::doctor::Step> {
    let cfg = unikgate::config::Config::from_toml(toml, &HashMap::<String, String>::new())
        .unwrap_or_else(|e| panic!("{e:?}"));
    let (_, app) = unikgate::build_app(cfg).await.unwrap();
    unikgate::doctor::tls_steps(&app).await
}

#[tokio::test]
async fn doctor_shows_the_certificate_files_names_and_expiry_and_fails_them_when_wrong() {
    let m = StandIn::start().await;
    let ca = Ca::new("a");
    let app = start_tls(&ca, &m.url(), "").await;
    // The whole doctor of a serving unikgate shows the certificate of its files.
    let steps = unikgate::doctor::run(&app.app, None).await;
    let s = steps
        .iter()
        .find(|s| s.name == "TLS certificate")
        .expect("a TLS step");
    assert!(s.ok, "{s:?}");
    assert!(
        s.detail.starts_with("for localhost, 127.0.0.1; expires ") && s.detail.contains(" (in "),
        "{}",
        s.detail
    );
    let dir = app.dir.path();
    let toml = tls_config(&m.url(), 443, dir, "");
    // Another public host than the certificate names.
    let other = toml.replace("https://localhost:443", "https://analytics.example.com");
    let steps = doctor_tls(&other).await;
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(!steps[0].ok);
    assert!(
        steps[0].detail.starts_with(
            "does not name analytics.example.com (server.public_url's host): for localhost, 127.0.0.1;"
        ),
        "{}",
        steps[0].detail
    );
    // A certificate that expires in 3 days.
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(80);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    let soon = tempfile::tempdir().unwrap();
    std::fs::write(soon.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(soon.path().join("key.pem"), key.serialize_pem()).unwrap();
    let toml = tls_config(&m.url(), 443, soon.path(), "");
    let steps = doctor_tls(&toml).await;
    assert!(!steps[0].ok, "{steps:?}");
    assert!(
        steps[0].detail.starts_with("for localhost; expires ")
            && steps[0].detail.ends_with(
                "(in 2 days): renew it and replace tls.cert_file and tls.key_file (read again within 5 s)"
            ),
        "{}",
        steps[0].detail
    );
    // HTTPS served by a proxy in front: said, not failed; plain http: no TLS step.
    let plain = format!(
        "[server]\npublic_url = \"https://analytics.example.com\"\n[upstream]\nurl = \"{}\"\n[store]\nurl = \"sqlite://{}/data/unikgate.db\"\n",
        m.url(),
        soon.path().display()
    );
    let steps = doctor_tls(&plain).await;
    assert!(
        steps.len() == 1
            && steps[0].ok
            && steps[0].detail.starts_with("not served here ([tls] unset)"),
        "{steps:?}"
    );
    let steps = doctor_tls(&plain.replace("https://", "http://")).await;
    assert!(steps.is_empty(), "{steps:?}");
}

/// The plain-HTTP listener is an edge too: its connections count against the same caps as the
/// HTTPS listener's (one address cannot hold more than `max_connections_per_ip` of them), and a
/// body trickled after the head holds nothing (the redirect is answered, the connection closed).
#[tokio::test]
async fn the_plain_http_listener_caps_connections_and_holds_no_slow_body() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = unikgate::config::Config::from_toml(
        r#"
[server]
public_url = "https://analytics.example.com"
max_connections_per_ip = 3
[upstream]
url = "http://127.0.0.1:9"
"#,
        &HashMap::<String, String>::new(),
    )
    .unwrap();
    let task = tokio::spawn(async move {
        let _ =
            unikgate::server::redirect::serve(listener, &cfg, None, std::future::pending()).await;
    });
    // Three idle connections are held; the fourth is refused at once with 503.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), fourth.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A post whose body never comes: answered, then closed (not held open for the body).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /index.php HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nab")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 308"), "{text:?}");
    assert!(
        closed.is_ok(),
        "the connection is closed, not held for the body"
    );
    task.abort();
}
