//! The PostgreSQL backend: the shared SQL of [`super::sql`], plus a lock that
//! makes outbox sequence numbers commit in order.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::watch;

use crate::error::Result;

/// The auth-service's data in PostgreSQL.
pub struct PgStore {
    /// The connection pool.
    pool: PgPool,
    /// Wakes event streams after this process commits an event.
    commits: watch::Sender<i64>,
}

/// Key of the advisory lock that orders outbox writers.
const OUTBOX_LOCK: i64 = 0x626c_6f67_0001;

impl PgStore {
    /// Connects and applies the migrations.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<Self> {
        let pool = shared::db::open_postgres(url, acquire_timeout).await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("migrating the auth database: {e}"))?;
        let store = Self {
            pool,
            commits: watch::Sender::new(0),
        };
        super::Store::backfill_username_skeletons(&store).await?;
        Ok(store)
    }

    fn writer_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Identity values are handed out at insert but become visible at commit,
    /// so without this a reader could see event 8 before event 7 commits and
    /// skip 7 for ever. Holding this lock from the insert to the commit makes
    /// sequence order commit order.
    async fn lock_outbox(tx: &mut Transaction<'static, Postgres>) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(OUTBOX_LOCK)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

super::sql::sql_store!(PgStore, Postgres);
