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
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    service::{Routes, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use proto::{
    auth::{
        auth_service_client::AuthServiceClient, user_event_service_client::UserEventServiceClient,
    },
    posts::post_service_server::PostServiceServer,
};
use shared::{
    AuthInterceptor,
    harness::{self, Listeners, Readiness, Tasks},
    observe::Metrics,
    time::Timestamp,
    verify::Verifier,
};

pub use config::Config;

use crate::{
    replica::{Replica, ReplicaStatus},
    revocations::Revocations,
    store::Store,
};

/// The largest request message accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// How often the database is probed for readiness.
const DATABASE_PROBE: Duration = Duration::from_secs(2);

/// A built, bound, not yet serving posts-service.
pub struct Application {
    /// The bound listeners.
    listeners: Listeners,
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

        // The cursor before the revocations: whatever another replica
        // applies in between is streamed again, not missed.
        let replica = Arc::new(ReplicaStatus::default());
        replica.last_sequence.store(
            store
                .event_cursor()
                .await
                .context("reading the event cursor")?,
            std::sync::atomic::Ordering::Relaxed,
        );
        let revocations = Arc::new(Revocations::default());
        let window = revocation_window(&config);
        revocations.load(
            store
                .revocations(Timestamp::now(), window)
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
        let listeners =
            Listeners::bind(config.posts.posts_listen_addr, config.posts.posts_http_addr).await?;
        Ok(Self {
            listeners,
            store,
            verifier,
            revocations,
            auth,
            internal_token,
            replica,
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

    /// Serves until `shutdown` resolves, then lets in-flight calls finish.
    /// Returns an error if a background task fails (the service stops
    /// first).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listeners,
            store,
            verifier,
            revocations,
            auth,
            internal_token,
            replica,
            config,
        } = self;
        let unknown_kid = Arc::new(Notify::new());
        let window = revocation_window(&config);
        let mut tasks = Tasks::new();
        {
            let (client, verifier, store) = (
                AuthServiceClient::new(auth.clone()),
                verifier.clone(),
                store.clone(),
            );
            let (unknown_kid, every) = (unknown_kid.clone(), config.common.jwks_refresh);
            tasks.spawn("keys", move |stop| async move {
                keys::refresh(client, verifier, store, unknown_kid, every, stop).await;
                Ok(())
            });
        }
        {
            let replica = Replica {
                client: UserEventServiceClient::new(auth),
                internal_token,
                store: store.clone(),
                revocations: revocations.clone(),
                window,
                status: replica.clone(),
            };
            tasks.spawn("user events", move |stop| async move {
                replica.run(stop).await;
                Ok(())
            });
        }
        {
            let (store, revocations) = (store.clone(), revocations.clone());
            tasks.spawn("revocation pruning", move |stop| async move {
                prune_revocations(store, revocations, stop).await;
                Ok(())
            });
        }
        let database = {
            let store = store.clone();
            tasks.probe("database probe", DATABASE_PROBE, move || {
                let store = store.clone();
                async move { store.ping().await.is_ok() }
            })
        };
        // Without keys no token can be checked: not ready until they come.
        let readiness = Readiness::new()
            .with("database", database)
            .with("keys", verifier.keys_loaded());

        let mut metrics = Metrics::new();
        let stream = http::StreamGauges::default();
        stream.register(&mut metrics);
        let metrics = Arc::new(metrics);
        let http_state = http::HttpState {
            store: store.clone(),
            readiness: readiness.clone(),
            replica,
            metrics: metrics.clone(),
            stream,
        };

        let interceptor = AuthInterceptor::new(verifier)
            .with_revocations(revocations)
            .with_unknown_key_notify(unknown_kid)
            .with_metrics(metrics.clone());
        let routes = Routes::new(InterceptedService::new(
            PostServiceServer::new(service::PostsApi::new(
                store,
                config.common.limiter().context("opening the limiter")?,
                config.posts.post_writes(),
            ))
            // The largest valid request (a 20,000-character post of 4-byte
            // characters) is about 80 KB.
            .max_decoding_message_size(MAX_REQUEST_BYTES),
            interceptor,
        ));
        let service = harness::Service {
            name: "posts-service",
            routes,
            advertised: vec![<PostServiceServer<service::PostsApi> as NamedService>::NAME],
            http: http::router(http_state),
            readiness,
            tasks,
            metrics,
            tls: config.posts.tls().load().context("reading the TLS files")?,
        };
        harness::serve(service, listeners, &config.common, shutdown).await
    }
}

/// How long a revocation must be remembered: the longest a token issued
/// before it can live, plus the clock skew tolerated.
fn revocation_window(config: &Config) -> Duration {
    config.common.access_token_ttl + config.common.token_leeway
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
        let now = Timestamp::now();
        revocations.prune(now);
        if let Err(e) = store.prune_revocations(now).await {
            tracing::warn!(error = %e, "cannot prune revocations");
        }
    }
}
