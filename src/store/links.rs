//! The link store: which Matomo login each @unikname `(issuer, subject)` is linked to, unique both
//! ways; plus the attempt counters of rate limits (kept in the same database so that replicas
//! share them).
//!
//! Invariant: the only module that writes links; a link is created whole or not at all (one
//! INSERT, both uniqueness rules enforced by the database, not by a read-then-write).

use async_trait::async_trait;
use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;
use crate::util::now_ms;

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
}

/// Why a link could not be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkConflict {
    /// This @unikname already has a link.
    Identity,
    /// This Matomo login is linked to another @unikname.
    Login,
}

#[async_trait]
pub trait LinkStore: Send + Sync + 'static {
    async fn get(&self, issuer: &str, subject: &str) -> Result<Option<Link>, Error>;
    async fn get_by_login(&self, login: &str) -> Result<Option<Link>, Error>;
    /// Creates the link, or says which side is taken.
    async fn create(&self, link: &Link) -> Result<Result<(), LinkConflict>, Error>;
    /// Removes the link of this identity; true when there was one.
    async fn remove(&self, issuer: &str, subject: &str) -> Result<bool, Error>;
    async fn remove_login(&self, login: &str) -> Result<bool, Error>;
    async fn list(&self) -> Result<Vec<Link>, Error>;
    async fn touch(&self, id: &str) -> Result<(), Error>;
    /// Records an attempt under `key` and says whether it is within `max` per `window`.
    async fn attempt(&self, key: &str, max: u32, window: Duration) -> Result<bool, Error>;
    /// Proves the store answers and accepts writes.
    async fn ping(&self) -> Result<(), Error>;
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
    /// Records a logout token's `jti`; false when it was seen before (on any replica). Forgets
    /// the ones seen before `forget_before` (ms).
    async fn first_use_of_jti(
        &self,
        issuer: &str,
        jti: &str,
        forget_before: i64,
    ) -> Result<bool, Error>;
    /// Forgets index rows created before `before` (ms): their sessions have ended anyway.
    async fn prune_sessions(&self, before: i64) -> Result<(), Error>;
}

/// Opens (creating when needed) the SQLite database of `sqlite://path`, with WAL and a busy
/// timeout, and applies the embedded migrations.
pub async fn open_sqlite(path: &std::path::Path) -> Result<SqlitePool, String> {
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

pub struct SqliteLinks {
    pool: SqlitePool,
}

impl SqliteLinks {
    pub fn new(pool: SqlitePool) -> Self {
        SqliteLinks { pool }
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

const COLS: &str = "id, issuer, subject, matomo_login, superuser, created_at, last_login_at";

#[async_trait]
impl LinkStore for SqliteLinks {
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

    async fn touch(&self, id: &str) -> Result<(), Error> {
        sqlx::query("UPDATE links SET last_login_at = ? WHERE id = ?")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

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

    async fn index_session(&self, e: &SessionEntry) -> Result<(), Error> {
        sqlx::query("INSERT OR IGNORE INTO identity_sessions (issuer, subject, session_id, created_at, sid, id_sub) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&e.issuer)
            .bind(&e.subject)
            .bind(&e.session_id)
            .bind(e.created_at)
            .bind(&e.sid)
            .bind(&e.id_sub)
            .execute(&self.pool)
            .await?;
        Ok(())
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
            "SELECT issuer, subject, session_id, sid, id_sub, created_at FROM identity_sessions WHERE (? IS NULL OR subject = ?) ORDER BY created_at",
        )
        .bind(subject)
        .bind(subject)
        .fetch_all(&self.pool)
        .await?)
    }

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

    async fn prune_sessions(&self, before: i64) -> Result<(), Error> {
        sqlx::query("DELETE FROM identity_sessions WHERE created_at < ?")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), Error> {
        // Readiness means writable: take the write lock and give it back, writing nothing.
        let mut conn = self.pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        sqlx::query("ROLLBACK").execute(&mut *conn).await?;
        Ok(())
    }
}

/// Links and attempt counters in PostgreSQL, shared by every replica.
pub struct PgLinks {
    pool: PgPool,
}

impl PgLinks {
    pub fn new(pool: PgPool) -> Self {
        PgLinks { pool }
    }
}

type PgRow = (String, String, String, String, bool, i64, Option<i64>);

fn from_pg_row(r: PgRow) -> Link {
    Link {
        id: r.0,
        issuer: r.1,
        subject: r.2,
        matomo_login: r.3,
        superuser: r.4,
        created_at: r.5,
        last_login_at: r.6,
    }
}

#[async_trait]
impl LinkStore for PgLinks {
    async fn get(&self, issuer: &str, subject: &str) -> Result<Option<Link>, Error> {
        let r: Option<PgRow> = sqlx::query_as(&format!(
            "SELECT {COLS} FROM links WHERE issuer = $1 AND subject = $2"
        ))
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.map(from_pg_row))
    }

    async fn get_by_login(&self, login: &str) -> Result<Option<Link>, Error> {
        let r: Option<PgRow> = sqlx::query_as(&format!(
            "SELECT {COLS} FROM links WHERE lower(matomo_login) = lower($1)"
        ))
        .bind(login)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.map(from_pg_row))
    }

    async fn create(&self, l: &Link) -> Result<Result<(), LinkConflict>, Error> {
        let res = sqlx::query(
            "INSERT INTO links (id, issuer, subject, matomo_login, superuser, created_at, last_login_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&l.id)
        .bind(&l.issuer)
        .bind(&l.subject)
        .bind(&l.matomo_login)
        .bind(l.superuser)
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
        let r = sqlx::query("DELETE FROM links WHERE issuer = $1 AND subject = $2")
            .bind(issuer)
            .bind(subject)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn remove_login(&self, login: &str) -> Result<bool, Error> {
        let r = sqlx::query("DELETE FROM links WHERE lower(matomo_login) = lower($1)")
            .bind(login)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn list(&self) -> Result<Vec<Link>, Error> {
        let rows: Vec<PgRow> =
            sqlx::query_as(&format!("SELECT {COLS} FROM links ORDER BY created_at"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(from_pg_row).collect())
    }

    async fn touch(&self, id: &str) -> Result<(), Error> {
        sqlx::query("UPDATE links SET last_login_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn attempt(&self, key: &str, max: u32, window: Duration) -> Result<bool, Error> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // Replicas count the same key one at a time.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM attempts WHERE key = $1 AND at < $2")
            .bind(key)
            .bind(now - 24 * 3600 * 1000)
            .execute(&mut *tx)
            .await?;
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM attempts WHERE key = $1 AND at > $2")
                .bind(key)
                .bind(now - window.as_millis() as i64)
                .fetch_one(&mut *tx)
                .await?;
        let allowed = n < max as i64;
        if allowed {
            sqlx::query("INSERT INTO attempts (key, at) VALUES ($1, $2)")
                .bind(key)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(allowed)
    }

    async fn index_session(&self, e: &SessionEntry) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO identity_sessions (issuer, subject, session_id, created_at, sid, id_sub) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&e.issuer)
        .bind(&e.subject)
        .bind(&e.session_id)
        .bind(e.created_at)
        .bind(&e.sid)
        .bind(&e.id_sub)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_logout_sessions(
        &self,
        issuer: &str,
        sid: Option<&str>,
        sub: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        let rows: Vec<(String,)> = match (sid, sub) {
            (Some(sid), _) => sqlx::query_as(
                "DELETE FROM identity_sessions WHERE issuer = $1 AND sid = $2 RETURNING session_id",
            )
            .bind(issuer)
            .bind(sid)
            .fetch_all(&self.pool)
            .await?,
            (None, Some(sub)) => sqlx::query_as(
                "DELETE FROM identity_sessions WHERE issuer = $1 AND (id_sub = $2 OR (id_sub IS NULL AND subject = $2)) RETURNING session_id",
            )
            .bind(issuer)
            .bind(sub)
            .fetch_all(&self.pool)
            .await?,
            (None, None) => Vec::new(),
        };
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn list_sessions(&self, subject: Option<&str>) -> Result<Vec<SessionEntry>, Error> {
        Ok(sqlx::query_as(
            "SELECT issuer, subject, session_id, sid, id_sub, created_at FROM identity_sessions WHERE ($1::TEXT IS NULL OR subject = $1) ORDER BY created_at",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn first_use_of_jti(
        &self,
        issuer: &str,
        jti: &str,
        forget_before: i64,
    ) -> Result<bool, Error> {
        sqlx::query("DELETE FROM logout_tokens WHERE seen_at < $1")
            .bind(forget_before)
            .execute(&self.pool)
            .await?;
        let r = sqlx::query(
            "INSERT INTO logout_tokens (issuer, jti, seen_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(issuer)
        .bind(jti)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn take_sessions(&self, issuer: &str, subject: &str) -> Result<Vec<String>, Error> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "DELETE FROM identity_sessions WHERE issuer = $1 AND subject = $2 RETURNING session_id",
        )
        .bind(issuer)
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn prune_sessions(&self, before: i64) -> Result<(), Error> {
        sqlx::query("DELETE FROM identity_sessions WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_session_index_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let links = SqliteLinks::new(open_sqlite(&dir.path().join("t.db")).await.unwrap());
        let e = |subject: &str, id: &str, sid: Option<&str>| SessionEntry {
            issuer: "iss".into(),
            subject: subject.into(),
            session_id: id.into(),
            sid: sid.map(str::to_string),
            id_sub: None,
            created_at: now_ms(),
        };
        links
            .index_session(&e("sub", "s1", Some("p1")))
            .await
            .unwrap();
        links
            .index_session(&e("sub", "s2", Some("p2")))
            .await
            .unwrap();
        links.index_session(&e("other", "s3", None)).await.unwrap();
        assert_eq!(links.list_sessions(Some("sub")).await.unwrap().len(), 2);
        assert_eq!(links.list_sessions(None).await.unwrap().len(), 3);
        let mut got = links.take_sessions("iss", "sub").await.unwrap();
        got.sort();
        assert_eq!(got, vec!["s1", "s2"]);
        assert!(links.take_sessions("iss", "sub").await.unwrap().is_empty());
        assert_eq!(
            links.take_sessions("iss", "other").await.unwrap(),
            vec!["s3"]
        );
    }

    #[tokio::test]
    async fn logout_tokens_end_by_sid_or_sub_and_each_jti_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let links = SqliteLinks::new(open_sqlite(&dir.path().join("t.db")).await.unwrap());
        for (id, sid, sub) in [
            ("s1", "p1", "a"),
            ("s2", "p1", "a"),
            ("s3", "p2", "a"),
            ("s4", "p3", "b"),
        ] {
            let e = SessionEntry {
                issuer: "iss".into(),
                subject: sub.into(),
                session_id: id.into(),
                sid: Some(sid.into()),
                id_sub: Some(sub.into()),
                created_at: now_ms(),
            };
            links.index_session(&e).await.unwrap();
        }
        let mut by_sid = links
            .take_logout_sessions("iss", Some("p1"), Some("a"))
            .await
            .unwrap();
        by_sid.sort();
        assert_eq!(by_sid, vec!["s1", "s2"]);
        assert!(links
            .take_logout_sessions("other-iss", None, Some("a"))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            links
                .take_logout_sessions("iss", None, Some("a"))
                .await
                .unwrap(),
            vec!["s3"]
        );
        assert!(links
            .take_logout_sessions("iss", None, None)
            .await
            .unwrap()
            .is_empty());
        assert!(links.first_use_of_jti("iss", "j1", 0).await.unwrap());
        assert!(!links.first_use_of_jti("iss", "j1", 0).await.unwrap());
        assert!(links.first_use_of_jti("iss2", "j1", 0).await.unwrap());
        // Forgotten once older than the window (a token that old is refused by its iat anyway).
        assert!(links
            .first_use_of_jti("iss", "j2", now_ms() + 1)
            .await
            .unwrap());
        assert!(links
            .first_use_of_jti("iss", "j1", now_ms() + 1)
            .await
            .unwrap());
    }
}
