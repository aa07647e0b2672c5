//! Several replicas as one, on real PostgreSQL 15 and Redis 7 (Debian's, started per test):
//! a sign-in started on one replica finishes on the other, UI requests alternate, unlink on one
//! ends the sessions on both, the Matomo cookie check holds on both, a store outage gives 503 pages
//! and traffic recovers by itself. And the journey of the SQLite default on each backend.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::provider::FakeProvider;
use support::servers::{Postgres, Redis, RoundRobin};
use support::{csrf_of, location, Browser, StandIn, TestApp, TEST_KEY};

enum Backend {
    Postgres,
    RedisAndPostgres,
}

struct Cluster {
    m: StandIn,
    p: FakeProvider,
    a: TestApp,
    b: TestApp,
    lb: RoundRobin,
    pg: Postgres,
    redis: Option<Redis>,
}

async fn cluster(backend: Backend) -> Cluster {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let redis = match backend {
        Backend::Postgres => None,
        Backend::RedisAndPostgres => Some(tokio::task::spawn_blocking(Redis::start).await.unwrap()),
    };
    let store = match &redis {
        None => format!("url = \"{}\"\n", pg.url()),
        Some(r) => format!(
            "url = \"{}\"\nlinks_url = \"{}\"\nmax_connections = 8\n",
            r.url(),
            pg.url()
        ),
    };
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb_ = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (aa, ab) = (la.local_addr().unwrap(), lb_.local_addr().unwrap());
    let lb = RoundRobin::start(vec![aa, ab]).await;
    let toml = format!(
        "[server]\npublic_url = \"http://{}\"\n[upstream]\nurl = \"{}\"\nconnect_timeout = \"1s\"\ntimeout = \"5s\"\n[provider]\n{}[session]\nkey = \"{TEST_KEY}\"\n[store]\n{store}",
        lb.addr,
        m.url(),
        p.config()
    );
    let a = TestApp::start_on(&toml, Arc::new(tempfile::tempdir().unwrap()), la, aa).await;
    let b = TestApp::start_on(&toml, Arc::new(tempfile::tempdir().unwrap()), lb_, ab).await;
    Cluster {
        m,
        p,
        a,
        b,
        lb,
        pg,
        redis,
    }
}

/// Sends a URL of the public origin to a given replica instead.
fn on(app: &TestApp, url: &str, lb: &RoundRobin) -> String {
    url.replace(&lb.addr.to_string(), &app.addr.to_string())
}

/// Sign-in started on replica A, finished on replica B.
async fn sign_in_across(c: &Cluster, b: &Browser, sub: &str) -> reqwest::Response {
    c.p.set_sub(sub);
    let html = b
        .get(&c.a.url("/_unikgate/sign_in"))
        .await
        .text()
        .await
        .unwrap();
    let res = b
        .post(
            &c.a.url("/_unikgate/start"),
            &[("csrf", &csrf_of(&html)), ("rd", "/")],
        )
        .await;
    assert_eq!(res.status(), 303);
    let res = b.get(&location(&res)).await;
    let callback = on(&c.b, &location(&res), &c.lb);
    b.get(&callback).await
}

async fn link_on_b(c: &Cluster, b: &Browser, login: &str, pw: &str) {
    let html = b
        .get(&c.b.url("/_unikgate/link"))
        .await
        .text()
        .await
        .unwrap();
    let res = b
        .post(
            &c.b.url("/_unikgate/link"),
            &[
                ("csrf", &csrf_of(&html)),
                ("mode", "password"),
                ("login", login),
                ("password", pw),
            ],
        )
        .await;
    assert_eq!(res.status(), 302, "{}", res.text().await.unwrap());
}

async fn replicas_behave_as_one(backend: Backend) {
    let c = cluster(backend).await;
    let one = Browser::new();
    let res = sign_in_across(&c, &one, "uns-alice").await;
    assert_eq!(res.status(), 302);
    assert!(
        location(&res).contains("/_unikgate/link"),
        "the sign-in started on A finished on B"
    );
    link_on_b(&c, &one, "alice", "alice-password").await;
    // UI requests alternate replicas: no re-sign-in, no re-mint.
    let mints = c.m.state.mints();
    for i in 0..6 {
        let app = if i % 2 == 0 { &c.a } else { &c.b };
        let res = one
            .get(&app.url("/index.php?module=CoreHome&action=index"))
            .await;
        assert_eq!(res.status(), 200, "request {i}");
        assert!(res
            .text()
            .await
            .unwrap()
            .contains("piwik.userLogin = \"alice\""));
    }
    assert_eq!(
        c.m.state.mints(),
        mints,
        "the minted cookie is recognised by both replicas"
    );
    // The Matomo cookie check holds on both: bob's cookie is never forwarded as alice's.
    let bob = c.m.state.login_with_password("bob");
    for app in [&c.a, &c.b] {
        one.set_cookie(&app.url("/"), &format!("MATOMO_SESSID={bob}; Path=/"));
        let html = one
            .get(&app.url("/index.php?module=CoreHome"))
            .await
            .text()
            .await
            .unwrap();
        assert!(html.contains("piwik.userLogin = \"alice\""));
    }
    // Through the balancer, with a new connection per request (so they alternate).
    let lb_browser = Browser::new();
    for (k, v) in [
        (
            "unikgate_session",
            one.cookie(&c.a.url("/"), "unikgate_session").unwrap(),
        ),
        (
            "MATOMO_SESSID",
            one.cookie(&c.a.url("/"), "MATOMO_SESSID").unwrap(),
        ),
    ] {
        lb_browser.set_cookie(
            &format!("http://{}/", c.lb.addr),
            &format!("{k}={v}; Path=/"),
        );
    }
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .cookie_provider(lb_browser.jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for _ in 0..4 {
        let res = fresh
            .get(format!("http://{}/index.php?module=CoreHome", c.lb.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // A second browser of the same identity, signed in on B; unlink on A ends it.
    let two = Browser::new();
    let res = sign_in_across(&c, &two, "uns-alice").await;
    assert_eq!(location(&res), format!("http://{}/", c.lb.addr));
    assert_eq!(
        two.get(&c.b.url("/index.php?module=CoreHome"))
            .await
            .status(),
        200
    );
    let html = one
        .get(&c.a.url("/_unikgate/account"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        one.post(&c.a.url("/_unikgate/unlink"), &[("csrf", &csrf_of(&html))])
            .await
            .status(),
        302
    );
    for app in [&c.a, &c.b] {
        let res = two.get(&app.url("/index.php?module=CoreHome")).await;
        assert_eq!(res.status(), 302, "signed out on both replicas");
    }
    // Rate limits are shared: every attempt here comes from 127.0.0.1, alice's link was the first;
    // four more alternating between A and B make five, and the sixth is refused (a per-process
    // limit would allow five on each replica).
    let three = Browser::new();
    sign_in_across(&c, &three, "uns-mallory").await;
    for i in 0..4 {
        let app = if i % 2 == 0 { &c.a } else { &c.b };
        let html = three
            .get(&app.url("/_unikgate/link"))
            .await
            .text()
            .await
            .unwrap();
        let res = three
            .post(
                &app.url("/_unikgate/link"),
                &[
                    ("csrf", &csrf_of(&html)),
                    ("mode", "password"),
                    ("login", "bob"),
                    ("password", "wrong-one"),
                ],
            )
            .await;
        assert_eq!(res.status(), 401);
    }
    let html = three
        .get(&c.a.url("/_unikgate/link"))
        .await
        .text()
        .await
        .unwrap();
    let res = three
        .post(
            &c.a.url("/_unikgate/link"),
            &[
                ("csrf", &csrf_of(&html)),
                ("mode", "password"),
                ("login", "bob"),
                ("password", "bob-password"),
            ],
        )
        .await;
    assert_eq!(res.status(), 429);
}

async fn store_outage_gives_503_and_recovers(backend: Backend) {
    let c = cluster(backend).await;
    let b = Browser::new();
    sign_in_across(&c, &b, "uns-alice").await;
    link_on_b(&c, &b, "alice", "alice-password").await;
    assert_eq!(
        b.get(&c.a.url("/index.php?module=CoreHome")).await.status(),
        200
    );
    // Stop the store the sessions live in, mid-traffic.
    match &c.redis {
        Some(r) => r.down(),
        None => c.pg.down(),
    }
    for app in [&c.a, &c.b] {
        let res = b.get(&app.url("/index.php?module=CoreHome")).await;
        assert_eq!(res.status(), 503);
        assert!(res.text().await.unwrap().contains("session store"));
        assert_eq!(b.get(&app.url("/_unikgate/readyz")).await.status(), 503);
        // Public traffic does not need the store.
        assert_eq!(b.get(&app.url("/matomo.php?idsite=1")).await.status(), 200);
    }
    match &c.redis {
        Some(r) => r.up(),
        None => c.pg.up(),
    }
    // Both replicas recover by themselves (pools reconnect), the session intact.
    for app in [&c.a, &c.b] {
        let mut status = 0;
        for _ in 0..40 {
            status = b
                .get(&app.url("/index.php?module=CoreHome"))
                .await
                .status()
                .as_u16();
            if status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(status, 200, "traffic recovered without restarting unikgate");
        assert_eq!(b.get(&app.url("/_unikgate/readyz")).await.status(), 200);
    }
}

/// The journey of the SQLite default (sign in, link, Matomo as alice, sign out, straight back in).
async fn the_journey(backend: Backend) {
    let c = cluster(backend).await;
    let b = Browser::new();
    let deep = "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday";
    c.p.set_sub("uns-alice");
    let q: String = form_urlencoded::byte_serialize(deep.as_bytes()).collect();
    let html = b
        .get(&c.a.url(&format!("/_unikgate/sign_in?rd={q}")))
        .await
        .text()
        .await
        .unwrap();
    let res = b
        .post(
            &c.a.url("/_unikgate/start"),
            &[("csrf", &csrf_of(&html)), ("rd", deep)],
        )
        .await;
    let res = b.get(&location(&res)).await;
    let res = b.get(&on(&c.a, &location(&res), &c.lb)).await;
    assert!(location(&res).contains("/_unikgate/link"));
    let html = b
        .get(&c.a.url("/_unikgate/link"))
        .await
        .text()
        .await
        .unwrap();
    let res = b
        .post(
            &c.a.url("/_unikgate/link"),
            &[
                ("csrf", &csrf_of(&html)),
                ("rd", deep),
                ("mode", "password"),
                ("login", "alice"),
                ("password", "alice-password"),
            ],
        )
        .await;
    assert_eq!(location(&res), format!("http://{}{deep}", c.lb.addr));
    assert!(b
        .get(&c.a.url(deep))
        .await
        .text()
        .await
        .unwrap()
        .contains("piwik.userLogin = \"alice\""));
    let res = b
        .get(&c.a.url("/index.php?module=Login&action=logout"))
        .await;
    assert_eq!(res.status(), 302);
    assert_eq!(c.m.state.sessions_of("alice"), 0);
    assert_eq!(b.get(&c.a.url(deep)).await.status(), 302);
    let html = b
        .get(&c.a.url("/_unikgate/sign_in"))
        .await
        .text()
        .await
        .unwrap();
    let res = b
        .post(
            &c.a.url("/_unikgate/start"),
            &[("csrf", &csrf_of(&html)), ("rd", deep)],
        )
        .await;
    let res = b.get(&location(&res)).await;
    let res = b.get(&on(&c.a, &location(&res), &c.lb)).await;
    assert_eq!(
        location(&res),
        format!("http://{}{deep}", c.lb.addr),
        "straight in"
    );
    assert!(b
        .get(&c.a.url(deep))
        .await
        .text()
        .await
        .unwrap()
        .contains("piwik.userLogin = \"alice\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_behave_as_one() {
    replicas_behave_as_one(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_and_postgres_links_behave_as_one() {
    replicas_behave_as_one(Backend::RedisAndPostgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_503_and_recovers() {
    store_outage_gives_503_and_recovers(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_503_and_recovers() {
    store_outage_gives_503_and_recovers(Backend::RedisAndPostgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journey_on_postgres() {
    the_journey(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journey_on_redis_and_postgres() {
    the_journey(Backend::RedisAndPostgres).await;
}

/// A back-channel logout received by one replica ends the sessions used on the other, at once,
/// with their Matomo sessions; its `jti` is spent on both.
async fn backchannel_logout_across_replicas(backend: Backend) {
    let c = cluster(backend).await;
    let post = |app: &TestApp, token: String| {
        let url = app.url("/_unikgate/backchannel_logout");
        async move {
            support::unpooled()
                .post(url)
                .form(&[("logout_token", token)])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let one = Browser::new();
    sign_in_across(&c, &one, "uns-alice").await;
    link_on_b(&c, &one, "alice", "alice-password").await;
    let two = Browser::new();
    sign_in_across(&c, &two, "uns-alice").await;
    let sid_two = c.p.last_sid();
    for b in [&one, &two] {
        assert_eq!(
            b.get(&c.b.url("/index.php?module=CoreHome")).await.status(),
            200
        );
    }
    assert_eq!(c.m.state.sessions_of("alice"), 2);
    // By sid, received by A: the session used on B ends.
    let token =
        c.p.logout_token(&c.p.logout_claims(Some("uns-alice"), Some(&sid_two)));
    assert_eq!(post(&c.a, token.clone()).await, 200);
    for app in [&c.a, &c.b] {
        let res = two.get(&app.url("/index.php?module=CoreHome")).await;
        assert_eq!(res.status(), 302, "ended on both replicas");
    }
    assert_eq!(c.m.state.sessions_of("alice"), 1);
    assert_eq!(
        one.get(&c.b.url("/index.php?module=CoreHome"))
            .await
            .status(),
        200,
        "the other provider session lives on"
    );
    // The same token again, on B: spent.
    assert_eq!(
        post(&c.b, token).await,
        400,
        "a jti used on A is refused on B"
    );
    // By sub, received by B.
    let token =
        c.p.logout_token(&c.p.logout_claims(Some("uns-alice"), None));
    assert_eq!(post(&c.b, token).await, 200);
    assert_eq!(
        one.get(&c.a.url("/index.php?module=CoreHome"))
            .await
            .status(),
        302
    );
    assert_eq!(c.m.state.sessions_of("alice"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_across_postgres_replicas() {
    backchannel_logout_across_replicas(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_across_redis_and_postgres_replicas() {
    backchannel_logout_across_replicas(Backend::RedisAndPostgres).await;
}
