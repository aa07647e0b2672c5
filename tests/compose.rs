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

/// Waits until `url` answers `want` to `c`, for `secs` seconds at the most (a guard, not a
/// measure).
async fn wait_for(c: &reqwest::Client, url: &str, want: u16, secs: u64) -> R<()> {
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

/// How the stack is reached: HTTPS served by unikgate with a certificate from pebble (the compose
/// file's default, TLS_MODE=auto, with its ACME CA swapped for pebble), or plain HTTP
/// (TLS_MODE=off, as behind a proxy of one's own).
#[derive(Clone, Copy, PartialEq)]
enum Reach {
    Acme,
    Plain,
}

/// The name the stack over https is reached at (pebble's DNS is Docker's: unikgate's alias).
const DOMAIN: &str = "gate.unikgate.test";

/// pebble's configuration and certificates for the stack, in a folder its container mounts.
fn pebble_files(dir: &Path) -> R<()> {
    use std::os::unix::fs::PermissionsExt;
    let ca = support::ca::Ca::new("compose pebble");
    let (cert, key) = ca.leaf(&["pebble.test"]);
    let conf = serde_json::json!({"pebble": {
        "listenAddress": "0.0.0.0:14000",
        "managementListenAddress": "0.0.0.0:15000",
        "certificate": "/pebble/cert.pem",
        "privateKey": "/pebble/key.pem",
        // unikgate's own ports in its container (server.listen, server.http_listen).
        "tlsPort": 8080,
        "httpPort": 8081,
        "externalAccountBindingRequired": false,
    }});
    for (name, text) in [
        ("ca.pem", ca.pem.clone()),
        ("cert.pem", cert),
        ("key.pem", key),
        ("pebble.json", conf.to_string()),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| e.to_string())?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())
}

/// pebble's issuing root, from its management port (published on loopback).
async fn pebble_root(mgmt_port: u16, secs: u64) -> R<String> {
    let c = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match c
            .get(format!("https://127.0.0.1:{mgmt_port}/roots/0"))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => return r.text().await.map_err(|e| e.to_string()),
            _ if std::time::Instant::now() >= deadline => {
                return Err(format!("pebble's root did not come in {secs} s"))
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
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
async fn readme_compose_steps(files: &[&str], what: &str, gates: Gates, reach: Reach) -> R<()> {
    let mut stack = Stack::new(files)?;
    let result = readme_compose_steps_in(&mut stack, gates, reach).await;
    if let Err(e) = &result {
        eprintln!(
            "{what}: {e}\n--- the stack's last log lines:\n{}",
            stack.logs()
        );
    }
    stack.take_down();
    result.map_err(|e| format!("{what}: {e}"))
}

async fn readme_compose_steps_in(stack: &mut Stack, gates: Gates, reach: Reach) -> R<()> {
    let port = free_port();
    let provider_port = free_port();
    let mgmt_port = free_port();
    let (public_host, scheme) = match reach {
        Reach::Acme => (format!("{DOMAIN}:{port}"), "https"),
        Reach::Plain => (format!("127.0.0.1:{port}"), "http"),
    };
    let base = format!("{scheme}://{public_host}");
    let loopback = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let pebble_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    if reach == Reach::Acme {
        pebble_files(pebble_dir.path())?;
    }
    let shared_secret = unikgate::random_token();
    // 1. cp deploy/.env.example deploy/.env, then edit it.
    let mut env = support::compose::read_env_file(&stack.root().join("deploy/.env.example"));
    ensure!(
        env.get("PASSWORD_LOGIN").map(String::as_str) == Some("true"),
        ".env.example should start with PASSWORD_LOGIN=true (the installer must pass)"
    );
    for (k, v) in [
        ("PUBLIC_HOST", public_host.clone()),
        ("PUBLIC_SCHEME", scheme.into()),
        (
            "TLS_MODE",
            if reach == Reach::Acme { "auto" } else { "off" }.into(),
        ),
        // The stand-in images hold the real Matomo 5.1.2 (tests/containers/images).
        ("MATOMO_VERSION", "5.1.2".into()),
        ("UNIKNAME_CLIENT_ID", support::provider::CLIENT_ID.into()),
        ("MATOMO_DB_PASSWORD", unikgate::random_token()),
        ("POSTGRES_PASSWORD", unikgate::random_token()),
        // Published on loopback only.
        ("UNIKGATE_PORT", format!("127.0.0.1:{port}")),
        ("UNIKGATE_HTTP_PORT", format!("127.0.0.1:{}", free_port())),
        // pebble (tests/containers/compose.pebble.yml, in the stacks over https).
        ("PUBLIC_DOMAIN", DOMAIN.into()),
        ("PEBBLE_DIR", pebble_dir.path().display().to_string()),
        ("PEBBLE_MGMT_PORT", mgmt_port.to_string()),
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
    // The browser: it finds the public name and the provider on loopback and, over https,
    // trusts pebble's root only besides the public ones (the placeholder served before the
    // certificate is issued is refused).
    let root = match reach {
        Reach::Acme => Some(pebble_root(mgmt_port, 60).await?),
        Reach::Plain => None,
    };
    let b = Browser::reaching(
        &[
            (DOMAIN, loopback(port)),
            ("provider.test", loopback(provider_port)),
        ],
        root.as_deref(),
    );
    let c = &b.client;
    wait_for(c, &format!("{base}/_unikgate/healthz"), 200, 120).await?;
    let first_serial = match &root {
        Some(root) => Some(
            support::pebble::served(loopback(port), DOMAIN, root)
                .await
                .map(|(serial, alpn)| {
                    ensure_h2(&alpn);
                    serial
                })?,
        ),
        None => None,
    };
    wait_for(
        c,
        &format!("http://127.0.0.1:{provider_port}/oidc/.well-known/openid-configuration"),
        200,
        60,
    )
    .await?;
    // Matomo's container copies its tree on the first start: the installer answers after it.
    wait_for(c, &format!("{base}/index.php"), 200, 180).await?;
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
    support::real::web_installer_in(
        &b,
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
    wait_for(c, &format!("{base}/_unikgate/healthz"), 200, 60).await?;
    wait_for(c, &format!("{base}/_unikgate/readyz"), 200, 60).await?;
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
    if reach == Reach::Acme {
        // Plain HTTP on the published port 80 is sent to https.
        let http_port = env
            .get("UNIKGATE_HTTP_PORT")
            .and_then(|v| v.rsplit(':').next()?.parse::<u16>().ok())
            .ok_or("UNIKGATE_HTTP_PORT")?;
        let res = c
            .get(format!("http://{DOMAIN}:{http_port}/index.php?x=1"))
            .send()
            .await
            .map_err(|e| format!("plain http: {e}"))?;
        ensure!(
            res.status() == 301 && location(&res) == format!("{base}/index.php?x=1"),
            "plain http should be redirected to {base}: {} {}",
            res.status(),
            location(&res)
        );
    }
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
    wait_for(c, &format!("{base}/_unikgate/readyz"), 200, 120).await?;
    if let (Some(root), Some(first)) = (&root, &first_serial) {
        // The certificate on the volume, served again without a new order (pebble, restarted
        // too, has forgotten everything: a new order would chain to a root the browser does not
        // trust).
        let (again, _) = support::pebble::served(loopback(port), DOMAIN, root).await?;
        ensure!(
            again == *first,
            "after down and up, the stored certificate: {again} is not {first}"
        );
    }
    let (status, user) = page_user(&b, &format!("{base}{DASHBOARD}")).await;
    ensure!(
        status == 200 && user.as_deref() == Some(ADMIN.0),
        "after down and up, the same browser in Matomo as admin: {status} {user:?}"
    );
    Ok(())
}

/// HTTP/2 was negotiated.
fn ensure_h2(alpn: &Option<Vec<u8>>) {
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "HTTP/2 by ALPN");
}

const PROVIDER: &str = "tests/containers/compose.provider.yml";
const PEBBLE: &str = "tests/containers/compose.pebble.yml";

#[tokio::test]
#[ignore = "needs a Docker Engine and the stand-in images: tests/containers/compose runs it"]
async fn the_readme_compose_steps_with_apache_over_https_from_acme() {
    readme_compose_steps(
        &["deploy/docker-compose.yml", PROVIDER, PEBBLE],
        "docker-compose.yml over https (pebble)",
        Gates::One,
        Reach::Acme,
    )
    .await
    .unwrap();
}

#[tokio::test]
#[ignore = "needs a Docker Engine and the stand-in images: tests/containers/compose runs it"]
async fn the_readme_compose_steps_with_php_fpm_behind_nginx_and_plain_http() {
    readme_compose_steps(
        &[
            "deploy/docker-compose.yml",
            "deploy/docker-compose.fpm.yml",
            PROVIDER,
        ],
        "docker-compose.yml + docker-compose.fpm.yml, TLS_MODE=off",
        Gates::One,
        Reach::Plain,
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
        Reach::Plain,
    )
    .await
    .unwrap();
}
