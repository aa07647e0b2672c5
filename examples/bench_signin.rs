//! Benchmark helper: whole sign-ins of an already linked identity, measured at the callback
//! (code exchange + userinfo + link lookup + mint + session write), against the in-process fake
//! provider and Matomo stand-in, through the same `build_app` as the binary.
//! Usage: bench_signin [SECONDS] [CONCURRENCY]   Prints one line of JSON.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::provider::FakeProvider;
use support::{config, csrf_of, location, Browser, StandIn, TestApp};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let conc: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(8);
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    p.set_sub("uns-alice");
    let app = TestApp::start(&config(&m.url(), &p.config(), "")).await;
    let link = unikgate::store::Link {
        id: "bench".into(),
        issuer: p.issuer(),
        subject: "uns-alice".into(),
        matomo_login: "alice".into(),
        superuser: false,
        created_at: 0,
        last_login_at: None,
    };
    app.app.links.create(&link).await.unwrap().unwrap();
    let lat: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let lat = lat.clone();
        let base = app.url("");
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let b = Browser::new();
                let html = b
                    .get(&format!("{base}/_unikgate/sign_in"))
                    .await
                    .text()
                    .await
                    .unwrap();
                let r = b
                    .post(
                        &format!("{base}/_unikgate/start"),
                        &[("csrf", &csrf_of(&html)), ("rd", "/")],
                    )
                    .await;
                let r = b.get(&location(&r)).await;
                let cb = location(&r);
                let t = Instant::now();
                let r = b.get(&cb).await;
                assert_eq!(r.status(), 302);
                lat.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut l = lat.lock().unwrap().clone();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |q: f64| l[((l.len() as f64 - 1.0) * q) as usize];
    println!(
        "{{\"callbacks\": {}, \"per_second\": {:.1}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"concurrency\": {conc}}}",
        l.len(),
        l.len() as f64 / seconds as f64,
        pct(0.5),
        pct(0.99)
    );
}
