//! The SQLite backend: the shared SQL of [`super::sql`] over a WAL database.
//! Writes run on one dedicated connection (transactions begin `IMMEDIATE`),
//! so writers queue in order instead of colliding in SQLite's busy handler.

use std::time::Duration;

use sqlx::{Sqlite, SqlitePool, Transaction};

use crate::error::Result;

/// The posts-service's data in an SQLite file.
pub struct SqliteStore {
    /// Connections for reads.
    pool: SqlitePool,
    /// The one connection for write transactions.
    writer: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing, with its directory) and migrates.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self> {
        let pools = shared::db::open_sqlite(url, acquire_timeout).await?;
        let pool = pools.read;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("migrating the posts database: {e}"))?;
        Ok(Self {
            pool,
            writer: pools.write,
        })
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

super::sql::sql_store!(SqliteStore, Sqlite);
