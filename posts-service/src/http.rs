//! The plain HTTP side of the posts-service (`POSTS_HTTP_ADDR`): liveness,
//! readiness and Prometheus metrics.
//!
//! Readiness fails only on what stops the service from answering: the
//! database, or having no keys to verify tokens with. The event stream's
//! state is reported in the body and in metrics, never as unreadiness, since
//! reads and token checks go on while the auth-service is away.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, header},
    response::Response,
    routing::get,
};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use shared::time::Timestamp;

use shared::{harness::Readiness, observe::Metrics};

use crate::{replica::ReplicaStatus, store::Store};

/// What the HTTP side reads.
#[derive(Clone)]
pub struct HttpState {
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// When the service is ready.
    pub readiness: Readiness,
    /// The event stream's progress.
    pub replica: Arc<ReplicaStatus>,
    /// Everything `/metrics` shows.
    pub metrics: Arc<Metrics>,
    /// Gauges of the event stream, refreshed at each scrape.
    pub stream: StreamGauges,
}

/// The event stream, as metrics.
#[derive(Clone, Default)]
pub struct StreamGauges {
    /// 1 while a stream is open.
    pub connected: Gauge,
    /// Sequence of the last event seen.
    pub last_sequence: Gauge,
    /// Seconds since that event committed.
    pub lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl StreamGauges {
    /// Registers the gauges in `metrics`.
    pub fn register(&self, metrics: &mut Metrics) {
        let registry = metrics.registry_mut();
        registry.register(
            "user_events_connected",
            "Whether the user event stream from the auth-service is open",
            self.connected.clone(),
        );
        registry.register(
            "user_events_last_sequence",
            "Sequence of the last user event applied or seen",
            self.last_sequence.clone(),
        );
        registry.register(
            "user_events_lag_seconds",
            "Seconds between now and the commit of the last user event seen",
            self.lag_seconds.clone(),
        );
    }
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn stream_state(replica: &ReplicaStatus) -> serde_json::Value {
    json!({
        "connected": replica.connected.load(Ordering::Relaxed),
        "last_sequence": replica.last_sequence.load(Ordering::Relaxed),
    })
}

async fn ready(State(state): State<HttpState>) -> Response {
    let mut body = serde_json::Map::new();
    body.insert("event_stream".into(), stream_state(&state.replica));
    shared::http::readiness_response_with(&state.readiness, body)
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let replica = &state.replica;
    state
        .stream
        .connected
        .set(i64::from(replica.connected.load(Ordering::Relaxed)));
    state
        .stream
        .last_sequence
        .set(replica.last_sequence.load(Ordering::Relaxed));
    let last = replica.last_event_time.load(Ordering::Relaxed);
    if last > 0 {
        state.stream.lag_seconds.set(
            Timestamp::now()
                .since(Timestamp::from_micros(last))
                .as_secs_f64(),
        );
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    shared::http::metrics_response(&state.metrics, state.store.pool_status(), accept)
}
