//! `blog`: the blog backend from one binary. With no arguments it runs the
//! whole stack in one process, each service on its own port, with SQLite
//! under `./data` and a generated internal token they share (see the README).
//! `BLOG_SERVICES=auth` (or `posts`) runs one service only, which is how the
//! container image runs either; `blog healthcheck` asks the selected services
//! for their health, for container health checks.

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

/// The blog backend.
#[derive(Debug, Parser)]
#[command(
    name = "blog",
    version,
    about = "Runs the blog backend (auth-service and posts-service)"
)]
struct Cli {
    /// What to do; serving is the default.
    #[command(subcommand)]
    command: Option<Command>,
    /// Which services this process runs.
    #[arg(
        long,
        env = "BLOG_SERVICES",
        value_enum,
        value_delimiter = ',',
        default_value = "auth,posts"
    )]
    services: Vec<Service>,
    /// auth-service settings.
    #[command(flatten)]
    auth: auth_service::config::AuthConfig,
    /// posts-service settings.
    #[command(flatten)]
    posts: posts_service::config::PostsConfig,
    /// Settings both services share.
    #[command(flatten)]
    common: shared::config::CommonConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum Command {
    /// Serve until SIGTERM or SIGINT.
    Serve,
    /// Exit 0 if every selected service reports SERVING, 1 otherwise.
    Healthcheck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    /// The auth-service.
    Auth,
    /// The posts-service.
    Posts,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runs = |s| cli.services.contains(&s);

    if cli.command == Some(Command::Healthcheck) {
        let mut addrs = Vec::new();
        if runs(Service::Auth) {
            addrs.push(cli.auth.auth_listen_addr);
        }
        if runs(Service::Posts) {
            addrs.push(cli.posts.posts_listen_addr);
        }
        for addr in addrs {
            if let Err(e) = shared::server::healthcheck(addr).await {
                eprintln!("unhealthy: {e}");
                std::process::exit(1);
            }
        }
        return Ok(());
    }

    shared::config::init_tracing(cli.common.log_format);
    // One signal stops every service; each lets its in-flight calls finish.
    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let mut running = Vec::new();
    if runs(Service::Auth) {
        let auth = auth_service::Application::build(auth_service::Config {
            auth: cli.auth,
            common: cli.common.clone(),
        })
        .await?;
        running.push(tokio::spawn(auth.run(until_stopped())));
    }
    if runs(Service::Posts) {
        let posts = posts_service::Application::build(posts_service::Config {
            posts: cli.posts,
            common: cli.common,
        })
        .await?;
        running.push(tokio::spawn(posts.run(until_stopped())));
    }

    shared::server::shutdown_signal().await;
    let _ = stop.send(true);
    for service in running.into_iter().rev() {
        service.await??;
    }
    Ok(())
}
