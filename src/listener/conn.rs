//! One connection: the TLS handshake, HTTP/1.1 through hyper, and the
//! clock that closes it when a request head is late or a kept-alive
//! connection stays idle too long.
//!
//! hyper's own `header_read_timeout` starts whenever the connection waits
//! for a head, so it would also cut every kept-alive connection after the
//! (short) head timeout. The [`Clock`] here keeps the two apart, as Go's
//! `ReadHeaderTimeout` and `IdleTimeout` do: a connection is in one of
//! three phases, and only two of them have a deadline.
//!
//! - `Head`: from the accept (handshake included), or from the first byte
//!   after an idle phase, until hyper hands a parsed request to the
//!   service. Deadline: `header_read_timeout`.
//! - `Busy`: from then until the response body is done (or dropped). No
//!   deadline, so an SSE stream lasts as long as its run.
//! - `Idle`: after a response, until the next byte arrives. Deadline:
//!   `idle_timeout`.

use super::Limits;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// What a connection task owns besides its socket.
pub(super) struct Conn {
    pub listener: &'static str,
    pub peer: SocketAddr,
    pub limits: Limits,
    pub app: axum::Router,
    pub stop: watch::Receiver<bool>,
    /// Returned to the listener's cap when the task ends.
    pub _permit: OwnedSemaphorePermit,
}

pub(super) async fn serve(conn: Conn, tcp: TcpStream, tls: Option<TlsAcceptor>) {
    let clock = Arc::new(Clock::new(conn.limits));
    match tls {
        None => drive(conn, Watched::new(tcp, clock.clone()), clock).await,
        Some(acceptor) => {
            #[allow(clippy::expect_used, reason = "a new connection's clock runs")]
            let deadline = clock
                .deadline()
                .expect("a new connection waits for its head");
            match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => drive(conn, Watched::new(tls, clock.clone()), clock).await,
                Ok(Err(error)) => {
                    tracing::debug!(message = "TLS handshake failed.", %error, peer = %conn.peer)
                }
                Err(_) => {
                    tracing::debug!(message = "TLS handshake timed out.", peer = %conn.peer)
                }
            }
        }
    }
}

async fn drive<IO>(mut conn: Conn, io: Watched<IO>, clock: Arc<Clock>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = TowerToHyperService::new(conn.app.clone());
    let service = {
        let clock = clock.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let busy = clock.busy();
            let answer = hyper::service::Service::call(&app, req);
            async move {
                let resp = answer.await?;
                Ok::<_, std::convert::Infallible>(resp.map(|inner| Tracked { inner, _busy: busy }))
            }
        })
    };
    let http = hyper::server::conn::http1::Builder::new()
        // The clock below is the only head timeout (see the module header);
        // hyper's would need a timer and would also cut idle connections.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(io), service)
        // An Agent SDK session's WebSocket leaves the listener here: it is
        // bounded as a run is (one per conversation, the tenant's run
        // limit, the agent's idle bound), not by this connection's slot.
        .with_upgrades();
    tokio::pin!(http);
    let mut draining = false;
    loop {
        let deadline = clock.deadline();
        tokio::select! {
            r = http.as_mut() => {
                if let Err(error) = r {
                    tracing::debug!(message = "Connection ended with an error.", %error,
                        listener = conn.listener, peer = %conn.peer);
                }
                return;
            }
            () = clock.changed.notified() => {}
            () = sleep_until(deadline) => {
                if let Some(phase) = clock.expired() {
                    // Debug only: an attacker decides how many of these there are.
                    tracing::debug!(message = "Connection closed on a timeout.", phase,
                        listener = conn.listener, peer = %conn.peer);
                    return;
                }
            }
            () = super::stopped(&mut conn.stop), if !draining => {
                // Idle connections close now; one in the middle of a
                // request finishes it, then closes.
                draining = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Head(Instant),
    Busy,
    Idle(Instant),
}

/// The phase of one connection (see the module header), moved on by the
/// reads of [`Watched`], the service call and the end of [`Tracked`].
struct Clock {
    limits: Limits,
    phase: Mutex<Phase>,
    /// Wakes the connection task to re-read the deadline.
    changed: Notify,
}

impl Clock {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            phase: Mutex::new(Phase::Head(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, next: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = next;
        self.changed.notify_one();
    }

    fn deadline(&self) -> Option<Instant> {
        match self.phase() {
            Phase::Head(since) => Some(since + self.limits.header_read_timeout),
            Phase::Idle(since) => Some(since + self.limits.idle_timeout),
            Phase::Busy => None,
        }
    }

    /// The name of the phase whose deadline has passed, if one has.
    fn expired(&self) -> Option<&'static str> {
        let over = self.deadline().is_some_and(|d| d <= Instant::now());
        match self.phase() {
            Phase::Head(_) if over => Some("request head"),
            Phase::Idle(_) if over => Some("idle"),
            _ => None,
        }
    }

    /// Bytes arrived: after an idle phase they start the next head. Bytes
    /// of a head or of a request body change nothing.
    fn read_some(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*phase, Phase::Idle(_)) {
            *phase = Phase::Head(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// A request reached the service: no deadline until the returned
    /// guard (carried by the response body) is dropped.
    fn busy(self: &Arc<Self>) -> Busy {
        self.set(Phase::Busy);
        Busy(self.clone())
    }
}

struct Busy(Arc<Clock>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set(Phase::Idle(Instant::now()));
    }
}

/// A response body that ends the `Busy` phase when hyper is done with it.
struct Tracked {
    inner: axum::body::Body,
    _busy: Busy,
}

impl Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    // Forwarded so hyper still sends Content-Length where it is known.
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's stream, telling the clock when bytes arrive.
struct Watched<IO> {
    io: IO,
    clock: Arc<Clock>,
}

impl<IO> Watched<IO> {
    fn new(io: IO, clock: Arc<Clock>) -> Self {
        Self { io, clock }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.read_some();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
