//! [`App`]: everything a request may need, built once by `build_app` and shared by the gate, the
//! endpoints, `doctor` and the CLI; and what several of them do with it (unlinking, ending
//! sessions with their Matomo sessions).

use std::sync::Arc;

use crate::config::Config;
use crate::error;
use crate::oidc::Oidc;
use crate::pages::PageEnv;
use crate::request::classify::Classifier;
use crate::session::Sessions;
use crate::store;
use crate::store::{Attempts, Links, LogoutTokens, SessionIndex};
use crate::upstream;
use crate::upstream::matomo::Minter;
use crate::upstream::proxy::Upstream;

/// Everything a request may need, built once.
pub struct App {
    pub cfg: Arc<Config>,
    pub pages: Arc<PageEnv>,
    pub classifier: Classifier,
    pub upstream: Upstream,
    pub sessions: Sessions,
    /// The link database, by what it holds (`store/traits.rs`).
    pub links: Arc<dyn Links>,
    pub attempts: Arc<dyn Attempts>,
    pub session_index: Arc<dyn SessionIndex>,
    pub logout_tokens: Arc<dyn LogoutTokens>,
    /// Both stores, for readiness.
    pub stores: Arc<store::Stores>,
    /// None until the provider credentials are configured: unikgate then fails closed.
    pub oidc: Option<Oidc>,
    pub minter: Arc<dyn Minter>,
    /// `[tls]`: the certificate served on `server.listen` (files read again when they change, or
    /// obtained and renewed over ACME).
    pub tls: Option<crate::tls::Served>,
    /// `[access]`: who may sign in, and the stamp of these rules.
    pub access: crate::access::Policy,
    /// The audit trail: events kept in the link database (and logged).
    pub audit: crate::audit::Audit,
}

impl App {
    /// Removes the link of an identity and ends every session of it, on every replica (the
    /// sessions are deleted from the shared store). The web's unlink and the CLI both use this.
    pub async fn unlink(&self, issuer: &str, subject: &str) -> Result<bool, error::Error> {
        let removed = self.links.remove(issuer, subject).await?;
        let ids = self.session_index.take_sessions(issuer, subject).await?;
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
                if let Err(e) = upstream::matomo::logout(&self.upstream, &cookie, loopback).await {
                    tracing::warn!(error = %e.chain(), "could not log a Matomo session out");
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
