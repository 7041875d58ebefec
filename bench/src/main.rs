//! `blog-bench`: drives the blog services, started from their release
//! binaries, over real gRPC with a fixed number of calls in flight, and
//! prints throughput and latency for each workload next to two ceilings
//! measured in the same run: a bare tonic server (W0) and argon2 (W4). W6
//! loads the website's home page, next to the `ListPosts` call under it (W2).
//!
//! The servers are pinned to one core (`taskset -c 0`) and the load
//! generator should run on the other (`bench/run.sh` does both), so ratios
//! mean something on a two-core machine. Every response's status is checked:
//! a refused call is counted as an error, never as throughput.
//!
//! `blog-bench --noop-server ADDR` is the W0 server: `grpc.health.v1` alone
//! on a bare tonic server (tonic's defaults, the services' runtime, none of
//! the project's code), the ceiling every ratio is taken against.
//! `--layered-noop-server ADDR` is W0': the same no-op through the services'
//! own server (observation, admission, connection limits), so the cost of
//! those layers is a figure of its own.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use proto::{
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

use crate::statements::Statements;

/// What to run.
#[derive(Debug, Parser)]
struct Cli {
    /// Serve the W0 no-op server (bare tonic) on this address instead of
    /// benchmarking.
    #[arg(long)]
    noop_server: Option<SocketAddr>,
    /// Serve the W0' no-op server (the services' layers) on this address
    /// instead of benchmarking.
    #[arg(long)]
    layered_noop_server: Option<SocketAddr>,
    /// Print one argon2 verification's time in microseconds, the mean over
    /// `--seconds` of hashing, and exit (run pinned to the servers' core, as
    /// the W4 ceiling).
    #[arg(long)]
    argon2_probe: bool,
    /// With `--argon2-probe`: hash as the service's hashing threads do, at
    /// their lower priority and offering the core back every turn.
    #[arg(long, requires = "argon2_probe")]
    in_turns: bool,
    /// Directory of the release binaries (`blog`, `blog-bench`).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Rounds per workload: each alternates with its reference (W0, or W1
    /// for W5) and the ratios are medians over rounds. W0' takes three
    /// times as many.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Calls in flight per workload.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds per workload (after one second of warm-up).
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Also run against this PostgreSQL server (databases are created).
    #[arg(long)]
    postgres: Option<String>,
    /// The core the servers are pinned to.
    #[arg(long, default_value = "0")]
    server_core: String,
    /// The core a local PostgreSQL's processes are pinned to while the
    /// bench runs against it: off the servers' core (with two cores, it
    /// shares the load generator's).
    #[arg(long, default_value = "1")]
    postgres_core: String,
    /// Measure cost against data size instead (`sizes.rs`): 10^3 to
    /// 10^6 posts, bulk-loaded; SVG curves are written to `--plots`.
    #[arg(long)]
    sizes: bool,
    /// The largest size `--sizes` loads.
    #[arg(long, default_value_t = 1_000_000)]
    sizes_max: i64,
    /// Draw `bench/history.csv` (the W0-W5 ratios over the changes) and
    /// exit.
    #[arg(long)]
    history: bool,
    /// Where the SVG charts go.
    #[arg(long, default_value = "bench/plots")]
    plots: PathBuf,
    /// Run only these workloads (e.g. `w2,w3`), to profile one at a time;
    /// the servers' process ids are printed so `perf record -p` can attach.
    /// W0 always runs: it is the others' reference.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Workload>,
}

/// A workload that `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    W1,
    W2,
    W3,
    W4,
    W5,
    W6,
}

impl Cli {
    /// Whether `workload` is to run.
    fn wants(&self, workload: Workload) -> bool {
        self.only.is_empty() || self.only.contains(&workload)
    }
}

/// A bearer token as request metadata.
type Bearer = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// `message` as a request carrying `bearer`.
fn authorized<T>(message: T, bearer: &Bearer) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

/// The figures of one workload.
#[derive(Debug, Clone, Default)]
struct Figures {
    ok: u64,
    errors: u64,
    /// Every call made, the warm-up's included.
    made: u64,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

impl Figures {
    fn from(mut latencies: Vec<Duration>, errors: u64, made: u64, elapsed: Duration) -> Self {
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
            made,
            per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// An HTTP/1.1 client for the website, keeping connections alive.
type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// A page as `(status, Set-Cookie, body)`.
async fn fetch(
    client: &HttpClient,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<(http::StatusCode, Option<String>, String), tonic::Status> {
    use http_body_util::BodyExt;
    let response = client
        .request(request)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let status = response.status();
    let cookie = response
        .headers()
        .get(http::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .to_bytes();
    Ok((status, cookie, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET {base}{path}` with `cookie`; anything but 200 is an error.
async fn get_page(
    client: &HttpClient,
    base: &str,
    path: &str,
    cookie: Option<&str>,
) -> Result<String, tonic::Status> {
    let mut request = http::Request::get(format!("{base}{path}"));
    if let Some(cookie) = cookie {
        request = request.header(http::header::COOKIE, cookie);
    }
    let request = request.body(Default::default()).expect("a request");
    match fetch(client, request).await? {
        (http::StatusCode::OK, _, body) => Ok(body),
        (status, _, _) => Err(tonic::Status::unknown(format!("HTTP {status}"))),
    }
}

/// Logs in through the website's form; returns the session cookie.
async fn web_login(
    client: &HttpClient,
    base: &str,
    name: &str,
    password: &str,
) -> anyhow::Result<String> {
    let request = http::Request::get(format!("{base}/login")).body(Default::default())?;
    let (_, cookie, body) = fetch(client, request).await?;
    let cookie = cookie.context("no session cookie")?;
    let marker = r#"name="csrf_token" value=""#;
    let start = body.find(marker).context("no login form")? + marker.len();
    let csrf = body[start..].split('"').next().unwrap_or_default();
    let form = format!(
        "csrf_token={csrf}&username_or_email={name}&password={}",
        password.replace(' ', "+")
    );
    let request = http::Request::post(format!("{base}/login"))
        .header(http::header::COOKIE, cookie)
        .header(http::header::ORIGIN, base)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(http_body_util::Full::new(bytes::Bytes::from(form)))?;
    match fetch(client, request).await? {
        (http::StatusCode::SEE_OTHER, Some(cookie), _) => Ok(cookie),
        (status, _, body) => bail!("logging in through the website: HTTP {status}: {body}"),
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
                let mut first_error = None;
                let mut made = 0u64;
                let mut i = worker;
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    let result = call(i).await;
                    made += 1;
                    i += concurrency;
                    if began < start {
                        continue;
                    }
                    match result {
                        Ok(()) => latencies.push(began.elapsed()),
                        Err(status) => {
                            errors += 1;
                            first_error.get_or_insert(status);
                        }
                    }
                }
                (latencies, errors, first_error, made)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut made = 0;
    for task in tasks {
        let (l, e, first, m) = task.await.expect("a load task");
        latencies.extend(l);
        errors += e;
        made += m;
        first_error = first_error.or(first);
    }
    // On stderr, beside the servers' process ids: what failed, to look into.
    if let Some(status) = first_error {
        eprintln!(
            "{errors} calls failed; the first: {:?}: {}",
            status.code(),
            status.message()
        );
    }
    Figures::from(latencies, errors, made, Duration::from_secs(seconds))
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    name: &'static str,
}

mod chart;
mod sizes;
mod statements;

impl Server {
    /// Resident memory of the process's own (anonymous) pages now, in MiB:
    /// what it allocated, without the database file pages SQLite maps,
    /// which the kernel's page cache holds either way.
    fn rss_mib(&self) -> f64 {
        self.status_mib("RssAnon:")
    }

    /// Resident file pages now (SQLite's memory-mapped database), in MiB.
    fn file_rss_mib(&self) -> f64 {
        self.status_mib("RssFile:")
    }

    /// Peak resident memory, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    /// A `/proc/PID/status` figure given in kB, in MiB.
    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
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

/// One argon2 verification's time on the servers' core, now: a probe
/// process pinned there, so the ceiling is measured on the same core, under
/// the same conditions, as the logins it is compared with, and over as many
/// seconds as they are.
fn argon2_time_on_server_core(cli: &Cli, in_turns: bool) -> anyhow::Result<Duration> {
    let bench = cli.bin_dir.join("blog-bench");
    let mut command = Command::new("taskset");
    command
        .arg("-c")
        .arg(&cli.server_core)
        .arg(&bench)
        .arg("--argon2-probe")
        .arg("--seconds")
        .arg(cli.seconds.to_string());
    if in_turns {
        command.arg("--in-turns");
    }
    let output = command.output().context("running the argon2 probe")?;
    if !output.status.success() {
        bail!(
            "the argon2 probe failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let micros: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("the argon2 probe's answer")?;
    Ok(Duration::from_micros(micros))
}

/// A workload's call, boxed so that different workloads share a type.
type Call = Arc<
    dyn Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>
        + Send
        + Sync,
>;

fn call<F, Fut>(f: F) -> Call
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

/// Times each of `calls` in turn, and that `rounds` times over: the figures
/// of every round, per call. This machine's speed drifts within a run; a
/// ratio taken within one round compares like with like, and the median over
/// rounds drops the round a neighbour spoiled.
async fn alternate(
    concurrency: usize,
    seconds: u64,
    rounds: usize,
    calls: &[Call],
) -> Vec<Vec<Figures>> {
    let mut figures = vec![Vec::new(); calls.len()];
    for _ in 0..rounds {
        for (k, call) in calls.iter().enumerate() {
            let call = call.clone();
            figures[k].push(drive(concurrency, seconds, move |i| call(i)).await);
        }
    }
    figures
}

/// [`alternate`], with what the posts database ran for `workload` (the
/// calls after the first, W0, which touches no database) recorded in
/// `statements`.
async fn alternate_profiled(
    statements: &mut Statements,
    workload: &str,
    (concurrency, seconds, rounds): (usize, u64, usize),
    calls: &[Call],
) -> anyhow::Result<Vec<Vec<Figures>>> {
    statements.reset().await?;
    let runs = alternate(concurrency, seconds, rounds, calls).await;
    let made = runs[1..].iter().flatten().map(|f| f.made).sum();
    statements.record(workload, made).await?;
    Ok(runs)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Each figure's median over rounds (calls and errors are summed).
fn median_figures(rounds: &[Figures]) -> Figures {
    let of = |f: fn(&Figures) -> f64| median(rounds.iter().map(f).collect());
    Figures {
        ok: rounds.iter().map(|r| r.ok).sum(),
        errors: rounds.iter().map(|r| r.errors).sum(),
        made: rounds.iter().map(|r| r.made).sum(),
        per_second: of(|r| r.per_second),
        p50: Duration::from_secs_f64(of(|r| r.p50.as_secs_f64())),
        p99: Duration::from_secs_f64(of(|r| r.p99.as_secs_f64())),
    }
}

/// The median over rounds of `f(b) / f(a)`, each round's pair taken together.
fn median_ratio(a: &[Figures], b: &[Figures], f: fn(&Figures) -> f64) -> f64 {
    median(
        a.iter()
            .zip(b)
            .map(|(a, b)| f(b) / f(a).max(1e-12))
            .collect(),
    )
}

/// Rows for a workload timed in alternation with W0 (`runs[0]`): W0's
/// figures, then each workload's with its ratio to W0.
fn rows_against_w0(label: &str, runs: &[Vec<Figures>], names: &[&str]) -> Vec<String> {
    let mut rows = vec![row(
        &format!("W0 no-op (bare tonic), with {label}"),
        &median_figures(&runs[0]),
        None,
    )];
    for (name, figures) in names.iter().zip(&runs[1..]) {
        let ratio = median_ratio(&runs[0], figures, |f| f.per_second);
        rows.push(row(
            name,
            &median_figures(figures),
            Some(format!("{ratio:.2} x W0")),
        ));
    }
    rows
}

/// `values` with one decimal each, comma-separated.
fn one_decimal(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn row(name: &str, figures: &Figures, ratio: Option<String>) -> String {
    let ratio = ratio.unwrap_or_default();
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
    w0_channel: &Channel,
) -> anyhow::Result<()> {
    let blog = cli.bin_dir.join("blog");
    let blog = blog.to_str().context("binary path")?;
    let data = std::env::temp_dir().join(format!("blog-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let (auth_addr, posts_addr, web_addr) = (free_addr(), free_addr(), free_addr());
    // What PostgreSQL runs for the posts-service's workloads.
    let mut statements = if urls.1.starts_with("postgres") {
        Statements::of(&urls.1).await
    } else {
        Statements::off()
    };
    let common = vec![
        ("INTERNAL_TOKEN", "bench-internal-token".to_owned()),
        ("DATA_DIR", data.display().to_string()),
        ("AUTH_LISTEN_ADDR", auth_addr.to_string()),
        ("AUTH_HTTP_ADDR", free_addr().to_string()),
        ("POSTS_LISTEN_ADDR", posts_addr.to_string()),
        ("POSTS_HTTP_ADDR", free_addr().to_string()),
        ("AUTH_SERVICE_URL", format!("http://{auth_addr}")),
        ("POSTS_SERVICE_URL", format!("http://{posts_addr}")),
        ("WEB_HTTP_ADDR", web_addr.to_string()),
        // A run outlasts the default 15 minutes: W6' keeps one session.
        ("ACCESS_TOKEN_TTL_SECS", "86400".to_owned()),
        ("AUTH_DATABASE_URL", urls.0),
        ("POSTS_DATABASE_URL", urls.1),
        ("MAX_CONCURRENT_CALLS", "100000".to_owned()),
        // The workloads write as one user as fast as they can: the
        // per-user write quota would measure itself.
        ("POST_WRITES_PER_HOUR", "1000000000".to_owned()),
        ("POST_WRITE_BURST", "1000000".to_owned()),
        // W4 logs in as one user from one address, 32 at a time. A guess is
        // counted against the budgets until its answer, so with the default
        // five free guesses, once hashes took 40 ms (a slow day on this
        // host), the calls queued behind them were refused by the thousand:
        // W4 measured the guess budget, not hashing.
        ("LOGIN_FREE_FAILURES", "1000000".to_owned()),
        ("LOGIN_ACCOUNT_FREE_FAILURES", "1000000".to_owned()),
        ("LOGIN_ADDRESS_FREE_FAILURES", "1000000".to_owned()),
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
    let web = if cli.wants(Workload::W6) {
        Some(spawn_pinned(cli, "web", blog, &[], &with("web"))?)
    } else {
        None
    };

    // A user, a token, and 200 posts to read.
    let password = "benchmark password 1";
    let bearer = bench_user(&auth_channel, password).await?;
    let mut ids = Vec::new();
    for i in 0..200 {
        let request = authorized(
            CreatePostRequest {
                title: format!("Post {i}"),
                content: "Some words about benchmarks.".into(),
            },
            &bearer,
        );
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
            let message = GetPostRequest {
                id: ids[i % ids.len()],
            };
            let request = if with_token {
                authorized(message, &bearer)
            } else {
                Request::new(message)
            };
            async move { client.get_post(request).await.map(|_| ()) }
        }
    };
    let mut rows = Vec::new();
    let r = cli.rounds;
    let w0 = health_check(w0_channel);
    let rate = |f: &Figures| f.per_second;
    let p99 = |f: &Figures| f.p99.as_secs_f64();
    // Each workload alternates with W0, its ceiling, round by round.
    if cli.wants(Workload::W1) {
        let runs = alternate_profiled(
            &mut statements,
            "W1 GetPost",
            (c, s, r),
            &[w0.clone(), call(get_post(true)), call(get_post(false))],
        )
        .await?;
        rows.extend(rows_against_w0(
            "W1",
            &runs,
            &["W1 GetPost, token", "W1' GetPost, no token"],
        ));
        rows.push(format!(
            "W1 / W1' = {:.2} (authentication's cost; median of per-round ratios)",
            median_ratio(&runs[2], &runs[1], rate)
        ));
    }
    if cli.wants(Workload::W2) {
        let list = list_first_page(&posts_channel);
        let runs = alternate_profiled(
            &mut statements,
            "W2 ListPosts",
            (c, s, r),
            &[w0.clone(), list],
        )
        .await?;
        rows.extend(rows_against_w0("W2", &runs, &["W2 ListPosts (10)"]));
    }
    if cli.wants(Workload::W3) {
        let create = create_post(&posts_channel, &bearer, "Bench");
        let runs = alternate_profiled(
            &mut statements,
            "W3 CreatePost",
            (c, s, r),
            &[w0.clone(), create],
        )
        .await?;
        rows.extend(rows_against_w0("W3", &runs, &["W3 CreatePost"]));
    }
    if cli.wants(Workload::W6) {
        let base = format!("http://{web_addr}");
        let client: HttpClient =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let mut ready = false;
        for _ in 0..100 {
            if get_page(&client, &base, "/", None).await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !ready {
            bail!("the website never answered");
        }
        let cookie = Arc::new(web_login(&client, &base, "bench", password).await?);
        let list = list_first_page(&posts_channel);
        let home = |logged_in: bool| {
            let (client, base, cookie) = (client.clone(), base.clone(), cookie.clone());
            call(move |_| {
                let (client, base, cookie) = (client.clone(), base.clone(), cookie.clone());
                async move {
                    let cookie = logged_in.then_some(cookie.as_str());
                    let body = get_page(&client, &base, "/", cookie).await?;
                    if logged_in && !body.contains("Log out") {
                        return Err(tonic::Status::unauthenticated("not logged in"));
                    }
                    Ok(())
                }
            })
        };
        let runs = alternate(c, s, r, &[list, home(false), home(true)]).await;
        rows.push(row(
            "W2 ListPosts (10), W6's reference",
            &median_figures(&runs[0]),
            None,
        ));
        rows.push(row(
            "W6 home page, anonymous",
            &median_figures(&runs[1]),
            Some(format!(
                "{:.2} x W2",
                median_ratio(&runs[0], &runs[1], rate)
            )),
        ));
        rows.push(row(
            "W6' home page, logged in",
            &median_figures(&runs[2]),
            Some(format!(
                "{:.2} x W2",
                median_ratio(&runs[0], &runs[2], rate)
            )),
        ));
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
    if cli.wants(Workload::W4) {
        // Each round times the ceiling on the logins' core just before and
        // just after them, each probe hashing as long as the logins run, and
        // takes the faster: the ceiling is what the core can do at its best,
        // so the ratio errs against the service.
        let mut runs = Vec::new();
        let mut ratios = Vec::new();
        let mut ceilings = Vec::new();
        let mut in_turns = Vec::new();
        for _ in 0..r {
            let before = argon2_time_on_server_core(cli, false)?;
            let figures = drive(c, s, login.clone()).await;
            let after = argon2_time_on_server_core(cli, false)?;
            let verify = before.min(after).as_secs_f64();
            ratios.push(figures.per_second * verify);
            ceilings.push(1.0 / verify);
            runs.push(figures);
            // Not the ceiling: what the core gives hashes run as the
            // service runs them, to tell that cost from the login's own.
            in_turns.push(1.0 / argon2_time_on_server_core(cli, true)?.as_secs_f64());
        }
        rows.push(row(
            "W4 Login",
            &median_figures(&runs),
            Some(format!("{:.2} x argon2 ceiling", median(ratios))),
        ));
        rows.push(format!(
            "W4 ceiling (one argon2 verification at a time on the servers' core), per round: {} logins/s",
            one_decimal(&ceilings)
        ));
        rows.push(format!(
            "W4 hashes at the hashing threads' priority and turns, per round (not the ceiling): {} logins/s",
            one_decimal(&in_turns)
        ));
    }
    if cli.wants(Workload::W5) {
        // Readers alone, then readers while logins flood the same core,
        // round by round.
        let readers = call(get_post(true));
        let mut alone = Vec::new();
        let mut during = Vec::new();
        for _ in 0..r {
            alone.push(
                drive(c, s, {
                    let readers = readers.clone();
                    move |i| readers(i)
                })
                .await,
            );
            let flood = tokio::spawn(drive(c, s + 1, login.clone()));
            during.push(
                drive(c, s, {
                    let readers = readers.clone();
                    move |i| readers(i)
                })
                .await,
            );
            let _ = flood.await;
        }
        rows.push(row(
            "W1 alone (W5's reference)",
            &median_figures(&alone),
            None,
        ));
        rows.push(row(
            "W5 GetPost during a Login flood",
            &median_figures(&during),
            Some(format!(
                "p99 {:.2} x W1",
                median_ratio(&alone, &during, p99)
            )),
        ));
    }

    println!("\n### {label}\n");
    println!("| workload | calls ok | calls/s | p50 ms | p99 ms | errors | ratio |");
    println!("|---|---|---|---|---|---|---|");
    let (table, notes): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.starts_with('|'));
    for line in table {
        println!("{line}");
    }
    println!();
    for note in notes {
        println!("- {note}");
    }
    for server in [Some(&auth), Some(&posts), web.as_ref()]
        .into_iter()
        .flatten()
    {
        println!(
            "- {} peak RSS: {:.1} MiB",
            server.name,
            server.peak_rss_mib()
        );
    }
    if !statements.tables().is_empty() {
        println!("\n### {label}: the posts database's statements, per workload\n");
        println!(
            "From `pg_stat_statements`, reset before each workload; calls per RPC counts the \
             warm-up's RPCs too, as the server saw them."
        );
        for table in statements.tables() {
            print!("{table}");
        }
    }
    drop(web);
    drop(posts);
    drop(auth);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// W0: tonic as it comes, serving the health protocol, nothing else.
async fn noop_server(addr: SocketAddr) -> anyhow::Result<()> {
    let (_, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .add_service(health)
        .serve(addr)
        .await?;
    Ok(())
}

/// W0': the same through the services' own server and its layers, with
/// their logging set up as theirs is (the bench's `RUST_LOG` filters it):
/// without a subscriber, `tracing` would hand every span to `log`, work a
/// service never does.
async fn layered_noop_server(addr: SocketAddr) -> anyhow::Result<()> {
    let config = shared::config::CommonConfig {
        max_concurrent_calls: 100_000,
        reflection: false,
        ..shared::config::CommonConfig::defaults()
    };
    shared::config::init_tracing(config.log_format);
    let (_, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    shared::server::builder(&config, Arc::new(shared::observe::Metrics::new()), None)?
        .add_service(health)
        .serve_with_incoming_shutdown(
            shared::conn::incoming(listener, config.connection_idle_timeout),
            shared::server::shutdown_signal(),
        )
        .await?;
    Ok(())
}

/// `--history`: the ratios to W0 recorded in `bench/history.csv` (one line
/// per measured change: its label, then W1, W2 and W3 on SQLite), drawn.
fn history(cli: &Cli) -> anyhow::Result<()> {
    let csv = std::fs::read_to_string("bench/history.csv").context("reading bench/history.csv")?;
    let mut lines = csv
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .context("an empty history")?
        .split(',')
        .collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let labels = rows.iter().map(|r| r[0].to_owned()).collect();
    let series = header[1..]
        .iter()
        .enumerate()
        .map(|(k, name)| chart::Series {
            name: (*name).to_owned(),
            points: rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| Some((i as f64, r.get(k + 1)?.trim().parse().ok()?)))
                .collect(),
        })
        .collect::<Vec<_>>();
    std::fs::create_dir_all(&cli.plots)?;
    let path = cli.plots.join("history.svg");
    std::fs::write(
        &path,
        chart::line_chart(
            "Ratio to W0 over the changes (SQLite)",
            &chart::XAxis::Steps(labels),
            "x W0",
            &series,
        ),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// `--sizes`: the size curves on SQLite, and on PostgreSQL if given.
async fn run_sizes(cli: &Cli) -> anyhow::Result<()> {
    println!("## blog-bench --sizes\n");
    println!(
        "{} calls in flight, {} s measured per workload and size after 1 s of warm-up; servers pinned to core {}.",
        cli.concurrency, cli.seconds, cli.server_core
    );
    let dir = std::env::temp_dir().join(format!("blog-sizes-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let urls = (
        format!("sqlite://{}/auth.db", dir.display()),
        format!("sqlite://{}/posts.db", dir.display()),
    );
    let curves = sizes::run(cli, "SQLite", urls).await;
    let _ = std::fs::remove_dir_all(&dir);
    sizes::report(&curves?, &cli.plots)?;
    if let Some(base) = &cli.postgres {
        let run = PostgresRun::start(base, "sizes", &cli.postgres_core).await?;
        let result = sizes::run(cli, "PostgreSQL", run.urls()).await;
        run.finish().await?;
        sizes::report(&result?, &cli.plots)?;
    }
    Ok(())
}

/// An auth and a posts database made on a PostgreSQL server for one run,
/// with a local server's processes pinned off the servers' core meanwhile.
struct PostgresRun {
    /// The server's URL, without a database.
    base: String,
    /// The auth and posts databases.
    names: (String, String),
    /// The pinning, undone when the run is over.
    _pinned: PinnedPostgres,
}

impl PostgresRun {
    /// Creates the databases (named after `what` and this process) and
    /// pins a local server to `core`.
    async fn start(base: &str, what: &str, core: &str) -> anyhow::Result<Self> {
        use sqlx::Connection;
        let suffix = std::process::id();
        let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres")).await?;
        let names = (
            format!("bench_{what}_auth_{suffix}"),
            format!("bench_{what}_posts_{suffix}"),
        );
        for name in [&names.0, &names.1] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await?;
        }
        Ok(Self {
            base: base.to_owned(),
            names,
            _pinned: PinnedPostgres::to(core),
        })
    }

    /// The auth and posts databases' URLs.
    fn urls(&self) -> (String, String) {
        let base = &self.base;
        (
            format!("{base}/{}", self.names.0),
            format!("{base}/{}", self.names.1),
        )
    }

    /// Drops the databases; the pinning is undone after.
    async fn finish(self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", self.base)).await?;
        for name in [&self.names.0, &self.names.1] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
        }
        Ok(())
    }
}

/// A local PostgreSQL's processes pinned to one core (and so the backends
/// its server forks meanwhile), so that the servers' core is theirs alone;
/// given back every core when dropped.
struct PinnedPostgres {
    /// The processes pinned.
    pids: Vec<String>,
    /// Their affinity before, as a `taskset` mask.
    before: Option<String>,
}

impl PinnedPostgres {
    /// Pins every `postgres` process of this machine to `core`. A server
    /// elsewhere, or one this user may not pin, is left as it is (said on
    /// stderr): the figures are then shared with whatever runs there.
    fn to(core: &str) -> Self {
        let pids: Vec<String> = Command::new("pgrep")
            .args(["-x", "postgres"])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        // "pid 42's current affinity mask: 3"
        let before = pids.first().and_then(|pid| {
            let out = Command::new("taskset").args(["-p", pid]).output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split_whitespace().last().map(str::to_owned)
        });
        let pinned = Self { pids, before };
        let all = pinned.set(&["-c", core]);
        eprintln!(
            "PostgreSQL: {} of {} local processes pinned to core {core}",
            all,
            pinned.pids.len()
        );
        pinned
    }

    /// Sets the pinned processes' cores (`taskset` arguments: `-c` and a
    /// list, or a mask); how many took it.
    fn set(&self, cores: &[&str]) -> usize {
        self.pids
            .iter()
            .filter(|pid| {
                Command::new("taskset")
                    .args(["-a", "-p"])
                    .args(cores)
                    .arg(pid.as_str())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            })
            .count()
    }
}

impl Drop for PinnedPostgres {
    fn drop(&mut self) {
        if let Some(mask) = &self.before {
            self.set(&[mask]);
        }
    }
}

/// Registers the user `bench` with `password` and logs them in: their
/// bearer token.
async fn bench_user(auth: &Channel, password: &str) -> anyhow::Result<Arc<Bearer>> {
    UserServiceClient::new(auth.clone())
        .create_user(CreateUserRequest {
            username: "bench".into(),
            email: "bench@example.com".into(),
            password: password.into(),
        })
        .await?;
    let token = AuthServiceClient::new(auth.clone())
        .login(LoginRequest {
            username_or_email: "bench".into(),
            password: password.into(),
        })
        .await?
        .into_inner()
        .access_token;
    Ok(Arc::new(format!("Bearer {token}").parse()?))
}

/// `CreatePost` with `bearer`; call `i` is titled "`prefix` `i`".
fn create_post(posts: &Channel, bearer: &Arc<Bearer>, prefix: &'static str) -> Call {
    let (posts, bearer) = (posts.clone(), bearer.clone());
    call(move |i| {
        let mut client = PostServiceClient::new(posts.clone());
        let request = authorized(
            CreatePostRequest {
                title: format!("{prefix} {i}"),
                content: "Written under load.".into(),
            },
            &bearer,
        );
        async move { client.create_post(request).await.map(|_| ()) }
    })
}

/// `ListPosts`, the first page of ten, anonymously.
fn list_first_page(posts: &Channel) -> Call {
    let posts = posts.clone();
    call(move |_| {
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
}

/// A `Health/Check` call on `channel`.
fn health_check(channel: &Channel) -> Call {
    let channel = channel.clone();
    call(move |_| {
        let mut client = HealthClient::new(channel.clone());
        async move {
            client
                .check(HealthCheckRequest::default())
                .await
                .map(|_| ())
        }
    })
}

/// W0' against W0: what the services' own server costs a call that does
/// nothing. Two no-ops are the figures this host's swings move most (a
/// round's ratio has ranged from 0.7 to 1.4), so they alternate three times
/// as many rounds as the workloads do.
async fn layers_against_bare(cli: &Cli, bare: &Channel, layered: &Channel) {
    let runs = alternate(
        cli.concurrency,
        cli.seconds,
        cli.rounds * 3,
        &[health_check(bare), health_check(layered)],
    )
    .await;
    println!(
        "
### The ceiling
"
    );
    println!("| workload | calls ok | calls/s | p50 ms | p99 ms | errors | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for line in rows_against_w0("W0'", &runs, &["W0' no-op through the services' layers"]) {
        println!("{line}");
    }
    let spread: Vec<String> = runs[0]
        .iter()
        .zip(&runs[1])
        .map(|(bare, layered)| format!("{:.2}", layered.per_second / bare.per_second))
        .collect();
    println!(
        "
- W0' / W0 per round: {}",
        spread.join(", ")
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.argon2_probe {
        println!(
            "{}",
            auth_service::password::time_one_hash(Duration::from_secs(cli.seconds), cli.in_turns)
                .as_micros()
        );
        return Ok(());
    }
    if let Some(addr) = cli.noop_server {
        return noop_server(addr).await;
    }
    if let Some(addr) = cli.layered_noop_server {
        return layered_noop_server(addr).await;
    }

    if cli.history {
        return history(&cli);
    }
    if cli.sizes {
        return run_sizes(&cli).await;
    }

    println!("## blog-bench\n");
    println!(
        "{} calls in flight, {} s measured per workload after 1 s of warm-up; servers pinned to core {}.",
        cli.concurrency, cli.seconds, cli.server_core
    );
    println!(
        "argon2id (m=19456, t=2, p=1) verification: {:.1} ms on the servers' core at the start; \
         the server budget is that one core, so Login's ceiling is one verification at a time \
         (W4 times it again around its own run).",
        argon2_time_on_server_core(&cli, false)?.as_secs_f64() * 1e3,
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
    let layered_addr = free_addr();
    let layered_server = spawn_pinned(
        &cli,
        "no-op server through the services' layers",
        bench.to_str().context("binary path")?,
        &["--layered-noop-server", &layered_addr.to_string()],
        &[],
    )?;
    let layered_channel = channel(layered_addr).await?;
    layers_against_bare(&cli, &w0_channel, &layered_channel).await;
    drop(layered_server);

    let sqlite_dir = std::env::temp_dir().join(format!("blog-bench-sqlite-{}", std::process::id()));
    let urls = (
        format!("sqlite://{}/auth.db", sqlite_dir.display()),
        format!("sqlite://{}/posts.db", sqlite_dir.display()),
    );
    run_backend(&cli, "SQLite", urls, &w0_channel).await?;
    let _ = std::fs::remove_dir_all(&sqlite_dir);

    if let Some(base) = &cli.postgres {
        let run = PostgresRun::start(base, "w", &cli.postgres_core).await?;
        let result = run_backend(&cli, "PostgreSQL", run.urls(), &w0_channel).await;
        run.finish().await?;
        result?;
    }
    drop(w0_server);
    Ok(())
}
