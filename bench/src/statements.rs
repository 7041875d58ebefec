//! What PostgreSQL ran for a workload, from `pg_stat_statements`: each
//! statement, how often per RPC, the rows it touched and the server's time
//! on it. A profile of round trips: a read that costs one statement per
//! call shows exactly one line.
//!
//! The module has to be loaded by the server (`shared_preload_libraries =
//! 'pg_stat_statements'`, then a restart); without it the bench says so on
//! stderr and measures as before.

use sqlx::{Connection, PgConnection};

/// The statement statistics of the posts database, read workload by
/// workload; off for SQLite, or when the server does not keep them.
pub struct Statements {
    conn: Option<PgConnection>,
    /// One markdown table per workload recorded.
    tables: Vec<String>,
}

impl Statements {
    /// No statistics (SQLite).
    pub fn off() -> Self {
        Self {
            conn: None,
            tables: Vec::new(),
        }
    }

    /// The statistics of the database at `url`, if the server keeps them;
    /// off otherwise, said on stderr.
    pub async fn of(url: &str) -> Self {
        let opened = async {
            let mut conn = PgConnection::connect(url).await?;
            sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(&mut conn)
                .await?;
            // Fails here, not later, when the module is not loaded.
            sqlx::query("SELECT count(*) FROM pg_stat_statements")
                .execute(&mut conn)
                .await?;
            Ok::<_, sqlx::Error>(conn)
        };
        match opened.await {
            Ok(conn) => Self {
                conn: Some(conn),
                tables: Vec::new(),
            },
            Err(e) => {
                eprintln!("PostgreSQL statements not profiled: {e}");
                Self::off()
            }
        }
    }

    /// Forgets the statistics so far.
    pub async fn reset(&mut self) -> anyhow::Result<()> {
        if let Some(conn) = &mut self.conn {
            sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(conn)
                .await?;
        }
        Ok(())
    }

    /// Records the statements run since [`Statements::reset`] for
    /// `workload`, which made `rpcs` calls, the most server time first.
    pub async fn record(&mut self, workload: &str, rpcs: u64) -> anyhow::Result<()> {
        let Some(conn) = &mut self.conn else {
            return Ok(());
        };
        let rows: Vec<(String, i64, i64, f64)> = sqlx::query_as(
            "SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls, rows, total_exec_time \
             FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND query NOT LIKE '%pg_stat_statements%' \
             ORDER BY total_exec_time DESC",
        )
        .fetch_all(conn)
        .await?;
        let rpcs = rpcs.max(1) as f64;
        let total_calls: i64 = rows.iter().map(|r| r.1).sum();
        let total_ms: f64 = rows.iter().map(|r| r.3).sum();
        let mut table = format!(
            "\n**{workload}**: {rpcs} RPCs; {:.2} statements and {:.1} µs of server time per RPC.\n\n\
             | statement | per RPC | rows per call | mean µs |\n|---|---|---|---|\n",
            total_calls as f64 / rpcs,
            total_ms * 1e3 / rpcs,
        );
        for (query, calls, rows, total) in rows.into_iter().take(6) {
            let calls_at_least_one = calls.max(1) as f64;
            table += &format!(
                "| `{}` | {:.3} | {:.1} | {:.1} |\n",
                shorten(&query, 100).replace('|', "\\|"),
                calls as f64 / rpcs,
                rows as f64 / calls_at_least_one,
                total * 1e3 / calls_at_least_one,
            );
        }
        self.tables.push(table);
        Ok(())
    }

    /// The tables recorded, one per workload, in order.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }
}

/// `text` cut to about `most` characters, with an ellipsis if cut.
fn shorten(text: &str, most: usize) -> String {
    match text.char_indices().nth(most) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
