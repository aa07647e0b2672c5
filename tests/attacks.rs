//! The attack and fault suite: each class of failure that auth proxies are known for, tried
//! against the real app, failing to break in. Results are tabled in docs/SECURITY.md.

mod support;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::provider::FakeProvider;
use support::{config, csrf_of, linked, location, payloads, sign_in, Browser, StandIn, TestApp};

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn setup() -> (StandIn, FakeProvider, TestApp) {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let app = TestApp::start(&config(&m.url(), &p.config(), "")).await;
    (m, p, app)
}

/// A redirect target must stay on the public origin (after the browser resolves it).
fn assert_local(app: &TestApp, loc: &str, payload: &str) {
    let base = reqwest::Url::parse(&app.url("/")).unwrap();
    let target = base
        .join(loc)
        .unwrap_or_else(|e| panic!("{payload:?}: unparsable Location {loc:?}: {e}"));
    assert_eq!(
        target.origin(),
        base.origin(),
        "payload {payload:?} redirected to {loc:?}"
    );
    assert!(
        loc.starts_with(&app.url("/")),
        "payload {payload:?}: Location {loc:?} is not absolute on the public origin"
    );
}

fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------- open redirects

#[test]
fn the_rd_validator_keeps_only_local_paths() {
    let all = payloads::all();
    assert!(all.len() >= 200, "{} payloads", all.len());
    for p in &all {
        let out = unikgate::request::redirect::safe_rd(p, "", "/_unikgate");
        assert!(out.starts_with('/'), "{p:?} → {out:?}");
        assert!(
            !out.starts_with("//") && !out.starts_with("/\\"),
            "{p:?} → {out:?}"
        );
        assert!(
            !out.contains('\\')
                && out.is_ascii()
                && !out.chars().any(|c| c.is_control() || c.is_whitespace()),
            "{p:?} → {out:?}"
        );
        let url = reqwest::Url::parse("https://analytics.example.com")
            .unwrap()
            .join(&out)
            .unwrap();
        assert_eq!(
            url.host_str(),
            Some("analytics.example.com"),
            "{p:?} → {out:?}"
        );
    }
}

#[tokio::test]
async fn no_payload_redirects_off_the_origin_through_any_endpoint() {
    let (_m, p, app) = setup().await;
    let all = payloads::all();
    let mut checked = 0;
    // A signed-in, linked browser: sign_in and link redirect straight to rd.
    let signed = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    for payload in &all {
        let q = enc(payload);
        // sign_in: the page's form carries a safe rd; signed in, it redirects to it.
        let fresh = Browser::new();
        let html = fresh
            .get(&app.url(&format!("/_unikgate/sign_in?rd={q}")))
            .await
            .text()
            .await
            .unwrap();
        let i = html.find("name=\"rd\" value=\"").unwrap() + 17;
        let field = &html[i..i + html[i..].find('"').unwrap()];
        assert!(
            field.starts_with('/') && !field.starts_with("//"),
            "{payload:?}: sign_in form rd {field:?}"
        );
        let res = signed
            .get(&app.url(&format!("/_unikgate/sign_in?rd={q}")))
            .await;
        assert_eq!(res.status(), 302);
        assert_local(&app, &location(&res), payload);
        let res = signed
            .get(&app.url(&format!("/_unikgate/link?rd={q}")))
            .await;
        assert_local(&app, &location(&res), payload);
        // start → provider → callback: the rd travels server-side and comes back checked.
        let res = fresh
            .post(
                &app.url("/_unikgate/start"),
                &[("csrf", &csrf_of(&html)), ("rd", payload)],
            )
            .await;
        assert_eq!(res.status(), 303);
        let res = fresh.get(&location(&res)).await;
        let res = fresh.get(&location(&res)).await;
        assert_eq!(res.status(), 302);
        assert_local(&app, &location(&res), payload);
        // sign_out ignores rd entirely.
        let res = Browser::new()
            .get(&app.url(&format!("/_unikgate/sign_out?rd={q}")))
            .await;
        assert_local(&app, &location(&res), payload);
        checked += 1;
    }
    assert!(checked >= 200);
}

// ---------------------------------------------------------------- header spoofing, smuggling

#[tokio::test]
async fn every_spelling_of_trusted_headers_is_neutralised() {
    let (m, _p, app) = setup().await;
    let host = format!("127.0.0.1:{}", app.addr.port());
    let names = [
        "matomo-username",
        "Matomo-Username",
        "MATOMO-USERNAME",
        "mAtOmO-uSeRnAmE",
        "matomo_username",
        "Matomo_Username",
        "MATOMO_ROLE",
        "matomo-role",
        "Matomo-Email",
        "matomo_group",
        "Matomo-Foo",
        "X-Forwarded-For",
        "X_Forwarded_For",
        "x-forwarded-host",
        "X-FORWARDED-HOST",
        "X_Forwarded_Host",
        "X-Forwarded-Proto",
        "X-Forwarded-Scheme",
        "X-Forwarded-Uri",
        "X-Forwarded-Prefix",
        "Forwarded",
        "FORWARDED",
        "X-Real-IP",
        "X_Real_Ip",
        "X-Url-Scheme",
        "Client-IP",
        "True-Client-IP",
        "X-Original-URL",
    ];
    let mut attempts = 0;
    for name in names {
        for (sep, dup) in [(": ", false), (":\t", false), (":", false), (": ", true)] {
            let value = "admin, 6.6.6.6, evil.example";
            let mut req = format!("GET /matomo.php?idsite=1&n={attempts} HTTP/1.1\r\nHost: {host}\r\n{name}{sep}{value}\r\n");
            if dup {
                req.push_str(&format!("{name}: alice\r\n"));
            }
            req.push_str("Connection: close\r\n\r\n");
            let addr = app.addr;
            let answer = tokio::task::spawn_blocking(move || raw(addr, req.as_bytes()))
                .await
                .unwrap();
            assert!(
                answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 400"),
                "{name}{sep}: {answer:.80}"
            );
            attempts += 1;
        }
    }
    // Whitespace before the colon and obs-fold: rejected by the parser (never passed as sent).
    for bad in [
        "matomo-username : admin\r\n",
        "X-Foo: a\r\n matomo-username: admin\r\n",
        "X-Forwarded-Host : evil.example\r\n",
    ] {
        let req = format!(
            "GET /matomo.php?idsite=1 HTTP/1.1\r\nHost: {host}\r\n{bad}Connection: close\r\n\r\n"
        );
        let addr = app.addr;
        let answer = tokio::task::spawn_blocking(move || raw(addr, req.as_bytes()))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{bad:?}: {answer:.80}");
    }
    for seen in m.state.log() {
        for (k, v) in &seen.headers {
            let n = k.as_str().replace('_', "-");
            assert!(!n.starts_with("matomo-"), "{k} reached Matomo");
            assert!(
                ![
                    "forwarded",
                    "x-real-ip",
                    "x-url-scheme",
                    "client-ip",
                    "true-client-ip",
                    "x-original-url",
                    "x-forwarded-uri",
                    "x-forwarded-prefix",
                    "x-forwarded-scheme"
                ]
                .contains(&n.as_str()),
                "{k} reached Matomo"
            );
            if n.starts_with("x-forwarded-") {
                assert!(
                    !v.to_str().unwrap().contains("evil")
                        && !v.to_str().unwrap().contains("6.6.6.6"),
                    "{k}: {v:?}"
                );
            }
        }
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    }
    assert!(m.state.log().len() >= attempts / 2);
    assert!(!m.state.is_superuser("alice"));
}

#[tokio::test]
async fn hop_by_hop_abuse_cannot_remove_unikgates_headers() {
    let (m, _p, app) = setup().await;
    Browser::new()
        .client
        .get(app.url("/matomo.php?idsite=1"))
        .header(
            "connection",
            "X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto, Cookie, Host",
        )
        .header("cookie", "a=1")
        .send()
        .await
        .unwrap();
    let seen = m.state.log();
    let h = &seen.last().unwrap().headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert!(h.contains_key("x-forwarded-proto") && !h.contains_key("x-forwarded-host"));
    assert_eq!(h["cookie"], "a=1", "Cookie cannot be declared hop-by-hop");
}

#[tokio::test]
async fn smuggling_attempts_are_rejected_or_neutralised() {
    let (m, _p, app) = setup().await;
    let host = format!("127.0.0.1:{}", app.addr.port());
    let smuggled = format!("GET /index.php?module=AutoLogin&action=index HTTP/1.1\r\nHost: {host}\r\nmatomo-username: admin\r\n\r\n");
    let cases = [
        // CL.TE: both framings at once.
        format!("POST /matomo.php HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        // TE.CL with an obfuscated TE.
        format!("POST /matomo.php HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"),
        // Two different Content-Lengths.
        format!("POST /matomo.php HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd{smuggled}"),
        // A TE list ending in something else than chunked.
        format!("POST /matomo.php HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
    ];
    for c in cases {
        let addr = app.addr;
        let answer = tokio::task::spawn_blocking(move || raw(addr, c.as_bytes()))
            .await
            .unwrap();
        // Whatever the parser did with the first request, the hidden one is either a second
        // request of the client (refused as AutoLogin: 403) or part of a body; never a mint.
        assert!(!answer.contains("302 Found"), "{answer}");
    }
    assert_eq!(m.state.mints(), 0, "no AutoLogin request reached Matomo");
    // A second Content-Length with another value is refused outright.
    let addr = app.addr;
    let req = format!("POST /matomo.php HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab");
    let answer = tokio::task::spawn_blocking(move || raw(addr, req.as_bytes()))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:.60}");
}

// ---------------------------------------------------------------- classification

#[tokio::test]
async fn every_php_spelling_gets_the_class_php_would_dispatch() {
    let (_m, _p, app) = setup().await;
    let b = Browser::new();
    // (request, true when PHP would dispatch a public request: 200 from Matomo without a session)
    let cases: &[(&str, bool)] = &[
        ("/index.php?module=API&method=X&token_auth=t", true),
        ("/index.php?module=CoreHome&module=API&token_auth=t", true),
        ("/index.php?module=API&module=CoreHome&token_auth=t", false),
        ("/index.php?module[]=API&token_auth=t", false),
        ("/index.php?module=API&token_auth[]=t", false),
        ("/index.php?module=API&token_auth=", false),
        ("/index.php?module=API&token%5Fauth=t", true),
        ("/index.php?module=API&token.auth=t", true),
        ("/index.php?module=API&token+auth=t", true),
        ("/index.php?mod%75le=API&token_auth=t", true),
        ("/index.php?module=%41PI&token_auth=t", true),
        ("/index.php?module=api&token_auth=t", false),
        ("/index.php/extra?module=API&token_auth=t", true),
        ("//index.php?module=API&token_auth=t", true),
        ("/%2e/index.php?module=API&token_auth=t", true),
        ("/x/../index.php?module=API&token_auth=t", true),
        ("/?module=API&token_auth=t", true),
        (
            "/index.php?module=Widgetize&action=iframe&token_auth=t",
            true,
        ),
        ("/index.php?module=CoreAdminHome&action=optOut", true),
        (
            "/index.php?module=CoreAdminHome&action=optOut&action=index",
            false,
        ),
        ("/index.php?module=CoreHome&x=/matomo.php", false),
        ("/index.php?module=CoreHome&rd=/js/", false),
        ("/matomo.php/../index.php?module=CoreHome", false),
        ("/js/../index.php?module=CoreHome", false),
        ("/js/%2e%2e/index.php?module=CoreHome", false),
        ("/plugins/x.css/../../index.php?module=CoreHome", false),
        ("/plugins/Foo/foo.php/x.css", false),
        ("/plugins/Foo/foo.php?x=.css", false),
        ("/misc/../config/config.ini.php", false),
        ("/js/tracker.php", true),
        ("/js/../matomo.php", true),
    ];
    for (path, public) in cases {
        let res = b.get(&app.url(path)).await;
        if *public {
            // Forwarded to Matomo, which judges the token itself (the stand-in answers 401 for
            // an unknown one).
            assert!(
                matches!(res.status().as_u16(), 200 | 401),
                "{path} is public: {}",
                res.status()
            );
        } else {
            assert_eq!(res.status(), 302, "{path} is the gated UI");
            assert!(location(&res).contains("/_unikgate/sign_in"), "{path}");
        }
    }
    // A client-sent X-Forwarded-Uri does not change what the request is.
    let res = b
        .client
        .get(app.url("/index.php?module=CoreHome"))
        .header("x-forwarded-uri", "/matomo.php")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    // The POST body counts where the query lacks the key (GET wins).
    let post = |q: &'static str, body: &'static str| {
        let b = &b;
        let app = &app;
        async move {
            b.client
                .post(app.url(q))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("/index.php", "module=API&token_auth=t").await, 401);
    assert_eq!(
        post("/index.php?module=CoreHome", "module=API&token_auth=t").await,
        302
    );
    assert_eq!(
        post("/index.php?module=API&token_auth=", "token_auth=t").await,
        302
    );
}

// ---------------------------------------------------------------- CSRF, sessions

#[tokio::test]
async fn state_changing_endpoints_refuse_missing_and_wrong_csrf_tokens() {
    let (m, p, app) = setup().await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let c = Browser::new();
    sign_in(&c, &app, &p, "uns-carol", "/").await;
    for token in [None, Some("wrong"), Some("")] {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut f: Vec<(&str, &str)> = extra.to_vec();
            if let Some(t) = token {
                f.push(("csrf", t));
            }
            f
        };
        assert_eq!(
            b.post(&app.url("/_unikgate/unlink"), &with(&[]))
                .await
                .status(),
            403
        );
        assert_eq!(
            b.post(&app.url("/_unikgate/sign_out"), &with(&[]))
                .await
                .status(),
            403
        );
        assert_eq!(
            b.post(&app.url("/_unikgate/start"), &with(&[("rd", "/")]))
                .await
                .status(),
            403
        );
        assert_eq!(
            c.post(
                &app.url("/_unikgate/link"),
                &with(&[
                    ("mode", "password"),
                    ("login", "bob"),
                    ("password", "bob-password")
                ])
            )
            .await
            .status(),
            403
        );
    }
    // Nothing changed: alice is still linked and signed in, carol is not linked.
    assert_eq!(app.app.links.list().await.unwrap().len(), 1);
    let res = b.get(&app.url("/index.php?module=CoreHome")).await;
    assert_eq!(res.status(), 200);
    // Another user's CSRF token does not work either.
    let carol_csrf = csrf_of(
        &c.get(&app.url("/_unikgate/link"))
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(
        b.post(
            &app.url("/_unikgate/unlink"),
            &[("csrf", carol_csrf.as_str())]
        )
        .await
        .status(),
        403
    );
    let _ = m;
}

#[tokio::test]
async fn cookies_are_dead_after_sign_out_and_unlink() {
    let (m, p, app) = setup().await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let session = b.cookie(&app.url("/"), "unikgate_session").unwrap();
    let matomo = b.cookie(&app.url("/"), "MATOMO_SESSID").unwrap();
    let html = b
        .get(&app.url("/_unikgate/account"))
        .await
        .text()
        .await
        .unwrap();
    let res = b
        .post(
            &app.url("/_unikgate/sign_out"),
            &[("csrf", &csrf_of(&html))],
        )
        .await;
    assert_eq!(res.status(), 302);
    let replay = Browser::new();
    replay.set_cookie(
        &app.url("/"),
        &format!("unikgate_session={session}; Path=/"),
    );
    replay.set_cookie(&app.url("/"), &format!("MATOMO_SESSID={matomo}; Path=/"));
    let res = replay.get(&app.url("/index.php?module=CoreHome")).await;
    assert_eq!(res.status(), 302, "a cookie reused after sign-out");
    assert_eq!(
        m.state.sessions_of("alice"),
        0,
        "the Matomo session was ended too"
    );
    // After unlink.
    let b = Browser::new();
    sign_in(&b, &app, &p, "uns-alice", "/").await;
    let session = b.cookie(&app.url("/"), "unikgate_session").unwrap();
    let html = b
        .get(&app.url("/_unikgate/account"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        b.post(&app.url("/_unikgate/unlink"), &[("csrf", &csrf_of(&html))])
            .await
            .status(),
        302
    );
    let replay = Browser::new();
    replay.set_cookie(
        &app.url("/"),
        &format!("unikgate_session={session}; Path=/"),
    );
    assert_eq!(
        replay.get(&app.url("/_unikgate/account")).await.status(),
        302,
        "a cookie reused after unlink"
    );
}

#[tokio::test]
async fn no_browser_reads_another_browsers_link_status() {
    let (_m, p, app) = setup().await;
    let status = app.url("/_unikgate/status");
    let alice = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let bob = linked(&app, &p, "uns-bob", "bob", "bob-password").await;
    let json = |body: &str| -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    // Each browser reads its own, whatever the query says.
    let res = alice.get(&status).await;
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h.get("cache-control").unwrap(), "no-store");
    assert_eq!(h.get("content-type").unwrap(), "application/json");
    assert_eq!(
        h.get("cross-origin-resource-policy").unwrap(),
        "same-origin"
    );
    assert!(h.get("access-control-allow-origin").is_none());
    let a = json(&res.text().await.unwrap());
    assert_eq!(a["signed_in"], true);
    assert_eq!(a["linked"], true);
    assert_eq!(a["matomo_login"], "alice");
    let b = json(
        &bob.get(&format!(
            "{status}?login=alice&sub=uns-alice&subject=uns-alice"
        ))
        .await
        .text()
        .await
        .unwrap(),
    );
    assert_eq!(b["matomo_login"], "bob", "the query names nobody");
    assert_ne!(a["csrf"], b["csrf"]);
    // No session, a forged one, or alice's id without its signature: nobody.
    let nobody = Browser::new();
    let res = nobody.get(&status).await;
    assert!(
        res.headers().get("set-cookie").is_none(),
        "no session is made for a status read"
    );
    assert_eq!(
        json(&res.text().await.unwrap()),
        serde_json::json!({ "signed_in": false })
    );
    let id = alice.cookie(&app.url("/"), "unikgate_session").unwrap();
    assert!(id.len() > 50, "{id}");
    for forged in [
        format!("{}x", &id[..id.len() - 1]),
        // The session id without its signature (the cookie is MAC (44 characters) + id).
        id.get(44..).unwrap_or("x").to_string(),
        "uns-alice".to_string(),
    ] {
        let c = Browser::new();
        c.set_cookie(&app.url("/"), &format!("unikgate_session={forged}; Path=/"));
        let body = c.get(&status).await.text().await.unwrap();
        assert!(
            !body.contains("alice"),
            "forged cookie {forged:?} read {body}"
        );
    }
    // Another site, with alice's cookie (browsers send Lax cookies to same-site pages): refused,
    // and no CORS header would let its script read an answer anyway.
    for site in ["cross-site", "same-site"] {
        let res = alice
            .get_with(
                &status,
                &[("sec-fetch-site", site), ("origin", "http://evil.example")],
            )
            .await;
        assert_eq!(res.status(), 403, "Sec-Fetch-Site: {site}");
        assert!(res.headers().get("access-control-allow-origin").is_none());
        let body = res.text().await.unwrap();
        assert!(!body.contains("alice") && !body.contains("csrf"), "{body}");
    }
    let res = alice
        .get_with(&status, &[("origin", "http://evil.example")])
        .await;
    assert!(res.headers().get("access-control-allow-origin").is_none());
    assert!(res
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
}

#[tokio::test]
async fn tokens_and_unikgate_cookies_are_never_shown_to_matomo() {
    let (m, p, app) = setup().await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    let session = b.cookie(&app.url("/"), "unikgate_session").unwrap();
    m.state.clear_log();
    b.get(&app.url("/index.php?module=CoreHome")).await;
    b.get(&app.url("/matomo.php?idsite=1")).await;
    for seen in m.state.log() {
        for (k, v) in &seen.headers {
            let v = v.to_str().unwrap_or("");
            assert!(
                !v.contains(&session),
                "unikgate's session cookie reached Matomo in {k}"
            );
            assert!(
                !v.contains("at-uns-alice"),
                "the access token reached Matomo"
            );
            assert!(
                !k.as_str().eq_ignore_ascii_case("authorization"),
                "an Authorization header reached Matomo"
            );
        }
    }
}

// ---------------------------------------------------------------- limits

#[tokio::test]
async fn huge_inputs_get_4xx() {
    let (_m, _p, app) = setup().await;
    let c = support::unpooled();
    let big_cookie = format!("x={}", "c".repeat(40 * 1024));
    assert_eq!(
        c.get(app.url("/index.php"))
            .header("cookie", big_cookie)
            .send()
            .await
            .unwrap()
            .status(),
        431
    );
    let long = app.url(&format!("/index.php?q={}", "u".repeat(20 * 1024)));
    assert_eq!(c.get(long).send().await.unwrap().status(), 414);
    let form = c
        .post(app.url("/index.php"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("module=API&x={}", "f".repeat(2 * 1024 * 1024)));
    assert!(matches!(support::oversized(form).await, 413 | 0));
    let own = c
        .post(app.url("/_unikgate/link"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a".repeat(200 * 1024));
    assert!(matches!(support::oversized(own).await, 413 | 0));
    // Memory under these inputs is measured on the binary: binary::huge_inputs_leave_memory_bounded.
    assert_eq!(
        c.get(app.url("/_unikgate/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn upstream_resetting_mid_body_breaks_nothing() {
    let (_m, _p, app) = setup().await;
    let b = Browser::new();
    let res = b.get(&app.url("/plugins/StandIn/reset.js")).await;
    assert_eq!(res.status(), 200);
    assert!(
        res.bytes().await.is_err(),
        "the truncated body is visible to the client, not hidden"
    );
    // unikgate is fine.
    assert_eq!(b.get(&app.url("/matomo.php?idsite=1")).await.status(), 200);
    assert_eq!(b.get(&app.url("/_unikgate/healthz")).await.status(), 200);
}

#[tokio::test]
async fn faults_end_and_everything_works_again() {
    let (m, p, app) = setup().await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    // Matomo slow then back.
    m.state.delay_ms.store(6000, Ordering::Relaxed);
    assert_eq!(
        b.get(&app.url("/index.php?module=CoreHome")).await.status(),
        504
    );
    m.state.delay_ms.store(0, Ordering::Relaxed);
    assert_eq!(
        b.get(&app.url("/index.php?module=CoreHome")).await.status(),
        200
    );
    // Provider broken then back.
    p.set(support::provider::Fault::TokenBrokenJson);
    let c = Browser::new();
    let html = c
        .get(&app.url("/_unikgate/sign_in"))
        .await
        .text()
        .await
        .unwrap();
    let res = c
        .post(
            &app.url("/_unikgate/start"),
            &[("csrf", &csrf_of(&html)), ("rd", "/")],
        )
        .await;
    let res = c.get(&location(&res)).await;
    assert_eq!(c.get(&location(&res)).await.status(), 502);
    p.set(support::provider::Fault::None);
    let html = c
        .get(&app.url("/_unikgate/sign_in"))
        .await
        .text()
        .await
        .unwrap();
    let res = c
        .post(
            &app.url("/_unikgate/start"),
            &[("csrf", &csrf_of(&html)), ("rd", "/")],
        )
        .await;
    let res = c.get(&location(&res)).await;
    assert_eq!(c.get(&location(&res)).await.status(), 302);
}

#[tokio::test]
async fn a_locked_store_gives_the_store_page_and_recovers() {
    let (_m, p, app) = setup().await;
    let b = linked(&app, &p, "uns-alice", "alice", "alice-password").await;
    // Another process holds an exclusive lock on the SQLite file.
    let db = app.dir.path().join("unikgate.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&db)
        .busy_timeout(Duration::from_millis(100));
    use sqlx::ConnectOptions;
    let mut lock = opts.connect().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();
    let fresh = Browser::new();
    let t = std::time::Instant::now();
    let res = fresh.get(&app.url("/_unikgate/sign_in")).await;
    eprintln!(
        "sign_in under lock: {} after {:?}",
        res.status(),
        t.elapsed()
    );
    assert_eq!(res.status(), 503);
    let html = res.text().await.unwrap();
    assert!(html.contains("session store"), "{html}");
    assert!(html.contains("store.url"), "says what to check");
    assert_eq!(fresh.get(&app.url("/_unikgate/readyz")).await.status(), 503);
    // Public traffic does not need the store.
    assert_eq!(
        fresh.get(&app.url("/matomo.php?idsite=1")).await.status(),
        200
    );
    sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
    drop(lock);
    assert_eq!(
        fresh.get(&app.url("/_unikgate/sign_in")).await.status(),
        200
    );
    assert_eq!(
        b.get(&app.url("/index.php?module=CoreHome")).await.status(),
        200
    );
    assert_eq!(fresh.get(&app.url("/_unikgate/readyz")).await.status(), 200);
}
