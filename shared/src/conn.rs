//! Accepted connections with a bound on silence: a connection that sends
//! nothing for `idle` is closed. Healthy HTTP/2 clients answer the server's
//! keepalive pings (every 30 s), so only dead, stalled or deliberately slow
//! peers (a TCP connection that never sends the HTTP/2 preface, say) hit it.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use std::future::Future;

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::{Instant, Sleep},
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// A connection closed after `idle` without a byte from the peer.
pub struct Guarded<IO> {
    /// The connection.
    io: IO,
    /// When it will be closed unless the peer sends something.
    deadline: Pin<Box<Sleep>>,
    /// How long silence is allowed.
    idle: Duration,
}

impl<IO> Guarded<IO> {
    /// Wraps `io`.
    pub fn new(io: IO, idle: Duration) -> Self {
        Self {
            io,
            deadline: Box::pin(tokio::time::sleep(idle)),
            idle,
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
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.deadline.as_mut().reset(Instant::now() + this.idle);
                Poll::Ready(result)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection silent for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
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

/// The accepted connections of `listener`, each closed after `idle` of
/// silence.
pub fn incoming(
    listener: TcpListener,
    idle: Duration,
) -> impl Stream<Item = io::Result<Guarded<TcpStream>>> {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
        .map(move |accepted| accepted.map(|stream| Guarded::new(stream, idle)))
}
