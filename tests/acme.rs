//! Automatic certificates over ACME against a real ACME server (Debian's pebble, Let's Encrypt's
//! test CA): a certificate issued from nothing and served (verified against pebble's root) over
//! HTTP/2, renewed before it expires, kept across a restart without a new order, ordered once by
//! two replicas sharing the folder, the HTTP-01 challenge on the plain port, and what each
//! failure shows.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Version;
use support::pebble::Pebble;
use support::{StandIn, TestApp, TEST_KEY};
use tokio::net::TcpListener;

const DOMAIN: &str = "gate.unikgate.test";

fn acme_config(upstream: &str, port: u16, acme_dir: &Path, tls: &str, extra: &str) -> String {
    format!(
        r#"
[server]
public_url = "https://{DOMAIN}:{port}"
{extra}
[upstream]
url = "{upstream}"
[session]
key = "{TEST_KEY}"
[store]
url = "sqlite://{{dir}}/data/unikgate.db"
[tls]
acme_dir = "{}"
{tls}
"#,
        acme_dir.display()
    )
}

/// `[tls]` lines pointing at `pebble`.
fn at(pebble: &Pebble) -> String {
    format!(
        "acme_directory = \"{}\"\nacme_ca_file = \"{}\"\nacme_email = \"ops@unikgate.test\"\n",
        pebble.directory,
        pebble.ca_file.display()
    )
}

/// The certificate `addr` serves for DOMAIN, verified against `root` only.
async fn served(addr: SocketAddr, root: &str) -> Result<(String, Option<Vec<u8>>), String> {
    support::pebble::served(addr, DOMAIN, root).await
}

/// Waits up to `secs` for `check` to give `Some`.
async fn within<T>(secs: u64, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..secs * 4 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what} did not happen within {secs} s");
}

/// The certificate `addr` serves once it is issued (within 60 s); the failure says what readyz
/// and pebble said.
async fn issued(addr: SocketAddr, root: &str, pebble: &Pebble) -> (String, Option<Vec<u8>>) {
    for _ in 0..240 {
        if let Ok(s) = served(addr, root).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = pebble.log_text();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    panic!(
        "no certificate within 60 s: {:?}\npebble:\n{}",
        readyz(addr).await,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

/// A client that trusts `root` only and reaches DOMAIN at `addr`.
fn client(addr: SocketAddr, root: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
        .resolve(DOMAIN, addr)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// What readyz says, asked without checking the certificate (the placeholder is self-signed).
async fn readyz(addr: SocketAddr) -> (u16, String) {
    let c = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve(DOMAIN, addr)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let res = c
        .get(format!("https://{DOMAIN}:{}/_unikgate/readyz", addr.port()))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_certificate_is_issued_from_nothing_served_over_h2_and_renewed_before_it_expires() {
    let m = StandIn::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Certificates of 30 s: renewed about 20 s after issue.
    let pebble = Pebble::start(addr.port(), 9, Some(Duration::from_secs(30))).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let acme_dir = dir.path().join("acme");
    let toml = acme_config(&m.url(), addr.port(), &acme_dir, &at(&pebble), "");
    let app = TestApp::start_on(&toml, dir.clone(), listener, addr).await;
    let root = pebble.issuing_root().await;
    let (first, alpn) = issued(addr, &root, &pebble).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "HTTP/2 by ALPN");
    // Ready, over HTTP/2, with HSTS, for a client trusting pebble's root only.
    let c = client(addr, &root);
    let res = c
        .get(format!("https://{DOMAIN}:{}/_unikgate/readyz", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let text = res.text().await.unwrap();
    assert!(
        !text.contains("tls:"),
        "readyz has nothing to say about TLS: {text}"
    );
    // Kept in the folder, readable by the owner only.
    use std::os::unix::fs::PermissionsExt;
    for f in ["certificate.pem", "account.json"] {
        let mode = std::fs::metadata(acme_dir.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is private: {mode:o}");
    }
    assert_eq!(pebble.issued(), 1);
    // Renewed before it expires: a new certificate, served without a restart.
    let renewed = within(45, "the renewal", async || {
        served(addr, &root).await.ok().filter(|(s, _)| *s != first)
    })
    .await;
    assert_ne!(renewed.0, first);
    assert!(pebble.issued() >= 2);
    // The challenge files of the orders are gone.
    let left: Vec<_> = std::fs::read_dir(acme_dir.join("challenges/tls-alpn-01"))
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    drop(app);
}

#[tokio::test]
async fn a_restart_serves_the_stored_certificate_without_a_new_order() {
    let m = StandIn::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pebble = Pebble::start(addr.port(), 9, None).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let acme_dir = dir.path().join("acme");
    let toml = acme_config(&m.url(), addr.port(), &acme_dir, &at(&pebble), "");
    let app = TestApp::start_on(&toml, dir.clone(), listener, addr).await;
    let root = pebble.issuing_root().await;
    let (serial, _) = issued(addr, &root, &pebble).await;
    app.stop().await;
    let orders = pebble.orders();
    assert_eq!((orders, pebble.issued()), (1, 1));
    // A new process on the same folder (and another port: nothing is validated again).
    let app = TestApp::start_in(&toml, dir.clone()).await;
    let (again, _) = served(app.addr, &root).await.expect("served at once");
    assert_eq!(again, serial, "the stored certificate");
    let (_, text) = readyz(app.addr).await;
    assert!(!text.contains("tls:"), "{text}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((pebble.orders(), pebble.issued()), (1, 1), "no new order");
}

#[tokio::test]
async fn two_replicas_sharing_the_folder_order_once_and_serve_the_same_certificate() {
    let m = StandIn::start().await;
    let (la, lb) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (a, b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    // The CA reaches replica b only: whichever replica orders, b answers from the folder.
    let pebble = Pebble::start(b.port(), 9, None).await;
    let shared = tempfile::tempdir().unwrap();
    let acme_dir = shared.path().join("acme");
    let (da, db) = (
        Arc::new(tempfile::tempdir().unwrap()),
        Arc::new(tempfile::tempdir().unwrap()),
    );
    let (ta, tb) = (
        acme_config(&m.url(), a.port(), &acme_dir, &at(&pebble), ""),
        acme_config(&m.url(), b.port(), &acme_dir, &at(&pebble), ""),
    );
    let (ra, rb) = tokio::join!(
        TestApp::start_on(&ta, da, la, a),
        TestApp::start_on(&tb, db, lb, b)
    );
    let root = pebble.issuing_root().await;
    let (sa, _) = issued(a, &root, &pebble).await;
    let (sb, _) = within(15, "replica b's certificate", async || {
        served(b, &root).await.ok()
    })
    .await;
    assert_eq!(sa, sb, "one certificate for both");
    assert_eq!(pebble.issued(), 1, "ordered once");
    drop((ra, rb));
}

#[tokio::test]
async fn http_01_is_answered_on_the_plain_http_port() {
    let m = StandIn::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    let pebble = Pebble::start(9, plain_addr.port(), None).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let tls = at(&pebble) + "acme_challenge = \"http-01\"\n";
    let toml = acme_config(
        &m.url(),
        addr.port(),
        &dir.path().join("acme"),
        &tls,
        &format!("http_listen = \"{plain_addr}\""),
    )
    .replace("{dir}", &dir.path().display().to_string());
    // Assembled as `serve` does: the plain listener up before the HTTPS one begins ordering.
    let cfg =
        unikgate::config::Config::from_toml(&toml, &HashMap::<String, String>::new()).unwrap();
    let (gate, app) = unikgate::build_app(cfg.clone()).await.unwrap();
    let acme = app.tls.as_ref().and_then(|t| t.acme()).cloned();
    assert!(acme.is_some());
    let redirect = tokio::spawn(async move {
        let _ = unikgate::server::redirect::serve(plain, &cfg, acme, std::future::pending()).await;
    });
    let server = tokio::spawn(unikgate::server::serve(
        listener,
        gate,
        std::future::pending(),
    ));
    let root = pebble.issuing_root().await;
    issued(addr, &root, &pebble).await;
    // The plain port still redirects everything else, and knows no other token.
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = c
        .get(format!("http://{plain_addr}/index.php"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 301);
    let res = c
        .get(format!(
            "http://{plain_addr}/.well-known/acme-challenge/unknown"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    redirect.abort();
    server.abort();
}

#[tokio::test]
async fn each_failure_is_named_by_readyz_while_a_placeholder_answers() {
    let m = StandIn::start().await;
    // The CA cannot reach the names: its TLS-ALPN-01 check goes to a closed port.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pebble = Pebble::start(closed, 9, None).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let toml = acme_config(
        &m.url(),
        addr.port(),
        &dir.path().join("acme"),
        &at(&pebble),
        "",
    );
    let app = TestApp::start_on(&toml, dir, listener, addr).await;
    let (status, text) = within(30, "the validation failure", async || {
        let (s, t) = readyz(addr).await;
        t.contains("could not check").then_some((s, t))
    })
    .await;
    assert_eq!(status, 503);
    assert!(
        text.contains(&format!("tls: no certificate from {} yet: the ACME CA could not check that {DOMAIN} is served here:", pebble.directory))
            && text.contains(&format!("check that DNS for {DOMAIN} points at this host and that port 443 (tls-alpn-01)")),
        "{text}"
    );
    drop(app);

    // The CA's own certificate is not trusted (a private CA without tls.acme_ca_file).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let tls = format!("acme_directory = \"{}\"\n", pebble.directory);
    let toml = acme_config(&m.url(), addr.port(), &dir.path().join("acme"), &tls, "");
    let app = TestApp::start_on(&toml, dir, listener, addr).await;
    let text = within(30, "the transport failure", async || {
        let (_, t) = readyz(addr).await;
        t.contains("cannot reach").then_some(t)
    })
    .await;
    assert!(
        text.contains(&format!("cannot reach the ACME CA at {}", pebble.directory))
            && text.contains("tls.acme_ca_file"),
        "{text}"
    );
    drop(app);

    // Nothing listens at the directory.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let tls = format!("acme_directory = \"https://127.0.0.1:{closed}/dir\"\n");
    let toml = acme_config(&m.url(), addr.port(), &dir.path().join("acme"), &tls, "");
    let _app = TestApp::start_on(&toml, dir, listener, addr).await;
    let text = within(30, "the connection failure", async || {
        let (_, t) = readyz(addr).await;
        t.contains("cannot reach").then_some(t)
    })
    .await;
    assert!(
        text.contains("Connection refused") || text.contains("connection refused"),
        "{text}"
    );
}

#[test]
fn check_names_each_mistake_of_acme() {
    let load = |server: &str, tls: &str| {
        let text =
            format!("[server]\n{server}\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[tls]\n{tls}");
        match unikgate::config::Config::from_toml(&text, &HashMap::<String, String>::new()) {
            Ok(_) => Vec::new(),
            Err(errs) => errs
                .into_iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect(),
        }
    };
    let named = "public_url = \"https://analytics.example.com\"";
    // Good: everything defaulted from the public URL and the data folder.
    assert_eq!(
        load(named, "acme_email = \"ops@example.com\""),
        Vec::<String>::new()
    );
    let cfg = unikgate::config::Config::from_toml(
        &format!(
            "[server]\n{named}\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[tls]\nhsts = true\n"
        ),
        &HashMap::<String, String>::new(),
    )
    .unwrap();
    let Some(unikgate::config::TlsCerts::Acme(a)) = cfg.tls.map(|t| t.certs) else {
        panic!("an empty [tls] is ACME");
    };
    assert_eq!(a.directory.as_str(), unikgate::config::LETS_ENCRYPT);
    assert_eq!(a.domains, vec!["analytics.example.com".to_string()]);
    assert_eq!(a.dir, Path::new("data/acme"));
    // From the environment alone.
    let env = HashMap::from([(
        "UNIKGATE_TLS__DOMAINS".to_string(),
        "a.example.com, B.example.com".to_string(),
    )]);
    let cfg = unikgate::config::Config::from_toml(
        &format!("[server]\n{named}\n[upstream]\nurl = \"http://127.0.0.1:9\"\n"),
        &env,
    )
    .unwrap();
    let Some(unikgate::config::TlsCerts::Acme(a)) = cfg.tls.map(|t| t.certs) else {
        panic!("tls.domains alone turns ACME on");
    };
    assert_eq!(a.domains, vec!["a.example.com", "b.example.com"]);
    let one = |server: &str, tls: &str| {
        let e = load(server, tls);
        assert_eq!(e.len(), 1, "{e:?}");
        e[0].clone()
    };
    let e = one(
        "public_url = \"https://127.0.0.1\"",
        "acme_email = \"ops@example.com\"",
    );
    assert!(
        e.starts_with("tls.domains: is required: server.public_url's host is an IP address"),
        "{e}"
    );
    let e = one(named, "domains = [\"*.example.com\"]");
    assert!(e.contains("a wildcard needs the DNS-01 challenge"), "{e}");
    let e = one(named, "domains = [\"bad_name.example.com\"]");
    assert!(
        e.starts_with("tls.domains: \"bad_name.example.com\": not a DNS name"),
        "{e}"
    );
    let e = one(
        named,
        "cert_file = \"/x\"\nkey_file = \"/y\"\nacme_email = \"ops@example.com\"",
    );
    assert!(
        e.starts_with("tls.acme_email: is an ACME setting, and tls.cert_file/key_file are set too"),
        "{e}"
    );
    let e = one(named, "acme_challenge = \"http-01\"");
    assert!(
        e.starts_with("tls.acme_challenge: \"http-01\" is answered on server.http_listen"),
        "{e}"
    );
    let e = one(named, "acme_directory = \"http://ca.example/dir\"");
    assert!(
        e.starts_with("tls.acme_directory: must be an https:// URL"),
        "{e}"
    );
    let e = one(named, "acme_ca_file = \"/nonexistent/ca.pem\"");
    assert!(
        e.starts_with("tls.acme_ca_file: cannot read /nonexistent/ca.pem"),
        "{e}"
    );
    // The compose file's TLS_MODE=auto with every other key empty: ACME with its defaults.
    let env = HashMap::from([
        ("UNIKGATE_TLS__MODE".to_string(), "auto".to_string()),
        ("UNIKGATE_TLS__CERT_FILE".to_string(), String::new()),
        ("UNIKGATE_TLS__ACME_DIRECTORY".to_string(), String::new()),
    ]);
    let cfg = unikgate::config::Config::from_toml(
        &format!("[server]\n{named}\n[upstream]\nurl = \"http://127.0.0.1:9\"\n"),
        &env,
    )
    .unwrap();
    assert!(
        matches!(
            cfg.tls.map(|t| t.certs),
            Some(unikgate::config::TlsCerts::Acme(_))
        ),
        "tls.mode = auto alone turns ACME on"
    );
    // tls.mode = "off": plain HTTP behind a proxy; the other keys stay written, unread, and the
    // redirect listener is not served.
    let off = unikgate::config::Config::from_toml(
        &format!("[server]\n{named}\nhttp_listen = \"0.0.0.0:80\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[tls]\nmode = \"off\"\ncert_file = \"/nonexistent\"\nacme_email = \"ops@example.com\"\n"),
        &HashMap::<String, String>::new(),
    )
    .unwrap();
    assert!(off.tls.is_none());
    assert_eq!(off.server.http_listen, None);
    let e = one(named, "mode = \"on\"");
    assert!(
        e.starts_with("tls.mode: \"on\" is not one of: auto, off"),
        "{e}"
    );
    let e = one(named, "acme_email = \"not an address\"");
    assert!(e.starts_with("tls.acme_email:"), "{e}");
    let e = load(named, "acme_dir = \"\"");
    assert!(e.is_empty(), "an empty acme_dir is the default: {e:?}");
    let e = one(
        &format!("{named}\n[store]\nurl = \"postgres://u:p@db/unikgate\"\n[session]\nkey = \"{TEST_KEY}\""),
        "acme_email = \"ops@example.com\"",
    );
    assert!(
        e.starts_with("tls.acme_dir: is required when the store is not a SQLite file"),
        "{e}"
    );
}

#[tokio::test]
async fn doctor_shows_the_ca_the_folder_the_certificate_and_the_last_failure_without_ordering() {
    let m = StandIn::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pebble = Pebble::start(addr.port(), 9, None).await;
    // `unikgate doctor`: the App of the configuration built, nothing served.
    let doctor = async |toml: &str, dir: &Path| {
        let text = toml.replace("{dir}", &dir.display().to_string());
        let cfg =
            unikgate::config::Config::from_toml(&text, &HashMap::<String, String>::new()).unwrap();
        let (_, app) = unikgate::build_app(cfg).await.unwrap();
        unikgate::doctor::tls_steps(&app).await
    };
    let verdicts = |steps: &[unikgate::doctor::Step]| -> Vec<(&'static str, bool)> {
        steps.iter().map(|s| (s.name, s.ok)).collect()
    };
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let acme_dir = dir.path().join("acme");
    let toml = acme_config(&m.url(), addr.port(), &acme_dir, &at(&pebble), "");
    let steps = doctor(&toml, dir.path()).await;
    assert_eq!(
        verdicts(&steps),
        [
            ("ACME directory", true),
            ("ACME folder", true),
            ("ACME certificate", true)
        ],
        "{steps:?}"
    );
    assert_eq!(steps[0].detail, format!("{} answers", pebble.directory));
    assert_eq!(
        steps[1].detail,
        format!("{} is writable", acme_dir.display())
    );
    assert_eq!(steps[2].detail, "none yet (ordered when `serve` starts)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pebble.orders(), 0, "doctor orders nothing");
    // Once `serve` has it, doctor (another App on the folder, as another process) shows it.
    let app = TestApp::start_on(&toml, dir.clone(), listener, addr).await;
    let root = pebble.issuing_root().await;
    issued(addr, &root, &pebble).await;
    let steps = doctor(&toml, dir.path()).await;
    assert_eq!(
        verdicts(&steps),
        [
            ("ACME directory", true),
            ("ACME folder", true),
            ("ACME certificate", true)
        ],
        "{steps:?}"
    );
    let line = &steps[2].detail;
    assert!(
        line.starts_with(&format!("for {DOMAIN}; expires ")) && line.contains("; renewal from "),
        "{line}"
    );
    assert_eq!(
        unikgate::doctor::tls_steps(&app.app).await[2].detail,
        *line,
        "the serving process says the same"
    );
    app.stop().await;

    // A private CA whose root is not in tls.acme_ca_file: doctor says so, and once `serve`
    // failed, any later doctor shows that failure (kept in the folder).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let tls = format!("acme_directory = \"{}\"\n", pebble.directory);
    let toml = acme_config(&m.url(), addr.port(), &dir.path().join("acme"), &tls, "");
    let steps = doctor(&toml, dir.path()).await;
    assert!(!steps[0].ok, "{steps:?}");
    assert!(
        steps[0]
            .detail
            .starts_with(&format!("cannot reach {}: ", pebble.directory))
            && steps[0]
                .detail
                .ends_with("(a private CA's root goes in tls.acme_ca_file)"),
        "{}",
        steps[0].detail
    );
    assert!(!steps.iter().any(|s| s.name == "ACME last error"));
    let _app = TestApp::start_on(&toml, dir.clone(), listener, addr).await;
    within(30, "serve's failure", async || {
        readyz(addr)
            .await
            .1
            .contains("cannot reach the ACME CA")
            .then_some(())
    })
    .await;
    let steps = doctor(&toml, dir.path()).await;
    let last = steps
        .iter()
        .find(|s| s.name == "ACME last error")
        .unwrap_or_else(|| panic!("{steps:?}"));
    assert!(!last.ok);
    assert!(
        last.detail.contains(&format!(
            ": cannot reach the ACME CA at {}",
            pebble.directory
        )),
        "{}",
        last.detail
    );

    // Nothing listens at the directory.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let tls = format!("acme_directory = \"https://127.0.0.1:{closed}/dir\"\n");
    let toml = acme_config(&m.url(), 443, &dir.path().join("acme"), &tls, "");
    let steps = doctor(&toml, dir.path()).await;
    assert!(
        !steps[0].ok
            && steps[0]
                .detail
                .to_lowercase()
                .contains("connection refused"),
        "{steps:?}"
    );
}
