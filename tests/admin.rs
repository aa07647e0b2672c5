//! The superusers' page's API (`<prefix>/admin/api/…`) and unikgate's own `<prefix>/admin`,
//! against the stand-in's UnikGate plugin (the real Matomo 5.1.2 and Chromium prove the page in
//! Matomo's admin, in `real_matomo.rs`): a superuser lists links with their live sessions and the
//! refusals, pages and filters them, ends a person's sessions and unlinks them (in unikgate and
//! in Matomo, audited with the superuser's name); everybody else gets 403 and nothing about
//! anybody; a change without the CSRF token, or from another site, is refused; a superuser
//! demoted in Matomo loses the page at the next request.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::provider::FakeProvider;
use support::{
    config, csrf_of, link_password, linked, location, sign_in, Browser, StandIn, TestApp,
};

const SECRET: &str = "unikgate-and-matomo-share-this-32b+";

async fn setup() -> (StandIn, FakeProvider, TestApp) {
    let m = StandIn::start().await;
    *m.state.unikgate_secret.lock().unwrap() = Some(SECRET.to_string());
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(
        &m.url(),
        &p.config(),
        &format!("[matomo]\nminter = \"signed\"\nshared_secret = \"{SECRET}\"\n"),
    ))
    .await;
    (m, p, app)
}

async fn get(b: &Browser, app: &TestApp, path: &str) -> (u16, Value) {
    let res = b
        .get(&app.url(&format!("/_unikgate/admin/api/{path}")))
        .await;
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post(b: &Browser, app: &TestApp, path: &str, form: &[(&str, &str)]) -> (u16, String) {
    let res = b
        .post(&app.url(&format!("/_unikgate/admin/api/{path}")), form)
        .await;
    (res.status().as_u16(), res.text().await.unwrap())
}

/// The admin (superuser, linked) and alice (linked in two browsers).
async fn people(app: &TestApp, p: &FakeProvider) -> (Browser, Browser, Browser) {
    let admin = linked(app, p, "uns-root", "admin", "admin-password").await;
    let alice = linked(app, p, "uns-alice", "alice", "alice-password").await;
    let alice2 = Browser::new();
    assert_eq!(
        location(&sign_in(&alice2, app, p, "uns-alice", "/").await),
        app.url("/")
    );
    (admin, alice, alice2)
}

async fn refusals(b: &Browser, app: &TestApp, want: usize) -> Vec<Value> {
    for _ in 0..50 {
        let (s, v) = get(b, app, "events?days=7&event=refused").await;
        assert_eq!(s, 200, "{v}");
        let got = v["events"].as_array().cloned().unwrap_or_default();
        if got.len() >= want {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the refusals did not reach the audit trail");
}

#[tokio::test]
async fn a_superuser_sees_every_link_its_live_sessions_and_the_refusals() {
    let (_m, p, app) = setup().await;
    let (admin, _alice, _alice2) = people(&app, &p).await;
    // bob signs in and tries a wrong password: a refusal.
    let bob = Browser::new();
    sign_in(&bob, &app, &p, "uns-bob", "/").await;
    assert_eq!(
        link_password(&bob, &app, "/", "bob", "nope").await.status(),
        401
    );

    let (s, me) = get(&admin, &app, "me").await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["login"], "admin");
    assert!(me["csrf"].as_str().is_some_and(|c| c.len() > 20));
    assert_eq!(me["texts"]["unlink"], "Unlink");
    let (s, v) = get(&admin, &app, "links").await;
    assert_eq!(s, 200);
    assert_eq!(v["total"], 2);
    let rows = v["links"].as_array().unwrap();
    assert_eq!(rows[0]["matomo_login"], "admin", "by login");
    let alice = &rows[1];
    assert_eq!(alice["matomo_login"], "alice");
    assert_eq!(alice["subject"], "uns-alice");
    assert_eq!(alice["sessions"], 2, "two browsers: {alice}");
    assert_eq!(alice["client_ip"], "127.0.0.1");
    assert!(alice["last_seen"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(alice["linked"].as_str().is_some());
    // Filtered and paged.
    let (_, v) = get(&admin, &app, "links?q=ALI").await;
    assert_eq!(v["total"], 1);
    assert_eq!(v["links"][0]["matomo_login"], "alice");
    let (_, v) = get(&admin, &app, "links?per_page=1&page=2").await;
    assert_eq!(v["total"], 2);
    assert_eq!(v["links"].as_array().unwrap().len(), 1);
    assert_eq!(v["links"][0]["matomo_login"], "alice");
    let (_, v) = get(&admin, &app, "links?page=99").await;
    assert!(v["links"].as_array().unwrap().is_empty());
    // The refusal of the last days.
    let got = refusals(&admin, &app, 1).await;
    let bobs: Vec<&Value> = got.iter().filter(|e| e["unikname"] == "uns-bob").collect();
    assert_eq!(bobs.len(), 1, "{got:?}");
    assert_eq!(bobs[0]["reason"], "wrong Matomo password or unknown user");
    assert_eq!(bobs[0]["client_ip"], "127.0.0.1");
}

#[tokio::test]
async fn everybody_else_gets_403_and_nothing_about_anybody() {
    let (m, p, app) = setup().await;
    let (_admin, alice, _alice2) = people(&app, &p).await;
    let unlinked = Browser::new();
    sign_in(&unlinked, &app, &p, "uns-nobody", "/").await;
    let html = alice
        .get(&app.url("/_unikgate/account"))
        .await
        .text()
        .await
        .unwrap();
    let alice_csrf = csrf_of(&html);
    let (_, v) = get(&alice, &app, "links").await;
    let admin_link = v.to_string();
    for (who, b) in [
        ("alice (view access)", &alice),
        ("signed in, not linked", &unlinked),
        ("not signed in", &Browser::new()),
    ] {
        for path in ["me", "links", "links?q=admin", "events?days=30"] {
            let (s, v) = get(b, &app, path).await;
            assert_eq!(s, 403, "{who} {path}: {v}");
            let text = v.to_string();
            for secret in ["uns-root", "uns-alice\"", "127.0.0.1", "csrf"] {
                assert!(
                    !text.contains(secret),
                    "{who} {path} learns {secret}: {text}"
                );
            }
        }
    }
    assert!(!admin_link.contains("uns-root"));
    // alice posting with her own valid form token: refused, nothing changes.
    let links = app.app.links.list().await.unwrap();
    let root = links.iter().find(|l| l.matomo_login == "admin").unwrap();
    let (s, _) = post(
        &alice,
        &app,
        "unlink",
        &[("csrf", &alice_csrf), ("link", &root.id)],
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = post(
        &alice,
        &app,
        "end_sessions",
        &[("csrf", &alice_csrf), ("link", &root.id)],
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(app.app.links.list().await.unwrap().len(), 2);
    assert_eq!(m.state.sessions_of("admin"), 1);
    // unikgate's own page: 403 for alice, the sign-in page for nobody.
    let res = alice.get(&app.url("/_unikgate/admin")).await;
    assert_eq!(res.status(), 403);
    let res = Browser::new().get(&app.url("/_unikgate/admin")).await;
    assert_eq!(res.status(), 302);
    assert!(location(&res).contains("/_unikgate/sign_in"));
}

#[tokio::test]
async fn ending_sessions_and_unlinking_take_effect_in_unikgate_and_matomo() {
    support::logs::capture();
    let (m, p, app) = setup().await;
    let (admin, alice, alice2) = people(&app, &p).await;
    assert_eq!(m.state.sessions_of("alice"), 2);
    let (_, me) = get(&admin, &app, "me").await;
    let csrf = me["csrf"].as_str().unwrap().to_string();
    let id = app
        .app
        .links
        .get_by_login("alice")
        .await
        .unwrap()
        .unwrap()
        .id;
    // Without the form token: refused, nothing ends.
    let (s, _) = post(&admin, &app, "end_sessions", &[("link", &id)]).await;
    assert_eq!(s, 403);
    let (s, _) = post(
        &admin,
        &app,
        "end_sessions",
        &[("csrf", "forged"), ("link", &id)],
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(m.state.sessions_of("alice"), 2);
    // End her sessions: both browsers are out, in unikgate and in Matomo; the link stays.
    let (s, body) = post(
        &admin,
        &app,
        "end_sessions",
        &[("csrf", &csrf), ("link", &id)],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["ended"], 2);
    assert_eq!(m.state.sessions_of("alice"), 0);
    for b in [&alice, &alice2] {
        let res = b.get(&app.url("/index.php?module=CoreHome")).await;
        assert!(location(&res).contains("/_unikgate/sign_in"));
    }
    assert!(app.app.links.get_by_login("alice").await.unwrap().is_some());
    // She signs in again (straight in); then unlinked: out, and asked to link at the next sign-in.
    let again = Browser::new();
    assert_eq!(
        location(&sign_in(&again, &app, &p, "uns-alice", "/").await),
        app.url("/")
    );
    let (s, body) = post(&admin, &app, "unlink", &[("csrf", &csrf), ("link", &id)]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(m.state.sessions_of("alice"), 0);
    let res = again.get(&app.url("/index.php?module=CoreHome")).await;
    assert!(location(&res).contains("/_unikgate/sign_in"));
    assert!(app.app.links.get_by_login("alice").await.unwrap().is_none());
    let res = sign_in(&Browser::new(), &app, &p, "uns-alice", "/").await;
    assert!(location(&res).contains("/_unikgate/link"));
    // A link that is gone: 404, nothing else.
    let (s, _) = post(&admin, &app, "unlink", &[("csrf", &csrf), ("link", &id)]).await;
    assert_eq!(s, 404);
    // Both changes are audit events naming the superuser.
    let q = unikgate::store::AuditQuery {
        subject: Some("uns-alice".into()),
        events: vec!["admin_unlink".into(), "admin_end_sessions".into()],
        limit: 10,
        ..Default::default()
    };
    let mut got = Vec::new();
    for _ in 0..50 {
        got = app.app.audit.list(&q).await.unwrap();
        if got.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|r| r.actor.as_deref() == Some("admin")));
    assert!(got
        .iter()
        .all(|r| r.matomo_login.as_deref() == Some("alice")));
}

#[tokio::test]
async fn a_superuser_demoted_in_matomo_loses_the_page_at_the_next_request() {
    let (m, p, app) = setup().await;
    let (admin, alice, _) = people(&app, &p).await;
    assert_eq!(get(&admin, &app, "links").await.0, 200);
    m.state.set_superuser("admin", false);
    assert_eq!(get(&admin, &app, "links").await.0, 403);
    assert_eq!(admin.get(&app.url("/_unikgate/admin")).await.status(), 403);
    // And one promoted gets it at once.
    m.state.set_superuser("alice", true);
    assert_eq!(get(&alice, &app, "links").await.0, 200);
}

#[tokio::test]
async fn reads_from_another_site_are_refused() {
    let (_m, p, app) = setup().await;
    let (admin, _, _) = people(&app, &p).await;
    let res = admin
        .client
        .get(app.url("/_unikgate/admin/api/links"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(!res.text().await.unwrap().contains("alice"));
}

#[tokio::test]
async fn unikgate_serves_the_page_and_its_script_itself() {
    let (_m, p, app) = setup().await;
    let (admin, _, _) = people(&app, &p).await;
    let res = admin.get(&app.url("/_unikgate/admin")).await;
    assert_eq!(res.status(), 200);
    let csp = res
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("connect-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let html = res.text().await.unwrap();
    assert!(html.contains("id=\"unikgate-admin\""), "{html}");
    assert!(html.contains("/_unikgate/static/admin.js"));
    let res = Browser::new()
        .get(&app.url("/_unikgate/static/admin.js"))
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(res.text().await.unwrap().contains("admin/api/"));
}
