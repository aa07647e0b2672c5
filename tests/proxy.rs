//! The foundation against the real app: header policy, classification refusals, public traffic,
//! redirects to sign-in, error pages, fail-closed without credentials.

mod support;

use std::io::{Read, Write};

use support::provider::FakeProvider;
use support::{config, location, Browser, StandIn, TestApp};

async fn setup() -> (StandIn, FakeProvider, TestApp) {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(&m.url(), &p.config(), "")).await;
    (m, p, app)
}

/// Sends raw bytes (exact header spellings) and returns the raw answer.
fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn spoofed_headers_never_reach_matomo() {
    let (m, _p, app) = setup().await;
    let addr = app.addr;
    let host = format!("127.0.0.1:{}", addr.port());
    let req = format!(
        "GET /matomo.php?idsite=1&rec=1 HTTP/1.1\r\nHost: {host}\r\nmatomo-username: admin\r\nMatomo_Username: admin\r\nMATOMO-ROLE: superuser\r\nMatomo-Email: x@evil.example\r\nmatomo_group: 1\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6;host=evil.example;proto=https\r\nX-Real-IP: 6.6.6.6\r\nX-Url-Scheme: https\r\nX-Forwarded-Uri: /admin\r\nConnection: close, X-Forwarded-For, X-Forwarded-Host\r\n\r\n"
    );
    let answer = tokio::task::spawn_blocking(move || raw(addr, &req))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = m.state.log();
    let hit = seen
        .iter()
        .find(|s| s.uri.starts_with("/matomo.php"))
        .expect("the hit reached Matomo");
    for (name, value) in &hit.headers {
        let n = name.as_str().replace('_', "-");
        assert!(
            !n.starts_with("matomo-"),
            "{name}: {value:?} reached Matomo"
        );
        assert_ne!(n, "forwarded");
        assert_ne!(n, "x-real-ip");
        assert_ne!(n, "x-url-scheme");
        assert_ne!(n, "x-forwarded-uri");
    }
    assert_eq!(hit.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(hit.headers["x-forwarded-for"], "127.0.0.1");
    assert!(
        !hit.headers.contains_key("x-forwarded-host"),
        "Host is the public host; no X-Forwarded-Host"
    );
    assert_eq!(hit.headers["x-forwarded-proto"], "http");
    assert_eq!(hit.headers["host"], host.as_str());
    assert!(!m.state.is_superuser("alice"));
}

#[tokio::test]
async fn autologin_is_refused_in_every_spelling() {
    let (m, _p, app) = setup().await;
    let b = Browser::new();
    for q in [
        "module=AutoLogin&action=index",
        "module=autologin",
        "module=AUTOLOGIN&action=index",
        "module=Login&module=AutoLogin",
        "module=Auto%4Cogin",
        "mod%75le=AutoLogin",
        "module=%41utoLogin",
    ] {
        let res = b.get(&app.url(&format!("/index.php?{q}"))).await;
        assert_eq!(res.status(), 403, "{q}");
        assert!(
            res.text().await.unwrap().contains("AutoLogin"),
            "{q}: a page that says why"
        );
        let res = b.get(&app.url(&format!("//index.php/x?{q}"))).await;
        assert_eq!(res.status(), 403, "//index.php/x?{q}");
    }
    for body in [
        "module=AutoLogin&action=index",
        "module=CoreHome&module=AutoLogin",
    ] {
        let res = b
            .client
            .post(app.url("/index.php"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "POST {body}");
    }
    // module[] is an array to PHP: not AutoLogin, and nothing crashes (a UI request: sign in).
    let res = b.get(&app.url("/index.php?module[]=AutoLogin")).await;
    assert_eq!(res.status(), 302);
    // A multipart post to index.php that does not name its module in the query is refused.
    let res = b
        .client
        .post(app.url("/index.php"))
        .header("content-type", "multipart/form-data; boundary=X")
        .body(
            "--X\r\nContent-Disposition: form-data; name=\"module\"\r\n\r\nAutoLogin\r\n--X--\r\n",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(m.state.mints(), 0, "no AutoLogin request reached Matomo");
}

#[tokio::test]
async fn public_traffic_passes_without_a_session_and_unchanged() {
    let (m, _p, app) = setup().await;
    let b = Browser::new();
    for path in [
        "/matomo.php?idsite=1&rec=1&url=https%3A%2F%2Fexample.com%2F",
        "/piwik.php?idsite=1&rec=1",
        "/matomo.js",
        "/piwik.js",
        "/js/tracker.php",
        "/js/container_abc123.js",
        "/index.php?module=CoreAdminHome&action=optOut&language=en",
        "/plugins/PrivacyManager/javascripts/optOut.js",
        "/plugins/CoreHome/images/favicon.png",
        "/libs/jquery/dist/jquery.min.js",
        "/robots.txt",
        "/index.php?module=API&method=VisitsSummary.get&idSite=1&period=day&date=today&format=json&token_auth=tok-alice",
    ] {
        m.state.clear_log();
        let res = b.get(&app.url(path)).await;
        assert_eq!(res.status(), 200, "{path}");
        if !path.starts_with("/robots") {
            let seen = m.state.log();
            assert_eq!(seen.last().map(|s| s.uri.as_str()), Some(path), "{path} reached Matomo as sent");
        }
    }
    // The UI's own AJAX calls: token_auth in the POST body.
    let res = b
        .client
        .post(app.url("/index.php?module=API&method=API.get&format=json"))
        .form(&[("token_auth", "tok-alice"), ("force_api_session", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["as"], "alice");
    // A POST tracking request keeps its body.
    let res = b
        .client
        .post(app.url("/matomo.php"))
        .body("idsite=1&rec=1")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["bytes"], 14);
}

#[tokio::test]
async fn ui_requests_redirect_to_sign_in_with_a_round_tripping_rd() {
    let (m, _p, app) = setup().await;
    let b = Browser::new();
    let deep = "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday#?x=1";
    let res = b.get(&app.url(deep)).await;
    assert_eq!(res.status(), 302);
    let loc = location(&res);
    assert!(loc.starts_with(&app.url("/_unikgate/sign_in?rd=")), "{loc}");
    let url = reqwest::Url::parse(&loc).unwrap();
    let rd = url
        .query_pairs()
        .find(|(k, _)| k == "rd")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(
        rd,
        "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday"
    );
    // The sign-in page carries it into its form.
    let html = b.get(&loc).await.text().await.unwrap();
    assert!(html.contains("Connect with your private @unikname"));
    assert!(html.contains("name=\"rd\" value=\"/index.php?module=CoreHome&#38;action=index&#38;idSite=1&#38;period=day&#38;date=yesterday\""), "{html}");
    // Nothing of the UI reached Matomo.
    assert!(m.state.log().is_empty());
    for path in [
        "/",
        "/index.php",
        "/index.php/extra?module=CoreHome",
        "/config/config.ini.php",
        "/plugins/Foo/Controller.php",
    ] {
        let res = b.get(&app.url(path)).await;
        assert_eq!(res.status(), 302, "{path}");
    }
}

#[tokio::test]
async fn upstream_down_gives_the_502_page() {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let app = TestApp::start(&config(&format!("http://{dead}"), &p.config(), "")).await;
    drop(m);
    let res = Browser::new().get(&app.url("/matomo.php?idsite=1")).await;
    assert_eq!(res.status(), 502);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    let html = res.text().await.unwrap();
    assert!(html.contains("Matomo is unreachable"), "{html}");
    assert!(html.contains("upstream.url"), "says what to check");
    let res = Browser::new().get(&app.url("/_unikgate/readyz")).await;
    assert_eq!(res.status(), 503);
}

#[tokio::test]
async fn slow_upstream_gives_the_504_page() {
    let (m, _p, app) = setup().await;
    m.state
        .delay_ms
        .store(7000, std::sync::atomic::Ordering::Relaxed);
    let res = Browser::new().get(&app.url("/matomo.php?idsite=1")).await;
    assert_eq!(res.status(), 504);
    assert!(res.text().await.unwrap().contains("upstream.timeout"));
}

#[tokio::test]
async fn without_provider_credentials_unikgate_fails_closed() {
    let m = StandIn::start().await;
    let app = TestApp::start(&config(&m.url(), "", "")).await;
    let b = Browser::new();
    let res = b.get(&app.url("/index.php?module=CoreHome")).await;
    assert_eq!(res.status(), 503);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("not configured yet: set provider.client_id / client_secret"),
        "{html}"
    );
    assert_eq!(b.get(&app.url("/_unikgate/readyz")).await.status(), 503);
    assert_eq!(b.get(&app.url("/_unikgate/healthz")).await.status(), 200);
    // Public traffic still flows.
    assert_eq!(b.get(&app.url("/matomo.php?idsite=1")).await.status(), 200);
    assert!(m.state.log().iter().all(|s| !s.uri.contains("CoreHome")));
}

#[tokio::test]
async fn own_pages_send_strict_security_headers() {
    let (_m, _p, app) = setup().await;
    let res = Browser::new().get(&app.url("/_unikgate/sign_in")).await;
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("default-src 'none'"));
    // The one script is a same-origin file (it keeps a link's #fragment through sign-in).
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let html = res.text().await.unwrap();
    assert!(html.contains("<script src=\"/_unikgate/static/fragment.js\" defer></script>"));
    assert_eq!(html.matches("<script").count(), 1, "no inline script");
    let js = Browser::new()
        .get(&app.url("/_unikgate/static/fragment.js"))
        .await;
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.text().await.unwrap().contains("location.hash"));
    // Request ids are unikgate's: a client-sent one is replaced (it would forge log correlation).
    let res = Browser::new()
        .client
        .get(app.url("/_unikgate/nope"))
        .header("x-request-id", "forged-id")
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id, "forged-id");
    assert!(
        res.text().await.unwrap().contains(&format!("request {id}")),
        "the page names the same id"
    );
}

#[tokio::test]
async fn limits_answer_4xx() {
    let (_m, _p, app) = setup().await;
    let b = Browser::new();
    let long = format!("/index.php?x={}", "a".repeat(9000));
    assert_eq!(b.get(&app.url(&long)).await.status(), 414);
    let huge = "b".repeat(70 * 1024);
    let res = b
        .client
        .get(app.url("/"))
        .header("x-big", huge)
        .send()
        .await;
    match res {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => panic!("expected 431, got {e}"),
    }
    let big_form = format!("csrf=x&rd={}", "c".repeat(100 * 1024));
    let form = support::unpooled()
        .post(app.url("/_unikgate/start"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big_form);
    assert!(matches!(support::oversized(form).await, 413 | 0));
    let q: Vec<String> = (0..1001).map(|i| format!("v{i}=1")).collect();
    let b = Browser::new();
    let res = b
        .get(&app.url(&format!("/index.php?{}", q.join("&"))))
        .await;
    assert!(
        matches!(res.status().as_u16(), 400 | 414),
        "{}",
        res.status()
    );
}

#[tokio::test]
async fn unknown_own_endpoint_is_404_and_metrics_are_not_public() {
    let (_m, _p, app) = setup().await;
    let b = Browser::new();
    assert_eq!(b.get(&app.url("/_unikgate/nope")).await.status(), 404);
    assert_eq!(b.get(&app.url("/_unikgate/metrics")).await.status(), 404);
}

#[tokio::test]
async fn uns_verification_file_is_served_without_a_session() {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("uns.txt");
    std::fs::write(&f, "uns-verification=abc123\n").unwrap();
    let app = TestApp::start(&config(
        &m.url(),
        &p.config(),
        &format!("[matomo]\nuns_verification_file = \"{}\"\n", f.display()),
    ))
    .await;
    let res = Browser::new()
        .get(&app.url("/.well-known/uns-verification.txt"))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "uns-verification=abc123\n");
}

#[tokio::test]
async fn trusted_proxies_are_believed_and_others_not() {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(&m.url(), &p.config(), "").replace(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    ))
    .await;
    Browser::new()
        .client
        .get(app.url("/matomo.php?idsite=1"))
        .header("x-forwarded-for", "203.0.113.9, 127.0.0.1")
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap();
    let seen = m.state.log();
    let hit = seen.last().unwrap();
    assert_eq!(hit.headers["x-forwarded-for"], "203.0.113.9");
    assert!(!hit.headers.contains_key("x-forwarded-host"));
}

#[tokio::test]
async fn matomo_redirects_and_cookies_keep_working_under_the_public_url() {
    let (_m, _p, app) = setup().await;
    // A tracker answer is forwarded as is; AutoLogin-like absolute Locations are rewritten: check
    // through the logout URL of Matomo, which unikgate handles itself (relative Location).
    let res = Browser::new()
        .get(&app.url("/index.php?module=Login&action=logout"))
        .await;
    assert_eq!(res.status(), 302);
    assert!(
        location(&res).starts_with(&app.url("/_unikgate/signed_out")),
        "{}",
        location(&res)
    );
}
