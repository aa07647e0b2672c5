//! The Redis backend, for sessions only (links need a database: `store.links_url` is SQLite or
//! PostgreSQL): tower-sessions' Redis session store on a bounded pool that reconnects by itself.
//! Redis expires sessions itself (EXAT on every save).

use fred::prelude::{ClientLike, Pool as RedisPool, ReconnectPolicy};

use super::STORE_TIMEOUT;
use crate::config::StoreUrl;

/// A pool on the Redis of `url` (`shown` is how messages name it: without its password).
pub async fn connect(url: &str, shown: &StoreUrl, max: u32) -> Result<RedisPool, String> {
    let config = fred::prelude::Config::from_url(url)
        .map_err(|e| format!("store: {shown} is not a Redis URL: {e}"))?;
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
        .map_err(|e| format!("store: {shown}: {e}"))?;
    pool.init()
        .await
        .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
    Ok(pool)
}

/// The session store on this pool. Not cached: replicas must see each other's sign-outs at once.
pub fn session_store(pool: RedisPool) -> tower_sessions_redis_store::RedisStore<RedisPool> {
    tower_sessions_redis_store::RedisStore::new(pool)
}
