//! The auth-service's settings: one struct, read once from flags and the
//! environment (DESIGN §5) and passed down.

use std::{net::SocketAddr, time::Duration};

use shared::config::CommonConfig;

/// Settings of the auth-service alone.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// Address the gRPC server listens on.
    #[arg(long, env = "AUTH_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub auth_listen_addr: SocketAddr,
    /// `postgres://…` or `sqlite://…` (an SQLite file is created if missing).
    #[arg(
        long,
        env = "AUTH_DATABASE_URL",
        default_value = "sqlite://data/auth.db",
        hide_env_values = true
    )]
    pub auth_database_url: String,
    /// Base of absolute `avatar_url`s served by this service.
    #[arg(long, env = "AUTH_PUBLIC_URL", default_value = "http://127.0.0.1:8081")]
    pub auth_public_url: String,
    /// Absolute lifetime of a session and its refresh tokens, in seconds.
    #[arg(long, env = "SESSION_TTL_SECS", default_value_t = 30 * 24 * 60 * 60)]
    pub session_ttl_secs: u64,
    /// Longest wait for a database connection before answering UNAVAILABLE.
    #[arg(long, env = "AUTH_DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 5)]
    pub auth_db_acquire_timeout_secs: u64,
}

/// Everything the auth-service reads.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "auth-service",
    version,
    about = "Users, passwords, sessions and token signing for the blog"
)]
pub struct Config {
    /// The service's own settings.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Settings shared with the posts-service.
    #[command(flatten)]
    pub common: CommonConfig,
}

impl AuthConfig {
    /// Absolute lifetime of a session.
    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(self.session_ttl_secs)
    }

    /// Longest wait for a database connection.
    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_db_acquire_timeout_secs)
    }
}
