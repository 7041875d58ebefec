//! The PostgreSQL backend: the shared SQL of [`super::sql`].

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};

use crate::error::Result;

/// The posts-service's data in PostgreSQL.
pub struct PgStore {
    /// The connection pool.
    pool: PgPool,
}

impl PgStore {
    /// Connects and applies the migrations.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self> {
        let pool = shared::db::open_postgres(url, acquire_timeout).await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("migrating the posts database: {e}"))?;
        Ok(Self { pool })
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

super::sql::sql_store!(PgStore, Postgres);
