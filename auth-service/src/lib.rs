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

/// Where password-reset links point when `FRONTEND_URL` is unset: the
/// website's default address.
pub const DEFAULT_FRONTEND_URL: &str = "http://127.0.0.1:8080";

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
pub mod proxies;
pub mod resets;
pub mod service;
pub mod sessions;
pub mod store;
pub mod tokens;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    service::{Routes, interceptor::InterceptedService},
};

use prometheus_client::metrics::counter::Counter;
use proto::auth::{
    auth_service_server::AuthServiceServer, user_event_service_server::UserEventServiceServer,
    user_service_server::UserServiceServer,
};
use shared::{
    AuthInterceptor, CurrentUser,
    harness::{self, Listeners, Readiness, Tasks},
    limits::{Key, Limiter, Rate},
    observe::Metrics,
    verify::Verifier,
};

pub use config::Config;

use crate::{
    avatars::Avatars,
    config::LimitConfig,
    error::{Error, Result},
    keys::Keys,
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
    /// Where the time comes from.
    pub clock: shared::time::Clock,
    /// How long a token can be presented (lifetime and leeway).
    pub token_lifetime: std::time::Duration,
    /// Balancers whose `x-forwarded-for` is believed.
    pub trusted_proxies: proxies::TrustedProxies,
}

/// The metadata in which a component of the deployment that calls on
/// behalf of others (the website) names the client it serves. Believed only
/// with the internal token beside it.
pub const FORWARDED_FOR_HEADER: &str = "x-forwarded-for";

impl AppState {
    /// The address the per-address limits count `request` under: the TCP
    /// peer's, or behind a trusted balancer the client it names
    /// ([`proxies`]), or, when the call carries the internal token (it
    /// comes from the website, which calls on behalf of its visitors), the
    /// first address in `x-forwarded-for`. Otherwise that header is
    /// ignored, so no client can pick its own address.
    pub fn client_address<T>(&self, request: &tonic::Request<T>) -> Option<std::net::IpAddr> {
        let metadata = request.metadata();
        let header = metadata
            .get(FORWARDED_FOR_HEADER)
            .and_then(|v| v.to_str().ok());
        let forwarded = header
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok());
        if let Some(forwarded) = forwarded {
            let presented = metadata
                .get(service::INTERNAL_TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if shared::secret::constant_time_eq(presented, self.internal_token.expose_secret()) {
                return Some(forwarded);
            }
        }
        request
            .remote_addr()
            .map(|peer| self.trusted_proxies.client(peer.ip(), header))
    }

    /// The caller's own account; a token whose account is gone is an
    /// invalid token.
    pub async fn my_account(&self, me: &CurrentUser) -> Result<store::UserRecord> {
        self.store
            .user_by_id(me.id)
            .await?
            .ok_or(Error::InvalidToken)
    }

    /// Takes one unit of `key`'s allowance under `rate`, or refuses with
    /// `what` as the reason.
    /// While the limiter's store is out of reach the call is let through
    /// (and logged): these limits bound volume, not guessing, and the
    /// service keeps serving without them. Guess budgets fail closed
    /// instead ([`login`]).
    pub async fn rate_limit(&self, key: Key, rate: Rate, what: &'static str) -> Result<()> {
        match self.limiter.take(key, rate).await {
            Ok(decision) => {
                decision.map_err(|retry_after| Error::RateLimited { what, retry_after })
            }
            Err(e) => {
                tracing::warn!(error = %e, limit = what, "limiter unavailable: let through");
                Ok(())
            }
        }
    }
}

/// How often the database is probed for readiness.
const DATABASE_PROBE: Duration = Duration::from_secs(2);

/// A built, bound, not yet serving auth-service.
pub struct Application {
    /// The bound listeners.
    listeners: Listeners,
    /// Shared handler state.
    state: Arc<AppState>,
    /// Verifies bearer tokens with our own public keys.
    verifier: Arc<Verifier>,
    /// Background work, stopped with the service.
    tasks: Tasks,
    /// Settings.
    config: Config,
}

impl Application {
    /// Connects and migrates the database, loads the signing keys and binds
    /// the listen address.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // A snapshot's revocations and deletions are read from the events
        // kept: they must outlive every token they refuse.
        anyhow::ensure!(
            config.auth.outbox_retention > token_lifetime(&config),
            "OUTBOX_RETENTION_SECS must be longer than ACCESS_TOKEN_TTL_SECS plus TOKEN_LEEWAY_SECS"
        );
        let store = store::connect(
            config.auth.auth_database_url.expose_secret(),
            config.auth.auth_db_acquire_timeout,
        )
        .await
        .context("opening the auth database")?;
        let keys = Keys::load(
            store.as_ref(),
            config.auth.signing_key_file.as_deref(),
            token_lifetime(&config),
            config.common.clock.clone(),
        )
        .await
        .context("loading signing keys")?;
        let keys = Arc::new(keys);
        let verifier = Arc::new(
            Verifier::new(
                &config.common.token_issuer,
                &config.common.token_audience,
                config.common.token_leeway,
            )
            .with_clock(config.common.clock.clone()),
        );
        verifier
            .set_keys(&keys.jwks())
            .context("loading our own public keys")?;
        let tokens = Arc::new(AccessTokens::new(
            keys,
            config.common.token_issuer.clone(),
            config.common.token_audience.clone(),
            config.common.access_token_ttl,
            config.common.clock.clone(),
        ));
        let internal_token = config
            .common
            .internal_token()
            .context("reading the internal token")?;
        let listeners =
            Listeners::bind(config.auth.auth_listen_addr, config.auth.auth_http_addr).await?;
        let tasks = Tasks::new();
        let public_url = match config.auth.auth_public_url.as_deref() {
            None | Some("") => format!("http://{}", listeners.http_addr()),
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
        let limiter: Arc<dyn Limiter> = config.common.limiter().context("opening the limiter")?;
        let resets = Arc::new(
            PasswordResets::new(
                store.clone(),
                mailer,
                from,
                config
                    .auth
                    .mail
                    .frontend_url
                    .as_deref()
                    .unwrap_or(DEFAULT_FRONTEND_URL),
                config.auth.mail.password_reset_ttl,
                limiter.clone(),
                config.auth.limits.reset_mails(),
            )
            .with_clock(config.common.clock.clone()),
        );
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
            sessions: SessionManager::new(
                store.clone(),
                tokens.clone(),
                config.auth.session_ttl,
                config.common.clock.clone(),
            ),
            store,
            passwords,
            tokens,
            avatars,
            resets,
            internal_token,
            shutdown: tasks.stopping(),
            clock: config.common.clock.clone(),
            token_lifetime: token_lifetime(&config),
            trusted_proxies: config.auth.trusted_proxies.clone(),
        });
        Ok(Self {
            listeners,
            state,
            verifier,
            tasks,
            config,
        })
    }

    /// The address the gRPC server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners.grpc_addr()
    }

    /// The address the HTTP side is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.listeners.http_addr()
    }

    /// Shared handler state, for tests that inspect the store.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then lets in-flight calls finish.
    /// Returns an error if a background task fails (the service stops
    /// first).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listeners,
            state,
            verifier,
            mut tasks,
            config,
        } = self;
        let interceptor =
            AuthInterceptor::new(verifier.clone()).with_metrics(state.metrics.clone());

        let database = {
            let store = state.store.clone();
            tasks.probe("database probe", DATABASE_PROBE, move || {
                let store = store.clone();
                async move { store.ping().await.is_ok() }
            })
        };
        let readiness = Readiness::new().with("database", database);
        {
            let (store, verifier) = (state.store.clone(), verifier.clone());
            let keys = state.tokens.keys_handle();
            tasks.spawn("signing keys", move |stop| {
                follow_keys(keys, store, verifier, stop)
            });
        }
        {
            let (store, clock) = (state.store.clone(), state.clock.clone());
            let retention = config.auth.outbox_retention;
            tasks.spawn("outbox retention", move |stop| {
                prune_outbox(store, clock, retention, stop)
            });
        }

        let routes = Routes::new(InterceptedService::new(
            UserServiceServer::new(service::UsersApi::new(state.clone()))
                // SetAvatar carries up to 5 MiB: just enough room for a 5 MiB
                // upload plus framing, so an oversized one still arrives and
                // is answered with a clear message.
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
        let service = harness::Service {
            name: "auth-service",
            routes,
            // The internal event stream is served but not advertised.
            advertised: vec![
                <UserServiceServer<service::UsersApi> as NamedService>::NAME,
                <AuthServiceServer<service::AuthApi> as NamedService>::NAME,
            ],
            http: http::router(state.clone(), readiness.clone()),
            readiness,
            tasks,
            metrics: state.metrics.clone(),
            tls: config.auth.tls().load().context("reading the TLS files")?,
        };
        harness::serve(service, listeners, &config.common, shutdown).await
    }
}

/// How long a token can be presented: its lifetime plus the clock skew
/// tolerated. A retired key stays published that long.
fn token_lifetime(config: &Config) -> std::time::Duration {
    config.common.access_token_ttl + config.common.token_leeway
}

/// Rereads the signing keys every [`keys::RELOAD`], so that a key another
/// replica (or `keys rotate`) added is published and, in its time, signs;
/// publishes the current set to this service's own verifier; deletes keys
/// whose tokens have all expired. A failed round is logged and retried.
async fn follow_keys(
    keys: Arc<Keys>,
    store: Arc<dyn store::Store>,
    verifier: Arc<Verifier>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(keys::RELOAD) => {}
        }
        if let Err(e) = keys.reload(store.as_ref()).await {
            tracing::warn!(error = %e, "cannot reload the signing keys");
            continue;
        }
        if let Err(e) = verifier.set_keys(&keys.jwks()) {
            tracing::error!(error = %e, "a stored signing key is unusable");
        }
        match keys.delete_expired(store.as_ref()).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired signing keys deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot delete expired signing keys"),
        }
    }
}

/// How often old outbox events are deleted.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Deletes outbox events older than `retention`, now and every
/// [`PRUNE_EVERY`]; a failed round is logged and retried.
async fn prune_outbox(
    store: Arc<dyn store::Store>,
    clock: shared::time::Clock,
    retention: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    loop {
        match store.prune_events(clock.now() - retention).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "old outbox events deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot delete old outbox events"),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// What `keys` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum KeysAction {
    /// Add a signing key that starts signing once every posts-service can
    /// have fetched it (`JWKS_REFRESH_SECS` and a margin); the current key
    /// then retires, published until its tokens have expired.
    Rotate,
    /// Show the signing keys, their states and activation times.
    List,
}

/// `auth-service keys rotate|list`, on the database the settings name.
pub async fn keys_command(config: &Config, action: KeysAction) -> anyhow::Result<()> {
    let store = store::connect(
        config.auth.auth_database_url.expose_secret(),
        config.auth.auth_db_acquire_timeout,
    )
    .await
    .context("opening the auth database")?;
    let now = config.common.clock.now();
    if action == KeysAction::Rotate {
        let delay = config.common.jwks_refresh + keys::ACTIVATION_MARGIN;
        let key = keys::rotate(store.as_ref(), now, delay).await?;
        println!(
            "added {} (next): it signs from {} s from now; replicas pick it up within {} s",
            key.kid,
            delay.as_secs(),
            keys::RELOAD.as_secs()
        );
    }
    let records = store.signing_keys().await?;
    if records.is_empty() {
        println!("no signing key yet: the auth-service makes one when it first starts");
        return Ok(());
    }
    let ring = keys::KeyRing::new(&records, None, token_lifetime(config))?;
    println!("{:<45} {:<8} activates (s from now)", "kid", "state");
    for (kid, state, activate) in ring.states(now) {
        let from_now = (activate.as_micros() - now.as_micros()) / 1_000_000;
        println!("{kid:<45} {state:<8} {from_now}");
    }
    Ok(())
}
