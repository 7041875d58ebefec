//! Settings both services share, read from flags or the environment
//! (listed in the README). Each service's own settings live in its crate.

use std::{path::PathBuf, time::Duration};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Settings common to both services.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    /// The `iss` of access tokens.
    #[arg(long, env = "TOKEN_ISSUER", default_value = "blog-auth")]
    pub token_issuer: String,
    /// The `aud` of access tokens.
    #[arg(long, env = "TOKEN_AUDIENCE", default_value = "blog")]
    pub token_audience: String,
    /// Tolerated clock skew when checking token times, in seconds (at most 30).
    #[arg(long, env = "TOKEN_LEEWAY_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=30))]
    pub token_leeway_secs: u64,
    /// Lifetime of an access token, in seconds. The auth-service issues
    /// tokens this long; the posts-service keeps revocations this long.
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 15 * 60)]
    pub access_token_ttl_secs: u64,
    /// Shared secret guarding the internal event stream. When unset, one is
    /// generated once under the data directory, which suits a local stack only.
    #[arg(long, env = "INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<String>,
    /// A file holding the internal token (a mounted secret), used when
    /// `INTERNAL_TOKEN` is unset.
    #[arg(long, env = "INTERNAL_TOKEN_FILE")]
    pub internal_token_file: Option<PathBuf>,
    /// Where local state lives (SQLite files, the generated internal token).
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Serve gRPC server reflection. Switch off in production.
    #[arg(long, env = "GRPC_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,
    /// Longest time one call may take, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// How long a client has to send its request message once it has sent
    /// the call's headers, in seconds (a large message gets a second more
    /// per 64 KiB that arrives). A call past it is answered
    /// DEADLINE_EXCEEDED.
    #[arg(long, env = "REQUEST_MESSAGE_TIMEOUT_SECS", default_value_t = 10)]
    pub request_message_timeout_secs: u64,
    /// Most calls whose handlers run at once in this process; beyond it
    /// calls are refused at once with RESOURCE_EXHAUSTED rather than queued.
    #[arg(long, env = "MAX_CONCURRENT_CALLS", default_value_t = 1024)]
    pub max_concurrent_calls: usize,
    /// Connections are closed (gracefully) after this many seconds, so
    /// clients rebalance across replicas.
    #[arg(long, env = "MAX_CONNECTION_AGE_SECS", default_value_t = 1800)]
    pub max_connection_age_secs: u64,
    /// Seconds between the server's HTTP/2 keepalive pings; a peer that does
    /// not answer one within 10 s is disconnected.
    #[arg(long, env = "KEEPALIVE_INTERVAL_SECS", default_value_t = 30)]
    pub keepalive_interval_secs: u64,
    /// A connection that sends nothing for this many seconds is closed.
    /// Keep it above 30: healthy clients answer the server's keepalive pings,
    /// sent every 30 s.
    #[arg(long, env = "CONNECTION_IDLE_TIMEOUT_SECS", default_value_t = 75)]
    pub connection_idle_timeout_secs: u64,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
}

impl CommonConfig {
    /// The internal token: `INTERNAL_TOKEN`, else the contents of
    /// `INTERNAL_TOKEN_FILE`, else one generated under the data directory.
    pub fn internal_token(&self) -> std::io::Result<String> {
        if self.internal_token.is_none()
            && let Some(path) = &self.internal_token_file
        {
            let token = std::fs::read_to_string(path)?.trim().to_owned();
            if token.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is empty", path.display()),
                ));
            }
            return Ok(token);
        }
        crate::secret::internal_token(self.internal_token.as_deref(), &self.data_dir)
    }

    /// Tolerated clock skew.
    pub fn token_leeway(&self) -> Duration {
        Duration::from_secs(self.token_leeway_secs)
    }

    /// Time between keepalive pings.
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.keepalive_interval_secs.max(1))
    }

    /// How long a silent connection is kept.
    pub fn connection_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.connection_idle_timeout_secs.max(1))
    }

    /// Lifetime of an access token.
    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.access_token_ttl_secs)
    }

    /// How long a request message may take to arrive.
    pub fn request_message_timeout(&self) -> Duration {
        Duration::from_secs(self.request_message_timeout_secs.max(1))
    }

    /// Longest time one call may take.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// PEM files that make a server speak TLS, and optionally demand client
/// certificates (mutual TLS).
#[derive(Debug, Clone, Default)]
pub struct ServerTlsFiles {
    /// The server's certificate chain.
    pub cert: Option<PathBuf>,
    /// The server's private key.
    pub key: Option<PathBuf>,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// The TLS settings, or `None` for plaintext.
    pub fn load(&self) -> std::io::Result<Option<tonic::transport::ServerTlsConfig>> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let (cert, key) = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => (std::fs::read(cert)?, std::fs::read(key)?),
            (None, None) => return Ok(None),
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a TLS certificate needs its key, and a key its certificate",
                ));
            }
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(std::fs::read(ca)?));
        }
        Ok(Some(tls))
    }
}

/// Starts the global `tracing` subscriber: `RUST_LOG` filters (default
/// `info`), lines in `format`. Calling it again is harmless.
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
