//! The SQLite backend, the single-process default: one file (WAL) holding the link database
//! ([`SqliteDb`]: the four traits of `traits.rs`) and, unless `store.sessions_url` names another
//! store, tower-sessions' session table, read through the cache of `cache.rs`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::cache::CachedSessions;
use super::traits::LINK_COLUMNS as COLS;
use super::traits::{like_pattern, AuditLog, AuditQuery, AuditRecord, LinkPage};
use super::{Attempts, Link, LinkConflict, Links, LogoutTokens, SessionEntry, SessionIndex};
use crate::error::Error;
use crate::util::now_ms;

/// How long a session read from the embedded SQLite store may be served from memory. Writes and
/// deletes of this process go through the cache, so it only bounds what another process (the
/// `unikgate links remove` CLI) changes: that takes effect within this time.
pub const SQLITE_CACHE_TTL: Duration = Duration::from_secs(2);

/// Opens (creating when needed) the SQLite database of `sqlite://path`, with WAL and a busy
/// timeout, and applies the embedded migrations.
pub async fn open(path: &std::path::Path) -> Result<SqlitePool, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .map_err(|e| e.to_string())?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    sqlx::migrate!("migrations/sqlite")
        .run(&pool)
        .await
        .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
    Ok(pool)
}

/// tower-sessions' session table in this database (created when needed, expired rows deleted
/// every 5 minutes), behind the read cache.
pub async fn session_store(pool: SqlitePool) -> Result<Arc<CachedSessions>, String> {
    let store = tower_sessions_sqlx_store::SqliteStore::new(pool);
    store
        .migrate()
        .await
        .map_err(|e| format!("cannot prepare the session table: {e}"))?;
    super::spawn_expired_deletion(store.clone());
    Ok(Arc::new(CachedSessions::new(
        Arc::new(store),
        SQLITE_CACHE_TTL,
    )))
}

/// The link database in a SQLite file.
pub struct SqliteDb {
    pool: SqlitePool,
}

impl SqliteDb {
    pub fn new(pool: SqlitePool) -> Self {
        SqliteDb { pool }
    }

    /// Proves the database answers and accepts writes.
    pub async fn ping(&self) -> Result<(), Error> {
        // Readiness means writable: take the write lock and give it back, writing nothing. As a
        // sqlx transaction, so that a readiness probe given up half-way (its future dropped
        // between the two) still rolls back, instead of returning a connection to the pool that
        // holds the write lock.
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        tx.rollback().await?;
        Ok(())
    }
}

type Row = (String, String, String, String, i64, i64, Option<i64>);

fn from_row(r: Row) -> Link {
    Link {
        id: r.0,
        issuer: r.1,
        subject: r.2,
        matomo_login: r.3,
        superuser: r.4 != 0,
        created_at: r.5,
        last_login_at: r.6,
    }
}

#[async_trait]
impl Links for SqliteDb {
    async fn get(&self, issuer: &str, subject: &str) -> Result<Option<Link>, Error> {
        let r: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLS} FROM links WHERE issuer = ? AND subject = ?"
        ))
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.map(from_row))
    }

    async fn get_by_login(&self, login: &str) -> Result<Option<Link>, Error> {
        let r: Option<Row> =
            sqlx::query_as(&format!("SELECT {COLS} FROM links WHERE matomo_login = ?"))
                .bind(login)
                .fetch_optional(&self.pool)
                .await?;
        Ok(r.map(from_row))
    }

    async fn create(&self, l: &Link) -> Result<Result<(), LinkConflict>, Error> {
        let res = sqlx::query(
            "INSERT INTO links (id, issuer, subject, matomo_login, superuser, created_at, last_login_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&l.id)
        .bind(&l.issuer)
        .bind(&l.subject)
        .bind(&l.matomo_login)
        .bind(l.superuser as i64)
        .bind(l.created_at)
        .bind(l.last_login_at)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(Ok(())),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                if self.get(&l.issuer, &l.subject).await?.is_some() {
                    Ok(Err(LinkConflict::Identity))
                } else {
                    Ok(Err(LinkConflict::Login))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn remove(&self, issuer: &str, subject: &str) -> Result<bool, Error> {
        let r = sqlx::query("DELETE FROM links WHERE issuer = ? AND subject = ?")
            .bind(issuer)
            .bind(subject)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn remove_login(&self, login: &str) -> Result<bool, Error> {
        let r = sqlx::query("DELETE FROM links WHERE matomo_login = ?")
            .bind(login)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn list(&self) -> Result<Vec<Link>, Error> {
        let rows: Vec<Row> =
            sqlx::query_as(&format!("SELECT {COLS} FROM links ORDER BY created_at"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    async fn list_page(&self, filter: &str, offset: u64, limit: u64) -> Result<LinkPage, Error> {
        let pattern = like_pattern(filter);
        let cond = "(matomo_login LIKE ?1 ESCAPE '\\' OR subject LIKE ?1 ESCAPE '\\')";
        let (total,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM links WHERE {cond}"))
            .bind(&pattern)
            .fetch_one(&self.pool)
            .await?;
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLS} FROM links WHERE {cond} ORDER BY matomo_login LIMIT ?2 OFFSET ?3"
        ))
        .bind(&pattern)
        .bind(limit.min(i64::MAX as u64) as i64)
        .bind(offset.min(i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(LinkPage {
            total: total.max(0) as u64,
            links: rows.into_iter().map(from_row).collect(),
        })
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<Link>, Error> {
        let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLS} FROM links WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(from_row))
    }

    async fn touch(&self, id: &str) -> Result<(), Error> {
        sqlx::query("UPDATE links SET last_login_at = ? WHERE id = ?")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Attempts for SqliteDb {
    async fn attempt(&self, key: &str, max: u32, window: Duration) -> Result<bool, Error> {
        let now = now_ms();
        let since = now - window.as_millis() as i64;
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM attempts WHERE at < ?")
            .bind(now - 24 * 3600 * 1000)
            .execute(&mut *tx)
            .await?;
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM attempts WHERE key = ? AND at > ?")
            .bind(key)
            .bind(since)
            .fetch_one(&mut *tx)
            .await?;
        if n >= max as i64 {
            tx.commit().await?;
            return Ok(false);
        }
        sqlx::query("INSERT INTO attempts (key, at) VALUES (?, ?)")
            .bind(key)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

#[async_trait]
impl SessionIndex for SqliteDb {
    async fn index_session(&self, e: &SessionEntry) -> Result<(), Error> {
        sqlx::query("INSERT OR IGNORE INTO identity_sessions (issuer, subject, session_id, created_at, sid, id_sub, client_ip) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(&e.issuer)
            .bind(&e.subject)
            .bind(&e.session_id)
            .bind(e.created_at)
            .bind(&e.sid)
            .bind(&e.id_sub)
            .bind(&e.client_ip)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn take_sessions(&self, issuer: &str, subject: &str) -> Result<Vec<String>, Error> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "DELETE FROM identity_sessions WHERE issuer = ? AND subject = ? RETURNING session_id",
        )
        .bind(issuer)
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn take_logout_sessions(
        &self,
        issuer: &str,
        sid: Option<&str>,
        sub: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        let rows: Vec<(String,)> = match (sid, sub) {
            (Some(sid), _) => sqlx::query_as(
                "DELETE FROM identity_sessions WHERE issuer = ? AND sid = ? RETURNING session_id",
            )
            .bind(issuer)
            .bind(sid)
            .fetch_all(&self.pool)
            .await?,
            (None, Some(sub)) => sqlx::query_as(
                "DELETE FROM identity_sessions WHERE issuer = ? AND (id_sub = ? OR (id_sub IS NULL AND subject = ?)) RETURNING session_id",
            )
            .bind(issuer)
            .bind(sub)
            .bind(sub)
            .fetch_all(&self.pool)
            .await?,
            (None, None) => Vec::new(),
        };
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn list_sessions(&self, subject: Option<&str>) -> Result<Vec<SessionEntry>, Error> {
        Ok(sqlx::query_as(
            "SELECT issuer, subject, session_id, sid, id_sub, created_at, client_ip FROM identity_sessions WHERE (? IS NULL OR subject = ?) ORDER BY created_at",
        )
        .bind(subject)
        .bind(subject)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn prune_sessions(&self, before: i64) -> Result<(), Error> {
        sqlx::query("DELETE FROM identity_sessions WHERE created_at < ?")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl LogoutTokens for SqliteDb {
    async fn first_use_of_jti(
        &self,
        issuer: &str,
        jti: &str,
        forget_before: i64,
    ) -> Result<bool, Error> {
        sqlx::query("DELETE FROM logout_tokens WHERE seen_at < ?")
            .bind(forget_before)
            .execute(&self.pool)
            .await?;
        let r = sqlx::query(
            "INSERT OR IGNORE INTO logout_tokens (issuer, jti, seen_at) VALUES (?, ?, ?)",
        )
        .bind(issuer)
        .bind(jti)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}

#[async_trait]
impl AuditLog for SqliteDb {
    async fn append(&self, records: &[AuditRecord]) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        // One statement for the batch: no transaction stays open across an await (a writer
        // paused mid-transaction would hold the database's write lock meanwhile).
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO audit (at, event, subject, matomo_login, client_ip, reason, details, actor) ",
        );
        q.push_values(records, |mut row, r| {
            row.push_bind(r.at)
                .push_bind(&r.event)
                .push_bind(&r.subject)
                .push_bind(&r.matomo_login)
                .push_bind(&r.client_ip)
                .push_bind(&r.reason)
                .push_bind(&r.details)
                .push_bind(&r.actor);
        });
        q.build().execute(&self.pool).await?;
        Ok(())
    }

    async fn list(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, Error> {
        let mut sql = String::from(
            "SELECT at, event, subject, matomo_login, client_ip, reason, details, actor FROM audit WHERE 1 = 1",
        );
        let mut n = 0;
        let mut next = || {
            n += 1;
            {
                let _ = n;
                "?".to_string()
            }
        };
        if q.subject.is_some() {
            sql.push_str(&format!(" AND subject = {}", next()));
        }
        if q.since.is_some() {
            sql.push_str(&format!(" AND at >= {}", next()));
        }
        if !q.events.is_empty() {
            let marks: Vec<String> = q.events.iter().map(|_| next()).collect();
            sql.push_str(&format!(" AND event IN ({})", marks.join(", ")));
        }
        let (l, o) = (next(), next());
        sql.push_str(&format!(" ORDER BY at DESC, id DESC LIMIT {l} OFFSET {o}"));
        let mut query = sqlx::query_as::<_, AuditRecord>(&sql);
        if let Some(s) = &q.subject {
            query = query.bind(s);
        }
        if let Some(t) = q.since {
            query = query.bind(t);
        }
        for e in &q.events {
            query = query.bind(e);
        }
        Ok(query
            .bind(q.limit.min(i64::MAX as u64) as i64)
            .bind(q.offset.min(i64::MAX as u64) as i64)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn prune(&self, before: i64) -> Result<u64, Error> {
        let r = sqlx::query("DELETE FROM audit WHERE at < ?")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}
