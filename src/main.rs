//! The whole blog backend in one process, for a local stack: each service's
//! library runs on its own port, with SQLite under `./data` and a generated
//! internal token they share (DESIGN §6). In production each service runs
//! from its own binary instead.

use clap::Parser;
use tokio::sync::watch;

/// Settings of every service in the stack.
#[derive(Debug, Parser)]
#[command(
    name = "blog",
    version,
    about = "Runs the blog backend (auth-service and posts-service) in one process"
)]
struct StackConfig {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = StackConfig::parse();
    shared::config::init_tracing(config.common.log_format);

    let auth = auth_service::Application::build(auth_service::Config {
        auth: config.auth,
        common: config.common.clone(),
    })
    .await?;
    let posts = posts_service::Application::build(posts_service::Config {
        posts: config.posts,
        common: config.common,
    })
    .await?;

    // One signal stops every service; each lets its in-flight calls finish.
    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let auth = tokio::spawn(auth.run(until_stopped()));
    let posts = tokio::spawn(posts.run(until_stopped()));

    shared::server::shutdown_signal().await;
    let _ = stop.send(true);
    posts.await??;
    auth.await??;
    Ok(())
}
