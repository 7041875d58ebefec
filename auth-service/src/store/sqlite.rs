//! The SQLite backend: the shared SQL of [`super::sql`] over a WAL database.
//! Write transactions begin `IMMEDIATE`, taking the single write lock up
//! front, so concurrent writers queue on the busy timeout instead of failing
//! when a read lock cannot be upgraded; that lock also orders the outbox.

use std::time::Duration;

use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::watch;

use crate::error::Result;

/// The auth-service's data in an SQLite file.
pub struct SqliteStore {
    /// The connection pool.
    pool: SqlitePool,
    /// Wakes event streams after this process commits an event.
    commits: watch::Sender<i64>,
}

impl SqliteStore {
    /// Opens (creating if missing, with its directory) and migrates.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self> {
        let pool = shared::db::open_sqlite(url, acquire_timeout).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("migrating the auth database: {e}"))?;
        Ok(Self::from_pool(pool))
    }

    /// A store over an already migrated pool.
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self {
            pool,
            commits: watch::Sender::new(0),
        }
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Writers are already serialised by the database lock.
    async fn lock_outbox(_tx: &mut Transaction<'static, Sqlite>) -> Result<()> {
        Ok(())
    }
}

super::sql::sql_store!(SqliteStore, Sqlite);
