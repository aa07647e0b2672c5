//! Benchmark helper: seeds the store of a config with one link (alice) and N signed-in sessions
//! that hold a minted Matomo cookie, through the same library code the server uses, then prints
//! the `Cookie` header of the first session. Usage: bench_session CONFIG [N]

use std::time::Duration;

use http::HeaderMap;
use unikgate::now_ms;
use unikgate::session::{cookie_hash, MatomoSession, UserSession};

pub const MATOMO_COOKIE_VALUE: &str = "bench0matomo0session0cookie00000";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: bench_session CONFIG [N]");
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let cfg = match unikgate::config::Config::load(std::path::Path::new(&path)) {
        Ok(c) => c,
        Err(e) => panic!("{e:?}"),
    };
    let (_, app) = unikgate::build_app(cfg).await.expect("build_app");
    let issuer = app
        .oidc
        .as_ref()
        .map(|o| o.identity_issuer.clone())
        .unwrap_or_default();
    let link = match app.links.get(&issuer, "uns-bench").await.expect("store") {
        Some(l) => l,
        None => {
            let l = unikgate::store::Link {
                id: unikgate::random_token(),
                issuer: issuer.clone(),
                subject: "uns-bench".into(),
                matomo_login: "alice".into(),
                superuser: false,
                created_at: now_ms(),
                last_login_at: None,
            };
            app.links.create(&l).await.expect("store").expect("link");
            l
        }
    };
    let id_token = format!(
        "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoIn0.{}.{}",
        "A".repeat(480),
        "B".repeat(342)
    );
    let mut first = None;
    for _ in 0..n {
        let mut s = app.sessions.open(&HeaderMap::new());
        let data = app.sessions.load(&mut s).await.expect("store");
        data.user = Some(UserSession {
            issuer: issuer.clone(),
            subject: "uns-bench".into(),
            // As a real sign-in leaves them: the ID token kept for logout (about 900 bytes,
            // the size of Unikname Connect's), the provider session id and subject.
            display: Some("alice@example.com".into()),
            signed_in: now_ms(),
            id_token: Some(id_token.clone()),
            sid: Some("3c5d7e9f-0a1b-4c2d-8e3f-405162738495".into()),
            id_sub: Some("uns-bench".into()),
            link: Some(unikgate::context::link_ref(&link)),
            matomo: Some(MatomoSession {
                login: "alice".into(),
                cookie_hash: cookie_hash(MATOMO_COOKIE_VALUE),
                cookie: Some(MATOMO_COOKIE_VALUE.into()),
                seen: now_ms(),
            }),
            policy: 0,
            claims: Default::default(),
            proposal: None,
            client_ip: None,
            access_claim: Vec::new(),
        });
        s.changed();
        let mut h = HeaderMap::new();
        app.sessions.finish(s, &mut h).await.expect("store");
        if first.is_none() {
            let set = h
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .expect("a cookie")
                .to_string();
            first = Some(set.split(';').next().unwrap_or("").to_string());
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    println!(
        "{}; MATOMO_SESSID={MATOMO_COOKIE_VALUE}",
        first.unwrap_or_default()
    );
}
