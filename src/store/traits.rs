//! What the link database holds, as four traits, each implemented by both backends
//! (`sqlite.rs`, `postgres.rs`): [`Links`] (which Matomo login each @unikname is linked to),
//! [`Attempts`] (the counters of rate limits), [`SessionIndex`] (the identity → sessions index) and
//! [`LogoutTokens`] (the `jti`s of accepted logout tokens). All four live in the one database of
//! `store.links_url`, so that replicas share them.
//!
//! Invariant: links are written only through [`Links`]; a link is created whole or not at all
//! (one INSERT, both uniqueness rules enforced by the database, not by a read-then-write).

use async_trait::async_trait;
use serde::Serialize;
use std::time::Duration;

use crate::error::Error;

/// A link: this @unikname `(issuer, subject)` signs in as this Matomo login, unique both ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub id: String,
    pub issuer: String,
    pub subject: String,
    pub matomo_login: String,
    pub superuser: bool,
    /// Unix time in milliseconds.
    pub created_at: i64,
    pub last_login_at: Option<i64>,
}

/// One row of the identity → sessions index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SessionEntry {
    pub issuer: String,
    pub subject: String,
    #[serde(skip)]
    pub session_id: String,
    /// The provider's session id (the ID token's `sid`), when it gave one.
    pub sid: Option<String>,
    /// The ID token's `sub` (equal to `subject` with the default `provider.userinfo_id`).
    pub id_sub: Option<String>,
    /// Unix time in milliseconds.
    pub created_at: i64,
    /// The address the session signed in from (the superusers' page shows it).
    #[sqlx(default)]
    pub client_ip: Option<String>,
}

/// One event of the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AuditRecord {
    /// Unix time in milliseconds.
    pub at: i64,
    /// `sign_in`, `link`, `unlink`, `refused`, `mint`, `provision`, `access`, `sign_out`,
    /// `admin_unlink`, `admin_end_sessions`, …
    pub event: String,
    /// The @unikname's subject.
    pub subject: Option<String>,
    pub matomo_login: Option<String>,
    pub client_ip: Option<String>,
    /// Why (a refusal's rule, a sign-out's cause).
    pub reason: Option<String>,
    /// Every other field of the event, as `key=value` pairs.
    pub details: Option<String>,
    /// Who did it, when not the person themselves (the Matomo superuser of an admin action).
    pub actor: Option<String>,
}

/// Which audit events to read back, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// One @unikname (subject), or any.
    pub subject: Option<String>,
    /// Events at or after this time (ms).
    pub since: Option<i64>,
    /// Only these events (empty: all).
    pub events: Vec<String>,
    pub offset: u64,
    pub limit: u64,
}

/// A page of links, for the superusers' page.
#[derive(Debug, Clone, Default)]
pub struct LinkPage {
    /// How many links match the filter.
    pub total: u64,
    pub links: Vec<Link>,
}

/// Why a link could not be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkConflict {
    /// This @unikname already has a link.
    Identity,
    /// This Matomo login is linked to another @unikname.
    Login,
}

/// The columns of `links`, in the order of [`Link`]'s fields (both backends select them).
pub(super) const LINK_COLUMNS: &str =
    "id, issuer, subject, matomo_login, superuser, created_at, last_login_at";

/// The links, unique both ways: one per @unikname, one per Matomo login.
#[async_trait]
pub trait Links: Send + Sync + 'static {
    async fn get(&self, issuer: &str, subject: &str) -> Result<Option<Link>, Error>;
    async fn get_by_login(&self, login: &str) -> Result<Option<Link>, Error>;
    /// Creates the link, or says which side is taken.
    async fn create(&self, link: &Link) -> Result<Result<(), LinkConflict>, Error>;
    /// Removes the link of this identity; true when there was one.
    async fn remove(&self, issuer: &str, subject: &str) -> Result<bool, Error>;
    async fn remove_login(&self, login: &str) -> Result<bool, Error>;
    async fn list(&self) -> Result<Vec<Link>, Error>;
    /// The links whose Matomo login or subject contains `filter` (case-insensitive; all when
    /// empty), by Matomo login, `limit` from `offset`, with the number matching.
    async fn list_page(&self, filter: &str, offset: u64, limit: u64) -> Result<LinkPage, Error>;
    /// The link by its id.
    async fn get_by_id(&self, id: &str) -> Result<Option<Link>, Error>;
    /// Records a sign-in through this link (its `last_login_at`).
    async fn touch(&self, id: &str) -> Result<(), Error>;
}

/// The counters of rate limits, shared by every replica.
#[async_trait]
pub trait Attempts: Send + Sync + 'static {
    /// Records an attempt under `key` and says whether it is within `max` per `window` (an
    /// attempt refused is not recorded).
    async fn attempt(&self, key: &str, max: u32, window: Duration) -> Result<bool, Error>;
}

/// The identity → sessions index: which unikgate sessions each @unikname (and each of the
/// provider's sessions) has, so that unlinking it, or a back-channel logout, ends them all.
#[async_trait]
pub trait SessionIndex: Send + Sync + 'static {
    /// Records that `e.session_id` belongs to this identity (and its provider session).
    async fn index_session(&self, e: &SessionEntry) -> Result<(), Error>;
    /// Forgets and returns the sessions of this identity (to end them).
    async fn take_sessions(&self, issuer: &str, subject: &str) -> Result<Vec<String>, Error>;
    /// Forgets and returns the sessions a back-channel logout token names: by the provider's
    /// session id when it has one, else every session of the ID token's `sub`.
    async fn take_logout_sessions(
        &self,
        issuer: &str,
        sid: Option<&str>,
        sub: Option<&str>,
    ) -> Result<Vec<String>, Error>;
    /// The indexed sessions, of one @unikname (subject) or all, oldest first.
    async fn list_sessions(&self, subject: Option<&str>) -> Result<Vec<SessionEntry>, Error>;
    /// Forgets index rows created before `before` (ms): their sessions have ended anyway.
    async fn prune_sessions(&self, before: i64) -> Result<(), Error>;
}

/// The audit trail, kept in the link database for `audit.retention`.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    async fn append(&self, records: &[AuditRecord]) -> Result<(), Error>;
    async fn list(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, Error>;
    /// Forgets events before `before` (ms); how many.
    async fn prune(&self, before: i64) -> Result<u64, Error>;
}

/// `%` and `_` taken literally in a LIKE pattern (escape character `\`).
pub(super) fn like_pattern(filter: &str) -> String {
    let mut s = String::with_capacity(filter.len() + 2);
    s.push('%');
    for c in filter.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}

/// The `jti`s of the logout tokens accepted, so that each is accepted once (on any replica).
#[async_trait]
pub trait LogoutTokens: Send + Sync + 'static {
    /// Records a logout token's `jti`; false when it was seen before (on any replica). Forgets
    /// the ones seen before `forget_before` (ms).
    async fn first_use_of_jti(
        &self,
        issuer: &str,
        jti: &str,
        forget_before: i64,
    ) -> Result<bool, Error>;
}
