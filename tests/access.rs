//! `[access]`: who may sign in. Each rule lets one person in and keeps another out (with its
//! page in both languages and an audit event naming the rule); an e-mail domain counts only when
//! the provider verified the address; rules changed under live sessions reach them at their
//! next request (refused: both sessions end; a claim not kept: sign in again; still allowed:
//! nothing to redo).

mod support;

use std::sync::Arc;

use serde_json::json;
use support::provider::FakeProvider;
use support::{config, link_password, location, sign_in, Browser, StandIn, TestApp};

async fn gate(m: &StandIn, p: &FakeProvider, access: &str) -> TestApp {
    TestApp::start(&config(
        &m.url(),
        &p.config(),
        &format!("[access]\n{access}"),
    ))
    .await
}

/// Signs `sub` in; true when the sign-in went on (to the link page or Matomo).
async fn let_in(b: &Browser, app: &TestApp, p: &FakeProvider, sub: &str) -> bool {
    let res = sign_in(b, app, p, sub, "/").await;
    match res.status().as_u16() {
        302 => true,
        403 => {
            let page = res.text().await.unwrap();
            assert!(page.contains("Not allowed here"), "{page}");
            false
        }
        s => panic!("unexpected {s}: {}", res.text().await.unwrap()),
    }
}

#[tokio::test]
async fn allow_subjects_lets_the_listed_in_and_tells_the_others_whom_to_ask() {
    support::logs::capture();
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = gate(&m, &p, "allow_subjects = [\"uns-alice\"]\n").await;
    assert!(let_in(&Browser::new(), &app, &p, "uns-alice").await);
    let b = Browser::new();
    let res = sign_in(&b, &app, &p, "uns-mallory-7", "/").await;
    assert_eq!(res.status(), 403);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("uns-mallory-7"),
        "names who signed in: {page}"
    );
    assert!(page.contains("administrator of this Matomo"), "{page}");
    assert!(page.contains("Sign in with another @unikname"), "{page}");
    assert!(
        !page.contains("allow_subjects"),
        "the rule is for the log, not the page"
    );
    // Nobody is signed in in that browser: Matomo's pages send it to the sign-in page.
    let res = b.get(&app.url("/index.php")).await;
    assert_eq!(res.status(), 302);
    assert!(location(&res).contains("/_unikgate/sign_in"));
    assert_eq!(
        b.get(&app.url("/_unikgate/account")).await.status(),
        302,
        "no account page for a refused person"
    );
    let logs = support::logs::text();
    let line = logs
        .lines()
        .find(|l| l.contains("uns-mallory-7") && l.contains("refused"))
        .expect("an audit event for the refusal");
    assert!(line.contains("access.allow_subjects"), "{line}");
    // In French too.
    let fr = Browser::speaking("fr");
    let res = sign_in(&fr, &app, &p, "uns-mallory-7", "/").await;
    assert_eq!(res.status(), 403);
    let page = res.text().await.unwrap();
    assert!(page.contains("Accès non autorisé"), "{page}");
    assert!(
        page.contains("Se connecter avec un autre @unikname"),
        "{page}"
    );
}

#[tokio::test]
async fn an_email_domain_counts_only_when_the_provider_verified_the_address() {
    support::logs::capture();
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = gate(&m, &p, "allow_email_domains = [\"example.org\"]\n").await;
    p.set_claims(
        "uns-vera",
        json!({"email": "vera@Example.org", "email_verified": true}),
    );
    assert!(let_in(&Browser::new(), &app, &p, "uns-vera").await);
    // The same domain, not verified: no check at all, so no entry.
    p.set_claims(
        "uns-una",
        json!({"email": "una@example.org", "email_verified": false}),
    );
    assert!(!let_in(&Browser::new(), &app, &p, "uns-una").await);
    // Verified the way some providers say it (a string) counts; no flag at all does not.
    p.set_claims(
        "uns-sam",
        json!({"email": "sam@example.org", "email_verified": "true"}),
    );
    assert!(let_in(&Browser::new(), &app, &p, "uns-sam").await);
    p.set_claims("uns-nof", json!({"email": "nof@example.org"}));
    assert!(!let_in(&Browser::new(), &app, &p, "uns-nof").await);
    // Another domain, or one that only ends like it.
    p.set_claims(
        "uns-otto",
        json!({"email": "otto@example.org.evil.test", "email_verified": true}),
    );
    assert!(!let_in(&Browser::new(), &app, &p, "uns-otto").await);
    let logs = support::logs::text();
    let line = logs
        .lines()
        .find(|l| l.contains("uns-una") && l.contains("refused"))
        .expect("an audit event");
    assert!(line.contains("not verified"), "{line}");
}

#[tokio::test]
async fn required_claims_must_all_hold() {
    support::logs::capture();
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = gate(
        &m,
        &p,
        "require_claims = [\"groups=matomo\", \"groups=staff\", \"org.unit=sales\"]\n",
    )
    .await;
    p.set_claims(
        "uns-gail",
        json!({"groups": ["other", "staff"], "org": {"unit": "sales"}}),
    );
    assert!(let_in(&Browser::new(), &app, &p, "uns-gail").await);
    p.set_claims(
        "uns-hal",
        json!({"groups": ["matomo"], "org": {"unit": "it"}}),
    );
    assert!(!let_in(&Browser::new(), &app, &p, "uns-hal").await);
    p.set_claims("uns-ike", json!({"org": {"unit": "sales"}}));
    assert!(!let_in(&Browser::new(), &app, &p, "uns-ike").await);
    let logs = support::logs::text();
    let line = logs
        .lines()
        .find(|l| l.contains("uns-hal") && l.contains("refused"))
        .expect("an audit event");
    assert!(line.contains("access.require_claims (org.unit)"), "{line}");
}

/// Alice signed in and linked under `before`; unikgate restarted on the same store with
/// `after`: her next Matomo request.
async fn after_a_change(
    before: &str,
    after: &str,
) -> (StandIn, Browser, TestApp, reqwest::Response) {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    p.set_claims(
        "uns-alice",
        json!({"email": "alice@example.org", "email_verified": true, "groups": ["staff"]}),
    );
    let toml = |access: &str| config(&m.url(), &p.config(), &format!("[access]\n{access}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = TestApp::start_on(&toml(before), dir.clone(), listener, addr).await;
    let b = Browser::new();
    assert_eq!(sign_in(&b, &app, &p, "uns-alice", "/").await.status(), 302);
    let res = link_password(&b, &app, "/", "alice", "alice-password").await;
    assert_eq!(res.status(), 302);
    assert_eq!(m.state.sessions_of("alice"), 1);
    app.stop().await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = TestApp::start_on(&toml(after), dir, listener, addr).await;
    let res = b
        .get(&app.url("/index.php?module=CoreHome&action=index"))
        .await;
    (m, b, app, res)
}

#[tokio::test]
async fn a_person_removed_from_the_rules_is_out_at_the_next_request() {
    let (m, b, app, res) = after_a_change(
        "allow_email_domains = [\"example.org\"]\n",
        "allow_email_domains = [\"example.com\"]\n",
    )
    .await;
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("Not allowed here"));
    assert_eq!(
        m.state.sessions_of("alice"),
        0,
        "her Matomo session is logged out"
    );
    let res = b.get(&app.url("/_unikgate/account")).await;
    assert_eq!(res.status(), 302, "her unikgate session is gone");
    assert!(location(&res).contains("/_unikgate/sign_in"));
    let res = b.get(&app.url("/index.php")).await;
    assert_eq!(res.status(), 302);
}

#[tokio::test]
async fn rules_that_read_a_claim_the_session_did_not_keep_ask_to_sign_in_again() {
    let (m, b, app, res) = after_a_change(
        "allow_email_domains = [\"example.org\"]\n",
        "allow_email_domains = [\"example.org\"]\nrequire_claims = [\"groups=staff\"]\n",
    )
    .await;
    assert_eq!(res.status(), 302);
    assert!(location(&res).contains("/_unikgate/sign_in"));
    assert_eq!(m.state.sessions_of("alice"), 0);
    let res = b.get(&app.url("/_unikgate/account")).await;
    assert_eq!(res.status(), 302, "signed out");
}

#[tokio::test]
async fn sessions_the_new_rules_still_allow_go_on_without_a_new_sign_in() {
    let (m, b, app, res) =
        after_a_change("", "allow_subjects = [\"uns-alice\", \"uns-bob\"]\n").await;
    assert_eq!(res.status(), 200);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("piwik.userLogin = \"alice\""));
    let mints = m.state.mints();
    // Stamped again once: later requests do not check again, and Matomo's session is the same.
    for _ in 0..3 {
        let res = b
            .get(&app.url("/index.php?module=CoreHome&action=index"))
            .await;
        assert_eq!(res.status(), 200);
    }
    assert_eq!(m.state.mints(), mints);
    assert_eq!(b.get(&app.url("/_unikgate/account")).await.status(), 200);
}

#[test]
fn access_keys_are_checked() {
    use unikgate::config::Config;
    let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n";
    for (text, key) in [
        (
            "[access]\nallow_email_domains = [\"not a domain\"]\n",
            "access.allow_email_domains",
        ),
        (
            "[access]\nrequire_claims = [\"groups\"]\n",
            "access.require_claims",
        ),
        (
            "[access]\nrequire_claims = [\"=x\"]\n",
            "access.require_claims",
        ),
        (
            "[access]\nallow_subjects = [\"\"]\n",
            "access.allow_subjects",
        ),
        ("[access]\nallow_everyone = true\n", "access.allow_everyone"),
    ] {
        let errs = Config::from_toml(&format!("{base}{text}"), &std::collections::HashMap::new())
            .expect_err(text);
        assert!(errs.iter().any(|e| e.key == key), "{text}: {errs:?}");
    }
    let c = Config::from_toml(
        &format!("{base}[access]\nallow_email_domains = [\"@Example.ORG\"]\n"),
        &std::collections::HashMap::new(),
    )
    .unwrap();
    assert_eq!(c.access.allow_email_domains, vec!["example.org"]);
}
