//! `auth-service`: reads its settings and serves until SIGTERM or SIGINT.
//! `auth-service healthcheck` instead asks the running service for its health
//! (exit status 0 when serving), for container health checks.

use shared::cli::{Cli, check_health};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
