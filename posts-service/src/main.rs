//! `posts-service`: reads its settings and serves until SIGTERM or SIGINT.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = posts_service::Config::parse();
    shared::config::init_tracing(config.common.log_format);
    let app = posts_service::Application::build(config).await?;
    app.run(shared::server::shutdown_signal()).await
}
