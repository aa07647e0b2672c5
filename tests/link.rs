//! Linking an @unikname to a Matomo account once, then genuine Matomo sessions: the journey, proof
//! failures, rate limits, re-minting, cookie checks, unlink, superusers, the CLI and `doctor`.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use support::provider::{FakeProvider, NodeProvider, CLIENT_SECRET};
use support::{
    config, csrf_of, link_password, linked, location, sign_in, Browser, StandIn, TestApp,
};

async fn setup_with(extra: &str) -> (StandIn, FakeProvider, TestApp) {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(&m.url(), &p.config(), extra)).await;
    (m, p, app)
}

async fn ui_as(b: &Browser, app: &TestApp, path: &str) -> (u16, String) {
    let res = b.get(&app.url(path)).await;
    let s = res.status().as_u16();
    (s, res.text().await.unwrap())
}

#[tokio::test]
async fn the_journey_with_the_real_provider() {
    let m = StandIn::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = NodeProvider::start(
        &[format!("http://{addr}/_unikgate/callback")],
        &[format!("http://{addr}/_unikgate/signed_out")],
    )
    .await;
    let app = TestApp::start_on(
        &config(&m.url(), &p.config_discovery(), ""),
        Arc::new(tempfile::tempdir().unwrap()),
        listener,
        addr,
    )
    .await;
    let b = Browser::new();
    let deep = "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday";
    // Matomo URL → sign-in page → the provider → back → link page.
    let res = b.get(&app.url(deep)).await;
    let sign_in_url = location(&res);
    let html = b.get(&sign_in_url).await.text().await.unwrap();
    assert!(html.contains("Connect with your private @unikname"));
    let rd_field = "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday";
    let res = b
        .post(
            &app.url("/_unikgate/start"),
            &[("csrf", &csrf_of(&html)), ("rd", rd_field)],
        )
        .await;
    let back = p.interact(&b, &location(&res), "alice", true).await;
    let res = b.get(&location(&back)).await;
    let link_url = location(&res);
    assert!(
        link_url.starts_with(&app.url("/_unikgate/link")),
        "{link_url}"
    );
    let html = b.get(&link_url).await.text().await.unwrap();
    assert!(html.contains("Link this account"));
    // Matomo username and password → Matomo as alice, on the deep link.
    let res = b
        .post(
            &app.url("/_unikgate/link"),
            &[
                ("csrf", &csrf_of(&html)),
                ("rd", rd_field),
                ("mode", "password"),
                ("login", "alice"),
                ("password", "alice-password"),
            ],
        )
        .await;
    assert_eq!(res.status(), 302);
    assert_eq!(location(&res), app.url(deep));
    let set = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect::<Vec<_>>();
    let matomo = set
        .iter()
        .find(|c| c.starts_with("MATOMO_SESSID="))
        .expect("a Matomo session cookie");
    assert!(
        matomo.contains("HttpOnly") && matomo.contains("SameSite=Lax") && matomo.contains("Path=/"),
        "{matomo}"
    );
    let (s, html) = ui_as(&b, &app, deep).await;
    assert_eq!(s, 200);
    assert!(html.contains("piwik.userLogin = \"alice\""), "{html:.300}");
    assert!(html.contains("idSite=1 period=day date=yesterday"));
    // Sign out through Matomo's own logout link.
    let res = b
        .get(&app.url("/index.php?module=Login&action=logout"))
        .await;
    assert_eq!(res.status(), 302);
    assert!(
        location(&res).starts_with(&format!("{}/logout", p.issuer())),
        "RP-initiated logout: {}",
        location(&res)
    );
    assert!(location(&res).contains("id_token_hint="));
    assert_eq!(
        m.state.sessions_of("alice"),
        0,
        "the Matomo session was logged out"
    );
    let res = b.get(&app.url(deep)).await;
    assert!(
        location(&res).contains("/_unikgate/sign_in"),
        "signed out of unikgate too"
    );
    // Sign in again → straight into Matomo as alice, no link step.
    let html = b.get(&location(&res)).await.text().await.unwrap();
    let res = b
        .post(
            &app.url("/_unikgate/start"),
            &[("csrf", &csrf_of(&html)), ("rd", rd_field)],
        )
        .await;
    let back = p.interact(&b, &location(&res), "alice", true).await;
    let res = b.get(&location(&back)).await;
    assert_eq!(location(&res), app.url(deep), "no link step");
    let (s, html) = ui_as(&b, &app, deep).await;
    assert_eq!(s, 200);
    assert!(html.contains("piwik.userLogin = \"alice\""));
}

#[tokio::test]
async fn proof_failures_store_nothing_and_the_sixth_attempt_is_limited() {
    support::logs::capture();
    let (_m, p, app) = setup_with("").await;
    let b = Browser::new();
    sign_in(&b, &app, &p, "uns-alice", "/").await;
    for (login, password, says) in [
        ("alice", "wrong-password-1", "do not match"),
        ("nobody", "whatever-password", "do not match"),
        (
            "alice@example.com",
            "alice-password",
            "not your email address",
        ),
        ("alice", "abc", "do not match"),
        ("", "x", "Enter your Matomo username"),
    ] {
        let res = link_password(&b, &app, "/", login, password).await;
        assert_eq!(res.status(), 401, "{login}");
        let html = res.text().await.unwrap();
        assert!(html.contains(says), "{login}: {html}");
        assert!(
            !html.contains(password) || password == "x",
            "the password is not echoed"
        );
    }
    // Five attempts made: the sixth within 10 minutes is refused before Matomo is asked.
    let res = link_password(&b, &app, "/", "alice", "alice-password").await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "600");
    assert!(res.text().await.unwrap().contains("Too many"));
    assert!(
        app.app.links.list().await.unwrap().is_empty(),
        "nothing stored"
    );
    // Neither passwords nor Matomo's app tokens anywhere: logs, database, WAL.
    let logs = support::logs::text();
    let mut db = Vec::new();
    for entry in std::fs::read_dir(app.dir.path()).unwrap() {
        db.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let db = String::from_utf8_lossy(&db);
    for secret in ["wrong-password-1", "alice-password", "whatever-password"] {
        assert!(!logs.contains(secret), "{secret} in logs");
        assert!(!db.contains(secret), "{secret} in the store");
    }
}

#[tokio::test]
async fn the_rate_limit_also_counts_per_client_ip() {
    let (_m, p, app) = setup_with("").await;
    for i in 0..5 {
        let b = Browser::new();
        sign_in(&b, &app, &p, &format!("uns-user-{i}"), "/").await;
        assert_eq!(
            link_password(&b, &app, "/", "alice", "nope-nope")
                .await
                .status(),
            401
        );
    }
    let b = Browser::new();
    sign_in(&b, &app, &p, "uns-user-x", "/").await;
    assert_eq!(
        link_password(&b, &app, "/", "alice", "alice-password")
            .await
            .status(),
        429
    );
}

#[tokio::test]
async fn idle_expiry_is_re_minted_without_the_user_noticing() {
    let (m, p, app) = setup_with("[matomo]\nidle_timeout = \"2s\"\n").await;
    m.state.idle_ms.store(2000, Ordering::Relaxed);
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let before = b.cookie(&app.url("/"), "MATOMO_SESSID").unwrap();
    let (s, html) = ui_as(&b, &app, "/index.php?module=CoreHome&action=index").await;
    assert_eq!(s, 200);
    assert!(html.contains("\"alice\""));
    let mints = m.state.mints();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (s, html) = ui_as(&b, &app, "/index.php?module=CoreHome&action=index").await;
    assert_eq!(s, 200, "no sign-in page");
    assert!(html.contains("piwik.userLogin = \"alice\""));
    assert_eq!(m.state.mints(), mints + 1, "minted again before forwarding");
    let after = b.cookie(&app.url("/"), "MATOMO_SESSID").unwrap();
    assert_ne!(before, after, "the browser got the new Matomo cookie");
}

#[tokio::test]
async fn an_anonymous_answer_is_re_minted_and_retried_once_only() {
    let (m, p, app) = setup_with("").await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    // Matomo forgets the session (its own idle timeout shorter than configured in unikgate).
    m.state.idle_ms.store(300, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mints = m.state.mints();
    let (s, html) = ui_as(&b, &app, "/index.php?module=CoreHome&action=index").await;
    assert_eq!(s, 200);
    assert!(html.contains("\"alice\""));
    assert_eq!(m.state.mints(), mints + 1);
    m.state.idle_ms.store(3_600_000, Ordering::Relaxed);
    // A Matomo that never keeps a session: one retry, then the 403 goes to the browser.
    m.state.idle_ms.store(0, Ordering::Relaxed);
    let mints = m.state.mints();
    let (s, _) = ui_as(&b, &app, "/index.php?module=CoreHome&action=index").await;
    assert_eq!(s, 403);
    assert!(
        m.state.mints() <= mints + 2,
        "no loop: {} mints",
        m.state.mints() - mints
    );
}

#[tokio::test]
async fn another_users_matomo_cookie_is_never_forwarded_as_alices() {
    let (m, p, app) = setup_with("").await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let bob_cookie = m.state.login_with_password("bob");
    b.set_cookie(
        &app.url("/"),
        &format!("MATOMO_SESSID={bob_cookie}; Path=/"),
    );
    m.state.clear_log();
    let (s, html) = ui_as(&b, &app, "/index.php?module=CoreHome&action=index").await;
    assert_eq!(s, 200);
    assert!(
        html.contains("piwik.userLogin = \"alice\""),
        "served as alice, not bob"
    );
    for seen in m.state.log() {
        let cookies: Vec<String> = seen
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert!(
            !cookies.iter().any(|c| c.contains(&bob_cookie)),
            "bob's cookie reached Matomo: {}",
            seen.uri
        );
    }
    // And client matomo-* headers never reach Matomo on the signed-in path either.
    let res = b
        .client
        .get(app.url("/index.php?module=CoreHome&action=index"))
        .header("matomo-role", "superuser")
        .header("matomo_username", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(!m.state.is_superuser("alice"));
    assert!(m.state.log().iter().all(|s| s.headers.keys().all(|k| !k
        .as_str()
        .replace('_', "-")
        .starts_with("matomo-")
        || s.uri.contains("AutoLogin"))));
    // The only matomo-* header Matomo ever saw is unikgate's own, on mint requests, alone.
    for s in m.state.log().iter().filter(|s| s.uri.contains("AutoLogin")) {
        let names: Vec<&str> = s
            .headers
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with("matomo"))
            .collect();
        assert_eq!(names, vec!["matomo-username"]);
        assert_eq!(s.headers.get_all("matomo-username").iter().count(), 1);
    }
}

#[tokio::test]
async fn unlink_in_one_browser_ends_the_other_browsers_session() {
    let (m, p, app) = setup_with("").await;
    let one = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let two = Browser::new();
    let res = sign_in(&two, &app, &p, "uns-alice", "/").await;
    assert_eq!(location(&res), app.url("/"), "already linked: straight in");
    assert_eq!(ui_as(&two, &app, "/index.php?module=CoreHome").await.0, 200);
    let html = one
        .get(&app.url("/_unikgate/account"))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("alice"));
    let res = one
        .post(&app.url("/_unikgate/unlink"), &[("csrf", &csrf_of(&html))])
        .await;
    assert_eq!(res.status(), 302);
    assert!(app.app.links.list().await.unwrap().is_empty());
    let res = two.get(&app.url("/index.php?module=CoreHome")).await;
    assert_eq!(res.status(), 302);
    assert!(
        location(&res).contains("/_unikgate/sign_in"),
        "the second browser is signed out"
    );
    let res = two.get(&app.url("/_unikgate/account")).await;
    assert!(location(&res).contains("/_unikgate/sign_in"));
    let _ = m;
}

#[tokio::test]
async fn unlink_keeps_the_browser_signed_in_and_the_next_page_asks_to_link_again() {
    let (m, p, app) = setup_with("").await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let before = b.cookie(&app.url("/"), "unikgate_session").unwrap();
    let html = b
        .get(&app.url("/_unikgate/account"))
        .await
        .text()
        .await
        .unwrap();
    let security = "/index.php?module=UsersManager&action=userSecurity";
    let res = b
        .post(
            &app.url("/_unikgate/unlink"),
            &[("csrf", &csrf_of(&html)), ("rd", security)],
        )
        .await;
    assert_eq!(res.status(), 302);
    assert_eq!(
        location(&res),
        app.url(security),
        "back to the page it came from"
    );
    assert!(
        res.headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("MATOMO_SESSID=;")),
        "the Matomo cookie is cleared"
    );
    assert_eq!(m.state.sessions_of("alice"), 0, "the Matomo session ended");
    let after = b.cookie(&app.url("/"), "unikgate_session").unwrap();
    assert_ne!(before, after, "a new session id");
    // The next Matomo page asks to link again (still signed in with the @unikname).
    let res = b.get(&app.url(security)).await;
    assert_eq!(res.status(), 302);
    assert!(
        location(&res).starts_with(&app.url("/_unikgate/link?rd=")),
        "{}",
        location(&res)
    );
    let status: serde_json::Value = serde_json::from_str(
        &b.get(&app.url("/_unikgate/status"))
            .await
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["signed_in"], true);
    assert_eq!(status["linked"], false);
    // The old CSRF token died with the old session; an off-site rd is not followed.
    let html = b
        .get(&app.url("/_unikgate/link"))
        .await
        .text()
        .await
        .unwrap();
    assert_ne!(csrf_of(&html), "");
    let _ = support::link_password(&b, &app, "/", "alice", "alice-password").await;
    let html = b
        .get(&app.url("/_unikgate/account"))
        .await
        .text()
        .await
        .unwrap();
    let res = b
        .post(
            &app.url("/_unikgate/unlink"),
            &[("csrf", &csrf_of(&html)), ("rd", "https://evil.example/")],
        )
        .await;
    assert!(
        location(&res).starts_with(&app.url("/")),
        "{}",
        location(&res)
    );
    // Without rd: the account page, which offers to link.
    let _ = support::link_password(&b, &app, "/", "alice", "alice-password").await;
    let html = b
        .get(&app.url("/_unikgate/account"))
        .await
        .text()
        .await
        .unwrap();
    let res = b
        .post(&app.url("/_unikgate/unlink"), &[("csrf", &csrf_of(&html))])
        .await;
    assert_eq!(location(&res), app.url("/_unikgate/account"));
}

/// Every page a person can reach, in French with `Accept-Language: fr`, in English otherwise; no
/// catalogue key ever shows instead of a text.
#[tokio::test]
async fn pages_speak_the_browsers_language() {
    let (_m, p, app) = setup_with("").await;
    let keys: Vec<String> = unikgate::pages::i18n::english()
        .keys()
        .map(str::to_string)
        .collect();
    let no_keys = |body: &str, what: &str| {
        for k in &keys {
            assert!(!body.contains(k.as_str()), "{what} shows the key {k}");
        }
    };
    for (lang, heading, link, wrong, declined_csrf, out) in [
        (
            "fr-FR,fr;q=0.9,en;q=0.5",
            "Se connecter à Matomo",
            "Associer ce compte",
            "ne correspondent pas",
            "Formulaire expiré",
            "Vous êtes déconnecté",
        ),
        (
            "en-GB,en;q=0.9",
            "Sign in to Matomo",
            "Link this account",
            "do not match",
            "Form expired",
            "You are signed out",
        ),
    ] {
        let b = Browser::speaking(lang);
        let html = b
            .get(&app.url("/_unikgate/sign_in"))
            .await
            .text()
            .await
            .unwrap();
        assert!(html.contains(heading), "{lang}: {html}");
        let short = &lang[..2];
        assert!(html.contains(&format!("<html lang=\"{short}\">")), "{lang}");
        no_keys(&html, "sign-in page");
        let res = sign_in(&b, &app, &p, &format!("uns-lang-{short}"), "/").await;
        let html = b.get(&location(&res)).await.text().await.unwrap();
        assert!(html.contains(link), "{lang}: {html}");
        no_keys(&html, "link page");
        let html = support::link_password(&b, &app, "/", "alice", "nope")
            .await
            .text()
            .await
            .unwrap();
        assert!(html.contains(wrong), "{lang}: {html}");
        no_keys(&html, "link page with an error");
        let res = b
            .post(
                &app.url("/_unikgate/link"),
                &[("csrf", "forged"), ("login", "alice")],
            )
            .await;
        assert_eq!(res.status(), 403);
        let html = res.text().await.unwrap();
        assert!(html.contains(declined_csrf), "{lang}: {html}");
        no_keys(&html, "error page");
        let html = b
            .get(&app.url("/_unikgate/account"))
            .await
            .text()
            .await
            .unwrap();
        no_keys(&html, "account page");
        let html = b
            .get(&app.url("/_unikgate/signed_out"))
            .await
            .text()
            .await
            .unwrap();
        assert!(html.contains(out), "{lang}: {html}");
        no_keys(&html, "signed-out page");
        let html = b
            .get(&app.url("/_unikgate/nowhere"))
            .await
            .text()
            .await
            .unwrap();
        no_keys(&html, "not-found page");
    }
    // Every error page renders in every language without a key showing.
    for t in unikgate::pages::i18n::Texts::all() {
        for e in every_error() {
            let s = e.spec("connect.example", t);
            for part in [
                Some(s.title.clone()),
                Some(s.message.clone()),
                s.hint.clone(),
            ]
            .into_iter()
            .flatten()
            {
                let key = format!("error.{}.", e.page_key());
                assert!(
                    !part.is_empty() && !part.contains(&key),
                    "{}: {e:?}: {part:?}",
                    t.lang
                );
            }
        }
    }
}

fn every_error() -> Vec<unikgate::error::Error> {
    use unikgate::error::Error::*;
    use unikgate::error::{Cause, MintBy};
    vec![
        NotConfigured,
        UpstreamUnavailable(Cause::msg("x")),
        UpstreamTimeout,
        Forbidden("x"),
        BadRequest("x".into()),
        PayloadTooLarge,
        UriTooLong,
        HeadersTooLarge,
        NotFound,
        ProviderUnreachable(Cause::msg("x")),
        ProviderClientRejected,
        ProviderError("x".into()),
        ProviderBadAnswer("x".into()),
        AccessDenied("/".into()),
        SignInRejected("x"),
        StoreUnavailable(Cause::msg("x")),
        MintFailed(MintBy::AutoLogin, "x".into()),
        MintFailed(MintBy::Plugin, "x".into()),
        LinkedButMintFailed(
            "alice".into(),
            Box::new(MintFailed(MintBy::Plugin, "x".into())),
        ),
        MatomoUnexpected("x".into()),
        Csrf,
        RateLimited,
        IdentityAlreadyLinked,
        LoginAlreadyLinked,
        SuperuserDenied,
        NotAllowed("uns-x".into()),
        Internal("x".into()),
    ]
}

#[tokio::test]
async fn with_allow_unlink_off_only_the_cli_unlinks() {
    let (_m, p, app) = setup_with("[links]\nallow_unlink = false\n").await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let html = b
        .get(&app.url("/_unikgate/account"))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("alice"));
    assert!(
        !html.contains("/_unikgate/unlink"),
        "no Unlink button: {html}"
    );
    assert!(html.contains("only an administrator"), "{html}");
    // The endpoint refuses, with a good CSRF token (a hand-made form).
    let res = b
        .post(&app.url("/_unikgate/unlink"), &[("csrf", &csrf_of(&html))])
        .await;
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("links.allow_unlink"));
    assert_eq!(app.app.links.list().await.unwrap().len(), 1, "still linked");
    assert_eq!(ui_as(&b, &app, "/index.php?module=CoreHome").await.0, 200);
    // The Security card's JSON says so, for the plugin to hide its button.
    let s: serde_json::Value = b
        .get(&app.url("/_unikgate/status"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s["linked"], true);
    assert_eq!(s["can_unlink"], false);
    // `unikgate links remove` still does.
    assert!(app.app.unlink_login("alice").await.unwrap());
    assert!(app.app.links.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_link_removed_by_the_cli_ends_sessions() {
    let (_m, p, app) = setup_with("").await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    // What `unikgate links remove --login alice` does.
    assert!(app.app.unlink_login("alice").await.unwrap());
    let res = b.get(&app.url("/index.php?module=CoreHome")).await;
    assert!(location(&res).contains("/_unikgate/sign_in"));
}

#[tokio::test]
async fn already_linked_both_ways() {
    let (_m, p, app) = setup_with("").await;
    let _alice = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    // Another @unikname proving alice's account.
    let b = Browser::new();
    sign_in(&b, &app, &p, "uns-mallory", "/").await;
    let res = link_password(&b, &app, "/", "alice", "alice-password").await;
    assert_eq!(res.status(), 409);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("already linked to another @unikname"));
    // The same @unikname linking a second account (a stale form posted again).
    let c = Browser::new();
    sign_in(&c, &app, &p, "uns-carol", "/").await;
    let html = c
        .get(&app.url("/_unikgate/link"))
        .await
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&html);
    let post = |login: &'static str, pw: &'static str| {
        let csrf = csrf.clone();
        let c = &c;
        let app = &app;
        async move {
            c.post(
                &app.url("/_unikgate/link"),
                &[
                    ("csrf", csrf.as_str()),
                    ("mode", "password"),
                    ("login", login),
                    ("password", pw),
                ],
            )
            .await
        }
    };
    assert_eq!(post("bob", "bob-password").await.status(), 302);
    let res = post("jane.doe-x@example.com", "jane-password").await;
    assert_eq!(res.status(), 409);
    assert!(res.text().await.unwrap().contains("already linked"));
    assert_eq!(app.app.links.list().await.unwrap().len(), 2);
}

#[tokio::test]
async fn linking_from_an_existing_matomo_session() {
    let (m, p, app) = setup_with("[matomo]\npassword_login = true\n").await;
    let b = Browser::new();
    let sid = m.state.login_with_password("jane.doe-x@example.com");
    b.set_cookie(&app.url("/"), &format!("MATOMO_SESSID={sid}; Path=/"));
    // With password_login, the browser's own Matomo session passes through before sign-in.
    let (s, html) = ui_as(&b, &app, "/index.php?module=CoreHome").await;
    assert_eq!(s, 200);
    assert!(html.contains("jane"));
    sign_in(&b, &app, &p, "uns-jane", "/").await;
    let html = b
        .get(&app.url("/_unikgate/link"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("Link this account (jane.doe-x@example.com)"),
        "the owner read from the JS string: {html}"
    );
    let res = b
        .post(
            &app.url("/_unikgate/link"),
            &[("csrf", &csrf_of(&html)), ("mode", "session")],
        )
        .await;
    assert_eq!(res.status(), 302);
    let links = app.app.links.list().await.unwrap();
    assert_eq!(links[0].matomo_login, "jane.doe-x@example.com");
    let (s, html) = ui_as(&b, &app, "/index.php?module=CoreHome").await;
    assert_eq!(s, 200);
    assert!(html.contains("jane.doe\\u002Dx\\u0040example.com"));
}

#[tokio::test]
async fn superusers_can_be_refused() {
    let (_m, p, app) = setup_with("[matomo]\ndeny_superusers = true\n").await;
    let b = Browser::new();
    sign_in(&b, &app, &p, "uns-admin", "/").await;
    let res = link_password(&b, &app, "/", "admin", "admin-password").await;
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("superuser"));
    assert!(app.app.links.list().await.unwrap().is_empty());
    // Alice is fine.
    let _ = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
}

#[tokio::test]
async fn autologin_errors_become_a_clear_page_and_their_cookie_stays_out() {
    let (_m, p, app) = setup_with("").await;
    // A link made by the CLI to a login Matomo does not know.
    let link = unikgate::store::Link {
        id: "l1".into(),
        issuer: p.issuer(),
        subject: "uns-ghost".into(),
        matomo_login: "ghost".into(),
        superuser: false,
        created_at: 0,
        last_login_at: None,
    };
    app.app.links.create(&link).await.unwrap().unwrap();
    let b = Browser::new();
    let res = sign_in(&b, &app, &p, "uns-ghost", "/").await;
    assert_eq!(res.status(), 502);
    assert!(
        res.headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("MATOMO_SESSID=")),
        "AutoLogin's anonymous cookie stays out"
    );
    let html = res.text().await.unwrap();
    assert!(html.contains("No email address defined"), "{html}");
    assert!(html.contains("AutoLogin"));
}

#[tokio::test]
async fn activity_on_public_ajax_keeps_the_minted_session() {
    let (m, p, app) = setup_with("[matomo]\nidle_timeout = \"2s\"\n").await;
    m.state.idle_ms.store(2000, Ordering::Relaxed);
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    assert_eq!(ui_as(&b, &app, "/index.php?module=CoreHome").await.0, 200);
    let mints = m.state.mints();
    // The UI's AJAX (token_auth + force_api_session=1, public class) keeps both clocks alive.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let res = b
            .client
            .post(app.url("/index.php?module=API&method=API.get&format=json"))
            .form(&[("token_auth", "tok-alice"), ("force_api_session", "1")])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(ui_as(&b, &app, "/index.php?module=CoreHome").await.0, 200);
    assert_eq!(
        m.state.mints(),
        mints,
        "no needless re-mint after 2.5 s of AJAX activity"
    );
}

#[tokio::test]
async fn links_cli_round_trip() {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("u.toml");
    let text = config(&m.url(), &p.config(), "")
        .replace("{public}", "http://127.0.0.1:9")
        .replace("{dir}", &dir.path().display().to_string());
    std::fs::write(&cfg, text).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_unikgate"))
            .arg("links")
            .args(args)
            .arg("-c")
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&["add", "uns-alice", "alice"]).0, 0);
    let (code, _, err) = run(&["add", "uns-alice", "bob"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("already linked"));
    let (code, _, err) = run(&["add", "uns-other", "ALICE"]);
    assert_eq!(code, 3, "logins are unique whatever their case: {err}");
    let (code, out, _) = run(&["list", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["matomo_login"], "alice");
    assert_eq!(v[0]["subject"], "uns-alice");
    assert_eq!(v[0]["issuer"], p.issuer());
    assert_eq!(run(&["remove", "uns-alice"]).0, 0);
    assert_eq!(run(&["remove", "uns-alice"]).0, 4);
    assert_eq!(run(&["list"]).1.trim(), "no links");
}

#[tokio::test]
async fn doctor_reports_fpm_and_wrong_secret() {
    let (m, p, app) = setup_with("").await;
    let steps = unikgate::doctor::run(&app.app, None).await;
    let by = |n: &str| steps.iter().find(|s| s.name == n).cloned().unwrap();
    assert!(by("client credentials").ok, "{steps:?}");
    assert!(by("Matomo").ok, "{steps:?}");
    assert!(by("AutoLogin").ok, "{steps:?}");
    m.state.fpm.store(true, Ordering::Relaxed);
    let steps = unikgate::doctor::run(&app.app, None).await;
    let a = steps.iter().find(|s| s.name == "AutoLogin").unwrap();
    assert!(!a.ok);
    assert!(
        a.detail.contains("PHP-FPM") && a.detail.contains("Apache"),
        "{}",
        a.detail
    );
    assert_eq!(
        m.state.inner.lock().unwrap().users.len(),
        4,
        "doctor created no user"
    );
    // A wrong client secret.
    let app2 = TestApp::start(&config(
        &m.url(),
        &p.config().replace(CLIENT_SECRET, "wrong"),
        "",
    ))
    .await;
    let steps = unikgate::doctor::run(&app2.app, None).await;
    let c = steps
        .iter()
        .find(|s| s.name == "client credentials")
        .unwrap();
    assert!(!c.ok && c.detail.contains("invalid_client"), "{c:?}");
}

#[tokio::test]
async fn the_cli_process_removing_a_link_ends_live_sessions() {
    let (_m, p, app) = setup_with("").await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    assert_eq!(
        b.get(&app.url("/index.php?module=CoreHome")).await.status(),
        200
    );
    // Another process on the same store: the admin's CLI.
    let cfg = app.dir.path().join("cli.toml");
    let text = config(&app.url(""), &p.config(), "")
        .replace("{public}", &app.url(""))
        .replace("{dir}", &app.dir.path().display().to_string());
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_unikgate"))
        .args(["links", "remove", "--login", "alice", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server caches session reads for at most 2 s: the session ends within that.
    let mut status = 200;
    for _ in 0..30 {
        status = b
            .get(&app.url("/index.php?module=CoreHome"))
            .await
            .status()
            .as_u16();
        if status == 302 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 302, "signed out after the CLI removed the link");
}

#[tokio::test]
async fn a_failed_request_never_loses_the_signed_in_user() {
    // idle 10 s: every request 500 ms after the last one records activity (the session is
    // rewritten), and the failing request below (5 s) stays within the idle lifetime.
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let toml = config(&m.url(), &p.config(), "")
        .replace("[session]\n", "[session]\nidle_timeout = \"10s\"\n");
    let app = TestApp::start(&toml).await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    assert_eq!(
        b.get(&app.url("/index.php?module=CoreHome")).await.status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Matomo fails this request (timeout) while the session is due to be rewritten.
    m.state.delay_ms.store(6000, Ordering::Relaxed);
    assert_eq!(
        b.get(&app.url("/index.php?module=CoreHome")).await.status(),
        504
    );
    m.state.delay_ms.store(0, Ordering::Relaxed);
    let res = b.get(&app.url("/_unikgate/account")).await;
    assert_eq!(res.status(), 200, "still signed in");
    assert!(res.text().await.unwrap().contains("alice"));
    assert_eq!(
        b.get(&app.url("/index.php?module=CoreHome")).await.status(),
        200
    );
}
