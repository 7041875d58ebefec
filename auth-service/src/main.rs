//! `auth-service`: reads its settings and serves until SIGTERM or SIGINT.
//! `auth-service healthcheck` instead asks the running service for its health
//! (exit status 0 when serving), for container health checks.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    let healthcheck = args.get(1).is_some_and(|a| a == "healthcheck");
    if healthcheck {
        args.remove(1);
    }
    let config = auth_service::Config::parse_from(args);
    if healthcheck {
        if let Err(e) = shared::server::healthcheck(config.auth.auth_listen_addr).await {
            eprintln!("unhealthy: {e}");
            std::process::exit(1);
        }
        return Ok(());
    }
    shared::config::init_tracing(config.common.log_format);
    let app = auth_service::Application::build(config).await?;
    app.run(shared::server::shutdown_signal()).await
}
