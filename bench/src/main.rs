//! `blog-bench`: drives the blog services, started from their release
//! binaries, over real gRPC with a fixed number of calls in flight, and
//! prints throughput and latency for each workload next to two ceilings
//! measured in the same run: a bare tonic server (W0) and argon2 (W4).
//!
//! The servers are pinned to one core (`taskset -c 0`) and the load
//! generator should run on the other (`bench/run.sh` does both), so ratios
//! mean something on a two-core machine. Every response's status is checked:
//! a refused call is counted as an error, never as throughput.
//!
//! `blog-bench noop-server ADDR` is the W0 server: `grpc.health.v1` alone on
//! a server built with the services' own settings.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use shared::proto::{
    auth::{
        CreateUserRequest, LoginRequest, auth_service_client::AuthServiceClient,
        user_service_client::UserServiceClient,
    },
    posts::{
        CreatePostRequest, GetPostRequest, ListPostsRequest, post_service_client::PostServiceClient,
    },
};
use tonic::{Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// What to run.
#[derive(Debug, Parser)]
struct Cli {
    /// Serve the W0 no-op server on this address instead of benchmarking.
    #[arg(long)]
    noop_server: Option<SocketAddr>,
    /// Directory of the release binaries (`blog`, `blog-bench`).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Calls in flight per workload.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds per workload (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Also run against this PostgreSQL server (databases are created).
    #[arg(long)]
    postgres: Option<String>,
    /// The core the servers are pinned to.
    #[arg(long, default_value = "0")]
    server_core: String,
    /// Run only these workloads (e.g. `w2,w3`), to profile one at a time;
    /// the servers' process ids are printed so `perf record -p` can attach.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Cli {
    /// Whether workload `name` (`w0`, `w1`, ... `w5`) is to run.
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w.eq_ignore_ascii_case(name))
    }
}

/// The figures of one workload.
#[derive(Debug, Clone, Default)]
struct Figures {
    ok: u64,
    errors: u64,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

impl Figures {
    fn from(mut latencies: Vec<Duration>, errors: u64, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Self {
            ok: latencies.len() as u64,
            errors,
            per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// Runs `call` from `concurrency` tasks for a warm-up second, then measures
/// for `seconds`.
async fn drive<F, Fut>(concurrency: usize, seconds: u64, call: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut i = worker;
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    let result = call(i).await;
                    i += concurrency;
                    if began < start {
                        continue;
                    }
                    match result {
                        Ok(()) => latencies.push(began.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.expect("a load task");
        latencies.extend(l);
        errors += e;
    }
    Figures::from(latencies, errors, Duration::from_secs(seconds))
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    name: &'static str,
}

impl Server {
    /// Peak resident memory, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_pinned(
    cli: &Cli,
    name: &'static str,
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
) -> anyhow::Result<Server> {
    let mut command = Command::new("taskset");
    command
        .arg("-c")
        .arg(&cli.server_core)
        .arg(program)
        .args(args);
    command.env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {name} (is taskset installed?)"))?;
    eprintln!("{name}: pid {}", child.id());
    Ok(Server { child, name })
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    for _ in 0..100 {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
        {
            let mut health = HealthClient::new(channel.clone());
            if let Ok(response) = health.check(HealthCheckRequest::default()).await
                && response.into_inner().status == 1
            {
                return Ok(channel);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{addr} never became ready")
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One argon2 verification's duration on this machine, single-threaded.
fn argon2_verify_time() -> Duration {
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
    let argon2 = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(19_456, 2, 1, None).unwrap(),
    );
    let hash = argon2.hash_password(b"benchmark password").unwrap();
    let rounds = 20;
    let start = Instant::now();
    for _ in 0..rounds {
        argon2
            .verify_password(b"benchmark password", &hash)
            .unwrap();
    }
    start.elapsed() / rounds
}

fn row(name: &str, figures: &Figures, reference: Option<(&str, f64)>) -> String {
    let ratio = reference.map_or(String::new(), |(label, base)| {
        format!("{:.2} x {label}", figures.per_second / base)
    });
    format!(
        "| {name} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
        figures.ok,
        figures.per_second,
        figures.p50.as_secs_f64() * 1e3,
        figures.p99.as_secs_f64() * 1e3,
        figures.errors,
        ratio
    )
}

async fn run_backend(
    cli: &Cli,
    label: &str,
    urls: (String, String),
    w0: &Figures,
    argon2_ceiling: f64,
) -> anyhow::Result<()> {
    let blog = cli.bin_dir.join("blog");
    let blog = blog.to_str().context("binary path")?;
    let data = std::env::temp_dir().join(format!("blog-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let (auth_addr, posts_addr) = (free_addr(), free_addr());
    let common = vec![
        ("INTERNAL_TOKEN", "bench-internal-token".to_owned()),
        ("DATA_DIR", data.display().to_string()),
        ("AUTH_LISTEN_ADDR", auth_addr.to_string()),
        ("AUTH_HTTP_ADDR", free_addr().to_string()),
        ("POSTS_LISTEN_ADDR", posts_addr.to_string()),
        ("POSTS_HTTP_ADDR", free_addr().to_string()),
        ("AUTH_SERVICE_URL", format!("http://{auth_addr}")),
        ("AUTH_DATABASE_URL", urls.0),
        ("POSTS_DATABASE_URL", urls.1),
        ("MAX_CONCURRENT_CALLS", "100000".to_owned()),
    ];
    let with = |service: &str| {
        let mut env = common.clone();
        env.push(("BLOG_SERVICES", service.to_owned()));
        env
    };
    let auth = spawn_pinned(cli, "auth-service", blog, &[], &with("auth"))?;
    let auth_channel = channel(auth_addr).await?;
    let posts = spawn_pinned(cli, "posts-service", blog, &[], &with("posts"))?;
    let posts_channel = channel(posts_addr).await?;

    // A user, a token, and 200 posts to read.
    let password = "benchmark password 1";
    UserServiceClient::new(auth_channel.clone())
        .create_user(CreateUserRequest {
            username: "bench".into(),
            email: "bench@example.com".into(),
            password: password.into(),
        })
        .await?;
    let token = AuthServiceClient::new(auth_channel.clone())
        .login(LoginRequest {
            username_or_email: "bench".into(),
            password: password.into(),
        })
        .await?
        .into_inner()
        .access_token;
    let bearer = Arc::new(format!("Bearer {token}").parse::<tonic::metadata::MetadataValue<_>>()?);
    let mut ids = Vec::new();
    for i in 0..200 {
        let mut request = Request::new(CreatePostRequest {
            title: format!("Post {i}"),
            content: "Some words about benchmarks.".into(),
        });
        request
            .metadata_mut()
            .insert("authorization", (*bearer).clone());
        ids.push(
            PostServiceClient::new(posts_channel.clone())
                .create_post(request)
                .await?
                .into_inner()
                .id,
        );
    }
    let ids = Arc::new(ids);
    let (c, s) = (cli.concurrency, cli.seconds);

    let get_post = |with_token: bool| {
        let (posts, ids, bearer) = (posts_channel.clone(), ids.clone(), bearer.clone());
        move |i: usize| {
            let mut client = PostServiceClient::new(posts.clone());
            let mut request = Request::new(GetPostRequest {
                id: ids[i % ids.len()],
            });
            if with_token {
                request
                    .metadata_mut()
                    .insert("authorization", (*bearer).clone());
            }
            async move { client.get_post(request).await.map(|_| ()) }
        }
    };
    let mut rows = Vec::new();
    let w0_rate = Some(("W0", w0.per_second));
    let mut w1 = None;
    if cli.wants("w1") {
        let figures = drive(c, s, get_post(true)).await;
        rows.push(row("W1 GetPost, token", &figures, w0_rate));
        let plain = drive(c, s, get_post(false)).await;
        rows.push(row("W1' GetPost, no token", &plain, w0_rate));
        rows.push(format!(
            "W1 / W1' = {:.2} (authentication's cost)",
            figures.per_second / plain.per_second.max(1e-9)
        ));
        w1 = Some(figures);
    }
    if cli.wants("w2") {
        let posts = posts_channel.clone();
        let figures = drive(c, s, move |_| {
            let mut client = PostServiceClient::new(posts.clone());
            async move {
                client
                    .list_posts(ListPostsRequest {
                        page_size: 10,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
            }
        })
        .await;
        rows.push(row("W2 ListPosts (10)", &figures, w0_rate));
    }
    if cli.wants("w3") {
        let (posts, bearer) = (posts_channel.clone(), bearer.clone());
        let figures = drive(c, s, move |i| {
            let mut client = PostServiceClient::new(posts.clone());
            let mut request = Request::new(CreatePostRequest {
                title: format!("Bench {i}"),
                content: "Written under load.".into(),
            });
            request
                .metadata_mut()
                .insert("authorization", (*bearer).clone());
            async move { client.create_post(request).await.map(|_| ()) }
        })
        .await;
        rows.push(row("W3 CreatePost", &figures, w0_rate));
    }
    let login = {
        let auth = auth_channel.clone();
        move |_| {
            let mut client = AuthServiceClient::new(auth.clone());
            async move {
                client
                    .login(LoginRequest {
                        username_or_email: "bench".into(),
                        password: password.into(),
                    })
                    .await
                    .map(|_| ())
            }
        }
    };
    if cli.wants("w4") {
        let figures = drive(c, s, login.clone()).await;
        rows.push(row(
            "W4 Login",
            &figures,
            Some(("argon2 ceiling", argon2_ceiling)),
        ));
    }
    if cli.wants("w5") {
        // Readers while logins flood the same core.
        let flood = tokio::spawn(drive(c, s + 1, login));
        let figures = drive(c, s, get_post(true)).await;
        let _ = flood.await;
        rows.push(row("W5 GetPost during a Login flood", &figures, None));
        if let Some(w1) = &w1 {
            rows.push(format!(
                "W5 p99 / W1 p99 = {:.2}",
                figures.p99.as_secs_f64() / w1.p99.as_secs_f64().max(1e-9)
            ));
        }
    }

    println!("\n### {label}\n");
    println!("| workload | calls ok | calls/s | p50 ms | p99 ms | errors | ratio |");
    println!("|---|---|---|---|---|---|---|");
    println!("{}", row("W0 no-op (bare tonic)", w0, None));
    let (table, notes): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.starts_with('|'));
    for line in table {
        println!("{line}");
    }
    println!();
    for note in notes {
        println!("- {note}");
    }
    for server in [&auth, &posts] {
        println!(
            "- {} peak RSS: {:.1} MiB",
            server.name,
            server.peak_rss_mib()
        );
    }
    drop(posts);
    drop(auth);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

async fn noop_server(addr: SocketAddr) -> anyhow::Result<()> {
    let config = shared::config::CommonConfig {
        token_issuer: "bench".into(),
        token_audience: "bench".into(),
        token_leeway_secs: 0,
        access_token_ttl_secs: 900,
        internal_token: None,
        internal_token_file: None,
        data_dir: std::env::temp_dir(),
        reflection: false,
        request_timeout_secs: 30,
        max_concurrent_calls: 100_000,
        max_connection_age_secs: 1800,
        connection_idle_timeout_secs: 75,
        keepalive_interval_secs: 30,
        log_format: shared::config::LogFormat::Human,
    };
    let (_, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    shared::server::builder(&config, Arc::new(shared::observe::Metrics::new()), None)?
        .add_service(health)
        .serve_with_incoming_shutdown(
            shared::conn::incoming(listener, config.connection_idle_timeout()),
            shared::server::shutdown_signal(),
        )
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(addr) = cli.noop_server {
        return noop_server(addr).await;
    }

    let verify = argon2_verify_time();
    // The server budget is one core: one verification at a time.
    let argon2_ceiling = 1.0 / verify.as_secs_f64();
    println!("## blog-bench\n");
    println!(
        "{} calls in flight, {} s measured per workload after 1 s of warm-up; servers pinned to core {}.",
        cli.concurrency, cli.seconds, cli.server_core
    );
    println!(
        "argon2id (m=19456, t=2, p=1) verification: {:.1} ms, so one core's Login ceiling is {:.1}/s.",
        verify.as_secs_f64() * 1e3,
        argon2_ceiling
    );

    let w0_addr = free_addr();
    let bench = cli.bin_dir.join("blog-bench");
    let w0_server = spawn_pinned(
        &cli,
        "no-op server",
        bench.to_str().context("binary path")?,
        &["--noop-server", &w0_addr.to_string()],
        &[],
    )?;
    let w0_channel = channel(w0_addr).await?;
    let w0 = drive(cli.concurrency, cli.seconds, move |_| {
        let mut client = HealthClient::new(w0_channel.clone());
        async move {
            client
                .check(HealthCheckRequest::default())
                .await
                .map(|_| ())
        }
    })
    .await;
    drop(w0_server);

    let sqlite_dir = std::env::temp_dir().join(format!("blog-bench-sqlite-{}", std::process::id()));
    let urls = (
        format!("sqlite://{}/auth.db", sqlite_dir.display()),
        format!("sqlite://{}/posts.db", sqlite_dir.display()),
    );
    run_backend(&cli, "SQLite", urls, &w0, argon2_ceiling).await?;
    let _ = std::fs::remove_dir_all(&sqlite_dir);

    if let Some(base) = &cli.postgres {
        use sqlx::Connection;
        let suffix = std::process::id();
        let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres")).await?;
        let names = (
            format!("bench_auth_{suffix}"),
            format!("bench_posts_{suffix}"),
        );
        for name in [&names.0, &names.1] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await?;
        }
        let result = run_backend(
            &cli,
            "PostgreSQL",
            (format!("{base}/{}", names.0), format!("{base}/{}", names.1)),
            &w0,
            argon2_ceiling,
        )
        .await;
        for name in [&names.0, &names.1] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
        }
        result?;
    }
    Ok(())
}
