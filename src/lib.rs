//! unikgate: sign in to Matomo with your private @unikname.
//!
//! `build_app` assembles exactly what the binary serves; tests and benchmarks use it too.
//! See ARCHITECTURE.md for the map of modules and the life of a request.

pub mod classify;
pub mod config;
pub mod doctor;
pub mod error;
pub mod gate;
pub mod i18n;
pub mod limits;
pub mod links;
pub mod matomo;
pub mod oidc;
pub mod pages;
pub mod php;
pub mod pool;
pub mod proxy;
pub mod redirect;
pub mod routes;
pub mod server;
pub mod session;
pub mod store;
pub mod web;

use std::sync::Arc;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use crate::classify::Classifier;
use crate::config::Config;
use crate::config::MinterKind;
use crate::links::LinkStore;
use crate::matomo::{AutoLogin, Minter, Signed};
use crate::oidc::Oidc;
use crate::pages::PageEnv;
use crate::proxy::Upstream;
use crate::session::Sessions;

/// Characters escaped in a query value (`rd=`).
pub const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// A random URL-safe token (32 bytes of OS randomness).
pub fn random_token() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    rand::Rng::fill(&mut rand::rngs::OsRng, &mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Everything a request may need, built once.
pub struct App {
    pub cfg: Arc<Config>,
    pub pages: Arc<PageEnv>,
    pub classifier: Classifier,
    pub upstream: Upstream,
    pub sessions: Sessions,
    pub links: Arc<dyn LinkStore>,
    /// Both stores, for readiness.
    pub stores: Arc<store::Stores>,
    /// None until the provider credentials are configured: unikgate then fails closed.
    pub oidc: Option<Oidc>,
    pub minter: Arc<dyn Minter>,
}

impl App {
    /// Removes the link of an identity and ends every session of it, on every replica (the
    /// sessions are deleted from the shared store). The web's unlink and the CLI both use this.
    pub async fn unlink(&self, issuer: &str, subject: &str) -> Result<bool, error::Error> {
        let removed = self.links.remove(issuer, subject).await?;
        let ids = self.links.take_sessions(issuer, subject).await?;
        self.end_sessions(&ids).await?;
        Ok(removed)
    }

    /// Ends these unikgate sessions (their records are deleted from the shared store, so every
    /// replica sees it at once) and logs the Matomo session minted for each out of Matomo.
    /// Returns how many sessions were still there. A Matomo that cannot be reached is logged,
    /// not an error: the unikgate sessions are gone either way, and with them every way to use
    /// those Matomo cookies through unikgate.
    pub async fn end_sessions(&self, ids: &[String]) -> Result<usize, error::Error> {
        let mut ended = 0;
        for id in ids {
            let (had, cookie) = self.sessions.end_id(id).await?;
            if let Some(cookie) = cookie {
                let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
                if let Err(e) = matomo::logout(&self.upstream, &cookie, loopback).await {
                    tracing::warn!(error = %e, "could not log a Matomo session out");
                }
            }
            ended += usize::from(had);
        }
        Ok(ended)
    }

    /// [`App::unlink`] by Matomo login.
    pub async fn unlink_login(&self, login: &str) -> Result<bool, error::Error> {
        match self.links.get_by_login(login).await? {
            Some(l) => self.unlink(&l.issuer, &l.subject).await,
            None => Ok(false),
        }
    }
}

/// Opens the stores and assembles the application.
pub async fn build_app(cfg: Config) -> Result<(gate::Gate, Arc<App>), String> {
    let cfg = Arc::new(cfg);
    let stores = Arc::new(store::open(&cfg.store).await?);
    let key = session::load_key(cfg.session.key.as_ref(), cfg.data_dir().as_deref())?;
    let sessions = Sessions::new(
        stores.sessions.clone(),
        key,
        &cfg.session.cookie_name,
        cfg.public_is_https(),
        cfg.session.idle_timeout,
        cfg.session.absolute_timeout,
        cfg.matomo.idle_timeout,
    )
    .with_peek(stores.session_peek.clone());
    let oidc = Oidc::new(&cfg)?;
    if oidc.is_none() {
        tracing::warn!(
            missing = %cfg.missing_provider_credentials().join(", "),
            "provider credentials are not set: unikgate fails closed until they are"
        );
    }
    // Pages name the provider by its host ("connect.unikname.com"): the button label is a sentence.
    let provider_host = cfg
        .provider
        .authorize_url
        .host_str()
        .unwrap_or("the sign-in service")
        .to_string();
    let pages = Arc::new(PageEnv::new(
        &cfg.server.prefix,
        &provider_host,
        Some(&Oidc::authorize_origin(&cfg)),
    ));
    {
        // The identity → sessions index outlives no session: prune rows older than a session can be.
        let links = stores.links.clone();
        let absolute = cfg.session.absolute_timeout;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let before = now_ms() - absolute.as_millis() as i64;
                if let Err(e) = links.prune_sessions(before).await {
                    tracing::warn!(error = %e, "could not prune the identity → sessions index");
                }
            }
        });
    }
    let minter: Arc<dyn Minter> = match (cfg.matomo.minter, &cfg.matomo.shared_secret) {
        (MinterKind::Signed, Some(secret)) => {
            Arc::new(Signed::new(secret.clone(), &cfg.public_origin()))
        }
        (MinterKind::Signed, None) => {
            return Err("matomo.shared_secret is required with minter = \"signed\"".into())
        }
        (MinterKind::AutoLogin, _) => Arc::new(AutoLogin),
    };
    let app = Arc::new(App {
        classifier: Classifier::new(
            &cfg.server.prefix,
            &cfg.matomo.public_paths,
            cfg.matomo.password_login,
        ),
        upstream: Upstream::new(&cfg),
        sessions,
        links: stores.links.clone(),
        stores,
        oidc,
        minter,
        pages,
        cfg,
    });
    Ok((gate::Gate::new(app.clone()), app))
}

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .ok()?
        .install_recorder()
        .ok()
}
