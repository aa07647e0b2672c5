//! The seed's journey in a real browser: real processes (the unikgate binary, the Matomo stand-in
//! as its own process, `oidc-provider`), Debian's chromium driven by `tests/e2e/journey.mjs`.
//! Screenshots land in `docs/screenshots/` (the README shows them).

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::provider::{node_dir, NodeProvider};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

async fn wait_http(url: &str) {
    for _ in 0..200 {
        if reqwest::get(url).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_journey_in_chromium() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed: run tests/run (it installs it)"
    );
    let standin = example("matomo-standin");
    assert!(
        standin.exists(),
        "{} missing: run tests/run (it builds the examples first: cargo build --examples)",
        standin.display()
    );
    let mport = free_port();
    let _matomo = Kill(
        Command::new(&standin)
            .arg(format!("127.0.0.1:{mport}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let provider = NodeProvider::start(
        &[format!("{base}/_unikgate/callback")],
        &[format!("{base}/_unikgate/sign_in?signed_out=1")],
    )
    .await;
    wait_http(&format!("http://127.0.0.1:{mport}/robots.txt")).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("unikgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\n[upstream]\nurl = \"http://127.0.0.1:{mport}\"\n[provider]\n{}[store]\nurl = \"sqlite://{}/data/unikgate.db\"\n",
            provider.config_discovery(),
            dir.path().display()
        ),
    )
    .unwrap();
    let _unikgate = Kill(
        Command::new(env!("CARGO_BIN_EXE_unikgate"))
            .args(["serve", "-c"])
            .arg(&cfg)
            .env("UNIKGATE_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    wait_http(&format!("{base}/_unikgate/healthz")).await;
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    let out = tokio::process::Command::new("node")
        .arg(node_dir().join("journey.mjs"))
        .env("BASE", &base)
        .env("SHOTS", &shots)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser journey failed:\n{stdout}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(shots.join("05-matomo-as-alice-mobile.png").exists());
}
