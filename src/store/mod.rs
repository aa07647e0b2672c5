//! Opening the stores named by `[store]`, one module per backend: `sqlite.rs` (the default),
//! `postgres.rs` (shared by replicas), `redis.rs` (sessions only). Two stores come out: the session
//! store (tower-sessions' store of the backend; SQLite's behind the read cache of `cache.rs`), and
//! the link database, seen through the four traits of `traits.rs` ([`Links`], [`Attempts`],
//! [`SessionIndex`], [`LogoutTokens`]), which both database backends implement. One pool per
//! distinct database, bounded; migrations embedded per backend.
//!
//! Invariant: the only module that knows which backend is behind a URL (it matches on the
//! `StoreUrl` the configuration read); everything else sees `Arc<dyn SessionStore>` and the four
//! `Arc<dyn …>` of the link database (and, for the embedded default, the read cache's
//! `MemoryPeek`).

pub mod cache;
pub mod postgres;
pub mod redis;
pub mod sqlite;
mod traits;

pub use traits::{
    Attempts, AuditLog, AuditQuery, AuditRecord, Link, LinkConflict, LinkPage, Links, LogoutTokens,
    SessionEntry, SessionIndex,
};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{ClientLike, Pool as RedisPool};
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use tower_sessions::session_store::SessionStore;
use tower_sessions::ExpiredDeletion;

use crate::config::{StoreConfig, StoreUrl};
use crate::error::Error;
use crate::session::MemoryPeek;
use postgres::PostgresDb;
use sqlite::SqliteDb;

/// How long a request may wait for a database connection or a Redis answer before the store
/// counts as unavailable (503).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(3);

/// The stores, opened.
pub struct Stores {
    /// The link database, by what it holds (one backend behind all four).
    pub links: Arc<dyn Links>,
    pub attempts: Arc<dyn Attempts>,
    pub session_index: Arc<dyn SessionIndex>,
    pub logout_tokens: Arc<dyn LogoutTokens>,
    /// The audit trail (the same database).
    pub audit: Arc<dyn AuditLog>,
    pub sessions: Arc<dyn SessionStore>,
    /// The same session store's in-memory copies, when it keeps some (SQLite).
    pub session_peek: Option<Arc<dyn MemoryPeek>>,
    database: Database,
    probe: SessionProbe,
}

/// The link database's backend, for readiness.
enum Database {
    Sqlite(Arc<SqliteDb>),
    Postgres(Arc<PostgresDb>),
}

enum SessionProbe {
    /// The sessions share a database with the links: the link database's ping covers them.
    SameAsLinks,
    Sqlite(SqlitePool),
    Postgres(PgPool),
    Redis(RedisPool),
}

/// One pool per distinct database: `url`, `sessions_url` and `links_url` that name the same one
/// share it.
#[derive(Default)]
struct Pools {
    sqlite: HashMap<PathBuf, SqlitePool>,
    postgres: HashMap<String, PgPool>,
}

impl Pools {
    async fn sqlite(&mut self, path: &Path) -> Result<SqlitePool, String> {
        if let Some(p) = self.sqlite.get(path) {
            return Ok(p.clone());
        }
        let pool = sqlite::open(path).await?;
        self.sqlite.insert(path.to_path_buf(), pool.clone());
        Ok(pool)
    }

    /// `shown` is the URL as messages show it (without its password).
    async fn postgres(&mut self, url: &str, shown: &StoreUrl, max: u32) -> Result<PgPool, String> {
        if let Some(p) = self.postgres.get(url) {
            return Ok(p.clone());
        }
        let pool = postgres::connect(url, shown, max).await?;
        self.postgres.insert(url.to_string(), pool.clone());
        Ok(pool)
    }
}

/// Opens every store the configuration names (they must be reachable at start).
pub async fn open(cfg: &StoreConfig) -> Result<Stores, String> {
    let mut pools = Pools::default();
    let max = cfg.max_connections;
    let database = match &cfg.links_url {
        StoreUrl::Sqlite(path) => {
            Database::Sqlite(Arc::new(SqliteDb::new(pools.sqlite(path).await?)))
        }
        u @ StoreUrl::Postgres(url) => Database::Postgres(Arc::new(PostgresDb::new(
            pools.postgres(url, u, max).await?,
        ))),
        // The configuration refuses it (links need a database).
        StoreUrl::Redis(_) => {
            return Err("store.links_url must be a sqlite:// or postgres:// URL".into())
        }
    };
    let same = cfg.sessions_url == cfg.links_url;
    let mut session_peek: Option<Arc<dyn MemoryPeek>> = None;
    let (sessions, probe): (Arc<dyn SessionStore>, SessionProbe) = match &cfg.sessions_url {
        StoreUrl::Sqlite(path) => {
            let pool = pools.sqlite(path).await?;
            let cached = sqlite::session_store(pool.clone()).await?;
            session_peek = Some(cached.clone());
            (
                cached,
                if same {
                    SessionProbe::SameAsLinks
                } else {
                    SessionProbe::Sqlite(pool)
                },
            )
        }
        u @ StoreUrl::Postgres(url) => {
            let pool = pools.postgres(url, u, max).await?;
            (
                Arc::new(postgres::session_store(pool.clone()).await?),
                if same {
                    SessionProbe::SameAsLinks
                } else {
                    SessionProbe::Postgres(pool)
                },
            )
        }
        u @ StoreUrl::Redis(url) => {
            let pool = redis::connect(url, u, max).await?;
            (
                Arc::new(redis::session_store(pool.clone())),
                SessionProbe::Redis(pool),
            )
        }
    };
    let (links, attempts, session_index, logout_tokens, audit) = match &database {
        Database::Sqlite(db) => parts(db),
        Database::Postgres(db) => parts(db),
    };
    Ok(Stores {
        links,
        attempts,
        session_index,
        logout_tokens,
        audit,
        sessions,
        session_peek,
        database,
        probe,
    })
}

/// The link database seen by what it holds: five views of the same backend.
type Parts = (
    Arc<dyn Links>,
    Arc<dyn Attempts>,
    Arc<dyn SessionIndex>,
    Arc<dyn LogoutTokens>,
    Arc<dyn AuditLog>,
);

fn parts<D: Links + Attempts + SessionIndex + LogoutTokens + AuditLog>(db: &Arc<D>) -> Parts {
    (db.clone(), db.clone(), db.clone(), db.clone(), db.clone())
}

impl Stores {
    /// Both stores answer (and the link database accepts writes).
    pub async fn ping(&self) -> Result<(), Error> {
        match &self.database {
            Database::Sqlite(db) => db.ping().await?,
            Database::Postgres(db) => db.ping().await?,
        }
        let down = |e: String| Error::StoreUnavailable(crate::error::Cause::msg(e));
        match &self.probe {
            SessionProbe::SameAsLinks => Ok(()),
            SessionProbe::Sqlite(p) => sqlx::query("SELECT 1")
                .execute(p)
                .await
                .map(|_| ())
                .map_err(|e| down(e.to_string())),
            SessionProbe::Postgres(p) => sqlx::query("SELECT 1")
                .execute(p)
                .await
                .map(|_| ())
                .map_err(|e| down(e.to_string())),
            SessionProbe::Redis(p) => p
                .ping::<String>(None)
                .await
                .map(|_| ())
                .map_err(|e| down(e.to_string())),
        }
    }
}

/// Deletes the expired sessions of a SQL session store every 5 minutes.
fn spawn_expired_deletion<S: ExpiredDeletion + Clone + 'static>(store: S) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(300));
        loop {
            tick.tick().await;
            if let Err(e) = store.delete_expired().await {
                tracing::warn!(error = %e, "could not delete expired sessions");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_embedded_store_is_cached_and_shared_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = StoreUrl::Sqlite(dir.path().join("s.db"));
        let cfg = crate::config::StoreConfig {
            url: file.clone(),
            sessions_url: file.clone(),
            links_url: file,
            max_connections: 2,
        };
        let stores = open(&cfg).await.unwrap();
        assert!(format!("{:?}", stores.sessions).starts_with("CachedSessions"));
    }
}
