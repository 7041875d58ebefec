//! Test-only helpers every test suite of the workspace shares: a database of
//! its own for each test (a temporary SQLite file by default, a new PostgreSQL
//! database when `TEST_DATABASE_URL` is set), unique ids, and logs only when
//! `TEST_LOG` is set; and an SMTP sink for mail tests.

pub mod grpc;
pub mod smtp;

use std::sync::{Arc, Once};

use sqlx::Connection;

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// Connection URL.
    pub url: String,
    /// Keeps the SQLite file's directory alive as long as any clone.
    _dir: Option<Arc<tempfile::TempDir>>,
}

impl TestDatabase {
    /// A fresh, empty database named after `service`: PostgreSQL when
    /// `TEST_DATABASE_URL` is set (and then it must be reachable), else SQLite.
    pub async fn new(service: &str) -> Self {
        match postgres_base() {
            Some(base) => Self::postgres(&base, service).await,
            None => Self::sqlite(service),
        }
    }

    /// A fresh SQLite database in a temporary directory.
    pub fn sqlite(service: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!(
            "sqlite://{}",
            dir.path().join(format!("{service}.db")).display()
        );
        Self {
            url,
            _dir: Some(Arc::new(dir)),
        }
    }

    /// A fresh PostgreSQL database beside the one `base` names, called
    /// `<service>_test_<random>` so CI can find and drop it.
    pub async fn postgres(base: &str, service: &str) -> Self {
        let name = format!("{service}_test_{}", unique_id());
        let mut admin = sqlx::PgConnection::connect(base)
            .await
            .expect("TEST_DATABASE_URL is set but PostgreSQL cannot be reached");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("creating a test database");
        let (prefix, _) = base
            .rsplit_once('/')
            .expect("TEST_DATABASE_URL names a database");
        Self {
            url: format!("{prefix}/{name}"),
            _dir: None,
        }
    }

    /// Whether this is a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres")
    }

    /// Runs `sql` (a scalar count) against this database, behind any service.
    pub async fn count(&self, sql: &'static str) -> i64 {
        if self.is_postgres() {
            let mut conn = sqlx::PgConnection::connect(&self.url)
                .await
                .expect("connecting");
            sqlx::query_scalar(sql)
                .fetch_one(&mut conn)
                .await
                .expect("counting")
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url)
                .await
                .expect("connecting");
            sqlx::query_scalar(sql)
                .fetch_one(&mut conn)
                .await
                .expect("counting")
        }
    }
}

/// `TEST_DATABASE_URL`, when set and not empty.
pub fn postgres_base() -> Option<String> {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Reports a test case skipped because the server named by the environment
/// variable `var` was not given. When `TEST_REQUIRE` lists `var` (as CI
/// does), a skip is a failure instead, so CI cannot pass by running nothing.
pub fn skipped(var: &str, case: &str) {
    let required = std::env::var("TEST_REQUIRE").unwrap_or_default();
    if required.split(',').any(|r| r.trim() == var) {
        panic!("{case}: {var} is required (TEST_REQUIRE) but not set");
    }
    eprintln!("{var} not set: {case} skipped");
}

/// 16 random hex digits.
pub fn unique_id() -> String {
    shared::ids::hex(&shared::ids::unique_bytes::<8>())
}

/// Starts logging once per test binary, only when `TEST_LOG` is set.
pub fn init_logs() {
    static LOGS: Once = Once::new();
    LOGS.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            shared::config::init_tracing(shared::config::LogFormat::Human);
        }
    });
}
