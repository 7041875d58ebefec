//! The SQLite backend: the shared SQL of [`super::sql`] over a WAL database.
//! Write transactions run on one dedicated connection and begin
//! `IMMEDIATE`, taking the write lock up front: writers queue in order
//! instead of colliding, and that order is also the outbox's.

use std::time::Duration;

use sqlx::Sqlite;

use super::sql::SqlStore;
use crate::error::Result;

/// The auth-service's data in an SQLite file.
pub type SqliteStore = SqlStore<Sqlite>;

impl SqliteStore {
    /// Opens (creating if missing, with its directory) and migrates.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self> {
        let pools = shared::db::open_sqlite(url, acquire_timeout).await?;
        pools
            .write
            .migrate(&shared::db::migrations(
                &sqlx::migrate!("./migrations/common"),
                &sqlx::migrate!("./migrations/sqlite"),
            ))
            .await
            .map_err(|e| anyhow::anyhow!("migrating the auth database: {e}"))?;
        Self::open(pools.read, pools.write).await
    }
}
