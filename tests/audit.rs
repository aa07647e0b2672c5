//! The audit trail read back: what the server did (sign-in, refusals, link) is kept in the link
//! database as well as logged, the CLI's own actions too, and `unikgate audit list` prints it,
//! filtered by @unikname, date and event, as a table or JSON; `audit.retention` is checked.

mod support;

use std::time::Duration;

use support::provider::FakeProvider;
use support::{config, link_password, linked, sign_in, Browser, StandIn, TestApp};
use unikgate::store::{AuditQuery, AuditRecord};

async fn events(app: &TestApp, subject: &str, want: usize) -> Vec<AuditRecord> {
    let q = AuditQuery {
        subject: Some(subject.into()),
        limit: 100,
        ..Default::default()
    };
    // Written by a task in the background: within a moment.
    for _ in 0..50 {
        let got = app.app.audit.list(&q).await.unwrap();
        if got.len() >= want {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.app.audit.list(&q).await.unwrap()
}

fn cli(app: &TestApp, p: &FakeProvider, args: &[&str]) -> std::process::Output {
    let cfg = app.dir.path().join("cli.toml");
    let text = config(&app.url(""), &p.config(), "")
        .replace("{public}", &app.url(""))
        .replace("{dir}", &app.dir.path().display().to_string());
    std::fs::write(&cfg, text).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_unikgate"))
        .args(args)
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap()
}

#[tokio::test]
async fn what_happened_is_kept_and_printed_back() {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(&m.url(), &p.config(), "")).await;
    let b = Browser::new();
    sign_in(&b, &app, &p, "uns-alice", "/").await;
    let res = link_password(&b, &app, "/", "alice", "wrong").await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        link_password(&b, &app, "/", "alice", "alice-password")
            .await
            .status(),
        302
    );
    let got = events(&app, "uns-alice", 4).await;
    let names: Vec<&str> = got.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(
        names,
        vec!["mint", "link", "refused", "sign_in"],
        "newest first: {got:?}"
    );
    assert_eq!(got[0].details.as_deref(), Some("minter=autologin"));
    assert_eq!(got[1].matomo_login.as_deref(), Some("alice"));
    assert_eq!(got[1].client_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        got[2].reason.as_deref(),
        Some("wrong Matomo password or unknown user")
    );
    assert!(
        got.iter()
            .all(|r| r.details.as_deref().unwrap_or("").len() < 200),
        "nothing bulky"
    );

    // The CLI: its own action kept, and the trail printed.
    let out = cli(&app, &p, &["links", "remove", "--login", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&app, &p, &["audit", "list", "--json", "--event", "unlink"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["matomo_login"], "alice");
    assert_eq!(rows[0]["actor"], "cli");
    let out = cli(
        &app,
        &p,
        &["audit", "list", "--unikname", "uns-alice", "--since", "1h"],
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.starts_with("at (UTC)"), "{table}");
    for word in ["sign_in", "refused", "link", "wrong Matomo password"] {
        assert!(table.contains(word), "{word} missing:\n{table}");
    }
    assert!(
        !table.contains("unlink"),
        "the CLI's unlink names the login, not the subject"
    );
    let out = cli(&app, &p, &["audit", "list", "--since", "next week"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
}

#[tokio::test]
async fn refusals_of_people_never_signed_in_are_kept_too() {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(
        &m.url(),
        &p.config(),
        "[access]\nallow_subjects = [\"uns-alice\"]\n",
    ))
    .await;
    let _alice = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let res = sign_in(&Browser::new(), &app, &p, "uns-mallory", "/").await;
    assert_eq!(res.status(), 403);
    let got = events(&app, "uns-mallory", 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event, "refused");
    assert_eq!(got[0].reason.as_deref(), Some("access.allow_subjects"));
}

#[test]
fn retention_is_checked() {
    use unikgate::config::Config;
    let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n";
    let env = std::collections::HashMap::new();
    let c = Config::from_toml(base, &env).unwrap();
    assert_eq!(c.audit.retention, Duration::from_secs(90 * 86400));
    let c = Config::from_toml(&format!("{base}[audit]\nretention = \"30d\"\n"), &env).unwrap();
    assert_eq!(c.audit.retention, Duration::from_secs(30 * 86400));
    let errs =
        Config::from_toml(&format!("{base}[audit]\nretention = \"5m\"\n"), &env).unwrap_err();
    assert!(errs.iter().any(|e| e.key == "audit.retention"), "{errs:?}");
}
