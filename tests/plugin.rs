//! The signed minter and the UnikGate plugin: unikgate's signer against the plugin's real PHP
//! verifier, the journey with `minter = "signed"` against the stand-in, every refusal from the
//! Rust side, and `doctor`.

mod support;

use std::sync::atomic::Ordering;

use support::provider::FakeProvider;
use support::{config, link_password, location, sign_in, Browser, StandIn, TestApp};
use unikgate::upstream::matomo::{sign_hs256, Signed};

const SECRET: &str = "unikgate-and-matomo-share-this-32b+";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn php_verify(audience: &str, cases: &[(String, u64)]) -> Vec<String> {
    use std::io::Write;
    assert!(
        std::process::Command::new("php")
            .arg("--version")
            .output()
            .is_ok(),
        "php is not installed: run tests/run (it installs php-cli and phpunit)"
    );
    let input = serde_json::json!({
        "secret": SECRET,
        "audience": audience,
        "cases": cases.iter().map(|(t, n)| serde_json::json!({"token": t, "now": n})).collect::<Vec<_>>(),
    });
    let mut child = std::process::Command::new("php")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/verify_assertion.php"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("php said: {}", String::from_utf8_lossy(&out.stdout)))
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn unikgates_assertions_meet_the_plugins_verifier() {
    let origin = "https://analytics.example.com";
    let signer = Signed::new(SECRET.to_string().into(), origin);
    let t = now();
    let claims = |over: serde_json::Value| {
        let mut c = serde_json::json!({
            "iss": "unikgate", "aud": format!("{origin}/"), "sub": "alice", "iat": t, "exp": t + 30,
            "jti": unikgate::random_token(), "rd": "/index.php",
        });
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let valid = signer.assertion("alice", t, "/index.php?module=CoreHome");
    let replay = valid.clone();
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims(serde_json::json!({})).to_string())
    );
    let rs256 = {
        let good = sign_hs256(&claims(serde_json::json!({})), SECRET.as_bytes());
        let rest = good.split_once('.').unwrap().1;
        format!("{}.{rest}", b64(r#"{"alg":"RS256","typ":"JWT"}"#))
    };
    let cases: Vec<(&str, String, u64, &str)> = vec![
        ("valid", valid, t, "ok alice /index.php?module=CoreHome"),
        ("replayed", replay, t, "refused replayed"),
        (
            "expired",
            signer.assertion("alice", t - 120, "/"),
            t,
            "refused expired",
        ),
        (
            "not yet valid",
            signer.assertion("alice", t + 120, "/"),
            t,
            "refused not yet valid",
        ),
        (
            "wrong aud",
            sign_hs256(
                &claims(serde_json::json!({"aud": "https://evil.example/"})),
                SECRET.as_bytes(),
            ),
            t,
            "refused wrong audience",
        ),
        (
            "wrong iss",
            sign_hs256(
                &claims(serde_json::json!({"iss": "mallory"})),
                SECRET.as_bytes(),
            ),
            t,
            "refused wrong issuer",
        ),
        (
            "bad signature",
            sign_hs256(
                &claims(serde_json::json!({})),
                b"another-secret-that-is-32-bytes-long",
            ),
            t,
            "refused bad signature",
        ),
        ("alg none", none, t, "refused unsupported header"),
        ("RS256 header", rs256, t, "refused unsupported header"),
        (
            "truncated",
            signer.assertion("alice", t, "/")[..40].to_string(),
            t,
            "refused malformed",
        ),
        (
            "odd sub",
            signer.assertion("alice\nadmin", t, "/"),
            t,
            "refused sub is not a Matomo login",
        ),
        (
            "email login",
            signer.assertion("jane.doe-x@example.com", t, "/"),
            t,
            "ok jane.doe-x@example.com /",
        ),
        (
            "long lifetime",
            sign_hs256(
                &claims(serde_json::json!({"exp": t + 3600})),
                SECRET.as_bytes(),
            ),
            t,
            "refused lifetime",
        ),
    ];
    let results = php_verify(
        &format!("{origin}/"),
        &cases.iter().map(|c| (c.1.clone(), c.2)).collect::<Vec<_>>(),
    );
    for (case, got) in cases.iter().zip(&results) {
        assert!(got.starts_with(case.3), "{}: {got}", case.0);
    }
}

async fn setup(extra: &str) -> (StandIn, FakeProvider, TestApp) {
    let m = StandIn::start().await;
    *m.state.unikgate_secret.lock().unwrap() = Some(SECRET.to_string());
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(
        &m.url(),
        &p.config(),
        &format!("[matomo]\nminter = \"signed\"\nshared_secret = \"{SECRET}\"\n{extra}"),
    ))
    .await;
    (m, p, app)
}

#[tokio::test]
async fn the_journey_with_the_signed_minter() {
    let (m, p, app) = setup("").await;
    let b = Browser::new();
    let deep = "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday";
    let res = sign_in(&b, &app, &p, "uns-alice", deep).await;
    assert!(location(&res).contains("/_unikgate/link"));
    let res = link_password(&b, &app, deep, "alice", "alice-password").await;
    assert_eq!(res.status(), 302);
    assert_eq!(location(&res), app.url(deep));
    let html = b.get(&app.url(deep)).await.text().await.unwrap();
    assert!(html.contains("piwik.userLogin = \"alice\""));
    // No AutoLogin request, no matomo-* header: only assertions.
    assert!(m.state.log().iter().all(|s| !s.uri.contains("AutoLogin")
        && s.headers.keys().all(|k| !k.as_str().starts_with("matomo"))));
    let res = b
        .get(&app.url("/index.php?module=Login&action=logout"))
        .await;
    assert_eq!(res.status(), 302);
    assert_eq!(m.state.sessions_of("alice"), 0);
    let res = sign_in(&b, &app, &p, "uns-alice", deep).await;
    assert_eq!(location(&res), app.url(deep), "straight in");
    assert!(b
        .get(&app.url(deep))
        .await
        .text()
        .await
        .unwrap()
        .contains("\"alice\""));
    // Idle expiry at Matomo: the 403 is re-minted with a fresh assertion and retried.
    m.state.idle_ms.store(200, Ordering::Relaxed);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let res = b.get(&app.url(deep)).await;
    assert_eq!(res.status(), 200);
    m.state.idle_ms.store(3_600_000, Ordering::Relaxed);
}

#[tokio::test]
async fn linking_by_session_uses_the_plugins_whoami() {
    let (m, p, app) = setup("password_login = true\n").await;
    let b = Browser::new();
    let sid = m.state.login_with_password("bob");
    b.set_cookie(&app.url("/"), &format!("MATOMO_SESSID={sid}; Path=/"));
    sign_in(&b, &app, &p, "uns-bob", "/").await;
    m.state.clear_log();
    let html = b
        .get(&app.url("/_unikgate/link"))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("Link this account (bob)"), "{html}");
    assert!(
        m.state
            .log()
            .iter()
            .all(|s| !s.uri.contains("module=Login")),
        "the 150 KB page was not needed"
    );
}

#[tokio::test]
async fn refusals_of_the_plugin_reach_the_user_as_clear_pages() {
    let (m, p, app) = setup("").await;
    // Superusers refused by the plugin's own setting.
    m.state
        .unikgate_allow_superusers
        .store(false, Ordering::Relaxed);
    let b = Browser::new();
    sign_in(&b, &app, &p, "uns-admin", "/").await;
    let res = link_password(&b, &app, "/", "admin", "admin-password").await;
    assert_eq!(res.status(), 502);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("superusers may not sign in through unikgate"));
    // An unknown login (a link made by the CLI).
    let l = unikgate::store::Link {
        id: "g".into(),
        issuer: p.issuer(),
        subject: "uns-ghost".into(),
        matomo_login: "ghost".into(),
        superuser: false,
        created_at: 0,
        last_login_at: None,
    };
    app.app.links.create(&l).await.unwrap().unwrap();
    let res = sign_in(&Browser::new(), &app, &p, "uns-ghost", "/").await;
    assert_eq!(res.status(), 502);
    assert!(res.text().await.unwrap().contains("unknown login"));
    assert!(
        !m.state.user_exists("ghost"),
        "the plugin never creates users"
    );
    // A secret that differs.
    *m.state.unikgate_secret.lock().unwrap() = Some("a-different-secret-also-32-bytes-x".into());
    let res = sign_in(&Browser::new(), &app, &p, "uns-admin", "/").await;
    assert!(res.status() == 502 || location(&res).contains("link"));
    // Clients never reach the plugin's module, whatever their session.
    let c = Browser::new();
    for q in [
        "module=UnikGate&action=login",
        "module=unikgate&action=whoami",
        "module=Login&module=UnikGate",
    ] {
        assert_eq!(
            c.get(&app.url(&format!("/index.php?{q}"))).await.status(),
            403,
            "{q}"
        );
    }
    let res = c
        .client
        .post(app.url("/index.php"))
        .form(&[
            ("module", "UnikGate"),
            ("action", "login"),
            ("assertion", "x.y.z"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn doctor_checks_the_plugin_secret_and_clock() {
    let (m, _p, app) = setup("").await;
    let steps = unikgate::doctor::run(&app.app, None).await;
    let get = |steps: &Vec<unikgate::doctor::Step>, n: &str| {
        steps
            .iter()
            .find(|s| s.name == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n}: {steps:?}"))
    };
    assert!(get(&steps, "UnikGate plugin").ok, "{steps:?}");
    assert!(get(&steps, "shared secret").ok, "{steps:?}");
    assert!(get(&steps, "clock skew").ok, "{steps:?}");
    m.state.clock_offset.store(25, Ordering::Relaxed);
    let steps = unikgate::doctor::run(&app.app, None).await;
    let skew = get(&steps, "clock skew");
    assert!(!skew.ok && skew.detail.contains("+25"), "{skew:?}");
    m.state.clock_offset.store(0, Ordering::Relaxed);
    *m.state.unikgate_secret.lock().unwrap() = Some("a-different-secret-also-32-bytes-x".into());
    let s = get(
        &unikgate::doctor::run(&app.app, None).await,
        "shared secret",
    );
    assert!(!s.ok && s.detail.contains("signature"), "{s:?}");
    *m.state.unikgate_secret.lock().unwrap() = None;
    let s = get(
        &unikgate::doctor::run(&app.app, None).await,
        "UnikGate plugin",
    );
    assert!(
        !s.ok && s.detail.contains("plugin:activate UnikGate"),
        "{s:?}"
    );
}

#[test]
fn the_signed_minter_needs_a_long_enough_secret() {
    let env = std::collections::HashMap::<String, String>::new();
    let base = "[upstream]\nurl = \"http://127.0.0.1:9\"\n[matomo]\nminter = \"signed\"\n";
    let errs = unikgate::config::Config::from_toml(base, &env).unwrap_err();
    assert_eq!(errs[0].key, "matomo.shared_secret");
    let errs =
        unikgate::config::Config::from_toml(&format!("{base}shared_secret = \"short\"\n"), &env)
            .unwrap_err();
    assert!(errs[0].message.contains("32 bytes"));
    assert!(unikgate::config::Config::from_toml(
        &format!("{base}shared_secret = \"{SECRET}\"\n"),
        &env
    )
    .is_ok());
}

/// The plugin's texts: one catalogue per language (Matomo's `lang/<code>.json`), the same keys in
/// each, none empty, the same `{placeholders}`, and every key the PHP and the script use present.
#[test]
fn the_plugins_catalogues_have_the_same_keys() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("matomo-plugin/UnikGate");
    let read = |lang: &str| -> std::collections::BTreeMap<String, String> {
        let text = std::fs::read_to_string(dir.join(format!("lang/{lang}.json"))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["UnikGate"]
            .as_object()
            .unwrap_or_else(|| panic!("{lang}: no UnikGate section"))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .collect()
    };
    let en = read("en");
    let fr = read("fr");
    assert_eq!(
        en.keys().collect::<Vec<_>>(),
        fr.keys().collect::<Vec<_>>(),
        "en and fr keys differ"
    );
    let names = |s: &str| -> Vec<String> {
        s.split('{')
            .skip(1)
            .filter_map(|p| p.split_once('}').map(|(n, _)| n.to_string()))
            .collect()
    };
    for (k, v) in &en {
        assert!(
            !v.trim().is_empty() && !fr[k].trim().is_empty(),
            "{k} is empty"
        );
        assert_eq!(names(v), names(&fr[k]), "{k}: placeholders");
    }
    // The texts' users: UnikGate.php (the login button, the Security section), Menu.php and the
    // admin page's template.
    let php = ["UnikGate.php", "Menu.php", "templates/admin.twig"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    for k in en.keys() {
        assert!(
            php.contains(&format!("'UnikGate_{k}'")) || php.contains(&format!("'{k}'")),
            "{k} is not used by UnikGate.php, Menu.php or templates/admin.twig"
        );
    }
}

/// An assertion for the plugin at `base` (its audience), as unikgate signs them: `act` (None:
/// a login token, without the claim), `sub`, and `more` claims.
fn plugin_token(base: &str, act: Option<&str>, sub: &str, more: serde_json::Value) -> String {
    let t = now();
    let mut c = serde_json::json!({
        "iss": "unikgate", "aud": format!("{base}/"), "sub": sub, "iat": t, "exp": t + 30,
        "jti": unikgate::random_token(), "rd": "/",
    });
    if let Some(a) = act {
        c["act"] = a.into();
    }
    for (k, v) in more.as_object().unwrap() {
        c[k] = v.clone();
    }
    sign_hs256(&c, SECRET.as_bytes())
}

/// POSTs an assertion to `action`: (status, Content-Type, MATOMO_SESSID set, body).
async fn post_action(
    base: &str,
    action: &str,
    token: &str,
) -> (u16, String, Option<String>, String) {
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/index.php?module=UnikGate&action={action}"))
        .form(&[("assertion", token)])
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let cookie = unikgate::upstream::matomo::set_cookie_value(res.headers(), "MATOMO_SESSID");
    (status, ctype, cookie, res.text().await.unwrap())
}

/// The stand-in's `provision` and `access` answer as the plugin does (real_matomo.rs
/// `plugin_provision_and_access_actions` proves the plugin's answers on Matomo 5.1.2).
#[tokio::test]
async fn the_stand_ins_provision_and_access_actions() {
    use serde_json::{json, Value};
    let m = StandIn::start().await;
    *m.state.unikgate_secret.lock().unwrap() = Some(SECRET.to_string());
    let base = m.url();
    let base = base.as_str();
    let owner = hex::encode([7u8; 32]);
    let other_owner = hex::encode([8u8; 32]);
    let asking =
        |email: &str, acc: Value, owner: &str| json!({"email": email, "acc": acc, "owner": owner});
    let provision = |who: &str, more: Value| plugin_token(base, Some("provision"), who, more);
    let access = |who: &str, acc: Value, prune: bool| {
        plugin_token(
            base,
            Some("access"),
            who,
            json!({"acc": acc, "prune": prune}),
        )
    };
    let carol = asking("carol@example.org", json!({"1": "view"}), &owner);
    let whoami = |cookie: String| async move {
        let v: Value = reqwest::Client::new()
            .get(format!("{base}/index.php?module=UnikGate&action=whoami"))
            .header("cookie", format!("MATOMO_SESSID={cookie}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["login"].as_str().map(str::to_string)
    };
    // Created, with its access and owner, and signed in.
    let made = provision("carol", carol.clone());
    let (status, _, cookie, body) = post_action(base, "provision", &made).await;
    assert_eq!(status, 302, "{body}");
    assert_eq!(whoami(cookie.unwrap()).await.as_deref(), Some("carol"));
    assert!(!m.state.is_superuser("carol"));
    assert_eq!(m.state.site_access("carol"), [(1, "view".into())].into());
    assert_eq!(m.state.owner_of("carol").as_deref(), Some(owner.as_str()));
    // The refusals.
    let forged = {
        let t = provision("mallory", carol.clone());
        let (rest, _) = t.rsplit_once('.').unwrap();
        format!("{rest}.{}", b64("not the signature"))
    };
    let mallory = |acc: Value| asking("m@example.org", acc, &other_owner);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("provision", made.clone(), 403, "replayed assertion\n"),
        ("provision", forged, 403, "bad signature\n"),
        (
            "provision",
            plugin_token(base, None, "carol", carol.clone()),
            403,
            "wrong action: the assertion is for login, not provision\n",
        ),
        (
            "login",
            provision("carol", carol.clone()),
            403,
            "wrong action: the assertion is for provision, not login\n",
        ),
        (
            "provision",
            access("carol", json!({}), false),
            403,
            "wrong action: the assertion is for access, not provision\n",
        ),
        (
            "provision",
            provision("alice", asking("alice2@example.org", json!({}), &owner)),
            409,
            "exists login alice\n",
        ),
        (
            "provision",
            provision(
                "carol",
                asking("carol@example.org", json!({}), &other_owner),
            ),
            409,
            "exists login carol\n",
        ),
        (
            "provision",
            provision("dave", asking("Carol@example.org", json!({}), &other_owner)),
            409,
            "exists email carol\n",
        ),
        (
            "provision",
            provision("mallory", mallory(json!({"1": "superuser"}))),
            403,
            "acc: site 1 cannot be given \"superuser\" (only view, write or admin)\n",
        ),
        (
            "provision",
            provision("mallory", mallory(json!({"x": "view"}))),
            403,
            "acc: \"x\" is not a site id\n",
        ),
        (
            "provision",
            provision("mallory", asking("m@example.org", json!({}), "ABC")),
            403,
            "owner is not 64 lowercase hex characters\n",
        ),
        (
            "provision",
            provision("x", asking("x@example.org", json!({}), &other_owner)),
            400,
            "cannot create x: Username: The username must be between 2 and 100 characters long",
        ),
        (
            "access",
            access("nobody", json!({}), false),
            403,
            "unknown login\n",
        ),
        (
            "access",
            plugin_token(base, Some("access"), "carol", json!({"acc": {}})),
            403,
            "prune is not a boolean\n",
        ),
    ];
    for (action, token, want, why) in cases {
        let (status, ctype, cookie, body) = post_action(base, action, &token).await;
        assert_eq!((status, cookie), (want, None), "{why}: {body}");
        assert!(
            body.starts_with(&format!("UnikGate: {why}")) && ctype.starts_with("text/plain"),
            "{why}: {ctype} {body}"
        );
    }
    assert!(!m.state.user_exists("mallory") && !m.state.user_exists("dave"));
    assert!(!m.state.user_exists("x"));
    assert_eq!(m.state.owner_of("alice"), None);
    // A retry of a lost answer, for the same owner.
    let (status, _, cookie, body) =
        post_action(base, "provision", &provision("carol", carol.clone())).await;
    assert_eq!(status, 302, "{body}");
    assert_eq!(whoami(cookie.unwrap()).await.as_deref(), Some("carol"));
    // Access: only what changes, prune removes the other sites; no session.
    let answer = |body: &str| serde_json::from_str::<Value>(body).unwrap();
    let grant = access("carol", json!({"1": "write", "9": "view"}), false);
    let (status, ctype, cookie, body) = post_action(base, "access", &grant).await;
    assert_eq!((status, cookie), (200, None), "{body}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    assert_eq!(
        answer(&body),
        json!({"set": {"1": "write"}, "removed": [], "superuser": false})
    );
    m.state.add_site(2);
    m.state.set_site_access("carol", 2, Some("view"));
    let same = access("carol", json!({"1": "write"}), false);
    let (_, _, _, body) = post_action(base, "access", &same).await;
    assert_eq!(
        answer(&body),
        json!({"set": {}, "removed": [], "superuser": false})
    );
    let prune = access("carol", json!({"1": "write"}), true);
    let (_, _, _, body) = post_action(base, "access", &prune).await;
    assert_eq!(
        answer(&body),
        json!({"set": {}, "removed": [2], "superuser": false})
    );
    assert_eq!(m.state.site_access("carol"), [(1, "write".into())].into());
    let admin = access("admin", json!({"1": "view"}), true);
    let (_, _, _, body) = post_action(base, "access", &admin).await;
    assert_eq!(
        answer(&body),
        json!({"set": {}, "removed": [], "superuser": true})
    );
    assert!(m.state.is_superuser("admin"));
    // Users admin disabled: Matomo's refusal, one line.
    m.state.enable_users_admin.store(false, Ordering::Relaxed);
    let erin = asking("erin@example.org", json!({}), &owner);
    let (status, _, _, body) =
        post_action(base, "provision", &provision("erin", erin.clone())).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "UnikGate: cannot create erin: Creating, updating, and deleting users has been disabled.\n"
    );
    m.state.enable_users_admin.store(true, Ordering::Relaxed);
    // The facts list the actions; the 1.1.0 plugin has none of them, and reads no act.
    let other_act = plugin_token(base, Some("access"), "carol", json!({}));
    let (_, _, _, body) = post_action(base, "login", &other_act).await;
    assert!(
        body.contains(r#""actions":["login","whoami","provision","access","superuser"]"#),
        "{body}"
    );
    m.state.unikgate_old_plugin.store(true, Ordering::Relaxed);
    let (status, _, _, body) = post_action(base, "provision", &provision("erin", erin)).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("Action 'provision' not found in the module 'UnikGate'"));
    let other_act = plugin_token(base, Some("access"), "nobody", json!({}));
    let (status, _, _, body) = post_action(base, "login", &other_act).await;
    assert_eq!(status, 403);
    assert!(body.starts_with("UnikGate: unknown login\n"), "{body}");
    let elsewhere = plugin_token("http://elsewhere.example", None, "carol", json!({}));
    let (_, _, _, body) = post_action(base, "login", &elsewhere).await;
    assert!(
        body.contains("UnikGate-Facts: ") && !body.contains("actions"),
        "{body}"
    );
}

/// The stand-in's `superuser` answers as the plugin does (real_matomo.rs
/// `plugin_superuser_action_and_admin_page` proves the plugin's answers on Matomo 5.1.2): the
/// user table as it is at that moment, an unknown login, a token of another action, a replay.
#[tokio::test]
async fn the_stand_ins_superuser_action() {
    use serde_json::{json, Value};
    let m = StandIn::start().await;
    *m.state.unikgate_secret.lock().unwrap() = Some(SECRET.to_string());
    let base = m.url();
    let base = base.as_str();
    let ask = |who: &str| plugin_token(base, Some("superuser"), who, json!({}));
    let answer = |who: &str| {
        let t = ask(who);
        async move {
            let (status, ctype, cookie, body) = post_action(base, "superuser", &t).await;
            assert_eq!((status, cookie), (200, None), "{body}");
            assert!(ctype.starts_with("application/json"), "{ctype}");
            serde_json::from_str::<Value>(&body).unwrap()
        }
    };
    let mints = m.state.mints();
    assert_eq!(
        answer("admin").await,
        json!({"login": "admin", "exists": true, "superuser": true})
    );
    assert_eq!(
        answer("alice").await,
        json!({"login": "alice", "exists": true, "superuser": false})
    );
    assert_eq!(
        answer("ALICE").await,
        json!({"login": "alice", "exists": true, "superuser": false})
    );
    assert_eq!(
        answer("nosuch").await,
        json!({"login": "nosuch", "exists": false, "superuser": false})
    );
    m.state.set_superuser("alice", true);
    assert_eq!(answer("alice").await["superuser"], json!(true));
    m.state.set_superuser("alice", false);
    assert_eq!(answer("alice").await["superuser"], json!(false));
    assert_eq!(
        m.state.mints(),
        mints,
        "the superuser action opened sessions"
    );
    let t = ask("admin");
    let (status, _, _, _) = post_action(base, "superuser", &t).await;
    assert_eq!(status, 200);
    for (token, why) in [
        (t, "replayed assertion\n"),
        (
            plugin_token(base, None, "admin", json!({})),
            "wrong action: the assertion is for login, not superuser\n",
        ),
    ] {
        let (status, ctype, _, body) = post_action(base, "superuser", &token).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            ctype.starts_with("text/plain") && body.starts_with(&format!("UnikGate: {why}")),
            "{ctype} {body}"
        );
    }
    let (status, _, _, body) = post_action(base, "login", &ask("admin")).await;
    assert_eq!(status, 403);
    assert!(body.starts_with("UnikGate: wrong action: the assertion is for superuser, not login\n"));
    m.state.unikgate_old_plugin.store(true, Ordering::Relaxed);
    let (status, _, _, body) = post_action(base, "superuser", &ask("admin")).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("Action 'superuser' not found in the module 'UnikGate'"));
}
