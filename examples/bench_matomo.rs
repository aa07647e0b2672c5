//! Benchmark in front of the real Matomo 5.1.2 (called by `bench/run`; release build): installs
//! it with the test harness (`tests/support/real.rs`: MariaDB, Apache + mod_php), puts the
//! release `unikgate` binary (signed minter) and an nginx reverse proxy in front, and measures
//! with wrk, interleaved round by round:
//!   - tracking hits (`matomo.php` with a realistic query string, 16 connections): direct, through
//!     nginx, through unikgate;
//!   - as a signed-in linked user, 1 connection: the dashboard page, and one widget API call as
//!     Matomo's UI sends it (POST `module=API` with the session's `token_auth` and
//!     `force_api_session=1`): direct with the Matomo session cookie, and through unikgate;
//!   - the same two paired request by request (direct, through unikgate, a second direct
//!     connection as the control), against Apache as installed and against a second Apache with
//!     one PHP process and no keep-alive; each request marked `ugbench=<id>` so that the time
//!     Apache logged for it can be taken from the client's time (the time outside Apache);
//!   - unikgate's own time to the answer head, from its metrics listener.
//!
//! Prints a Markdown section (min / median / max across rounds) on stdout.
//! Usage: bench_matomo UNIKGATE_BINARY BENCH_SESSION_BINARY   (env ROUNDS, DURATION, PAIRS)
//! With `HOLD=1` it measures nothing: it prints the addresses and cookies of the three paths and
//! keeps every server up until it is interrupted, for measuring by hand (curl, strace, perf).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::real::{RealMatomo, ALICE, SHARED_SECRET};

const TRACK: &str = "/matomo.php?idsite=1&rec=1&apiv=1&r=482913&h=14&m=2&s=31&_id=5d3f1a2b3c4d5e6f&_idn=0&_refts=0&send_image=0&cookie=1&res=1920x1080&pv_id=Ab12Cd&url=https%3A%2F%2Fwww.example.com%2Fpricing%3Futm_source%3Dnewsletter&urlref=https%3A%2F%2Fwww.example.com%2F&action_name=Pricing%20%E2%80%93%20Example&pf_net=12&pf_srv=85&pf_tfr=4&pf_dm1=210&pf_dm2=35&pf_onl=3";
const DASHBOARD: &str =
    "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday";
const WIDGET_API: &str =
    "/index.php?module=API&method=VisitsSummary.get&format=JSON&idSite=1&period=day&date=yesterday";

struct Killed(Vec<Child>);
impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ms(v: &str) -> f64 {
    let v = v.trim();
    for (unit, f) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0)] {
        if let Some(n) = v.strip_suffix(unit) {
            return n.parse::<f64>().unwrap_or(f64::NAN) * f;
        }
    }
    v.parse().unwrap_or(f64::NAN)
}

/// From unikgate's metrics page: (sum of request seconds to the answer head over every class,
/// their count, sum of upstream seconds to Matomo's answer head, their count).
fn own_time_counters(page: &str) -> (f64, f64, f64, f64) {
    let mut v = (0.0, 0.0, 0.0, 0.0);
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        let name = name.split('{').next().unwrap_or("");
        match name {
            "unikgate_request_seconds_sum" => v.0 += value,
            "unikgate_request_seconds_count" => v.1 += value,
            "unikgate_upstream_seconds_sum" => v.2 += value,
            "unikgate_upstream_seconds_count" => v.3 += value,
            _ => {}
        }
    }
    v
}

/// One wrk run.
struct Run {
    rps: f64,
    p50: f64,
    p99: f64,
    /// The longest request, ms (a stall of Matomo's shows here before it moves a percentile).
    max: f64,
    /// Answers not 2xx or 3xx, and socket errors (timeouts: a request still unanswered after
    /// wrk's 10 s).
    errors: u64,
}

fn wrk(url: &str, conns: u32, secs: u32, cookie: Option<&str>, script: Option<&str>) -> Run {
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        "1",
        "wrk",
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--timeout",
        "10s",
        "--latency",
    ]);
    if let Some(c) = cookie {
        cmd.args(["-H", &format!("Cookie: {c}")]);
    }
    if let Some(s) = script {
        cmd.args(["-s", s]);
    }
    let out = cmd.arg(url).output().expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |key: &str, idx: usize| -> String {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split_whitespace().nth(idx).map(str::to_string))
            .unwrap_or_default()
    };
    let non_2xx: u64 = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx"))
        .and_then(|l| l.split_whitespace().last().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    // "Socket errors: connect 0, read 0, write 0, timeout 3"
    let socket: u64 = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Socket errors:"))
        .map(|rest| {
            rest.split([',', ' '])
                .filter_map(|w| w.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Run {
        rps: field("Requests/sec:", 1).parse().unwrap_or(f64::NAN),
        p50: ms(&field("50%", 1)),
        p99: ms(&field("99%", 1)),
        max: ms(&field("Latency", 3)),
        errors: non_2xx + socket,
    }
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let med = if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (
        s.first().copied().unwrap_or(f64::NAN),
        med,
        s.last().copied().unwrap_or(f64::NAN),
    )
}

fn fmt3(v: &[f64], digits: usize) -> String {
    let (lo, med, hi) = spread(v);
    format!("{med:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

/// A unikgate config (signed minter, SQLite store shared by every config of `dir`, so one seeded
/// session serves them all) listening on `port` in front of `upstream`, with a metrics listener:
/// (config path, metrics port).
fn unikgate_config(
    dir: &std::path::Path,
    name: &str,
    port: u16,
    upstream: &str,
) -> (std::path::PathBuf, u16) {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n[upstream]\nurl = \"{upstream}\"\n[provider]\nissuer = \"none\"\nauthorize_url = \"http://127.0.0.1:9/oidc/authorize\"\ntoken_url = \"http://127.0.0.1:9/oidc/accessToken\"\nuserinfo_url = \"http://127.0.0.1:9/oidc/profile\"\nclient_id = \"bench\"\nclient_secret = \"bench-secret\"\n[store]\nurl = \"sqlite://{}/unikgate.db\"\n[matomo]\nminter = \"signed\"\nshared_secret = \"{SHARED_SECRET}\"\n",
            dir.display()
        ),
    )
    .expect("config");
    (cfg, metrics_port)
}

/// One round of paired requests: (direct median, through median, median of differences, median
/// of the second direct connection's differences), ms.
type Paired = (f64, f64, f64, f64);

/// From an Apache log of benchmark requests (`%q %D` lines): request id → ms Apache took to
/// serve it.
fn served_ms(log: &std::path::Path) -> std::collections::HashMap<u64, f64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (query, us) = line.rsplit_once(' ')?;
            let id = query
                .split(['?', '&'])
                .find_map(|p| p.strip_prefix("ugbench="))?;
            Some((id.parse().ok()?, us.parse::<f64>().ok()? / 1000.0))
        })
        .collect()
}

fn start_unikgate(binary: &str, cfg: &std::path::Path) -> Child {
    Command::new(binary)
        .args(["serve", "-c"])
        .arg(cfg)
        .env("UNIKGATE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("unikgate")
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let unikgate = args
        .next()
        .expect("usage: bench_matomo UNIKGATE BENCH_SESSION");
    let bench_session = args
        .next()
        .expect("usage: bench_matomo UNIKGATE BENCH_SESSION");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let secs: u32 = std::env::var("DURATION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let m = RealMatomo::start()
        .await
        .unwrap_or_else(|e| panic!("the real Matomo: {e}"));
    let work = tempfile::tempdir().expect("tempdir");
    let mut children = Killed(Vec::new());

    // nginx in front of Apache (keep-alive to the upstream, as bench/run's nginx).
    let ngx_port = {
        let l = m.gate_listener();
        l.local_addr().expect("addr").port()
    };
    let apache = m.apache.trim_start_matches("http://").to_string();
    let nginx_dir = work.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).expect("nginx dir");
    let d = nginx_dir.display();
    std::fs::write(
        nginx_dir.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  upstream matomo {{ server {apache}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{ngx_port}; location / {{ proxy_pass http://matomo; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $http_host; proxy_set_header X-Forwarded-For $remote_addr; }} }}\n}}\n"
        ),
    )
    .expect("nginx.conf");
    children.0.push(
        Command::new("/usr/sbin/nginx")
            .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx"),
    );

    // unikgate (release binary, signed minter) on a port Matomo trusts, with its metrics
    // listener: its own time per request is read there (request time to the answer head, less
    // the upstream's time to its head).
    let ug_port = {
        let l = m.gate_listener();
        l.local_addr().expect("addr").port()
    };
    let (cfg, metrics_port) = unikgate_config(work.path(), "unikgate", ug_port, &m.apache);
    // A linked session for alice (the seeded Matomo cookie is a placeholder: the first request
    // through unikgate mints the real one).
    let out = Command::new(&bench_session)
        .arg(&cfg)
        .arg("1")
        .output()
        .expect("bench_session");
    let seeded = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let session = seeded.split(';').next().unwrap_or("").to_string();
    children.0.push(start_unikgate(&unikgate, &cfg));
    // The same Matomo behind an Apache with one PHP process and no keep-alive, and a second
    // unikgate (same store, so the same session) in front of it: the paired measurement again,
    // with every request served by that one process.
    let apache_one = m
        .one_process_apache()
        .await
        .unwrap_or_else(|e| panic!("the one-process Apache: {e}"));
    let ug_one_port = {
        let l = m.gate_listener();
        l.local_addr().expect("addr").port()
    };
    let (cfg_one, metrics_one_port) =
        unikgate_config(work.path(), "unikgate-one", ug_one_port, &apache_one);
    children.0.push(start_unikgate(&unikgate, &cfg_one));
    let ug = format!("http://127.0.0.1:{ug_port}");
    let ngx = format!("http://127.0.0.1:{ngx_port}");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let ug_one = format!("http://127.0.0.1:{ug_one_port}");
    let mut up = false;
    for _ in 0..200 {
        let ready = client.get(format!("{ug}/_unikgate/healthz")).send().await;
        let ready_one = client
            .get(format!("{ug_one}/_unikgate/healthz"))
            .send()
            .await;
        let nginx = client.get(format!("{ngx}/robots.txt")).send().await;
        if ready.is_ok() && ready_one.is_ok() && nginx.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "unikgate or nginx did not come up");
    // The first request mints alice's Matomo session; its cookie is then sent as a browser would.
    let res = client
        .get(format!("{ug}{DASHBOARD}"))
        .header("cookie", &session)
        .send()
        .await
        .expect("dashboard");
    assert_eq!(
        res.status(),
        200,
        "the signed-in dashboard through unikgate"
    );
    let matomo_cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("MATOMO_SESSID="))
        .and_then(|v| v.split(';').next())
        .expect("a minted Matomo cookie")
        .to_string();
    let body = res.text().await.unwrap_or_default();
    assert_eq!(
        unikgate::upstream::matomo::parse_user_login(&body).as_deref(),
        Some(ALICE.0),
        "the dashboard is alice's"
    );
    let token = body
        .split("piwik.token_auth = \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page's session token_auth")
        .to_string();
    let through = format!("{session}; MATOMO_SESSID={matomo_cookie}");
    let direct = format!("MATOMO_SESSID={matomo_cookie}");
    // Every path answers as alice before anything is measured.
    for (base, cookie) in [
        (&m.apache, &direct),
        (&ug, &through),
        (&apache_one, &direct),
        (&ug_one, &through),
    ] {
        let res = client
            .post(format!("{base}{WIDGET_API}"))
            .header("cookie", cookie.as_str())
            .form(&[("token_auth", token.as_str()), ("force_api_session", "1")])
            .send()
            .await
            .expect("widget API");
        let text = res.text().await.unwrap_or_default();
        assert!(text.contains("nb_visits"), "widget API via {base}: {text}");
    }
    if std::env::var("HOLD").is_ok_and(|v| v == "1") {
        println!("direct (Apache):  {}  cookie: {direct}", m.apache);
        println!("through unikgate: {ug}  cookie: {through}");
        println!("through nginx:    {ngx}");
        println!("one Apache process: {apache_one} (direct), {ug_one} (through unikgate)");
        println!("dashboard: {DASHBOARD}\nwidget API (POST token_auth={token}&force_api_session=1): {WIDGET_API}\ntracking: {TRACK}");
        println!("holding; interrupt to stop");
        let _ = tokio::signal::ctrl_c().await;
        drop(children);
        m.stop();
        return;
    }
    let script = work.path().join("widget.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"token_auth={token}&force_api_session=1\"\nwrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n"
        ),
    )
    .expect("lua");
    let script = script.display().to_string();
    // Tracking hits of many visitors (one fixed `_id` would serialise every hit on one visit row).
    let track_script = work.path().join("track.lua");
    std::fs::write(
        &track_script,
        format!(
            "local path = \"{}\"\nrequest = function()\n  local id = string.format(\"%08x%08x\", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))\n  return wrk.format(nil, (path:gsub(\"_id=[0-9a-f]+\", \"_id=\" .. id)))\nend\n",
            TRACK
        ),
    )
    .expect("lua");
    let track_script = track_script.display().to_string();
    // Warm-up, not measured: Apache's prefork workers spawn, PHP's opcache and Matomo's caches fill.
    for base in [&m.apache, &ngx, &ug] {
        wrk(
            &format!("{base}{TRACK}"),
            16,
            secs,
            None,
            Some(&track_script),
        );
    }
    for (base, cookie) in [
        (&m.apache, &direct),
        (&ug, &through),
        (&apache_one, &direct),
        (&ug_one, &through),
    ] {
        wrk(&format!("{base}{DASHBOARD}"), 1, secs, Some(cookie), None);
        wrk(
            &format!("{base}{WIDGET_API}"),
            1,
            secs,
            Some(cookie),
            Some(&script),
        );
    }

    // Paired latencies: direct and through unikgate one after the other, so that Matomo's own
    // drift (PHP, MariaDB, caches) hits both alike; the median of the differences is the added
    // time, far steadier than comparing two separately measured medians.
    let pairs: usize = std::env::var("PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let direct_client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let through_client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // A second direct client (its own keep-alive connection, so its own Apache worker): paired
    // with the first, it shows what two identical direct paths differ by, the floor under which
    // an added time cannot be told from which Apache process answered.
    let control_client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // Each measured request carries `ugbench=<id>` in its query: Apache logs the time it took
    // to serve it, which is subtracted from the time the client measured.
    let mut next_id = 0u64;
    let timed = |client: &reqwest::Client, url: String, cookie: String, api: bool, id: u64| {
        let client = client.clone();
        let token = token.clone();
        let url = format!("{url}&ugbench={id}");
        async move {
            let t = std::time::Instant::now();
            let req = if api {
                client
                    .post(url)
                    .form(&[("token_auth", token.as_str()), ("force_api_session", "1")])
            } else {
                client.get(url)
            };
            let res = req.header("cookie", cookie).send().await.expect("request");
            let ok = res.status() == 200;
            let _ = res.bytes().await;
            assert!(ok, "a measured request failed");
            t.elapsed().as_secs_f64() * 1000.0
        }
    };
    // The two setups: (direct base, through-unikgate base, unikgate's metrics): Apache as
    // installed (a process per keep-alive connection), and the one-process Apache.
    let setups = [
        (
            &m.apache,
            &ug,
            format!("http://127.0.0.1:{metrics_port}/metrics"),
        ),
        (
            &apache_one,
            &ug_one,
            format!("http://127.0.0.1:{metrics_one_port}/metrics"),
        ),
    ];
    // [setup][dashboard, api] → per round: (direct median, through median, median of
    // differences, median of the second direct connection's differences)
    let mut paired: [[Vec<Paired>; 2]; 2] = Default::default();
    // [setup][dashboard, api] → per round: (median over the pairs of the time outside Apache
    // through unikgate less direct's, the same for the second direct connection, median time
    // outside Apache direct).
    let mut outside: [[Vec<(f64, f64, f64)>; 2]; 2] = Default::default();
    // [setup][dashboard, api] → per round: unikgate's own mean µs to the answer head.
    let mut own: [[Vec<f64>; 2]; 2] = Default::default();
    let scrape = |url: String| async {
        let page = client
            .get(url)
            .send()
            .await
            .expect("unikgate's metrics")
            .text()
            .await
            .unwrap_or_default();
        own_time_counters(&page)
    };
    let mut track: [Vec<Run>; 3] = Default::default();
    let mut dash: [Vec<Run>; 2] = Default::default();
    let mut api: [Vec<Run>; 2] = Default::default();
    for r in 1..=rounds {
        eprintln!("real Matomo round {r}/{rounds}");
        for (i, base) in [&m.apache, &ngx, &ug].into_iter().enumerate() {
            track[i].push(wrk(
                &format!("{base}{TRACK}"),
                16,
                secs,
                None,
                Some(&track_script),
            ));
        }
        for (i, (base, cookie)) in [(&m.apache, &direct), (&ug, &through)]
            .into_iter()
            .enumerate()
        {
            dash[i].push(wrk(
                &format!("{base}{DASHBOARD}"),
                1,
                secs,
                Some(cookie),
                None,
            ));
            api[i].push(wrk(
                &format!("{base}{WIDGET_API}"),
                1,
                secs,
                Some(cookie),
                Some(&script),
            ));
        }
        for (setup, (direct_base, through_base, metrics_url)) in setups.iter().enumerate() {
            let apache_log = m
                .root
                .join(["apache", "apache-one"][setup])
                .join("bench.log");
            for (k, (path, api)) in [(DASHBOARD, false), (WIDGET_API, true)]
                .into_iter()
                .enumerate()
            {
                let (mut d, mut t, mut diff, mut floor) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                let mut triples: Vec<([u64; 3], [f64; 3])> = Vec::new();
                let before = scrape(metrics_url.clone()).await;
                for p in 0..pairs {
                    // The three in turn, each first, second and last as often as the others.
                    let mut order = [0usize, 1, 2];
                    order.rotate_left(p % 3);
                    if (p / 3) % 2 == 1 {
                        order.reverse();
                    }
                    let mut ms = [0f64; 3];
                    let ids = [next_id, next_id + 1, next_id + 2];
                    next_id += 3;
                    for which in order {
                        let (client, base, cookie) = match which {
                            0 => (&direct_client, *direct_base, &direct),
                            1 => (&through_client, *through_base, &through),
                            _ => (&control_client, *direct_base, &direct),
                        };
                        ms[which] = timed(
                            client,
                            format!("{base}{path}"),
                            cookie.clone(),
                            api,
                            ids[which],
                        )
                        .await;
                    }
                    triples.push((ids, ms));
                    d.push(ms[0]);
                    t.push(ms[1]);
                    diff.push(ms[1] - ms[0]);
                    floor.push(ms[2] - ms[0]);
                }
                let after = scrape(metrics_url.clone()).await;
                let requests = after.1 - before.1;
                if after.3 - before.3 != requests {
                    eprintln!(
                        "note: {} requests through unikgate made {} to Matomo (a mint?): its own time is an estimate this round",
                        requests,
                        after.3 - before.3
                    );
                }
                let served = served_ms(&apache_log);
                let out_of_apache = |id: u64, ms: f64| {
                    ms - served.get(&id).copied().unwrap_or_else(|| {
                        panic!(
                            "request {id} is not in Apache's log {}",
                            apache_log.display()
                        )
                    })
                };
                let (mut added, mut control, mut direct_out) = (Vec::new(), Vec::new(), Vec::new());
                for (ids, ms) in &triples {
                    let o = [0, 1, 2].map(|i| out_of_apache(ids[i], ms[i]));
                    added.push(o[1] - o[0]);
                    control.push(o[2] - o[0]);
                    direct_out.push(o[0]);
                }
                outside[setup][k].push((
                    spread(&added).1,
                    spread(&control).1,
                    spread(&direct_out).1,
                ));
                own[setup][k].push(((after.0 - before.0) - (after.2 - before.2)) / requests * 1e6);
                paired[setup][k].push((
                    spread(&d).1,
                    spread(&t).1,
                    spread(&diff).1,
                    spread(&floor).1,
                ));
            }
        }
    }
    let col = |v: &[Run], f: fn(&Run) -> f64| -> Vec<f64> { v.iter().map(f).collect() };
    let errs = |v: &[Run]| v.iter().map(|x| x.errors).sum::<u64>();
    println!(
        "## In front of the real Matomo {}",
        support::real::MATOMO_VERSION
    );
    println!();
    println!("Matomo 5.1.2 installed by the test harness (MariaDB, Apache 2.4 + mod_php, loopback), the release `unikgate` (signed minter) and nginx (1 worker, keep-alive to Apache) in front; wrk on CPU 1, the servers unpinned. Tracking hits carry a random visitor id each (as real traffic, and so that they do not queue on one visit row). One unmeasured warm-up pass, then {rounds} rounds of {secs} s, interleaved; each figure is the median (min–max) across rounds.");
    println!();
    println!("| tracking hits (`matomo.php`, 16 conns) | req/s | p50 ms | p99 ms | longest ms | req/s ÷ direct | non-2xx or socket errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let base = spread(&col(&track[0], |x| x.rps)).1;
    for (i, name) in ["direct to Apache", "through nginx", "through unikgate"]
        .iter()
        .enumerate()
    {
        let rps = col(&track[i], |x| x.rps);
        println!(
            "| {name} | {} | {} | {} | {} | {:.3} | {} |",
            fmt3(&rps, 0),
            fmt3(&col(&track[i], |x| x.p50), 2),
            fmt3(&col(&track[i], |x| x.p99), 2),
            fmt3(&col(&track[i], |x| x.max), 0),
            spread(&rps).1 / base,
            errs(&track[i])
        );
    }
    println!();
    println!("| signed in as alice, 1 conn | p50 ms | p99 ms | longest ms | req/s | added p50 ms | non-2xx or socket errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (what, rows) in [
        ("dashboard page", &dash),
        ("widget API call (POST module=API)", &api),
    ] {
        let base = spread(&col(&rows[0], |x| x.p50)).1;
        for (i, how) in ["direct, Matomo cookie", "through unikgate"]
            .iter()
            .enumerate()
        {
            let p50 = col(&rows[i], |x| x.p50);
            println!(
                "| {what}, {how} | {} | {} | {} | {} | {:+.2} | {} |",
                fmt3(&p50, 2),
                fmt3(&col(&rows[i], |x| x.p99), 2),
                fmt3(&col(&rows[i], |x| x.max), 0),
                fmt3(&col(&rows[i], |x| x.rps), 1),
                spread(&p50).1 - base,
                errs(&rows[i])
            );
        }
    }
    println!();
    println!("With one connection, req/s is the requests over the whole run, so time between requests counts too: wrk's POST runs often leave gaps between requests (up to about a request's own length; in some rounds none), direct as well as through unikgate; the percentiles and the longest request are per request.");
    println!();
    println!("Paired, {pairs} triples per round: direct, through unikgate, and direct again on a second connection, one after the other in a rotating order; the added time is the median of the differences between the first two, the control the median of the differences between the two direct ones. Two setups: Apache as installed, where each keep-alive connection is served by its own Apache process for its life (the control shows what that alone differs by), and the same Matomo behind an Apache with **one** PHP process and no keep-alive, so that every request of the three paths is served by the same process (each direct request then opens a connection, as unikgate does towards that Apache).");
    println!();
    println!("| signed in as alice | Apache | direct p50 ms | through unikgate p50 ms | added ms (median of the pairs' differences) | a second direct connection, same measure | unikgate's own time to the answer head, mean µs |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (setup, how) in [
        "as installed (keep-alive, a process per connection)",
        "one process, no keep-alive",
    ]
    .iter()
    .enumerate()
    {
        for (k, what) in ["dashboard page", "widget API call"].iter().enumerate() {
            let col = |f: fn(&Paired) -> f64| paired[setup][k].iter().map(f).collect::<Vec<_>>();
            println!(
                "| {what} | {how} | {} | {} | {} | {} | {} |",
                fmt3(&col(|x| x.0), 2),
                fmt3(&col(|x| x.1), 2),
                fmt3(&col(|x| x.2), 2),
                fmt3(&col(|x| x.3), 2),
                fmt3(&own[setup][k], 0)
            );
        }
    }
    println!();
    println!("Time outside Apache: from each measured request's time at the client, the time Apache logged for serving that request (`%D`, from reading the request to handing the whole answer to the socket) is taken away, which leaves the path (connecting, unikgate, passing the body on) and not PHP's time, which moves by milliseconds from one request to the next. Added = median over the pairs of (through unikgate − direct); the control is the same for the second direct connection.");
    println!();
    println!("| signed in as alice | Apache | direct, time outside Apache ms | added by unikgate ms | control: a second direct connection ms |");
    println!("|---|---|---:|---:|---:|");
    for (setup, how) in ["as installed", "one process, no keep-alive"]
        .iter()
        .enumerate()
    {
        for (k, what) in ["dashboard page", "widget API call"].iter().enumerate() {
            let col = |f: fn(&(f64, f64, f64)) -> f64| {
                outside[setup][k].iter().map(f).collect::<Vec<_>>()
            };
            println!(
                "| {what} | {how} | {} | {} | {} |",
                fmt3(&col(|x| x.2), 3),
                fmt3(&col(|x| x.0), 3),
                fmt3(&col(|x| x.1), 3),
            );
        }
    }
    println!();
    println!("unikgate's own time is read from its metrics listener around the paired requests: the time from a request's arrival to its answer head, less the time from sending it to Matomo to Matomo's answer head (`unikgate_request_seconds` − `unikgate_upstream_seconds`), averaged. The answer's body is passed on as it comes; its forwarding is not in that figure (it is in the added time).");
    println!();
    drop(children);
    for leftover in m.stop() {
        eprintln!("left running: {leftover}");
    }
}
