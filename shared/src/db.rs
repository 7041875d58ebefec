//! Database plumbing both services share: opening pools with the same
//! settings, telling "unreachable" from "wrong", and the time unit every
//! stored time uses.

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool, SqlitePool,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

/// Opens a PostgreSQL pool whose acquire waits at most `acquire_timeout`, so
/// a database that is down answers UNAVAILABLE quickly rather than hanging.
pub async fn open_postgres(url: &str, acquire_timeout: Duration) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(acquire_timeout)
        .connect(url)
        .await
}

/// An SQLite database's two pools: readers, and the single writer.
pub struct SqlitePools {
    /// Connections for reads (WAL: they never wait for the writer).
    pub read: SqlitePool,
    /// One connection for write transactions. SQLite runs one writer at a
    /// time anyway; queueing writers here, in order, beats letting them
    /// collide inside SQLite, where they sleep and retry on the busy handler.
    pub write: SqlitePool,
}

/// Opens an SQLite file (creating it and its directory if missing) in WAL
/// mode, with a busy timeout for writers in other processes.
pub async fn open_sqlite(url: &str, acquire_timeout: Duration) -> Result<SqlitePools, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    if let Some(dir) = options.get_filename().parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let read = SqlitePoolOptions::new()
        .max_connections(8)
        .acquire_timeout(acquire_timeout)
        .connect_with(options.clone())
        .await?;
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await?;
    Ok(SqlitePools { read, write })
}

/// How busy a connection pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Open connections.
    pub size: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// The most connections the pool opens.
    pub max: u32,
}

impl PoolStatus {
    /// The state of `pool`.
    pub fn of<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Self {
        Self {
            size: pool.size(),
            idle: pool.num_idle() as u32,
            max: pool.options().get_max_connections(),
        }
    }
}

/// Whether `e` means the database is out of reach or too busy, rather than
/// that the query is wrong: such calls are answered UNAVAILABLE and are worth
/// retrying.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: connection exceptions (08), shutdown (57P), too many
            // connections (53300). SQLite: busy (5) and locked (6).
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || code == "5"
                || code == "6"
        }
        _ => false,
    }
}

/// The current time in microseconds since the epoch: the unit every stored
/// time uses, identical on both backends so ordering and cursors are exact.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A protobuf timestamp from microseconds since the epoch.
pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}
