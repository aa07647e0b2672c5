//! Back-channel logout (OpenID Connect Back-Channel Logout 1.0) against the stand-in: logout
//! tokens that end exactly the sessions they name (and their Matomo sessions), every kind of bad
//! token refused with 400 and nothing ended, and `unikgate sessions list/end`. The same against
//! the real `oidc-provider` and the real Matomo is in `real_matomo.rs`; across replicas in
//! `replicas.rs`.

mod support;

use support::provider::{hs256, FakeProvider, CLIENT_ID, CLIENT_SECRET};
use support::{config, linked, location, sign_in, Browser, StandIn, TestApp};

async fn setup() -> (StandIn, FakeProvider, TestApp) {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(&m.url(), &p.config(), "")).await;
    (m, p, app)
}

/// Posts a logout token as the provider does; (status, cache-control, set-cookie?, body).
async fn post_token(app: &TestApp, token: &str) -> (u16, String, bool, String) {
    let res = support::unpooled()
        .post(app.url("/_unikgate/backchannel_logout"))
        .form(&[("logout_token", token)])
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let cache = res
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let cookie = res.headers().get("set-cookie").is_some();
    assert!(res.headers().get("location").is_none(), "never a redirect");
    (status, cache, cookie, res.text().await.unwrap())
}

/// True when the browser is still signed in (Matomo's UI answers instead of the sign-in page).
async fn signed_in(b: &Browser, app: &TestApp) -> bool {
    let res = b.get(&app.url("/index.php?module=CoreHome")).await;
    if res.status() == 302 {
        assert!(
            location(&res).contains("/_unikgate/sign_in"),
            "{}",
            location(&res)
        );
        return false;
    }
    res.status() == 200
}

#[tokio::test]
async fn a_logout_token_ends_the_sessions_it_names_and_their_matomo_sessions() {
    let (m, p, app) = setup().await;
    let one = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let sid_one = p.last_sid();
    let two = Browser::new();
    sign_in(&two, &app, &p, "uns-alice", "/").await;
    let sid_two = p.last_sid();
    assert_ne!(sid_one, sid_two, "each sign-in is its own provider session");
    let bob = linked(&app, &p, "uns-bob", "bob", "bob-password").await;
    assert!(signed_in(&one, &app).await && signed_in(&two, &app).await);
    assert_eq!(m.state.sessions_of("alice"), 2);

    // By sid: that provider session only.
    let t = p.logout_token(&p.logout_claims(Some("uns-alice"), Some(&sid_one)));
    let (status, cache, cookie, body) = post_token(&app, &t).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cache, "no-store");
    assert!(!cookie, "no session cookie on a back-channel answer");
    assert!(
        !signed_in(&one, &app).await,
        "the session of that sid ended"
    );
    assert!(
        signed_in(&two, &app).await,
        "the other provider session lives on"
    );
    assert_eq!(
        m.state.sessions_of("alice"),
        1,
        "its Matomo session ended too"
    );

    // By sub only: every session of that @unikname, nobody else's.
    let t = p.logout_token(&p.logout_claims(Some("uns-alice"), None));
    assert_eq!(post_token(&app, &t).await.0, 200);
    assert!(!signed_in(&two, &app).await);
    assert_eq!(m.state.sessions_of("alice"), 0);
    assert!(signed_in(&bob, &app).await, "bob is untouched");
    // The link stays: signing in again goes straight in.
    let res = sign_in(&one, &app, &p, "uns-alice", "/").await;
    assert_eq!(location(&res), app.url("/"));
    assert!(signed_in(&one, &app).await);

    // A token naming nobody signed in is still a valid logout: 200, nothing ended.
    let t = p.logout_token(&p.logout_claims(Some("uns-nobody"), None));
    assert_eq!(post_token(&app, &t).await.0, 200);
    assert!(signed_in(&one, &app).await && signed_in(&bob, &app).await);
}

#[tokio::test]
async fn bad_logout_tokens_are_refused_with_400_and_end_nothing() {
    let (m, p, app) = setup().await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let sid = p.last_sid();
    let valid = || p.logout_claims(Some("uns-alice"), Some(&sid));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut cases: Vec<(&str, String)> = Vec::new();
    cases.push((
        "signed with another key",
        hs256(&valid(), "another-providers-secret"),
    ));
    let mut c = valid();
    c["aud"] = "someone-else".into();
    cases.push(("wrong aud", p.logout_token(&c)));
    let mut c = valid();
    c["aud"] = serde_json::json!(["someone-else", "another"]);
    cases.push(("aud list without the client", p.logout_token(&c)));
    let mut c = valid();
    c["iss"] = "http://evil.example/oidc".into();
    cases.push(("wrong iss", p.logout_token(&c)));
    let mut c = valid();
    c["iat"] = (now - 3600).into();
    c["exp"] = (now - 3480).into();
    cases.push(("expired", p.logout_token(&c)));
    let mut c = valid();
    c["iat"] = (now + 3600).into();
    cases.push(("issued in the future", p.logout_token(&c)));
    let mut c = valid();
    c["nonce"] = "n-0S6_WzA2Mj".into();
    cases.push(("nonce present", p.logout_token(&c)));
    let mut c = valid();
    c.as_object_mut().unwrap().remove("events");
    cases.push(("missing events", p.logout_token(&c)));
    let mut c = valid();
    c["events"] = serde_json::json!({ "http://schemas.openid.net/event/other": {} });
    cases.push(("events without the back-channel event", p.logout_token(&c)));
    let mut c = valid();
    c.as_object_mut().unwrap().remove("sub");
    c.as_object_mut().unwrap().remove("sid");
    cases.push(("neither sub nor sid", p.logout_token(&c)));
    let mut c = valid();
    c.as_object_mut().unwrap().remove("jti");
    cases.push(("no jti", p.logout_token(&c)));
    let mut c = valid();
    c.as_object_mut().unwrap().remove("iat");
    cases.push(("no iat", p.logout_token(&c)));
    // alg "none": the signature part empty.
    {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head = e.encode(br#"{"alg":"none","typ":"logout+jwt"}"#);
        let body = e.encode(valid().to_string().as_bytes());
        cases.push(("alg none", format!("{head}.{body}.")));
        // An ID token is not a logout token (no events; it carries a nonce).
        let id = hs256(
            &serde_json::json!({"iss": p.issuer(), "aud": CLIENT_ID, "sub": "uns-alice", "sid": sid, "nonce": "x", "iat": now, "exp": now + 300}),
            CLIENT_SECRET,
        );
        cases.push(("an ID token", id));
    }
    cases.push(("not a JWT", "garbage".into()));
    cases.push(("empty", String::new()));
    // Replayed: the first use is valid (it names a provider session nobody has), the second not.
    let mut c = p.logout_claims(None, Some("sid-of-nobody"));
    c["jti"] = "the-same-jti".into();
    let first = p.logout_token(&c);
    assert_eq!(post_token(&app, &first).await.0, 200);
    let mut c = valid();
    c["jti"] = "the-same-jti".into();
    cases.push(("replayed jti", p.logout_token(&c)));

    for (what, token) in &cases {
        let (status, cache, cookie, body) = post_token(&app, token).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(cache, "no-store", "{what}");
        assert!(!cookie, "{what}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
        assert_eq!(v["error"], "invalid_request", "{what}");
        assert!(
            v["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{what}"
        );
        assert!(signed_in(&b, &app).await, "{what} ended the session");
    }
    assert_eq!(m.state.sessions_of("alice"), 1, "the Matomo session lives");
    // No logout_token at all, and a GET.
    let res = support::unpooled()
        .post(app.url("/_unikgate/backchannel_logout"))
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = support::unpooled()
        .get(app.url("/_unikgate/backchannel_logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    // And after all that, the valid token still works.
    assert_eq!(post_token(&app, &p.logout_token(&valid())).await.0, 200);
    assert!(!signed_in(&b, &app).await);
}

#[tokio::test]
async fn sessions_cli_lists_and_ends_sessions() {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let toml = config(&m.url(), &p.config(), "");
    let app = TestApp::start_on(&toml, dir.clone(), listener, addr).await;
    let cfg = dir.path().join("u.toml");
    std::fs::write(
        &cfg,
        toml.replace("{public}", &format!("http://{addr}"))
            .replace("{dir}", &dir.path().display().to_string()),
    )
    .unwrap();
    let one = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let two = Browser::new();
    sign_in(&two, &app, &p, "uns-alice", "/").await;
    let bob = linked(&app, &p, "uns-bob", "bob", "bob-password").await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_unikgate"))
            .arg("sessions")
            .args(args)
            .arg("-c")
            .arg(&cfg)
            .env("UNIKGATE_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3, "{out}");
    let (_, out, _) = run(&["list", "--unikname", "uns-alice", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["unikname"] == "uns-alice"));
    assert!(rows.iter().any(|r| r["matomo_login"] == "alice"));
    // Never a session id (nor anything that signs a browser in).
    let sid_cookie = one.cookie(&app.url("/"), "unikgate_session").unwrap();
    let id = &sid_cookie[44..];
    assert!(!out.contains(id), "a session id was printed");
    let (_, table, _) = run(&["list"]);
    assert!(
        table.contains("uns-alice") && table.contains("uns-bob"),
        "{table}"
    );
    let (code, out, err) = run(&["end", "--unikname", "uns-alice", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), r#"{"ended":2}"#);
    // The server caches SQLite session reads for up to 2 s: another process's change shows after.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(!signed_in(&one, &app).await && !signed_in(&two, &app).await);
    assert_eq!(
        m.state.sessions_of("alice"),
        0,
        "their Matomo sessions ended"
    );
    assert!(signed_in(&bob, &app).await);
    let (_, out, _) = run(&["list", "--unikname", "uns-alice", "--json"]);
    assert_eq!(out.trim(), "[]");
}

/// Anybody can post to the endpoint: a token naming a key the provider never had fetches the
/// provider's keys again at most once a minute, however many such tokens arrive.
#[tokio::test]
async fn unknown_keys_cannot_make_unikgate_hammer_the_provider() {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let provider = p.config().replace("/jwks-unused", "/jwks").replace(
        r#"id_token_algs = ["HS256"]"#,
        r#"id_token_algs = ["HS256", "RS256"]"#,
    );
    let app = TestApp::start(&config(&m.url(), &provider, "")).await;
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body = e.encode(
        p.logout_claims(Some("uns-alice"), None)
            .to_string()
            .as_bytes(),
    );
    for i in 0..6 {
        let head = e.encode(format!(r#"{{"alg":"RS256","kid":"rotated-{i}"}}"#).as_bytes());
        let token = format!("{head}.{body}.{}", e.encode([7u8; 256]));
        let (status, _, _, text) = post_token(&app, &token).await;
        assert_eq!(status, 400, "{text}");
    }
    let calls = p.state.lock().unwrap().jwks_calls;
    assert!(
        (1..=2).contains(&calls),
        "the keys were fetched {calls} times for 6 tokens (once at start, once more at most)"
    );
}
