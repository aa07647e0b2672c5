//! The Matomo versions users run, on the stand-in's version profiles (tests/support/matomo/,
//! tests/CONTRACT.md "By Matomo version"): the 5.7 scheme rule behind TLS and what
//! matomo-setup.sh changes, `Authorization: Bearer` API clients and a browser's own
//! `Authorization`, the 5.8 conflicts, the 5.13 token rule on the link proof, the 5.14 security
//! headers, and `doctor` on each profile. The real 5.1.2 proves the rest (tests/real_matomo.rs);
//! `tests/run` also runs the journeys, the attacks and the minting tests on every profile.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use support::matomo::Version;
use support::provider::FakeProvider;
use support::{
    config, link_password, link_password_at, location, sign_in, Browser, StandIn, TestApp,
};

const SECRET: &str = "unikgate-and-matomo-share-this-32b+";
const DASHBOARD: &str = "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=today";

fn signed(extra: &str) -> String {
    format!("[matomo]\nminter = \"signed\"\nshared_secret = \"{SECRET}\"\n{extra}")
}

async fn standin(v: Version) -> StandIn {
    let m = StandIn::start().await;
    m.state.set_version(v);
    *m.state.unikgate_secret.lock().unwrap() = Some(SECRET.to_string());
    m
}

/// unikgate as the compose file configures it: an https public URL (TLS in front), the signed
/// minter. The test browser talks plain http to its listener (cookie_store sends Secure cookies
/// to loopback) and follows unikgate's https redirects over http.
async fn behind_tls(m: &StandIn, p: &FakeProvider) -> (TestApp, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let public = format!("https://{addr}");
    let toml = config(&m.url(), &p.config(), &signed("")).replace("{public}", &public);
    let dir = Arc::new(tempfile::tempdir().unwrap());
    (TestApp::start_on(&toml, dir, listener, addr).await, public)
}

fn plain(url: &str) -> String {
    url.replacen("https://", "http://", 1)
}

/// Sign-in at the unikgate behind TLS, as `sub`; the answer of the callback.
async fn sign_in_behind_tls(
    b: &Browser,
    app: &TestApp,
    p: &FakeProvider,
    sub: &str,
) -> reqwest::Response {
    p.set_sub(sub);
    let res = support::start_sign_in(b, &app.url(""), DASHBOARD).await;
    let res = b.get(&location(&res)).await;
    b.get(&plain(&location(&res))).await
}

#[tokio::test]
async fn a_matomo_that_ignores_x_forwarded_proto_refuses_until_matomo_setup_runs() {
    // 5.7 and later: X-Forwarded-Proto is read only when proxy_scheme_headers[] names it.
    let m = standin(Version(5, 7, 0)).await;
    let p = FakeProvider::start().await;
    let (app, public) = behind_tls(&m, &p).await;
    let b = Browser::new();
    let res = sign_in_behind_tls(&b, &app, &p, "uns-alice").await;
    assert!(
        location(&res).contains("/_unikgate/link"),
        "{}",
        location(&res)
    );
    let res = link_password(&b, &app, DASHBOARD, "alice", "alice-password").await;
    let (res, _) = b.follow(res, 3).await;
    let status = res.status();
    let page = res.text().await.unwrap();
    // The link is kept; the session is refused, with the line to add.
    assert_eq!(status, 502, "{page}");
    let host = public.trim_start_matches("https://");
    for want in [
        "Matomo believes its URL is http:// behind TLS",
        "proxy_scheme_headers[] = &#34;HTTP_X_FORWARDED_PROTO&#34;",
        &format!("public_url = &#34;{public}&#34;"),
        &format!("this Matomo is http://{host}/"),
    ] {
        assert!(page.contains(want), "{want:?} not on the page:\n{page}");
    }
    assert!(m.state.sessions_of("alice") == 0);
    // deploy/matomo-setup.sh with the compose file's PUBLIC_URL: the next request mints.
    m.state.run_setup_script(Some(&public));
    let res = b.get(&app.url(DASHBOARD)).await;
    let html = res.text().await.unwrap();
    assert!(html.contains("piwik.userLogin = \"alice\""), "{html}");
    app.stop().await;
}

#[tokio::test]
async fn behind_tls_the_scheme_header_alone_or_public_url_alone_is_enough() {
    for (scheme_header, public_url) in [(true, false), (false, true)] {
        let m = standin(Version(5, 14, 1)).await;
        let p = FakeProvider::start().await;
        let (app, public) = behind_tls(&m, &p).await;
        if scheme_header {
            m.state.run_setup_script(None);
        } else {
            *m.state.unikgate_public_url.lock().unwrap() = Some(public.clone());
        }
        let b = Browser::new();
        sign_in_behind_tls(&b, &app, &p, "uns-alice").await;
        let res = link_password(&b, &app, DASHBOARD, "alice", "alice-password").await;
        assert_eq!(
            res.status(),
            302,
            "scheme header {scheme_header}, public_url {public_url}"
        );
        assert_eq!(plain(&location(&res)), app.url(DASHBOARD));
        let html = b.get(&app.url(DASHBOARD)).await.text().await.unwrap();
        assert!(html.contains("piwik.userLogin = \"alice\""));
        app.stop().await;
    }
    // Up to 5.6 Matomo read X-Forwarded-Proto unasked: nothing to configure.
    let m = standin(Version(5, 1, 2)).await;
    let p = FakeProvider::start().await;
    let (app, _) = behind_tls(&m, &p).await;
    let b = Browser::new();
    sign_in_behind_tls(&b, &app, &p, "uns-alice").await;
    let res = link_password(&b, &app, DASHBOARD, "alice", "alice-password").await;
    assert_eq!(res.status(), 302);
    app.stop().await;
}

async fn plain_gate(m: &StandIn, p: &FakeProvider) -> TestApp {
    TestApp::start(&config(&m.url(), &p.config(), &signed(""))).await
}

#[tokio::test]
async fn a_bearer_api_client_gets_matomos_answer() {
    let m = standin(Version(5, 14, 1)).await;
    m.state.fpm.store(true, Ordering::Relaxed);
    let p = FakeProvider::start().await;
    let app = plain_gate(&m, &p).await;
    let b = Browser::new();
    let api =
        "/index.php?module=API&method=VisitsSummary.get&idSite=1&period=day&date=today&format=json";
    let bearer = [("authorization", "Bearer tok-alice")];
    let res = b.get_with(&app.url(api), &bearer).await;
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["as"], "alice", "{v}");
    let seen = m.state.log();
    let last = seen
        .iter()
        .rev()
        .find(|s| s.uri.contains("VisitsSummary"))
        .unwrap();
    assert_eq!(last.headers["authorization"], "Bearer tok-alice");
    // The same request without a token is UI traffic: to the sign-in.
    let res = b.get(&app.url(api)).await;
    assert!(
        location(&res).contains("/_unikgate/sign_in"),
        "{}",
        location(&res)
    );
    // Another scheme or spelling is no token to Matomo: no public path either.
    for v in ["bearer tok-alice", "Basic YWxpY2U6eA==", "Bearer "] {
        let res = b.get_with(&app.url(api), &[("authorization", v)]).await;
        assert!(location(&res).contains("/_unikgate/sign_in"), "{v}");
    }
    // A widget too (and its client-side API calls post token_auth in the body, 5.10).
    let res = b
        .get_with(
            &app.url("/index.php?module=Widgetize&action=iframe&moduleToWidgetize=VisitsSummary&actionToWidgetize=getEvolutionGraph&idSite=1&period=day&date=today"),
            &bearer,
        )
        .await;
    assert_eq!(res.status(), 200);
    // The header never opens Matomo's Login module or the plugins.
    let res = b
        .get_with(&app.url("/index.php?module=API&method=UnikGate.x"), &bearer)
        .await;
    assert_eq!(res.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn apache_without_cgipassauth_hands_php_no_bearer_token() {
    // The official matomo:apache image (mod_php): Matomo answers as to an anonymous caller;
    // unikgate passes that answer on (README: CGIPassAuth On).
    let m = standin(Version(5, 14, 1)).await;
    let p = FakeProvider::start().await;
    let app = plain_gate(&m, &p).await;
    let b = Browser::new();
    let api = "/index.php?module=API&method=VisitsSummary.get&format=json";
    let res = b
        .get_with(&app.url(api), &[("authorization", "Bearer tok-alice")])
        .await;
    assert_eq!(res.status(), 401);
    m.state.cgi_pass_auth.store(true, Ordering::Relaxed);
    let res = b
        .get_with(&app.url(api), &[("authorization", "Bearer tok-alice")])
        .await;
    assert_eq!(res.status(), 200);
    // Matomo 5.1.2 has no Bearer tokens at all: its own "no access" answer, not a sign-in.
    m.state.set_version(Version(5, 1, 2));
    let res = b
        .get_with(&app.url(api), &[("authorization", "Bearer tok-alice")])
        .await;
    assert_eq!(res.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn a_browsers_authorization_never_reaches_matomo_on_the_signed_in_ui() {
    // Matomo 5.4 and later would run a UI request with a Bearer token as the token's owner and
    // ignore the session: unikgate's signed-in UI drops the header (README).
    let m = standin(Version(5, 14, 1)).await;
    m.state.fpm.store(true, Ordering::Relaxed);
    let p = FakeProvider::start().await;
    let app = plain_gate(&m, &p).await;
    let b = Browser::new();
    sign_in(&b, &app, &p, "uns-alice", DASHBOARD).await;
    let res = link_password(&b, &app, DASHBOARD, "alice", "alice-password").await;
    assert_eq!(res.status(), 302);
    m.state.clear_log();
    let html = b
        .get_with(&app.url(DASHBOARD), &[("authorization", "Bearer tok-bob")])
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("piwik.userLogin = \"alice\""), "{html}");
    assert!(m
        .state
        .log()
        .iter()
        .all(|s| !s.headers.contains_key("authorization")));
    // Signed out, the header opens no UI either: to the sign-in.
    let res = Browser::new()
        .get_with(&app.url(DASHBOARD), &[("authorization", "Bearer tok-bob")])
        .await;
    assert!(location(&res).contains("/_unikgate/sign_in"));
    app.stop().await;
}

#[tokio::test]
async fn conflicting_tokens_get_matomos_400_from_5_8_on() {
    let m = standin(Version(5, 8, 0)).await;
    m.state.fpm.store(true, Ordering::Relaxed);
    let p = FakeProvider::start().await;
    let app = plain_gate(&m, &p).await;
    let b = Browser::new();
    let url =
        app.url("/index.php?module=API&method=VisitsSummary.get&format=json&token_auth=tok-bob");
    let res = b
        .get_with(&url, &[("authorization", "Bearer tok-alice")])
        .await;
    assert_eq!(res.status(), 400);
    // 5.4 to 5.7 ran such a request as the parameter's token.
    m.state.set_version(Version(5, 7, 0));
    let res = b
        .get_with(&url, &[("authorization", "Bearer tok-alice")])
        .await;
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["as"], "bob");
    // The same token twice is no conflict.
    m.state.set_version(Version(5, 14, 1));
    let url =
        app.url("/index.php?module=API&method=VisitsSummary.get&format=json&token_auth=tok-alice");
    let res = b
        .get_with(&url, &[("authorization", "Bearer tok-alice")])
        .await;
    assert_eq!(res.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn the_api_answers_security_headers_pass_once() {
    let m = standin(Version(5, 14, 1)).await;
    let p = FakeProvider::start().await;
    let app = plain_gate(&m, &p).await;
    let res =
        Browser::new()
            .get(&app.url(
                "/index.php?module=API&method=VisitsSummary.get&format=json&token_auth=tok-alice",
            ))
            .await;
    assert_eq!(res.status(), 200);
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "deny"),
    ] {
        let all: Vec<_> = res.headers().get_all(name).iter().collect();
        assert_eq!(all, [value], "{name}");
    }
    assert_eq!(
        res.headers()
            .get_all("content-security-policy")
            .iter()
            .count(),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn the_link_proof_sends_no_browser_session_so_5_13_accepts_it() {
    // 5.13: createAppSpecificTokenAuth only for the acting user. A browser signed in to Matomo
    // as bob (password login, then the @unikname sign-in) links alice: the proof is unikgate's
    // own anonymous call.
    let m = standin(Version(5, 13, 0)).await;
    let p = FakeProvider::start().await;
    let app = plain_gate(&m, &p).await;
    let b = Browser::new();
    let bobs = m.state.login_with_password("bob");
    b.jar.add_cookie_str(
        &format!("MATOMO_SESSID={bobs}; Path=/"),
        &app.url("/").parse().unwrap(),
    );
    sign_in(&b, &app, &p, "uns-alice", DASHBOARD).await;
    let res = link_password_at(&b, &app.url(""), DASHBOARD, "alice", "alice-password").await;
    assert_eq!(
        res.status(),
        302,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let html = b.get(&app.url(DASHBOARD)).await.text().await.unwrap();
    assert!(html.contains("piwik.userLogin = \"alice\""));
    app.stop().await;
}

#[tokio::test]
async fn doctor_prints_the_version_and_its_checks_on_every_profile() {
    for &v in Version::PROFILES {
        let m = standin(v).await;
        let p = FakeProvider::start().await;
        let (app, public) = behind_tls(&m, &p).await;
        let steps = unikgate::doctor::run(&app.app, None).await;
        let get = |steps: &[unikgate::doctor::Step], n: &str| {
            steps
                .iter()
                .find(|s| s.name == n)
                .cloned()
                .unwrap_or_else(|| panic!("{v}: no step {n}: {steps:?}"))
        };
        let version = get(&steps, "Matomo version");
        assert!(
            version.ok && version.detail.starts_with(&format!("Matomo {v} (")),
            "{version:?}"
        );
        let scheme = get(&steps, "scheme header");
        let audience = get(&steps, "audience");
        if v.at_least(5, 7) {
            assert!(!scheme.ok, "{v}: {scheme:?}");
            assert!(
                scheme
                    .detail
                    .contains("[General] proxy_scheme_headers[] = \"HTTP_X_FORWARDED_PROTO\""),
                "{scheme:?}"
            );
            assert!(
                !audience.ok && audience.detail.contains("proxy_scheme_headers"),
                "{audience:?}"
            );
        } else {
            assert!(scheme.ok && audience.ok, "{v}: {scheme:?} {audience:?}");
        }
        let logout = get(&steps, "logoutUser");
        assert_eq!(
            logout
                .detail
                .starts_with("UsersManager.logoutUser is there"),
            v.at_least(5, 9),
            "{logout:?}"
        );
        m.state.run_setup_script(Some(&public));
        let steps = unikgate::doctor::run(&app.app, None).await;
        for n in [
            "shared secret",
            "Matomo version",
            "scheme header",
            "audience",
            "client address header",
            "host header",
            "plugin audience",
            "clock skew",
        ] {
            let s = get(&steps, n);
            assert!(s.ok, "{v} after matomo-setup.sh: {s:?}");
        }
        unikgate::doctor::print(&steps);
        app.stop().await;
    }
}
