//! The auth-service: users, argon2 passwords, sessions, EdDSA access tokens
//! and their public keys, and the internal stream of user events.
//!
//! - [`config`]: the settings struct.
//! - [`domain`]: usernames, emails and passwords, parsed at the edge.
//! - [`password`]: argon2id on the blocking pool behind a semaphore.
//! - [`keys`]: signing keys, stored, loaded and published as JWKS.
//! - [`tokens`]: issuing access tokens.
//! - [`sessions`]: login, refresh rotation, logout, live-session checks.
//! - [`events`]: the outbox's change records and the `WatchUserEvents` stream.
//! - [`store`]: the storage trait and its PostgreSQL and SQLite backends.
//! - [`service`]: the tonic handlers.
//! - [`error`]: the error type and its mapping to gRPC statuses.
//!
//! [`Application::build`] then [`Application::run`] is how `main`, the
//! launcher and the tests all start it.

pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod keys;
pub mod password;
pub mod service;
pub mod sessions;
pub mod store;
pub mod tokens;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

use shared::{
    AuthInterceptor,
    proto::auth::{
        auth_service_server::AuthServiceServer, user_event_service_server::UserEventServiceServer,
        user_service_server::UserServiceServer,
    },
    server,
    verify::Verifier,
};

pub use config::Config;

use crate::{
    keys::KeyRing, password::Passwords, sessions::SessionManager, store::Store,
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
    /// Base of absolute avatar URLs.
    pub public_url: Arc<str>,
    /// The secret guarding `UserEventService`.
    pub internal_token: String,
    /// Cancelled when the service stops, to end long-lived streams.
    pub shutdown: CancellationToken,
}

/// The absolute URL of an avatar object, or empty when there is none.
pub fn avatar_url(public_url: &str, key: Option<&str>) -> String {
    key.map(|key| format!("{}/avatars/{key}", public_url.trim_end_matches('/')))
        .unwrap_or_default()
}

/// A built, bound, not yet serving auth-service.
pub struct Application {
    /// The bound gRPC listener.
    listener: TcpListener,
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
            &config.auth.auth_database_url,
            config.auth.db_acquire_timeout(),
        )
        .await
        .context("opening the auth database")?;
        let keys = Arc::new(
            KeyRing::load_or_create(store.as_ref())
                .await
                .context("loading signing keys")?,
        );
        let verifier = Arc::new(Verifier::new(
            &config.common.token_issuer,
            &config.common.token_audience,
            config.common.token_leeway(),
        ));
        verifier
            .set_keys(keys.jwks())
            .context("loading our own public keys")?;
        let tokens = Arc::new(AccessTokens::new(
            keys,
            config.common.token_issuer.clone(),
            config.common.token_audience.clone(),
            config.common.access_token_ttl(),
        ));
        let internal_token = shared::secret::internal_token(
            config.common.internal_token.as_deref(),
            &config.common.data_dir,
        )
        .context("reading the internal token")?;
        let state = Arc::new(AppState {
            sessions: SessionManager::new(store.clone(), tokens.clone(), config.auth.session_ttl()),
            store,
            passwords: Passwords::new(),
            tokens,
            public_url: config.auth.auth_public_url.trim_end_matches('/').into(),
            internal_token,
            shutdown: CancellationToken::new(),
        });
        let listener = TcpListener::bind(config.auth.auth_listen_addr)
            .await
            .with_context(|| format!("binding {}", config.auth.auth_listen_addr))?;
        Ok(Self {
            listener,
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
            state,
            verifier,
            config,
        } = self;
        let addr = listener.local_addr()?;
        let interceptor = AuthInterceptor::new(verifier);

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

        let router = server::builder(config.common.request_timeout())
            .add_service(health_service)
            .add_service(UserServiceServer::with_interceptor(
                service::UsersApi::new(state.clone()),
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
            &[
                <UserServiceServer<service::UsersApi> as NamedService>::NAME,
                <AuthServiceServer<service::AuthApi> as NamedService>::NAME,
                <UserEventServiceServer<service::UserEventsApi> as NamedService>::NAME,
            ],
        )?;

        tracing::info!(%addr, reflection = config.common.reflection, "auth-service listening");
        let stopping = state.shutdown.clone();
        router
            .serve_with_incoming_shutdown(server::incoming(listener), async move {
                shutdown.await;
                // End event streams so that the graceful stop does not wait
                // for subscribers that never hang up.
                stopping.cancel();
            })
            .await?;
        state.shutdown.cancel();
        watchdog.abort();
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
