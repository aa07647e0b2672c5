//! Soak: mixed traffic against the unikgate binary for a bounded time, loopback only.
//! Tracking hits, signed-in UI traffic and whole sign-ins/sign-outs, concurrently; counts every
//! status that is not the expected one and samples the resident memory of the unikgate process.
//! Run by `bench/soak` (which builds the release binary first). Exits 1 on any unexpected status
//! or when memory grew by more than 20 MiB between the first and the last minute.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::provider::FakeProvider;
use support::{csrf_of, location, Browser, StandIn};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

type Tally = Arc<Mutex<BTreeMap<String, u64>>>;

fn count(t: &Tally, what: &str, status: u16, expected: &[u16]) {
    let key = if expected.contains(&status) {
        format!("{what} {status} (expected)")
    } else {
        format!("{what} {status} UNEXPECTED")
    };
    *t.lock().unwrap().entry(key).or_default() += 1;
}

async fn sign_in(b: &Browser, base: &str) -> u16 {
    let Ok(r) = b
        .client
        .get(format!("{base}/_unikgate/sign_in"))
        .send()
        .await
    else {
        return 0;
    };
    let Ok(html) = r.text().await else { return 0 };
    let Ok(r) = b
        .client
        .post(format!("{base}/_unikgate/start"))
        .form(&[("csrf", csrf_of(&html).as_str()), ("rd", "/")])
        .send()
        .await
    else {
        return 0;
    };
    let Ok(r) = b.client.get(location(&r)).send().await else {
        return 0;
    };
    let Ok(r) = b.client.get(location(&r)).send().await else {
        return 0;
    };
    r.status().as_u16()
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(600)
        .min(600);
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    p.set_sub("uns-alice");
    let dir = tempfile::tempdir().unwrap();
    let port = support::servers::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let cfg = dir.path().join("soak.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\n[upstream]\nurl = \"{}\"\n[provider]\n{}[store]\nurl = \"sqlite://{}/unikgate.db\"\n",
            m.url(),
            p.config(),
            dir.path().display()
        ),
    )
    .unwrap();
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/unikgate");
    let mut child = Command::new(&bin)
        .args(["serve", "-c"])
        .arg(&cfg)
        .env("UNIKGATE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("target/release/unikgate: run bench/soak");
    let pid = child.id();
    for _ in 0..100 {
        if reqwest::get(format!("{base}/_unikgate/healthz"))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One linked identity; its browsers sign in straight to Matomo.
    let first = Browser::new();
    sign_in(&first, &base).await;
    let html = first
        .get(&format!("{base}/_unikgate/link"))
        .await
        .text()
        .await
        .unwrap();
    let r = first
        .post(
            &format!("{base}/_unikgate/link"),
            &[
                ("csrf", &csrf_of(&html)),
                ("mode", "password"),
                ("login", "alice"),
                ("password", "alice-password"),
            ],
        )
        .await;
    assert_eq!(r.status(), 302, "linking alice");

    let tally: Tally = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let start_rss = rss_kib(pid);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (t, stop, n, base) = (tally.clone(), stop.clone(), requests.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let s = c
                    .get(format!("{base}/matomo.php?idsite=1&rec=1&action_name=soak"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                count(&t, "tracking", s, &[200]);
                n.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for _ in 0..3 {
        let (t, stop, n, base) = (tally.clone(), stop.clone(), requests.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let b = Browser::new();
            sign_in(&b, &base).await;
            while !stop.load(Ordering::Relaxed) {
                let s = b
                    .client
                    .get(format!(
                        "{base}/index.php?module=CoreHome&action=index&idSite=1"
                    ))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                count(&t, "signed-in UI", s, &[200]);
                n.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        let (t, stop, n, base) = (tally.clone(), stop.clone(), requests.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let b = Browser::new();
                count(&t, "sign-in callback", sign_in(&b, &base).await, &[302]);
                let s = b
                    .client
                    .get(format!("{base}/index.php?module=CoreHome"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                count(&t, "UI after sign-in", s, &[200]);
                let s = b
                    .client
                    .get(format!("{base}/index.php?module=Login&action=logout"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                count(&t, "sign-out", s, &[302]);
                n.fetch_add(5, Ordering::Relaxed);
            }
        }));
    }
    let began = Instant::now();
    let mut samples = vec![(0u64, start_rss)];
    while began.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(5).min(Duration::from_secs(seconds))).await;
        samples.push((began.elapsed().as_secs(), rss_kib(pid)));
        eprintln!(
            "{:>4}s  {:>9} requests  RSS {} KiB",
            began.elapsed().as_secs(),
            requests.load(Ordering::Relaxed),
            rss_kib(pid)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let end_rss = rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    let total = requests.load(Ordering::Relaxed);
    let unexpected: u64 = tally
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains("UNEXPECTED"))
        .map(|(_, v)| v)
        .sum();
    // Warm-up excluded: compare the first sample after 20% of the run with the last.
    let warm = samples
        .iter()
        .find(|(t, _)| *t >= seconds / 5)
        .map(|s| s.1)
        .unwrap_or(start_rss);
    println!(
        "soak: {seconds} s, {total} requests ({:.0}/s)",
        total as f64 / seconds as f64
    );
    for (k, v) in tally.lock().unwrap().iter() {
        println!("  {v:>9}  {k}");
    }
    println!(
        "RSS: start {} KiB, after warm-up {} KiB, end {} KiB, max {} KiB",
        start_rss,
        warm,
        end_rss,
        samples.iter().map(|s| s.1).max().unwrap_or(0)
    );
    println!("unexpected statuses: {unexpected}");
    let grew = end_rss.saturating_sub(warm);
    if unexpected > 0 || grew > 20 * 1024 {
        println!("FAIL");
        std::process::exit(1);
    }
    println!("OK");
}
