//! The PostgreSQL backend, shared by replicas: the link database ([`PostgresDb`]: the four traits
//! of `traits.rs`; attempts counted one at a time per key with an advisory lock) and
//! tower-sessions' PostgreSQL session store.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::traits::LINK_COLUMNS as COLS;
use super::traits::{like_pattern, AuditLog, AuditQuery, AuditRecord, LinkPage};
use super::STORE_TIMEOUT;
use super::{Attempts, Link, LinkConflict, Links, LogoutTokens, SessionEntry, SessionIndex};
use crate::config::StoreUrl;
use crate::error::Error;
use crate::util::now_ms;

/// A bounded pool on the database of `url` (`shown` is how messages name it: without its
/// password), with the embedded migrations applied.
pub async fn connect(url: &str, shown: &StoreUrl, max: u32) -> Result<PgPool, String> {
    let opts: PgConnectOptions = url
        .parse()
        .map_err(|e| format!("store: {shown} is not a PostgreSQL URL: {e}"))?;
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(STORE_TIMEOUT)
        .connect_with(opts)
        .await
        .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
    sqlx::migrate!("migrations/postgres")
        .run(&pool)
        .await
        .map_err(|e| format!("cannot prepare {shown}: {e}"))?;
    Ok(pool)
}

/// tower-sessions' session table in this database (created when needed, expired rows deleted
/// every 5 minutes). Not cached: replicas must see each other's sign-outs at once.
pub async fn session_store(
    pool: PgPool,
) -> Result<tower_sessions_sqlx_store::PostgresStore, String> {
    let store = tower_sessions_sqlx_store::PostgresStore::new(pool);
    store
        .migrate()
        .await
        .map_err(|e| format!("cannot prepare the session table: {e}"))?;
    super::spawn_expired_deletion(store.clone());
    Ok(store)
}

/// The link database in PostgreSQL, shared by every replica.
pub struct PostgresDb {
    pool: PgPool,
}

impl PostgresDb {
    pub fn new(pool: PgPool) -> Self {
        PostgresDb { pool }
    }

    /// Proves the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

type Row = (String, String, String, String, bool, i64, Option<i64>);

fn from_row(r: Row) -> Link {
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
impl Links for PostgresDb {
    async fn get(&self, issuer: &str, subject: &str) -> Result<Option<Link>, Error> {
        let r: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLS} FROM links WHERE issuer = $1 AND subject = $2"
        ))
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.map(from_row))
    }

    async fn get_by_login(&self, login: &str) -> Result<Option<Link>, Error> {
        let r: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLS} FROM links WHERE lower(matomo_login) = lower($1)"
        ))
        .bind(login)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.map(from_row))
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
        let rows: Vec<Row> =
            sqlx::query_as(&format!("SELECT {COLS} FROM links ORDER BY created_at"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    async fn list_page(&self, filter: &str, offset: u64, limit: u64) -> Result<LinkPage, Error> {
        let pattern = like_pattern(filter);
        let cond = "(matomo_login ILIKE $1 ESCAPE '\\' OR subject ILIKE $1 ESCAPE '\\')";
        let (total,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM links WHERE {cond}"))
            .bind(&pattern)
            .fetch_one(&self.pool)
            .await?;
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLS} FROM links WHERE {cond} ORDER BY matomo_login LIMIT $2 OFFSET $3"
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
        let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLS} FROM links WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(from_row))
    }

    async fn touch(&self, id: &str) -> Result<(), Error> {
        sqlx::query("UPDATE links SET last_login_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Attempts for PostgresDb {
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
}

#[async_trait]
impl SessionIndex for PostgresDb {
    async fn index_session(&self, e: &SessionEntry) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO identity_sessions (issuer, subject, session_id, created_at, sid, id_sub, client_ip) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
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
            "DELETE FROM identity_sessions WHERE issuer = $1 AND subject = $2 RETURNING session_id",
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
            "SELECT issuer, subject, session_id, sid, id_sub, created_at, client_ip FROM identity_sessions WHERE ($1::TEXT IS NULL OR subject = $1) ORDER BY created_at",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn prune_sessions(&self, before: i64) -> Result<(), Error> {
        sqlx::query("DELETE FROM identity_sessions WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl LogoutTokens for PostgresDb {
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
}

#[async_trait]
impl AuditLog for PostgresDb {
    async fn append(&self, records: &[AuditRecord]) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        // One statement for the batch: no transaction stays open across an await (a writer
        // paused mid-transaction would hold the database's write lock meanwhile).
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
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
            format!("${n}")
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
        let r = sqlx::query("DELETE FROM audit WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}
