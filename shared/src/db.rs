//! Database plumbing both services share: opening connections with the
//! same settings, telling "unreachable" from "wrong", and the time unit every
//! stored time uses.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use sqlx::{
    migrate::Migrator,
    postgres::PgConnectOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};

mod connections;
mod inline;

pub use connections::{Connections, Lent, Tx};
pub use inline::InlineReads;

use crate::lend;

/// What differs between the two databases, for SQL written once over both.
/// Everything else (`$n` parameters, `RETURNING`, `ON CONFLICT`, row-value
/// comparison) the two agree on.
pub trait Backend: sqlx::Database {
    /// The statement that opens a write transaction. SQLite's `IMMEDIATE`
    /// takes the write lock up front, so writers queue in order instead of
    /// failing on a lock upgrade.
    const BEGIN_WRITE: &'static str;
    /// How a read-only transaction that sees one snapshot throughout begins.
    const BEGIN_SNAPSHOT: &'static str;
    /// A statement that serialises writers of an ordered log (an outbox)
    /// from the first write to the commit, if the database needs one: on
    /// PostgreSQL an identity value is handed out at insert but becomes
    /// visible at commit, so without it a reader could see 8 before 7. SQLite
    /// runs one writer at a time anyway.
    const LOCK_LOG: Option<&'static str>;

    /// How long a connection may sit idle before it is tested, as the
    /// server may have dropped it unseen (`None`: never).
    const TEST_AFTER_IDLE: Option<Duration>;

    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// The size of the write-ahead log of the database that connections
    /// opened with `options` use, where it is a file of its own (SQLite).
    fn log_bytes(_options: &<Self::Connection as sqlx::Connection>::Options) -> Option<u64> {
        None
    }

    /// Runs `statement`, which returns no rows, on `conn`.
    fn run<'c>(
        conn: &'c mut Self::Connection,
        statement: &'static str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;

    /// Sets up a new connection before its first use.
    fn prepare(
        _conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_ {
        async { Ok(()) }
    }
}

impl Backend for sqlx::Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN";
    const BEGIN_SNAPSHOT: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    // The key spells "blog" and 1.
    const LOCK_LOG: Option<&'static str> = Some("SELECT pg_advisory_xact_lock(108217865011201)");
    const TEST_AFTER_IDLE: Option<Duration> = Some(PING_AFTER_IDLE);

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn run(
        conn: &mut sqlx::PgConnection,
        statement: &'static str,
    ) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(statement).execute(conn).await.map(drop)
    }
}

impl Backend for sqlx::Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    // A read transaction sees one snapshot from its first read on.
    const BEGIN_SNAPSHOT: &'static str = "BEGIN";
    const LOCK_LOG: Option<&'static str> = None;
    // The connection is a thread in this process: it cannot be dropped
    // unseen.
    const TEST_AFTER_IDLE: Option<Duration> = None;

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn run(
        conn: &mut sqlx::SqliteConnection,
        statement: &'static str,
    ) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(statement).execute(conn).await.map(drop)
    }

    fn log_bytes(options: &SqliteConnectOptions) -> Option<u64> {
        Some(file_size(&wal_path(options.get_filename())))
    }

    fn prepare(
        conn: &mut sqlx::SqliteConnection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_ {
        stable_query_plans(conn)
    }
}

/// The write-ahead log of the SQLite database at `db`.
fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// The size of the file at `path`; 0 if there is none.
fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Connections to a PostgreSQL server whose acquire waits at most
/// `acquire_timeout`, so a database that is down answers UNAVAILABLE quickly
/// rather than hanging. No round trip before every call: a connection is
/// tested only after it sat idle ([`Backend::TEST_AFTER_IDLE`]), when the
/// server may have dropped it unseen; one that breaks in use fails that call
/// (reads are retried once, [`retry_read`]) and is closed.
///
/// Each statement is planned once per connection, whatever it is bound to
/// (`plan_cache_mode`), as SQLite's are ([`stable_query_plans`]). Left to
/// choose, the server plans a statement anew on every execution whenever
/// its plan for the parameters' values looks cheaper than its plan for any
/// value, which it always does for `id = ANY($1)`: planning then cost the
/// server more than running the statement. Here the plan for any value is
/// the plan: each statement finds its rows by key or reads an index in order.
pub fn open_postgres(
    url: &str,
    acquire_timeout: Duration,
) -> Result<Connections<sqlx::Postgres>, sqlx::Error> {
    Ok(Connections::new(
        PgConnectOptions::from_str(url)?.options([("plan_cache_mode", "force_generic_plan")]),
        POSTGRES_CONNECTIONS,
        acquire_timeout,
    ))
}

/// The most connections a service opens to PostgreSQL.
const POSTGRES_CONNECTIONS: u32 = 16;

/// How long a PostgreSQL connection may sit idle before it is tested.
const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// Runs `read`, and once more if it failed because its connection had
/// broken (the server restarted, or dropped it): the next attempt gets
/// another connection. Only for reads: a write whose connection broke may
/// or may not have committed.
pub async fn retry_read<T, F, Fut>(read: F) -> Result<T, sqlx::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    match read().await {
        Err(e) if is_broken_connection(&e) => {
            tracing::debug!(error = %e, "a read lost its connection: once more");
            read().await
        }
        other => other,
    }
}

/// Whether `e` says the connection itself is gone.
fn is_broken_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        // PostgreSQL: the connection failed (08006), or the server ended
        // the session (57P01 admin shutdown, 57P02 crash shutdown).
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("08006" | "57P01" | "57P02"))
        }
        _ => false,
    }
}

/// An SQLite database's connections: readers, and the single writer.
pub struct SqlitePools {
    /// Connections for reads (WAL: they never wait for the writer).
    pub read: Connections<sqlx::Sqlite>,
    /// One connection for write transactions. SQLite runs one writer at a
    /// time anyway; queueing writers here, in order, beats letting them
    /// collide inside SQLite, where they sleep and retry on the busy handler.
    pub write: Connections<sqlx::Sqlite>,
    /// Connections for the hot reads, run on the caller's own thread.
    pub inline: InlineReads,
}

/// Opens an SQLite file (creating it and its directory if missing) in WAL
/// mode, with a busy timeout for writers in other processes, and starts
/// the task that keeps its write-ahead log short.
pub async fn open_sqlite(url: &str, acquire_timeout: Duration) -> Result<SqlitePools, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5))
        // Reads map the file instead of copying each page out of it: every
        // connection shares the kernel's cache, and a random read of a
        // large table costs no system call per page.
        .pragma("mmap_size", SQLITE_MMAP_BYTES.to_string());
    if let Some(dir) = options.get_filename().parent()
        && !dir.as_os_str().is_empty()
    {
        create_private_dir(dir)?;
    }
    // The file holds password hashes and signing keys: only this user may
    // read it. SQLite gives its journal files the database file's mode.
    create_private_file(options.get_filename())?;
    let readers = sqlite_readers();
    let inline = InlineReads::new(options.get_filename(), readers);
    let read = Connections::<sqlx::Sqlite>::new(options.clone(), readers, acquire_timeout);
    let write = Connections::<sqlx::Sqlite>::new(options, 1, acquire_timeout);
    // Opened now, so a file that cannot be opened fails the start.
    write.get().await?.end(None).await;
    tokio::spawn(bound_the_wal(write.clone()));
    Ok(SqlitePools {
        read,
        write,
        inline,
    })
}

/// How much of an SQLite file is read through a memory map.
const SQLITE_MMAP_BYTES: u64 = 1 << 30;

/// How often the write-ahead log's size is looked at.
const WAL_CHECK: Duration = Duration::from_secs(1);

/// Above this size the write-ahead log is checkpointed and truncated.
pub const WAL_LIMIT: u64 = 32 * 1024 * 1024;

/// Keeps an SQLite database's write-ahead log under about [`WAL_LIMIT`]
/// (plus what is written in a [`WAL_CHECK`]), until `write` closes.
///
/// SQLite's automatic checkpoint copies the log into the database after
/// commits, but it never waits for readers, and the log only starts over
/// from its beginning at a moment when no reader is using it: under a
/// steady read load there is no such moment, and the file grows for ever.
/// A `TRUNCATE` checkpoint, on the one write connection so no write of ours
/// waits behind it inside SQLite, waits (up to the busy timeout) for the
/// readers of older snapshots to finish, which takes as long as one read;
/// readers that start meanwhile read the database file and do not hold it
/// up. Then the log is emptied.
async fn bound_the_wal(write: Connections<sqlx::Sqlite>) {
    let mut every = tokio::time::interval(WAL_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !write.is_closed() {
        every.tick().await;
        if write.status().wal_bytes.unwrap_or(0) <= WAL_LIMIT {
            continue;
        }
        match checkpoint(&write).await {
            Ok(true) => tracing::debug!("write-ahead log truncated"),
            Ok(false) => tracing::warn!("write-ahead log still in use by a reader: not truncated"),
            Err(e) if write.is_closed() => tracing::debug!(error = %e, "database closed"),
            Err(e) => tracing::warn!(error = %e, "cannot checkpoint the write-ahead log"),
        }
    }
}

/// Copies the write-ahead log into the database and empties it, waiting for
/// readers of older snapshots (up to the busy timeout). Whether it could.
pub async fn checkpoint(write: &Connections<sqlx::Sqlite>) -> Result<bool, sqlx::Error> {
    // (busy, frames in the log, frames copied): busy is 1 when a reader or
    // writer kept it from completing.
    let rows: Vec<(i64, i64, i64)> = lend!(write, |conn| sqlx::query_as(
        "PRAGMA wal_checkpoint(TRUNCATE)"
    )
    .fetch_all(conn))?;
    Ok(rows.first().is_some_and(|(busy, _, _)| *busy == 0))
}

/// Creates `dir` (and its parents) if missing; a directory this creates is
/// readable by its owner only.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates an empty file at `path`, readable and writable by its owner only,
/// unless one exists already.
fn create_private_file(path: &std::path::Path) -> std::io::Result<()> {
    if path.as_os_str().is_empty() || path == std::path::Path::new(":memory:") {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// How many read connections an SQLite pool opens: two per core the process
/// may use, between 2 and 8. Reads of a warm database are CPU-bound, and
/// each connection is a thread of its own; past about two per core they only
/// add threads to switch between (ListPosts on one core: 0.25 of W0 with
/// eight readers, 0.33 with two).
fn sqlite_readers() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).clamp(2, 8) as u32
}

/// Turns on SQLite's query planner stability guarantee for `conn`. Without
/// it, a statement whose plan could depend on a bound value (any `LIMIT $n`,
/// for one) is recompiled from its SQL text every time it is rebound, so the
/// statement cache saves nothing: that was a fifth of `ListPosts`' CPU time.
async fn stable_query_plans(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    use libsqlite3_sys::{SQLITE_DBCONFIG_ENABLE_QPSG, SQLITE_OK, sqlite3_db_config};
    let mut handle = conn.lock_handle().await?;
    let mut enabled: std::ffi::c_int = 0;
    // SAFETY: the handle is locked, so no other thread uses the connection
    // during the call; ENABLE_QPSG takes an int and an int* to report the
    // new setting, both valid for the call.
    let code = unsafe {
        sqlite3_db_config(
            handle.as_raw_handle().as_ptr(),
            SQLITE_DBCONFIG_ENABLE_QPSG,
            1 as std::ffi::c_int,
            &mut enabled as *mut std::ffi::c_int,
        )
    };
    if code != SQLITE_OK || enabled != 1 {
        return Err(sqlx::Error::Configuration(
            format!("enabling SQLite's query planner stability guarantee failed ({code})").into(),
        ));
    }
    Ok(())
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
    /// The size of the database's write-ahead log, on SQLite.
    pub wal_bytes: Option<u64>,
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

/// The database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `sqlite:`.
    Sqlite,
}

impl Engine {
    /// The engine of `url`, or an error naming the schemes there are.
    pub fn of(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            anyhow::bail!("unsupported database URL scheme (use postgres:// or sqlite://)")
        }
    }
}

/// One migrator from the migrations every backend shares (`common`, SQL
/// both dialects run as written) and this backend's own, in version order.
/// A migration keeps its version and checksum wherever its file lives, so
/// moving an identical file into the shared folder changes nothing for a
/// database that has applied it.
pub fn migrations(common: &Migrator, own: &Migrator) -> Migrator {
    let mut all: Vec<_> = common.iter().chain(own.iter()).cloned().collect();
    all.sort_by_key(|m| m.version);
    Migrator::with_migrations(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guarantee as SQLite itself reports it for a pooled connection.
    async fn plans_are_stable(connections: &Connections<sqlx::Sqlite>) -> bool {
        use libsqlite3_sys::{SQLITE_DBCONFIG_ENABLE_QPSG, sqlite3_db_config};
        let mut conn = connections.get().await.unwrap();
        let mut handle = conn.lock_handle().await.unwrap();
        let mut enabled: std::ffi::c_int = -1;
        // SAFETY: locked handle; -1 only reads the setting into `enabled`.
        unsafe {
            sqlite3_db_config(
                handle.as_raw_handle().as_ptr(),
                SQLITE_DBCONFIG_ENABLE_QPSG,
                -1 as std::ffi::c_int,
                &mut enabled as *mut std::ffi::c_int,
            );
        }
        drop(handle);
        conn.end(None).await;
        enabled == 1
    }

    #[tokio::test]
    async fn every_sqlite_connection_keeps_its_query_plans_across_bindings() {
        let dir = std::env::temp_dir().join(format!(
            "blog-db-test-{}-{}",
            std::process::id(),
            crate::time::Timestamp::now().as_micros()
        ));
        let url = format!("sqlite://{}/test.db", dir.display());
        let pools = open_sqlite(&url, Duration::from_secs(5)).await.unwrap();
        assert!(plans_are_stable(&pools.read).await);
        assert!(plans_are_stable(&pools.write).await);
        pools.read.close().await;
        pools.write.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_read_that_lost_its_connection_runs_once_more_and_no_more() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let broken = || sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        let attempts = AtomicU32::new(0);
        let read = retry_read(|| async {
            match attempts.fetch_add(1, Ordering::Relaxed) {
                0 => Err(broken()),
                _ => Ok(7),
            }
        });
        assert_eq!(read.await.unwrap(), 7);
        assert_eq!(attempts.load(Ordering::Relaxed), 2);

        let attempts = AtomicU32::new(0);
        let read = retry_read(|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(broken())
        });
        assert!(read.await.is_err());
        assert_eq!(
            attempts.load(Ordering::Relaxed),
            2,
            "once more, not for ever"
        );

        // Any other failure is the answer.
        let attempts = AtomicU32::new(0);
        let read = retry_read(|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(sqlx::Error::RowNotFound)
        });
        assert!(read.await.is_err());
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_checkpoint_empties_the_write_ahead_log() {
        let dir = std::env::temp_dir().join(format!(
            "blog-db-wal-{}-{}",
            std::process::id(),
            crate::time::Timestamp::now().as_micros()
        ));
        let url = format!("sqlite://{}/test.db", dir.display());
        let pools = open_sqlite(&url, Duration::from_secs(5)).await.unwrap();
        lend!(pools.write, |conn| sqlx::query("CREATE TABLE t (x TEXT)")
            .execute(conn))
        .unwrap();
        for _ in 0..50 {
            lend!(pools.write, |conn| sqlx::query(
                "INSERT INTO t VALUES (randomblob(4000))"
            )
            .execute(conn))
            .unwrap();
        }
        let before = pools.read.status().wal_bytes.unwrap();
        assert!(before > 100_000, "{before}");
        assert_eq!(pools.write.status().wal_bytes, Some(before));
        assert!(checkpoint(&pools.write).await.unwrap());
        assert_eq!(pools.read.status().wal_bytes, Some(0));
        pools.read.close().await;
        pools.write.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
