//! The plain HTTP side both services run beside gRPC: serving a router until
//! the service stops, and the `/metrics` response.
//!
//! The server is bounded like the gRPC side: at most
//! [`MAX_HTTP_CONNECTIONS`](crate::conn::MAX_HTTP_CONNECTIONS) connections
//! (counted against the process's descriptor budget too), request headers
//! that must arrive within [`HEADER_TIMEOUT`], and connections closed after
//! [`IDLE_TIMEOUT`] of silence.

use std::{pin::pin, time::Duration};

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    conn::{ConnectionCap, Guarded, MAX_HTTP_CONNECTIONS},
    db::PoolStatus,
    observe::Metrics,
};

/// How long a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection silent this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `stop` is cancelled, letting requests
/// in flight finish. Errors are logged: the HTTP side going down must not
/// take the gRPC service with it.
pub fn spawn(listener: TcpListener, router: Router, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(serve(listener, router, stop))
}

async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let cap = ConnectionCap::new(MAX_HTTP_CONNECTIONS);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait for some to close
                // rather than spin.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slots) = cap.admit() else {
            tracing::debug!("HTTP connection refused: too many open connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Guarded::new(stream, IDLE_TIMEOUT, Some(slots)));
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let mut connection = pin!(builder.serve_connection(io, service));
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("HTTP connections still open after the drain period: closed");
    }
}

/// `/readyz`: 200 while every condition of `readiness` holds, else 503;
/// the body says which hold. The same state gRPC health reports.
pub fn readiness_response(readiness: &crate::harness::Readiness) -> Response {
    readiness_response_with(readiness, serde_json::Map::new())
}

/// `/readyz` with more to say in the body (what does not decide readiness).
pub fn readiness_response_with(
    readiness: &crate::harness::Readiness,
    mut body: serde_json::Map<String, serde_json::Value>,
) -> Response {
    let ready = readiness.is_ready();
    body.insert(
        "status".into(),
        if ready { "ready" } else { "not ready" }.into(),
    );
    for (name, holds) in readiness.report() {
        body.insert(name.into(), holds.into());
    }
    let code = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(serde_json::Value::Object(body))).into_response()
}

/// `/metrics`: everything in `metrics`, with the pool's state refreshed
/// first, as OpenMetrics when the scraper asks for it (`Accept:
/// application/openmetrics-text`) and in the Prometheus text format
/// otherwise.
pub fn metrics_response(metrics: &Metrics, pool: PoolStatus, accept: Option<&str>) -> Response {
    metrics.record_pool(pool);
    let openmetrics = metrics.encode();
    if accept.is_some_and(|accept| accept.contains("application/openmetrics-text")) {
        return (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            openmetrics,
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        prometheus_text(&openmetrics),
    )
        .into_response()
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition: no `#
/// EOF` or `# UNIT` lines, and a counter's HELP and TYPE name its `_total`
/// samples.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let openmetrics = "# HELP calls Calls.\n# TYPE calls counter\ncalls_total{code=\"OK\"} 3\n\
                           # HELP up Up.\n# TYPE up gauge\n# UNIT up seconds\nup 1\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP calls_total Calls.\n# TYPE calls_total counter\ncalls_total{code=\"OK\"} 3\n\
             # HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }
}
