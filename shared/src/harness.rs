//! The one way a service runs: its gRPC routes and plain HTTP side on their
//! listeners, its background tasks, and its health, from start to a graceful
//! stop.
//!
//! A service supplies its routes, its HTTP router, its tasks and the
//! conditions it is ready under; the harness owns the rest:
//!
//! - **Readiness** is one set of named conditions (database reachable, keys
//!   loaded, ...), each a `watch` channel its owner updates. gRPC health and
//!   `/readyz` both read it, and gRPC health changes the moment a condition
//!   does: no polling, no lag between the two.
//! - **Tasks** run in one `JoinSet` under one cancellation token. A task that
//!   ends on its own while the service runs is a failure: the service stops
//!   serving (gracefully) and [`serve`] returns the error, so a process never
//!   keeps running half-dead.
//! - **Stop**: when `shutdown` resolves, the tasks are cancelled (streams
//!   end), the gRPC server lets calls in flight finish, the HTTP side drains,
//!   and the tasks are awaited.

use std::{collections::BTreeMap, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_stream::{StreamExt, StreamMap, wrappers::WatchStream};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::{config::CommonConfig, observe::Metrics};

/// How long the tasks get to finish once cancelled.
const TASK_DRAIN: Duration = Duration::from_secs(10);

/// The conditions a service is ready under.
#[derive(Clone, Default)]
pub struct Readiness {
    /// Each condition's current state, by name.
    conditions: BTreeMap<&'static str, watch::Receiver<bool>>,
}

impl Readiness {
    /// No conditions yet: always ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the condition `name`, true while `state` says so.
    pub fn with(mut self, name: &'static str, state: watch::Receiver<bool>) -> Self {
        self.conditions.insert(name, state);
        self
    }

    /// Each condition and whether it holds now.
    pub fn report(&self) -> BTreeMap<&'static str, bool> {
        self.conditions
            .iter()
            .map(|(name, state)| (*name, *state.borrow()))
            .collect()
    }

    /// Whether every condition holds now.
    pub fn is_ready(&self) -> bool {
        self.conditions.values().all(|state| *state.borrow())
    }
}

/// A service's background tasks, under one cancellation token.
pub struct Tasks {
    /// The running tasks, by name.
    set: JoinSet<(&'static str, anyhow::Result<()>)>,
    /// Cancelled when the service stops.
    stop: CancellationToken,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    /// No tasks yet.
    pub fn new() -> Self {
        Self {
            set: JoinSet::new(),
            stop: CancellationToken::new(),
        }
    }

    /// The token cancelled when the service stops, for work that must end
    /// then (streams to clients, loops).
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Probes with `probe` every `period` and returns whether the last probe
    /// succeeded, as it changes: a readiness condition (the database).
    pub fn probe<F, Fut>(
        &mut self,
        name: &'static str,
        period: Duration,
        probe: F,
    ) -> watch::Receiver<bool>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let (up, state) = watch::channel(true);
        self.spawn(name, move |stop| probe_every(period, up, probe, stop));
        state
    }

    /// Runs `task` until it ends or the service stops. It is given the
    /// service's stop token; ending on its own before that is a failure.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let future = task(self.stop.clone());
        self.set.spawn(async move { (name, future.await) });
    }
}

/// Everything a service brings to [`serve`].
pub struct Service {
    /// Its name, for logs.
    pub name: &'static str,
    /// Its gRPC services.
    pub routes: Routes,
    /// The full names of its gRPC services: reported in health and listed by
    /// reflection. A service left out is served but not advertised.
    pub advertised: Vec<&'static str>,
    /// Its plain HTTP side.
    pub http: axum::Router,
    /// When it is ready.
    pub readiness: Readiness,
    /// Its background tasks.
    pub tasks: Tasks,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// TLS for the gRPC port, if any.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

/// The two listeners of a service, bound before anything serves, so that
/// callers (and tests) know the addresses first.
pub struct Listeners {
    /// The gRPC port.
    pub grpc: TcpListener,
    /// The plain HTTP port.
    pub http: TcpListener,
}

impl Listeners {
    /// Binds both.
    pub async fn bind(grpc: SocketAddr, http: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            grpc: TcpListener::bind(grpc)
                .await
                .with_context(|| format!("binding {grpc}"))?,
            http: TcpListener::bind(http)
                .await
                .with_context(|| format!("binding {http}"))?,
        })
    }

    /// The gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// The HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound TCP listener has an address")
    }
}

/// Serves `service` on `listeners` until `shutdown` resolves or one of its
/// tasks fails; then stops gracefully. A task failure is the error returned.
pub async fn serve(
    service: Service,
    listeners: Listeners,
    config: &CommonConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Service {
        name,
        routes,
        advertised,
        http,
        readiness,
        mut tasks,
        metrics,
        tls,
    } = service;
    let (grpc_addr, http_addr) = (listeners.grpc_addr(), listeners.http_addr());

    // Everything that can fail comes before anything starts, so a failure
    // here leaves nothing running.
    let (reporter, health) = tonic_health::server::health_reporter();
    let routes = routes.add_service(health);
    let router = crate::server::builder(config, metrics, tls)?.add_routes(routes);
    let router = crate::server::with_reflection(router, config.reflection, &advertised)?;

    // The first report before the port opens: nobody sees a stale SERVING.
    report(&reporter, &advertised, readiness.is_ready()).await;
    {
        let readiness = readiness.clone();
        let advertised = advertised.clone();
        tasks.spawn("health", move |stop| {
            follow_readiness(readiness, reporter, advertised, stop)
        });
    }
    let http_task = crate::http::spawn(listeners.http, http, tasks.stopping());
    let stop = tasks.stopping();
    let server = {
        let stop = stop.clone();
        tokio::spawn(router.serve_with_incoming_shutdown(
            crate::conn::incoming(listeners.grpc, config.connection_idle_timeout),
            async move { stop.cancelled().await },
        ))
    };
    tracing::info!(service = name, %grpc_addr, %http_addr, reflection = config.reflection, "{name} listening");

    let mut failure = None;
    tokio::select! {
        () = shutdown => tracing::info!(service = name, "{name} stopping"),
        Some(ended) = tasks.set.join_next() => {
            let error = task_failure(ended);
            tracing::error!(service = name, error = %error, "a task ended: stopping");
            failure = Some(error);
        }
    }
    // Streams and loops end first, so the graceful stop does not wait on
    // subscribers that never hang up; then the calls in flight finish.
    stop.cancel();
    let served = server.await.context("the gRPC server panicked")?;
    let _ = http_task.await;
    let drained = tokio::time::timeout(TASK_DRAIN, async {
        while let Some(ended) = tasks.set.join_next().await {
            if let Ok((task, Err(e))) = ended {
                tracing::warn!(service = name, task, error = %e, "a task failed while stopping");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            service = name,
            "tasks still running after the drain period: dropped"
        );
    }
    served.context("serving gRPC")?;
    tracing::info!(service = name, "{name} stopped");
    failure.map_or(Ok(()), Err)
}

/// What a task that ended on its own amounts to.
fn task_failure(
    ended: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Error {
    match ended {
        Ok((task, Ok(()))) => anyhow::anyhow!("task {task} ended"),
        Ok((task, Err(e))) => e.context(format!("task {task} failed")),
        Err(e) => anyhow::anyhow!("a task panicked: {e}"),
    }
}

/// Keeps gRPC health in step with `readiness`, changing the moment a
/// condition does.
async fn follow_readiness(
    readiness: Readiness,
    reporter: tonic_health::server::HealthReporter,
    advertised: Vec<&'static str>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut changes = StreamMap::new();
    for (name, state) in &readiness.conditions {
        changes.insert(*name, WatchStream::from_changes(state.clone()));
    }
    // Whatever changed before the streams were made is reported now.
    let mut ready = readiness.is_ready();
    report(&reporter, &advertised, ready).await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            change = changes.next() => {
                if change.is_none() {
                    // Every condition's owner is gone: nothing changes any more.
                    stop.cancelled().await;
                    return Ok(());
                }
            }
        }
        let now = readiness.is_ready();
        if now != ready {
            ready = now;
            tracing::info!(ready, conditions = ?readiness.report(), "readiness changed");
            report(&reporter, &advertised, ready).await;
        }
    }
}

/// Sets the overall status and each advertised service's.
async fn report(
    reporter: &tonic_health::server::HealthReporter,
    advertised: &[&'static str],
    ready: bool,
) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    for service in advertised {
        reporter.set_service_status(*service, status).await;
    }
}

/// Keeps `up` in step with whether `probe` succeeds, checked every
/// `period`: the database condition of a service's readiness.
async fn probe_every<F, Fut>(
    period: Duration,
    up: watch::Sender<bool>,
    probe: F,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        let now = probe().await;
        up.send_if_modified(|was| {
            let changed = *was != now;
            *was = now;
            changed
        });
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_is_every_condition_at_once() {
        let (database, database_state) = watch::channel(true);
        let (keys, keys_state) = watch::channel(false);
        let readiness = Readiness::new()
            .with("database", database_state)
            .with("keys", keys_state);
        assert!(!readiness.is_ready());
        keys.send_replace(true);
        assert!(readiness.is_ready());
        database.send_replace(false);
        assert!(!readiness.is_ready());
        assert_eq!(
            readiness.report(),
            BTreeMap::from([("database", false), ("keys", true)])
        );
    }

    #[tokio::test]
    async fn health_follows_readiness_as_it_changes() {
        use tonic_health::pb::{HealthCheckRequest, health_server::Health};
        let (keys, keys_state) = watch::channel(false);
        let readiness = Readiness::new().with("keys", keys_state);
        let reporter = tonic_health::server::HealthReporter::new();
        let health = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        report(&reporter, &["x.Y"], readiness.is_ready()).await;
        let stop = CancellationToken::new();
        let follower = tokio::spawn(follow_readiness(
            readiness,
            reporter,
            vec!["x.Y"],
            stop.clone(),
        ));
        let status = || async {
            health
                .check(tonic::Request::new(HealthCheckRequest {
                    service: "x.Y".into(),
                }))
                .await
                .unwrap()
                .into_inner()
                .status
        };
        assert_eq!(status().await, ServingStatus::NotServing as i32);
        keys.send_replace(true);
        let mut serving = false;
        for _ in 0..100 {
            if status().await == ServingStatus::Serving as i32 {
                serving = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(serving, "health did not follow");
        stop.cancel();
        follower.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_failing_task_stops_the_service_with_its_error() {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let listeners = Listeners::bind(any, any).await.unwrap();
        let grpc = listeners.grpc_addr();
        let mut tasks = Tasks::new();
        let (fail, failing) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("doomed", |_| async move {
            let _ = failing.await;
            anyhow::bail!("boom")
        });
        let service = Service {
            name: "test",
            routes: Routes::default(),
            advertised: Vec::new(),
            http: axum::Router::new(),
            readiness: Readiness::new(),
            tasks,
            metrics: Arc::new(Metrics::new()),
            tls: None,
        };
        let config = CommonConfig::defaults();
        let serving = tokio::spawn(async move {
            serve(service, listeners, &config, std::future::pending()).await
        });
        // It serves until the task fails ...
        crate::server::healthcheck(grpc).await.unwrap();
        fail.send(()).unwrap();
        // ... then stops on its own, with the task's error.
        let error = tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the service stopped")
            .unwrap()
            .unwrap_err();
        assert!(format!("{error:#}").contains("boom"), "{error:#}");
    }

    #[tokio::test]
    async fn a_task_that_ends_on_its_own_is_a_failure() {
        let mut tasks = Tasks::new();
        tasks.spawn("quits", |_| async { Ok(()) });
        let ended = tasks.set.join_next().await.unwrap();
        assert_eq!(task_failure(ended).to_string(), "task quits ended");
    }
}
