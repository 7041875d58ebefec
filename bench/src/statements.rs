//! What PostgreSQL ran for a workload, from `pg_stat_statements`: each
//! statement, how often per RPC, the rows it touched and the server's time
//! on it. A profile of round trips: a read that costs one statement per
//! call shows exactly one line.
//!
//! The module has to be loaded by the server (`shared_preload_libraries =
//! 'pg_stat_statements'`, then a restart); without it the bench says so on
//! stderr and measures as before.

use sqlx::{Connection, PgConnection};

/// A connection to the posts database that reads its statement statistics.
pub struct Statements {
    conn: PgConnection,
}

impl Statements {
    /// Statement statistics of the database at `url`, if the server keeps
    /// them.
    pub async fn of(url: &str) -> Option<Self> {
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
            Ok(conn) => Some(Self { conn }),
            Err(e) => {
                eprintln!("PostgreSQL statements not profiled: {e}");
                None
            }
        }
    }
}

/// Forgets the statistics so far, if they are kept.
pub async fn reset(statements: &mut Option<Statements>) -> anyhow::Result<()> {
    if let Some(statements) = statements {
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut statements.conn)
            .await?;
    }
    Ok(())
}

/// The statements run since the last [`reset`] for `workload`, which made
/// `rpcs` calls, the most server time first, as a markdown table; nothing if
/// the statistics are not kept.
pub async fn report(
    statements: &mut Option<Statements>,
    workload: &str,
    rpcs: u64,
) -> anyhow::Result<Vec<String>> {
    let Some(statements) = statements else {
        return Ok(Vec::new());
    };
    let rows: Vec<(String, i64, i64, f64)> = sqlx::query_as(
        "SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls, rows, total_exec_time \
         FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND query NOT LIKE '%pg_stat_statements%' \
         ORDER BY total_exec_time DESC",
    )
    .fetch_all(&mut statements.conn)
    .await?;
    let rpcs = rpcs.max(1) as f64;
    let total_calls: i64 = rows.iter().map(|r| r.1).sum();
    let total_ms: f64 = rows.iter().map(|r| r.3).sum();
    let mut lines = vec![
        String::new(),
        format!(
            "**{workload}**: {rpcs} RPCs; {:.2} statements and {:.1} µs of server time per RPC.",
            total_calls as f64 / rpcs,
            total_ms * 1e3 / rpcs,
        ),
        String::new(),
        "| statement | per RPC | rows per call | mean µs |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    for (query, calls, rows, total) in rows.into_iter().take(6) {
        lines.push(format!(
            "| `{}` | {:.3} | {:.1} | {:.1} |",
            shorten(&query, 100).replace('|', "\\|"),
            calls as f64 / rpcs,
            rows as f64 / (calls.max(1) as f64),
            total * 1e3 / (calls.max(1) as f64),
        ));
    }
    Ok(lines)
}

/// `text` cut to about `most` characters, with an ellipsis if cut.
fn shorten(text: &str, most: usize) -> String {
    match text.char_indices().nth(most) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
