//! Admission: which calls a server takes on, and what a call may hold before
//! its handler runs.
//!
//! A call is in two phases. While its request message is still arriving it
//! holds the bytes received so far (from a process-wide byte budget) and,
//! once it has had to wait for them, a *pending* slot (a few per
//! connection, a bounded number per process); it must finish arriving
//! before a deadline. Only a complete request
//! takes one of the process's *call* slots, for as long as its handler runs.
//! So clients that open calls and never send their message cannot take the
//! call slots from everyone else: they fill their own connection's pending
//! slots, then wait out a short deadline. Whatever is refused is answered at
//! once with `RESOURCE_EXHAUSTED` and a `RetryInfo`, never queued.
//!
//! A call that streams (server reflection, health and event watches)
//! outlives its handler, so it also holds one of a bounded number of stream
//! slots until its response ends. Methods whose client sends a stream cannot
//! be buffered; they take their slots straight away. Paths that name no
//! method go to the router, which answers `UNIMPLEMENTED`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tonic::{
    Status,
    body::Body,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};

use crate::methods;

/// Each this many bytes received extend a call's message deadline by a
/// second, so a large upload over a slow link still arrives.
pub const SLOW_BYTES_PER_SEC: usize = 64 * 1024;
/// Calls of one connection that may wait for their message at once.
pub const PENDING_PER_CONNECTION: usize = 64;
/// How long a call may wait for its message before it counts as waiting:
/// a message sent right behind its headers arrives well within it.
pub const PENDING_GRACE: Duration = Duration::from_millis(100);
/// Request bytes the whole process holds for calls in flight.
pub const MAX_REQUEST_BYTES: usize = 128 * 1024 * 1024;
/// The largest request message any method accepts (the avatar upload, 5
/// MiB, and its framing); each service's own limit may be lower.
pub const MAX_MESSAGE_BYTES: usize = 5 * 1024 * 1024 + 64 * 1024;
/// How soon a refused client is told to retry.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The bounds one server admits calls under.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Calls whose handler runs at once, process-wide.
    pub max_calls: usize,
    /// Streams open at once (event and health watches, reflection),
    /// process-wide.
    pub max_streams: usize,
    /// Calls receiving their message at once, process-wide.
    pub max_pending: usize,
    /// Calls of one connection receiving their message at once.
    pub pending_per_connection: usize,
    /// Base deadline for a request message to arrive.
    pub message_timeout: Duration,
    /// Request bytes held at once, process-wide.
    pub max_request_bytes: usize,
    /// The largest request message.
    pub max_message_bytes: usize,
}

impl Limits {
    /// The defaults around `max_calls` handler slots and a `message_timeout`.
    pub fn new(max_calls: usize, message_timeout: Duration) -> Self {
        let max_calls = max_calls.max(1);
        Self {
            max_calls,
            max_streams: max_calls,
            max_pending: 4 * max_calls,
            pending_per_connection: PENDING_PER_CONNECTION,
            message_timeout,
            max_request_bytes: MAX_REQUEST_BYTES,
            max_message_bytes: MAX_MESSAGE_BYTES,
        }
    }
}

/// The state every connection's copy of the layer shares.
struct Shared {
    /// The bounds.
    limits: Limits,
    /// Handler slots.
    calls: Arc<Semaphore>,
    /// Open-stream slots.
    streams: Arc<Semaphore>,
    /// Slots for calls receiving their message.
    pending: Arc<Semaphore>,
    /// Request bytes, one permit per byte.
    bytes: Arc<Semaphore>,
    /// Calls receiving their message, by connection (peer address). An
    /// entry exists only while its count is above zero, so the map is
    /// bounded by the pending slots.
    per_connection: Mutex<HashMap<SocketAddr, usize>>,
}

/// Puts [`Admission`] around a server's services.
#[derive(Clone)]
pub struct AdmissionLayer {
    /// Shared bounds and counters.
    shared: Arc<Shared>,
}

impl AdmissionLayer {
    /// A layer admitting calls within `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            shared: Arc::new(Shared {
                calls: Arc::new(Semaphore::new(limits.max_calls)),
                streams: Arc::new(Semaphore::new(limits.max_streams.max(1))),
                pending: Arc::new(Semaphore::new(limits.max_pending.max(1))),
                bytes: Arc::new(Semaphore::new(limits.max_request_bytes)),
                per_connection: Mutex::new(HashMap::new()),
                limits,
            }),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`AdmissionLayer`] makes.
#[derive(Clone)]
pub struct Admission<S> {
    /// The wrapped service.
    inner: S,
    /// Shared bounds and counters.
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ResBody> Service<Request<Body>> for Admission<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tower::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let method = methods::lookup(request.uri().path());
            let streaming = method.client_streaming || method.server_streaming;
            // A stream outlives its handler: it holds a stream slot until
            // its response ends.
            let stream_slot = if streaming {
                let Ok(slot) = shared.streams.clone().try_acquire_owned() else {
                    return Ok(refused("Too many open streams; try again shortly"));
                };
                Some(slot)
            } else {
                None
            };
            // A client's stream cannot be read ahead, and an unknown path is
            // answered without its body.
            let buffered = !method.client_streaming && !std::ptr::eq(method, &methods::UNKNOWN);
            let (request, permit) = if buffered {
                let (parts, body) = request.into_parts();
                let message = match receive(body, &shared, peer(&parts.extensions)).await {
                    Ok(message) => message,
                    Err(status) => return Ok(status.into_http()),
                };
                let body = Body::new(http_body_util::Full::new(message.bytes));
                (Request::from_parts(parts, body), message.permit)
            } else {
                (request, None)
            };
            let Ok(_slot) = shared.calls.clone().try_acquire_owned() else {
                return Ok(refused("Server busy; try again shortly"));
            };
            let response = inner.call(request).await?;
            // The received bytes stay counted until the handler is done with
            // the request.
            drop(permit);
            Ok(match stream_slot {
                Some(slot) => response.map(|body| Body::new(Holding { body, _slot: slot })),
                None => response.map(Body::new),
            })
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body holding a slot until it is dropped.
    struct Holding<B> {
        #[pin]
        body: B,
        _slot: OwnedSemaphorePermit,
    }
}

impl<B: http_body::Body> http_body::Body for Holding<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// `RESOURCE_EXHAUSTED` with a `RetryInfo`, as an HTTP response.
fn refused(message: &str) -> Response<Body> {
    crate::status::resource_exhausted(message, RETRY_AFTER).into_http()
}

/// The peer of the connection a request came on.
fn peer(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(|tls| tls.get_ref())
        })
        .and_then(TcpConnectInfo::remote_addr)
}

/// A call receiving its message: holds a process-wide pending slot and
/// counts against its connection until dropped.
struct Pending<'a> {
    /// Shared counters.
    shared: &'a Shared,
    /// The connection, when known.
    peer: Option<SocketAddr>,
    /// The process-wide slot.
    _slot: OwnedSemaphorePermit,
}

impl<'a> Pending<'a> {
    /// A pending slot, or `None` when the connection or the process has
    /// none left.
    fn enter(shared: &'a Shared, peer: Option<SocketAddr>) -> Option<Self> {
        let slot = shared.pending.clone().try_acquire_owned().ok()?;
        if let Some(peer) = peer {
            let mut counts = shared
                .per_connection
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let count = counts.entry(peer).or_insert(0);
            if *count >= shared.limits.pending_per_connection {
                return None;
            }
            *count += 1;
        }
        Some(Self {
            shared,
            peer,
            _slot: slot,
        })
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(peer) = self.peer else { return };
        let mut counts = self
            .shared
            .per_connection
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&peer);
            }
        }
    }
}

/// A received request message and the budget it holds.
struct Message {
    /// The framed message, as the client sent it.
    bytes: Bytes,
    /// Its share of the process's request bytes.
    permit: Option<OwnedSemaphorePermit>,
}

/// Reads the whole request body within its deadline and the byte bounds.
/// A call takes a pending slot only once it has to wait for its message:
/// the usual request, whose message came with its headers, never does.
async fn receive(
    mut body: Body,
    shared: &Shared,
    peer: Option<SocketAddr>,
) -> Result<Message, Status> {
    let limits = &shared.limits;
    let mut deadline = Instant::now() + limits.message_timeout;
    let mut buffer = BytesMut::new();
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut pending: Option<Pending<'_>> = None;
    loop {
        let next = body.frame();
        tokio::pin!(next);
        let polled = std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await;
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending if pending.is_some() => within(deadline, next).await?,
            Poll::Pending => {
                // A message sent right behind its headers is here within the
                // grace; only a call that keeps waiting takes a slot.
                let grace = (Instant::now() + PENDING_GRACE).min(deadline);
                match tokio::time::timeout_at(grace, next.as_mut()).await {
                    Ok(frame) => frame,
                    Err(_) => {
                        pending = Some(Pending::enter(shared, peer).ok_or_else(|| {
                            crate::status::resource_exhausted(
                                "Too many calls waiting for their request message",
                                RETRY_AFTER,
                            )
                        })?);
                        within(deadline, next).await?
                    }
                }
            }
        };
        let frame = match frame {
            None => break,
            Some(Err(status)) => return Err(status),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            // Request trailers carry nothing a unary call needs.
            continue;
        };
        if buffer.len() + data.len() > limits.max_message_bytes {
            return Err(Status::resource_exhausted("Request message too large"));
        }
        let Ok(more) = shared
            .bytes
            .clone()
            .try_acquire_many_owned(data.len() as u32)
        else {
            return Err(crate::status::resource_exhausted(
                "Server busy; try again shortly",
                RETRY_AFTER,
            ));
        };
        match &mut permit {
            Some(permit) => permit.merge(more),
            None => permit = Some(more),
        }
        buffer.extend_from_slice(&data);
        deadline += Duration::from_secs_f64(data.len() as f64 / SLOW_BYTES_PER_SEC as f64);
    }
    drop(pending);
    Ok(Message {
        bytes: buffer.freeze(),
        permit,
    })
}

/// `future`'s output, or `DEADLINE_EXCEEDED` at `deadline`.
async fn within<F: std::future::Future>(deadline: Instant, future: F) -> Result<F::Output, Status> {
    tokio::time::timeout_at(deadline, future)
        .await
        .map_err(|_| Status::deadline_exceeded("The request message did not arrive in time"))
}
