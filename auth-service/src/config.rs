//! The auth-service's settings: one struct, read once from flags and the
//! environment (listed in the README) and passed down.

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use shared::{
    config::{CommonConfig, positive_seconds, seconds, secret},
    limits::Rate,
};

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
        hide_env_values = true,
        value_parser = secret
    )]
    pub auth_database_url: SecretString,
    /// Address of the plain HTTP side: JWKS, health, avatars.
    #[arg(long, env = "AUTH_HTTP_ADDR", default_value = "127.0.0.1:8081")]
    pub auth_http_addr: SocketAddr,
    /// Base of absolute `avatar_url`s served by this service. Unset (or
    /// empty): `http://` and the address `AUTH_HTTP_ADDR` is bound to.
    #[arg(long, env = "AUTH_PUBLIC_URL")]
    pub auth_public_url: Option<String>,
    /// An Ed25519 private key (PKCS#8 PEM, as `openssl genpkey -algorithm
    /// ed25519` writes it) to sign with, e.g. a mounted secret. Unset: a key
    /// is generated once and kept in the database.
    #[arg(long, env = "SIGNING_KEY_FILE")]
    pub signing_key_file: Option<std::path::PathBuf>,
    /// How long outbox events are kept, in seconds; a replica further behind
    /// catches up through `SnapshotUsers`.
    #[arg(long = "outbox-retention-secs", env = "OUTBOX_RETENTION_SECS", default_value = "604800", value_parser = seconds)]
    pub outbox_retention: Duration,
    /// Absolute lifetime of a session and its refresh tokens, in seconds.
    #[arg(long = "session-ttl-secs", env = "SESSION_TTL_SECS", default_value = "2592000", value_parser = seconds)]
    pub session_ttl: Duration,
    /// Longest wait for a database connection before answering
    /// UNAVAILABLE, in seconds.
    #[arg(long = "auth-db-acquire-timeout-secs", env = "AUTH_DB_ACQUIRE_TIMEOUT_SECS", default_value = "5", value_parser = positive_seconds)]
    pub auth_db_acquire_timeout: Duration,
    /// Certificate chain (PEM) for TLS on the gRPC port; with
    /// `AUTH_TLS_KEY_FILE`, the port speaks TLS only.
    #[arg(long, env = "AUTH_TLS_CERT_FILE")]
    pub auth_tls_cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM) for `AUTH_TLS_CERT_FILE`.
    #[arg(long, env = "AUTH_TLS_KEY_FILE")]
    pub auth_tls_key_file: Option<std::path::PathBuf>,
    /// CA (PEM) whose client certificates are required: mutual TLS, e.g.
    /// so that only the posts-service can reach the internal event stream.
    #[arg(long, env = "AUTH_TLS_CLIENT_CA_FILE")]
    pub auth_tls_client_ca_file: Option<std::path::PathBuf>,
    /// Balancers in front of this service (addresses or networks,
    /// comma-separated): for calls from them, the client counted by the
    /// per-address limits is read from `x-forwarded-for`. Empty: the TCP
    /// peer is the client.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: crate::proxies::TrustedProxies,
    /// Mail settings.
    #[command(flatten)]
    pub mail: MailConfig,
    /// Where profile pictures are kept.
    #[command(flatten)]
    pub avatars: AvatarConfig,
    /// Rate limits and guess budgets.
    #[command(flatten)]
    pub limits: LimitConfig,
}

/// Rate limits and guess budgets. The defaults leave people alone and stop
/// scripts; every refusal is RESOURCE_EXHAUSTED with a RetryInfo.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitConfig {
    /// Wrong passwords for one account from one address before delays
    /// start (1 s, doubling, up to 15 min).
    #[arg(long, env = "LOGIN_FREE_FAILURES", default_value_t = 5)]
    pub login_free_failures: u32,
    /// Wrong passwords for one account from all addresses before delays
    /// start (up to a minute).
    #[arg(long, env = "LOGIN_ACCOUNT_FREE_FAILURES", default_value_t = 50)]
    pub login_account_free_failures: u32,
    /// Wrong passwords from one address, any account, before delays start
    /// (up to 5 min).
    #[arg(long, env = "LOGIN_ADDRESS_FREE_FAILURES", default_value_t = 200)]
    pub login_address_free_failures: u32,
    /// Registrations one address may make per hour, once its burst is spent.
    #[arg(long, env = "REGISTRATIONS_PER_HOUR", default_value_t = 120)]
    pub registrations_per_hour: u32,
    /// Registrations one address may make at once.
    #[arg(long, env = "REGISTRATION_BURST", default_value_t = 30)]
    pub registration_burst: u32,
    /// Password-reset mails per email address, and per account, per hour.
    #[arg(long, env = "RESET_MAILS_PER_HOUR", default_value_t = 3)]
    pub reset_mails_per_hour: u32,
    /// Password-reset requests one client address may make per hour (10 at
    /// once).
    #[arg(long, env = "RESET_REQUESTS_PER_HOUR", default_value_t = 30)]
    pub reset_requests_per_hour: u32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            login_free_failures: 5,
            login_account_free_failures: 50,
            login_address_free_failures: 200,
            registrations_per_hour: 120,
            registration_burst: 30,
            reset_mails_per_hour: 3,
            reset_requests_per_hour: 30,
        }
    }
}

impl LimitConfig {
    /// Registrations per client address.
    pub fn registrations(&self) -> Rate {
        Rate::per(self.registrations_per_hour, HOUR, self.registration_burst)
    }

    /// Reset mails per email address and per account.
    pub fn reset_mails(&self) -> Rate {
        Rate::per(self.reset_mails_per_hour, HOUR, self.reset_mails_per_hour)
    }

    /// Reset requests per client address.
    pub fn reset_requests(&self) -> Rate {
        Rate::per(self.reset_requests_per_hour, HOUR, 10)
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// How password-reset mail goes out.
#[derive(Debug, Clone, clap::Args)]
pub struct MailConfig {
    /// `smtp://[user:pass@]host[:port]` (plaintext), `smtp://…?tls=required`
    /// (STARTTLS) or `smtps://…`. Unset: messages are written as `.eml`
    /// files under `DATA_DIR/mail/`.
    #[arg(long, env = "SMTP_URL", hide_env_values = true, value_parser = secret)]
    pub smtp_url: Option<SecretString>,
    /// Sender of outgoing mail.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "Blog <no-reply@blog.localhost>"
    )]
    pub mail_from: String,
    /// Base of the links in mail: the website's address. When unset, the
    /// website's default address (`http://127.0.0.1:8080`); the launcher
    /// sets it to wherever it runs the website.
    #[arg(long, env = "FRONTEND_URL")]
    pub frontend_url: Option<String>,
    /// How long a password-reset link works, in seconds.
    #[arg(long = "password-reset-ttl-secs", env = "PASSWORD_RESET_TTL_SECS", default_value = "3600", value_parser = positive_seconds)]
    pub password_reset_ttl: Duration,
}

/// Where profile pictures are kept: local files under `DATA_DIR/avatars/`
/// (served at `/avatars/` on `AUTH_HTTP_ADDR`), or an S3 bucket.
#[derive(Debug, Clone, clap::Args)]
pub struct AvatarConfig {
    /// S3 bucket; when set, avatars go to S3 instead of local files.
    #[arg(long, env = "AVATAR_S3_BUCKET")]
    pub avatar_s3_bucket: Option<String>,
    /// S3 region.
    #[arg(long, env = "AVATAR_S3_REGION", default_value = "us-east-1")]
    pub avatar_s3_region: String,
    /// S3 endpoint, for S3-compatible servers (path-style requests).
    #[arg(long, env = "AVATAR_S3_ENDPOINT")]
    pub avatar_s3_endpoint: Option<String>,
    /// S3 access key id.
    #[arg(long, env = "AVATAR_S3_ACCESS_KEY_ID")]
    pub avatar_s3_access_key_id: Option<String>,
    /// S3 secret access key.
    #[arg(long, env = "AVATAR_S3_SECRET_ACCESS_KEY", hide_env_values = true, value_parser = secret)]
    pub avatar_s3_secret_access_key: Option<SecretString>,
    /// Public base URL of the bucket's objects; by default the endpoint and
    /// bucket (path style), or the bucket's AWS address.
    #[arg(long, env = "AVATAR_S3_PUBLIC_URL")]
    pub avatar_s3_public_url: Option<String>,
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

impl Config {
    /// Every default, listening on 127.0.0.1 ports chosen by the system,
    /// with local state under `data_dir`: how tests start a service.
    pub fn for_tests(data_dir: std::path::PathBuf) -> Self {
        let mut config: Self = shared::config::defaults();
        let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.auth.auth_listen_addr = any_port;
        config.auth.auth_http_addr = any_port;
        config.auth.auth_database_url = format!("sqlite://{}/auth.db", data_dir.display()).into();
        config.common.data_dir = data_dir;
        config
    }
}

impl AuthConfig {
    /// The gRPC port's TLS files.
    pub fn tls(&self) -> shared::config::ServerTlsFiles {
        shared::config::ServerTlsFiles {
            cert: self.auth_tls_cert_file.clone(),
            key: self.auth_tls_key_file.clone(),
            client_ca: self.auth_tls_client_ca_file.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn defaults_come_from_the_settings_themselves() {
        let config: Config = shared::config::defaults();
        assert_eq!(config.auth.auth_listen_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(config.auth.session_ttl, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(config.common.request_timeout, Duration::from_secs(30));
        // Unset: avatar URLs follow the address the HTTP side is bound to.
        assert_eq!(config.auth.auth_public_url, None);
        assert_eq!(config.auth.limits.registration_burst, 30);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let mut config = Config::for_tests(std::env::temp_dir());
        config.auth.auth_database_url = "postgres://blog:hunter2@db/auth".to_owned().into();
        config.common.internal_token = Some("internal-hunter2".to_owned().into());
        config.auth.mail.smtp_url = Some("smtp://u:hunter2@mail".to_owned().into());
        config.auth.avatars.avatar_s3_secret_access_key = Some("hunter2".to_owned().into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            config
                .auth
                .auth_database_url
                .expose_secret()
                .contains("hunter2")
        );
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let files = AuthConfig {
            auth_tls_cert_file: Some("cert.pem".into()),
            ..Config::for_tests(std::env::temp_dir()).auth
        };
        assert!(files.tls().load().is_err());
    }
}
