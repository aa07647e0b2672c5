//! A real Matomo 5.1.2 for the tests: unpacked from `../shared/matomo/` (checksum verified) or
//! from `MATOMO_ARCHIVE`, served on loopback by its own MariaDB, Apache with mod_php, and nginx with
//! PHP-FPM, all in one temporary folder; installed once by driving the web installer as a person
//! would. Everything it starts is stopped by PID when [`RealMatomo::stop`] runs, and by a reaper
//! process if the test process dies first.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Browser;

pub const MATOMO_VERSION: &str = "5.1.2";
pub const ADMIN: (&str, &str) = ("admin", "admin-Passw0rd-real");
pub const ALICE: (&str, &str) = ("alice", "alice-Passw0rd-real");
pub const BOB: (&str, &str) = ("bob", "bob-Passw0rd-real");
/// The secret shared with the UnikGate plugin (written to a file matomo-setup.sh reads).
pub const SHARED_SECRET: &str = "real-matomo-shared-secret-0123456789abcdef";
/// How many unikgates the suite may start in front of Matomo.
const GATE_PORTS: usize = 64;
const DB: (&str, &str, &str) = ("matomo", "matomo", "matomo-db-pw");

type R<T> = Result<T, String>;

/// What the harness needs from Debian, and the package that brings it.
const NEEDS: &[(&str, &str)] = &[
    ("/usr/sbin/mariadbd", "mariadb-server"),
    ("/usr/sbin/apache2", "apache2"),
    (
        "/usr/lib/apache2/modules/libphp8.2.so",
        "libapache2-mod-php",
    ),
    ("/usr/sbin/php-fpm8.2", "php-fpm"),
    ("/usr/sbin/nginx", "nginx"),
    ("/usr/bin/php", "php-cli"),
    ("/usr/bin/xz", "xz-utils"),
];

pub struct RealMatomo {
    /// The temporary folder holding everything (removed at stop).
    pub root: PathBuf,
    /// Matomo's document root.
    pub tree: PathBuf,
    /// Apache + mod_php.
    pub apache: String,
    /// nginx + PHP-FPM (the same tree and database).
    pub fpm: String,
    pub db_port: u16,
    pub db_socket: PathBuf,
    /// A superuser token (UsersManager.createAppSpecificTokenAuth), for the harness's API calls.
    pub admin_token: String,
    /// `[General] salt`: `i_am_super_user=<salt>` shows PHP errors on Matomo's fatal-error page.
    pub salt: String,
    pub secret_file: PathBuf,
    /// What `deploy/matomo-setup.sh` printed on its runs.
    pub setup_output: String,
    /// The archive holds the AutoLogin plugin (activated then), for the `autologin` tests.
    pub has_autologin: bool,
    procs: std::sync::Mutex<Vec<(String, Child)>>,
    /// Loopback listeners for the unikgates in front, held from the start: Matomo trusts a host
    /// with its port only when `trusted_hosts[]` names it, so each port is registered once.
    listeners: std::sync::Mutex<Vec<std::net::TcpListener>>,
    reaper: std::sync::Mutex<Option<Child>>,
    pub install_seconds: f64,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn is_root() -> bool {
    // SAFETY-free: read our effective uid from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> R<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

fn run(cmd: &mut Command, what: &str) -> R<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("{what} failed ({}):\n{text}", out.status));
    }
    Ok(text)
}

fn sha256_file(p: &Path) -> R<String> {
    use sha2::Digest;
    let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// The archive to unpack: `MATOMO_ARCHIVE`, or `../shared/matomo/matomo-5.1.2.tar.xz` checked
/// against its `SHA256SUMS`.
fn archive() -> R<PathBuf> {
    if let Ok(p) = std::env::var("MATOMO_ARCHIVE") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(format!("MATOMO_ARCHIVE={} is not a file", p.display()));
        }
        return Ok(p);
    }
    let dir = repo().join("../shared/matomo");
    let p = dir.join(format!("matomo-{MATOMO_VERSION}.tar.xz"));
    if !p.is_file() {
        return Err(format!(
            "no Matomo {MATOMO_VERSION} to test against: {} is missing. Put the official release \
             there, or point MATOMO_ARCHIVE at the official release zip \
             (https://builds.matomo.org/matomo-{MATOMO_VERSION}.zip) or a tarball of it.",
            p.display()
        ));
    }
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS"))
        .map_err(|e| format!("{}/SHA256SUMS: {e}", dir.display()))?;
    let want = sums
        .lines()
        .find(|l| l.ends_with(&format!("matomo-{MATOMO_VERSION}.tar.xz")))
        .and_then(|l| l.split_whitespace().next())
        .ok_or("SHA256SUMS does not name the archive")?;
    let got = sha256_file(&p)?;
    if got != want {
        return Err(format!(
            "{}: checksum {got} is not the expected {want}",
            p.display()
        ));
    }
    Ok(p)
}

/// Unpacks the archive into `dest` and returns the Matomo folder (the one holding `index.php`).
fn unpack(archive: &Path, dest: &Path) -> R<PathBuf> {
    let name = archive.to_string_lossy().to_string();
    let mut cmd = if name.ends_with(".zip") {
        let mut c = Command::new("unzip");
        c.arg("-q").arg(archive).arg("-d").arg(dest);
        c
    } else {
        let mut c = Command::new("tar");
        c.arg("xaf").arg(archive).arg("-C").arg(dest);
        c
    };
    run(&mut cmd, "unpacking Matomo")?;
    for entry in std::fs::read_dir(dest).map_err(|e| e.to_string())? {
        let p = entry.map_err(|e| e.to_string())?.path();
        if p.join("index.php").is_file() && p.join("core").is_dir() {
            return Ok(p);
        }
    }
    Err("the archive holds no Matomo folder (index.php + core/)".into())
}

impl RealMatomo {
    /// Waits until `port` accepts connections, or the process `what` ended.
    async fn wait_tcp(&self, port: u16, what: &str, log: &Path) -> R<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let ended = self
                .procs
                .lock()
                .map_err(|e| e.to_string())?
                .iter_mut()
                .find(|(n, _)| n == what)
                .and_then(|(_, c)| c.try_wait().ok().flatten());
            if let Some(status) = ended {
                return Err(format!(
                    "{what} ended ({status}) before listening; its log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                ));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "{what} did not listen on 127.0.0.1:{port} within 60 s; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ))
    }
}

/// Every `<input>` and `<select>` of the first `<form>` in `html`, with the values a browser
/// would send (submit buttons included), and the form's action.
pub fn form_fields(html: &str) -> (String, Vec<(String, String)>) {
    let start = html.find("<form").unwrap_or(0);
    let end = html[start..]
        .find("</form>")
        .map(|e| start + e)
        .unwrap_or(html.len());
    let form = &html[start..end];
    let tag_end = form.find('>').unwrap_or(form.len());
    let action = attr(&form[..tag_end], "action").unwrap_or_default();
    let mut fields = Vec::new();
    let mut rest = form;
    while let Some(i) = rest.find('<') {
        rest = &rest[i..];
        let close = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..close];
        let lower = tag.to_ascii_lowercase();
        if lower.starts_with("<input") {
            let ty = attr(tag, "type").unwrap_or_default().to_ascii_lowercase();
            if let Some(name) = attr(tag, "name") {
                let checked = lower.contains(" checked");
                if !matches!(ty.as_str(), "checkbox" | "radio") || checked {
                    fields.push((name, attr(tag, "value").unwrap_or_default()));
                }
            }
        } else if lower.starts_with("<select") {
            if let Some(name) = attr(tag, "name") {
                let body_end = rest.find("</select>").unwrap_or(rest.len());
                let body = &rest[..body_end];
                let mut value = None;
                let mut first = None;
                let mut o = body;
                while let Some(j) = o.find("<option") {
                    o = &o[j..];
                    let oc = o.find('>').unwrap_or(o.len());
                    let otag = &o[..oc];
                    let v = attr(otag, "value").unwrap_or_default();
                    first.get_or_insert(v.clone());
                    if otag.contains("selected") {
                        value = Some(v);
                    }
                    o = &o[oc..];
                }
                fields.push((name, value.or(first).unwrap_or_default()));
            }
        }
        rest = &rest[close.min(rest.len())..];
        if rest.len() <= 1 {
            break;
        }
        rest = &rest[1..];
    }
    (action, fields)
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(&format!("{name}=")) {
        let at = from + i;
        from = at + 1;
        // a whole attribute name, not the end of another one
        if at > 0 && !lower.as_bytes()[at - 1].is_ascii_whitespace() {
            continue;
        }
        let v = &tag[at + name.len() + 1..];
        let (q, body) = match v.chars().next() {
            Some(c @ ('"' | '\'')) => (c, &v[1..]),
            _ => {
                let e = v.find([' ', '>', '/']).unwrap_or(v.len());
                return Some(html_unescape(&v[..e]));
            }
        };
        let e = body.find(q).unwrap_or(body.len());
        return Some(html_unescape(&body[..e]));
    }
    None
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#039;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn set(fields: &mut Vec<(String, String)>, name: &str, value: &str) {
    match fields.iter_mut().find(|(k, _)| k == name) {
        Some(f) => f.1 = value.to_string(),
        None => fields.push((name.to_string(), value.to_string())),
    }
}

impl RealMatomo {
    /// Starts the database and both web servers and installs Matomo. Fails with what to do when a
    /// piece is missing; never skips.
    pub async fn start() -> R<RealMatomo> {
        let missing: Vec<&str> = NEEDS
            .iter()
            .filter(|(p, _)| !Path::new(p).exists())
            .map(|(_, pkg)| *pkg)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the real-Matomo tests need Debian packages that are not installed: {} (tests/run installs them: apt-get install {})",
                missing.join(" "),
                missing.join(" ")
            ));
        }
        let archive = archive()?;
        let began = Instant::now();
        let root = std::env::temp_dir().join(format!(
            "unikgate-real-matomo-{}-{}",
            std::process::id(),
            &unikgate::random_token()[..8]
        ));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        set_mode(&root, 0o755)?;
        let mut m = RealMatomo {
            tree: PathBuf::new(),
            apache: String::new(),
            fpm: String::new(),
            db_port: 0,
            db_socket: root.join("db/mysqld.sock"),
            admin_token: String::new(),
            salt: String::new(),
            secret_file: root.join("shared_secret"),
            setup_output: String::new(),
            has_autologin: false,
            procs: Default::default(),
            listeners: Default::default(),
            reaper: Default::default(),
            install_seconds: 0.0,
            root,
        };
        m.start_reaper()?;
        match m.bring_up(&archive).await {
            Ok(()) => {
                m.install_seconds = began.elapsed().as_secs_f64();
                Ok(m)
            }
            Err(e) => {
                m.stop();
                Err(e)
            }
        }
    }

    async fn bring_up(&mut self, archive: &Path) -> R<()> {
        self.tree = unpack(archive, &self.root)?;
        self.start_db().await?;
        self.start_apache().await?;
        self.start_fpm().await?;
        self.install().await?;
        self.add_users().await?;
        self.setup_plugins()?;
        self.trust_gate_ports()
    }

    /// A process that outlives a crashed test process just long enough to stop what it started.
    fn start_reaper(&self) -> R<()> {
        let pids = self.root.join("pids");
        std::fs::write(&pids, "").map_err(|e| e.to_string())?;
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
             [ -f '{p}' ] || exit 0; for p in $(cat '{p}'); do kill $p 2>/dev/null; done; sleep 3; \
             for p in $(cat '{p}'); do kill -9 $p 2>/dev/null; done; rm -rf '{root}'",
            me = std::process::id(),
            p = pids.display(),
            root = self.root.display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("reaper: {e}"))?;
        *self.reaper.lock().map_err(|e| e.to_string())? = Some(child);
        Ok(())
    }

    fn spawn(&self, name: &str, cmd: &mut Command, log: &Path) -> R<()> {
        use std::os::unix::process::CommandExt;
        // A process group of its own: Apache signals its whole group when it stops, which would
        // otherwise include this test process.
        cmd.process_group(0);
        let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{name}: cannot start: {e}"))?;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.root.join("pids"))
            .map_err(|e| e.to_string())?;
        writeln!(f, "{}", child.id()).map_err(|e| e.to_string())?;
        self.procs
            .lock()
            .map_err(|e| e.to_string())?
            .push((name.to_string(), child));
        Ok(())
    }

    async fn start_db(&mut self) -> R<()> {
        let data = self.root.join("db");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let user = if is_root() { "mysql" } else { "" };
        if is_root() {
            run(
                Command::new("chown").args(["-R", "mysql:mysql"]).arg(&data),
                "chown db",
            )?;
        }
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db");
        if !user.is_empty() {
            install.arg(format!("--user={user}"));
        }
        run(&mut install, "mariadb-install-db")?;
        self.db_port = free_port()?;
        let log = self.root.join("mariadb.log");
        let mut cmd = Command::new("/usr/sbin/mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", self.db_socket.display()))
            .arg(format!("--port={}", self.db_port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--pid-file={}", data.join("mariadb.pid").display()))
            .arg("--skip-name-resolve")
            .arg("--innodb-buffer-pool-size=64M")
            .arg("--skip-log-bin");
        if !user.is_empty() {
            cmd.arg(format!("--user={user}"));
        }
        self.spawn("mariadb", &mut cmd, &log)?;
        self.wait_tcp(self.db_port, "mariadb", &log).await?;
        self.sql(&format!(
            "CREATE DATABASE {db} CHARACTER SET utf8mb4; \
             CREATE USER '{u}'@'127.0.0.1' IDENTIFIED BY '{pw}'; \
             GRANT ALL PRIVILEGES ON {db}.* TO '{u}'@'127.0.0.1';",
            db = DB.0,
            u = DB.1,
            pw = DB.2
        ))?;
        Ok(())
    }

    /// Runs SQL as MariaDB's root over the socket; returns the tab-separated rows.
    pub fn sql(&self, statements: &str) -> R<String> {
        run(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.db_socket.display()))
                .args(["-u", "root", "-N", "-B", "-e"])
                .arg(statements),
            "mariadb",
        )
    }

    async fn start_apache(&mut self) -> R<()> {
        let tree = self.tree.clone();
        self.apache = self
            .apache_for(&tree, "apache", free_port()?, PREFORK)
            .await?;
        Ok(())
    }

    /// A second Apache + mod_php for the installed Matomo with **one** PHP process and no
    /// keep-alive, on a port Matomo trusts: every request, whichever connection carries it, is
    /// served by the same process (for benchmarks pairing two paths to Matomo, where prefork's
    /// one-process-per-connection would otherwise decide a difference of milliseconds).
    pub async fn one_process_apache(&self) -> R<String> {
        let port = {
            let l = self.gate_listener();
            l.local_addr().map_err(|e| e.to_string())?.port()
        };
        let tree = self.tree.clone();
        self.apache_for(&tree, "apache-one", port, ONE_PROCESS)
            .await
    }

    /// An Apache + mod_php serving `tree` on loopback `port`, its files in `<root>/<name>`, with
    /// the given prefork settings.
    async fn apache_for(&self, tree: &Path, name: &str, port: u16, mpm: &str) -> R<String> {
        let d = self.root.join(name);
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        let m = "/usr/lib/apache2/modules";
        let user = if is_root() {
            "User www-data\nGroup www-data\n"
        } else {
            ""
        };
        let conf = format!(
            r#"ServerRoot "{d}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{d}/apache.pid"
DefaultRuntimeDir "{d}"
Mutex file:{d}
ErrorLog "{d}/error.log"
LogLevel warn
{user}LoadModule mpm_prefork_module {m}/mod_mpm_prefork.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule authz_host_module {m}/mod_authz_host.so
LoadModule access_compat_module {m}/mod_access_compat.so
LoadModule authn_core_module {m}/mod_authn_core.so
LoadModule dir_module {m}/mod_dir.so
LoadModule mime_module {m}/mod_mime.so
LoadModule env_module {m}/mod_env.so
LoadModule headers_module {m}/mod_headers.so
LoadModule setenvif_module {m}/mod_setenvif.so
LoadModule rewrite_module {m}/mod_rewrite.so
LoadModule alias_module {m}/mod_alias.so
LoadModule php_module {m}/libphp8.2.so
{mpm}
TypesConfig /etc/mime.types
DocumentRoot "{tree}"
# The same tree under a path too, as organisations serve Matomo at https://example.org/analytics/
# (the journey under a path; Matomo's stored URL is not rewritten for 127.0.0.1).
Alias /analytics "{tree}"
DirectoryIndex index.php index.html
<Directory />
  AllowOverride None
  Require all denied
</Directory>
<Directory "{tree}">
  Options FollowSymLinks
  AllowOverride All
  Require all granted
</Directory>
<FilesMatch "\.php$">
  SetHandler application/x-httpd-php
</FilesMatch>
php_admin_value opcache.revalidate_freq 0
php_admin_value error_log "{d}/php.log"
# Benchmarks mark their requests with `ugbench=<id>` in the query: for those only, the time
# Apache took to serve each (µs), so that a client can subtract it from what it measured.
LogFormat "%q %D" ugbench
CustomLog "{d}/bench.log" ugbench "expr=%{{QUERY_STRING}} =~ /(^|&)ugbench=/"
"#,
            d = d.display(),
            tree = tree.display(),
        );
        let conf_path = d.join("apache.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let log = d.join("stdout.log");
        self.spawn(
            name,
            Command::new("/usr/sbin/apache2")
                .arg("-f")
                .arg(&conf_path)
                .arg("-DFOREGROUND")
                .env_remove("APACHE_CONFDIR"),
            &log,
        )?;
        self.wait_tcp(port, name, &d.join("error.log")).await?;
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// A second Matomo, unpacked but not installed, with its own empty database and its own
    /// Apache + mod_php (for the compose rehearsal, which installs it through unikgate).
    pub async fn fresh_site(&self, name: &str) -> R<FreshSite> {
        let dir = self.root.join(format!("{name}-tree"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let tree = unpack(&archive()?, &dir)?;
        copy_dir(
            &repo().join("matomo-plugin/UnikGate"),
            &tree.join("plugins/UnikGate"),
        )?;
        if is_root() {
            run(
                Command::new("chown")
                    .args(["-R", "www-data:www-data"])
                    .arg(&tree),
                "chown the fresh tree",
            )?;
        }
        let db = format!("matomo_{name}");
        self.sql(&format!(
            "CREATE DATABASE {db} CHARACTER SET utf8mb4; GRANT ALL PRIVILEGES ON {db}.* TO '{u}'@'127.0.0.1';",
            u = DB.1
        ))?;
        let url = self.apache_for(&tree, name, free_port()?, PREFORK).await?;
        Ok(FreshSite { tree, url, db })
    }

    async fn start_fpm(&mut self) -> R<()> {
        let d = self.root.join("fpm");
        std::fs::create_dir_all(d.join("tmp")).map_err(|e| e.to_string())?;
        let sock = d.join("php-fpm.sock");
        let (user, listen_owner) = if is_root() {
            (
                "user = www-data\ngroup = www-data\n",
                "listen.owner = www-data\nlisten.group = www-data\n",
            )
        } else {
            ("", "")
        };
        let fpm_conf = format!(
            r#"[global]
pid = {d}/php-fpm.pid
error_log = {d}/php-fpm.log
daemonize = no
[matomo]
{user}listen = {sock}
{listen_owner}listen.mode = 0660
pm = dynamic
pm.max_children = 12
pm.start_servers = 2
pm.min_spare_servers = 1
pm.max_spare_servers = 4
catch_workers_output = yes
php_admin_value[error_log] = {d}/php.log
php_admin_value[opcache.revalidate_freq] = 0
"#,
            d = d.display(),
            sock = sock.display()
        );
        std::fs::write(d.join("php-fpm.conf"), fpm_conf).map_err(|e| e.to_string())?;
        self.spawn(
            "php-fpm",
            Command::new("/usr/sbin/php-fpm8.2")
                .arg("-F")
                .arg("-y")
                .arg(d.join("php-fpm.conf"))
                .arg("-p")
                .arg(&d),
            &d.join("stdout.log"),
        )?;
        let port = free_port()?;
        let nginx_user = if is_root() { "user www-data;\n" } else { "" };
        let t = d.join("tmp");
        let conf = format!(
            r#"{nginx_user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  access_log off;
  client_body_temp_path {t}/body;
  proxy_temp_path {t}/proxy;
  fastcgi_temp_path {t}/fastcgi;
  uwsgi_temp_path {t}/uwsgi;
  scgi_temp_path {t}/scgi;
  client_max_body_size 16m;
  server {{
    listen 127.0.0.1:{port};
    root {tree};
    index index.php;
    location ~ ^/(index|matomo|piwik|js/index|plugins/HeatmapSessionRecording/configs)\.php(/|$) {{
      fastcgi_split_path_info ^(.+\.php)(/.*)$;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
      fastcgi_param PATH_INFO $fastcgi_path_info;
      fastcgi_param HTTP_PROXY "";
      # Debian's fastcgi_params passes $host (no port); Matomo must see the Host unikgate sent.
      fastcgi_param HTTP_HOST $http_host;
      fastcgi_pass unix:{sock};
    }}
    location ~* ^.+\.php$ {{ return 403; }}
    location ~ ^/(config|tmp|core|lang)/ {{ return 403; }}
    location ~ /\.ht {{ return 403; }}
    location / {{ try_files $uri $uri/ =404; }}
  }}
}}
"#,
            d = d.display(),
            t = t.display(),
            tree = self.tree.display(),
            sock = sock.display()
        );
        std::fs::write(d.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
        if is_root() {
            run(
                Command::new("chown")
                    .args(["-R", "www-data:www-data"])
                    .arg(&t),
                "chown nginx tmp",
            )?;
        }
        let start = Instant::now();
        while !sock.exists() {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "PHP-FPM did not open its socket; its log:\n{}",
                    std::fs::read_to_string(d.join("php-fpm.log")).unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.spawn(
            "nginx",
            Command::new("/usr/sbin/nginx")
                .arg("-p")
                .arg(&d)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .arg("-e")
                .arg(d.join("nginx-error.log")),
            &d.join("nginx-stdout.log"),
        )?;
        self.wait_tcp(port, "nginx", &d.join("nginx-error.log"))
            .await?;
        self.fpm = format!("http://127.0.0.1:{port}");
        Ok(())
    }

    /// Runs a command in Matomo's folder as the web server's user.
    pub fn as_web_user(&self, script: &str) -> R<String> {
        as_web_user_in(&self.tree, script)
    }

    /// `./console ARGS` as the web server's user.
    pub fn console(&self, args: &str) -> R<String> {
        self.as_web_user(&format!("php ./console --no-ansi {args}"))
    }

    async fn install(&mut self) -> R<()> {
        if is_root() {
            run(
                Command::new("chown")
                    .args(["-R", "www-data:www-data"])
                    .arg(&self.tree),
                "chown the Matomo tree",
            )?;
        }
        let base = self.apache.clone();
        let tree = self.tree.clone();
        self.salt = self.web_installer(&base, DB.0, &tree).await?;
        Ok(())
    }

    /// Matomo's web installer at `base` (Matomo itself, or a unikgate in front of it), page after
    /// page, as a person would fill it: database `dbname`, the superuser [`ADMIN`], site 1.
    /// Returns `[General] salt`.
    pub async fn web_installer(&self, base: &str, dbname: &str, tree: &Path) -> R<String> {
        let db = Database::Set {
            host: format!("127.0.0.1:{}", self.db_port),
            user: DB.1.to_string(),
            password: DB.2.to_string(),
            dbname: dbname.to_string(),
        };
        let config = tree.join("config/config.ini.php");
        web_installer_at(base, db, || {
            std::fs::read_to_string(&config)
                .map_err(|e| format!("the installer wrote no config.ini.php: {e}"))
        })
        .await
    }

    /// Calls Matomo's API as the superuser (POST, token in the body).
    pub async fn api(&self, method: &str, params: &[(&str, &str)]) -> R<serde_json::Value> {
        let mut form: Vec<(&str, &str)> = vec![("token_auth", &self.admin_token)];
        form.extend_from_slice(params);
        api_call(&self.apache, method, &form).await
    }

    async fn add_users(&mut self) -> R<()> {
        let v = api_call(
            &self.apache,
            "UsersManager.createAppSpecificTokenAuth",
            &[
                ("userLogin", ADMIN.0),
                ("passwordConfirmation", ADMIN.1),
                ("description", "test harness"),
            ],
        )
        .await?;
        self.admin_token = v
            .get("value")
            .and_then(|t| t.as_str())
            .ok_or_else(|| format!("no superuser token: {v}"))?
            .to_string();
        for (login, pw) in [ALICE, BOB] {
            let email = format!("{login}@example.com");
            let v = self
                .api(
                    "UsersManager.addUser",
                    &[
                        ("userLogin", login),
                        ("password", pw),
                        ("email", &email),
                        ("initialIdSite", "1"),
                        ("passwordConfirmation", ADMIN.1),
                    ],
                )
                .await?;
            if v.get("result").and_then(|r| r.as_str()) == Some("error") {
                return Err(format!("addUser {login}: {v}"));
            }
        }
        Ok(())
    }

    /// Copies the UnikGate plugin in, then runs `deploy/matomo-setup.sh` for both minters, as the
    /// web server's user, with the tree and secret file as variables.
    fn setup_plugins(&mut self) -> R<()> {
        copy_dir(
            &repo().join("matomo-plugin/UnikGate"),
            &self.tree.join("plugins/UnikGate"),
        )?;
        std::fs::write(&self.secret_file, SHARED_SECRET).map_err(|e| e.to_string())?;
        if is_root() {
            run(
                Command::new("chown")
                    .args(["-R", "www-data:www-data"])
                    .arg(self.tree.join("plugins/UnikGate"))
                    .arg(&self.secret_file),
                "chown plugin",
            )?;
        }
        let script = repo().join("deploy/matomo-setup.sh");
        // ../shared/matomo's tree carries AutoLogin 0.2.0; the official zip does not.
        self.has_autologin = self.tree.join("plugins/AutoLogin").is_dir();
        let minters: &[&str] = if self.has_autologin {
            &["signed", "autologin"]
        } else {
            &["signed"]
        };
        for minter in minters {
            let out = self.as_web_user(&format!(
                "MATOMO_DIR='{}' SHARED_SECRET_FILE='{}' PUBLIC_HOST=127.0.0.1 MINTER={minter} bash '{}'",
                self.tree.display(),
                self.secret_file.display(),
                script.display()
            ))?;
            self.setup_output.push_str(&out);
        }
        Ok(())
    }

    /// Binds the loopback ports the tests' unikgates will listen on, and trusts them in Matomo.
    fn trust_gate_ports(&mut self) -> R<()> {
        // nginx + PHP-FPM is reached directly too (the installer trusted Apache's address itself).
        let mut assignments = format!(
            " 'General.trusted_hosts[]=\"{}\"'",
            self.fpm.trim_start_matches("http://")
        );
        let mut held = Vec::new();
        for _ in 0..GATE_PORTS {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let port = l.local_addr().map_err(|e| e.to_string())?.port();
            assignments.push_str(&format!(" 'General.trusted_hosts[]=\"127.0.0.1:{port}\"'"));
            held.push(l);
        }
        self.console(&format!("config:set{assignments}"))?;
        *self.listeners.lock().map_err(|e| e.to_string())? = held;
        Ok(())
    }

    /// A loopback listener whose `127.0.0.1:port` Matomo trusts (for a unikgate in front).
    pub fn gate_listener(&self) -> std::net::TcpListener {
        self.listeners
            .lock()
            .ok()
            .and_then(|mut l| l.pop())
            .expect("the harness ran out of trusted ports: raise GATE_PORTS")
    }

    pub fn config_ini(&self) -> String {
        std::fs::read_to_string(self.tree.join("config/config.ini.php")).unwrap_or_default()
    }

    /// Reads the PHP error logs (for failure messages).
    pub fn php_errors(&self) -> String {
        let mut s = String::new();
        for f in [
            "apache/error.log",
            "apache/php.log",
            "fpm/php.log",
            "fpm/php-fpm.log",
        ] {
            if let Ok(t) = std::fs::read_to_string(self.root.join(f)) {
                let tail: Vec<&str> = t.lines().rev().take(20).collect();
                s.push_str(&format!("--- {f}\n"));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Fails with what to do when the archive had no AutoLogin plugin.
    pub fn need_autologin(&self) -> R<()> {
        if self.has_autologin {
            return Ok(());
        }
        Err("this Matomo archive has no plugins/AutoLogin: the autologin tests need AutoLogin 0.2.0 \
             (Matomo Marketplace) unpacked into the archive's plugins/AutoLogin, as \
             ../shared/matomo's archive has it"
            .into())
    }

    /// Stops everything the harness started (by PID), then removes the folder. Returns what is
    /// still running from the folder (nothing, when all went well).
    pub fn stop(&self) -> Vec<String> {
        if let Ok(mut procs) = self.procs.lock() {
            for (_, c) in procs.iter_mut().rev() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(c.id().to_string())
                    .status();
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            for (name, c) in procs.iter_mut() {
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) => break,
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        _ => {
                            eprintln!("real Matomo: {name} did not stop on TERM; killing it");
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                    }
                }
            }
            procs.clear();
        }
        let _ = std::fs::write(self.root.join("pids"), "");
        let left = processes_under(&self.root);
        let _ = std::fs::remove_dir_all(&self.root);
        if let Ok(mut r) = self.reaper.lock() {
            if let Some(mut c) = r.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        left
    }
}

/// Apache's prefork settings for the harness's Matomo.
const PREFORK: &str =
    "StartServers 2\nMinSpareServers 2\nMaxSpareServers 6\nMaxRequestWorkers 24\nKeepAlive On";
/// One process serving every request, one request per connection.
const ONE_PROCESS: &str = "ServerLimit 1\nStartServers 1\nMinSpareServers 1\nMaxSpareServers 1\nMaxRequestWorkers 1\nKeepAlive Off";

/// The TCP sockets listened on by processes whose command line names `dir`: (pid: command,
/// local address).
pub fn listeners_under(dir: &Path) -> Vec<(String, String)> {
    use std::collections::HashMap;
    // inode → local address, for LISTEN sockets (state 0A).
    let mut listening: HashMap<String, String> = HashMap::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(t) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in t.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((ip, port)) = f[1].split_once(':') else {
                continue;
            };
            let port = u16::from_str_radix(port, 16).unwrap_or(0);
            let addr = if v6 {
                format!("[{ip}]:{port}")
            } else {
                let n = u32::from_str_radix(ip, 16).unwrap_or(0);
                format!("{}:{port}", std::net::Ipv4Addr::from(n.swap_bytes()))
            };
            listening.insert(f[9].to_string(), addr);
        }
    }
    let needle = dir.to_string_lossy().to_string();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        if !cmd.contains(&needle) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Some(addr) = listening.get(inode) {
                    out.push((format!("{pid}: {}", cmd.trim()), addr.clone()));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Runs `script` in `dir` as the web server's user (`www-data` when running as root).
pub fn as_web_user_in(dir: &Path, script: &str) -> R<String> {
    let mut cmd = if is_root() {
        let mut c = Command::new("su");
        c.args(["-s", "/bin/sh", "www-data", "-c"])
            .arg(format!("cd '{}' && {script}", dir.display()));
        c
    } else {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script).current_dir(dir);
        c
    };
    run(&mut cmd, script)
}

/// A Matomo the harness unpacked and serves but did not install.
pub struct FreshSite {
    pub tree: PathBuf,
    /// Apache + mod_php serving it.
    pub url: String,
    /// Its empty database (the harness's MariaDB, same user).
    pub db: String,
}

impl FreshSite {
    pub fn config_ini(&self) -> String {
        std::fs::read_to_string(self.tree.join("config/config.ini.php")).unwrap_or_default()
    }
}

/// Processes whose command line names `dir` (what the harness started from there).
pub fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().to_string();
    let mut out = Vec::new();
    let me = std::process::id().to_string();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
                continue;
            }
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                // The reaper names the folder too; it is ours and ends by itself.
                if cmd.contains(&needle) && !cmd.starts_with("sh -c while kill") {
                    out.push(format!("{name}: {cmd}"));
                }
            }
        }
    }
    out
}

fn set_mode(p: &Path, mode: u32) -> R<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", p.display()))
}

pub fn copy_dir(from: &Path, to: &Path) -> R<()> {
    std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
    for e in std::fs::read_dir(from).map_err(|e| e.to_string())? {
        let e = e.map_err(|e| e.to_string())?;
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() {
            if e.file_name() == "tests" {
                continue;
            }
            copy_dir(&p, &dest)?;
        } else {
            std::fs::copy(&p, &dest).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    Ok(())
}

pub fn clip(s: &str) -> String {
    let t: String = s.chars().take(3000).collect();
    t
}

/// `POST index.php?module=API&method=…&format=json` on `base`.
pub async fn api_call(base: &str, method: &str, form: &[(&str, &str)]) -> R<serde_json::Value> {
    let url = format!("{base}/index.php?module=API&method={method}&format=json");
    let res = reqwest::Client::new()
        .post(&url)
        .form(form)
        .send()
        .await
        .map_err(|e| format!("{method}: {e}"))?;
    let status = res.status();
    let text = res.text().await.map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|_| {
        format!(
            "{method} answered {status} with something not JSON:\n{}",
            clip(&text)
        )
    })
}

/// The database page of Matomo's installer: what to fill in, or what Matomo must have prefilled
/// from the container's `MATOMO_DATABASE_*` (the official image's contract; the password field
/// then shows a mask, and Matomo takes the real one from the environment).
pub enum Database {
    Set {
        host: String,
        user: String,
        password: String,
        dbname: String,
    },
    Prefilled {
        host: String,
        user: String,
        dbname: String,
    },
}

/// Matomo's web installer at `base`, page after page, as a person would fill it: the database,
/// the superuser [`ADMIN`], site 1; `config` reads `config/config.ini.php` afterwards. Returns
/// `[General] salt`.
pub async fn web_installer_at(
    base: &str,
    database: Database,
    config: impl Fn() -> R<String>,
) -> R<String> {
    web_installer_in(&Browser::new(), base, database, config).await
}

/// [`web_installer_at`] in the browser `b` (one that reaches `base`'s name, trusts its root).
pub async fn web_installer_in(
    b: &Browser,
    base: &str,
    database: Database,
    config: impl Fn() -> R<String>,
) -> R<String> {
    let page = |path: &str| format!("{base}/{path}");
    // Welcome, then the system check.
    let res = b.get(&page("index.php")).await;
    let body = res.text().await.unwrap_or_default();
    if !body.contains("Matomo") {
        return Err(format!(
            "the installer's welcome page is not Matomo's:\n{}",
            clip(&body)
        ));
    }
    let res = b.get(&page("index.php?action=systemCheck")).await;
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!("system check answered {status}:\n{}", clip(&body)));
    }
    // Database.
    let html = installer_get(b, &page("index.php?action=databaseSetup")).await?;
    let (action, mut f) = form_fields(&html);
    match &database {
        Database::Set {
            host,
            user,
            password,
            dbname,
        } => {
            set(&mut f, "host", host);
            set(&mut f, "username", user);
            set(&mut f, "password", password);
            set(&mut f, "dbname", dbname);
        }
        Database::Prefilled { host, user, dbname } => {
            let value = |name: &str| {
                f.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            for (name, want) in [("host", host), ("username", user), ("dbname", dbname)] {
                if &value(name) != want {
                    return Err(format!(
                        "the installer's {name} is {:?}, not {want:?} from MATOMO_DATABASE_*",
                        value(name)
                    ));
                }
            }
            if value("password").is_empty() {
                return Err("the installer's password is not prefilled".into());
            }
        }
    }
    set(&mut f, "tables_prefix", "matomo_");
    set(&mut f, "adapter", "PDO\\MYSQL");
    installer_post(b, base, &action, "databaseSetup", &f).await?;
    // Tables, then the superuser.
    installer_get(b, &page("index.php?action=tablesCreation")).await?;
    let html = installer_get(b, &page("index.php?action=setupSuperUser")).await?;
    let (action, mut f) = form_fields(&html);
    set(&mut f, "login", ADMIN.0);
    set(&mut f, "password", ADMIN.1);
    set(&mut f, "password_bis", ADMIN.1);
    set(&mut f, "email", "admin@example.com");
    f.retain(|(k, _)| {
        k != "subscribe_newsletter_piwikorg" && k != "subscribe_newsletter_professionalservices"
    });
    installer_post(b, base, &action, "setupSuperUser", &f).await?;
    let html = installer_get(b, &page("index.php?action=firstWebsiteSetup")).await?;
    let (action, mut f) = form_fields(&html);
    set(&mut f, "siteName", "Example");
    set(&mut f, "url", "https://www.example.com");
    set(&mut f, "timezone", "UTC");
    set(&mut f, "ecommerce", "0");
    installer_post(b, base, &action, "firstWebsiteSetup", &f).await?;
    installer_get(
        b,
        &page("index.php?action=trackingCode&site_idSite=1&site_name=Example"),
    )
    .await?;
    let html = installer_get(
        b,
        &page("index.php?action=finished&site_idSite=1&site_name=Example"),
    )
    .await?;
    let (action, f) = form_fields(&html);
    installer_post(b, base, &action, "finished", &f).await?;
    let config = config()?;
    if !config.contains("installation_in_progress") && !config.contains("[database]") {
        return Err("config.ini.php has no [database] section".into());
    }
    if config.contains("installation_in_progress") {
        return Err(format!("the installer did not finish:\n{config}"));
    }
    Ok(config
        .lines()
        .find_map(|l| l.trim().strip_prefix("salt = "))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default())
}

async fn installer_get(b: &Browser, url: &str) -> R<String> {
    let res = b.get(url).await;
    let (res, at) = b.follow(res, 5).await;
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!(
            "installer {at} answered {status}:\n{}",
            clip(&body)
        ));
    }
    Ok(body)
}

async fn installer_post(
    b: &Browser,
    base: &str,
    action: &str,
    step: &str,
    fields: &[(String, String)],
) -> R<()> {
    let url = if action.is_empty() {
        format!("{base}/index.php?action={step}")
    } else if action.starts_with("http") {
        action.to_string()
    } else if action.starts_with('?') {
        format!("{base}/index.php{action}")
    } else {
        format!("{base}/{}", action.trim_start_matches('/'))
    };
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let res = b.post(&url, &pairs).await;
    let status = res.status();
    if status.is_redirection() {
        return Ok(());
    }
    let body = res.text().await.unwrap_or_default();
    // A form answered with itself carries its error.
    Err(format!(
        "installer step {step} did not move on ({status}):\n{}",
        clip(&body)
    ))
}

/// What Matomo's installer must have written when it ran behind unikgate: the client address from
/// `X-Forwarded-For`, and no `proxy_host_headers[]` (unikgate sends no `X-Forwarded-Host`).
pub fn check_installed_behind_unikgate(ini: &str) -> R<()> {
    if !ini.contains("proxy_client_headers[] = \"HTTP_X_FORWARDED_FOR\"") {
        return Err(format!(
            "the installer did not take X-Forwarded-For:\n{ini}"
        ));
    }
    if ini.contains("proxy_host_headers") {
        return Err(format!("the installer wrote proxy_host_headers:\n{ini}"));
    }
    Ok(())
}

/// What `matomo-setup.sh` leaves in `config.ini.php`: the public host trusted once, the client and
/// scheme headers once, and with `public_url` the plugin's audience (a second run changes nothing,
/// which the caller compares).
pub fn check_set_up(ini: &str, public_host: &str, public_url: Option<&str>) -> R<()> {
    if ini
        .matches(&format!("trusted_hosts[] = \"{public_host}\""))
        .count()
        != 1
    {
        return Err(format!(
            "trusted_hosts is not the public host, once:\n{ini}"
        ));
    }
    if ini.matches("proxy_client_headers[]").count() != 1 {
        return Err(format!("proxy_client_headers twice:\n{ini}"));
    }
    if ini
        .matches("proxy_scheme_headers[] = \"HTTP_X_FORWARDED_PROTO\"")
        .count()
        != 1
    {
        return Err(format!(
            "proxy_scheme_headers does not name X-Forwarded-Proto once:\n{ini}"
        ));
    }
    if let Some(url) = public_url {
        if !ini.contains(&format!("public_url = \"{url}\"")) {
            return Err(format!("[UnikGate] public_url is not {url}:\n{ini}"));
        }
    }
    Ok(())
}
