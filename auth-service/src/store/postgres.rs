//! The PostgreSQL backend: the shared SQL of [`super::sql`] over one set of connections;
//! outbox writers take an advisory lock from their insert to their commit,
//! so sequence order is commit order.

use std::time::Duration;

use sqlx::Postgres;

use super::sql::SqlStore;
use crate::error::Result;

/// The auth-service's data in PostgreSQL.
pub type PgStore = SqlStore<Postgres>;

impl PgStore {
    /// Connects and applies the migrations.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self> {
        let connections = shared::db::open_postgres(url, acquire_timeout)?;
        connections
            .migrate(&shared::db::migrations(
                &sqlx::migrate!("./migrations/common"),
                &sqlx::migrate!("./migrations/postgres"),
            ))
            .await
            .map_err(|e| anyhow::anyhow!("migrating the auth database: {e}"))?;
        Self::open(connections.clone(), connections).await
    }
}
