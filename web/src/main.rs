//! `web`: the blog's website on its own, for a container or a replica behind
//! a balancer. `cargo run --release` at the top runs it with both services.

use std::path::PathBuf;

use web::{Config, Website, config::WebArgs};

/// The website's command line.
#[derive(Debug, clap::Parser)]
#[command(name = "web", version, about = "Serves the blog's website")]
struct Cli {
    /// The website's own settings.
    #[command(flatten)]
    web: WebArgs,
    /// The auth-service's gRPC address.
    #[arg(
        long,
        env = "AUTH_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    auth_service_url: String,
    /// The site's public address; `https://` makes cookies `Secure`.
    #[arg(long, env = "FRONTEND_URL")]
    frontend_url: Option<String>,
    /// The deployment's internal token: with it, the auth-service counts
    /// its per-address limits per visitor rather than for the website.
    #[arg(long, env = "INTERNAL_TOKEN", hide_env_values = true)]
    internal_token: Option<String>,
    /// A file holding the internal token, used when `INTERNAL_TOKEN` is
    /// unset.
    #[arg(long, env = "INTERNAL_TOKEN_FILE")]
    internal_token_file: Option<PathBuf>,
    /// Where the generated session key is kept when `WEB_SESSION_KEY` is
    /// unset.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = <Cli as clap::Parser>::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config {
        http_addr: cli.web.web_http_addr,
        auth_url: cli.auth_service_url,
        posts_url: cli.web.posts_service_url.clone(),
        session_key: cli.web.session_key(&cli.data_dir)?,
        secure: cli
            .frontend_url
            .is_some_and(|url| url.starts_with("https://")),
        internal_token: match (cli.internal_token, &cli.internal_token_file) {
            (Some(token), _) => Some(token),
            (None, Some(path)) => Some(std::fs::read_to_string(path)?.trim().to_owned()),
            (None, None) => None,
        },
    };
    let site = Website::build(config).await?;
    site.run(web::shutdown_signal()).await
}
