//! The auth-service: users, argon2 passwords, sessions, EdDSA access tokens
//! and their public keys, and the internal stream of user events.
//!
//! - [`config`]: the settings struct.
//! - [`domain`]: usernames, emails and passwords, parsed at the edge.
//! - [`password`]: argon2id on a fixed set of threads, behind bounded queues.
//! - [`login`]: checking passwords within the guess budgets.
//! - [`keys`]: signing keys, stored, loaded and published as JWKS.
//! - [`tokens`]: issuing access tokens.
//! - [`sessions`]: login, refresh rotation, logout, live-session checks.
//! - [`events`]: the outbox's change records and the `WatchUserEvents` stream.
//! - [`resets`] and [`mail`]: password reset by mail.
//! - [`images`] and [`avatars`]: profile pictures, processed and stored.
//! - [`http`]: the plain HTTP side (JWKS, probes, local avatars).
//! - [`store`]: the storage trait and its PostgreSQL and SQLite backends.
//! - [`service`]: the tonic handlers.
//! - [`error`]: the error type and its mapping to gRPC statuses.
//!
//! [`Application::build`] then [`Application::run`] is how `main`, the
//! launcher and the tests all start it.

pub mod avatars;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod images;
pub mod keys;
pub mod login;
pub mod mail;
pub mod password;
pub mod resets;
pub mod service;
pub mod sessions;
pub mod store;
pub mod tokens;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::interceptor::InterceptedService};

use prometheus_client::metrics::counter::Counter;
use proto::auth::{
    auth_service_server::AuthServiceServer, user_event_service_server::UserEventServiceServer,
    user_service_server::UserServiceServer,
};
use shared::{
    AuthInterceptor,
    limits::{Key, Limiter, MemoryLimiter, Rate},
    observe::Metrics,
    server,
    verify::Verifier,
};

pub use config::Config;

use crate::{
    avatars::Avatars,
    config::LimitConfig,
    error::{Error, Result},
    keys::KeyRing,
    login::Credentials,
    mail::{FileMailer, Mailer, SmtpMailer},
    password::Passwords,
    resets::PasswordResets,
    sessions::SessionManager,
    store::Store,
    tokens::AccessTokens,
};

/// What every handler shares.
pub struct AppState {
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Password hashing.
    pub passwords: Passwords,
    /// Access-token signing.
    pub tokens: Arc<AccessTokens>,
    /// Sessions and refresh tokens.
    pub sessions: SessionManager,
    /// Profile pictures.
    pub avatars: Arc<Avatars>,
    /// Password reset by mail.
    pub resets: Arc<PasswordResets>,
    /// The secret guarding `UserEventService`.
    pub internal_token: SecretString,
    /// Cancelled when the service stops, to end long-lived streams.
    pub shutdown: CancellationToken,
    /// Everything `/metrics` shows.
    pub metrics: Arc<Metrics>,
    /// Password checks within the guess budgets.
    pub credentials: Credentials,
    /// Where rate limits are counted.
    pub limiter: Arc<dyn Limiter>,
    /// The rate limits.
    pub limits: LimitConfig,
}

impl AppState {
    /// Takes one unit of `key`'s allowance under `rate`, or refuses with
    /// `what` as the reason.
    pub async fn rate_limit(&self, key: Key, rate: Rate, what: &'static str) -> Result<()> {
        self.limiter
            .take(key, rate)
            .await
            .map_err(Error::LimiterUnavailable)?
            .map_err(|retry_after| Error::RateLimited { what, retry_after })
    }
}

/// A built, bound, not yet serving auth-service.
pub struct Application {
    /// The bound gRPC listener.
    listener: TcpListener,
    /// The bound HTTP listener.
    http_listener: TcpListener,
    /// Shared handler state.
    state: Arc<AppState>,
    /// Verifies bearer tokens with our own public keys.
    verifier: Arc<Verifier>,
    /// Settings.
    config: Config,
}

impl Application {
    /// Connects and migrates the database, loads the signing keys and binds
    /// the listen address.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = store::connect(
            config.auth.auth_database_url.expose_secret(),
            config.auth.auth_db_acquire_timeout,
        )
        .await
        .context("opening the auth database")?;
        let keys = match &config.auth.signing_key_file {
            Some(file) => KeyRing::from_file(file, store.as_ref()).await,
            None => KeyRing::load_or_create(store.as_ref()).await,
        };
        let keys = Arc::new(keys.context("loading signing keys")?);
        let verifier = Arc::new(Verifier::new(
            &config.common.token_issuer,
            &config.common.token_audience,
            config.common.token_leeway,
        ));
        verifier
            .set_keys(keys.jwks())
            .context("loading our own public keys")?;
        let tokens = Arc::new(AccessTokens::new(
            keys,
            config.common.token_issuer.clone(),
            config.common.token_audience.clone(),
            config.common.access_token_ttl,
        ));
        let internal_token = config
            .common
            .internal_token()
            .context("reading the internal token")?;
        let http_listener = TcpListener::bind(config.auth.auth_http_addr)
            .await
            .with_context(|| format!("binding {}", config.auth.auth_http_addr))?;
        let public_url = match config.auth.auth_public_url.as_deref() {
            None | Some("") => format!("http://{}", http_listener.local_addr()?),
            Some(url) => url.to_owned(),
        };
        let avatars = Arc::new(
            Avatars::from_config(&config.auth.avatars, &config.common.data_dir, &public_url)
                .context("opening the avatar store")?,
        );
        let mailer: Arc<dyn Mailer> = match &config.auth.mail.smtp_url {
            Some(url) => Arc::new(SmtpMailer::new(url.expose_secret())?),
            None => Arc::new(FileMailer::new(config.common.data_dir.join("mail"))),
        };
        let from = config
            .auth
            .mail
            .mail_from
            .parse()
            .context("MAIL_FROM is not a mail address")?;
        let limiter: Arc<dyn Limiter> = Arc::new(MemoryLimiter::new());
        let resets = Arc::new(PasswordResets::new(
            store.clone(),
            mailer,
            from,
            &config.auth.mail.frontend_url,
            config.auth.mail.password_reset_ttl,
            limiter.clone(),
            config.auth.limits.reset_mails(),
        ));
        let mut metrics = Metrics::new();
        let login_failures = Counter::default();
        metrics.registry_mut().register(
            "login_failures",
            "Logins refused for an unknown account or a wrong password",
            login_failures.clone(),
        );
        let passwords = Passwords::new();
        let credentials = Credentials::new(
            store.clone(),
            passwords.clone(),
            limiter.clone(),
            login::guess_policy(&config.auth.limits),
            login_failures,
        );
        let state = Arc::new(AppState {
            metrics: Arc::new(metrics),
            credentials,
            limiter,
            limits: config.auth.limits.clone(),
            sessions: SessionManager::new(store.clone(), tokens.clone(), config.auth.session_ttl),
            store,
            passwords,
            tokens,
            avatars,
            resets,
            internal_token,
            shutdown: CancellationToken::new(),
        });
        let listener = TcpListener::bind(config.auth.auth_listen_addr)
            .await
            .with_context(|| format!("binding {}", config.auth.auth_listen_addr))?;
        Ok(Self {
            listener,
            http_listener,
            state,
            verifier,
            config,
        })
    }

    /// The address the gRPC server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// The address the HTTP side is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Shared handler state, for tests that inspect the store.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then lets in-flight calls finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            http_listener,
            state,
            verifier,
            config,
        } = self;
        let addr = listener.local_addr()?;
        let interceptor = AuthInterceptor::new(verifier).with_metrics(state.metrics.clone());

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<UserServiceServer<service::UsersApi>>()
            .await;
        health
            .set_serving::<AuthServiceServer<service::AuthApi>>()
            .await;
        health
            .set_serving::<UserEventServiceServer<service::UserEventsApi>>()
            .await;
        let watchdog = tokio::spawn(watch_database(
            state.store.clone(),
            health.clone(),
            state.shutdown.clone(),
        ));

        let tls = config.auth.tls().load().context("reading the TLS files")?;
        let router = server::builder(&config.common, state.metrics.clone(), tls)?
            .add_service(health_service)
            .add_service(InterceptedService::new(
                UserServiceServer::new(service::UsersApi::new(state.clone()))
                    // SetAvatar carries up to 5 MiB: just enough room for a
                    // 5 MiB upload plus framing, so an oversized one still
                    // arrives and is answered with a clear message.
                    .max_decoding_message_size(images::MAX_UPLOAD_BYTES + 64 * 1024),
                interceptor.clone(),
            ))
            .add_service(AuthServiceServer::with_interceptor(
                service::AuthApi::new(state.clone()),
                interceptor.clone(),
            ))
            .add_service(UserEventServiceServer::with_interceptor(
                service::UserEventsApi::new(state.clone()),
                interceptor,
            ));
        let router = server::with_reflection(
            router,
            config.common.reflection,
            // The internal event stream is served but not advertised.
            &[
                <UserServiceServer<service::UsersApi> as NamedService>::NAME,
                <AuthServiceServer<service::AuthApi> as NamedService>::NAME,
            ],
        )?;

        let http_addr = http_listener.local_addr()?;
        let http = shared::http::spawn(
            http_listener,
            http::router(state.clone()),
            state.shutdown.clone(),
        );

        tracing::info!(%addr, %http_addr, reflection = config.common.reflection, "auth-service listening");
        let stopping = state.shutdown.clone();
        router
            .serve_with_incoming_shutdown(
                shared::conn::incoming(listener, config.common.connection_idle_timeout),
                async move {
                    shutdown.await;
                    // End event streams so that the graceful stop does not wait
                    // for subscribers that never hang up.
                    stopping.cancel();
                },
            )
            .await?;
        state.shutdown.cancel();
        watchdog.abort();
        let _ = http.await;
        tracing::info!("auth-service stopped");
        Ok(())
    }
}

/// Keeps the overall health status in step with the database: `NOT_SERVING`
/// while it cannot be reached.
async fn watch_database(
    store: Arc<dyn Store>,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let up = store.ping().await.is_ok();
        if up != serving {
            serving = up;
            let status = if up {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            tracing::warn!(database_up = up, "database reachability changed");
            health.set_service_status("", status).await;
        }
    }
}
