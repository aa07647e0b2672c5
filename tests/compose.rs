//! The README's compose deployment as users run it: the compose files of `deploy/` with a real
//! Docker Engine and Compose (Debian's `docker-compose`), the image built by `--build`, a `.env`
//! made from `.env.example`, Matomo installed by its web installer through unikgate, then the
//! README's steps one by one, and a restart that keeps the link and the session.
//!
//! These tests need a Docker Engine and the stand-in images (`tests/containers/images`): they are
//! `#[ignore]`d in the plain `cargo test` and run by `tests/containers/compose`, the container stage
//! of `tests/run`. Everything runs on this machine: the containers are on networks the stack
//! creates, and only 127.0.0.1 ports are published. A stack is taken down with its volumes and
//! its image when its test ends, also when it fails (after printing the last log lines).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::real::{Database, ADMIN};
use support::{location, Browser};

type R<T> = Result<T, String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    support::servers::free_port()
}

/// A compose project in a copy of the checkout (the README's commands write `deploy/.env` and
/// `deploy/secrets/`; the checkout is left as it was).
struct Stack {
    dir: tempfile::TempDir,
    files: Vec<String>,
    project: String,
    down: bool,
}

impl Stack {
    /// Copies the files git knows (tracked, and untracked but not ignored) to a new folder.
    fn new(files: &[&str]) -> R<Stack> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let list = Command::new("git")
            .args([
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ])
            .current_dir(repo())
            .output()
            .map_err(|e| format!("git ls-files: {e}"))?;
        for name in list.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let name = String::from_utf8_lossy(name).into_owned();
            let from = repo().join(&name);
            if !from.is_file() {
                continue;
            }
            let to = dir.path().join(&name);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::copy(&from, &to).map_err(|e| format!("copy {name}: {e}"))?;
        }
        Ok(Stack {
            dir,
            files: files.iter().map(|f| f.to_string()).collect(),
            project: format!("ugc{}x{}", std::process::id(), free_port()),
            down: false,
        })
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `docker-compose -f FILE… ARGS` in the copy, the way the README says it; the output, or
    /// the error with the output.
    fn compose(&self, args: &[&str]) -> R<String> {
        // The project's name comes from deploy/.env (COMPOSE_PROJECT_NAME), as in the README.
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(self.root());
        for f in &self.files {
            cmd.args(["-f", f]);
        }
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| format!("docker-compose: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("docker-compose {} failed:\n{text}", args.join(" ")))
        }
    }

    /// The last lines each service logged (for a failure's report).
    fn logs(&self) -> String {
        self.compose(&["logs", "--no-color", "--tail", "40"])
            .unwrap_or_else(|e| e)
    }

    /// `deploy/.env` as the README's step 1 makes it: `.env.example` with `edits`.
    fn write_env(&self, env: &BTreeMap<String, String>) -> R<()> {
        let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(self.root().join("deploy/.env"), text).map_err(|e| e.to_string())
    }

    fn secret(&self, name: &str, value: &str, mode: u32) -> R<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.root().join("deploy/secrets").join(name);
        std::fs::write(&path, value).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| e.to_string())
    }

    fn take_down(&mut self) {
        if !self.down {
            self.down = true;
            let _ = self.compose(&["down", "-v", "--remove-orphans", "--rmi", "local"]);
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.take_down();
    }
}

/// Waits until `url` answers `want`, for `secs` seconds at the most (a guard, not a measure).
async fn wait_for(url: &str, want: u16, secs: u64) -> R<()> {
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        match c.get(url).send().await {
            Ok(r) if r.status().as_u16() == want => return Ok(()),
            Ok(r) => last = r.status().to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "{url} did not answer {want} in {secs} s (last: {last})"
    ))
}

/// Waits until unikgate in `service` says it is healthy (`unikgate healthcheck` inside it).
async fn healthy(stack: &Stack, service: &str, secs: u64) -> R<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match stack.compose(&["exec", "-T", service, "unikgate", "healthcheck"]) {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(format!("{service} is not healthy after {secs} s: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Waits until the balancer at `base` hands requests to two different replicas: their request
/// ids begin with a prefix of their own (random per process).
async fn both_in_rotation(base: &str, secs: u64) -> R<()> {
    let c = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut seen = std::collections::BTreeSet::new();
    while std::time::Instant::now() < deadline {
        if let Ok(r) = c.get(format!("{base}/_unikgate/healthz")).send().await {
            if let Some(prefix) = r
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split('-').next())
            {
                seen.insert(prefix.to_string());
                if seen.len() == 2 {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "the balancer did not hand requests to both replicas in {secs} s (seen: {seen:?})"
    ))
}

/// The login Matomo serves a page as, and the page's status.
async fn page_user(b: &Browser, url: &str) -> (u16, Option<String>) {
    let res = b.get(url).await;
    let (res, _) = b.follow(res, 6).await;
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    (status, unikgate::upstream::matomo::parse_user_login(&body))
}

const DASHBOARD: &str =
    "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday";

/// Signs in at `base` through the provider in the stack (as `login`), returning the answer of
/// unikgate's callback.
async fn sign_in(b: &Browser, base: &str, provider_port: u16, login: &str) -> reqwest::Response {
    let res = support::start_sign_in(b, base, "/").await;
    let res = support::provider::interact_at(b, provider_port, &location(&res), login, true).await;
    b.get(&location(&res)).await
}

/// How a stack serves: one unikgate, or two replicas behind the compose file's balancer.
#[derive(Clone, Copy, PartialEq)]
enum Gates {
    One,
    Replicas,
}

impl Gates {
    /// The service `exec` runs unikgate's commands in.
    fn service(self) -> &'static str {
        match self {
            Gates::One => "unikgate",
            Gates::Replicas => "unikgate-1",
        }
    }
}

/// The README's compose section, step by step, on the stack of `files`.
async fn readme_compose_steps(files: &[&str], what: &str, gates: Gates) -> R<()> {
    let mut stack = Stack::new(files)?;
    let result = readme_compose_steps_in(&mut stack, gates).await;
    if let Err(e) = &result {
        eprintln!(
            "{what}: {e}\n--- the stack's last log lines:\n{}",
            stack.logs()
        );
    }
    stack.take_down();
    result.map_err(|e| format!("{what}: {e}"))
}

async fn readme_compose_steps_in(stack: &mut Stack, gates: Gates) -> R<()> {
    let port = free_port();
    let provider_port = free_port();
    let public_host = format!("127.0.0.1:{port}");
    let base = format!("http://{public_host}");
    let shared_secret = unikgate::random_token();
    // 1. cp deploy/.env.example deploy/.env, then edit it.
    let mut env = support::compose::read_env_file(&stack.root().join("deploy/.env.example"));
    ensure!(
        env.get("PASSWORD_LOGIN").map(String::as_str) == Some("true"),
        ".env.example should start with PASSWORD_LOGIN=true (the installer must pass)"
    );
    for (k, v) in [
        ("PUBLIC_HOST", public_host.clone()),
        // No TLS in front yet: the stack on this machine, over http.
        ("PUBLIC_SCHEME", "http".into()),
        // The stand-in images hold the real Matomo 5.1.2 (tests/containers/images).
        ("MATOMO_VERSION", "5.1.2".into()),
        ("UNIKNAME_CLIENT_ID", support::provider::CLIENT_ID.into()),
        ("MATOMO_DB_PASSWORD", unikgate::random_token()),
        ("POSTGRES_PASSWORD", unikgate::random_token()),
        // Published on loopback only.
        ("UNIKGATE_PORT", format!("127.0.0.1:{port}")),
        ("COMPOSE_PROJECT_NAME", stack.project.clone()),
        // The test provider's service (tests/containers/compose.provider.yml).
        ("PROVIDER_PORT", provider_port.to_string()),
        (
            "PROVIDER_CLIENT_SECRET",
            support::provider::CLIENT_SECRET.into(),
        ),
        ("E2E_DIR", repo().join("tests/e2e").display().to_string()),
    ] {
        env.insert(k.into(), v);
    }
    stack.write_env(&env)?;
    // 2. The secrets, readable by the containers' users (uid 10001, www-data) as the README says.
    stack.secret("client_secret", support::provider::CLIENT_SECRET, 0o644)?;
    stack.secret("shared_secret", &shared_secret, 0o644)?;
    if gates == Gates::Replicas {
        // The key every replica signs cookies with (the replicas file's header says how).
        stack.secret("session_key", &unikgate::random_token().repeat(2), 0o644)?;
    }
    // 3. Start.
    stack.compose(&["up", "-d", "--build"])?;
    wait_for(&format!("{base}/_unikgate/healthz"), 200, 120).await?;
    wait_for(
        &format!("http://127.0.0.1:{provider_port}/oidc/.well-known/openid-configuration"),
        200,
        60,
    )
    .await?;
    // Matomo's container copies its tree on the first start: the installer answers after it.
    wait_for(&format!("{base}/index.php"), 200, 180).await?;
    // 4. Matomo's web installer, through unikgate, its database page prefilled by the container.
    let read_config = || {
        stack
            .compose(&[
                "exec",
                "-T",
                "matomo",
                "cat",
                "/var/www/html/config/config.ini.php",
            ])
            .map_err(|e| format!("no config.ini.php: {e}"))
    };
    support::real::web_installer_at(
        &base,
        Database::Prefilled {
            host: "db".into(),
            user: "matomo".into(),
            dbname: "matomo".into(),
        },
        read_config,
    )
    .await?;
    support::real::check_installed_behind_unikgate(&read_config()?)?;
    // 5. matomo-setup.sh as www-data (idempotent; prints no secret).
    let setup = [
        "exec",
        "-T",
        "-u",
        "www-data",
        "matomo",
        "bash",
        "/unikgate/matomo-setup.sh",
    ];
    let out = stack.compose(&setup)?;
    ensure!(
        !out.contains(&shared_secret),
        "matomo-setup.sh printed the secret:\n{out}"
    );
    let once = read_config()?;
    stack.compose(&setup)?;
    ensure!(
        read_config()? == once,
        "a second matomo-setup.sh run changed config.ini.php"
    );
    support::real::check_set_up(&once, &public_host, Some(&base))?;
    // 6. PASSWORD_LOGIN=false in deploy/.env, then up -d.
    env.insert("PASSWORD_LOGIN".into(), "false".into());
    stack.write_env(&env)?;
    stack.compose(&["up", "-d"])?;
    wait_for(&format!("{base}/_unikgate/healthz"), 200, 60).await?;
    wait_for(&format!("{base}/_unikgate/readyz"), 200, 60).await?;
    // 7. doctor --as admin, in the unikgate container.
    let out = stack.compose(&[
        "exec",
        "-T",
        gates.service(),
        "unikgate",
        "doctor",
        "-c",
        "/etc/unikgate/unikgate.toml",
        "--as",
        ADMIN.0,
    ])?;
    ensure!(out.contains("ok   mint"), "doctor --as admin:\n{out}");
    // 8. The first @unikname sign-in, and the link of the installer's superuser.
    let provider_addr: SocketAddr = ([127, 0, 0, 1], provider_port).into();
    let b = Browser::resolving("provider.test", provider_addr);
    let res = sign_in(&b, &base, provider_port, "compose-admin").await;
    ensure!(
        location(&res).contains("/_unikgate/link"),
        "the first sign-in should ask to link: {} {}",
        res.status(),
        location(&res)
    );
    let res = support::link_password_at(&b, &base, "/", ADMIN.0, ADMIN.1).await;
    ensure!(res.status() == 302, "linking admin: {}", res.status());
    let (status, user) = page_user(&b, &format!("{base}{DASHBOARD}")).await;
    ensure!(
        status == 200 && user.as_deref() == Some(ADMIN.0),
        "Matomo as admin after linking: {status} {user:?}"
    );
    // 9. Matomo's own "Sign out": unikgate's sign-out, then the provider's (RP-initiated logout,
    // which the provider asks to confirm), back on unikgate's "signed out" page.
    let res = b
        .get(&format!("{base}/index.php?module=Login&action=logout"))
        .await;
    let (res, at) = b.follow(res, 6).await;
    ensure!(
        res.status() == 200 && at.contains("/oidc/logout"),
        "Matomo's sign-out should reach the provider's logout: {at} ({})",
        res.status()
    );
    let page = reqwest::Url::parse(&at).map_err(|e| e.to_string())?;
    let (action, mut fields) = support::real::form_fields(&res.text().await.unwrap_or_default());
    fields.push(("logout".into(), "yes".into()));
    let confirm = page.join(&action).map_err(|e| e.to_string())?;
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let res = b.post(confirm.as_str(), &pairs).await;
    let (res, at) = b.follow(res, 6).await;
    ensure!(
        res.status() == 200 && at.contains("/_unikgate/signed_out"),
        "the provider's sign-out should end on unikgate's page: {at} ({})",
        res.status()
    );
    ensure!(
        page_user(&b, &format!("{base}{DASHBOARD}"))
            .await
            .1
            .is_none(),
        "signed out, Matomo is not served as anybody"
    );
    // Signed in again (the link is known now: straight into Matomo).
    let res = sign_in(&b, &base, provider_port, "compose-admin").await;
    ensure!(
        res.status() == 302 && !location(&res).contains("/_unikgate/link"),
        "the second sign-in should land in Matomo: {} {}",
        res.status(),
        location(&res)
    );
    if gates == Gates::Replicas {
        // Signed in through one replica, going on through the other: each in turn alone behind
        // the balancer, the same browser is Matomo's admin.
        for (stop, alone) in [("unikgate-1", "unikgate-2"), ("unikgate-2", "unikgate-1")] {
            stack.compose(&["stop", stop])?;
            let (status, user) = page_user(&b, &format!("{base}{DASHBOARD}")).await;
            ensure!(
                status == 200 && user.as_deref() == Some(ADMIN.0),
                "through {alone} alone: {status} {user:?}"
            );
            stack.compose(&["start", stop])?;
            // Up again itself (the balancer's answer may come from the other one), and back in
            // the balancer's rotation (it re-reads the replicas' addresses every 5 s).
            healthy(stack, stop, 60).await?;
            both_in_rotation(&base, 60).await?;
        }
    }
    // 10. down, then up: the link and this browser's session are on their volumes.
    stack.compose(&["down"])?;
    stack.compose(&["up", "-d"])?;
    wait_for(&format!("{base}/_unikgate/readyz"), 200, 120).await?;
    let (status, user) = page_user(&b, &format!("{base}{DASHBOARD}")).await;
    ensure!(
        status == 200 && user.as_deref() == Some(ADMIN.0),
        "after down and up, the same browser in Matomo as admin: {status} {user:?}"
    );
    Ok(())
}

const PROVIDER: &str = "tests/containers/compose.provider.yml";

#[tokio::test]
#[ignore = "needs a Docker Engine and the stand-in images: tests/containers/compose runs it"]
async fn the_readme_compose_steps_with_apache() {
    readme_compose_steps(
        &["deploy/docker-compose.yml", PROVIDER],
        "docker-compose.yml",
        Gates::One,
    )
    .await
    .unwrap();
}

#[tokio::test]
#[ignore = "needs a Docker Engine and the stand-in images: tests/containers/compose runs it"]
async fn the_readme_compose_steps_with_php_fpm_behind_nginx() {
    readme_compose_steps(
        &[
            "deploy/docker-compose.yml",
            "deploy/docker-compose.fpm.yml",
            PROVIDER,
        ],
        "docker-compose.yml + docker-compose.fpm.yml",
        Gates::One,
    )
    .await
    .unwrap();
}

#[tokio::test]
#[ignore = "needs a Docker Engine and the stand-in images: tests/containers/compose runs it"]
async fn the_replicas_file_two_unikgates_on_postgresql_and_redis() {
    readme_compose_steps(
        &[
            "deploy/docker-compose.replicas.yml",
            "tests/containers/compose.provider.replicas.yml",
        ],
        "docker-compose.replicas.yml",
        Gates::Replicas,
    )
    .await
    .unwrap();
}
