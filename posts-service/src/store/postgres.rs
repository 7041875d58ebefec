//! The PostgreSQL backend: the shared SQL of [`super::sql`] over one pool.

use std::time::Duration;

use sqlx::Postgres;

use super::sql::SqlStore;
use crate::error::Result;

/// The posts-service's data in PostgreSQL.
pub type PgStore = SqlStore<Postgres>;

impl PgStore {
    /// Connects and applies the migrations.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self> {
        let pool = shared::db::open_postgres(url, acquire_timeout).await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("migrating the posts database: {e}"))?;
        // The pool served the migrations; the store uses connections of its
        // own, given back without sqlx's round trip per use.
        let connections = shared::db::Connections::like(&pool);
        pool.close().await;
        Ok(Self::new(connections.clone(), connections, false))
    }
}
