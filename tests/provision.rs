//! `[provision]` and `provision.access_claim` against the stand-in's UnikGate plugin (the same
//! actions are proved against the real Matomo 5.1.2 in `real_matomo.rs`): the link page's offer,
//! the `auto` mode, collisions on the login and the e-mail, a person without a verified e-mail,
//! the access from the configuration and from a claim (with and without pruning, superusers left
//! alone), failures that fail closed, and the keys' checks.

mod support;

use std::collections::BTreeMap;

use serde_json::json;
use support::provider::FakeProvider;
use support::{
    config, csrf_of, link_password, linked, location, sign_in, Browser, StandIn, TestApp,
};
use unikgate::upstream::matomo::owner_of;

const SECRET: &str = "unikgate-and-matomo-share-this-32b+";

async fn setup(extra: &str) -> (StandIn, FakeProvider, TestApp) {
    let m = StandIn::start().await;
    *m.state.unikgate_secret.lock().unwrap() = Some(SECRET.to_string());
    m.state.add_site(3);
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(
        &m.url(),
        &p.config(),
        &format!("[matomo]\nminter = \"signed\"\nshared_secret = \"{SECRET}\"\n{extra}"),
    ))
    .await;
    (m, p, app)
}

fn person(p: &FakeProvider, sub: &str, username: &str, email: &str) {
    p.set_claims(
        sub,
        json!({"preferred_username": username, "email": email, "email_verified": true}),
    );
}

fn levels(pairs: &[(u32, &str)]) -> BTreeMap<u32, String> {
    pairs.iter().map(|(s, l)| (*s, l.to_string())).collect()
}

const OFFER: &str =
    "[provision]\nmode = \"offer\"\naccess = [\"/matomo/1/view\", \"/matomo/3/view\", \"/matomo/9/admin\"]\n";

/// Signed in as `sub` with no link: the link page's HTML.
async fn link_page(b: &Browser, app: &TestApp, p: &FakeProvider, sub: &str) -> String {
    let res = sign_in(b, app, p, sub, "/index.php?module=CoreHome&action=index").await;
    assert!(
        location(&res).contains("/_unikgate/link"),
        "{}",
        location(&res)
    );
    b.get(&location(&res)).await.text().await.unwrap()
}

async fn create(b: &Browser, app: &TestApp, html: &str) -> reqwest::Response {
    b.post(
        &app.url("/_unikgate/provision"),
        &[
            ("csrf", csrf_of(html).as_str()),
            ("rd", "/index.php?module=CoreHome&action=index"),
        ],
    )
    .await
}

#[tokio::test]
async fn the_offer_makes_the_account_with_the_configured_access_and_lands_in_matomo() {
    support::logs::capture();
    let (m, p, app) = setup(OFFER).await;
    person(&p, "uns-carol", "carol", "carol@example.org");
    let b = Browser::new();
    let html = link_page(&b, &app, &p, "uns-carol").await;
    assert!(html.contains("Create my Matomo account (carol)"), "{html}");
    assert!(html.contains("/_unikgate/link"), "linking stays possible");
    let res = create(&b, &app, &html).await;
    assert_eq!(res.status(), 302, "{}", res.text().await.unwrap());
    assert_eq!(
        location(&res),
        app.url("/index.php?module=CoreHome&action=index")
    );
    assert!(m.state.user_exists("carol"));
    assert!(!m.state.is_superuser("carol"));
    // Site 9 does not exist: left out.
    assert_eq!(
        m.state.site_access("carol"),
        levels(&[(1, "view"), (3, "view")])
    );
    let links = app.app.links.list().await.unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].matomo_login, "carol");
    assert_eq!(
        m.state.owner_of("carol"),
        Some(owner_of(&links[0].issuer, "uns-carol"))
    );
    let res = b
        .get(&app.url("/index.php?module=CoreHome&action=index"))
        .await;
    assert_eq!(res.status(), 200);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("piwik.userLogin = \"carol\""));
    let logs = support::logs::text();
    let line = logs
        .lines()
        .find(|l| l.contains("event=\"provision\"") || l.contains("event=provision"))
        .expect("an audit event for the account made");
    assert!(
        line.contains("carol") && line.contains("1:view,3:view"),
        "{line}"
    );
    // The next sign-in is an ordinary one.
    let two = Browser::new();
    let res = sign_in(&two, &app, &p, "uns-carol", "/").await;
    assert_eq!(location(&res), app.url("/"));
}

#[tokio::test]
async fn collisions_make_nothing_and_offer_linking_that_account() {
    let (m, p, app) = setup(OFFER).await;
    // A login that exists in Matomo.
    person(&p, "uns-al", "alice", "al@example.org");
    let b = Browser::new();
    let html = link_page(&b, &app, &p, "uns-al").await;
    let res = create(&b, &app, &html).await;
    assert_eq!(res.status(), 409);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("A Matomo account named alice already exists"),
        "{page}"
    );
    assert!(
        page.contains("value=\"alice\""),
        "the login is filled in: {page}"
    );
    assert!(!page.contains("Create my Matomo account"), "{page}");
    assert_eq!(m.state.site_access("alice"), levels(&[(1, "view")]));
    assert!(app.app.links.list().await.unwrap().is_empty());
    // The person it is: links with the password from that page.
    let res = link_password(&b, &app, "/", "alice", "alice-password").await;
    assert_eq!(res.status(), 302);
    // An e-mail address that belongs to an account.
    person(&p, "uns-bobby", "bobby", "bob@example.com");
    let b = Browser::new();
    let html = link_page(&b, &app, &p, "uns-bobby").await;
    let res = create(&b, &app, &html).await;
    assert_eq!(res.status(), 409);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("already belongs to the Matomo account bob"),
        "{page}"
    );
    assert!(!m.state.user_exists("bobby"));
    // A login linked to another @unikname in unikgate (alice, above): refused before Matomo.
    person(&p, "uns-eve", "alice", "eve@example.org");
    let b = Browser::new();
    let html = link_page(&b, &app, &p, "uns-eve").await;
    let mints = m.state.mints();
    assert_eq!(create(&b, &app, &html).await.status(), 409);
    assert_eq!(m.state.mints(), mints, "the plugin was not asked");
}

#[tokio::test]
async fn auto_makes_the_account_at_the_first_sign_in() {
    let (m, p, app) = setup(
        "[provision]\nmode = \"auto\"\nlogin_claim = \"email\"\naccess = [\"/matomo/3/write\"]\n",
    )
    .await;
    person(&p, "uns-dan", "ignored", "dan.r@example.org");
    let b = Browser::new();
    let res = sign_in(
        &b,
        &app,
        &p,
        "uns-dan",
        "/index.php?module=CoreHome&action=index",
    )
    .await;
    assert_eq!(res.status(), 302);
    assert_eq!(
        location(&res),
        app.url("/index.php?module=CoreHome&action=index"),
        "no link page"
    );
    assert_eq!(m.state.site_access("dan.r"), levels(&[(3, "write")]));
    assert_eq!(
        b.get(&app.url("/index.php?module=CoreHome&action=index"))
            .await
            .status(),
        200
    );
    // A collision in auto mode: the link page with the login filled in.
    person(&p, "uns-bob2", "x", "bob@example.org");
    let b = Browser::new();
    let res = sign_in(&b, &app, &p, "uns-bob2", "/").await;
    assert_eq!(res.status(), 409);
    assert!(res.text().await.unwrap().contains("value=\"bob\""));
}

#[tokio::test]
async fn without_a_verified_email_no_account_is_offered() {
    let (m, p, app) = setup("[provision]\nmode = \"auto\"\n").await;
    p.set_claims(
        "uns-ned",
        json!({"preferred_username": "ned", "email": "ned@example.org", "email_verified": false}),
    );
    let b = Browser::new();
    let res = sign_in(&b, &app, &p, "uns-ned", "/").await;
    assert!(
        location(&res).contains("/_unikgate/link"),
        "to the link page"
    );
    let html = b.get(&location(&res)).await.text().await.unwrap();
    assert!(!html.contains("Create my Matomo account"), "{html}");
    // A hand-made post makes nothing either.
    let res = create(&b, &app, &html).await;
    assert_eq!(res.status(), 502);
    assert!(res.text().await.unwrap().contains("verified e-mail"));
    assert!(!m.state.user_exists("ned"));
}

#[tokio::test]
async fn the_endpoint_needs_the_form_token_and_the_setting() {
    let (m, p, app) = setup(OFFER).await;
    person(&p, "uns-fay", "fay", "fay@example.org");
    let b = Browser::new();
    link_page(&b, &app, &p, "uns-fay").await;
    let res = b
        .post(
            &app.url("/_unikgate/provision"),
            &[("csrf", "forged"), ("rd", "/")],
        )
        .await;
    assert_eq!(res.status(), 403);
    assert!(!m.state.user_exists("fay"));
    // With provisioning off there is no such endpoint.
    let (m, p, app) = setup("").await;
    person(&p, "uns-fay", "fay", "fay@example.org");
    let b = Browser::new();
    let html = link_page(&b, &app, &p, "uns-fay").await;
    assert!(!html.contains("Create my Matomo account"));
    assert_eq!(create(&b, &app, &html).await.status(), 404);
    assert!(!m.state.user_exists("fay"));
}

#[tokio::test]
async fn matomo_refusing_to_make_users_has_its_own_page() {
    let (m, p, app) = setup(OFFER).await;
    m.state
        .enable_users_admin
        .store(false, std::sync::atomic::Ordering::Relaxed);
    person(&p, "uns-gus", "gus", "gus@example.org");
    let b = Browser::new();
    let html = link_page(&b, &app, &p, "uns-gus").await;
    let res = create(&b, &app, &html).await;
    assert_eq!(res.status(), 502);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("Your Matomo account could not be made"),
        "{page}"
    );
    assert!(
        page.contains("cannot create gus"),
        "Matomo's reason: {page}"
    );
    assert!(!m.state.user_exists("gus"));
    assert!(app.app.links.list().await.unwrap().is_empty());
    // An old plugin (1.1.0) has no provision action: the page says to update it.
    m.state
        .enable_users_admin
        .store(true, std::sync::atomic::Ordering::Relaxed);
    m.state
        .unikgate_old_plugin
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let res = create(&b, &app, &html).await;
    assert_eq!(res.status(), 502);
    assert!(res.text().await.unwrap().contains("1.2.0"));
    assert!(!m.state.user_exists("gus"));
}

#[tokio::test]
async fn the_access_claim_sets_access_at_each_sign_in() {
    let (m, p, app) = setup("[provision]\naccess_claim = \"matomo_access\"\n").await;
    p.set_claims(
        "uns-alice",
        json!({"matomo_access": ["/matomo/3/write", "/matomo/7/view", "nonsense"]}),
    );
    let _b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    // Granted at the link (site 7 does not exist); site 1, given by hand, kept (no prune).
    assert_eq!(
        m.state.site_access("alice"),
        levels(&[(1, "view"), (3, "write")])
    );
    // The claim changes: the next sign-in applies it.
    p.set_claims("uns-alice", json!({"matomo_access": "/matomo/3/admin"}));
    let b = Browser::new();
    assert_eq!(sign_in(&b, &app, &p, "uns-alice", "/").await.status(), 302);
    assert_eq!(
        m.state.site_access("alice"),
        levels(&[(1, "view"), (3, "admin")])
    );
    // Superusers are left alone.
    p.set_claims("uns-root", json!({"matomo_access": ["/matomo/3/view"]}));
    let _r = linked(&app, &p, "uns-root", "admin", "admin-password").await;
    assert!(m.state.is_superuser("admin"));
}

#[tokio::test]
async fn with_prune_the_access_the_claim_no_longer_lists_is_removed() {
    let (m, p, app) =
        setup("[provision]\naccess_claim = \"matomo_access\"\naccess_claim_prune = true\n").await;
    p.set_claims("uns-alice", json!({"matomo_access": ["/matomo/3/view"]}));
    let _b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    assert_eq!(m.state.site_access("alice"), levels(&[(3, "view")]));
    // No claim at all: every access removed.
    p.set_claims("uns-alice", json!({"matomo_access": null}));
    let b = Browser::new();
    assert_eq!(sign_in(&b, &app, &p, "uns-alice", "/").await.status(), 302);
    assert!(m.state.site_access("alice").is_empty());
}

#[tokio::test]
async fn a_failure_to_set_access_fails_the_sign_in_closed() {
    let (m, p, app) = setup("[provision]\naccess_claim = \"matomo_access\"\n").await;
    p.set_claims("uns-alice", json!({"matomo_access": ["/matomo/3/view"]}));
    let _b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    m.state
        .enable_users_admin
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // Nothing to change: nothing asked of Matomo's users admin, the sign-in goes on.
    assert_eq!(
        sign_in(&Browser::new(), &app, &p, "uns-alice", "/")
            .await
            .status(),
        302
    );
    // A change Matomo refuses to make.
    p.set_claims("uns-alice", json!({"matomo_access": ["/matomo/3/write"]}));
    let b = Browser::new();
    let res = sign_in(&b, &app, &p, "uns-alice", "/").await;
    assert_eq!(res.status(), 502);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("cannot set the access of alice"));
    let res = b.get(&app.url("/index.php")).await;
    assert_eq!(res.status(), 302, "not signed in");
    assert!(location(&res).contains("/_unikgate/sign_in"));
}

#[tokio::test]
async fn no_link_stands_whose_access_the_claim_did_not_set() {
    let (m, p, app) =
        setup("[provision]\nmode = \"offer\"\naccess_claim = \"matomo_access\"\n").await;
    m.state
        .enable_users_admin
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // Linking an existing account by password: the claim cannot be set, so no link.
    p.set_claims("uns-bob", json!({"matomo_access": ["/matomo/3/admin"]}));
    let b = Browser::new();
    sign_in(&b, &app, &p, "uns-bob", "/").await;
    let res = link_password(&b, &app, "/", "bob", "bob-password").await;
    assert_eq!(res.status(), 502);
    assert!(
        app.app.links.list().await.unwrap().is_empty(),
        "the link was taken back"
    );
    let res = b.get(&app.url("/index.php?module=CoreHome")).await;
    assert!(
        location(&res).contains("/_unikgate/link"),
        "not let into Matomo: {}",
        location(&res)
    );
}

#[test]
fn provision_keys_are_checked() {
    use unikgate::config::Config;
    let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n";
    let signed = format!("[matomo]\nminter = \"signed\"\nshared_secret = \"{SECRET}\"\n");
    for (text, key) in [
        (
            "[provision]\nmode = \"offer\"\n".to_string(),
            "provision.mode",
        ),
        (
            "[provision]\naccess_claim = \"m\"\n".to_string(),
            "provision.access_claim",
        ),
        (
            format!("{signed}[provision]\nmode = \"sometimes\"\n"),
            "provision.mode",
        ),
        (
            format!("{signed}[provision]\naccess = [\"/matomo/1/superuser\"]\n"),
            "provision.access",
        ),
        (
            format!("{signed}[provision]\naccess = [\"1:view\"]\n"),
            "provision.access",
        ),
        (
            format!("{signed}[provision]\naccess_claim_prune = true\n"),
            "provision.access_claim_prune",
        ),
        (
            format!("{signed}[links]\nallow_unlink = \"no\"\n"),
            "links.allow_unlink",
        ),
    ] {
        let errs = Config::from_toml(&format!("{base}{text}"), &std::collections::HashMap::new())
            .expect_err(&text);
        assert!(errs.iter().any(|e| e.key == key), "{text}: {errs:?}");
    }
}
