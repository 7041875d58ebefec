//! The posts-service's settings: one struct, read once from flags and the
//! environment (listed in the README) and passed down.

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use shared::config::{CommonConfig, positive_seconds, secret};

/// Settings of the posts-service alone.
#[derive(Debug, Clone, clap::Args)]
pub struct PostsConfig {
    /// Address the gRPC server listens on.
    #[arg(long, env = "POSTS_LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    pub posts_listen_addr: SocketAddr,
    /// Address of the plain HTTP side: health probes and metrics.
    #[arg(long, env = "POSTS_HTTP_ADDR", default_value = "127.0.0.1:8082")]
    pub posts_http_addr: SocketAddr,
    /// `postgres://…` or `sqlite://…` (an SQLite file is created if missing).
    #[arg(
        long,
        env = "POSTS_DATABASE_URL",
        default_value = "sqlite://data/posts.db",
        hide_env_values = true,
        value_parser = secret
    )]
    pub posts_database_url: SecretString,
    /// Where the auth-service answers gRPC.
    #[arg(
        long,
        env = "AUTH_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_service_url: String,
    /// CA (PEM) that signed the auth-service's certificate, for an
    /// `https://` `AUTH_SERVICE_URL`.
    #[arg(long, env = "AUTH_SERVICE_CA_FILE")]
    pub auth_service_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) presented to the auth-service (mutual TLS).
    #[arg(long, env = "POSTS_CLIENT_CERT_FILE")]
    pub posts_client_cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM) of `POSTS_CLIENT_CERT_FILE`.
    #[arg(long, env = "POSTS_CLIENT_KEY_FILE")]
    pub posts_client_key_file: Option<std::path::PathBuf>,
    /// Certificate chain (PEM) for TLS on the gRPC port.
    #[arg(long, env = "POSTS_TLS_CERT_FILE")]
    pub posts_tls_cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM) for `POSTS_TLS_CERT_FILE`.
    #[arg(long, env = "POSTS_TLS_KEY_FILE")]
    pub posts_tls_key_file: Option<std::path::PathBuf>,
    /// Longest wait for a database connection before answering
    /// UNAVAILABLE, in seconds.
    #[arg(long = "posts-db-acquire-timeout-secs", env = "POSTS_DB_ACQUIRE_TIMEOUT_SECS", default_value = "5", value_parser = positive_seconds)]
    pub posts_db_acquire_timeout: Duration,
    /// Post writes (create, update, delete) one user may make per hour once
    /// the burst is spent.
    #[arg(long, env = "POST_WRITES_PER_HOUR", default_value_t = 360)]
    pub post_writes_per_hour: u32,
    /// Post writes one user may make at once.
    #[arg(long, env = "POST_WRITE_BURST", default_value_t = 30)]
    pub post_write_burst: u32,
}

/// Everything the posts-service reads.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "posts-service",
    version,
    about = "Blog posts for the blog backend"
)]
pub struct Config {
    /// The service's own settings.
    #[command(flatten)]
    pub posts: PostsConfig,
    /// Settings shared with the auth-service.
    #[command(flatten)]
    pub common: CommonConfig,
}

impl PostsConfig {
    /// Post writes per user.
    pub fn post_writes(&self) -> shared::limits::Rate {
        shared::limits::Rate::per(
            self.post_writes_per_hour,
            Duration::from_secs(3600),
            self.post_write_burst,
        )
    }

    /// The gRPC port's TLS files.
    pub fn tls(&self) -> shared::config::ServerTlsFiles {
        shared::config::ServerTlsFiles {
            cert: self.posts_tls_cert_file.clone(),
            key: self.posts_tls_key_file.clone(),
            client_ca: None,
        }
    }

    /// TLS for the link to the auth-service, when its URL is `https://`.
    pub fn auth_client_tls(&self) -> std::io::Result<Option<tonic::transport::ClientTlsConfig>> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        if !self.auth_service_url.starts_with("https://") {
            return Ok(None);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.auth_service_ca_file {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(std::fs::read(ca)?)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = shared::config::pem_pair(
            self.posts_client_cert_file.as_deref(),
            self.posts_client_key_file.as_deref(),
        )? {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Ok(Some(tls))
    }
}

impl Config {
    /// Every default, listening on 127.0.0.1 ports chosen by the system,
    /// with local state under `data_dir`: how tests start a service.
    pub fn for_tests(data_dir: std::path::PathBuf) -> Self {
        let mut config: Self = shared::config::defaults();
        let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.posts.posts_listen_addr = any_port;
        config.posts.posts_http_addr = any_port;
        config.posts.posts_database_url =
            format!("sqlite://{}/posts.db", data_dir.display()).into();
        config.common.data_dir = data_dir;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_without_its_key_is_refused_as_on_the_server() {
        let mut config = Config::for_tests(std::env::temp_dir());
        config.posts.auth_service_url = "https://auth:50051".into();
        config.posts.posts_client_cert_file = Some("client.pem".into());
        assert!(config.posts.auth_client_tls().is_err());
        config.posts.posts_client_cert_file = None;
        config.posts.posts_tls_key_file = Some("server.key".into());
        assert!(config.posts.tls().load().is_err());
    }

    #[test]
    fn defaults_come_from_the_settings_themselves() {
        let config: Config = shared::config::defaults();
        assert_eq!(config.common.jwks_refresh, Duration::from_secs(300));
        assert_eq!(config.posts.post_write_burst, 30);
    }
}
