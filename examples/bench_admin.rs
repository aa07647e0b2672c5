//! Benchmark of the superusers' page with many links: seeds the link database of a config with
//! LINKS links (10,000 by default) and a live, indexed session for each of the first SESSIONS
//! (2,000), through the library's own stores, then times what `admin/api/links` does for one page
//! of 25 (`endpoints::link_rows`: the page of links, then each link's sessions read back): the
//! first page, a middle one, the last, a filter matching one link and a filter matching 1,000.
//! Prints the median and the slowest of ROUNDS (20) of each. The superuser check (one call to
//! Matomo) and the HTTP round trip come on top, the same for any number of links.
//! Usage: bench_admin CONFIG [LINKS] [SESSIONS]  (bench/admin runs it on SQLite and PostgreSQL)

use std::time::{Duration, Instant};

use http::HeaderMap;
use unikgate::now_ms;
use unikgate::session::UserSession;
use unikgate::store::{Link, SessionEntry};

const ROUNDS: usize = 20;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: bench_admin CONFIG [LINKS] [SESSIONS]");
    let links: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let sessions: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2_000);
    let cfg = match unikgate::config::Config::load(std::path::Path::new(&path)) {
        Ok(c) => c,
        Err(e) => panic!("{e:?}"),
    };
    let store = cfg.store.links_url.to_string();
    let (_, app) = unikgate::build_app(cfg).await.expect("build_app");
    let issuer = "https://connect.unikname.com/oidc".to_string();
    let seeded = Instant::now();
    for i in 0..links {
        let subject = format!("uns-bench-{i:05}");
        let link = Link {
            id: unikgate::random_token(),
            issuer: issuer.clone(),
            subject: subject.clone(),
            matomo_login: format!("user{i:05}"),
            superuser: false,
            created_at: now_ms(),
            last_login_at: Some(now_ms()),
        };
        // A second run on the same database finds them there.
        let _ = app.links.create(&link).await.expect("store");
        if i < sessions {
            let mut s = app.sessions.open(&HeaderMap::new());
            let data = app.sessions.load(&mut s).await.expect("store");
            data.user = Some(UserSession {
                issuer: issuer.clone(),
                subject: subject.clone(),
                display: Some(format!("user{i:05}@example.org")),
                signed_in: now_ms(),
                id_token: None,
                sid: None,
                id_sub: None,
                link: Some(unikgate::context::link_ref(&link)),
                matomo: None,
                policy: 0,
                claims: Default::default(),
                proposal: None,
                client_ip: Some("192.0.2.10".into()),
                access_claim: Vec::new(),
            });
            s.changed();
            let id = s.save_now().await.expect("store").expect("an id");
            app.session_index
                .index_session(&SessionEntry {
                    issuer: issuer.clone(),
                    subject,
                    session_id: id,
                    sid: None,
                    id_sub: None,
                    created_at: now_ms(),
                    client_ip: Some("192.0.2.10".into()),
                })
                .await
                .expect("store");
        }
    }
    println!(
        "store {store}: {links} links, {sessions} with a live session (seeded in {:.1} s)",
        seeded.elapsed().as_secs_f64()
    );
    let last = links.div_ceil(25).max(1) as u64;
    for (what, filter, page) in [
        ("first page", "", 1),
        ("middle page", "", last / 2),
        ("last page", "", last),
        ("filter, 1 match", "user04242", 1),
        ("filter, 1,000 matches", "user01", 1),
    ] {
        let mut times: Vec<Duration> = Vec::with_capacity(ROUNDS);
        let mut rows = 0;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let v = unikgate::endpoints::link_rows(&app, filter, page, 25)
                .await
                .expect("store");
            times.push(t.elapsed());
            rows = v["links"].as_array().map(Vec::len).unwrap_or(0);
        }
        times.sort();
        println!(
            "{what:<24} {rows:>3} rows   median {:>7.2} ms   slowest {:>7.2} ms",
            times[ROUNDS / 2].as_secs_f64() * 1000.0,
            times[ROUNDS - 1].as_secs_f64() * 1000.0
        );
    }
}
