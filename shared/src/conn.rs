//! Accepted connections, bounded in number and in silence.
//!
//! Every connection takes a slot from its listener's cap and one from the
//! process's, which is the descriptor limit less a reserve
//! ([`FD_RESERVE`]) for the database, files and outgoing calls: clients can
//! never take the descriptors the service needs to keep working, and the
//! plain HTTP side, with a small cap of its own, can never take the gRPC
//! side's. A connection over either cap is closed as soon as it is
//! accepted.
//!
//! A connection that sends nothing for `idle` is closed. Healthy HTTP/2
//! clients answer the server's keepalive pings (every 30 s), so only dead,
//! stalled or deliberately slow peers (a TCP connection that never sends the
//! HTTP/2 preface, say) hit it.

use std::{
    io,
    pin::Pin,
    sync::{Arc, LazyLock},
    task::{Context, Poll},
    time::Duration,
};

use std::future::Future;

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// File descriptors never given to client connections: the database pools,
/// SQLite's files, logs, outgoing calls and a margin.
pub const FD_RESERVE: usize = 256;
/// Most connections one gRPC listener keeps open.
pub const MAX_GRPC_CONNECTIONS: usize = 4096;
/// Most connections one plain HTTP listener keeps open.
pub const MAX_HTTP_CONNECTIONS: usize = 256;

/// Connection slots of the whole process.
static PROCESS_SLOTS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(connection_budget())));

/// Descriptors the process may spend on client connections: its
/// descriptor limit (raised to the hard limit first) less [`FD_RESERVE`].
fn connection_budget() -> usize {
    let limit = raise_descriptor_limit();
    limit.saturating_sub(FD_RESERVE).max(16)
}

/// Raises the soft limit on open descriptors to the hard limit, and returns
/// the soft limit in force.
fn raise_descriptor_limit() -> usize {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct
        // passed, which lives for the whole call.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return 1024;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    }
    #[cfg(not(unix))]
    1024
}

/// A listener's cap on open connections.
#[derive(Clone)]
pub struct ConnectionCap {
    /// This listener's slots.
    slots: Arc<Semaphore>,
}

impl ConnectionCap {
    /// At most `max` connections at once (and never more than the process's
    /// budget allows).
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    /// Slots for one more connection, or `None` when this listener or the
    /// process is full.
    pub fn admit(&self) -> Option<Slots> {
        let listener = self.slots.clone().try_acquire_owned().ok()?;
        let process = PROCESS_SLOTS.clone().try_acquire_owned().ok()?;
        Some(Slots {
            _listener: listener,
            _process: process,
        })
    }
}

/// The slots one open connection holds; given back when it closes.
pub struct Slots {
    /// In its listener's cap.
    _listener: OwnedSemaphorePermit,
    /// In the process's budget.
    _process: OwnedSemaphorePermit,
}

/// A connection closed after `idle` without a byte from the peer, holding
/// its slots until it closes.
pub struct Guarded<IO> {
    /// The connection.
    io: IO,
    /// A timer due no later than the end of the allowed silence. It is not
    /// moved on every read (that would touch the timer wheel per read):
    /// when it fires, it is moved to `last_read + idle` if the peer has
    /// sent something since it was set.
    deadline: Pin<Box<Sleep>>,
    /// When the peer last sent something.
    last_read: Instant,
    /// How long silence is allowed.
    idle: Duration,
    /// Its place under the connection caps.
    _slots: Option<Slots>,
}

impl<IO> Guarded<IO> {
    /// Wraps `io`, holding `slots` for as long as it is open.
    pub fn new(io: IO, idle: Duration, slots: Option<Slots>) -> Self {
        Self {
            io,
            deadline: Box::pin(tokio::time::sleep(idle)),
            last_read: Instant::now(),
            idle,
            _slots: slots,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(result) = Pin::new(&mut this.io).poll_read(cx, buf) {
            this.last_read = Instant::now();
            return Poll::Ready(result);
        }
        loop {
            if this.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = this.last_read + this.idle;
            if due <= Instant::now() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection silent for too long",
                )));
            }
            // The peer spoke since the timer was set: wait out the rest.
            this.deadline.as_mut().reset(due);
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected for Guarded<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The accepted connections of `listener`, at most
/// [`MAX_GRPC_CONNECTIONS`] at once (others are closed at once), each
/// closed after `idle` of silence.
pub fn incoming(
    listener: TcpListener,
    idle: Duration,
) -> impl Stream<Item = io::Result<Guarded<TcpStream>>> {
    let cap = ConnectionCap::new(MAX_GRPC_CONNECTIONS);
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
        .filter_map(move |accepted| match accepted {
            Ok(stream) => match cap.admit() {
                Some(slots) => Some(Ok(Guarded::new(stream, idle, Some(slots)))),
                None => {
                    tracing::debug!("connection refused: too many open connections");
                    None
                }
            },
            Err(e) => Some(Err(e)),
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::Guarded;

    /// Reads through `guarded` until it fails; when it did (paused time).
    async fn read_until_closed(
        mut guarded: Guarded<tokio::io::DuplexStream>,
    ) -> tokio::time::Instant {
        let mut buf = [0u8; 16];
        while guarded.read(&mut buf).await.is_ok() {}
        tokio::time::Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_keeps_talking_is_kept_and_closed_an_idle_period_after_it_stops() {
        let idle = Duration::from_secs(10);
        let (mut peer, ours) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let reader = tokio::spawn(read_until_closed(Guarded::new(ours, idle, None)));
        // Talking every 6 s, for 60 s: never 10 s of silence.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            peer.write_all(b"ping").await.unwrap();
        }
        let closed = reader.await.unwrap();
        assert_eq!(closed - start, Duration::from_secs(70));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_closed_after_the_idle_period() {
        let (_peer, ours) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let closed = read_until_closed(Guarded::new(ours, Duration::from_secs(10), None)).await;
        assert_eq!(closed - start, Duration::from_secs(10));
    }
}
