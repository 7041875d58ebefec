//! Settings both services share, read from flags or the environment
//! (listed in the README). Each service's own settings live in its crate.
//! Durations are `Duration`s (the settings give seconds), secrets
//! `SecretString`s, and [`defaults`] gives every default from the one place
//! it is written, clap's attributes.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};

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
    #[arg(long = "token-leeway-secs", env = "TOKEN_LEEWAY_SECS", default_value = "10", value_parser = leeway)]
    pub token_leeway: Duration,
    /// Lifetime of an access token, in seconds. The auth-service issues
    /// tokens this long; the posts-service keeps revocations this long.
    #[arg(long = "access-token-ttl-secs", env = "ACCESS_TOKEN_TTL_SECS", default_value = "900", value_parser = seconds)]
    pub access_token_ttl: Duration,
    /// Shared secret guarding the internal event stream. When unset, one is
    /// generated once under the data directory, which suits a local stack only.
    #[arg(long, env = "INTERNAL_TOKEN", hide_env_values = true, value_parser = secret)]
    pub internal_token: Option<SecretString>,
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
    #[arg(long = "request-timeout-secs", env = "REQUEST_TIMEOUT_SECS", default_value = "30", value_parser = seconds)]
    pub request_timeout: Duration,
    /// How long a client has to send its request message once it has sent
    /// the call's headers, in seconds (a large message gets a second more
    /// per 64 KiB that arrives). A call past it is answered
    /// DEADLINE_EXCEEDED.
    #[arg(long = "request-message-timeout-secs", env = "REQUEST_MESSAGE_TIMEOUT_SECS", default_value = "10", value_parser = positive_seconds)]
    pub request_message_timeout: Duration,
    /// Most calls whose handlers run at once in this process; beyond it
    /// calls are refused at once with RESOURCE_EXHAUSTED rather than queued.
    #[arg(long, env = "MAX_CONCURRENT_CALLS", default_value_t = 1024)]
    pub max_concurrent_calls: usize,
    /// How often the posts-service refetches the auth-service's public keys,
    /// in seconds; the auth-service waits longer than this before a rotated
    /// key signs.
    #[arg(long = "jwks-refresh-secs", env = "JWKS_REFRESH_SECS", default_value = "300", value_parser = positive_seconds)]
    pub jwks_refresh: Duration,
    /// A Redis (`redis://host:port/db`) where rate limits and guess budgets
    /// are kept, shared by every replica. Unset: each process keeps its own,
    /// in memory.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_parser = secret)]
    pub redis_url: Option<SecretString>,
    /// Origins whose browsers may call the gRPC port over gRPC-Web, comma
    /// separated (`https://blog.example`); empty: gRPC-Web is off.
    #[arg(
        long,
        env = "GRPC_WEB_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub grpc_web_allowed_origins: Vec<String>,
    /// Where the services read the time; tests advance it instead of
    /// sleeping.
    #[arg(skip)]
    pub clock: crate::time::Clock,
    /// Connections are closed (gracefully) after this many seconds, so
    /// clients rebalance across replicas.
    #[arg(long = "max-connection-age-secs", env = "MAX_CONNECTION_AGE_SECS", default_value = "1800", value_parser = seconds)]
    pub max_connection_age: Duration,
    /// Seconds between the server's HTTP/2 keepalive pings; a peer that does
    /// not answer one within 10 s is disconnected.
    #[arg(long = "keepalive-interval-secs", env = "KEEPALIVE_INTERVAL_SECS", default_value = "30", value_parser = positive_seconds)]
    pub keepalive_interval: Duration,
    /// A connection that sends nothing for this many seconds is closed.
    /// Keep it above 30: healthy clients answer the server's keepalive pings,
    /// sent every 30 s.
    #[arg(long = "connection-idle-timeout-secs", env = "CONNECTION_IDLE_TIMEOUT_SECS", default_value = "75", value_parser = positive_seconds)]
    pub connection_idle_timeout: Duration,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
}

impl CommonConfig {
    /// Every default.
    pub fn defaults() -> Self {
        /// The common settings as a command of their own.
        #[derive(clap::Parser)]
        struct Common {
            /// The settings.
            #[command(flatten)]
            common: CommonConfig,
        }
        defaults::<Common>().common
    }

    /// Where limits are kept: the Redis at `REDIS_URL`, shared by every
    /// replica, or this process's memory when it is unset.
    pub fn limiter(
        &self,
    ) -> Result<std::sync::Arc<dyn crate::limits::Limiter>, crate::limits::Unavailable> {
        use crate::limits::{MemoryLimiter, RedisLimiter};
        Ok(match &self.redis_url {
            Some(url) => std::sync::Arc::new(RedisLimiter::new(
                url.expose_secret(),
                "blog:limits:",
                self.clock.clone(),
            )?),
            None => std::sync::Arc::new(MemoryLimiter::with_clock(self.clock.clone())),
        })
    }

    /// The internal token: `INTERNAL_TOKEN`, else the contents of
    /// `INTERNAL_TOKEN_FILE`, else one generated under the data directory.
    pub fn internal_token(&self) -> std::io::Result<SecretString> {
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
            return Ok(token.into());
        }
        crate::secret::internal_token(
            self.internal_token
                .as_ref()
                .map(ExposeSecret::expose_secret),
            &self.data_dir,
        )
        .map(SecretString::from)
    }
}

/// The settings `T` takes with no flags and no environment: every default.
/// Clap's attributes stay the one place a default is written.
pub fn defaults<T: clap::Parser>() -> T {
    let command = T::command().mut_args(|arg| arg.env(None::<&str>));
    let matches = command
        .try_get_matches_from([env!("CARGO_PKG_NAME")])
        .expect("every setting has a default or is optional");
    T::from_arg_matches(&matches).expect("the defaults are valid settings")
}

/// Parses a number of seconds.
pub fn seconds(raw: &str) -> Result<Duration, String> {
    raw.trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{raw:?} is not a whole number of seconds"))
}

/// Parses a number of seconds, at least one.
pub fn positive_seconds(raw: &str) -> Result<Duration, String> {
    seconds(raw).and_then(|d| {
        if d.is_zero() {
            Err("must be at least 1 second".into())
        } else {
            Ok(d)
        }
    })
}

/// Parses a token leeway: at most 30 seconds.
fn leeway(raw: &str) -> Result<Duration, String> {
    seconds(raw).and_then(|d| {
        if d > Duration::from_secs(crate::verify::MAX_LEEWAY_SECS) {
            Err(format!(
                "must be at most {} seconds",
                crate::verify::MAX_LEEWAY_SECS
            ))
        } else {
            Ok(d)
        }
    })
}

/// Takes a secret setting, so that `Debug` and logs never show it.
pub fn secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw.to_owned()))
}

/// A certificate and its key, both or neither: one without the other is a
/// mistake, refused the same way wherever a pair is read.
pub fn pem_pair(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((std::fs::read(cert)?, std::fs::read(key)?))),
        (None, None) => Ok(None),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a TLS certificate needs its key, and a key its certificate",
        )),
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
        let Some((cert, key)) = pem_pair(self.cert.as_deref(), self.key.as_deref())? else {
            return Ok(None);
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
