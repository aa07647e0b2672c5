//! unikgate: sign in to Matomo with your private @unikname.
//!
//! `build_app` assembles exactly what the binary serves; tests and benchmarks use it too.
//! See ARCHITECTURE.md for the map of modules and the life of a request.

// The rooms (ARCHITECTURE.md draws them and the way a request goes through them).
pub mod access; // who may sign in: `[access]`'s rules and their stamp
pub mod app; // what every request may need, built once
pub mod audit; // the audit trail: logged and kept in the link database
pub mod config; // every key, read and validated once
pub mod context; // the per-request context, and what the gate and the endpoints answer with
pub mod doctor; // `unikgate doctor`
pub mod endpoints; // unikgate's own pages and APIs under the prefix
pub mod error; // every failure a user can meet, as a value
pub mod gate; // the phases every request goes through
pub mod limits; // what one client may hold: connections, bodies being read
pub mod oidc; // the provider: discovery, code flow, tokens, back-channel logout
pub mod pages; // HTML pages, error pages and their texts
pub mod request; // what a request is: pure, fuzzed (PHP's reading, classification, `rd`)
pub mod server; // the listener and what one client may hold
pub mod session; // unikgate's session: cookie, record, lifetimes
pub mod store; // where sessions, links and their indexes live
pub mod tls; // HTTPS: the certificates (files read again when they change), rustls' settings
pub mod upstream; // Matomo: the connection pool, the header policy, the contract's calls
pub mod util; // the clock, random tokens

pub use app::App;
pub use util::{now_ms, random_token, QUERY_VALUE};

use std::sync::Arc;

use crate::config::Config;
use crate::config::MinterConfig;
use crate::oidc::Oidc;
use crate::pages::PageEnv;
use crate::request::classify::Classifier;
use crate::session::Sessions;
use crate::upstream::matomo::{AutoLogin, Minter, Signed};
use crate::upstream::proxy::Upstream;

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
    .with_peek(stores.session_peek.clone())
    .scoped_to(&cfg.server.base);
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
        let index = stores.session_index.clone();
        let absolute = cfg.session.absolute_timeout;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let before = now_ms() - absolute.as_millis() as i64;
                if let Err(e) = index.prune_sessions(before).await {
                    tracing::warn!(error = %e.chain(), "could not prune the identity → sessions index");
                }
            }
        });
    }
    let tls = match cfg.tls.as_ref().map(|t| &t.certs) {
        Some(config::TlsCerts::Files {
            cert_file,
            key_file,
        }) => {
            let certs =
                tls::Certificates::from_files(cert_file, key_file).map_err(|e| e.to_string())?;
            certs.watch();
            Some(tls::Served::Files(certs))
        }
        Some(config::TlsCerts::Acme(acme)) => {
            Some(tls::Served::Acme(tls::acme::Acme::start(acme)?))
        }
        None => None,
    };
    let minter: Arc<dyn Minter> = match &cfg.matomo.minter {
        MinterConfig::Signed(secret) => Arc::new(Signed::new(secret.clone(), &cfg.public_base())),
        MinterConfig::AutoLogin => Arc::new(AutoLogin),
    };
    let audit = audit::Audit::start(stores.audit.clone(), cfg.audit.retention);
    let app = Arc::new(App {
        audit,
        classifier: Classifier::new(
            &cfg.server.base,
            &cfg.server.prefix,
            &cfg.matomo.public_paths,
            cfg.matomo.password_login,
        ),
        upstream: Upstream::new(&cfg),
        sessions,
        links: stores.links.clone(),
        attempts: stores.attempts.clone(),
        session_index: stores.session_index.clone(),
        logout_tokens: stores.logout_tokens.clone(),
        stores,
        oidc,
        minter,
        tls,
        pages,
        access: access::Policy::new(&cfg.access),
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
