//! The SQLite backend: the shared SQL of [`super::sql`] over a WAL database.
//! Write transactions begin `IMMEDIATE` so concurrent writers queue on the
//! busy timeout instead of failing to upgrade a read lock.

use std::time::Duration;

use sqlx::{Sqlite, SqlitePool, Transaction};

use crate::error::Result;

/// The posts-service's data in an SQLite file.
pub struct SqliteStore {
    /// The connection pool.
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing, with its directory) and migrates.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self> {
        let pool = shared::db::open_sqlite(url, acquire_timeout).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("migrating the posts database: {e}"))?;
        Ok(Self { pool })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

super::sql::sql_store!(SqliteStore, Sqlite);
