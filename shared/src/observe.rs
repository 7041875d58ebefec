//! Observability every gRPC server here shares: a span and a log line per
//! call (service, method, status, latency, request id), Prometheus metrics
//! for the same, and `x-request-id` accepted or generated and echoed back.
//!
//! gRPC puts the status in the response trailers (or, for an early error, in
//! the headers), so the layer follows the response body to its end before it
//! records a call.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tonic::Code;
use tower::{Layer, Service};

/// The header carrying a request id.
pub const REQUEST_ID: &str = "x-request-id";

/// Labels of a finished call. Every value comes from a fixed set (the known
/// methods, `unknown`, the status codes), so a client cannot grow them.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// Full service name, e.g. `blog.posts.v1.PostService`, or `unknown`.
    pub service: &'static str,
    /// Method name, e.g. `CreatePost`, or `unknown`.
    pub method: &'static str,
    /// Status code name, e.g. `OK`, `NOT_FOUND`.
    pub code: &'static str,
}

/// Labels of a call's latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// Full service name, or `unknown`.
    pub service: &'static str,
    /// Method name, or `unknown`.
    pub method: &'static str,
}

/// Labels of the database pool gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// `in_use`, `idle` or `max`.
    pub state: &'static str,
}

/// Labels of a refused token.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why it was refused (see `VerifyError::reason`).
    pub reason: &'static str,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// A service's metrics registry with the metrics every service has. Register
/// service-specific metrics with [`Metrics::registry_mut`] before sharing it.
pub struct Metrics {
    /// Everything exposed at `/metrics`.
    registry: Registry,
    /// `grpc_server_handled_total`: calls by service, method and code.
    pub calls: Family<CallLabels, Counter>,
    /// `grpc_server_handling_seconds`: call latency by service and method.
    pub latency: HistogramFamily,
    /// `token_rejections_total`: bearer tokens refused, by reason.
    pub token_rejections: Family<ReasonLabels, Counter>,
    /// `db_pool_connections`: database connections in use, idle, and the maximum.
    pub db_pool: Family<PoolLabels, Gauge>,
    /// `sqlite_wal_bytes`: the size of SQLite's write-ahead log.
    pub wal_bytes: Gauge,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~13 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 18,
    ))
}

impl Metrics {
    /// The common metrics, registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        let latency = HistogramFamily::new_with_constructor(latency_histogram);
        let token_rejections = Family::<ReasonLabels, Counter>::default();
        let db_pool = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "grpc_server_handled",
            "gRPC calls completed, by service, method and status code",
            calls.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "gRPC call latency, from request to end of response",
            latency.clone(),
        );
        registry.register(
            "token_rejections",
            "Bearer tokens refused, by reason",
            token_rejections.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database connections: in use, idle, and the pool's maximum",
            db_pool.clone(),
        );
        let wal_bytes = Gauge::default();
        registry.register(
            "sqlite_wal_bytes",
            "Size of the SQLite database's write-ahead log, in bytes (0 on PostgreSQL)",
            wal_bytes.clone(),
        );
        Self {
            registry,
            calls,
            latency,
            token_rejections,
            db_pool,
            wal_bytes,
        }
    }

    /// The registry, to add service-specific metrics.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Records the database pool's state (call before encoding).
    pub fn record_pool(&self, pool: crate::db::PoolStatus) {
        for (state, value) in [
            ("in_use", pool.size.saturating_sub(pool.idle)),
            ("idle", pool.idle),
            ("max", pool.max),
        ] {
            self.db_pool
                .get_or_create(&PoolLabels { state })
                .set(i64::from(value));
        }
        if let Some(bytes) = pool.wal_bytes {
            self.wal_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Counts a refused token.
    pub fn token_rejected(&self, reason: &'static str) {
        self.token_rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The canonical upper-case name of a status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Adds per-call spans, logs, metrics and request ids to a server.
#[derive(Clone)]
pub struct ObserveLayer {
    /// Where calls are counted.
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`ObserveLayer`] makes.
#[derive(Clone)]
pub struct Observe<S> {
    /// The wrapped service.
    inner: S,
    /// Where calls are counted.
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<tower::BoxError>,
    ReqBody: Send + 'static,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = tower::BoxError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let method = crate::methods::lookup(request.uri().path());
        let request_id = request
            .headers()
            .get(REQUEST_ID)
            .filter(|v| is_good_request_id(v))
            .cloned()
            .unwrap_or_else(new_request_id);
        request.headers_mut().insert(REQUEST_ID, request_id.clone());
        // The caller's trace, or a new one, only read when the span is
        // recorded (its fields are evaluated only then); `user_id` is filled
        // in by the interceptor once a token is verified.
        let span = tracing::info_span!(
            "rpc",
            service = method.service,
            method = method.name,
            request_id = request_id.to_str().unwrap_or_default(),
            trace_id = trace_of(request.headers()).trace_id(),
            user_id = tracing::field::Empty,
        );
        let mut call = Call {
            metrics: self.metrics.clone(),
            method,
            start: Instant::now(),
            span: span.clone(),
            finished: false,
        };
        // Take the service that was polled ready; leave a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = {
                let _entered = span.enter();
                inner.call(request)
            };
            let mut response = match tracing::Instrument::instrument(response, span).await {
                Ok(response) => response,
                Err(e) => {
                    // A layer below refused the call with an error that tonic
                    // turns into a status further out: make that status here,
                    // so it is counted as what the client receives.
                    let status = tonic::Status::from_error(e.into());
                    call.finish(status.code());
                    return Err(Box::new(status) as tower::BoxError);
                }
            };
            response.headers_mut().insert(REQUEST_ID, request_id);
            // An early error carries its status in the headers; otherwise it
            // comes in the trailers at the end of the body.
            let early = response
                .headers()
                .get("grpc-status")
                .map(|code| Code::from_bytes(code.as_bytes()));
            let call = match early {
                Some(code) => {
                    call.finish(code);
                    None
                }
                None => Some(call),
            };
            Ok(response.map(|inner| ObservedBody { inner, call }))
        })
    }
}

fn is_good_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

fn new_request_id() -> HeaderValue {
    let id = crate::ids::hex(&crate::ids::unique_bytes::<12>());
    HeaderValue::try_from(id).expect("hex is a valid header value")
}

/// The trace a call belongs to: its `traceparent`'s, or a new one.
fn trace_of(headers: &http::HeaderMap) -> crate::trace::TraceContext {
    headers
        .get(crate::trace::TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(crate::trace::TraceContext::parse)
        .unwrap_or_else(crate::trace::TraceContext::root)
}

/// A call in flight, recorded once when its status is known, or as
/// `CANCELLED` if it is dropped before that (the client went away, or the
/// server's own deadline cut it short).
struct Call {
    /// Where it is counted.
    metrics: Arc<Metrics>,
    /// What was called.
    method: &'static crate::methods::Method,
    /// When it arrived.
    start: Instant,
    /// Its span, for the closing log line.
    span: tracing::Span,
    /// Whether it has been recorded.
    finished: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.start.elapsed();
        let name = code_name(code);
        let (service, method) = (self.method.service, self.method.name);
        self.metrics
            .calls
            .get_or_create(&CallLabels {
                service,
                method,
                code: name,
            })
            .inc();
        self.metrics
            .latency
            .get_or_create(&MethodLabels { service, method })
            .observe(elapsed.as_secs_f64());
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        self.span.in_scope(|| {
            if matches!(code, Code::Internal | Code::Unknown | Code::DataLoss) {
                tracing::warn!(code = name, latency_ms, "call finished");
            } else {
                tracing::info!(code = name, latency_ms, "call finished");
            }
        });
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the trailers go out (or,
    /// dropped before the end, as cancelled).
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(mut call) = this.call.take()
                {
                    let code = trailers
                        .get("grpc-status")
                        .map_or(Code::Unknown, |c| Code::from_bytes(c.as_bytes()));
                    call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut call) = this.call.take() {
                    call.finish(Code::Internal);
                }
            }
            Poll::Ready(None) => {
                if let Some(mut call) = this.call.take() {
                    call.finish(Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded_visible_ascii() {
        assert!(is_good_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!is_good_request_id(&HeaderValue::from_static("")));
        assert!(!is_good_request_id(&HeaderValue::from_static("has space")));
        assert!(!is_good_request_id(
            &HeaderValue::from_str(&"x".repeat(129)).unwrap()
        ));
        assert!(is_good_request_id(&new_request_id()));
    }

    #[test]
    fn metrics_encode_in_prometheus_text() {
        let metrics = Metrics::new();
        metrics.token_rejected("expired");
        let text = metrics.encode();
        assert!(
            text.contains("token_rejections_total{reason=\"expired\"} 1"),
            "{text}"
        );
    }
}
