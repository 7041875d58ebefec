//! SQLite reads on the caller's own thread.
//!
//! sqlx runs every SQLite connection on a thread of its own: a query is a
//! message to that thread, each row a message back, and the caller's task
//! is woken for them, two thread switches and more per read at the least.
//! A read of a warm database takes microseconds, less than those switches,
//! so the hot reads run here instead, directly on the task's thread, on
//! connections of their own (`rusqlite`, the same bundled SQLite).
//!
//! These reads never wait: a connection opened here has no busy timeout,
//! and when every connection is in use or SQLite answers busy the read is
//! not answered here ([`InlineReads::read`] returns `None`) and the caller
//! takes the usual way, which may wait off this thread. Any other failure
//! is left to the usual way too, which reports it. So what runs on the
//! caller's thread is only ever the read itself. Since it never waits, it
//! never lets the thread go either: an async caller counts each read
//! against its task's budget (`tokio::task::coop::consume_budget`), or a
//! task that reads in a loop would keep its thread from every other task.

use std::{
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, config::DbConfig};

/// Connections to an SQLite file for reads on the caller's thread; at most
/// `max` are open, each used by one read at a time.
pub struct InlineReads {
    /// The database file, created and migrated by the writer beforehand.
    path: PathBuf,
    /// How many connections may be open at once.
    max: u32,
    /// How many are open, in use or idle.
    open: AtomicU32,
    /// Connections between reads.
    idle: Mutex<Vec<Connection>>,
}

impl InlineReads {
    /// Up to `max` connections to the database at `path`, opened as reads
    /// need them.
    pub fn new(path: impl Into<PathBuf>, max: u32) -> Self {
        Self {
            path: path.into(),
            max,
            open: AtomicU32::new(0),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `read` on a connection of its own, on this thread, and returns
    /// what it read; `None` if it was not done here: every connection was
    /// in use, SQLite was busy, or the read failed (the connection it
    /// failed on is closed).
    pub fn read<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        let lent = self.lend()?;
        match read(lent.conn()) {
            Ok(found) => Some(found),
            Err(e) => {
                if !is_busy(&e) {
                    tracing::debug!(error = %e, "a read on the caller's thread failed");
                    lent.close();
                }
                None
            }
        }
    }

    /// How many connections are open, and how many of them are idle.
    pub fn status(&self) -> (u32, u32) {
        let idle = self.idle.lock().expect("idle list lock").len() as u32;
        (self.open.load(Ordering::Acquire), idle)
    }

    /// An idle connection, or a new one if fewer than `max` are open.
    fn lend(&self) -> Option<Lent<'_>> {
        if let Some(conn) = self.idle.lock().expect("idle list lock").pop() {
            return Some(Lent {
                reads: self,
                conn: Some(conn),
            });
        }
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()?;
        // Counted from here: dropped, the lease gives the count back.
        let mut lent = Lent {
            reads: self,
            conn: None,
        };
        match self.connect() {
            Ok(conn) => {
                lent.conn = Some(conn);
                Some(lent)
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot open a connection for reads on the caller's thread");
                None
            }
        }
    }

    /// A connection that only reads, never waits, and keeps its query
    /// plans across bindings like the other connections to the file.
    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::ZERO)?;
        conn.pragma_update(None, "query_only", true)?;
        conn.pragma_update(None, "mmap_size", super::SQLITE_MMAP_BYTES as i64)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        Ok(conn)
    }
}

/// Whether `e` says SQLite would have had to wait.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A connection lent to one read: given back when dropped, unless it was
/// closed or is inside a transaction (which a read never leaves open).
struct Lent<'a> {
    /// Where it goes back to.
    reads: &'a InlineReads,
    /// The connection; `None` once closed.
    conn: Option<Connection>,
}

impl Lent<'_> {
    fn conn(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a lent connection until it is closed")
    }

    fn close(mut self) {
        self.conn = None;
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        match self.conn.take() {
            Some(conn) if conn.is_autocommit() => {
                self.reads.idle.lock().expect("idle list lock").push(conn);
            }
            _ => {
                self.reads.open.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new database file with a table `t (x)` of one row, removed with
    /// its directory when dropped.
    struct Database(PathBuf);

    impl Database {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "blog-inline-{}",
                crate::ids::hex(&crate::ids::unique_bytes::<8>())
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("t.db");
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "wal").unwrap();
            conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1)")
                .unwrap();
            Self(path)
        }

        /// Up to `max` connections for reads on this thread.
        fn reads(&self, max: u32) -> InlineReads {
            InlineReads::new(&self.0, max)
        }
    }

    impl Drop for Database {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn count(conn: &Connection) -> rusqlite::Result<i64> {
        conn.query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
    }

    #[test]
    fn a_read_reuses_its_connection() {
        let db = Database::new();
        let reads = db.reads(2);
        assert_eq!(reads.read(count), Some(1));
        assert_eq!(reads.read(count), Some(1));
        assert_eq!(reads.status(), (1, 1));
    }

    #[test]
    fn no_more_than_max_connections_open_and_the_next_read_is_left_to_the_caller() {
        let db = Database::new();
        let reads = db.reads(2);
        let nested = reads.read(|_| {
            Ok(reads.read(|_| {
                // Both connections are in use: a third read is not done.
                Ok((reads.read(count), reads.status()))
            }))
        });
        assert_eq!(nested, Some(Some((None, (2, 0)))));
        assert_eq!(reads.status(), (2, 2));
    }

    #[test]
    fn a_failed_read_closes_its_connection_and_the_caller_takes_the_usual_way() {
        let db = Database::new();
        let reads = db.reads(2);
        let failed = reads.read(|conn| conn.query_row("SELECT * FROM missing", [], |_| Ok(())));
        assert_eq!(failed, None);
        assert_eq!(reads.status(), (0, 0));
        assert_eq!(reads.read(count), Some(1));
    }

    #[test]
    fn these_connections_never_write() {
        let db = Database::new();
        let reads = db.reads(1);
        let wrote = reads.read(|conn| conn.execute("INSERT INTO t VALUES (2)", []));
        assert_eq!(wrote, None);
        assert_eq!(reads.read(count), Some(1));
    }

    #[test]
    fn a_read_that_would_wait_is_left_to_the_caller_and_keeps_its_connection() {
        let db = Database::new();
        let reads = db.reads(1);
        // An exclusive lock keeps even WAL readers out (taken first: an
        // open connection would keep it from being taken).
        let other = Connection::open(&db.0).unwrap();
        other
            .execute_batch(
                "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; INSERT INTO t VALUES (2)",
            )
            .unwrap();
        assert_eq!(reads.read(count), None);
        assert_eq!(reads.status(), (1, 1));
        other.execute_batch("COMMIT").unwrap();
        drop(other);
        assert_eq!(reads.read(count), Some(2));
    }
}
