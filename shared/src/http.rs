//! The plain HTTP side both services run beside gRPC: serving a router until
//! the service stops, and the `/metrics` response.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{db::PoolStatus, observe::Metrics};

/// Serves `router` on `listener` until `stop` is cancelled, letting requests
/// in flight finish. Errors are logged: the HTTP side going down must not
/// take the gRPC service with it.
pub fn spawn(listener: TcpListener, router: Router, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "HTTP server error");
        }
    })
}

/// `/metrics`: everything in `metrics`, with the pool's state refreshed first.
pub fn metrics_response(metrics: &Metrics, pool: PoolStatus) -> Response {
    metrics.record_pool(pool);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        metrics.encode(),
    )
        .into_response()
}
