//! `auth-service`: reads its settings and serves until SIGTERM or SIGINT.
//! `auth-service healthcheck` instead asks the running service for its health
//! (exit status 0 when serving), for container health checks;
//! `auth-service keys rotate|list` rotates or lists the signing keys.

use shared::cli::{Cli, check_health};

/// `auth-service keys rotate|list`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "auth-service keys",
    about = "Rotate or list the token signing keys"
)]
struct KeysCli {
    /// What to do.
    #[command(subcommand)]
    action: auth_service::KeysAction,
    /// The settings (the database, `JWKS_REFRESH_SECS`).
    #[command(flatten)]
    config: auth_service::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("keys") {
        let cli = <KeysCli as clap::Parser>::parse_from(std::env::args().skip(1));
        return auth_service::keys_command(&cli.config, cli.action).await;
    }
    let cli = Cli::<auth_service::Config>::parse_as(
        "auth-service",
        "Users, passwords, sessions and token signing for the blog",
    );
    let healthcheck = cli.is_healthcheck();
    let config = cli.settings;
    if healthcheck {
        check_health(&[config.auth.auth_listen_addr]).await;
        return Ok(());
    }
    shared::config::init_tracing(config.common.log_format);
    let app = auth_service::Application::build(config).await?;
    app.run(shared::server::shutdown_signal()).await
}
