//! The posts-service: blog posts whose author is whoever the verified token
//! says, changed only by that author.
//!
//! - [`config`]: the settings struct.
//! - [`domain`]: titles, contents, page sizes and page tokens.
//! - [`keys`]: the auth-service's public keys: fetched, refreshed, cached.
//! - [`replica`]: the consumer of the auth-service's user events.
//! - [`revocations`]: revoked sessions and deleted users, in memory.
//! - [`store`]: the storage trait and its PostgreSQL and SQLite backends.
//! - [`service`]: the tonic handlers.
//! - [`http`]: the plain HTTP side (probes, metrics).
//! - [`error`]: the error type and its mapping to gRPC statuses.
//!
//! Tokens are verified here, locally; the auth-service is never called per
//! request, and while it is down reads and token checks go on.

pub mod backoff;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod keys;
pub mod replica;
pub mod revocations;
pub mod service;
pub mod store;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use proto::{
    auth::{
        auth_service_client::AuthServiceClient, user_event_service_client::UserEventServiceClient,
    },
    posts::post_service_server::PostServiceServer,
};
use shared::{AuthInterceptor, limits::MemoryLimiter, observe::Metrics, server, verify::Verifier};

pub use config::Config;

use crate::{
    replica::{Replica, ReplicaStatus},
    revocations::Revocations,
    store::{Store, now_micros},
};

/// The largest request message accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// A built, bound, not yet serving posts-service.
pub struct Application {
    /// The bound gRPC listener.
    listener: TcpListener,
    /// The bound HTTP listener.
    http_listener: TcpListener,
    /// Persistence.
    store: Arc<dyn Store>,
    /// Verifies bearer tokens with the auth-service's public keys.
    verifier: Arc<Verifier>,
    /// Revoked sessions and deleted users.
    revocations: Arc<Revocations>,
    /// The link to the auth-service (connected lazily, reconnected as needed).
    auth: Channel,
    /// The secret for the event stream.
    internal_token: SecretString,
    /// How the event stream is doing.
    replica: Arc<ReplicaStatus>,
    /// Settings.
    config: Config,
}

impl Application {
    /// Connects and migrates the database, loads cached keys and revocations,
    /// and binds the listen address. Does not need the auth-service.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = store::connect(
            config.posts.posts_database_url.expose_secret(),
            config.posts.posts_db_acquire_timeout,
        )
        .await
        .context("opening the posts database")?;
        let verifier = Arc::new(Verifier::new(
            &config.common.token_issuer,
            &config.common.token_audience,
            config.common.token_leeway,
        ));
        keys::load_cached(store.as_ref(), &verifier).await;

        let revocations = Arc::new(Revocations::default());
        let window = revocation_window(&config);
        revocations.load(
            store
                .revocations(now_micros(), window)
                .await
                .context("loading revocations")?,
            window,
        );

        let mut auth = Endpoint::from_shared(config.posts.auth_service_url.clone())
            .context("AUTH_SERVICE_URL")?;
        if let Some(tls) = config
            .posts
            .auth_client_tls()
            .context("reading the TLS files")?
        {
            auth = auth.tls_config(tls).context("TLS to the auth-service")?;
        }
        let auth = auth
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let internal_token = config
            .common
            .internal_token()
            .context("reading the internal token")?;
        let listener = TcpListener::bind(config.posts.posts_listen_addr)
            .await
            .with_context(|| format!("binding {}", config.posts.posts_listen_addr))?;
        let http_listener = TcpListener::bind(config.posts.posts_http_addr)
            .await
            .with_context(|| format!("binding {}", config.posts.posts_http_addr))?;
        Ok(Self {
            listener,
            http_listener,
            store,
            verifier,
            revocations,
            auth,
            internal_token,
            replica: Arc::new(ReplicaStatus::default()),
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

    /// Serves until `shutdown` resolves, then lets in-flight calls finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            http_listener,
            store,
            verifier,
            revocations,
            auth,
            internal_token,
            replica,
            config,
        } = self;
        let addr = listener.local_addr()?;
        let background = CancellationToken::new();
        let replica_status = replica.clone();
        let unknown_kid = Arc::new(Notify::new());
        let window = revocation_window(&config);

        let tasks = [
            tokio::spawn(keys::refresh(
                AuthServiceClient::new(auth.clone()),
                verifier.clone(),
                store.clone(),
                unknown_kid.clone(),
                config.posts.jwks_refresh,
                background.clone(),
            )),
            tokio::spawn(
                Replica {
                    client: UserEventServiceClient::new(auth),
                    internal_token,
                    store: store.clone(),
                    revocations: revocations.clone(),
                    window,
                    status: replica.clone(),
                }
                .run(background.clone()),
            ),
            tokio::spawn(prune_revocations(
                store.clone(),
                revocations.clone(),
                background.clone(),
            )),
        ];

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_not_serving::<PostServiceServer<service::PostsApi>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let health_task = tokio::spawn(report_health(
            store.clone(),
            verifier.clone(),
            health,
            background.clone(),
        ));

        let mut metrics = Metrics::new();
        let stream = http::StreamGauges::default();
        stream.register(&mut metrics);
        let metrics = Arc::new(metrics);
        let http_state = http::HttpState {
            store: store.clone(),
            verifier: verifier.clone(),
            replica: replica_status,
            metrics: metrics.clone(),
            stream,
        };
        let http = shared::http::spawn(http_listener, http::router(http_state), background.clone());

        let interceptor = AuthInterceptor::new(verifier)
            .with_revocations(revocations)
            .with_unknown_key_notify(unknown_kid)
            .with_metrics(metrics.clone());
        let tls = config.posts.tls().load().context("reading the TLS files")?;
        let router = server::builder(&config.common, metrics, tls)?
            .add_service(health_service)
            .add_service(InterceptedService::new(
                PostServiceServer::new(service::PostsApi::new(
                    store,
                    Arc::new(MemoryLimiter::new()),
                    config.posts.post_writes(),
                ))
                // The largest valid request (a 20,000-character post of
                // 4-byte characters) is about 80 KB.
                .max_decoding_message_size(MAX_REQUEST_BYTES),
                interceptor,
            ));
        let router = server::with_reflection(
            router,
            config.common.reflection,
            &[<PostServiceServer<service::PostsApi> as NamedService>::NAME],
        )?;

        tracing::info!(%addr, reflection = config.common.reflection, "posts-service listening");
        router
            .serve_with_incoming_shutdown(
                shared::conn::incoming(listener, config.common.connection_idle_timeout),
                shutdown,
            )
            .await?;
        background.cancel();
        for task in tasks {
            let _ = task.await;
        }
        let _ = health_task.await;
        let _ = http.await;
        tracing::info!("posts-service stopped");
        Ok(())
    }
}

/// How long a revocation must be remembered: the longest a token issued
/// before it can live, plus the clock skew tolerated. Microseconds.
fn revocation_window(config: &Config) -> i64 {
    (config.common.access_token_ttl + config.common.token_leeway).as_micros() as i64
}

/// `SERVING` only while the database answers and keys are loaded: without
/// keys no token can be checked.
async fn report_health(
    store: Arc<dyn Store>,
    verifier: Arc<Verifier>,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut serving = None;
    loop {
        let up = verifier.has_keys() && store.ping().await.is_ok();
        if serving != Some(up) {
            serving = Some(up);
            let status = if up {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            tracing::info!(serving = up, "health changed");
            health.set_service_status("", status).await;
            health
                .set_service_status(
                    <PostServiceServer<service::PostsApi> as NamedService>::NAME,
                    status,
                )
                .await;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Forgets, now and then, revocations whose tokens have all expired.
async fn prune_revocations(
    store: Arc<dyn Store>,
    revocations: Arc<Revocations>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let now = now_micros();
        revocations.prune(now);
        if let Err(e) = store.prune_revocations(now).await {
            tracing::warn!(error = %e, "cannot prune revocations");
        }
    }
}
