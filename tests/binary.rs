//! The `unikgate` binary itself: streaming without buffering (resident memory read from /proc),
//! `check`, `--help`, graceful shutdown.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::servers::free_port;
use support::StandIn;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_unikgate")
}

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

struct Proc(std::process::Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn(upstream: &str, dir: &std::path::Path) -> (Proc, String) {
    spawn_with(upstream, dir, "").await
}

async fn spawn_with(upstream: &str, dir: &std::path::Path, extra_server: &str) -> (Proc, String) {
    start(upstream, dir, extra_server, &[], "warn", Stdio::null()).await
}

/// Writes a configuration for `upstream` (SQLite under `dir`) and starts `unikgate serve`, through
/// `launcher` when it is not empty (e.g. `taskset -c 0`), with `UNIKGATE_LOG=log` and stderr to
/// `stderr`; returns once it answers `healthz`.
async fn start(
    upstream: &str,
    dir: &std::path::Path,
    extra_server: &str,
    launcher: &[&str],
    log: &str,
    stderr: Stdio,
) -> (Proc, String) {
    let port = free_port();
    let cfg = dir.join("unikgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n{extra_server}\n[upstream]\nurl = \"{upstream}\"\n[store]\nurl = \"sqlite://{}/data/unikgate.db\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let mut cmd = match launcher.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    let child = Proc(
        cmd.args(["serve", "-c"])
            .arg(&cfg)
            .env("UNIKGATE_LOG", log)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start unikgate through {launcher:?}: {e}")),
    );
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("{base}/_unikgate/healthz")).await {
            if r.status() == 200 {
                return (child, base);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("unikgate did not start");
}

/// Sends SIGTERM (with the `kill` command: no libc here) and waits up to 5 s for the exit.
async fn terminate(p: &mut Proc) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &p.0.id().to_string()])
        .status()
        .unwrap();
    for _ in 0..100 {
        if let Ok(Some(s)) = p.0.try_wait() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("unikgate did not exit on SIGTERM");
}

const SIZE: u64 = 200 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_megabytes_each_way_in_bounded_memory() {
    let m = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, base) = spawn(&m.url(), dir.path()).await;
    let pid = p.0.id();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Upload: a tracking bulk request streamed from a generator.
    let chunk = bytes::Bytes::from(vec![b'u'; 256 * 1024]);
    let n = SIZE / chunk.len() as u64;
    let stream =
        futures_util::stream::iter((0..n).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{base}/matomo.php"))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        v["bytes"].as_u64(),
        Some(SIZE),
        "Matomo received every byte"
    );
    // Download: a static asset, read chunk by chunk.
    let mut res = client
        .get(format!("{base}/plugins/StandIn/big.js?bytes={SIZE}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut got = 0u64;
    while let Some(c) = res.chunk().await.unwrap() {
        got += c.len() as u64;
    }
    assert_eq!(got, SIZE);
    sampler.abort();
    let peak_mib = peak.load(std::sync::atomic::Ordering::Relaxed) / 1024;
    eprintln!("unikgate peak RSS during 2 x 200 MB: {peak_mib} MiB");
    assert!(peak_mib > 0 && peak_mib < 64, "peak RSS {peak_mib} MiB");
}

#[test]
fn check_lists_every_mistake_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "[server]\npublic_url = \"ftp//nope\"\n[upstream]\nurl = \"http://127.0.0.1:8081\"\ntimeout = \"soon\"\n[session]\nidle_timout = \"1h\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(err.contains("server.public_url"), "{err}");
    assert!(err.contains("upstream.timeout"), "{err}");
    assert!(err.contains("session.idle_timout: unknown key"), "{err}");
    // The reference config is valid as shipped.
    let out = Command::new(bin())
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/unikgate.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn environment_overrides_and_typos_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[upstream]\nurl = \"http://127.0.0.1:8081\"\n").unwrap();
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&f)
        .env("UNIKGATE_PROVIDER__CLIENT_ID", "0123")
        .env("UNIKGATE_PROVIDER__CLIENT_SECRETT", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNIKGATE_PROVIDER__CLIENT_SECRETT"));
}

#[test]
fn check_names_exactly_the_missing_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[upstream]\nurl = \"http://127.0.0.1:8081\"\n").unwrap();
    let note = |env: &[(&str, &str)]| {
        let out = Command::new(bin())
            .args(["check", "-c"])
            .arg(&f)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let only_secret = note(&[("UNIKGATE_PROVIDER__CLIENT_ID", "0123")]);
    assert!(
        only_secret.contains("note: provider.client_secret (or client_secret_file) not set")
            && !only_secret.contains("provider.client_id"),
        "{only_secret}"
    );
    let both = note(&[]);
    assert!(
        both.contains("provider.client_id and provider.client_secret"),
        "{both}"
    );
    let none = note(&[
        ("UNIKGATE_PROVIDER__CLIENT_ID", "0123"),
        ("UNIKGATE_PROVIDER__CLIENT_SECRET", "s"),
    ]);
    assert!(!none.contains("note:"), "{none}");
}

/// The compose files of `deploy/`: every `UNIKGATE_*` variable they set is a real key (the binary's
/// `check` accepts them all, with `.env.example`'s values), every file they mount exists in the
/// repository, and `.env.example` names every variable they require.
#[test]
fn the_compose_files_set_real_keys_mount_real_files_and_document_their_variables() {
    use support::compose;
    let deploy = compose::deploy_dir();
    let example = compose::read_env_file(&deploy.join(".env.example"));
    let mut files = 0;
    for entry in std::fs::read_dir(&deploy).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("docker-compose") && name.ends_with(".yml")) {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        // docker-compose.fpm.yml is used on top of docker-compose.yml (`-f … -f …`).
        let base = (name == "docker-compose.fpm.yml")
            .then(|| std::fs::read_to_string(deploy.join("docker-compose.yml")).unwrap());
        for (var, required) in compose::variables(&text) {
            if required {
                assert!(
                    example.contains_key(&var),
                    "{name} requires {var}, which deploy/.env.example does not name"
                );
            }
        }
        let mut env = example.clone();
        env.insert("UNIKNAME_CLIENT_ID".into(), "client-id".into());
        let secrets = tempfile::tempdir().unwrap();
        for (file, content) in [
            ("client_secret", "a client secret".to_string()),
            ("shared_secret", "s".repeat(40)),
            ("session_key", "k".repeat(80)),
        ] {
            std::fs::write(secrets.path().join(file), content).unwrap();
        }
        for service in compose::services(&text) {
            for p in compose::mounted_paths(&text, &service) {
                assert!(
                    p.exists(),
                    "{name}: {service} mounts {}, which is not in the repository",
                    p.display()
                );
            }
            let mut merged = base
                .as_deref()
                .map(|b| compose::environment(b, &service))
                .unwrap_or_default();
            for (k, v) in compose::environment(&text, &service) {
                merged.retain(|(mk, _)| *mk != k);
                merged.push((k, v));
            }
            let vars: Vec<(String, String)> = merged
                .into_iter()
                .filter(|(k, _)| k.starts_with("UNIKGATE_"))
                .map(|(k, v)| {
                    let v = compose::substitute(&v, &env)
                        .unwrap_or_else(|e| panic!("{name}: {k}: {e}"))
                        .replace("/run/secrets", &secrets.path().display().to_string());
                    (k, v)
                })
                .collect();
            if vars.is_empty() {
                continue;
            }
            let out = Command::new(bin())
                .args([
                    "check",
                    "-c",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/config/unikgate.toml"),
                ])
                .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {service}'s environment is not a valid configuration:\n{}\n{vars:?}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(
        files >= 3,
        "the compose files were not found in {}",
        deploy.display()
    );
}

/// Logs written to a file (not a terminal) carry no escape codes.
#[tokio::test]
async fn logs_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("unikgate.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[store]\nurl = \"sqlite://{}/data/unikgate.db\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let log = dir.path().join("unikgate.log");
    let mut child = Proc(
        Command::new(bin())
            .args(["serve", "-c"])
            .arg(&cfg)
            .env("UNIKGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        // Unconfigured provider: a warning at start; then the listening line.
        if text.contains("fails closed") && text.contains("listening") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.0.kill();
    assert!(text.contains("fails closed"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in a log file:\n{text}"
    );
}

/// An error is logged once, where it ends (the edge), with what caused it and the request's id;
/// making it logs nothing (Matomo down: the pool's own error is the cause).
#[tokio::test]
async fn an_error_is_logged_once_at_the_edge_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("unikgate.log");
    let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
    // Port 9 (discard) answers nothing on loopback: connection refused.
    let (mut p, base) = start("http://127.0.0.1:9", dir.path(), "", &[], "warn", stderr).await;
    let res = reqwest::get(format!("{base}/matomo.js")).await.unwrap();
    assert_eq!(res.status(), 502);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    terminate(&mut p).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&id)).collect();
    assert_eq!(lines.len(), 1, "one line for the request:\n{text}");
    assert!(
        lines[0].contains("Matomo cannot be reached: http://127.0.0.1:9"),
        "the error and its cause: {}",
        lines[0]
    );
    assert_eq!(
        text.matches("Matomo cannot be reached").count(),
        1,
        "logged once:\n{text}"
    );
}

#[test]
fn help_names_every_command() {
    let out = Command::new(bin()).arg("--help").output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    for c in ["serve", "check", "doctor", "links"] {
        assert!(s.contains(c), "{s}");
    }
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("unikgate "));
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let m = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _base) = spawn(&m.url(), dir.path()).await;
    let s = terminate(&mut p).await;
    assert!(s.success(), "{s:?}");
}

#[tokio::test]
async fn metrics_on_their_own_listener_and_a_generated_session_key() {
    let m = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mport = free_port();
    let (_p, base) = spawn_with(
        &m.url(),
        dir.path(),
        &format!("metrics_listen = \"127.0.0.1:{mport}\""),
    )
    .await;
    reqwest::get(format!("{base}/matomo.php?idsite=1"))
        .await
        .unwrap();
    reqwest::get(format!("{base}/index.php?module=AutoLogin"))
        .await
        .unwrap();
    let text = reqwest::get(format!("http://127.0.0.1:{mport}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("unikgate_requests_total{class=\"public\",status=\"200\"}"),
        "{text}"
    );
    assert!(
        text.contains("unikgate_requests_total{class=\"forbidden\",status=\"403\"}"),
        "{text}"
    );
    assert!(text.contains("unikgate_upstream_seconds_bucket"), "{text}");
    // Not on the public listener.
    assert_eq!(
        reqwest::get(format!("{base}/_unikgate/metrics"))
            .await
            .unwrap()
            .status(),
        404
    );
    // The embedded default generated its session key once, private to its owner.
    let key = dir.path().join("data/session.key");
    let meta = std::fs::metadata(&key).expect("data/session.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&key).unwrap().trim().len(),
        128,
        "64 bytes, hex"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_inputs_leave_memory_bounded() {
    let m = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, base) = spawn(&m.url(), dir.path()).await;
    let pid = p.0.id();
    let c = support::unpooled();
    let mut peak = 0;
    for _ in 0..20 {
        let big_cookie = format!("x={}", "c".repeat(40 * 1024));
        assert_eq!(
            c.get(format!("{base}/index.php"))
                .header("cookie", big_cookie)
                .send()
                .await
                .unwrap()
                .status(),
            431
        );
        let long = format!("{base}/index.php?q={}", "u".repeat(20 * 1024));
        assert_eq!(c.get(long).send().await.unwrap().status(), 414);
        let form = c
            .post(format!("{base}/index.php"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("module=API&x={}", "f".repeat(2 * 1024 * 1024)));
        assert!(matches!(support::oversized(form).await, 413 | 0));
        let own = c
            .post(format!("{base}/_unikgate/link"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a".repeat(200 * 1024));
        assert!(matches!(support::oversized(own).await, 413 | 0));
        peak = peak.max(rss_kib(pid));
    }
    // And it still serves.
    assert_eq!(
        c.get(format!("{base}/_unikgate/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let peak_mib = peak / 1024;
    eprintln!("unikgate peak RSS under huge inputs: {peak_mib} MiB");
    assert!(peak_mib > 0 && peak_mib < 64, "peak RSS {peak_mib} MiB");
}

/// Pinned to one CPU, unikgate runs tokio's single-threaded scheduler (it says so when it starts),
/// and still serves requests side by side: the upstream below answers the first request only
/// after the second one has reached it, so a proxy that handled one request at a time would never
/// finish either. Then SIGTERM shuts it down cleanly.
#[tokio::test]
async fn on_one_cpu_the_single_threaded_scheduler_serves_requests_side_by_side() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = upstream.local_addr().unwrap().port();
    async fn read_head(s: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            buf.push(byte[0]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
    let server = tokio::spawn(async move {
        let (mut first, _) = upstream.accept().await.unwrap();
        let first_head = read_head(&mut first).await;
        let (mut second, _) = upstream.accept().await.unwrap();
        let second_head = read_head(&mut second).await;
        for (s, body) in [(&mut second, "second"), (&mut first, "first")] {
            let res = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(res.as_bytes()).await.unwrap();
        }
        (first_head, second_head)
    });

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("unikgate.log");
    let (mut p, base) = start(
        &format!("http://127.0.0.1:{up_port}"),
        dir.path(),
        "",
        &["taskset", "-c", "0"],
        "info",
        std::fs::File::create(&log).unwrap().into(),
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("scheduler=\"single-threaded\"") && text.contains("workers=1"),
        "{text}"
    );

    let client = reqwest::Client::new();
    let first = tokio::spawn(client.get(format!("{base}/matomo.js?n=1")).send());
    // Both at once: whichever reaches the upstream first is held there until the other arrives.
    let second = tokio::spawn(client.get(format!("{base}/matomo.js?n=2")).send());
    // A guard against a hang (the failure this test looks for), not a measurement.
    let both = tokio::time::timeout(Duration::from_secs(30), async {
        let a = first.await.unwrap().unwrap();
        let b = second.await.unwrap().unwrap();
        (a.text().await.unwrap(), b.text().await.unwrap())
    })
    .await
    .expect("both requests answered: one CPU still serves requests side by side");
    let mut bodies = [both.0, both.1];
    bodies.sort();
    assert_eq!(bodies, ["first".to_string(), "second".to_string()]);
    let (h1, h2) = server.await.unwrap();
    assert!(h1.starts_with("GET /matomo.js?n="), "{h1}");
    assert!(h2.starts_with("GET /matomo.js?n="), "{h2}");

    let s = terminate(&mut p).await;
    assert!(s.success(), "{s:?}");
}

/// The slow-body flood of the raw-socket probe, against the binary: 200 anonymous connections
/// trickle form bodies, then 200 send a body one byte short of 1 MiB and stall. Each is answered
/// 408 within `server.body_timeout` (or 503 once the bodies being read hold the whole body
/// budget), a signed-in user is served all along, the refusals are counted in the metrics, and
/// the resident memory comes back to within 10 MiB of where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_get_408_the_signed_in_user_is_served_and_memory_comes_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = StandIn::start().await;
    let p = support::provider::FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mport = free_port();
    let extra = format!(
        "body_timeout = \"3s\"\nmetrics_listen = \"127.0.0.1:{mport}\"\n[provider]\n{}\n[session]\nkey = \"{}\"\n",
        p.config(),
        support::TEST_KEY
    );
    let (proc, base) = spawn_with(&m.url(), dir.path(), &extra).await;
    let pid = proc.0.id();
    let b = support::Browser::new();
    let res = support::sign_in_at(&b, &base, &p, "alice-uns", "/").await;
    assert!(support::location(&res).contains("/_unikgate/link"));
    let res = support::link_password_at(&b, &base, "/", "alice", "alice-password").await;
    assert_eq!(res.status(), 302, "linked");
    for _ in 0..20 {
        assert_eq!(
            b.get(&format!("{base}/index.php?module=CoreHome"))
                .await
                .status(),
            200
        );
    }
    let start_kib = rss_kib(pid);

    // The signed-in user, every 100 ms while the floods last.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let user = {
        let (stop, base) = (stop.clone(), base.clone());
        tokio::spawn(async move {
            let mut served = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = b
                    .get(&format!("{base}/index.php?module=CoreHome&action=index"))
                    .await;
                assert_eq!(
                    r.status(),
                    200,
                    "the signed-in user is served during the flood"
                );
                served += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            served
        })
    };

    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    /// Sends the head and `first` of a 1 MiB form body, then one byte every 250 ms if `trickle`;
    /// returns the status answered (0: none before the connection closed).
    async fn slow(addr: std::net::SocketAddr, first: usize, trickle: bool) -> u16 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = "POST /index.php HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1048576\r\n\r\n";
        s.write_all(head.as_bytes()).await.unwrap();
        let body = vec![b'a'; first];
        let _ = s.write_all(&body).await;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // 15 s at the most: a guard against a hang (the failure looked for), not a measurement.
        for _ in 0..60 {
            if trickle {
                let _ = s.write_all(b"a").await;
            }
            match tokio::time::timeout(Duration::from_millis(250), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        String::from_utf8_lossy(&answer)
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
    let mut peak_kib = 0;
    for (what, first, trickle) in [
        ("trickling", 8, true),
        ("nearly 1 MiB then stalled", 1048575, false),
    ] {
        let floods: Vec<_> = (0..200)
            .map(|_| tokio::spawn(slow(addr, first, trickle)))
            .collect();
        let mut statuses = std::collections::BTreeMap::new();
        let mut sampling = tokio::time::interval(Duration::from_millis(200));
        let mut all = futures_util::future::join_all(floods);
        let results = loop {
            tokio::select! {
                r = &mut all => break r,
                _ = sampling.tick() => peak_kib = peak_kib.max(rss_kib(pid)),
            }
        };
        for r in results {
            *statuses.entry(r.unwrap()).or_insert(0) += 1;
        }
        eprintln!(
            "{what}: statuses {statuses:?}, peak RSS {} MiB, now {} MiB",
            peak_kib / 1024,
            rss_kib(pid) / 1024
        );
        let timeouts = statuses.get(&408).copied().unwrap_or(0);
        let busy = statuses.get(&503).copied().unwrap_or(0);
        assert_eq!(
            timeouts + busy,
            200,
            "{what}: every one answered 408 or 503: {statuses:?}"
        );
        if trickle {
            assert_eq!(timeouts, 200, "{what}: {statuses:?}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = user.await.unwrap();
    assert!(served > 10, "the user was served {served} times");

    let metrics = reqwest::get(format!("http://127.0.0.1:{mport}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("unikgate_timeouts_total{what=\"body\"}"),
        "{metrics}"
    );
    // Memory given back: within 10 MiB of the start, once the connections are gone.
    // The allocator gives freed memory back as the server goes on working: a few requests.
    let mut end_kib = rss_kib(pid);
    for _ in 0..50 {
        if end_kib <= start_kib + 10 * 1024 {
            break;
        }
        reqwest::get(format!("{base}/matomo.php?idsite=1"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        end_kib = rss_kib(pid);
    }
    eprintln!(
        "RSS: {} MiB at the start, {} MiB at the peak, {} MiB after",
        start_kib / 1024,
        peak_kib / 1024,
        end_kib / 1024
    );
    assert!(
        end_kib <= start_kib + 10 * 1024,
        "RSS {start_kib} KiB before, {end_kib} KiB after"
    );
}
