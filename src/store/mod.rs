//! Opening the stores named by `[store]`: the session store (SQLite, PostgreSQL or Redis, through
//! tower-sessions' stores) and the link store (SQLite or PostgreSQL, see `links.rs`). One pool per
//! distinct URL, bounded; migrations embedded per backend.
//!
//! Invariant: the only module that knows which backend is behind a URL; everything else sees
//! `Arc<dyn SessionStore>` and `Arc<dyn LinkStore>` (and, for the embedded default, the read
//! cache's `MemoryPeek`).

pub mod links;

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
use crate::store::links::{open_sqlite, LinkStore, PgLinks, SqliteLinks};

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
///
/// Refresh ahead: past half its lifetime, an entry is reloaded by one request while the others
/// keep reading it, so a busy session (one browser, many parallel requests) never expires into a
/// burst of identical store reads. A session not in memory (or expired) is read by one request
/// at a time; the others of a burst take its answer (`Turn`). A load that raced with a write of
/// this process is not cached (the write's copy wins).
#[derive(Debug)]
pub struct CachedSessions {
    inner: Arc<dyn SessionStore>,
    cache: std::sync::Mutex<Cache>,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<Id, Entry>,
    /// Bumped by every write and delete: a load started before one does not cache its result.
    epoch: u64,
    /// Sessions being read from the store now, with the requests waiting for that read.
    loading: HashMap<Id, Turn>,
}

/// One store read of a session at a time: the requests that arrive meanwhile wait for it and
/// take its answer (when no write came since and it is younger than the cache's lifetime), so a
/// burst of parallel requests for a session that is not in memory (after an idle minute, or at
/// start) reads the store once instead of once each.
type Turn = Arc<tokio::sync::Mutex<Option<Answer>>>;

#[derive(Debug)]
struct Answer {
    epoch: u64,
    at: std::time::Instant,
    /// A failure is shared too: with the store failing slowly (a locked database), the requests
    /// of a burst must not each wait their own turn for it.
    record: Result<Option<Record>, String>,
}

/// Leaves a turn when dropped (also when the request is abandoned while waiting or reading):
/// the last one to leave removes it.
struct TurnGuard<'a> {
    cache: &'a CachedSessions,
    id: Id,
    turn: Turn,
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        let mut c = self.cache.cache();
        let last = c
            .loading
            .get(&self.id)
            .is_some_and(|t| Arc::ptr_eq(t, &self.turn) && Arc::strong_count(t) == 2);
        if last {
            c.loading.remove(&self.id);
        }
    }
}

#[derive(Debug)]
struct Entry {
    record: Record,
    at: std::time::Instant,
    /// One request is reloading this entry now.
    refreshing: bool,
}

impl CachedSessions {
    pub fn new(inner: Arc<dyn SessionStore>, ttl: Duration) -> Self {
        CachedSessions {
            inner,
            cache: std::sync::Mutex::new(Cache::default()),
            ttl,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves a plain map behind: still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Caches what this process just wrote.
    fn put(&self, record: &Record) {
        let mut c = self.cache();
        c.epoch += 1;
        if c.entries.len() >= CACHE_MAX {
            let ttl = self.ttl;
            c.entries.retain(|_, e| e.at.elapsed() < ttl);
            if c.entries.len() >= CACHE_MAX {
                c.entries.clear();
            }
        }
        c.entries.insert(
            record.id,
            Entry {
                record: record.clone(),
                at: std::time::Instant::now(),
                refreshing: false,
            },
        );
    }

    fn forget(&self, id: &Id) {
        let mut c = self.cache();
        c.epoch += 1;
        c.entries.remove(id);
    }
}

impl crate::session::MemoryPeek for CachedSessions {
    /// Only entries in the first half of their lifetime: past it, the usual load refreshes them.
    fn peek(&self, id: &Id, f: &mut dyn FnMut(&Record)) -> bool {
        let c = self.cache();
        match c.entries.get(id) {
            Some(e)
                if e.at.elapsed() < self.ttl / 2
                    && e.record.expiry_date > time::OffsetDateTime::now_utc() =>
            {
                f(&e.record);
                true
            }
            _ => false,
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
        // `Ok(epoch)`: refresh a live entry (this request alone; the others are served it
        // meanwhile). `Err(turn)`: not in memory, or expired.
        let next: Result<u64, Turn> = {
            let mut c = self.cache();
            let epoch = c.epoch;
            match c.entries.get_mut(id) {
                Some(e)
                    if e.at.elapsed() < self.ttl
                        && e.record.expiry_date > time::OffsetDateTime::now_utc() =>
                {
                    if e.at.elapsed() < self.ttl / 2 || e.refreshing {
                        return Ok(Some(e.record.clone()));
                    }
                    e.refreshing = true;
                    Ok(epoch)
                }
                _ => {
                    if c.loading.len() >= CACHE_MAX {
                        // Turns left by abandoned requests nobody came back for.
                        c.loading.retain(|_, t| Arc::strong_count(t) > 1);
                    }
                    Err(c.loading.entry(*id).or_default().clone())
                }
            }
        };
        let turn = match next {
            Ok(epoch) => return self.load_from_store(id, epoch).await,
            Err(turn) => turn,
        };
        // Not in memory (or expired): one read of the store at a time for this session.
        let _leave = TurnGuard {
            cache: self,
            id: *id,
            turn: turn.clone(),
        };
        let mut answer = turn.lock_owned().await;
        let epoch = {
            let c = self.cache();
            if let Some(e) = c.entries.get(id) {
                if e.at.elapsed() < self.ttl
                    && e.record.expiry_date > time::OffsetDateTime::now_utc()
                {
                    return Ok(Some(e.record.clone()));
                }
            }
            if let Some(a) = answer.as_ref() {
                if a.epoch == c.epoch && a.at.elapsed() < self.ttl {
                    return a
                        .record
                        .clone()
                        .map_err(tower_sessions::session_store::Error::Backend);
                }
            }
            c.epoch
        };
        let loaded = self.load_from_store(id, epoch).await;
        *answer = Some(Answer {
            epoch,
            at: std::time::Instant::now(),
            record: match &loaded {
                Ok(r) => Ok(r.clone()),
                Err(e) => Err(e.to_string()),
            },
        });
        loaded
    }

    async fn delete(&self, id: &Id) -> tower_sessions::session_store::Result<()> {
        self.forget(id);
        self.inner.delete(id).await
    }
}

impl CachedSessions {
    /// Reads the store; the answer is cached unless a write of this process came since `epoch`.
    async fn load_from_store(
        &self,
        id: &Id,
        epoch: u64,
    ) -> tower_sessions::session_store::Result<Option<Record>> {
        let loaded = self.inner.load(id).await;
        let mut c = self.cache();
        match &loaded {
            Err(_) => {
                if let Some(e) = c.entries.get_mut(id) {
                    e.refreshing = false;
                }
            }
            Ok(_) if c.epoch != epoch => {}
            Ok(Some(r)) => {
                c.entries.insert(
                    *id,
                    Entry {
                        record: r.clone(),
                        at: std::time::Instant::now(),
                        refreshing: false,
                    },
                );
            }
            Ok(None) => {
                c.entries.remove(id);
            }
        }
        loaded
    }
}

pub struct Stores {
    pub links: Arc<dyn LinkStore>,
    pub sessions: Arc<dyn SessionStore>,
    /// The same session store's in-memory copies, when it keeps some (SQLite).
    pub session_peek: Option<Arc<dyn crate::session::MemoryPeek>>,
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
    let mut session_peek: Option<Arc<dyn crate::session::MemoryPeek>> = None;
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
                let cached = Arc::new(CachedSessions::new(Arc::new(store), SQLITE_CACHE_TTL));
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
        session_peek,
        probe,
    })
}

impl Stores {
    /// Both stores answer (and the link database accepts writes).
    pub async fn ping(&self) -> Result<(), Error> {
        self.links.ping().await?;
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
            // A real store answers later: reads issued meanwhile see the load in flight.
            tokio::task::yield_now().await;
            Ok(self.records.lock().unwrap().get(id).cloned())
        }
        async fn delete(&self, id: &Id) -> tower_sessions::session_store::Result<()> {
            self.records.lock().unwrap().remove(id);
            Ok(())
        }
    }

    /// An empty record that expires in an hour.
    fn fresh_record() -> Record {
        Record {
            id: Id::default(),
            data: Default::default(),
            expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
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
    async fn sessions_read_in_place_see_every_write_and_delete() {
        use crate::session::{MemoryPeek, Sessions};
        use http::header::{HeaderMap, HeaderValue, COOKIE, SET_COOKIE};
        let inner = Arc::new(Counting::default());
        let cache = Arc::new(CachedSessions::new(inner.clone(), Duration::from_secs(60)));
        let hour = Duration::from_secs(3600);
        let sessions = Sessions::new(
            cache.clone(),
            cookie::Key::generate(),
            "s",
            false,
            hour,
            hour,
            hour,
        )
        .with_peek(Some(cache.clone()));
        let mut s = sessions.open(&HeaderMap::new());
        sessions.load(&mut s).await.unwrap().csrf = "one".into();
        let id = s.save_now().await.unwrap().unwrap();
        s.changed();
        let mut set = HeaderMap::new();
        sessions.finish(s, &mut set).await.unwrap();
        let pair = set[SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let mut req = HeaderMap::new();
        req.insert(COOKIE, HeaderValue::from_str(&pair).unwrap());
        let csrf = |sessions: Sessions, req: HeaderMap| async move {
            let mut s = sessions.open(&req);
            sessions.load(&mut s).await.unwrap().csrf.clone()
        };
        for _ in 0..3 {
            assert_eq!(csrf(sessions.clone(), req.clone()).await, "one");
        }
        assert_eq!(
            inner.loads.load(Ordering::SeqCst),
            0,
            "read in place, from memory"
        );
        // A write by another request is what the next read sees.
        let mut s = sessions.open(&req);
        sessions.load(&mut s).await.unwrap().csrf = "two".into();
        s.changed();
        sessions.finish(s, &mut HeaderMap::new()).await.unwrap();
        assert_eq!(csrf(sessions.clone(), req.clone()).await, "two");
        // Deleted (sign-out, unlink, back-channel logout): no read finds it any more.
        sessions.delete_id(&id).await.unwrap();
        let after = csrf(sessions.clone(), req.clone()).await;
        assert!(
            after != "two" && after != "one",
            "a deleted session is a new one"
        );
        // Past half its lifetime an entry is not lent: the usual load refreshes it.
        let short = CachedSessions::new(inner.clone(), Duration::from_millis(40));
        let mut r = fresh_record();
        short.create(&mut r).await.unwrap();
        assert!(short.peek(&r.id, &mut |_| {}));
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert!(!short.peek(&r.id, &mut |_| {}));
        assert!(!short.peek(&Id::default(), &mut |_| {}));
    }

    #[tokio::test]
    async fn reads_are_served_from_memory_and_writes_go_through() {
        let inner = Arc::new(Counting::default());
        let cache = CachedSessions::new(inner.clone(), Duration::from_secs(60));
        let mut r = fresh_record();
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

    #[tokio::test]
    async fn a_busy_entry_is_refreshed_by_one_read_and_never_expires() {
        let inner = Arc::new(Counting::default());
        let ttl = Duration::from_millis(400);
        let cache = CachedSessions::new(inner.clone(), ttl);
        let id = Id::default();
        let r = Record {
            id,
            ..fresh_record()
        };
        inner.records.lock().unwrap().insert(id, r.clone());
        cache.load(&id).await.unwrap();
        assert_eq!(inner.loads.load(Ordering::SeqCst), 1);
        // Past half the lifetime: the first read reloads, the reads during that reload do not.
        tokio::time::sleep(ttl / 2 + Duration::from_millis(50)).await;
        let n = 20;
        let reads = (0..n).map(|_| cache.load(&id));
        let all = futures_util::future::join_all(reads).await;
        assert!(all.iter().all(|r| matches!(r, Ok(Some(_)))));
        assert_eq!(
            inner.loads.load(Ordering::SeqCst),
            2,
            "one refresh for {n} reads"
        );
        // The refreshed entry is young again: served from memory.
        cache.load(&id).await.unwrap();
        assert_eq!(inner.loads.load(Ordering::SeqCst), 2);
        // Another process deleted it: the next refresh sees that, within the lifetime.
        inner.records.lock().unwrap().remove(&id);
        tokio::time::sleep(ttl / 2 + Duration::from_millis(50)).await;
        assert!(cache.load(&id).await.unwrap().is_none());
        assert!(cache.load(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_burst_for_a_session_not_in_memory_reads_the_store_once() {
        let inner = Arc::new(Counting::default());
        let ttl = Duration::from_millis(300);
        let cache = CachedSessions::new(inner.clone(), ttl);
        let id = Id::default();
        inner.records.lock().unwrap().insert(
            id,
            Record {
                id,
                ..fresh_record()
            },
        );
        let n = 16;
        let all = futures_util::future::join_all((0..n).map(|_| cache.load(&id))).await;
        assert!(all.iter().all(|r| matches!(r, Ok(Some(_)))));
        assert_eq!(inner.loads.load(Ordering::SeqCst), 1, "one read for {n}");
        // Expired (an idle while): again one read for the whole burst.
        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        let all = futures_util::future::join_all((0..n).map(|_| cache.load(&id))).await;
        assert!(all.iter().all(|r| matches!(r, Ok(Some(_)))));
        assert_eq!(inner.loads.load(Ordering::SeqCst), 2);
        // A session the store does not have: the burst shares that answer too.
        let gone = Id::default();
        let all = futures_util::future::join_all((0..n).map(|_| cache.load(&gone))).await;
        assert!(all.iter().all(|r| matches!(r, Ok(None))));
        assert_eq!(inner.loads.load(Ordering::SeqCst), 3);
        // Nothing is left behind once the burst is over.
        assert!(cache.cache().loading.is_empty());
        // A later read of the missing session asks the store again (answers are not kept).
        assert!(cache.load(&gone).await.unwrap().is_none());
        assert_eq!(inner.loads.load(Ordering::SeqCst), 4);
    }

    /// A store that fails every read (after a pause, as a locked database would).
    #[derive(Debug, Default)]
    struct Failing {
        loads: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl SessionStore for Failing {
        async fn save(&self, _: &Record) -> tower_sessions::session_store::Result<()> {
            Ok(())
        }
        async fn load(&self, _: &Id) -> tower_sessions::session_store::Result<Option<Record>> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(tower_sessions::session_store::Error::Backend(
                "database is locked".into(),
            ))
        }
        async fn delete(&self, _: &Id) -> tower_sessions::session_store::Result<()> {
            Ok(())
        }
    }

    /// With the store failing, a burst shares the one failure instead of queueing for its own.
    #[tokio::test]
    async fn a_burst_shares_a_failing_read() {
        let inner = Arc::new(Failing::default());
        let cache = CachedSessions::new(inner.clone(), Duration::from_secs(2));
        let id = Id::default();
        let all = futures_util::future::join_all((0..16).map(|_| cache.load(&id))).await;
        assert!(all
            .iter()
            .all(|r| matches!(r, Err(e) if e.to_string().contains("database is locked"))));
        assert_eq!(inner.loads.load(Ordering::SeqCst), 1);
        assert!(cache.cache().loading.is_empty());
    }

    /// A request that waits for another's read while a write of this process lands does not
    /// take the read's (older) answer.
    #[tokio::test]
    async fn a_read_shared_by_waiters_is_not_taken_after_a_write() {
        let (inner, cache, id, new) = paused_with_a_newer_write();
        let (first, second, ()) = tokio::join!(cache.load(&id), cache.load(&id), async {
            // Both reads are under way (the first at the store, the second waiting for it).
            tokio::task::yield_now().await;
            cache.save(&new).await.unwrap();
            inner.release.notify_one();
        });
        assert_eq!(
            first.unwrap().unwrap().data.get("k"),
            None,
            "read before the write"
        );
        assert_eq!(
            second.unwrap().unwrap().data.get("k"),
            Some(&serde_json::json!("new")),
            "the waiter sees the write, not the older answer"
        );
    }

    /// A store whose loads read the record at once and answer only when released.
    #[derive(Debug, Default)]
    struct Paused {
        records: std::sync::Mutex<HashMap<Id, Record>>,
        release: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl SessionStore for Paused {
        async fn save(&self, r: &Record) -> tower_sessions::session_store::Result<()> {
            self.records.lock().unwrap().insert(r.id, r.clone());
            Ok(())
        }
        async fn load(&self, id: &Id) -> tower_sessions::session_store::Result<Option<Record>> {
            let snapshot = self.records.lock().unwrap().get(id).cloned();
            self.release.notified().await;
            Ok(snapshot)
        }
        async fn delete(&self, id: &Id) -> tower_sessions::session_store::Result<()> {
            self.records.lock().unwrap().remove(id);
            Ok(())
        }
    }

    /// A paused store holding a record, its cache, the record's id, and a newer version of it
    /// (data `k` = "new") for the test to write.
    fn paused_with_a_newer_write() -> (Arc<Paused>, CachedSessions, Id, Record) {
        let inner = Arc::new(Paused::default());
        let cache = CachedSessions::new(inner.clone(), Duration::from_secs(60));
        let id = Id::default();
        let old = Record {
            id,
            ..fresh_record()
        };
        inner.records.lock().unwrap().insert(id, old.clone());
        let mut new = old;
        new.data.insert("k".into(), serde_json::json!("new"));
        (inner, cache, id, new)
    }

    /// A read that started before a write of this process must not put the old copy back.
    #[tokio::test]
    async fn a_load_racing_a_write_does_not_cache_the_old_copy() {
        let (inner, cache, id, new) = paused_with_a_newer_write();
        let (raced, ()) = tokio::join!(cache.load(&id), async {
            // The load above has read the old record and waits; the write lands meanwhile.
            cache.save(&new).await.unwrap();
            inner.release.notify_one();
        });
        assert_eq!(
            raced.unwrap().unwrap().data.get("k"),
            None,
            "it read the old copy"
        );
        let now = cache.load(&id).await;
        assert_eq!(
            now.unwrap().unwrap().data.get("k"),
            Some(&serde_json::json!("new")),
            "the cache kept the write, not the raced read"
        );
    }
}
