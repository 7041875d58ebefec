//! `posts-service`: reads its settings and serves until SIGTERM or SIGINT.
//! `posts-service healthcheck` instead asks the running service for its health
//! (exit status 0 when serving), for container health checks.

use shared::cli::{Cli, check_health};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::<posts_service::Config>::parse_as(
        "posts-service",
        "Blog posts, written only by their authors",
    );
    let healthcheck = cli.is_healthcheck();
    let config = cli.settings;
    if healthcheck {
        check_health(&[config.posts.posts_listen_addr]).await;
        return Ok(());
    }
    shared::config::init_tracing(config.common.log_format);
    let app = posts_service::Application::build(config).await?;
    app.run(shared::server::shutdown_signal()).await
}
