//! The SQLite backend: the shared SQL of [`super::sql`] over a WAL database,
//! reads on a few connections and every write on one dedicated connection.

use std::time::Duration;

use sqlx::Sqlite;

use super::sql::SqlStore;
use crate::error::Result;

/// The posts-service's data in an SQLite file.
pub type SqliteStore = SqlStore<Sqlite>;

impl SqliteStore {
    /// Opens (creating if missing, with its directory) and migrates.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self> {
        let pools = shared::db::open_sqlite(url, acquire_timeout).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pools.write)
            .await
            .map_err(|e| anyhow::anyhow!("migrating the posts database: {e}"))?;
        // The store uses connections of its own, given back without sqlx's
        // round trip per use. sqlx's write connection stays open for the
        // task that keeps the write-ahead log short.
        let read = shared::db::Connections::like(&pools.read);
        pools.read.close().await;
        let write = shared::db::Connections::like(&pools.write);
        Ok(Self::new(read, write, true))
    }
}
