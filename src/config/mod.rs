//! Configuration: one TOML file, every key overridable as `UNIKGATE_<SECTION>__<KEY>`, secrets
//! readable from files. The doc comment of every field is the reference for its key
//! (`config/unikgate.toml` repeats it with the defaults).
//!
//! Invariant: [`Config::load`] either returns a config where every value has been checked, or the
//! full list of problems, each naming its key path and the fix. Nothing else validates config.

mod reader;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use secrecy::SecretString;
use url::Url;

pub use reader::{ConfigError, Env, ProcessEnv, Reader};

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub provider: ProviderConfig,
    pub session: SessionConfig,
    pub store: StoreConfig,
    pub matomo: MatomoConfig,
    /// `[tls]`: set, `server.listen` serves HTTPS (HTTP/2 and HTTP/1.1) itself.
    pub tls: Option<TlsConfig>,
    pub access: AccessConfig,
    pub provision: ProvisionConfig,
    pub links: LinksConfig,
    pub audit: AuditConfig,
}

/// `[audit]`: the audit trail kept in the link database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// How long events are kept (`unikgate audit list`, the superusers' page). Default `90d`;
    /// older ones are deleted hourly. The log keeps its own copy, for as long as your logs live.
    pub retention: Duration,
}

/// `[access]`: who may sign in. With no key set, everybody the provider vouches for (every
/// @unikname that completes Unikname Connect) reaches the link page. Checked at each sign-in, and
/// again when a session is used after the rules changed (on every replica: the rules' stamp rides
/// in the shared session).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessConfig {
    /// @uniknames let in, by the subject the provider gives (`unikgate links list` shows them).
    pub allow_subjects: Vec<String>,
    /// E-mail domains let in (`example.org`), lowercase; only an address the provider says is
    /// verified (`email_verified = true`) counts. With `allow_subjects` too, either one lets in.
    pub allow_email_domains: Vec<String>,
    /// Claims that must hold, as `path=value` (`groups=matomo`, dotted paths reach nested
    /// objects; a claim that is a list holds when one of its items is the value). Entries on the
    /// same path are alternatives; different paths are all required.
    pub require_claims: Vec<(String, String)>,
}

impl AccessConfig {
    /// No rule: everybody the provider vouches for may sign in.
    pub fn is_open(&self) -> bool {
        self.allow_subjects.is_empty()
            && self.allow_email_domains.is_empty()
            && self.require_claims.is_empty()
    }
}

/// `[provision]`: Matomo accounts made at the first sign-in (signed minter only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionConfig {
    /// `off` (default): a person without a link proves a Matomo account. `offer`: the link page
    /// also offers "Create my Matomo account". `auto`: the account is made at once.
    pub mode: ProvisionMode,
    /// Where the new account's login comes from: `preferred_username` (default), `email` (its
    /// local part), `subject` (the @unikname's subject), or another claim path.
    pub login_claim: String,
    /// The access given to a new account: `/matomo/<idSite>/<view|write|admin>` entries.
    pub access: Vec<SiteAccess>,
    /// A claim holding `/matomo/<idSite>/<view|write|admin>` entries (a list, or one string)
    /// that sets the person's site access at each sign-in. Unset: access is left to Matomo.
    pub access_claim: Option<String>,
    /// With `access_claim`: also remove the access to sites the claim no longer lists (access
    /// given by hand in Matomo included). Default false.
    pub access_claim_prune: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionMode {
    Off,
    Offer,
    Auto,
}

/// One site access: `/matomo/<idSite>/<view|write|admin>`. Superuser is never given this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SiteAccess {
    pub site: u32,
    pub level: AccessLevel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccessLevel {
    View,
    Write,
    Admin,
}

impl AccessLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLevel::View => "view",
            AccessLevel::Write => "write",
            AccessLevel::Admin => "admin",
        }
    }
}

impl SiteAccess {
    /// `/matomo/3/view` (a leading `/matomo/` is required, case-insensitive level).
    pub fn parse(entry: &str) -> Option<SiteAccess> {
        let rest = entry.trim().strip_prefix("/matomo/")?;
        let (site, level) = rest.split_once('/')?;
        if site.is_empty() || site.len() > 9 || !site.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let site: u32 = site.parse().ok().filter(|s| *s > 0)?;
        let level = match level.to_ascii_lowercase().as_str() {
            "view" => AccessLevel::View,
            "write" => AccessLevel::Write,
            "admin" => AccessLevel::Admin,
            _ => return None,
        };
        Some(SiteAccess { site, level })
    }
}

/// `[links]`: what people may do with their link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinksConfig {
    /// People may unlink their @unikname themselves (account page, Matomo's Security card).
    /// Default true; when false only `unikgate links remove` unlinks.
    pub allow_unlink: bool,
}

/// `[tls]`: HTTPS served by unikgate on `server.listen`, with HTTP/2 and HTTP/1.1 (ALPN), TLS 1.2
/// and 1.3. Setting the section turns it on; `server.public_url` must then be `https://`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Where the certificate comes from: files, or an ACME certificate authority.
    pub certs: TlsCerts,
    /// `Strict-Transport-Security: max-age=31536000` on every answer. Default true.
    pub hsts: bool,
}

/// The two sources of the certificate: `cert_file` + `key_file`, or ACME (every other `[tls]`).
#[derive(Debug, Clone)]
pub enum TlsCerts {
    /// `tls.cert_file`: the certificate chain, PEM (the server's certificate first, then the
    /// intermediates), read again when it changes (checked every 5 s): a renewal by another tool
    /// (certbot, a mounted secret) needs no restart; a changed pair that cannot be used keeps the
    /// previous one. `tls.key_file`: its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// Automatic certificates.
    Acme(AcmeConfig),
}

// The ACME settings are declared where they are used (`tls/acme.rs`), so that `tls/` imports
// nothing from here.
pub use crate::tls::acme::{AcmeChallenge, AcmeConfig};

/// Let's Encrypt's production directory: `tls.acme_directory`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[server]`: where unikgate listens and how the public sees it.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// The URL people type to reach Matomo, e.g. `https://analytics.example.com`, or with a path
    /// when Matomo is served under one (`https://example.org/analytics/`). Redirects, cookies
    /// (Secure when https) and the OIDC redirect URI are built from it.
    pub public_url: Url,
    /// The path of `public_url` without its trailing slash: `""` at the root, `"/analytics"`
    /// under a path. Matomo is served under the same path by its own server (`upstream.url`).
    pub base: String,
    /// Where unikgate's own endpoints live, in full: `base` + `server.prefix` as written
    /// (default `/_unikgate`, so `/analytics/_unikgate` under a path).
    pub prefix: String,
    /// CIDRs of reverse proxies in front of unikgate whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Separate address for `GET /metrics` (Prometheus). Unset: metrics are not served.
    pub metrics_listen: Option<SocketAddr>,
    /// `text` (default) or `json` log lines.
    pub log_format: LogFormat,
    /// Time a client has to send a request head once it has begun one; also how long an idle
    /// keep-alive connection is kept. Default `30s`. A head begun and not finished gets 408.
    pub head_timeout: Duration,
    /// Time a client has to send a body that unikgate reads itself (forms posted to `index.php`,
    /// which are classified, and unikgate's own forms), counted from the end of the head, in
    /// total. Default `30s`; late bodies get 408 and the connection is closed.
    pub body_timeout: Duration,
    /// Most client connections open at once; further ones get 503 and are closed. Default 4096.
    pub max_connections: usize,
    /// Most client connections open at once from one address (peers in `trusted_proxies` are
    /// exempt: they carry everybody's traffic). Default 256.
    pub max_connections_per_ip: usize,
    /// With `[tls]`: a plain-HTTP address (e.g. `0.0.0.0:80`) whose every request is redirected
    /// to the same path on `public_url` (301 for GET and HEAD, 308 otherwise). Unset: none.
    pub http_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[upstream]`: the Matomo server unikgate forwards to.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URL of Matomo on the internal network, e.g. `http://matomo:80`. Required.
    pub url: Url,
    /// Time allowed to open a TCP connection to Matomo. Default `5s`.
    pub connect_timeout: Duration,
    /// Time allowed for Matomo to start answering (headers). Default `120s` (reports can be slow).
    pub timeout: Duration,
}

/// `[provider]`: the OpenID Connect provider. Defaults are Unikname Connect's.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Label of the sign-in button. Default "Connect with your private @unikname".
    pub name: String,
    /// Issuer for discovery (`<issuer>/.well-known/openid-configuration`). Default
    /// `https://connect.unikname.com/oidc`. When discovery fails, the explicit URLs below are used.
    pub issuer: Option<Url>,
    pub authorize_url: Url,
    pub token_url: Url,
    pub userinfo_url: Url,
    /// JSON Web Key Set; with it (or discovery's), ID tokens are verified.
    pub jwks_url: Option<Url>,
    /// RP-initiated logout endpoint, used at sign-out when set (or found by discovery).
    pub end_session_url: Option<Url>,
    /// Claim of the userinfo answer that identifies the person (`sub`); dotted paths such as
    /// `attributes.uid` reach nested objects.
    pub userinfo_id: String,
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    /// From `client_secret` or the file named by `client_secret_file`.
    pub client_secret: Option<SecretString>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    pub token_auth_method: TokenAuthMethod,
    /// Accepted ID token signature algorithms. Default `["RS256"]`.
    pub id_token_algs: Vec<String>,
    /// Timeout of every call to the provider. Default `10s`.
    pub timeout: Duration,
    /// Allow `GET <prefix>/start` (a direct login URL). Default false: only the sign-in page's form.
    pub allow_get_start: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuthMethod {
    Basic,
    Post,
}

/// `[session]`: unikgate's own session cookie.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Default `unikgate_session`.
    pub cookie_name: String,
    /// A session unused this long ends. Default `12h`.
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in whatever its use. Default `7d`.
    pub absolute_timeout: Duration,
    /// Key signing the cookie, at least 64 bytes, from `key` or `key_file`. Unset: generated once
    /// into `<data folder>/session.key` (the folder of the SQLite store).
    pub key: Option<SecretString>,
}

/// `[store]`: where sessions and links live.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://data/unikgate.db` (default; the file and folder are created),
    /// `postgres://user:pass@host/db`, or `redis://host:6379/0` (sessions only).
    pub url: StoreUrl,
    /// Sessions elsewhere than `url` (e.g. Redis while links stay in PostgreSQL).
    pub sessions_url: StoreUrl,
    /// Links (and rate-limit counters) elsewhere than `url`: SQLite or PostgreSQL.
    pub links_url: StoreUrl,
    /// Connections per database pool. Default 16.
    pub max_connections: u32,
}

/// A store URL, read once here: which backend, and where. `store::open` matches on it.
///
/// Shown (`Display`, `Debug`) with its password replaced by `***`; compared with a string by what
/// that string names (`"sqlite://data/unikgate.db"` equals `Sqlite("data/unikgate.db")`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://path/to/file.db` (or `sqlite:path`; a `?query` is dropped): the file.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`, as written (its password included).
    Postgres(String),
    /// `redis://…` or `rediss://…`, as written (its password included); sessions only.
    Redis(String),
}

impl StoreUrl {
    /// What a store URL names, if anything unikgate supports.
    pub fn parse(url: &str) -> Option<StoreUrl> {
        let scheme = url.split("://").next().unwrap_or("").to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => sqlite_path(url).map(StoreUrl::Sqlite),
            "postgres" | "postgresql" => Some(StoreUrl::Postgres(url.to_string())),
            "redis" | "rediss" => Some(StoreUrl::Redis(url.to_string())),
            _ if url.starts_with("sqlite:") => sqlite_path(url).map(StoreUrl::Sqlite),
            _ => None,
        }
    }
}

/// The file of a `sqlite://` store URL.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(path))
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreUrl::Postgres(url) | StoreUrl::Redis(url) => f.write_str(&redact(url)),
        }
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            StoreUrl::Postgres(url) => f.debug_tuple("Postgres").field(&redact(url)).finish(),
            StoreUrl::Redis(url) => f.debug_tuple("Redis").field(&redact(url)).finish(),
        }
    }
}

impl PartialEq<str> for StoreUrl {
    fn eq(&self, other: &str) -> bool {
        StoreUrl::parse(other).as_ref() == Some(self)
    }
}

impl PartialEq<&str> for StoreUrl {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

/// `[matomo]`: how unikgate treats Matomo.
#[derive(Debug, Clone)]
pub struct MatomoConfig {
    /// How a Matomo session is minted: `autologin` (the AutoLogin plugin) or `signed` (this
    /// repository's UnikGate plugin, which accepts only signed, single-use assertions), with the
    /// secret it needs: a `signed` minter without one cannot be built.
    pub minter: MinterConfig,
    /// Let Matomo's own password login and the sessions it makes pass through. Default false.
    pub password_login: bool,
    /// Matomo's idle timeout for sessions (`login_session_not_remembered_idle_timeout`); unikgate
    /// mints again before it lapses. Default `3600s`.
    pub idle_timeout: Duration,
    /// Extra path prefixes served without a session (exact paths, or prefixes ending in `/`).
    pub public_paths: Vec<String>,
    /// File served at `/.well-known/uns-verification.txt` for Unikname's domain check.
    pub uns_verification_file: Option<PathBuf>,
    /// Refuse @unikname sign-in for Matomo superusers. Default false.
    pub deny_superusers: bool,
}

/// `matomo.minter`, with what each needs.
#[derive(Debug, Clone)]
pub enum MinterConfig {
    AutoLogin,
    /// The secret shared with the UnikGate plugin, at least 32 bytes, from `shared_secret` or
    /// `shared_secret_file`.
    Signed(SecretString),
}

/// Matomo's session cookie: no setting may reuse its name (and `matomo.rs` reads it from here, so
/// the configuration depends on nothing else of the crate).
pub const MATOMO_COOKIE: &str = "MATOMO_SESSID";
pub const UNIKNAME_ISSUER: &str = "https://connect.unikname.com/oidc";
pub const UNIKNAME_AUTHORIZE: &str = "https://connect.unikname.com/oidc/authorize";
pub const UNIKNAME_TOKEN: &str = "https://connect.unikname.com/oidc/accessToken";
pub const UNIKNAME_USERINFO: &str = "https://connect.unikname.com/oidc/profile";
pub const DEFAULT_BUTTON: &str = "Connect with your private @unikname";

/// The minimum session key length, in bytes (what `cookie::Key` needs).
pub const MIN_KEY_LEN: usize = 64;

impl Config {
    /// Reads and checks a config file plus the process environment.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                key: path.display().to_string(),
                message: format!("cannot read the config file: {e}"),
            }]
        })?;
        Self::from_toml(&text, &ProcessEnv)
    }

    /// Reads and checks config text with the given environment.
    pub fn from_toml(text: &str, env: &dyn Env) -> Result<Config, Vec<ConfigError>> {
        let root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "file".into());
            vec![ConfigError {
                key: at,
                message: format!("not valid TOML: {}", e.message()),
            }]
        })?;
        let mut errors = Vec::new();
        for key in root.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                errors.push(ConfigError {
                    key: key.clone(),
                    message: format!("unknown section; the sections are: {}", SECTIONS.join(", ")),
                });
            }
        }
        check_env_names(env, &mut errors);
        fn section<T>(
            root: &toml::Table,
            name: &'static str,
            env: &dyn Env,
            errors: &mut Vec<ConfigError>,
            read: fn(&mut Reader<'_>) -> Option<T>,
        ) -> Option<T> {
            let mut r = Reader::new(root, name, env, errors);
            let v = read(&mut r);
            r.finish();
            v
        }
        let server = section(&root, "server", env, &mut errors, read_server);
        let upstream = section(&root, "upstream", env, &mut errors, read_upstream);
        let provider = section(&root, "provider", env, &mut errors, read_provider);
        let session = section(&root, "session", env, &mut errors, read_session);
        let store = section(&root, "store", env, &mut errors, read_store);
        let matomo = section(&root, "matomo", env, &mut errors, read_matomo);
        let tls = section(&root, "tls", env, &mut errors, read_tls);
        let access = section(&root, "access", env, &mut errors, read_access);
        let provision = section(&root, "provision", env, &mut errors, read_provision);
        let links = section(&root, "links", env, &mut errors, read_links);
        let audit = section(&root, "audit", env, &mut errors, read_audit);
        if let (Some(p), Some(m)) = (&provision, &matomo) {
            let signed = matches!(m.minter, MinterConfig::Signed(_));
            if !signed && (p.mode != ProvisionMode::Off || p.access_claim.is_some()) {
                errors.push(ConfigError {
                    key: if p.mode != ProvisionMode::Off { "provision.mode" } else { "provision.access_claim" }.into(),
                    message: "needs matomo.minter = \"signed\": the UnikGate plugin makes the accounts and sets their access (unikgate holds no Matomo superuser token)".into(),
                });
            }
        }
        let mut server = server;
        let tls = match tls {
            Some(Tls::Off) => {
                // `tls.mode = "off"`: plain HTTP behind an existing proxy; the redirect listener
                // has nothing to redirect to.
                if let Some(s) = &mut server {
                    s.http_listen = None;
                }
                Some(None)
            }
            Some(Tls::Set(t)) => Some(t),
            None => None,
        };
        if let (Some(server), Some(tls)) = (&server, &tls) {
            let https = server.public_url.scheme() == "https";
            if tls.is_some() && !https {
                errors.push(ConfigError {
                    key: "server.public_url".into(),
                    message: "must be https://… when [tls] is set (browsers reach unikgate over HTTPS; the session cookie is Secure)".into(),
                });
            }
            if tls.is_none() && server.http_listen.is_some() {
                errors.push(ConfigError {
                    key: "server.http_listen".into(),
                    message: "redirects to HTTPS, which needs [tls] (tls.cert_file and tls.key_file, or ACME): set it, or remove http_listen".into(),
                });
            }
        }
        if let (Some(server), Some(up)) = (&server, &upstream) {
            match base_path(up.url.path()) {
                Ok(b) if b == server.base => {}
                Ok(b) => errors.push(ConfigError {
                    key: "upstream.url".into(),
                    message: if server.base.is_empty() {
                        format!("has the path {b:?} while server.public_url has none: Matomo is forwarded the paths people use, so serve it at / on its server, or give server.public_url the same path")
                    } else {
                        format!("must have the path of server.public_url, {:?} (found {:?}): Matomo is forwarded the paths people use, so its own server serves it there too, e.g. url = \"http://matomo{}/\" with Apache's `Alias {} /var/www/html`", server.base, if b.is_empty() { "/" } else { b.as_str() }, server.base, server.base)
                    },
                }),
                Err(why) => errors.push(ConfigError {
                    key: "upstream.url".into(),
                    message: why,
                }),
            }
        }
        let mut tls = tls;
        if let (
            Some(server),
            Some(Some(TlsConfig {
                certs: TlsCerts::Acme(acme),
                ..
            })),
        ) = (&server, &mut tls)
        {
            let data_dir = store
                .as_ref()
                .and_then(|(c, _)| c.as_ref())
                .and_then(sqlite_dir);
            acme_defaults(acme, server, data_dir, &mut errors);
        }
        if let (Some(sess), Some((_, sessions_url))) = (&session, &store) {
            if sess.key.is_none() && !matches!(sessions_url, Some(StoreUrl::Sqlite(_))) {
                errors.push(ConfigError {
                    key: "session.key".into(),
                    message: "is required when sessions are in PostgreSQL or Redis (every replica must sign cookies with the same key): set session.key or session.key_file".into(),
                });
            }
        }
        let store = store.and_then(|(config, _)| config);
        match (
            (server, upstream, provider, session, store, matomo, tls),
            (access, provision, links, audit),
        ) {
            (
                (
                    Some(server),
                    Some(upstream),
                    Some(provider),
                    Some(session),
                    Some(store),
                    Some(matomo),
                    Some(tls),
                ),
                (Some(access), Some(provision), Some(links), Some(audit)),
            ) if errors.is_empty() => Ok(Config {
                server,
                upstream,
                provider,
                session,
                store,
                matomo,
                tls,
                access,
                provision,
                links,
                audit,
            }),
            _ => Err(errors),
        }
    }

    /// True when the provider credentials are present; without them UI requests fail closed.
    pub fn provider_configured(&self) -> bool {
        self.provider.client_id.is_some() && self.provider.client_secret.is_some()
    }

    /// The provider credentials that are missing, by key (empty when both are set).
    pub fn missing_provider_credentials(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.provider.client_id.is_none() {
            out.push("provider.client_id");
        }
        if self.provider.client_secret.is_none() {
            out.push("provider.client_secret (or client_secret_file)");
        }
        out
    }

    /// `<public_url><prefix>/callback`.
    pub fn redirect_uri(&self) -> String {
        format!("{}{}/callback", self.public_origin(), self.server.prefix)
    }

    /// `<public_url><prefix>/signed_out`: where the provider sends people back after sign-out.
    pub fn post_logout_redirect_uri(&self) -> String {
        format!("{}{}/signed_out", self.public_origin(), self.server.prefix)
    }

    /// `<public_url><prefix>/backchannel_logout`: where the provider posts logout tokens.
    pub fn backchannel_logout_uri(&self) -> String {
        format!(
            "{}{}/backchannel_logout",
            self.public_origin(),
            self.server.prefix
        )
    }

    /// `scheme://host[:port]` + the base path: where Matomo is, without a trailing slash
    /// (`https://example.org/analytics`; the origin when Matomo is at the root).
    pub fn public_base(&self) -> String {
        format!("{}{}", self.public_origin(), self.server.base)
    }

    /// `scheme://host[:port]` of the public URL, without a trailing slash.
    pub fn public_origin(&self) -> String {
        self.server.public_url.origin().ascii_serialization()
    }

    pub fn public_is_https(&self) -> bool {
        self.server.public_url.scheme() == "https"
    }

    /// The `host[:port]` browsers send as `Host`.
    pub fn public_host(&self) -> String {
        let u = &self.server.public_url;
        match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        }
    }

    /// The folder holding the embedded store (and the generated session key), if the store is a
    /// SQLite file.
    pub fn data_dir(&self) -> Option<PathBuf> {
        sqlite_dir(&self.store)
    }
}

/// The folder of the sessions' SQLite file: the data folder (`Config::data_dir`).
fn sqlite_dir(store: &StoreConfig) -> Option<PathBuf> {
    match &store.sessions_url {
        StoreUrl::Sqlite(p) => Some(
            p.parent()
                .map(|d| d.to_path_buf())
                .unwrap_or_else(|| PathBuf::from(".")),
        ),
        _ => None,
    }
}

pub const SECTIONS: &[&str] = &[
    "server",
    "upstream",
    "provider",
    "session",
    "store",
    "matomo",
    "tls",
    "access",
    "provision",
    "links",
    "audit",
];

/// `UNIKGATE_<SECTION>__<KEY>` variables that name no key are errors: a typo would otherwise be
/// silently ignored.
fn check_env_names(env: &dyn Env, errors: &mut Vec<ConfigError>) {
    for name in env.names() {
        let Some((section, key)) = name
            .strip_prefix("UNIKGATE_")
            .and_then(|rest| rest.split_once("__"))
        else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let known = KNOWN_KEYS
            .iter()
            .any(|(s, keys)| *s == section && keys.contains(&key.as_str()));
        if !known {
            errors.push(ConfigError {
                key: name.clone(),
                message: format!(
                    "this environment variable names no config key ({section}.{key}); see config/unikgate.toml"
                ),
            });
        }
    }
}

/// Every key by section (kept in step with the readers by a unit test).
pub const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "listen",
            "public_url",
            "prefix",
            "trusted_proxies",
            "metrics_listen",
            "log_format",
            "head_timeout",
            "body_timeout",
            "max_connections",
            "max_connections_per_ip",
            "http_listen",
        ],
    ),
    ("upstream", &["url", "connect_timeout", "timeout"]),
    (
        "provider",
        &[
            "name",
            "issuer",
            "authorize_url",
            "token_url",
            "userinfo_url",
            "jwks_url",
            "end_session_url",
            "userinfo_id",
            "scopes",
            "client_id",
            "client_secret",
            "client_secret_file",
            "token_auth_method",
            "id_token_algs",
            "timeout",
            "allow_get_start",
        ],
    ),
    (
        "session",
        &[
            "cookie_name",
            "idle_timeout",
            "absolute_timeout",
            "key",
            "key_file",
        ],
    ),
    (
        "store",
        &["url", "sessions_url", "links_url", "max_connections"],
    ),
    (
        "matomo",
        &[
            "minter",
            "shared_secret",
            "shared_secret_file",
            "password_login",
            "idle_timeout",
            "public_paths",
            "uns_verification_file",
            "deny_superusers",
        ],
    ),
    ("tls", TLS_KEYS),
    (
        "access",
        &["allow_subjects", "allow_email_domains", "require_claims"],
    ),
    (
        "provision",
        &[
            "mode",
            "login_claim",
            "access",
            "access_claim",
            "access_claim_prune",
        ],
    ),
    ("links", &["allow_unlink"]),
    ("audit", &["retention"]),
];

fn parse_addr(r: &mut Reader<'_>, key: &'static str, default: Option<&str>) -> Option<SocketAddr> {
    let s = match (r.opt_string(key), default) {
        (Some(s), _) => s,
        (None, Some(d)) => d.to_string(),
        (None, None) => return None,
    };
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            r.error(
                key,
                format!(
                    "{s:?} is not an address: write it like \"127.0.0.1:8080\" or \"[::]:8080\""
                ),
            );
            None
        }
    }
}

fn read_server(r: &mut Reader<'_>) -> Option<ServerConfig> {
    let listen = parse_addr(r, "listen", Some("127.0.0.1:8080"));
    let public_url = r.url("public_url", "http://localhost:8080");
    let mut base = String::new();
    if let Some(u) = &public_url {
        if u.query().is_some() || u.fragment().is_some() {
            r.error(
                "public_url",
                "must be a URL such as https://analytics.example.com or https://example.org/analytics/, without a query or fragment",
            );
        }
        match base_path(u.path()) {
            Ok(b) => base = b,
            Err(why) => r.error("public_url", why),
        }
    }
    let prefix = r.string("prefix", "/_unikgate");
    let prefix_ok = prefix.starts_with('/')
        && prefix.len() > 1
        && !prefix.ends_with('/')
        && prefix[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && seg != "."
                && seg != ".."
        });
    if !prefix_ok {
        r.error(
            "prefix",
            format!("{prefix:?} must look like \"/_unikgate\": a leading slash, no trailing slash, letters, digits, - _ ."),
        );
    }
    let mut trusted_proxies = Vec::new();
    for p in r.list("trusted_proxies", &[]) {
        match p
            .parse::<IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(n) => trusted_proxies.push(n),
            Err(_) => r.error(
                "trusted_proxies",
                format!("{p:?} is not a CIDR: write it like \"10.0.0.0/8\" or \"192.0.2.7\""),
            ),
        }
    }
    let metrics_listen = parse_addr(r, "metrics_listen", None);
    let log_format = match r.choice("log_format", "text", &["text", "json"]).as_str() {
        "json" => LogFormat::Json,
        _ => LogFormat::Text,
    };
    let head_timeout = r.duration("head_timeout", Duration::from_secs(30));
    let body_timeout = r.duration("body_timeout", Duration::from_secs(30));
    let max_connections = r.u64("max_connections", 4096, 1, 1 << 20) as usize;
    let max_connections_per_ip = r.u64("max_connections_per_ip", 256, 1, 1 << 20) as usize;
    let http_listen = parse_addr(r, "http_listen", None);
    if max_connections_per_ip > max_connections {
        r.error(
            "max_connections_per_ip",
            format!("{max_connections_per_ip} is more than max_connections ({max_connections}): lower it, or raise max_connections"),
        );
    }
    Some(ServerConfig {
        listen: listen?,
        public_url: public_url?,
        prefix: format!("{base}{prefix}"),
        base,
        trusted_proxies,
        metrics_listen,
        log_format,
        head_timeout,
        body_timeout,
        max_connections,
        max_connections_per_ip,
        http_listen,
    })
}

/// The base path of a public or upstream URL's path: `"/"` → `""`, `"/analytics/"` →
/// `"/analytics"`; segments of letters, digits, `-`, `_`, `.` (no `.` or `..` segment).
pub fn base_path(path: &str) -> Result<String, String> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let ok = trimmed.starts_with('/')
        && trimmed[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(format!(
            "the path {path:?} must look like /analytics/: segments of letters, digits, - _ ."
        ))
    }
}

const TLS_KEYS: &[&str] = &[
    "mode",
    "cert_file",
    "key_file",
    "hsts",
    "acme_directory",
    "acme_email",
    "domains",
    "acme_ca_file",
    "acme_dir",
    "acme_challenge",
];

/// `[tls]` as read: set (`None` when there is no section and no `UNIKGATE_TLS__…`), or turned off
/// by `tls.mode = "off"`.
enum Tls {
    Set(Option<TlsConfig>),
    Off,
}

/// `[tls]`. ACME's defaults that depend on other sections (the domain, the data folder) are
/// filled in by `acme_defaults`.
fn read_tls(r: &mut Reader<'_>) -> Option<Tls> {
    // `mode` written (in the file or as UNIKGATE_TLS__MODE) turns the section on by itself: the
    // compose file's TLS_MODE=auto with every other key empty is ACME with its defaults.
    let mode = r.opt_string("mode");
    match mode.as_deref() {
        None | Some("auto") => {}
        Some("off") => {
            // The other keys stay written (and unread) for the day TLS is turned back on.
            r.skip(TLS_KEYS);
            return Some(Tls::Off);
        }
        Some(other) => {
            r.error("mode", format!("{other:?} is not one of: auto, off"));
            return None;
        }
    }
    read_tls_keys(r, mode.is_some()).map(Tls::Set)
}

fn read_tls_keys(r: &mut Reader<'_>, mode_written: bool) -> Option<Option<TlsConfig>> {
    let cert_file = r.opt_string("cert_file").map(PathBuf::from);
    let key_file = r.opt_string("key_file").map(PathBuf::from);
    let hsts = r.bool("hsts", true);
    let directory = r.opt_url("acme_directory");
    let email = r.opt_string("acme_email");
    let domains = r.list("domains", &[]);
    let ca_file = r.opt_string("acme_ca_file").map(PathBuf::from);
    let dir = r.opt_string("acme_dir").map(PathBuf::from);
    let challenge = r.choice("acme_challenge", "tls-alpn-01", &["tls-alpn-01", "http-01"]);
    let acme_keys = [
        ("acme_directory", directory.is_some()),
        ("acme_email", email.is_some()),
        ("domains", !domains.is_empty()),
        ("acme_ca_file", ca_file.is_some()),
        ("acme_dir", dir.is_some()),
    ];
    let any_acme = acme_keys.iter().any(|(_, set)| *set);
    if !r.present() && !mode_written && cert_file.is_none() && key_file.is_none() && !any_acme {
        return Some(None);
    }
    if cert_file.is_some() || key_file.is_some() {
        if let Some((k, _)) = acme_keys.iter().find(|(_, set)| *set) {
            r.error(
                k,
                "is an ACME setting, and tls.cert_file/key_file are set too: choose one source of the certificate (files, or ACME without cert_file/key_file)",
            );
            return None;
        }
        let (Some(cert_file), Some(key_file)) = (cert_file, key_file) else {
            r.error(
                "cert_file",
                "tls.cert_file and tls.key_file are both required: the certificate chain and its private key, PEM files",
            );
            return None;
        };
        // Read now, so that `unikgate check` says what is wrong with them before `serve` does.
        if let Err(e) = crate::tls::load(&cert_file, &key_file) {
            r.error(e.key, e.message);
            return None;
        }
        return Some(Some(TlsConfig {
            certs: TlsCerts::Files {
                cert_file,
                key_file,
            },
            hsts,
        }));
    }
    let directory = match directory {
        Some(d) => d,
        None if r.has_error_for("acme_directory") => return None,
        None => Url::parse(LETS_ENCRYPT).ok()?,
    };
    if directory.scheme() != "https" {
        r.error(
            "acme_directory",
            "must be an https:// URL (ACME is spoken over HTTPS only)",
        );
    }
    if let Some(e) = &email {
        if !e.contains('@') || e.contains(char::is_whitespace) {
            r.error("acme_email", format!("{e:?} is not an e-mail address"));
        }
    }
    let mut names = Vec::new();
    for d in domains {
        match crate::tls::acme_name(&d) {
            Ok(n) => names.push(n),
            Err(why) => r.error("domains", format!("{d:?}: {why}")),
        }
    }
    if let Some(f) = &ca_file {
        if let Err(e) = crate::tls::read_roots(f) {
            r.error("acme_ca_file", e);
        }
    }
    let challenge = if challenge == "http-01" {
        AcmeChallenge::Http01
    } else {
        AcmeChallenge::TlsAlpn01
    };
    Some(Some(TlsConfig {
        certs: TlsCerts::Acme(AcmeConfig {
            directory,
            email,
            domains: names,
            ca_file,
            dir: dir.unwrap_or_default(),
            challenge,
        }),
        hsts,
    }))
}

/// ACME's defaults taken from other sections: the domain from `server.public_url`, the folder
/// from the data folder; and the checks that need them.
fn acme_defaults(
    acme: &mut AcmeConfig,
    server: &ServerConfig,
    data_dir: Option<PathBuf>,
    errors: &mut Vec<ConfigError>,
) {
    let mut err = |key: &str, message: String| {
        errors.push(ConfigError {
            key: format!("tls.{key}"),
            message,
        })
    };
    if acme.domains.is_empty() {
        match server.public_url.host() {
            Some(url::Host::Domain(h)) => match crate::tls::acme_name(h) {
                Ok(n) => acme.domains.push(n),
                Err(why) => err("domains", format!("server.public_url's host {h:?}: {why}")),
            },
            _ => err(
                "domains",
                "is required: server.public_url's host is an IP address, and ACME certificates are for DNS names (or use tls.cert_file/key_file)".into(),
            ),
        }
    }
    if acme.dir.as_os_str().is_empty() {
        match data_dir {
            Some(d) => acme.dir = d.join("acme"),
            None => err(
                "acme_dir",
                "is required when the store is not a SQLite file: a folder for the ACME account and certificate (shared by the replicas, e.g. a volume mounted on each)".into(),
            ),
        }
    }
    if acme.challenge == AcmeChallenge::Http01 && server.http_listen.is_none() {
        err(
            "acme_challenge",
            "\"http-01\" is answered on server.http_listen, which is not set: set it (e.g. 0.0.0.0:80), or use \"tls-alpn-01\"".into(),
        );
    }
}

fn read_upstream(r: &mut Reader<'_>) -> Option<UpstreamConfig> {
    let url = r.opt_url("url");
    if url.is_none() && !r.has_error_for("url") {
        r.error(
            "url",
            "is required: the internal URL of Matomo, e.g. url = \"http://matomo:80\"",
        );
    }
    if let Some(u) = &url {
        if u.scheme() != "http" {
            r.error(
                "url",
                "only http:// upstreams are supported (Matomo on the internal network)",
            );
        }
    }
    let connect_timeout = r.duration("connect_timeout", Duration::from_secs(5));
    let timeout = r.duration("timeout", Duration::from_secs(120));
    Some(UpstreamConfig {
        url: url?,
        connect_timeout,
        timeout,
    })
}

fn read_secret(
    r: &mut Reader<'_>,
    key: &'static str,
    file_key: &'static str,
) -> Option<SecretString> {
    let inline = r.opt_string(key);
    let file = r.opt_string(file_key);
    match (inline, file) {
        (Some(_), Some(_)) => {
            r.error(
                file_key,
                format!("set either {key} or {file_key}, not both"),
            );
            None
        }
        (Some(s), None) => Some(SecretString::from(s)),
        (None, Some(f)) => match std::fs::read_to_string(&f) {
            Ok(s) => {
                let s = s.trim_end_matches(['\n', '\r']).to_string();
                if s.is_empty() {
                    r.error(file_key, format!("the file {f:?} is empty"));
                    None
                } else {
                    Some(SecretString::from(s))
                }
            }
            Err(e) => {
                r.error(file_key, format!("cannot read {f:?}: {e}"));
                None
            }
        },
        (None, None) => None,
    }
}

fn read_provider(r: &mut Reader<'_>) -> Option<ProviderConfig> {
    let name = r.string("name", DEFAULT_BUTTON);
    let issuer = match r.opt_string("issuer") {
        None => Url::parse(UNIKNAME_ISSUER).ok(),
        Some(s) if s == "none" => None,
        Some(s) => match Url::parse(&s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
            _ => {
                r.error(
                    "issuer",
                    format!("{s:?} is not an http(s) URL (or \"none\" to skip discovery)"),
                );
                None
            }
        },
    };
    let authorize_url = r.url("authorize_url", UNIKNAME_AUTHORIZE);
    let token_url = r.url("token_url", UNIKNAME_TOKEN);
    let userinfo_url = r.url("userinfo_url", UNIKNAME_USERINFO);
    let jwks_url = r.opt_url("jwks_url");
    let end_session_url = r.opt_url("end_session_url");
    let userinfo_id = r.string("userinfo_id", "sub");
    if userinfo_id.split('.').any(|p| p.is_empty()) {
        r.error(
            "userinfo_id",
            "must be a claim name such as \"sub\" or a dotted path such as \"attributes.uid\"",
        );
    }
    let scopes = r.list("scopes", &["openid", "email"]);
    if !scopes.iter().any(|s| s == "openid") {
        r.error("scopes", "must contain \"openid\"");
    }
    let client_id = r.opt_string("client_id");
    let client_secret = read_secret(r, "client_secret", "client_secret_file");
    let token_auth_method = match r
        .choice(
            "token_auth_method",
            "client_secret_basic",
            &["client_secret_basic", "client_secret_post"],
        )
        .as_str()
    {
        "client_secret_post" => TokenAuthMethod::Post,
        _ => TokenAuthMethod::Basic,
    };
    let id_token_algs = r.list("id_token_algs", &["RS256"]);
    const ALGS: &[&str] = &[
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
        "HS384", "HS512",
    ];
    for a in &id_token_algs {
        if !ALGS.contains(&a.as_str()) {
            let msg = format!(
                "{a:?} is not a supported algorithm; use some of {}",
                ALGS.join(", ")
            );
            r.error("id_token_algs", msg);
        }
    }
    let timeout = r.duration("timeout", Duration::from_secs(10));
    let allow_get_start = r.bool("allow_get_start", false);
    Some(ProviderConfig {
        name,
        issuer,
        authorize_url: authorize_url?,
        token_url: token_url?,
        userinfo_url: userinfo_url?,
        jwks_url,
        end_session_url,
        userinfo_id,
        scopes,
        client_id,
        client_secret,
        token_auth_method,
        id_token_algs,
        timeout,
        allow_get_start,
    })
}

fn read_session(r: &mut Reader<'_>) -> Option<SessionConfig> {
    let cookie_name = r.string("cookie_name", "unikgate_session");
    if cookie_name.is_empty()
        || !cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        || cookie_name == MATOMO_COOKIE
    {
        r.error(
            "cookie_name",
            "must be letters, digits, - or _, and not MATOMO_SESSID",
        );
    }
    let idle_timeout = r.duration("idle_timeout", Duration::from_secs(12 * 3600));
    let absolute_timeout = r.duration("absolute_timeout", Duration::from_secs(7 * 24 * 3600));
    if absolute_timeout < idle_timeout {
        r.error(
            "absolute_timeout",
            "must not be shorter than session.idle_timeout",
        );
    }
    let key = read_secret(r, "key", "key_file");
    if let Some(k) = &key {
        use secrecy::ExposeSecret;
        if k.expose_secret().len() < MIN_KEY_LEN {
            r.error(
                "key",
                format!(
                    "is shorter than {MIN_KEY_LEN} bytes; make one with: head -c 48 /dev/urandom | base64 -w0  (64 characters)"
                ),
            );
        }
    }
    Some(SessionConfig {
        cookie_name,
        idle_timeout,
        absolute_timeout,
        key,
    })
}

/// `[store]`: its config when every URL is supported; and where sessions are, known on its own
/// (the `session.key` check reads it even when another of the URLs is wrong).
fn read_store(r: &mut Reader<'_>) -> Option<(Option<StoreConfig>, Option<StoreUrl>)> {
    let url = r.string("url", "sqlite://data/unikgate.db");
    let sessions_url = r.opt_string("sessions_url").unwrap_or_else(|| url.clone());
    let links_url = r.opt_string("links_url").unwrap_or_else(|| url.clone());
    let mut parse = |key: &'static str, value: &str| {
        let parsed = StoreUrl::parse(value);
        if parsed.is_none() {
            r.error(
                key,
                "is not a supported store: use sqlite://path/to/file.db, postgres://user:password@host/database or redis://host:6379/0",
            );
        }
        parsed
    };
    let (parsed_url, parsed_sessions, parsed_links) = (
        parse("url", &url),
        parse("sessions_url", &sessions_url),
        parse("links_url", &links_url),
    );
    if matches!(parsed_links, Some(StoreUrl::Redis(_))) && !r.has_error_for("url") {
        let key = if links_url == url { "url" } else { "links_url" };
        r.error(
            key,
            "links need a database: with Redis for sessions, set store.links_url to a postgres:// (or sqlite://) URL",
        );
    }
    let max_connections = r.u64("max_connections", 16, 1, 1000) as u32;
    let config = match (parsed_url, parsed_sessions.clone(), parsed_links) {
        (Some(url), Some(sessions_url), Some(links_url)) => Some(StoreConfig {
            url,
            sessions_url,
            links_url,
            max_connections,
        }),
        _ => None,
    };
    Some((config, parsed_sessions))
}

fn read_matomo(r: &mut Reader<'_>) -> Option<MatomoConfig> {
    let signed = r
        .choice("minter", "autologin", &["autologin", "signed"])
        .as_str()
        == "signed";
    let shared_secret = read_secret(r, "shared_secret", "shared_secret_file");
    let minter = {
        use secrecy::ExposeSecret;
        match (signed, shared_secret) {
            (true, None) => {
                r.error(
                    "shared_secret",
                    "is required with minter = \"signed\": the same value as [UnikGate] shared_secret in Matomo's config.ini.php (make one: head -c 32 /dev/urandom | base64)",
                );
                // Never used: the configuration is refused with the error above.
                MinterConfig::AutoLogin
            }
            (_, Some(s)) if s.expose_secret().len() < 32 => {
                r.error(
                    "shared_secret",
                    "is shorter than 32 bytes; make one: head -c 32 /dev/urandom | base64",
                );
                MinterConfig::AutoLogin
            }
            (true, Some(s)) => MinterConfig::Signed(s),
            (false, _) => MinterConfig::AutoLogin,
        }
    };
    let password_login = r.bool("password_login", false);
    let idle_timeout = r.duration("idle_timeout", Duration::from_secs(3600));
    let public_paths = r.list("public_paths", &[]);
    for p in &public_paths {
        if !p.starts_with('/') || p.contains("..") || p.contains('?') || p.contains('\\') {
            r.error(
                "public_paths",
                format!("{p:?} must be a path starting with / (no query, no ..); end it with / for a whole folder"),
            );
        }
    }
    let uns_verification_file = r.opt_string("uns_verification_file").map(PathBuf::from);
    if let Some(f) = &uns_verification_file {
        if !f.is_file() {
            r.error(
                "uns_verification_file",
                format!("{} is not a readable file", f.display()),
            );
        }
    }
    let deny_superusers = r.bool("deny_superusers", false);
    Some(MatomoConfig {
        minter,
        password_login,
        idle_timeout,
        public_paths,
        uns_verification_file,
        deny_superusers,
    })
}

fn read_access(r: &mut Reader<'_>) -> Option<AccessConfig> {
    let allow_subjects: Vec<String> = r
        .list("allow_subjects", &[])
        .into_iter()
        .map(|s| s.trim().to_string())
        .collect();
    if allow_subjects.iter().any(String::is_empty) {
        r.error("allow_subjects", "holds an empty entry");
    }
    let mut allow_email_domains = Vec::new();
    for d in r.list("allow_email_domains", &[]) {
        let d = d.trim().trim_start_matches('@').to_ascii_lowercase();
        let ok = !d.is_empty()
            && d.len() <= 253
            && d.contains('.')
            && d.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if ok {
            allow_email_domains.push(d);
        } else {
            r.error(
                "allow_email_domains",
                format!("{d:?} is not a domain such as \"example.org\" (the part of an e-mail address after @)"),
            );
        }
    }
    let mut require_claims = Vec::new();
    for e in r.list("require_claims", &[]) {
        match e.split_once('=') {
            Some((path, value))
                if !path.trim().is_empty()
                    && !value.is_empty()
                    && path.trim().split('.').all(|p| !p.is_empty()) =>
            {
                require_claims.push((path.trim().to_string(), value.to_string()))
            }
            _ => r.error(
                "require_claims",
                format!("{e:?} must be claim=value, such as \"groups=matomo\" (dotted paths reach nested claims)"),
            ),
        }
    }
    Some(AccessConfig {
        allow_subjects,
        allow_email_domains,
        require_claims,
    })
}

fn read_provision(r: &mut Reader<'_>) -> Option<ProvisionConfig> {
    let mode = match r.choice("mode", "off", &["off", "offer", "auto"]).as_str() {
        "offer" => ProvisionMode::Offer,
        "auto" => ProvisionMode::Auto,
        _ => ProvisionMode::Off,
    };
    let login_claim = r.string("login_claim", "preferred_username");
    if login_claim.trim().is_empty() || login_claim.split('.').any(str::is_empty) {
        r.error(
            "login_claim",
            "must be preferred_username, email, subject, or a claim path",
        );
    }
    let mut access = Vec::new();
    for e in r.list("access", &[]) {
        match SiteAccess::parse(&e) {
            Some(a) => access.push(a),
            None => r.error(
                "access",
                format!("{e:?} must be /matomo/<idSite>/<view|write|admin>, such as \"/matomo/1/view\" (superuser is never given)"),
            ),
        }
    }
    let access_claim = r
        .opt_string("access_claim")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let access_claim_prune = r.bool("access_claim_prune", false);
    if access_claim_prune && access_claim.is_none() {
        r.error(
            "access_claim_prune",
            "only means something with provision.access_claim",
        );
    }
    Some(ProvisionConfig {
        mode,
        login_claim,
        access,
        access_claim,
        access_claim_prune,
    })
}

fn read_audit(r: &mut Reader<'_>) -> Option<AuditConfig> {
    let retention = r.duration("retention", Duration::from_secs(90 * 86400));
    if retention < Duration::from_secs(3600) {
        r.error("retention", "must be at least 1h (such as \"90d\")");
    }
    Some(AuditConfig { retention })
}

fn read_links(r: &mut Reader<'_>) -> Option<LinksConfig> {
    Some(LinksConfig {
        allow_unlink: r.bool("allow_unlink", true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MIN: &str = "[upstream]\nurl = \"http://127.0.0.1:9\"\n";

    #[test]
    fn matomo_under_a_path_puts_the_prefix_under_it_and_asks_the_upstream_for_the_same_path() {
        let load = |public: &str, upstream: &str| {
            Config::from_toml(
                &format!("[server]\npublic_url = \"{public}\"\n[upstream]\nurl = \"{upstream}\"\n"),
                &env(&[]),
            )
        };
        let c = load("https://example.org/analytics/", "http://matomo/analytics/").expect("valid");
        assert_eq!(c.server.base, "/analytics");
        assert_eq!(c.server.prefix, "/analytics/_unikgate");
        assert_eq!(c.public_base(), "https://example.org/analytics");
        assert_eq!(
            c.redirect_uri(),
            "https://example.org/analytics/_unikgate/callback"
        );
        let c = load("https://example.org/analytics", "http://matomo/analytics").expect("valid");
        assert_eq!(c.server.base, "/analytics");
        let c = load("https://analytics.example.org", "http://matomo:80").expect("valid");
        assert_eq!(
            (c.server.base.as_str(), c.server.prefix.as_str()),
            ("", "/_unikgate")
        );
        let keys = |r: Result<Config, Vec<ConfigError>>| -> Vec<String> {
            r.err()
                .unwrap_or_default()
                .into_iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect()
        };
        let e = keys(load("https://example.org/analytics/", "http://matomo:80"));
        assert!(
            e.len() == 1
                && e[0].starts_with(
                    "upstream.url: must have the path of server.public_url, \"/analytics\""
                ),
            "{e:?}"
        );
        let e = keys(load("https://example.org", "http://matomo/analytics/"));
        assert!(
            e.len() == 1
                && e[0].starts_with(
                    "upstream.url: has the path \"/analytics\" while server.public_url has none"
                ),
            "{e:?}"
        );
        let e = keys(load("https://example.org/a b/", "http://matomo/"));
        assert!(
            e.iter()
                .any(|e| e.starts_with("server.public_url: the path")),
            "{e:?}"
        );
        let e = keys(load(
            "https://example.org/analytics/?x=1",
            "http://matomo/analytics/",
        ));
        assert!(
            e.iter()
                .any(|e| e.starts_with("server.public_url: must be a URL")),
            "{e:?}"
        );
    }

    #[test]
    fn defaults_are_unikname_connect() {
        let c = Config::from_toml(MIN, &env(&[])).unwrap();
        assert_eq!(c.provider.name, DEFAULT_BUTTON);
        assert_eq!(c.provider.authorize_url.as_str(), UNIKNAME_AUTHORIZE);
        assert_eq!(c.provider.token_url.as_str(), UNIKNAME_TOKEN);
        assert_eq!(c.provider.userinfo_url.as_str(), UNIKNAME_USERINFO);
        assert_eq!(c.provider.userinfo_id, "sub");
        assert_eq!(c.provider.scopes, vec!["openid", "email"]);
        assert_eq!(c.server.prefix, "/_unikgate");
        assert_eq!(c.store.url, "sqlite://data/unikgate.db");
        assert_eq!(c.matomo.idle_timeout, Duration::from_secs(3600));
        assert!(!c.provider_configured());
    }

    #[test]
    fn env_overrides_keep_strings_as_strings() {
        let c = Config::from_toml(
            MIN,
            &env(&[
                ("UNIKGATE_PROVIDER__CLIENT_ID", "0123"),
                ("UNIKGATE_PROVIDER__CLIENT_SECRET", "s"),
                ("UNIKGATE_MATOMO__PASSWORD_LOGIN", "true"),
                ("UNIKGATE_SERVER__TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.provider.client_id.as_deref(), Some("0123"));
        assert!(c.matomo.password_login);
        assert_eq!(c.server.trusted_proxies.len(), 2);
    }

    #[test]
    fn all_errors_are_reported_by_key() {
        let text = "[server]\npublic_url = \"not a url\"\nlisten_port = 3\n[upstream]\nurl = \"http://x\"\ntimeout = \"forever\"\n[bogus]\n";
        let errs = Config::from_toml(text, &env(&[])).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"server.public_url"), "{errs:?}");
        assert!(keys.contains(&"server.listen_port"), "{errs:?}");
        assert!(keys.contains(&"upstream.timeout"), "{errs:?}");
        assert!(keys.contains(&"bogus"), "{errs:?}");
    }

    #[test]
    fn missing_upstream_is_named() {
        let errs = Config::from_toml("", &env(&[])).unwrap_err();
        assert_eq!(errs[0].key, "upstream.url");
    }

    #[test]
    fn stores() {
        let e = env(&[]);
        let c = Config::from_toml(
            &format!(
                "{MIN}[store]\nurl = \"postgres://u:p@db/unikgate\"\n[session]\nkey = \"{}\"\n",
                "k".repeat(64)
            ),
            &e,
        )
        .unwrap();
        assert_eq!(c.store.links_url, "postgres://u:p@db/unikgate");
        let errs = Config::from_toml(&format!("{MIN}[store]\nurl = \"redis://cache:6379\"\n"), &e)
            .unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(
            keys.contains(&"store.url") && keys.contains(&"session.key"),
            "{errs:?}"
        );
        assert!(errs
            .iter()
            .any(|e| e.message.contains("links need a database")));
        let ok = format!("{MIN}[store]\nurl = \"redis://cache:6379\"\nlinks_url = \"postgres://db/u\"\n[session]\nkey = \"{}\"\n", "k".repeat(64));
        assert!(Config::from_toml(&ok, &e).is_ok());
        assert!(Config::from_toml(&format!("{MIN}[store]\nurl = \"mysql://x\"\n"), &e).is_err());
    }

    #[test]
    fn store_urls_are_read_once_and_shown_without_their_password() {
        let e = env(&[]);
        let text = format!("{MIN}[store]\nurl = \"sqlite:data/x.db?mode=rwc\"\nsessions_url = \"redis://:secret@cache:6379/0\"\nlinks_url = \"postgresql://u:secret@db/unikgate\"\n[session]\nkey = \"{}\"\n", "k".repeat(64));
        let c = Config::from_toml(&text, &e).unwrap();
        assert_eq!(c.store.url, StoreUrl::Sqlite(PathBuf::from("data/x.db")));
        assert_eq!(c.store.url, "sqlite://data/x.db");
        assert!(
            matches!(&c.store.sessions_url, StoreUrl::Redis(u) if u == "redis://:secret@cache:6379/0")
        );
        assert!(
            matches!(&c.store.links_url, StoreUrl::Postgres(u) if u == "postgresql://u:secret@db/unikgate")
        );
        let shown = format!("{} {:?} {:?}", c.store.links_url, c.store.links_url, c);
        assert!(!shown.contains(":secret@"), "{shown}");
        assert!(shown.contains("postgresql://u:***@db/unikgate"), "{shown}");
        // A wrong links_url with sessions in SQLite asks for no session key.
        let errs = Config::from_toml(&format!("{MIN}[store]\nlinks_url = \"mysql://x\"\n"), &e)
            .unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["store.links_url"], "{errs:?}");
    }

    #[test]
    fn short_key_refused() {
        let errs = Config::from_toml(&format!("{MIN}[session]\nkey = \"short\"\n"), &env(&[]))
            .unwrap_err();
        assert_eq!(errs[0].key, "session.key");
    }

    #[test]
    fn known_keys_match_readers() {
        // Every key listed must be accepted in a file, and a made-up one refused.
        for (section, keys) in KNOWN_KEYS {
            for key in *keys {
                let text = format!("{MIN}[{section}]\n{key} = 1\n");
                let text = if *section == "upstream" {
                    format!("[upstream]\nurl = \"http://x\"\n{key} = 1\n")
                } else {
                    text
                };
                if let Err(errs) = Config::from_toml(&text, &env(&[])) {
                    assert!(
                        !errs.iter().any(|e| e.message.starts_with("unknown key")),
                        "{section}.{key} unknown: {errs:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_key_of_the_reference_file_can_be_set_from_the_environment() {
        // The reference configuration names every key; each must be a known environment name.
        let reference: toml::Table = include_str!("../../config/unikgate.toml").parse().unwrap();
        let mut names = Vec::new();
        for (section, keys) in &reference {
            for key in keys.as_table().unwrap().keys() {
                names.push(format!(
                    "UNIKGATE_{}__{}",
                    section.to_ascii_uppercase(),
                    key.to_ascii_uppercase()
                ));
            }
        }
        assert!(names.len() > 20, "{names:?}");
        for name in &names {
            let errs = Config::from_toml(MIN, &env(&[(name.as_str(), "1")])).err();
            let unknown = errs
                .iter()
                .flatten()
                .any(|e| e.message.contains("names no config key"));
            assert!(!unknown, "{name} is not a known key: {errs:?}");
        }
    }
}
