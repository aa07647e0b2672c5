//! `unikgate doctor`: looks at HTTPS, reaches the provider and Matomo step by step and says what
//! to fix.
//!
//! Invariant: creates nothing anywhere (the AutoLogin probe sends a made-up name without an
//! email, which Matomo refuses before creating a user; the token probe sends a made-up code; the
//! ACME folder's write check removes its probe file). With ACME it orders nothing: ordering
//! begins with `serve`'s listener, and doctor only asks the CA's directory.
//! With `--as LOGIN` it opens one real Matomo session for that login, checks who owns it, and
//! logs it out again: the only step that proves minting works inside Matomo.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use http::Method;

use crate::app::App;
use crate::error::Error;
use crate::tls::acme::Acme;
use crate::tls::{Certificates, Leaf, Served};
use crate::upstream::matomo;

/// One step's verdict.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    /// Not run (it would have side effects the command was not asked for); never a failure.
    pub skipped: bool,
    pub detail: String,
}

fn step(name: &'static str, ok: bool, detail: impl Into<String>) -> Step {
    Step {
        name,
        ok,
        skipped: false,
        detail: detail.into(),
    }
}

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Every check; `as_login` also mints a real Matomo session for that login (then ends it).
pub async fn run(app: &App, as_login: Option<&str>) -> Vec<Step> {
    let mut out = vec![step(
        "URIs to register",
        true,
        format!(
            "at the provider, for client {}: redirect URI {}, post-logout redirect URI {}, back-channel logout URI {}",
            app.cfg.provider.client_id.as_deref().unwrap_or("(not set)"),
            app.cfg.redirect_uri(),
            app.cfg.post_logout_redirect_uri(),
            app.cfg.backchannel_logout_uri()
        ),
    )];
    out.extend(tls_steps(app).await);
    match &app.oidc {
        None => out.push(step(
            "provider credentials",
            false,
            format!(
                "not configured yet: set {}",
                app.cfg.missing_provider_credentials().join(" and ")
            ),
        )),
        Some(o) => {
            let ep = o.endpoints().await;
            out.push(step(
                "provider endpoints",
                true,
                if ep.from_discovery {
                    format!("discovery OK; token endpoint {}", ep.token)
                } else {
                    format!(
                        "discovery unavailable; using the configured URLs (token endpoint {})",
                        ep.token
                    )
                },
            ));
            out.push(step(
                "ID token keys",
                true,
                if ep.jwks.is_some() {
                    "keys known: ID tokens are verified".to_string()
                } else {
                    "no keys (no discovery, no provider.jwks_url): ID tokens are not verified; userinfo alone identifies people".to_string()
                },
            ));
            out.push(step(
                "back-channel logout",
                true,
                match (ep.from_discovery, ep.backchannel_logout_supported, ep.backchannel_logout_session_supported) {
                    (true, Some(true), Some(true)) => "supported by the provider, with sid (backchannel_logout_supported, backchannel_logout_session_supported): a sign-out or revocation there ends the unikgate and Matomo sessions at once".to_string(),
                    (true, Some(true), _) => "supported by the provider (backchannel_logout_supported), without sid: a logout there ends every session of that @unikname".to_string(),
                    (true, _, _) => "the provider's discovery does not say backchannel_logout_supported: sessions end at unikgate's sign-out or when they lapse".to_string(),
                    (false, _, _) => "unknown (no discovery): register the back-channel logout URI if the provider offers it".to_string(),
                },
            ));
            out.push(match o.probe_credentials().await {
                Ok(()) => step("client credentials", true, "accepted (a made-up code was refused with invalid_grant)"),
                Err(Error::ProviderClientRejected) => step(
                    "client credentials",
                    false,
                    "refused (invalid_client): check provider.client_id, the client secret and provider.token_auth_method",
                ),
                Err(e @ Error::ProviderUnreachable(_)) => step("client credentials", false, format!("cannot reach the token endpoint {}: {}", ep.token, e.chain())),
                Err(e) => step("client credentials", false, format!("unexpected answer: {e}")),
            });
        }
    }
    let up = &app.upstream;
    let matomo_ok = match up
        .call(
            Method::GET,
            "/index.php?module=Login&action=login",
            Default::default(),
            None,
            LOCAL,
        )
        .await
    {
        Ok(a) if matomo::parse_user_login(&String::from_utf8_lossy(&a.body)).is_some() => {
            out.push(step(
                "Matomo",
                true,
                format!("{} answers as Matomo", app.cfg.upstream.url),
            ));
            true
        }
        Ok(a) => {
            out.push(step(
                "Matomo",
                false,
                format!(
                    "{} answered {} but not with Matomo's login page: is upstream.url Matomo?",
                    app.cfg.upstream.url,
                    a.status.as_u16()
                ),
            ));
            false
        }
        Err(e) => {
            out.push(step(
                "Matomo",
                false,
                format!("{}: {e}", app.cfg.upstream.url),
            ));
            false
        }
    };
    if matomo_ok {
        match &app.cfg.matomo.minter {
            crate::config::MinterConfig::Signed(secret) => {
                out.extend(signed_steps(app, secret).await)
            }
            _ => out.push(autologin_step(app).await),
        }
        out.push(match as_login {
            Some(login) => mint_step(app, login).await,
            None => Step {
                skipped: true,
                ..step(
                    "mint",
                    true,
                    "not exercised: `unikgate doctor --as <a Matomo login>` opens (and closes) a real Matomo session",
                )
            },
        });
    }
    out
}

/// A certificate that expires sooner than this fails the TLS step.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(7 * 86400);
/// How long the ACME directory has to answer doctor.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTPS served by unikgate (`[tls]`): with files, the certificate's names and expiry; with
/// ACME, the CA's directory, the folder, the stored certificate and the last failure. Nothing is
/// ordered (the loop begins with `serve`'s listener).
pub async fn tls_steps(app: &App) -> Vec<Step> {
    let host = app.cfg.server.public_url.host();
    match &app.tls {
        None if app.cfg.public_is_https() => vec![step(
            "TLS",
            true,
            format!(
                "not served here ([tls] unset): the proxy in front serves {}",
                app.cfg.public_origin()
            ),
        )],
        None => Vec::new(),
        Some(Served::Files(c)) => vec![files_step(c, host, SystemTime::now())],
        Some(Served::Acme(a)) => acme_steps(a, host, SystemTime::now()).await,
    }
}

/// "in 89 days", "in 5 h", "3 days ago", "just now".
fn from_now(t: SystemTime, now: SystemTime) -> String {
    let gap = t
        .duration_since(now)
        .unwrap_or_else(|e| e.duration())
        .as_secs();
    if gap < 60 {
        return "just now".into();
    }
    let words = |d: Duration| {
        let s = d.as_secs();
        if s >= 2 * 86400 {
            format!("{} days", s / 86400)
        } else if s >= 3600 {
            format!("{} h", s / 3600)
        } else {
            format!("{} min", s / 60)
        }
    };
    match t.duration_since(now) {
        Ok(d) => format!("in {}", words(d)),
        Err(e) => format!("{} ago", words(e.duration())),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A certificate's names and dates against the public host and the clock: the verdict and
/// the line; `fix` says what to do when it expires soon.
fn judge(leaf: &Leaf, host: Option<url::Host<&str>>, now: SystemTime, fix: &str) -> (bool, String) {
    let names = if leaf.names.is_empty() {
        "no names (no subject alternative name)".to_string()
    } else {
        leaf.names.join(", ")
    };
    let expiry = if leaf.not_after <= now {
        format!("expired {}", rfc3339(leaf.not_after))
    } else {
        format!("expires {}", rfc3339(leaf.not_after))
    };
    let line = format!("for {names}; {expiry} ({})", from_now(leaf.not_after, now));
    if let Some(h) = &host {
        if !crate::tls::names_host(&leaf.names, h) {
            return (
                false,
                format!("does not name {h} (server.public_url's host): {line}"),
            );
        }
    }
    if leaf.not_before > now {
        return (
            false,
            format!(
                "not valid before {} (check the clock): {line}",
                rfc3339(leaf.not_before)
            ),
        );
    }
    if leaf.not_after <= now + EXPIRY_MARGIN {
        return (false, format!("{line}: {fix}"));
    }
    (true, line)
}

fn files_step(certs: &Certificates, host: Option<url::Host<&str>>, now: SystemTime) -> Step {
    const NAME: &str = "TLS certificate";
    let Some(der) = certs.current().and_then(|ck| ck.cert.first().cloned()) else {
        return step(NAME, false, "no certificate in use");
    };
    match crate::tls::leaf(&der) {
        Ok(leaf) => {
            let (ok, line) = judge(
                &leaf,
                host,
                now,
                "renew it and replace tls.cert_file and tls.key_file (read again within 5 s)",
            );
            step(NAME, ok, line)
        }
        Err(e) => step(NAME, false, format!("tls.cert_file: {e}")),
    }
}

async fn acme_steps(acme: &Acme, host: Option<url::Host<&str>>, now: SystemTime) -> Vec<Step> {
    let cfg = acme.config();
    let mut out = vec![directory_step(cfg).await, folder_step(&cfg.dir)];
    let status = acme.status();
    out.push(match &status.issued {
        None => match &host {
            Some(h) if !crate::tls::names_host(&cfg.domains, h) => step(
                "ACME certificate",
                false,
                format!(
                    "none yet, and tls.domains ({}) does not name {h} (server.public_url's host)",
                    cfg.domains.join(", ")
                ),
            ),
            _ => step(
                "ACME certificate",
                true,
                "none yet (ordered when `serve` starts)",
            ),
        },
        Some(i) => {
            let leaf = Leaf {
                names: i.names.clone(),
                not_before: i.not_before,
                not_after: i.not_after,
                serial: i.serial.clone(),
            };
            let (ok, line) = judge(
                &leaf,
                host,
                now,
                "renewals are failing (see the last error, and `serve`'s log)",
            );
            let renew = match status.renew_from {
                Some(at) if at > now => format!("renewal from {}", rfc3339(at)),
                Some(_) => "renewal due (by `serve`)".to_string(),
                None => "renewal due: it does not name every tls.domains".to_string(),
            };
            step("ACME certificate", ok, format!("{line}; {renew}"))
        }
    });
    if let Some(e) = status.last_error {
        let at = status
            .last_error_at
            .map(|t| format!("{} ({}): ", rfc3339(t), from_now(t, now)))
            .unwrap_or_default();
        out.push(step("ACME last error", false, format!("{at}{e}")));
    }
    out
}

/// A GET of the ACME directory, with the client `serve` orders with (its roots and
/// `tls.acme_ca_file`), bounded by [`DIRECTORY_TIMEOUT`].
async fn directory_step(cfg: &crate::config::AcmeConfig) -> Step {
    const NAME: &str = "ACME directory";
    let url = &cfg.directory;
    let client = match crate::tls::acme::client(cfg, DIRECTORY_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return step(NAME, false, e),
    };
    let ca_hint = if cfg.ca_file.is_none() {
        " (a private CA's root goes in tls.acme_ca_file)"
    } else {
        ""
    };
    let res = match client.get(url.clone()).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return step(
                NAME,
                false,
                format!(
                    "{url}: no answer within {} s: check that this host can open HTTPS connections to it",
                    DIRECTORY_TIMEOUT.as_secs()
                ),
            )
        }
        Err(e) => {
            return step(
                NAME,
                false,
                format!(
                    "cannot reach {url}: {}: check tls.acme_directory and that this host can open HTTPS connections to it{ca_hint}",
                    crate::tls::acme::in_words(&e.without_url())
                ),
            )
        }
    };
    let status = res.status();
    let body = res.bytes().await.unwrap_or_default();
    let is_directory = serde_json::from_slice::<serde_json::Value>(&body)
        .is_ok_and(|v| v.get("newOrder").is_some_and(|o| o.is_string()));
    if status.is_success() && is_directory {
        step(NAME, true, format!("{url} answers"))
    } else {
        step(
            NAME,
            false,
            format!(
                "{url} answered {} without an ACME directory (no newOrder): check tls.acme_directory",
                status.as_u16()
            ),
        )
    }
}

/// The ACME folder can be written: a probe file made and removed.
fn folder_step(dir: &Path) -> Step {
    const NAME: &str = "ACME folder";
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let wrote = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"unikgate doctor\n"));
    let _ = std::fs::remove_file(&probe);
    match wrote {
        Ok(()) => step(NAME, true, format!("{} is writable", dir.display())),
        Err(e) => step(
            NAME,
            false,
            format!(
                "cannot write in {} ({e}): it holds the account, the certificate and the challenge answers; make it writable by unikgate's user (a volume shared by the replicas)",
                dir.display()
            ),
        ),
    }
}

/// The minter's hints for a failure, by kind.
fn mint_advice(app: &App) -> &'static str {
    match app.cfg.matomo.minter {
        crate::config::MinterConfig::Signed(_) => "check that the UnikGate plugin of this unikgate version is in Matomo's plugins/ and activated, [UnikGate] shared_secret, the clocks, and Matomo's error log",
        crate::config::MinterConfig::AutoLogin => "check that AutoLogin is activated and that Matomo runs under Apache with mod_php",
    }
}

/// A real mint for `login`: the session must belong to `login`, and must end on logout.
async fn mint_step(app: &App, login: &str) -> Step {
    let cookie = match app.minter.mint(&app.upstream, login, LOCAL).await {
        Ok(c) => c,
        Err(e) => {
            return step(
                "mint",
                false,
                format!(
                    "opening a Matomo session for {login:?} failed: {e} — {}",
                    mint_advice(app)
                ),
            )
        }
    };
    let fail = |detail: String| step("mint", false, detail);
    let owner = app.minter.who_am_i(&app.upstream, &cookie, LOCAL).await;
    // Logged out whatever the owner turned out to be: doctor leaves no session behind.
    let ended = matomo::logout(&app.upstream, &cookie, LOCAL).await;
    match owner {
        Ok(Some(o)) if o == login => {}
        Ok(Some(o)) => {
            return fail(format!(
                "the session opened for {login:?} belongs to {o:?}: {}",
                mint_advice(app)
            ))
        }
        Ok(None) => {
            return fail(format!(
                "Matomo gave a session cookie, but the session is anonymous: {}",
                mint_advice(app)
            ))
        }
        Err(e) => return fail(format!("who owns the new session: {e}")),
    }
    if let Err(e) = ended {
        return fail(format!("logging the new session out: {e}"));
    }
    match app.minter.who_am_i(&app.upstream, &cookie, LOCAL).await {
        Ok(None) => step(
            "mint",
            true,
            format!(
                "opened a Matomo session for {login}, Matomo named its owner, and logged it out"
            ),
        ),
        Ok(Some(o)) => fail(format!(
            "the session still belongs to {o} after Matomo's logout"
        )),
        Err(e) => fail(format!("who owns the session after logout: {e}")),
    }
}

/// The UnikGate plugin: present (whoami answers JSON), secret agreed (an assertion that expired
/// two minutes ago must be refused for expiry, not for its signature), clock skew.
async fn signed_steps(app: &App, secret: &secrecy::SecretString) -> Vec<Step> {
    let mut out = Vec::new();
    let who = app
        .upstream
        .call(
            Method::GET,
            "/index.php?module=UnikGate&action=whoami",
            Default::default(),
            None,
            LOCAL,
        )
        .await;
    match who {
        Ok(a)
            if serde_json::from_slice::<serde_json::Value>(&a.body)
                .is_ok_and(|v| v.get("login").is_some()) =>
        {
            out.push(step(
                "UnikGate plugin",
                true,
                "installed and active (whoami answers)",
            ))
        }
        Ok(a) => {
            out.push(step(
                "UnikGate plugin",
                false,
                format!("whoami answered {} without JSON: copy matomo-plugin/UnikGate into Matomo's plugins/ and run ./console plugin:activate UnikGate", a.status.as_u16()),
            ));
            return out;
        }
        Err(e) => {
            out.push(step("UnikGate plugin", false, e.to_string()));
            return out;
        }
    }
    let signer = crate::upstream::matomo::Signed::new(secret.clone(), &app.cfg.public_base());
    let audience = format!("{}/", app.cfg.public_base());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let expired = signer.assertion(
        "unikgate-doctor",
        now.saturating_sub(120),
        &format!("{}/", app.cfg.server.base),
    );
    let a = match signer.post(&app.upstream, &expired, LOCAL).await {
        Ok(a) => a,
        Err(e) => {
            out.push(step("shared secret", false, e.to_string()));
            return out;
        }
    };
    let reason = crate::upstream::matomo::unikgate_reason(&a.body);
    let refused = a.status.as_u16() == 403;
    // The plugin checks the audience before the expiry: either means the signature was good.
    let wrong_audience = refused && reason.starts_with("wrong audience");
    if refused && (reason.starts_with("expired") || wrong_audience) {
        out.push(step(
            "shared secret",
            true,
            "agreed (an expired assertion was refused for something else than its signature)",
        ));
    } else if reason.contains("signature") {
        out.push(step(
            "shared secret",
            false,
            "refused for its signature: matomo.shared_secret differs from [UnikGate] shared_secret in Matomo's config.ini.php",
        ));
        return out;
    } else if reason.contains("shared secret") || reason.contains("public_url") {
        out.push(step(
            "shared secret",
            false,
            format!("the plugin says: {reason}"),
        ));
        return out;
    } else {
        out.push(step(
            "shared secret",
            false,
            format!("unexpected answer {}: {reason}", a.status.as_u16()),
        ));
        return out;
    }
    match crate::upstream::matomo::unikgate_facts(&a.body) {
        Some(f) => out.extend(version_steps(app, &f)),
        None => out.push(step(
            "Matomo version",
            false,
            "not reported: the UnikGate plugin in Matomo is older than this unikgate; copy this version's matomo-plugin/UnikGate into Matomo's plugins/",
        )),
    }
    if wrong_audience {
        let advice =
            crate::upstream::matomo::audience_advice(&reason, &audience).unwrap_or_default();
        out.push(step("audience", false, format!("{reason}: {advice}")));
        return out;
    }
    out.push(step(
        "audience",
        true,
        format!("Matomo takes assertions for {audience}"),
    ));
    // "expired (server time N)": Matomo's clock against ours.
    let server: Option<i64> = reason
        .split("server time ")
        .nth(1)
        .and_then(|r| r.trim_end_matches(')').trim().parse().ok());
    match server {
        Some(t) => {
            let skew = t - now as i64;
            out.push(step(
                "clock skew",
                skew.abs() < 20,
                format!("Matomo's clock is {skew:+} s from unikgate's (assertions live 30 s, 30 s of skew allowed)"),
            ));
        }
        None => out.push(step("clock skew", true, "not reported by the plugin")),
    }
    out
}

/// Where a Matomo version stands in what unikgate's suite proves (README "Which Matomo").
pub fn coverage(v: (u16, u16, u16)) -> &'static str {
    match v {
        (5, 1, 2) => "proved against the real Matomo by unikgate's suite",
        (5, minor, _) if minor <= 14 => {
            "modelled from Matomo's source by unikgate's suite, on the stand-in's version profiles"
        }
        _ => "not checked by this unikgate version: read Matomo's changelog for proxy, API and session changes",
    }
}

/// The checks that depend on the Matomo version, from what the plugin reported.
fn version_steps(app: &App, f: &crate::upstream::matomo::Facts) -> Vec<Step> {
    let mut out = Vec::new();
    let Some(v) = f.version() else {
        out.push(step(
            "Matomo version",
            false,
            format!("the plugin reported {:?}, not a version", f.matomo),
        ));
        return out;
    };
    out.push(step(
        "Matomo version",
        true,
        format!("Matomo {} ({})", f.matomo, coverage(v)),
    ));
    let at_least = |major: u16, minor: u16| (v.0, v.1) >= (major, minor);
    let has = |list: &[String], h: &str| list.iter().any(|x| x.trim() == h);
    const SCHEME_LINE: &str = "[General] proxy_scheme_headers[] = \"HTTP_X_FORWARDED_PROTO\"";
    let named = has(&f.proxy_scheme_headers, "HTTP_X_FORWARDED_PROTO");
    let public = app.cfg.public_origin();
    out.push(if !app.cfg.public_is_https() {
        step(
            "scheme header",
            true,
            format!("the public URL is http: nothing to read (from Matomo 5.7 on, behind TLS, Matomo needs {SCHEME_LINE})"),
        )
    } else if at_least(5, 7) && !named {
        step(
            "scheme header",
            false,
            format!("Matomo {} ignores X-Forwarded-Proto unless proxy_scheme_headers[] names it, and computes {} for itself: add {SCHEME_LINE} to config.ini.php (deploy/matomo-setup.sh writes it)", f.matomo, f.sees),
        )
    } else if !f.sees.starts_with("https://") {
        step(
            "scheme header",
            false,
            format!("Matomo computes {} for itself although unikgate sends X-Forwarded-Proto: https: does something between unikgate and Matomo replace it, or does [General] proxy_scheme_headers[] name another header first?", f.sees),
        )
    } else if at_least(5, 7) {
        step(
            "scheme header",
            true,
            format!("{SCHEME_LINE} is set: Matomo computes {}", f.sees),
        )
    } else {
        step(
            "scheme header",
            true,
            format!("Matomo {} reads X-Forwarded-Proto unasked (from 5.7 on it needs {SCHEME_LINE}: {})", f.matomo, if named { "set already" } else { "deploy/matomo-setup.sh writes it" }),
        )
    });
    out.push(if has(&f.proxy_client_headers, "HTTP_X_FORWARDED_FOR") {
        step("client address header", true, "Matomo reads the visitor's address from X-Forwarded-For")
    } else {
        step(
            "client address header",
            false,
            "add [General] proxy_client_headers[] = \"HTTP_X_FORWARDED_FOR\": without it Matomo records unikgate's address for every visit and counts failed logins against it",
        )
    });
    out.push(if f.proxy_host_headers.is_empty() {
        step("host header", true, "no proxy_host_headers: Matomo takes Host, which unikgate sets to the public host")
    } else {
        step(
            "host header",
            false,
            format!("remove [General] proxy_host_headers ({}): Matomo does not check those headers against trusted_hosts, and unikgate sends none", f.proxy_host_headers.join(", ")),
        )
    });
    out.push(step(
        "plugin audience",
        true,
        if f.public_url.is_empty() {
            format!("[UnikGate] public_url is unset: the plugin checks assertions against the URL Matomo computes ({}); set it to {public} (matomo-setup.sh with PUBLIC_URL) so that it does not hang on that guess", f.sees)
        } else {
            format!("[UnikGate] public_url = {}", f.public_url)
        },
    ));
    let p = &app.cfg.provision;
    let needs: Vec<&str> = [
        (p.mode != crate::config::ProvisionMode::Off, "provision"),
        (p.access_claim.is_some(), "access"),
    ]
    .into_iter()
    .filter_map(|(on, a)| on.then_some(a))
    .collect();
    if !needs.is_empty() {
        let missing: Vec<&str> = needs
            .iter()
            .copied()
            .filter(|a| !f.actions.iter().any(|x| x == a))
            .collect();
        out.push(if missing.is_empty() {
            step(
                "plugin actions",
                true,
                format!("the UnikGate plugin has {} ([provision] uses them)", needs.join(" and ")),
            )
        } else {
            step(
                "plugin actions",
                false,
                format!("[provision] needs the UnikGate plugin's {} action, which the plugin in Matomo lacks: copy this version's matomo-plugin/UnikGate (1.2.0 or later) into Matomo's plugins/", missing.join(" and ")),
            )
        });
    }
    out.push(step(
        "logoutUser",
        true,
        if f.logout_user {
            "UsersManager.logoutUser is there (Matomo 5.9 and later): a Matomo superuser can end every Matomo session of a login; unlink and sign-out end the sessions unikgate opened".to_string()
        } else if at_least(5, 9) {
            "UsersManager.logoutUser is missing although Matomo is 5.9 or later: unlink and sign-out end the sessions unikgate opened".to_string()
        } else {
            format!("Matomo {} has no UsersManager.logoutUser (5.9 and later): unlink and sign-out end the sessions unikgate opened", f.matomo)
        },
    ));
    out
}

async fn autologin_step(app: &App) -> Step {
    let probe =
        format!("unikgate-doctor-{}", &crate::util::random_token()[..12]).to_ascii_lowercase();
    let Ok(v) = http::HeaderValue::from_str(&probe) else {
        return step("AutoLogin", false, "internal: probe name");
    };
    let a = match app
        .upstream
        .call_as_user(
            Method::GET,
            "/index.php?module=AutoLogin&action=index",
            v,
            LOCAL,
        )
        .await
    {
        Ok(a) => a,
        Err(e) => return step("AutoLogin", false, e.to_string()),
    };
    let msg = matomo::autologin_message(&a.body);
    match a.status.as_u16() {
        500 if msg.starts_with("No email address") || msg.starts_with("AutoRegistration is disabled") => step(
            "AutoLogin",
            true,
            "installed and reads the matomo-username header",
        ),
        500 if msg.starts_with("No username defined") => step(
            "AutoLogin",
            false,
            "installed, but it cannot read the matomo-username header: Matomo runs under PHP-FPM, whose getallheaders() capitalises header names (Matomo-Username). AutoLogin needs Matomo under Apache with mod_php (the matomo:apache image).",
        ),
        302 => step("AutoLogin", false, "AutoLogin logged a made-up user in: check the plugin version and settings"),
        s => step(
            "AutoLogin",
            false,
            format!("answered {s}: install and activate the AutoLogin plugin (Matomo Marketplace) — {msg}"),
        ),
    }
}

/// Prints the steps; true when all passed.
pub fn print(steps: &[Step]) -> bool {
    let mut all = true;
    for s in steps {
        println!(
            "{} {:<20} {}",
            if s.skipped {
                "skip"
            } else if s.ok {
                "ok  "
            } else {
                "FAIL"
            },
            s.name,
            s.detail
        );
        all &= s.ok;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    fn leaf(names: &[&str], now: SystemTime, left: Duration) -> Leaf {
        Leaf {
            names: names.iter().map(|n| n.to_string()).collect(),
            not_before: now - 30 * DAY,
            not_after: now + left,
            serial: "01".into(),
        }
    }

    #[test]
    fn a_certificate_fails_when_it_misses_the_host_or_expires_within_7_days() {
        let now = SystemTime::now();
        let host = || Some(url::Host::Domain("analytics.example.com"));
        let good = leaf(&["analytics.example.com"], now, 60 * DAY);
        let (ok, line) = judge(&good, host(), now, "fix");
        assert!(ok, "{line}");
        assert!(
            line.starts_with("for analytics.example.com; expires ")
                && line.ends_with("(in 60 days)"),
            "{line}"
        );
        let (ok, line) = judge(&leaf(&["*.example.com"], now, 60 * DAY), host(), now, "fix");
        assert!(ok, "a wildcard of one label: {line}");
        let (ok, line) = judge(
            &leaf(&["other.example.com"], now, 60 * DAY),
            host(),
            now,
            "fix",
        );
        assert!(!ok);
        assert!(
            line.starts_with("does not name analytics.example.com (server.public_url's host): for other.example.com;"),
            "{line}"
        );
        let (ok, line) = judge(
            &leaf(&["analytics.example.com"], now, 3 * DAY),
            host(),
            now,
            "renew it",
        );
        assert!(!ok);
        assert!(line.ends_with("(in 3 days): renew it"), "{line}");
        let (ok, line) = judge(
            &leaf(
                &["analytics.example.com"],
                now,
                7 * DAY + Duration::from_secs(3600),
            ),
            host(),
            now,
            "renew it",
        );
        assert!(ok, "7 days and an hour left: {line}");
        let mut expired = leaf(&["analytics.example.com"], now, DAY);
        expired.not_after = now - 2 * DAY;
        let (ok, line) = judge(&expired, host(), now, "renew it");
        assert!(!ok);
        assert!(
            line.contains("; expired ") && line.contains("(2 days ago): renew it"),
            "{line}"
        );
        let ip = Some(url::Host::Ipv4(std::net::Ipv4Addr::new(192, 0, 2, 7)));
        assert!(judge(&leaf(&["192.0.2.7"], now, 60 * DAY), ip, now, "").0);
    }

    #[test]
    fn the_folder_step_fails_when_nothing_can_be_written_there() {
        let dir = tempfile::tempdir().expect("dir");
        let s = folder_step(dir.path());
        assert!(s.ok, "{}", s.detail);
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("read").count(),
            0,
            "the probe file is removed"
        );
        // A file where the folder should be (root writes anywhere, so no permission test).
        let file = dir.path().join("acme");
        std::fs::write(&file, "").expect("write");
        let s = folder_step(&file);
        assert!(!s.ok);
        assert!(
            s.detail
                .starts_with(&format!("cannot write in {} (", file.display())),
            "{}",
            s.detail
        );
    }
}
