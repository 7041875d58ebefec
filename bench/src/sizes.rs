//! Cost against data size (`--sizes`): the services on 10^3, 10^5 and 10^6
//! posts (over 10^4 authors, with 10^5 users), loaded in bulk with SQL
//! rather than one call per row, measuring each read and write at each
//! size, the posts-service's memory, and a replica catching up on 10^6
//! events. Prints a table per backend and draws the curves as SVG.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use proto::{
    auth::{LoginRequest, auth_service_client::AuthServiceClient},
    posts::{
        CreatePostRequest, GetPostRequest, ListPostsRequest, post_service_client::PostServiceClient,
    },
};
use tonic::Request;

use crate::{
    Bearer, Cli, Figures, authorized, bench_user, channel, chart, create_post, drive, free_addr,
    spawn_pinned,
};

/// Users loaded, of whom the first `AUTHORS` write the posts.
const USERS: i64 = 100_000;
const AUTHORS: i64 = 10_000;
/// Rows per bulk statement.
const CHUNK: i64 = 100_000;
/// Pages followed for the deep listing (at most).
const DEEP_PAGES: i64 = 1000;
/// Events the replica catches up on.
const EVENTS: i64 = 1_000_000;
const PASSWORD: &str = "benchmark password 1";

/// A database the bench loads directly.
enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Db {
    async fn open(url: &str) -> anyhow::Result<Self> {
        Ok(if url.starts_with("sqlite:") {
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
            Self::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options.busy_timeout(Duration::from_secs(30)))
                    .await?,
            )
        } else {
            Self::Postgres(sqlx::PgPool::connect(url).await?)
        })
    }

    /// `WITH numbers(i)`, the integers `from..=to`, for a statement to follow.
    fn numbers(&self, from: i64, to: i64) -> String {
        match self {
            Self::Sqlite(_) => format!(
                "WITH RECURSIVE numbers(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM numbers WHERE i < {to}) "
            ),
            Self::Postgres(_) => {
                format!(
                    "WITH numbers(i) AS (SELECT generate_series({from}::bigint, {to}::bigint)) "
                )
            }
        }
    }

    async fn execute(&self, sql: String) -> anyhow::Result<()> {
        let sql = sqlx::AssertSqlSafe(sql);
        match self {
            Self::Sqlite(pool) => {
                sqlx::raw_sql(sql).execute(pool).await?;
            }
            Self::Postgres(pool) => {
                sqlx::raw_sql(sql).execute(pool).await?;
            }
        }
        Ok(())
    }

    async fn integer(&self, sql: &'static str) -> anyhow::Result<i64> {
        Ok(match self {
            Self::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
            Self::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        })
    }

    async fn text(&self, sql: &'static str) -> anyhow::Result<String> {
        Ok(match self {
            Self::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
            Self::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        })
    }
}

/// One workload's figures at one size.
struct Point {
    posts: i64,
    workload: &'static str,
    figures: Figures,
}

/// What one backend measured.
pub struct Curves {
    label: String,
    points: Vec<Point>,
    rss_mib: Vec<(i64, f64, f64)>,
    /// SQLite's write-ahead log after each size's workloads, in MiB.
    wal_mib: Vec<(i64, f64)>,
    catch_up: Option<f64>,
}

/// Runs the size curves on one backend; `urls` are the auth and posts
/// databases (fresh).
pub async fn run(cli: &Cli, label: &str, urls: (String, String)) -> anyhow::Result<Curves> {
    let blog = cli.bin_dir.join("blog");
    let blog = blog.to_str().context("binary path")?;
    let data = std::env::temp_dir().join(format!("blog-sizes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let (auth_addr, posts_addr) = (free_addr(), free_addr());
    let env = |service: &str| {
        vec![
            ("BLOG_SERVICES", service.to_owned()),
            ("INTERNAL_TOKEN", "bench-internal-token".to_owned()),
            ("DATA_DIR", data.display().to_string()),
            ("AUTH_LISTEN_ADDR", auth_addr.to_string()),
            ("AUTH_HTTP_ADDR", free_addr().to_string()),
            ("POSTS_LISTEN_ADDR", posts_addr.to_string()),
            ("POSTS_HTTP_ADDR", free_addr().to_string()),
            ("AUTH_SERVICE_URL", format!("http://{auth_addr}")),
            ("ACCESS_TOKEN_TTL_SECS", "86400".to_owned()),
            ("AUTH_DATABASE_URL", urls.0.clone()),
            ("POSTS_DATABASE_URL", urls.1.clone()),
            ("MAX_CONCURRENT_CALLS", "100000".to_owned()),
            ("POST_WRITES_PER_HOUR", "1000000000".to_owned()),
            ("POST_WRITE_BURST", "1000000".to_owned()),
            // Logins come from one address, for many accounts.
            ("LOGIN_ADDRESS_FREE_FAILURES", "1000000".to_owned()),
        ]
    };
    let auth = spawn_pinned(cli, "auth-service", blog, &[], &env("auth"))?;
    let auth_channel = channel(auth_addr).await?;
    let posts = spawn_pinned(cli, "posts-service", blog, &[], &env("posts"))?;
    let posts_channel = channel(posts_addr).await?;

    // One user through the API: their password hash is every loaded
    // user's, and their token writes.
    let bearer = bench_user(&auth_channel, PASSWORD).await?;
    // A first post makes the posts-service know the author.
    PostServiceClient::new(posts_channel.clone())
        .create_post(authorized(
            CreatePostRequest {
                title: "first".into(),
                content: "x".into(),
            },
            &bearer,
        ))
        .await?;

    let auth_db = Db::open(&urls.0).await?;
    let posts_db = Db::open(&urls.1).await?;
    let began = Instant::now();
    let hash = auth_db
        .text("SELECT password_hash FROM users WHERE username = 'bench'")
        .await?;
    let now = shared::time::Timestamp::now().as_micros();
    for from in (1..=USERS).step_by(CHUNK as usize) {
        let to = (from + CHUNK - 1).min(USERS);
        auth_db
            .execute(format!(
                "{}INSERT INTO users (username, username_key, username_skeleton, email, password_hash, create_time, update_time) \
                 SELECT 'load_' || i, 'load_' || i, 'load_' || i, 'load_' || i || '@example.com', '{hash}', {now}, {now} FROM numbers",
                auth_db.numbers(from, to)
            ))
            .await?;
    }
    let first_user = auth_db
        .integer("SELECT MIN(id) FROM users WHERE username = 'load_1'")
        .await?;
    posts_db
        .execute(format!(
            "{}INSERT INTO authors (id, username, avatar_url) \
             SELECT {first_user} + i - 1, 'load_' || i, '' FROM numbers WHERE i > 0 \
             ON CONFLICT (id) DO NOTHING",
            posts_db.numbers(1, AUTHORS)
        ))
        .await?;
    eprintln!(
        "{label}: {USERS} users and {AUTHORS} authors loaded in {:.1} s",
        began.elapsed().as_secs_f64()
    );

    let mut curves = Curves {
        label: label.to_owned(),
        points: Vec::new(),
        rss_mib: Vec::new(),
        wal_mib: Vec::new(),
        catch_up: None,
    };
    let mut loaded = 0;
    for size in sizes(cli.sizes_max) {
        let began = Instant::now();
        while loaded < size {
            let to = (loaded + CHUNK).min(size);
            posts_db
                .execute(format!(
                    "{}INSERT INTO posts (author_id, title, content, create_time, update_time) \
                     SELECT {first_user} + (i % {AUTHORS}), 'Post ' || i, \
                     'Some words about benchmarks, loaded in bulk.', {now} - 100000000000 + i, {now} - 100000000000 + i \
                     FROM numbers",
                    posts_db.numbers(loaded + 1, to)
                ))
                .await?;
            loaded = to;
        }
        // Let the load settle before measuring, as a database that grew
        // over time would be: SQLite's log copied into the file, and
        // PostgreSQL's tables vacuumed (visibility map, statistics).
        match &posts_db {
            Db::Sqlite(pool) => {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_all(pool)
                    .await?;
            }
            Db::Postgres(pool) => {
                sqlx::raw_sql("VACUUM ANALYZE").execute(pool).await?;
            }
        }
        eprintln!(
            "{label}: {size} posts loaded in {:.1} s",
            began.elapsed().as_secs_f64()
        );
        let (low, high) = match &posts_db {
            Db::Sqlite(pool) => {
                sqlx::query_as::<_, (i64, i64)>("SELECT MIN(id), MAX(id) FROM posts")
                    .fetch_one(pool)
                    .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_as::<_, (i64, i64)>("SELECT MIN(id), MAX(id) FROM posts")
                    .fetch_one(pool)
                    .await?
            }
        };
        for (workload, figures) in measure(
            cli,
            &posts_channel,
            &auth_channel,
            &bearer,
            size,
            (low, high),
            first_user,
        )
        .await?
        {
            curves.points.push(Point {
                posts: size,
                workload,
                figures,
            });
        }
        curves
            .rss_mib
            .push((size, posts.rss_mib(), posts.file_rss_mib()));
        if let Some(path) = urls.1.strip_prefix("sqlite://") {
            let wal = std::fs::metadata(format!("{path}-wal")).map_or(0, |m| m.len());
            curves.wal_mib.push((size, wal as f64 / (1024.0 * 1024.0)));
        }
    }

    // A replica behind by EVENTS events: every loaded user renamed.
    let before = posts_db
        .integer("SELECT sequence FROM event_cursor WHERE id = 1")
        .await?;
    let events = EVENTS.min(cli.sizes_max);
    let t = shared::time::Timestamp::now().as_micros();
    for from in (1..=events).step_by(CHUNK as usize) {
        let to = (from + CHUNK - 1).min(events);
        auth_db
            .execute(format!(
                "{}INSERT INTO user_events (time, payload) \
                 SELECT {t}, '{{\"type\":\"user_upserted\",\"user_id\":' || ({first_user} + (i % {USERS})) || \
                 ',\"username\":\"renamed_' || i || '\",\"avatar_key\":null}}' FROM numbers",
                auth_db.numbers(from, to)
            ))
            .await?;
    }
    let target = auth_db
        .integer("SELECT MAX(sequence) FROM user_events")
        .await?;
    let began = Instant::now();
    loop {
        let cursor = posts_db
            .integer("SELECT sequence FROM event_cursor WHERE id = 1")
            .await?;
        if cursor >= target {
            break;
        }
        if began.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("the replica did not catch up in 30 minutes ({cursor} of {target})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    curves.catch_up = Some((target - before) as f64 / began.elapsed().as_secs_f64());
    drop(posts);
    drop(auth);
    let _ = std::fs::remove_dir_all(&data);
    Ok(curves)
}

/// 10^3, 10^5, 10^6, up to `max`.
fn sizes(max: i64) -> Vec<i64> {
    [1_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|s| *s <= max)
        .collect()
}

/// Each workload at the current size.
async fn measure(
    cli: &Cli,
    posts: &tonic::transport::Channel,
    auth: &tonic::transport::Channel,
    bearer: &Arc<Bearer>,
    size: i64,
    (low, high): (i64, i64),
    first_user: i64,
) -> anyhow::Result<Vec<(&'static str, Figures)>> {
    let (c, s) = (cli.concurrency, cli.seconds);
    let mut out = Vec::new();

    let (channel, bearer2) = (posts.clone(), bearer.clone());
    let span = (high - low + 1) as usize;
    out.push((
        "GetPost",
        drive(c, s, move |i| {
            let mut client = PostServiceClient::new(channel.clone());
            // Spread over the whole table, not the hot end.
            let id = low + ((i.wrapping_mul(7919)) % span) as i64;
            let request = authorized(GetPostRequest { id }, &bearer2);
            async move { client.get_post(request).await.map(|_| ()) }
        })
        .await,
    ));

    let list = |page_token: String, author_id: Option<i64>| {
        let channel = posts.clone();
        move |i: usize| {
            let mut client = PostServiceClient::new(channel.clone());
            let request = Request::new(ListPostsRequest {
                page_size: 10,
                page_token: page_token.clone(),
                author_id: author_id.map_or(0, |a| a + (i as i64 % AUTHORS)),
            });
            async move { client.list_posts(request).await.map(|_| ()) }
        }
    };
    out.push((
        "ListPosts, first page",
        drive(c, s, list(String::new(), None)).await,
    ));

    // The token of a page deep down, by following the tokens there.
    let pages = DEEP_PAGES.min(size / 10 / 2).max(1);
    let mut token = String::new();
    let mut client = PostServiceClient::new(posts.clone());
    for _ in 0..pages {
        token = client
            .list_posts(ListPostsRequest {
                page_size: 10,
                page_token: token,
                author_id: 0,
            })
            .await?
            .into_inner()
            .next_page_token;
    }
    out.push(("ListPosts, deep page", drive(c, s, list(token, None)).await));
    out.push((
        "ListPosts by author",
        drive(c, s, list(String::new(), Some(first_user))).await,
    ));

    let create = create_post(posts, bearer, "Sized");
    out.push(("CreatePost", drive(c, s, move |i| create(i)).await));

    let channel = auth.clone();
    out.push((
        "Login",
        drive(c, s, move |i| {
            let mut client = AuthServiceClient::new(channel.clone());
            let request = LoginRequest {
                username_or_email: format!("load_{}", 1 + (i.wrapping_mul(7919) % USERS as usize)),
                password: PASSWORD.into(),
            };
            async move { client.login(request).await.map(|_| ()) }
        })
        .await,
    ));
    Ok(out)
}

/// Prints `curves` as a table and draws them under `dir`.
pub fn report(curves: &Curves, dir: &Path) -> anyhow::Result<()> {
    let sizes: Vec<i64> = {
        let mut s: Vec<i64> = curves.points.iter().map(|p| p.posts).collect();
        s.dedup();
        s
    };
    let workloads: Vec<&str> = {
        let mut w = Vec::new();
        for p in &curves.points {
            if !w.contains(&p.workload) {
                w.push(p.workload);
            }
        }
        w
    };
    println!("\n### Cost against size: {}\n", curves.label);
    let header: Vec<String> = sizes.iter().map(|s| format!("{s} posts")).collect();
    println!("| workload | {} | last / first |", header.join(" | "));
    println!("|---|{}---|", "---|".repeat(sizes.len()));
    for workload in &workloads {
        let figures: Vec<&Figures> = sizes
            .iter()
            .filter_map(|s| {
                curves
                    .points
                    .iter()
                    .find(|p| p.posts == *s && p.workload == *workload)
                    .map(|p| &p.figures)
            })
            .collect();
        let cells: Vec<String> = figures
            .iter()
            .map(|f| {
                format!(
                    "{:.0}/s, p99 {:.1} ms{}",
                    f.per_second,
                    f.p99.as_secs_f64() * 1e3,
                    if f.errors > 0 {
                        format!(", {} errors", f.errors)
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        let ratio = match (figures.first(), figures.last()) {
            (Some(a), Some(b)) => format!("{:.2}", b.per_second / a.per_second.max(1e-9)),
            _ => String::new(),
        };
        println!("| {workload} | {} | {ratio} |", cells.join(" | "));
    }
    let rss: Vec<String> = curves
        .rss_mib
        .iter()
        .map(|(s, anon, file)| format!("{anon:.1} MiB at {s} (mapped file pages {file:.1} MiB)"))
        .collect();
    println!(
        "\n- posts-service resident memory of its own (RssAnon): {}",
        rss.join(", ")
    );
    if !curves.wal_mib.is_empty() {
        let wal: Vec<String> = curves
            .wal_mib
            .iter()
            .map(|(s, m)| format!("{m:.1} MiB at {s}"))
            .collect();
        println!("- SQLite WAL after the workloads: {}", wal.join(", "));
    }
    if let Some(rate) = curves.catch_up {
        println!("- a replica behind by events catches up at {rate:.0} events/s");
    }

    std::fs::create_dir_all(dir)?;
    let slug = curves.label.to_lowercase();
    let series = |f: fn(&Figures) -> f64| -> Vec<chart::Series> {
        workloads
            .iter()
            .map(|w| chart::Series {
                name: (*w).to_owned(),
                points: curves
                    .points
                    .iter()
                    .filter(|p| p.workload == *w)
                    .map(|p| (p.posts as f64, f(&p.figures)))
                    .collect(),
            })
            .collect()
    };
    // Each workload's rate as a fraction of its rate at the smallest size:
    // flat is 1, and the goal is to stay above 0.8.
    let relative: Vec<chart::Series> = series(|f| f.per_second)
        .into_iter()
        .map(|mut s| {
            let first = s.points.first().map_or(1.0, |p| p.1.max(1e-9));
            for point in &mut s.points {
                point.1 /= first;
            }
            s
        })
        .collect();
    std::fs::write(
        dir.join(format!("sizes-{slug}-rate.svg")),
        chart::line_chart(
            &format!(
                "{}: calls/s against the number of posts, relative to the smallest",
                curves.label
            ),
            &chart::XAxis::Log10,
            "x calls/s at the smallest size",
            &relative,
        ),
    )?;
    std::fs::write(
        dir.join(format!("sizes-{slug}-p99.svg")),
        chart::line_chart(
            &format!(
                "{}: p99 latency (ms) against the number of posts",
                curves.label
            ),
            &chart::XAxis::Log10,
            "p99 ms",
            &series(|f| f.p99.as_secs_f64() * 1e3),
        ),
    )?;
    Ok(())
}
