//! Opening the stores named by `[store]`: the session store (SQLite, PostgreSQL or Redis, through
//! tower-sessions' stores) and the link store (SQLite or PostgreSQL, see `links.rs`). One pool per
//! distinct URL, bounded; migrations embedded per backend.
//!
//! Invariant: the only module that knows which backend is behind a URL; everything else sees
//! `Arc<dyn SessionStore>` and `Arc<dyn LinkStore>`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{ClientLike, Pool as RedisPool, ReconnectPolicy};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePool;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::SessionStore;
use tower_sessions::ExpiredDeletion;

use crate::config::{sqlite_path, store_kind, StoreConfig, StoreKind};
use crate::error::Error;
use crate::links::{open_sqlite, LinkStore, PgLinks, SqliteLinks};

/// How long a request may wait for a database connection or a Redis answer before the store
/// counts as unavailable (503).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a session read from the embedded SQLite store may be served from memory. Writes and
/// deletes of this process go through the cache, so it only bounds what another process (the
/// `unikgate links remove` CLI) changes: that takes effect within this time.
pub const SQLITE_CACHE_TTL: Duration = Duration::from_secs(2);
const CACHE_MAX: usize = 20_000;

/// A write-through read cache in front of a session store, for the single-process SQLite default
/// (shared stores are not cached: replicas must see each other's sign-outs at once).
#[derive(Debug)]
pub struct CachedSessions {
    inner: Arc<dyn SessionStore>,
    entries: std::sync::Mutex<HashMap<Id, (Record, std::time::Instant)>>,
    ttl: Duration,
}

impl CachedSessions {
    pub fn new(inner: Arc<dyn SessionStore>, ttl: Duration) -> Self {
        CachedSessions {
            inner,
            entries: std::sync::Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn put(&self, record: &Record) {
        let Ok(mut m) = self.entries.lock() else {
            return;
        };
        if m.len() >= CACHE_MAX {
            let ttl = self.ttl;
            m.retain(|_, (_, at)| at.elapsed() < ttl);
            if m.len() >= CACHE_MAX {
                m.clear();
            }
        }
        m.insert(record.id, (record.clone(), std::time::Instant::now()));
    }

    fn forget(&self, id: &Id) {
        if let Ok(mut m) = self.entries.lock() {
            m.remove(id);
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for CachedSessions {
    async fn create(&self, record: &mut Record) -> tower_sessions::session_store::Result<()> {
        self.inner.create(record).await?;
        self.put(record);
        Ok(())
    }

    async fn save(&self, record: &Record) -> tower_sessions::session_store::Result<()> {
        // Forget first: if the write fails, no stale copy survives it.
        self.forget(&record.id);
        self.inner.save(record).await?;
        self.put(record);
        Ok(())
    }

    async fn load(&self, id: &Id) -> tower_sessions::session_store::Result<Option<Record>> {
        let hit = self.entries.lock().ok().and_then(|m| {
            m.get(id)
                .filter(|(r, at)| {
                    at.elapsed() < self.ttl && r.expiry_date > time::OffsetDateTime::now_utc()
                })
                .map(|(r, _)| r.clone())
        });
        if hit.is_some() {
            return Ok(hit);
        }
        let loaded = self.inner.load(id).await?;
        match &loaded {
            Some(r) => self.put(r),
            None => self.forget(id),
        }
        Ok(loaded)
    }

    async fn delete(&self, id: &Id) -> tower_sessions::session_store::Result<()> {
        self.forget(id);
        self.inner.delete(id).await
    }
}

pub struct Stores {
    pub links: Arc<dyn LinkStore>,
    pub sessions: Arc<dyn SessionStore>,
    probe: SessionProbe,
}

enum SessionProbe {
    /// The sessions share a database with the links: the link store's ping covers them.
    SameAsLinks,
    Sqlite(SqlitePool),
    Postgres(PgPool),
    Redis(RedisPool),
}

#[derive(Default)]
struct Pools {
    sqlite: HashMap<String, SqlitePool>,
    postgres: HashMap<String, PgPool>,
}

impl Pools {
    async fn sqlite(&mut self, url: &str) -> Result<SqlitePool, String> {
        if let Some(p) = self.sqlite.get(url) {
            return Ok(p.clone());
        }
        let path = sqlite_path(url).ok_or_else(|| format!("{url:?} is not a SQLite file"))?;
        let pool = open_sqlite(&path).await?;
        self.sqlite.insert(url.to_string(), pool.clone());
        Ok(pool)
    }

    async fn postgres(&mut self, url: &str, max: u32) -> Result<PgPool, String> {
        if let Some(p) = self.postgres.get(url) {
            return Ok(p.clone());
        }
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e| format!("store: {} is not a PostgreSQL URL: {e}", redact(url)))?;
        let pool = PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(STORE_TIMEOUT)
            .connect_with(opts)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| format!("cannot prepare {}: {e}", redact(url)))?;
        self.postgres.insert(url.to_string(), pool.clone());
        Ok(pool)
    }
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

async fn open_redis(url: &str, max: u32) -> Result<RedisPool, String> {
    let config = fred::prelude::Config::from_url(url)
        .map_err(|e| format!("store: {} is not a Redis URL: {e}", redact(url)))?;
    let pool = fred::prelude::Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = STORE_TIMEOUT;
            c.internal_command_timeout = STORE_TIMEOUT;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = STORE_TIMEOUT;
        })
        // Reconnect forever, 100 ms to 2 s apart: the store comes back by itself.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build_pool((max as usize).clamp(1, 32))
        .map_err(|e| format!("store: {}: {e}", redact(url)))?;
    pool.init()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?;
    Ok(pool)
}

/// Opens every store the configuration names (they must be reachable at start).
pub async fn open(cfg: &StoreConfig) -> Result<Stores, String> {
    let mut pools = Pools::default();
    let links: Arc<dyn LinkStore> = match store_kind(&cfg.links_url) {
        Some(StoreKind::Sqlite) => Arc::new(SqliteLinks::new(pools.sqlite(&cfg.links_url).await?)),
        Some(StoreKind::Postgres) => Arc::new(PgLinks::new(
            pools.postgres(&cfg.links_url, cfg.max_connections).await?,
        )),
        _ => return Err("store.links_url must be a sqlite:// or postgres:// URL".into()),
    };
    let same = cfg.sessions_url == cfg.links_url;
    let (sessions, probe): (Arc<dyn SessionStore>, SessionProbe) =
        match store_kind(&cfg.sessions_url) {
            Some(StoreKind::Sqlite) => {
                let pool = pools.sqlite(&cfg.sessions_url).await?;
                let store = tower_sessions_sqlx_store::SqliteStore::new(pool.clone());
                store
                    .migrate()
                    .await
                    .map_err(|e| format!("cannot prepare the session table: {e}"))?;
                spawn_expired_deletion(store.clone());
                let cached = CachedSessions::new(Arc::new(store), SQLITE_CACHE_TTL);
                (
                    Arc::new(cached),
                    if same {
                        SessionProbe::SameAsLinks
                    } else {
                        SessionProbe::Sqlite(pool)
                    },
                )
            }
            Some(StoreKind::Postgres) => {
                let pool = pools
                    .postgres(&cfg.sessions_url, cfg.max_connections)
                    .await?;
                let store = tower_sessions_sqlx_store::PostgresStore::new(pool.clone());
                store
                    .migrate()
                    .await
                    .map_err(|e| format!("cannot prepare the session table: {e}"))?;
                spawn_expired_deletion(store.clone());
                (
                    Arc::new(store),
                    if same {
                        SessionProbe::SameAsLinks
                    } else {
                        SessionProbe::Postgres(pool)
                    },
                )
            }
            Some(StoreKind::Redis) => {
                let pool = open_redis(&cfg.sessions_url, cfg.max_connections).await?;
                // Redis expires sessions itself (EXAT on every save).
                (
                    Arc::new(tower_sessions_redis_store::RedisStore::new(pool.clone())),
                    SessionProbe::Redis(pool),
                )
            }
            None => return Err("store.sessions_url is not supported".into()),
        };
    Ok(Stores {
        links,
        sessions,
        probe,
    })
}

impl Stores {
    /// Both stores answer (and the link database accepts writes).
    pub async fn ping(&self) -> Result<(), Error> {
        self.links.ping().await?;
        let down = |e: String| {
            tracing::error!(error = %e, "session store unavailable");
            Error::StoreUnavailable
        };
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Counting {
        loads: AtomicUsize,
        records: std::sync::Mutex<HashMap<Id, Record>>,
    }

    #[async_trait::async_trait]
    impl SessionStore for Counting {
        async fn create(&self, r: &mut Record) -> tower_sessions::session_store::Result<()> {
            self.records.lock().unwrap().insert(r.id, r.clone());
            Ok(())
        }
        async fn save(&self, r: &Record) -> tower_sessions::session_store::Result<()> {
            self.records.lock().unwrap().insert(r.id, r.clone());
            Ok(())
        }
        async fn load(&self, id: &Id) -> tower_sessions::session_store::Result<Option<Record>> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            Ok(self.records.lock().unwrap().get(id).cloned())
        }
        async fn delete(&self, id: &Id) -> tower_sessions::session_store::Result<()> {
            self.records.lock().unwrap().remove(id);
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_embedded_store_is_cached_and_shared_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::StoreConfig {
            url: format!("sqlite://{}/s.db", dir.path().display()),
            sessions_url: format!("sqlite://{}/s.db", dir.path().display()),
            links_url: format!("sqlite://{}/s.db", dir.path().display()),
            max_connections: 2,
        };
        let stores = open(&cfg).await.unwrap();
        assert!(format!("{:?}", stores.sessions).starts_with("CachedSessions"));
    }

    #[tokio::test]
    async fn reads_are_served_from_memory_and_writes_go_through() {
        let inner = Arc::new(Counting::default());
        let cache = CachedSessions::new(inner.clone(), Duration::from_secs(60));
        let mut r = Record {
            id: Id::default(),
            data: Default::default(),
            expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        };
        cache.create(&mut r).await.unwrap();
        for _ in 0..5 {
            assert!(cache.load(&r.id).await.unwrap().is_some());
        }
        assert_eq!(inner.loads.load(Ordering::SeqCst), 0, "served from memory");
        cache.delete(&r.id).await.unwrap();
        assert!(cache.load(&r.id).await.unwrap().is_none());
        assert_eq!(inner.loads.load(Ordering::SeqCst), 1);
        // A record loaded from the store is cached too.
        let id = Id::default();
        inner
            .records
            .lock()
            .unwrap()
            .insert(id, Record { id, ..r.clone() });
        cache.load(&id).await.unwrap();
        cache.load(&id).await.unwrap();
        assert_eq!(inner.loads.load(Ordering::SeqCst), 2);
    }
}
