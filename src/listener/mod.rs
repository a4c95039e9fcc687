//! Serves HTTP/1.1 on the daemon's two listeners (tenant API and admin):
//! the connection cap, the accept backoff, TLS handshakes, the header-read
//! and idle timeouts (in `conn`) and the drain on shutdown.
//!
//! axum's own `serve` has none of these: a client that opens connections
//! and never finishes a request head would hold file descriptors, which the
//! daemon shares with every container's proxy socket, for as long as it
//! likes. Here a connection holds one permit of the listener's cap from
//! accept to close; at the cap the loop stops accepting (new connections
//! wait in the kernel's accept queue) instead of spinning.

mod conn;

use crate::config::ServerConfig;
use crate::tls::TlsConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// How long the accept loop sleeps after its first resource error
/// (EMFILE and the like); doubled on each further one, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one "cap reached" or "accept failed" warning per listener per
/// period: an attacker decides how often these happen.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Connections the kernel completes and queues for a listener that is at
/// its cap (or out of descriptors). Beyond this it drops new SYNs and
/// clients retry after a second or more; tokio's `bind` asks for only 128.
/// Linux clamps it to `net.core.somaxconn` (4096 by default).
const ACCEPT_BACKLOG: u32 = 1024;

/// Binds a listening socket with an accept queue of `ACCEPT_BACKLOG`.
pub(crate) fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted daemon rebinds while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// The limits of one listener (`server.*` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// A request head (after the TLS handshake, if any) must be complete
    /// within this long of the accept or of its first byte.
    pub header_read_timeout: Duration,
    /// A kept-alive connection waiting for its next request is closed
    /// after this long.
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub(crate) fn api(s: &ServerConfig) -> Self {
        Self::with_cap(s, s.max_connections)
    }

    pub(crate) fn admin(s: &ServerConfig) -> Self {
        Self::with_cap(s, s.admin_max_connections)
    }

    fn with_cap(s: &ServerConfig, max_connections: usize) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(s.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(s.idle_timeout_secs),
            max_connections,
        }
    }
}

/// Accepts and serves connections until `stop` turns true, then stops
/// accepting, lets every connection finish its request in flight (an SSE
/// stream runs to its end) and returns once all are closed. The caller
/// bounds that wait (`server.shutdown_grace_secs`).
pub(crate) async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    tls: Option<Arc<TlsConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    // Config validation keeps the cap within u32 (see `acquire_many` below).
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Doubled by hand, not through a retry crate (backon and the like):
    // the accept loop never gives up, must stay selectable on `stop` while it
    // waits and resets on the next accepted connection; a retry combinator
    // wraps one call and models none of that.
    let mut backoff = FIRST_BACKOFF;
    let (mut cap_warned, mut accept_warned) = (RateLimit::default(), RateLimit::default());
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if cap_warned.due() {
                    tracing::warn!(
                        message = "Connection cap reached; new connections wait to be accepted.",
                        listener = name,
                        max_connections = limits.max_connections
                    );
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        // Never closed; were it, there would be nothing left to serve.
                        Err(_) => break,
                    },
                    () = stopped(&mut stop) => break,
                }
            }
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stopped(&mut stop) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => {
                backoff = FIRST_BACKOFF;
                c
            }
            // The failed connection is gone; the next one is fine.
            Err(e) if is_connection_error(&e) => continue,
            Err(error) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection
                // stays queued and the socket stays readable, so retrying
                // at once would spin until something else frees a
                // descriptor.
                if accept_warned.due() {
                    tracing::warn!(message = "Accept failed; backing off.", listener = name, %error,
                        backoff_ms = backoff.as_millis() as u64);
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopped(&mut stop) => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // SSE events are small writes that must not wait for the previous
        // segment's ACK.
        let _ = tcp.set_nodelay(true);
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(conn::serve(
            conn::Conn {
                listener: name,
                peer,
                limits,
                app: app.clone(),
                stop: stop.clone(),
                _permit: permit,
            },
            tcp,
            acceptor,
        ));
    }
    // Closing the socket refuses new connections while the others drain.
    drop(listener);
    tracing::info!(
        message = "Listener closed; draining connections.",
        listener = name
    );
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// Resolves once `stop` is true; never, if its sender is gone without
/// saying so (the listener then serves until the process ends).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Errors of one pending connection that `accept(2)` reports; the listener
/// itself is fine (see accept(2), "Error handling").
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) || e.raw_os_error().is_some_and(|code| {
        [
            libc::EPROTO,
            libc::ENETDOWN,
            libc::ENOPROTOOPT,
            libc::EHOSTDOWN,
            libc::ENONET,
            libc::EHOSTUNREACH,
            libc::EOPNOTSUPP,
            libc::ENETUNREACH,
            libc::EPERM,
        ]
        .contains(&code)
    })
}

#[derive(Default)]
struct RateLimit(Option<Instant>);

impl RateLimit {
    fn due(&mut self) -> bool {
        let now = Instant::now();
        if self
            .0
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard one and returns the result:
/// the connection caps only protect the daemon if the descriptor limit
/// leaves room for them and for the containers' sockets. Under systemd the
/// unit's `LimitNOFILE` sets both, and this changes nothing.
pub(crate) fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests;
