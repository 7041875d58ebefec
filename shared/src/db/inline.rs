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
//! never lets the thread go either: each read is counted against the
//! task's budget, and the task yields when that is spent, or a task that
//! reads in a loop would keep its thread from every other task.

use std::{
    path::PathBuf,
    sync::{Mutex, MutexGuard, TryLockError},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, config::DbConfig};

/// Connections to an SQLite file for reads on the caller's thread: a fixed
/// number of slots, each holding a connection (opened when a read first
/// needs it) that one read at a time may lock.
pub struct InlineReads {
    /// The database file, created and migrated by the writer beforehand.
    path: PathBuf,
    /// One per connection that may be open; `None` until opened, and again
    /// once closed after a failed read.
    slots: Box<[Mutex<Option<Connection>>]>,
}

impl InlineReads {
    /// Up to `max` connections to the database at `path`, opened as reads
    /// need them.
    pub fn new(path: impl Into<PathBuf>, max: u32) -> Self {
        Self {
            path: path.into(),
            slots: (0..max).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Runs `read` on a connection of its own, on this thread, and returns
    /// what it read; `None` if it was not done here: every connection was
    /// in use, SQLite was busy, or the read failed (the connection it
    /// failed on is closed). Yields first if the task's budget is spent.
    pub async fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Option<T> {
        tokio::task::coop::consume_budget().await;
        self.read_now(read)
    }

    /// [`InlineReads::read`], without the budget.
    fn read_now<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        let mut slot = self.slots.iter().find_map(free)?;
        if slot.is_none() {
            *slot = self
                .connect()
                .inspect_err(|e| {
                    tracing::debug!(error = %e, "cannot open a connection for reads on the caller's thread");
                })
                .ok();
        }
        let conn = slot.as_ref()?;
        let found = read(conn);
        match &found {
            Err(e) if !is_busy(e) => {
                tracing::debug!(error = %e, "a read on the caller's thread failed");
                *slot = None;
            }
            // A read never leaves a transaction open; one that did is not
            // lent again inside it.
            _ if !conn.is_autocommit() => *slot = None,
            _ => {}
        }
        found.ok()
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

/// `slot`, locked, unless a read holds it. A slot whose read panicked is
/// taken with its connection closed: what that read left is unknown.
fn free(slot: &Mutex<Option<Connection>>) -> Option<MutexGuard<'_, Option<Connection>>> {
    match slot.try_lock() {
        Ok(slot) => Some(slot),
        Err(TryLockError::WouldBlock) => None,
        Err(TryLockError::Poisoned(poisoned)) => {
            let mut slot = poisoned.into_inner();
            *slot = None;
            Some(slot)
        }
    }
}

/// Whether `e` says SQLite would have had to wait.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
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

    /// How many connections are open, and how many of them are idle; a
    /// slot a read holds counts as open.
    fn status(reads: &InlineReads) -> (u32, u32) {
        reads
            .slots
            .iter()
            .fold((0, 0), |(open, idle), slot| match slot.try_lock() {
                Ok(slot) if slot.is_some() => (open + 1, idle + 1),
                Ok(_) => (open, idle),
                Err(_) => (open + 1, idle),
            })
    }

    fn count(conn: &Connection) -> rusqlite::Result<i64> {
        conn.query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
    }

    /// A read never waits, so a task that only reads would never give its
    /// thread back: each read counts against the task's budget instead.
    #[tokio::test]
    async fn a_task_reading_in_a_loop_lets_other_tasks_run() {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        };
        let db = Database::new();
        let reads = db.reads(1);
        let other_ran = Arc::new(AtomicBool::new(false));
        // This runtime has one thread: the task runs only if the loop yields.
        tokio::spawn({
            let other_ran = Arc::clone(&other_ran);
            async move { other_ran.store(true, Ordering::SeqCst) }
        });
        let mut done = 0;
        while !other_ran.load(Ordering::SeqCst) && done < 10_000 {
            assert_eq!(reads.read(count).await, Some(1));
            done += 1;
        }
        assert!(
            other_ran.load(Ordering::SeqCst),
            "the other task never ran during {done} reads"
        );
    }

    #[test]
    fn a_read_reuses_its_connection() {
        let db = Database::new();
        let reads = db.reads(2);
        assert_eq!(reads.read_now(count), Some(1));
        assert_eq!(reads.read_now(count), Some(1));
        assert_eq!(status(&reads), (1, 1));
    }

    #[test]
    fn no_more_than_max_connections_open_and_the_next_read_is_left_to_the_caller() {
        let db = Database::new();
        let reads = db.reads(2);
        let nested = reads.read_now(|_| {
            Ok(reads.read_now(|_| {
                // Both connections are in use: a third read is not done.
                Ok((reads.read_now(count), status(&reads)))
            }))
        });
        assert_eq!(nested, Some(Some((None, (2, 0)))));
        assert_eq!(status(&reads), (2, 2));
    }

    #[test]
    fn a_failed_read_closes_its_connection_and_the_caller_takes_the_usual_way() {
        let db = Database::new();
        let reads = db.reads(2);
        let failed = reads.read_now(|conn| conn.query_row("SELECT * FROM missing", [], |_| Ok(())));
        assert_eq!(failed, None);
        assert_eq!(status(&reads), (0, 0));
        assert_eq!(reads.read_now(count), Some(1));
    }

    #[test]
    fn these_connections_never_write() {
        let db = Database::new();
        let reads = db.reads(1);
        let wrote = reads.read_now(|conn| conn.execute("INSERT INTO t VALUES (2)", []));
        assert_eq!(wrote, None);
        assert_eq!(reads.read_now(count), Some(1));
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
        assert_eq!(reads.read_now(count), None);
        assert_eq!(status(&reads), (1, 1));
        other.execute_batch("COMMIT").unwrap();
        drop(other);
        assert_eq!(reads.read_now(count), Some(2));
    }
}
