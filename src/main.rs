//! `blog`: the blog backend from one binary. With no arguments it runs the
//! whole stack in one process, each service on its own port, with SQLite
//! under `./data` and a generated internal token they share (see the README).
//! `BLOG_SERVICES=auth` (or `posts`, or `web` for the website) runs one only, which is how the
//! container image runs either; `blog healthcheck` asks the selected services
//! for their health, for container health checks.

use clap::ValueEnum;
use secrecy::ExposeSecret;
use shared::cli::{Cli, check_health};
use tokio::{sync::watch, task::JoinSet};

/// What this process runs, and with what settings.
#[derive(Debug, clap::Args)]
struct Settings {
    /// Which services this process runs.
    #[arg(
        long,
        env = "BLOG_SERVICES",
        value_enum,
        value_delimiter = ',',
        default_value = "auth,posts,web"
    )]
    services: Vec<Service>,
    /// Website settings.
    #[command(flatten)]
    web: web::config::WebArgs,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    /// The auth-service.
    Auth,
    /// The posts-service.
    Posts,
    /// The website.
    Web,
}

/// `blog keys rotate|list`: the auth-service's key rotation, through the
/// launcher (the image's entrypoint).
#[derive(Debug, clap::Parser)]
#[command(name = "blog keys", about = "Rotate or list the token signing keys")]
struct KeysCli {
    /// What to do.
    #[command(subcommand)]
    action: auth_service::KeysAction,
    /// The auth-service's settings.
    #[command(flatten)]
    auth: auth_service::config::AuthConfig,
    /// The shared settings.
    #[command(flatten)]
    common: shared::config::CommonConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("keys") {
        let cli = <KeysCli as clap::Parser>::parse_from(std::env::args().skip(1));
        let config = auth_service::Config {
            auth: cli.auth,
            common: cli.common,
        };
        return auth_service::keys_command(&config, cli.action).await;
    }
    let cli = Cli::<Settings>::parse_as(
        "blog",
        "Runs the blog backend (auth-service and posts-service)",
    );
    let healthcheck = cli.is_healthcheck();
    let settings = cli.settings;
    let runs = |s| settings.services.contains(&s);

    if healthcheck {
        let mut addrs = Vec::new();
        if runs(Service::Auth) {
            addrs.push(settings.auth.auth_listen_addr);
        }
        if runs(Service::Posts) {
            addrs.push(settings.posts.posts_listen_addr);
        }
        check_health(&addrs).await;
        if runs(Service::Web) {
            web::healthcheck(settings.web.web_http_addr).await;
        }
        return Ok(());
    }

    shared::config::init_tracing(settings.common.log_format);
    // One signal stops every service; each lets its in-flight calls finish.
    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let (run_auth, run_posts) = (runs(Service::Auth), runs(Service::Posts));
    let mut running = JoinSet::new();
    let mut auth_settings = settings.auth;
    if runs(Service::Web) {
        // The website's reset links lead to the website, wherever it runs.
        let frontend = auth_settings
            .mail
            .frontend_url
            .get_or_insert_with(|| format!("http://{}", settings.web.web_http_addr))
            .clone();
        // It reaches the services where this process runs them (or where
        // the posts-service would reach the auth-service).
        let auth_url = if run_auth {
            format!("http://{}", auth_settings.auth_listen_addr)
        } else {
            settings.posts.auth_service_url.clone()
        };
        let site = web::Website::build(web::Config {
            http_addr: settings.web.web_http_addr,
            auth_url,
            posts_url: if run_posts {
                format!("http://{}", settings.posts.posts_listen_addr)
            } else {
                settings.web.posts_service_url.clone()
            },
            session_key: settings.web.session_key(&settings.common.data_dir)?,
            secure: frontend.starts_with("https://"),
            internal_token: Some(settings.common.internal_token()?.expose_secret().to_owned()),
        })
        .await?;
        running.spawn(site.run(until_stopped()));
    }
    if run_auth {
        let auth = auth_service::Application::build(auth_service::Config {
            auth: auth_settings,
            common: settings.common.clone(),
        })
        .await?;
        running.spawn(auth.run(until_stopped()));
    }
    if run_posts {
        let posts = posts_service::Application::build(posts_service::Config {
            posts: settings.posts,
            common: settings.common,
        })
        .await?;
        running.spawn(posts.run(until_stopped()));
    }

    // A service that stops on its own (a failed task) stops the others: the
    // process never runs on half-dead.
    let mut outcome = Ok(());
    tokio::select! {
        () = shared::server::shutdown_signal() => {}
        Some(ended) = running.join_next() => {
            outcome = match ended {
                Ok(Ok(())) => Err(anyhow::anyhow!("a service stopped on its own")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("a service panicked: {e}")),
            };
        }
    }
    let _ = stop.send(true);
    while let Some(ended) = running.join_next().await {
        match ended {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "a service failed while stopping"),
            Err(e) => tracing::error!(error = %e, "a service panicked while stopping"),
        }
    }
    outcome
}
