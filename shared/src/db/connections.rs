//! The services' connection pool, without sqlx's round trip per use.
//!
//! sqlx's [`sqlx::Pool`] tests every connection as it comes back: each
//! release spawns a task that pings the connection before it may be used
//! again. On PostgreSQL that ping is a round trip to the server; on SQLite a
//! round trip to the thread that owns the connection. Either way every query
//! costs two exchanges instead of one, and a connection is busy for both.
//!
//! [`Connections`] lends a connection until its user calls
//! [`Lent::finish`], and takes it back at once. What the ping guards against
//! is handled where it arises instead:
//! - a use dropped part-way (its caller's deadline passed) may leave the
//!   connection mid-statement or mid-transaction: a task of its own pings
//!   it (as sqlx does for every use) and gives it back only if it is then
//!   outside any transaction;
//! - a use that failed may have dropped a transaction, whose rollback the
//!   driver sends lazily: the connection is pinged once before it is lent
//!   again, so no rollback is left waiting, and no lock held, while it sits
//!   idle;
//! - a connection that broke is closed;
//! - a connection idle for longer than the backend's
//!   [`Backend::TEST_AFTER_IDLE`] is tested before it is lent, as the server
//!   may have dropped it unseen.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{ConnectOptions, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Backend, PoolStatus};

/// Runs `$use`, an expression that may use `$conn` (a connection from the
/// [`Connections`] `$from`), and gives the connection back: the value is
/// `$use`'s result. A macro rather than a function taking a closure, as the
/// use borrows both the connection and its caller's data.
#[macro_export]
macro_rules! lend {
    ($from:expr, |$conn:ident| $use:expr) => {
        match $from.get().await {
            Ok(mut lent) => {
                let result = {
                    let $conn = &mut *lent;
                    $use.await
                };
                lent.finish(result).await
            }
            Err(e) => Err(e),
        }
    };
}

/// How long a connection may sit unused before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Up to `max` connections to one database, opened when needed and kept
/// while in use. Cloning shares the connections.
pub struct Connections<DB: Backend> {
    shared: Arc<Shared<DB>>,
}

impl<DB: Backend> Clone for Connections<DB> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<DB: Backend> {
    options: <DB::Connection as Connection>::Options,
    /// Connections not in use, the most recently used last.
    idle: Mutex<Vec<Idle<DB::Connection>>>,
    /// One per connection that may be open; a lease holds one.
    permits: Arc<Semaphore>,
    max: u32,
    /// Connections open, lent or idle.
    open: AtomicU32,
    acquire_timeout: Duration,
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// A lent connection (or one being opened), counted as open. Dropped
/// without [`Lease::give_back`], it is closed and uncounted.
struct Lease<DB: Backend> {
    conn: Option<DB::Connection>,
    shared: Arc<Shared<DB>>,
    _permit: OwnedSemaphorePermit,
}

impl<DB: Backend> Drop for Lease<DB> {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection lent by [`Connections::get`], until [`Lent::finish`] or
/// [`Lent::end`].
pub struct Lent<DB: Backend>(Option<Lease<DB>>);

impl<DB: Backend> Drop for Lent<DB> {
    /// A use dropped part-way (its caller gave up mid-query): the
    /// connection is pinged by a task of its own, which waits out whatever
    /// the driver was still doing and sends what it still holds (a dropped
    /// transaction's rollback), and is given back if it is then idle and
    /// outside any transaction. Closing it instead would make every
    /// deadline missed under load cost a new connection, more load.
    fn drop(&mut self) {
        let Some(lease) = self.0.take() else {
            return;
        };
        // Without a runtime (the process is ending) the lease closes it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Self::recover(lease));
        }
    }
}

impl<DB: Backend> std::ops::Deref for Lent<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        self.0
            .as_ref()
            .and_then(|lease| lease.conn.as_ref())
            .expect("a lease holds its connection until it ends")
    }
}

impl<DB: Backend> std::ops::DerefMut for Lent<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.0
            .as_mut()
            .expect("a lease holds its connection until it ends")
            .conn()
    }
}

impl<DB: Backend> Lent<DB> {
    /// Gives the connection back after a use that ended with `result`, and
    /// returns `result`.
    pub async fn finish<T>(self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.end(result.as_ref().err()).await;
        result
    }

    /// Gives the connection back after a use that ended in `error`, or
    /// well. A connection left inside a transaction, or whose error says it
    /// broke, is closed. One that failed otherwise, or holds something
    /// unsent (a dropped transaction's rollback), is pinged first, which
    /// sends it and waits for the answer.
    pub async fn end(mut self, error: Option<&sqlx::Error>) {
        let Some(mut lease) = self.0.take() else {
            return;
        };
        let conn = lease.conn();
        match error {
            Some(e) if super::is_broken_connection(e) => {}
            // Nothing left unsent (the driver's own test) and no
            // transaction open: ready for the next caller as it is.
            None if !conn.should_flush() && !conn.is_in_transaction() => lease.give_back(),
            _ => Self::recover(lease).await,
        }
    }

    /// Pings the connection, which goes after anything the driver still
    /// holds or is doing (a dropped transaction's rollback included), and
    /// gives it back if it answers outside any transaction.
    async fn recover(mut lease: Lease<DB>) {
        let conn = lease.conn();
        if conn.ping().await.is_ok() && !conn.is_in_transaction() {
            lease.give_back();
        }
    }
}

/// A transaction on a connection lent by [`Connections::begin`]; it derefs
/// to the connection, for statements. Dropped before [`Tx::commit`] or
/// [`Tx::rollback`] (an error returned early, a caller that gave up), it is
/// rolled back by a task of its own, which then gives the connection back.
pub struct Tx<DB: Backend> {
    lent: Option<Lent<DB>>,
}

impl<DB: Backend> std::ops::Deref for Tx<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        self.lent
            .as_ref()
            .expect("a transaction holds its connection until it ends")
    }
}

impl<DB: Backend> std::ops::DerefMut for Tx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.lent
            .as_mut()
            .expect("a transaction holds its connection until it ends")
    }
}

impl<DB: Backend> Tx<DB> {
    /// Commits, and gives the connection back.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        let lent = self.lent.take().expect("a transaction ends once");
        Self::end_with(lent, "COMMIT").await
    }

    /// Rolls back, and gives the connection back.
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        let lent = self.lent.take().expect("a transaction ends once");
        Self::end_with(lent, "ROLLBACK").await
    }

    async fn end_with(mut lent: Lent<DB>, statement: &'static str) -> Result<(), sqlx::Error> {
        let ended = DB::run(&mut lent, statement).await;
        // A COMMIT that failed may leave the transaction open (SQLite, when
        // busy): it is rolled back before anyone else may use it.
        if ended.is_err() && DB::run(&mut lent, "ROLLBACK").await.is_err() {
            return ended;
        }
        lent.finish(ended).await
    }
}

impl<DB: Backend> Drop for Tx<DB> {
    fn drop(&mut self) {
        let Some(lent) = self.lent.take() else {
            return;
        };
        // Without a runtime (the process is ending) the connection is
        // closed as the lease drops, which ends the transaction too.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Self::end_with(lent, "ROLLBACK"));
        }
    }
}

impl<DB: Backend> Lease<DB> {
    fn conn(&mut self) -> &mut DB::Connection {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until it ends")
    }

    /// Returns the connection for the next caller.
    fn give_back(mut self) {
        if let Some(conn) = self.conn.take() {
            if self.shared.permits.is_closed() {
                return;
            }
            // Still open: counted now by the idle list, not by the lease.
            self.shared.open.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let mut idle = self.shared.idle.lock().expect("idle list lock");
            // The least recently used connection is first: close it if it
            // has not been needed for a while, so a burst's connections do
            // not stay open for ever.
            let stale = idle
                .first()
                .is_some_and(|oldest| now - oldest.since > IDLE_TIMEOUT);
            let closing = stale.then(|| idle.remove(0));
            idle.push(Idle { conn, since: now });
            drop(idle);
            if closing.is_some() {
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl<DB: Backend> Connections<DB> {
    /// Up to `max` connections opened with `options`, each prepared with
    /// [`Backend::prepare`]; a caller waits at most `acquire_timeout` for
    /// one.
    pub fn new(
        options: <DB::Connection as Connection>::Options,
        max: u32,
        acquire_timeout: Duration,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                options,
                idle: Mutex::new(Vec::with_capacity(max as usize)),
                permits: Arc::new(Semaphore::new(max as usize)),
                max,
                open: AtomicU32::new(0),
                acquire_timeout,
            }),
        }
    }

    /// Connections like `pool`'s: the same options, limit and acquire
    /// timeout.
    pub fn like(pool: &sqlx::Pool<DB>) -> Self {
        Self::new(
            (*pool.connect_options()).clone(),
            pool.options().get_max_connections(),
            pool.options().get_acquire_timeout(),
        )
    }

    /// Connections like `pool`'s, in its place: `pool` (which has served
    /// for the migrations) is closed.
    pub async fn instead_of(pool: sqlx::Pool<DB>) -> Self {
        let connections = Self::like(&pool);
        pool.close().await;
        connections
    }

    /// A connection of this caller's own, until it is given back with
    /// [`Lent::finish`]. Dropped before that (the caller gave up part-way),
    /// it is closed.
    pub async fn get(&self) -> Result<Lent<DB>, sqlx::Error> {
        Ok(Lent(Some(self.lease().await?)))
    }

    /// A transaction begun with `statement` (the backend's
    /// [`Backend::BEGIN_WRITE`] or [`Backend::BEGIN_SNAPSHOT`]) on a
    /// connection of this caller's own.
    pub async fn begin(&self, statement: &'static str) -> Result<Tx<DB>, sqlx::Error> {
        let mut lent = self.get().await?;
        match DB::run(&mut lent, statement).await {
            Ok(()) => Ok(Tx { lent: Some(lent) }),
            Err(e) => {
                lent.end(Some(&e)).await;
                Err(e)
            }
        }
    }

    /// How many connections are open, and how many of them are idle.
    pub fn status(&self) -> PoolStatus {
        let idle = self.shared.idle.lock().expect("idle list lock").len() as u32;
        PoolStatus {
            size: self.shared.open.load(Ordering::Relaxed),
            idle,
            max: self.shared.max,
            wal_bytes: DB::log_bytes_of(&self.shared.options),
        }
    }

    /// Closes every idle connection and refuses new leases; a connection
    /// in use is closed when its lease ends.
    pub async fn close(&self) {
        self.shared.permits.close();
        let idle: Vec<_> = std::mem::take(&mut *self.shared.idle.lock().expect("idle list lock"));
        for idle in idle {
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            let _ = idle.conn.close().await;
        }
    }

    async fn lease(&self) -> Result<Lease<DB>, sqlx::Error> {
        let shared = &self.shared;
        let permit = match tokio::time::timeout(
            shared.acquire_timeout,
            Arc::clone(&shared.permits).acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(sqlx::Error::PoolClosed),
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        };
        loop {
            let idle = shared.idle.lock().expect("idle list lock").pop();
            let Some(Idle { mut conn, since }) = idle else {
                break;
            };
            if DB::TEST_AFTER_IDLE.is_some_and(|after| since.elapsed() > after)
                && conn.ping().await.is_err()
            {
                shared.open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            // The idle list counted it; the lease does now.
            return Ok(Lease {
                conn: Some(conn),
                shared: Arc::clone(shared),
                _permit: permit,
            });
        }
        // Counted as open from here: a failure below, or the caller giving
        // up, drops the lease, which uncounts it.
        shared.open.fetch_add(1, Ordering::Relaxed);
        let mut lease = Lease {
            conn: None,
            shared: Arc::clone(shared),
            _permit: permit,
        };
        let connecting = async {
            let mut conn = shared.options.connect().await?;
            DB::prepare(&mut conn).await?;
            Ok::<_, sqlx::Error>(conn)
        };
        match tokio::time::timeout(shared.acquire_timeout, connecting).await {
            Ok(Ok(conn)) => {
                lease.conn = Some(conn);
                Ok(lease)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sqlx::{Sqlite, sqlite::SqliteConnectOptions};

    use super::*;

    /// Up to `max` connections to a new database file of its own.
    fn database(max: u32) -> (Connections<Sqlite>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "blog-conns-{}",
            crate::ids::hex(&crate::ids::unique_bytes::<8>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}/t.db", dir.display()))
            .unwrap()
            .create_if_missing(true);
        (
            Connections::new(options, max, Duration::from_millis(200)),
            dir,
        )
    }

    /// [`database`], with an empty table `t (x)`.
    async fn database_with_table(max: u32) -> (Connections<Sqlite>, std::path::PathBuf) {
        let (conns, dir) = database(max);
        lend!(conns, |conn| sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(conn))
        .unwrap();
        (conns, dir)
    }

    /// How many rows `t` has, as a caller outside any transaction sees it.
    async fn rows(conns: &Connections<Sqlite>) -> i64 {
        lend!(conns, |conn| sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(conn))
        .unwrap()
    }

    async fn one(conns: &Connections<Sqlite>) -> Result<i64, sqlx::Error> {
        lend!(conns, |conn| sqlx::query_scalar("SELECT 1").fetch_one(conn))
    }

    #[tokio::test]
    async fn a_connection_given_back_is_lent_again() {
        let (conns, dir) = database(4);
        for _ in 0..10 {
            assert_eq!(one(&conns).await.unwrap(), 1);
        }
        let status = conns.status();
        assert_eq!((status.size, status.idle, status.max), (1, 1, 4));
        // Two at once need two connections; both stay for the next callers.
        let (a, b) = (conns.get().await.unwrap(), conns.get().await.unwrap());
        assert_eq!((conns.status().size, conns.status().idle), (2, 0));
        a.finish(Ok(())).await.unwrap();
        b.finish(Ok(())).await.unwrap();
        assert_eq!((conns.status().size, conns.status().idle), (2, 2));
        conns.close().await;
        assert_eq!(conns.status().size, 0);
        assert!(matches!(one(&conns).await, Err(sqlx::Error::PoolClosed)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_use_dropped_part_way_is_rolled_back_and_kept() {
        let (conns, dir) = database_with_table(1).await;
        // The caller gives up inside a transaction, with a row written.
        let gave_up = tokio::time::timeout(Duration::from_millis(50), async {
            lend!(conns, |conn| async {
                let mut tx = conn.begin().await?;
                sqlx::query("INSERT INTO t VALUES (1)")
                    .execute(&mut *tx)
                    .await?;
                std::future::pending::<()>().await;
                tx.commit().await
            })
        })
        .await;
        assert!(gave_up.is_err());
        // The connection comes back once its rollback has gone out: kept,
        // not closed (a closed one would leave none open).
        for _ in 0..100 {
            if conns.status().idle == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((conns.status().size, conns.status().idle), (1, 1));
        // The next caller starts a transaction of its own on it (inside
        // the old one it would be refused) and sees no row.
        let seen: i64 = lend!(conns, |conn| async {
            let mut tx = conn.begin().await?;
            let seen = sqlx::query_scalar("SELECT COUNT(*) FROM t")
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(seen)
        })
        .unwrap();
        assert_eq!(seen, 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_failed_use_rolls_its_transaction_back_before_the_next() {
        let (conns, dir) = database_with_table(1).await;
        let failed: Result<(), sqlx::Error> = lend!(conns, |conn| async {
            let mut tx = conn.begin().await?;
            sqlx::query("INSERT INTO t VALUES (1)")
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO nowhere VALUES (1)")
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        });
        assert!(failed.is_err());
        assert_eq!(
            conns.status().size,
            1,
            "a failed statement does not break it"
        );
        assert_eq!(rows(&conns).await, 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_caller_waits_at_most_the_acquire_timeout() {
        let (conns, dir) = database(1);
        let held = conns.get().await.unwrap();
        assert!(matches!(one(&conns).await, Err(sqlx::Error::PoolTimedOut)));
        held.finish(Ok(())).await.unwrap();
        assert_eq!(one(&conns).await.unwrap(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_connection_that_broke_is_closed() {
        let (conns, dir) = database(2);
        let broken: Result<(), _> = lend!(conns, |_conn| async {
            Err(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()))
        });
        assert!(broken.is_err());
        assert_eq!(conns.status().size, 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_transaction_commits_or_is_rolled_back_when_dropped() {
        let (conns, dir) = database_with_table(1).await;
        let mut tx = conns.begin("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(rows(&conns).await, 1);

        // Dropped unfinished (an early return): rolled back, and the one
        // connection comes back for the next caller, outside a transaction.
        let mut tx = conns.begin("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&mut *tx)
            .await
            .unwrap();
        drop(tx);
        assert_eq!(rows(&conns).await, 1);
        let tx = conns.begin("BEGIN IMMEDIATE").await.unwrap();
        tx.rollback().await.unwrap();
        assert_eq!((conns.status().size, conns.status().idle), (1, 1));
        let _ = std::fs::remove_dir_all(dir);
    }
}
