//! The SQLite backend: the shared SQL of [`super::sql`] over a WAL database.
//! Write transactions run on one dedicated connection and begin
//! `IMMEDIATE`, taking the write lock up front: writers queue in order
//! instead of colliding, and that order is also the outbox's.

use std::time::Duration;

use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::watch;

use crate::error::Result;

/// The auth-service's data in an SQLite file.
pub struct SqliteStore {
    /// Connections for reads.
    pool: SqlitePool,
    /// The one connection for write transactions.
    writer: SqlitePool,
    /// Wakes event streams after this process commits an event.
    commits: watch::Sender<i64>,
}

impl SqliteStore {
    /// Opens (creating if missing, with its directory) and migrates.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self> {
        let pools = shared::db::open_sqlite(url, acquire_timeout).await?;
        let pool = pools.read;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("migrating the auth database: {e}"))?;
        let store = Self {
            pool,
            writer: pools.write,
            commits: watch::Sender::new(0),
        };
        super::Store::backfill_username_skeletons(&store).await?;
        Ok(store)
    }

    fn writer_pool(&self) -> &SqlitePool {
        &self.writer
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Writers are already serialised by the database lock.
    async fn lock_outbox(_tx: &mut Transaction<'static, Sqlite>) -> Result<()> {
        Ok(())
    }
}

super::sql::sql_store!(SqliteStore, Sqlite);
