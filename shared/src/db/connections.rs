//! The services' connection pool, without sqlx's round trip per use.
//!
//! sqlx's [`sqlx::Pool`] tests every connection as it comes back: each
//! release spawns a task that pings the connection before it may be used
//! again. On PostgreSQL that ping is a round trip to the server; on SQLite a
//! round trip to the thread that owns the connection. Either way every query
//! costs two exchanges instead of one, and a connection is busy for both.
//!
//! [`Connections`] lends a connection until its user calls
//! [`Lent::finish`], and takes it back at once when the use went well. The
//! ping is kept for the uses that need it:
//! - a use that failed, or was dropped part-way (its caller's deadline
//!   passed), may have left the driver mid-statement or holding a dropped
//!   transaction's rollback: a ping waits that out and sends it, and the
//!   connection is lent again only if it is then outside any transaction
//!   (for a dropped use, the ping runs in a task of its own);
//! - a [`Tx`] not committed or rolled back is rolled back the same way;
//! - a connection whose error says it broke is closed;
//! - a connection idle for longer than the backend's
//!   [`Backend::TEST_AFTER_IDLE`] is tested before it is lent, as the server
//!   may have dropped it unseen.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::{
    ConnectOptions, Connection,
    migrate::{Migrate, MigrateError, Migrator},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

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
    /// One per connection that may be open, held by every connection that
    /// is lent (or being opened, or recovered): the open connections are
    /// the permits taken plus the idle ones.
    permits: Arc<Semaphore>,
    max: u32,
    acquire_timeout: Duration,
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// A lent connection. Dropped without [`Lease::give_back`], it is closed.
struct Lease<DB: Backend> {
    conn: DB::Connection,
    /// Whether a transaction the driver does not know of (one begun by
    /// [`Connections::begin`]) may be open on it.
    in_tx: bool,
    shared: Arc<Shared<DB>>,
    _permit: OwnedSemaphorePermit,
}

impl<DB: Backend> Lease<DB> {
    /// Returns the connection for the next caller.
    fn give_back(self) {
        let Lease { conn, shared, .. } = self;
        if shared.permits.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = shared.idle.lock().expect("idle list lock");
        // The least recently used connection is first: close it if it has
        // not been needed for a while, so a burst's connections do not stay
        // open for ever.
        let stale = idle
            .first()
            .is_some_and(|oldest| now - oldest.since > IDLE_TIMEOUT);
        let closing = stale.then(|| idle.remove(0));
        idle.push(Idle { conn, since: now });
        drop(idle);
        drop(closing);
    }

    /// Brings the connection back to a state another caller may use, and
    /// gives it back; closes it if that fails. A transaction of its own is
    /// rolled back; otherwise a ping goes after anything the driver still
    /// holds or is doing (a dropped transaction's rollback included).
    async fn recover(mut self) {
        let ready = if self.in_tx {
            DB::run(&mut self.conn, "ROLLBACK").await
        } else {
            self.conn.ping().await
        };
        if ready.is_ok() && !self.conn.is_in_transaction() {
            self.give_back();
        }
    }
}

/// A connection lent by [`Connections::get`], until [`Lent::finish`] or
/// [`Lent::end`]. Dropped before that (its caller gave up part-way), it is
/// recovered by a task of its own: closing it instead would make every
/// deadline missed under load cost a new connection, more load.
pub struct Lent<DB: Backend>(Option<Lease<DB>>);

impl<DB: Backend> Drop for Lent<DB> {
    fn drop(&mut self) {
        let Some(lease) = self.0.take() else {
            return;
        };
        // Without a runtime (the process is ending) the lease closes it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(lease.recover());
        }
    }
}

impl<DB: Backend> std::ops::Deref for Lent<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.lease_ref().conn
    }
}

impl<DB: Backend> std::ops::DerefMut for Lent<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.lease().conn
    }
}

impl<DB: Backend> Lent<DB> {
    fn lease_ref(&self) -> &Lease<DB> {
        self.0.as_ref().expect("a lent connection until it ends")
    }

    fn lease(&mut self) -> &mut Lease<DB> {
        self.0.as_mut().expect("a lent connection until it ends")
    }

    /// Gives the connection back after a use that ended with `result`, and
    /// returns `result`.
    pub async fn finish<T>(self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.end(result.as_ref().err()).await;
        result
    }

    /// Gives the connection back after a use that ended in `error`, or
    /// well: at once if it went well and left nothing behind, closed if
    /// the error says it broke, recovered otherwise.
    pub async fn end(mut self, error: Option<&sqlx::Error>) {
        let Some(lease) = self.0.take() else {
            return;
        };
        match error {
            Some(e) if super::is_broken_connection(e) => {}
            // Nothing left unsent (the driver's own test) and no
            // transaction open: ready for the next caller as it is.
            None if !lease.in_tx
                && !lease.conn.should_flush()
                && !lease.conn.is_in_transaction() =>
            {
                lease.give_back()
            }
            _ => lease.recover().await,
        }
    }
}

/// A transaction on a connection lent by [`Connections::begin`]; it derefs
/// to the connection, for statements. Dropped before [`Tx::commit`] or
/// [`Tx::rollback`] (an error returned early, a caller that gave up), it is
/// rolled back as its connection is recovered.
pub struct Tx<DB: Backend>(Lent<DB>);

impl<DB: Backend> std::ops::Deref for Tx<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.0
    }
}

impl<DB: Backend> std::ops::DerefMut for Tx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.0
    }
}

impl<DB: Backend> Tx<DB> {
    /// Commits, and gives the connection back.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.end_with("COMMIT").await
    }

    /// Rolls back, and gives the connection back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.end_with("ROLLBACK").await
    }

    /// Ends the transaction with `statement`. If that fails (a COMMIT
    /// refused while SQLite is busy leaves the transaction open), the
    /// connection is recovered, which rolls it back.
    async fn end_with(self, statement: &'static str) -> Result<(), sqlx::Error> {
        let Tx(mut lent) = self;
        let ended = DB::run(&mut lent, statement).await;
        if ended.is_ok() {
            lent.lease().in_tx = false;
        }
        lent.finish(ended).await
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
                acquire_timeout,
            }),
        }
    }

    /// A connection of this caller's own, until it is given back with
    /// [`Lent::finish`] or [`Lent::end`].
    pub async fn get(&self) -> Result<Lent<DB>, sqlx::Error> {
        Ok(Lent(Some(self.lease().await?)))
    }

    /// A transaction begun with `statement` (the backend's
    /// [`Backend::BEGIN_WRITE`] or [`Backend::BEGIN_SNAPSHOT`]) on a
    /// connection of this caller's own.
    pub async fn begin(&self, statement: &'static str) -> Result<Tx<DB>, sqlx::Error> {
        let mut lent = self.get().await?;
        // Marked before it is sent: a caller that gives up while BEGIN is
        // under way leaves a transaction that may have begun.
        lent.lease().in_tx = true;
        match DB::run(&mut lent, statement).await {
            Ok(()) => Ok(Tx(lent)),
            Err(e) => {
                lent.lease().in_tx = false;
                lent.end(Some(&e)).await;
                Err(e)
            }
        }
    }

    /// Applies `migrator`'s migrations on one of the connections.
    pub async fn migrate(&self, migrator: &Migrator) -> Result<(), MigrateError>
    where
        for<'c> &'c mut DB::Connection: sqlx::Acquire<'c, Database = DB>,
        DB::Connection: Migrate,
    {
        let mut lent = self.get().await?;
        let migrated = migrator.run(&mut *lent).await;
        // A failed migration leaves the connection to be recovered.
        if migrated.is_ok() {
            lent.end(None).await;
        }
        migrated
    }

    /// Whether [`Connections::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.shared.permits.is_closed()
    }

    /// How many connections are open, and how many of them are idle.
    pub fn status(&self) -> PoolStatus {
        let shared = &self.shared;
        let idle = shared.idle.lock().expect("idle list lock").len() as u32;
        let taken = shared.max - shared.permits.available_permits() as u32;
        PoolStatus {
            size: (taken + idle).min(shared.max),
            idle,
            max: shared.max,
            wal_bytes: DB::log_bytes(&shared.options),
        }
    }

    /// Closes every idle connection and refuses new leases; a connection
    /// in use is closed when its use ends.
    pub async fn close(&self) {
        self.shared.permits.close();
        let idle = std::mem::take(&mut *self.shared.idle.lock().expect("idle list lock"));
        for idle in idle {
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
        if let Some(conn) = Self::idle_connection(shared).await {
            return Ok(Lease {
                conn,
                in_tx: false,
                shared: Arc::clone(shared),
                _permit: permit,
            });
        }
        // Opened by a task of its own, which keeps the connection for the
        // next caller if this one gives up meanwhile: under a burst of
        // short deadlines, connections that were cancelled part-way through
        // opening would otherwise leave none ever open.
        let (opened, lease) = oneshot::channel();
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            let connecting = async {
                let mut conn = shared.options.connect().await?;
                DB::prepare(&mut conn).await?;
                Ok::<_, sqlx::Error>(conn)
            };
            let conn = match tokio::time::timeout(shared.acquire_timeout, connecting).await {
                Ok(conn) => conn,
                Err(_) => Err(sqlx::Error::PoolTimedOut),
            };
            let lease = conn.map(|conn| Lease {
                conn,
                in_tx: false,
                shared,
                _permit: permit,
            });
            if let Err(Ok(lease)) = opened.send(lease) {
                lease.give_back();
            }
        });
        lease.await.unwrap_or(Err(sqlx::Error::PoolClosed))
    }

    /// The most recently used idle connection that is still good, if any.
    async fn idle_connection(shared: &Shared<DB>) -> Option<DB::Connection> {
        loop {
            let Idle { mut conn, since } = shared.idle.lock().expect("idle list lock").pop()?;
            let stale = DB::TEST_AFTER_IDLE.is_some_and(|after| since.elapsed() > after);
            if !stale || conn.ping().await.is_ok() {
                return Some(conn);
            }
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

    /// Adds the row `x` to `t`, inside whatever `conn` is in.
    async fn insert(conn: &mut sqlx::SqliteConnection, x: i64) {
        sqlx::query("INSERT INTO t VALUES ($1)")
            .bind(x)
            .execute(conn)
            .await
            .unwrap();
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
        insert(&mut tx, 1).await;
        tx.commit().await.unwrap();
        assert_eq!(rows(&conns).await, 1);

        // Dropped unfinished (an early return): rolled back, and the one
        // connection comes back for the next caller, outside a transaction.
        let mut tx = conns.begin("BEGIN IMMEDIATE").await.unwrap();
        insert(&mut tx, 2).await;
        drop(tx);
        assert_eq!(rows(&conns).await, 1);
        let tx = conns.begin("BEGIN IMMEDIATE").await.unwrap();
        tx.rollback().await.unwrap();
        assert_eq!((conns.status().size, conns.status().idle), (1, 1));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A caller that gives up while its connection is being opened leaves
    /// it to the next caller: under a burst of short deadlines, openings
    /// cancelled part-way would otherwise leave no connection ever open.
    #[tokio::test]
    async fn a_connection_opened_for_a_caller_that_gave_up_is_kept() {
        let (conns, dir) = database(1);
        // Polled once, which starts the opening on a task of its own; the
        // caller then leaves before that task has run at all (this runtime
        // has one thread, busy here until the next await).
        let mut get = Box::pin(conns.get());
        let pending =
            std::future::poll_fn(|cx| std::task::Poll::Ready(get.as_mut().poll(cx).is_pending()))
                .await;
        assert!(pending, "the opening has not run yet");
        drop(get);
        for _ in 0..100 {
            if conns.status().idle == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((conns.status().size, conns.status().idle), (1, 1));
        assert_eq!(one(&conns).await.unwrap(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A caller that gives up while its `BEGIN` waits for another writer
    /// leaves a transaction that begins after it left: the connection is
    /// rolled back before it is lent again, not handed on inside it.
    #[tokio::test]
    async fn a_transaction_whose_caller_gave_up_during_begin_is_rolled_back() {
        use sqlx::Connection;
        let (conns, dir) = database_with_table(1).await;
        let url = format!("sqlite://{}/t.db", dir.display());
        let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(50), conns.begin("BEGIN IMMEDIATE")).await;
        assert!(gave_up.is_err());
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        // The waiting BEGIN now runs, then the rollback after it.
        let mut tx = loop {
            match conns.begin("BEGIN IMMEDIATE").await {
                Ok(tx) => break tx,
                Err(sqlx::Error::PoolTimedOut) => continue,
                Err(e) => panic!("a transaction of its own: {e}"),
            }
        };
        insert(&mut tx, 1).await;
        tx.commit().await.unwrap();
        assert_eq!(rows(&conns).await, 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
