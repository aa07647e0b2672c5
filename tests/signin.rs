//! Unikname Connect sign-in and unikgate sessions: the flow, cookie flags, fixation, restarts, and
//! every refusal, against the fake provider (faults) and the real `oidc-provider`.

mod support;

use std::sync::Arc;

use support::provider::{FakeProvider, Fault, NodeProvider, CLIENT_SECRET};
use support::{config, csrf_of, location, Browser, StandIn, TestApp};

async fn setup() -> (StandIn, FakeProvider, TestApp) {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(&m.url(), &p.config(), "")).await;
    (m, p, app)
}

/// sign_in page → start → (provider) → the authorize redirect the browser would follow.
async fn start(b: &Browser, app: &TestApp, rd: &str) -> reqwest::Response {
    let url = app.url(&format!("/_unikgate/sign_in?rd={}", urlencode(rd)));
    let html = b.get(&url).await.text().await.unwrap();
    let csrf = csrf_of(&html);
    let res = b
        .post(&app.url("/_unikgate/start"), &[("csrf", &csrf), ("rd", rd)])
        .await;
    assert_eq!(res.status(), 303, "start redirects to the provider");
    res
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A whole sign-in against the fake provider; returns the callback's answer.
async fn sign_in(b: &Browser, app: &TestApp, rd: &str) -> reqwest::Response {
    let res = start(b, app, rd).await;
    let res = b.get(&location(&res)).await;
    assert_eq!(res.status(), 302, "the fake provider redirects back");
    b.get(&location(&res)).await
}

#[tokio::test]
async fn authorization_request_has_pkce_state_and_nonce() {
    let (_m, p, app) = setup().await;
    let b = Browser::new();
    let res = start(&b, &app, "/").await;
    let loc = reqwest::Url::parse(&location(&res)).unwrap();
    let q: std::collections::HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["code_challenge"].len() >= 43);
    assert!(q["state"].len() >= 32);
    assert!(q["nonce"].len() >= 16);
    assert_eq!(q["redirect_uri"], app.url("/_unikgate/callback"));
    assert_eq!(q["scope"], "openid email");
    let res = b.get(loc.as_str()).await;
    let res = b.get(&location(&res)).await;
    assert_eq!(res.status(), 302);
    assert!(
        location(&res).starts_with(&app.url("/_unikgate/link")),
        "{}",
        location(&res)
    );
    assert_eq!(p.state.lock().unwrap().token_calls, 1);
}

#[tokio::test]
async fn session_cookie_flags() {
    let (_m, _p, app) = setup().await;
    let b = Browser::new();
    let res = b.get(&app.url("/_unikgate/sign_in")).await;
    let c = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(c.starts_with("unikgate_session="), "{c}");
    assert!(c.contains("HttpOnly"), "{c}");
    assert!(c.contains("SameSite=Lax"), "{c}");
    assert!(c.contains("Path=/"), "{c}");
    assert!(
        !c.contains("Secure"),
        "http public URL: no Secure flag: {c}"
    );
    // https public URL → Secure.
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(&m.url(), &p.config(), "").replace(
        "public_url = \"{public}\"",
        "public_url = \"https://analytics.example.com\"",
    ))
    .await;
    let res = Browser::new().get(&app.url("/_unikgate/sign_in")).await;
    let c = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(c.contains("Secure"), "{c}");
}

#[tokio::test]
async fn a_planted_session_id_is_not_kept() {
    let (_m, _p, app) = setup().await;
    let b = Browser::new();
    // The attacker's pre-sign-in session, planted in the victim's browser.
    let attacker = Browser::new();
    let _ = attacker.get(&app.url("/_unikgate/sign_in")).await;
    let planted = attacker.cookie(&app.url("/"), "unikgate_session").unwrap();
    b.set_cookie(
        &app.url("/"),
        &format!("unikgate_session={planted}; Path=/"),
    );
    let res = sign_in(&b, &app, "/").await;
    assert_eq!(res.status(), 302);
    let after = b.cookie(&app.url("/"), "unikgate_session").unwrap();
    assert_ne!(after, planted, "a new session id at sign-in");
    // The planted id does not carry the victim's sign-in.
    attacker.set_cookie(
        &app.url("/"),
        &format!("unikgate_session={planted}; Path=/"),
    );
    let res = attacker.get(&app.url("/_unikgate/account")).await;
    assert_eq!(res.status(), 302);
    assert!(location(&res).contains("/_unikgate/sign_in"));
    // The victim is signed in.
    let res = b.get(&app.url("/_unikgate/account")).await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn tampered_and_unsigned_cookies_are_ignored() {
    let (_m, _p, app) = setup().await;
    let b = Browser::new();
    sign_in(&b, &app, "/").await;
    let good = b.cookie(&app.url("/"), "unikgate_session").unwrap();
    let other = Browser::new();
    // The id without its signature, and a flipped signature.
    let id = &good[44..];
    for forged in [
        id.to_string(),
        format!("{}{}", "A".repeat(44), id),
        format!("{}x", &good[..good.len() - 1]),
    ] {
        other.set_cookie(&app.url("/"), &format!("unikgate_session={forged}; Path=/"));
        let res = other.get(&app.url("/_unikgate/account")).await;
        assert_eq!(res.status(), 302, "forged cookie {forged}");
    }
}

#[tokio::test]
async fn sessions_survive_a_restart() {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let toml = config(&m.url(), &p.config(), "");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = TestApp::start_on(&toml, dir.clone(), listener, addr).await;
    let b = Browser::new();
    sign_in(&b, &app, "/").await;
    assert_eq!(b.get(&app.url("/_unikgate/account")).await.status(), 200);
    app.stop().await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = TestApp::start_on(&toml, dir, listener, addr).await;
    let res = b.get(&app.url("/_unikgate/account")).await;
    assert_eq!(res.status(), 200, "still signed in after the restart");
}

#[tokio::test]
async fn a_replayed_state_quietly_starts_over() {
    let (_m, _p, app) = setup().await;
    let b = Browser::new();
    let res = start(&b, &app, "/").await;
    let res = b.get(&location(&res)).await;
    let callback = location(&res);
    let first = b.get(&callback).await;
    assert_eq!(first.status(), 302);
    assert!(location(&first).contains("/_unikgate/link"));
    let again = b.get(&callback).await;
    assert_eq!(again.status(), 302, "no error page");
    assert_eq!(location(&again), app.url("/_unikgate/sign_in"));
}

#[tokio::test]
async fn a_state_from_another_browser_is_refused() {
    let (_m, _p, app) = setup().await;
    let victim = Browser::new();
    let attacker = Browser::new();
    // Login CSRF: the attacker starts a sign-in and makes the victim's browser complete it.
    let res = start(&attacker, &app, "/").await;
    let res = attacker.get(&location(&res)).await;
    let callback = location(&res);
    let _ = victim.get(&app.url("/_unikgate/sign_in")).await;
    let res = victim.get(&callback).await;
    assert_eq!(res.status(), 302);
    assert_eq!(location(&res), app.url("/_unikgate/sign_in"));
    let res = victim.get(&app.url("/_unikgate/account")).await;
    assert_eq!(
        res.status(),
        302,
        "the victim is not signed in as the attacker"
    );
}

#[tokio::test]
async fn a_replayed_code_fails_safely() {
    let (_m, _p, app) = setup().await;
    let b = Browser::new();
    // Two sign-ins under way in one browser: complete the first, then send its code with the
    // second one's state.
    let r1 = start(&b, &app, "/").await;
    let r2 = start(&b, &app, "/").await;
    let cb1 = location(&b.get(&location(&r1)).await);
    let state2 = reqwest::Url::parse(&location(&r2))
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let code1 = reqwest::Url::parse(&cb1)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(b.get(&cb1).await.status(), 302);
    let replay = app.url(&format!(
        "/_unikgate/callback?code={}&state={}",
        urlencode(&code1),
        urlencode(&state2)
    ));
    let res = b.get(&replay).await;
    // The session was cycled at the first sign-in, so the second state is gone with it, or the
    // provider refuses the used code: either way no second sign-in happens.
    assert!(
        matches!(res.status().as_u16(), 302 | 403),
        "{}",
        res.status()
    );
    if res.status() == 403 {
        assert!(res.text().await.unwrap().contains("already used"));
    }
}

#[tokio::test]
async fn bad_id_tokens_are_refused() {
    let (_m, p, app) = setup().await;
    for (fault, says) in [
        (Fault::NonceMismatch, "nonce"),
        (Fault::WrongAudience, "another application"),
        (Fault::WrongIssuer, "another issuer"),
        (Fault::Expired, "expired"),
        (Fault::BadSignature, "signature"),
        (Fault::SubMismatch, "does not match the ID token"),
    ] {
        p.set(fault);
        let b = Browser::new();
        let res = sign_in(&b, &app, "/").await;
        assert_eq!(res.status(), 403, "{fault:?}");
        let html = res.text().await.unwrap();
        assert!(html.contains(says), "{fault:?}: {html}");
        assert_eq!(
            b.get(&app.url("/_unikgate/account")).await.status(),
            302,
            "{fault:?}: not signed in"
        );
    }
}

#[tokio::test]
async fn declined_consent_shows_the_declined_page_with_a_retry() {
    let (_m, p, app) = setup().await;
    p.set(Fault::Deny);
    let b = Browser::new();
    let rd = "/index.php?module=CoreHome&action=index&idSite=1";
    let res = sign_in(&b, &app, rd).await;
    assert_eq!(res.status(), 403);
    let html = res.text().await.unwrap();
    assert!(html.contains("You declined the sign-in"), "{html}");
    assert!(
        html.contains("/_unikgate/sign_in?rd=/index.php%3Fmodule%3DCoreHome"),
        "the retry keeps rd: {html}"
    );
    p.set(Fault::None);
    let res = sign_in(&b, &app, rd).await;
    assert_eq!(res.status(), 302, "the retry works");
}

#[tokio::test]
async fn provider_failures_have_their_own_pages() {
    let (_m, p, app) = setup().await;
    for (fault, status, says) in [
        (Fault::TokenHtml, 502, "cannot use"),
        (Fault::TokenBrokenJson, 502, "cannot use"),
        (Fault::UserinfoWrongType, 502, "not a JSON object"),
        (Fault::Slow, 502, "could not reach"),
    ] {
        p.set(fault);
        let res = sign_in(&Browser::new(), &app, "/").await;
        assert_eq!(res.status(), status, "{fault:?}");
        let html = res.text().await.unwrap();
        assert!(html.contains(says), "{fault:?}: {html}");
    }
    // Provider down after the browser left for it.
    p.set(Fault::None);
    let b = Browser::new();
    let res = start(&b, &app, "/").await;
    let cb = location(&b.get(&location(&res)).await);
    p.stop();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let res = b.get(&cb).await;
    assert_eq!(res.status(), 502);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("could not reach 127.0.0.1"),
        "names the provider: {html}"
    );
}

#[tokio::test]
async fn a_wrong_client_secret_tells_the_admin_what_to_check() {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(
        &m.url(),
        &p.config().replace(CLIENT_SECRET, "wrong-secret"),
        "",
    ))
    .await;
    let res = sign_in(&Browser::new(), &app, "/").await;
    assert_eq!(res.status(), 502);
    let html = res.text().await.unwrap();
    assert!(html.contains("invalid_client"), "{html}");
    assert!(html.contains("provider.client_id"), "{html}");
}

#[tokio::test]
async fn start_by_get_is_off_by_default_and_csrf_is_required() {
    let (_m, _p, app) = setup().await;
    let b = Browser::new();
    assert_eq!(b.get(&app.url("/_unikgate/start?rd=/")).await.status(), 405);
    let _ = b.get(&app.url("/_unikgate/sign_in")).await;
    assert_eq!(
        b.post(&app.url("/_unikgate/start"), &[("rd", "/")])
            .await
            .status(),
        403
    );
    assert_eq!(
        b.post(
            &app.url("/_unikgate/start"),
            &[("rd", "/"), ("csrf", "wrong")]
        )
        .await
        .status(),
        403
    );
}

#[tokio::test]
async fn no_secret_reaches_a_log_line() {
    support::logs::capture();
    let (_m, p, app) = setup().await;
    let b = Browser::new();
    let res = start(&b, &app, "/").await;
    let auth = reqwest::Url::parse(&location(&res)).unwrap();
    let q: std::collections::HashMap<_, _> = auth.query_pairs().into_owned().collect();
    let res = b.get(auth.as_str()).await;
    let cb = location(&res);
    let code = reqwest::Url::parse(&cb)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let res = b.get(&cb).await;
    assert_eq!(res.status(), 302);
    let cookie = b.cookie(&app.url("/"), "unikgate_session").unwrap();
    let _ = b.get(&app.url("/_unikgate/account")).await;
    p.set(Fault::TokenBrokenJson);
    let _ = sign_in(&Browser::new(), &app, "/").await;
    let logs = support::logs::text();
    assert!(logs.contains("sign_in"), "logs were captured: {logs}");
    for (what, secret) in [
        ("code", code.as_str()),
        ("state", q["state"].as_str()),
        ("nonce", q["nonce"].as_str()),
        ("client secret", CLIENT_SECRET),
        ("session cookie", cookie.as_str()),
        ("access token", "at-uns-alice"),
    ] {
        if let Some(line) = logs.lines().find(|l| l.contains(secret)) {
            panic!("the {what} appears in the logs: {line}");
        }
    }
}

#[tokio::test]
async fn rd_survives_the_round_trip() {
    let (_m, _p, app) = setup().await;
    let b = Browser::new();
    let rd = "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday";
    let res = sign_in(&b, &app, rd).await;
    let loc = location(&res);
    assert!(loc.starts_with(&app.url("/_unikgate/link?rd=")), "{loc}");
    let u = reqwest::Url::parse(&loc).unwrap();
    assert_eq!(u.query_pairs().find(|(k, _)| k == "rd").unwrap().1, rd);
}

// ---- the real oidc-provider, configured like Unikname Connect ----

async fn node_setup(discovery: bool) -> (StandIn, NodeProvider, TestApp) {
    let m = StandIn::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = NodeProvider::start(
        &[format!("http://{addr}/_unikgate/callback")],
        &[format!("http://{addr}/_unikgate/signed_out")],
    )
    .await;
    let section = if discovery {
        p.config_discovery()
    } else {
        p.config_explicit()
    };
    let app = TestApp::start_on(
        &config(&m.url(), &section, ""),
        Arc::new(tempfile::tempdir().unwrap()),
        listener,
        addr,
    )
    .await;
    (m, p, app)
}

#[tokio::test]
async fn real_provider_sign_in_with_discovery() {
    let (_m, p, app) = node_setup(true).await;
    let b = Browser::new();
    let res = start(&b, &app, "/").await;
    let auth = location(&res);
    assert!(
        auth.starts_with(&format!("{}/authorize?", p.issuer())),
        "{auth}"
    );
    assert!(auth.contains("code_challenge_method=S256"));
    let back = p.interact(&b, &auth, "alice", true).await;
    let res = b.get(&location(&back)).await;
    assert_eq!(res.status(), 302, "{}", res.text().await.unwrap());
    assert!(location(&res).starts_with(&app.url("/_unikgate/link")));
    let html = b
        .get(&app.url("/_unikgate/account"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("alice@example.org"),
        "the page names the person by the provider's e-mail claim: {html}"
    );
    let indexed = app.app.session_index.list_sessions(None).await.unwrap();
    assert!(
        !indexed.is_empty() && indexed.iter().all(|e| e.subject.starts_with("uns-")),
        "the opaque subject is the identity: {indexed:?}"
    );
    let ep = app.app.oidc.as_ref().unwrap().endpoints().await;
    assert!(
        ep.from_discovery && ep.jwks.is_some(),
        "RS256 ID tokens verified with discovery's keys"
    );
}

#[tokio::test]
async fn real_provider_sign_in_with_explicit_urls() {
    let (_m, p, app) = node_setup(false).await;
    let b = Browser::new();
    let res = start(&b, &app, "/").await;
    let back = p.interact(&b, &location(&res), "alice", true).await;
    let res = b.get(&location(&back)).await;
    assert_eq!(res.status(), 302);
    assert!(location(&res).starts_with(&app.url("/_unikgate/link")));
    assert!(
        !app.app
            .oidc
            .as_ref()
            .unwrap()
            .endpoints()
            .await
            .from_discovery
    );
}

#[tokio::test]
async fn real_provider_decline_and_wrong_secret() {
    let (_m, p, app) = node_setup(true).await;
    let b = Browser::new();
    let res = start(&b, &app, "/").await;
    let back = p.interact(&b, &location(&res), "alice", false).await;
    let res = b.get(&location(&back)).await;
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("You declined"));

    // A wrong secret at the real token endpoint: the same call the callback makes, judged as
    // invalid_client (the page itself is covered with the fake provider above).
    let m = StandIn::start().await;
    let section = p
        .config_discovery()
        .replace(CLIENT_SECRET, "not-the-secret");
    let app2 = TestApp::start(&config(&m.url(), &section, "")).await;
    // The admin page itself: `doctor`'s probe on the token endpoint.
    let verdict = app2.app.oidc.as_ref().unwrap().probe_credentials().await;
    assert!(
        matches!(verdict, Err(unikgate::error::Error::ProviderClientRejected)),
        "{verdict:?}"
    );
    let ok = app.app.oidc.as_ref().unwrap().probe_credentials().await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn idle_and_absolute_lifetimes_are_enforced_server_side() {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(&m.url(), &p.config(), "").replace(
        "[session]\n",
        "[session]\nidle_timeout = \"2s\"\nabsolute_timeout = \"3s\"\n",
    ))
    .await;
    let b = Browser::new();
    let signed_in = std::time::Instant::now();
    sign_in(&b, &app, "/").await;
    // Active every 400 ms (far inside the 2 s idle lifetime) for 2 s: still signed in.
    for _ in 0..5 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(b.get(&app.url("/_unikgate/account")).await.status(), 200);
    }
    // Then past the absolute lifetime (3 s), with the last activity less than 2 s ago: it is the
    // absolute lifetime that ends the session.
    let wait = std::time::Duration::from_millis(3300).saturating_sub(signed_in.elapsed());
    tokio::time::sleep(wait.max(std::time::Duration::from_millis(300))).await;
    assert_eq!(
        b.get(&app.url("/_unikgate/account")).await.status(),
        302,
        "absolute lifetime over"
    );
    // Idle: signed in, then 2.5 s of silence.
    let b = Browser::new();
    sign_in(&b, &app, "/").await;
    assert_eq!(b.get(&app.url("/_unikgate/account")).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let res = b.get(&app.url("/_unikgate/account")).await;
    assert_eq!(res.status(), 302, "idle lifetime over");
    assert!(location(&res).contains("/_unikgate/sign_in"));
}
