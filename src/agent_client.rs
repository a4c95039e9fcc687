//! The host's client for the in-container agent's HTTP API on its Unix
//! socket.
//!
//! **Everything read here is hostile input**: the container user can
//! replace `agent.sock` with its own server. Every answer is read within
//! a time bound and a size bound (`[agent]`, [`crate::config::AgentConfig`]); a
//! stream that breaks one ends with [`AgentError::Protocol`].

mod reader;
mod session;

pub use reader::{LineReader, Violation};
pub use session::SessionLines;

use crate::config::AgentConfig;
use agent_protocol::{
    AgentEvent, Confinement, Enforcement, ExecuteRequest, Health, AGENT_SOCKET, INTERRUPT_PATH,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Largest `/health` or refusal body read; the real agent's are a few
/// hundred bytes.
const MAX_SMALL_BODY: usize = 64 * 1024;
/// How long the agent may take to answer a request's head, or to send a
/// small body whole. The real agent answers at once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to answer an interrupt; it answers at once.
const INTERRUPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest part of a refusal body quoted in an error (it reaches clients).
const MAX_QUOTED: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent did not become ready within {0:?}")]
    NotReady(Duration),
    #[error("agent connection: {0}")]
    Connection(String),
    #[error("agent did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("agent refused the request ({status}): {body}")]
    Refused { status: StatusCode, body: String },
    #[error("agent broke the stream protocol: {0}")]
    Protocol(#[from] Violation),
}

pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    pub fn new(socket_dir: &Path) -> Self {
        Self {
            socket: socket_dir.join(AGENT_SOCKET),
        }
    }

    /// Sends one request and waits at most `timeout` for the answer's head.
    async fn send<B>(
        &self,
        req: Request<B>,
        timeout: Duration,
    ) -> Result<hyper::Response<Incoming>, AgentError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let conn = |e: &dyn std::fmt::Display| AgentError::Connection(e.to_string());
        let exchange = async {
            let stream = connect_no_follow(&self.socket)
                .await
                .map_err(|e| conn(&e))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| conn(&e))?;
            tokio::spawn(connection);
            sender.send_request(req).await.map_err(|e| conn(&e))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| AgentError::NoAnswer(timeout))?
    }

    /// Polls `GET /health` until it answers 200 or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            let req = Request::get("/health")
                .header("host", "agent")
                .body(Full::new(Bytes::new()))
                .map_err(|e| AgentError::Connection(e.to_string()))?;
            // Each attempt within what is left, so an agent that accepts
            // and never answers cannot hold the caller past its deadline.
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(25));
            if let Ok(resp) = self.send(req, left.min(REQUEST_TIMEOUT)).await {
                if resp.status() == StatusCode::OK {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(AgentError::NotReady(timeout));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Reads the agent's confinement report from `GET /health`.
    pub async fn confinement(&self) -> Result<Confinement, AgentError> {
        let req = Request::get("/health")
            .header("host", "agent")
            .body(Full::new(Bytes::new()))
            .map_err(|e| AgentError::Connection(e.to_string()))?;
        let resp = self.send(req, REQUEST_TIMEOUT).await?;
        let body = read_small(resp.into_body(), "health").await?;
        serde_json::from_slice::<Health>(&body)
            .map(|h| h.confinement)
            .map_err(|e| AgentError::Connection(format!("health body: {e}")))
    }
    /// Logs how the container confines itself; a Landlock that is not
    /// fully enforced is a warning, since the path layer is then weaker.
    pub async fn log_confinement(&self, container: &str) {
        match self.confinement().await {
            Ok(c) => {
                let enforcement = serde_json::to_value(c.landlock).unwrap_or_default();
                let enforcement = enforcement.as_str().unwrap_or("unknown");
                let detail = c.detail.as_deref().unwrap_or("");
                if matches!(
                    c.landlock,
                    Enforcement::FullyEnforced | Enforcement::Skipped
                ) {
                    tracing::info!(message = "Container confinement.", container_id = %container,
                        layer = c.layer.as_str(), landlock = enforcement, landlock_abi = ?c.landlock_abi, detail);
                } else {
                    tracing::warn!(message = "Container confinement is weaker than intended.", container_id = %container,
                        layer = c.layer.as_str(), landlock = enforcement, landlock_abi = ?c.landlock_abi, detail);
                }
            }
            Err(error) => {
                tracing::warn!(message = "Container confinement unknown.", container_id = %container, %error)
            }
        }
    }

    /// Sends a request whose answer is a stream (a run's events, a
    /// session's lines) and returns that stream's body. An agent that does
    /// not answer in time broke the protocol; a refusal is quoted, bounded.
    async fn open_stream<B>(&self, req: Request<B>) -> Result<Incoming, AgentError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let resp = match self.send(req, REQUEST_TIMEOUT).await {
            Err(AgentError::NoAnswer(d)) => return Err(Violation::NoAnswer(d).into()),
            r => r?,
        };
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = read_small(resp.into_body(), "refusal").await?;
            return Err(AgentError::Refused {
                status,
                body: String::from_utf8_lossy(&body)
                    .chars()
                    .take(MAX_QUOTED)
                    .collect(),
            });
        }
        Ok(resp.into_body())
    }

    /// Asks the agent to stop the turn of the run in progress. `Ok(true)`
    /// when it took the interrupt, `Ok(false)` when it has no run (the
    /// run just ended). Only the status is read, within
    /// [`INTERRUPT_TIMEOUT`]; the run's stream says how the turn ended.
    pub async fn interrupt(&self) -> Result<bool, AgentError> {
        let req = Request::post(INTERRUPT_PATH)
            .header("host", "agent")
            .body(Full::new(Bytes::new()))
            .map_err(|e| AgentError::Connection(e.to_string()))?;
        let resp = self.send(req, INTERRUPT_TIMEOUT).await?;
        match resp.status() {
            StatusCode::ACCEPTED => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            status => Err(AgentError::Refused {
                status,
                body: String::new(),
            }),
        }
    }

    /// Starts a run and forwards its events to `tx` until the agent's
    /// stream ends. A stream that ends without `result` or `error` yields
    /// an error, so the caller always sees an ending; one that breaks a
    /// bound of `limits` yields [`AgentError::Protocol`].
    pub async fn execute(
        &self,
        exec: &ExecuteRequest,
        tx: &mpsc::Sender<AgentEvent>,
        limits: &AgentConfig,
    ) -> Result<(), AgentError> {
        let body = serde_json::to_vec(exec).map_err(|e| AgentError::Connection(e.to_string()))?;
        let req = Request::post("/execute")
            .header("host", "agent")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AgentError::Connection(e.to_string()))?;
        let mut body = self.open_stream(req).await?;
        let mut reader = LineReader::new(limits.max_line_bytes, limits.max_events_per_run);
        let idle = limits.idle_timeout();
        let mut ended = false;
        let mut dropped = 0u64;
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => return Err(Violation::Idle(idle).into()),
                Ok(None) => break,
                Ok(Some(frame)) => frame.map_err(|e| AgentError::Connection(e.to_string()))?,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for line in reader.push(&data)? {
                let ev = match serde_json::from_slice::<AgentEvent>(&line) {
                    // Only the host may say a container was recovered, and
                    // raw CLI lines belong to sessions only.
                    Ok(AgentEvent::ContainerRecovered { .. } | AgentEvent::Stream { .. })
                    | Err(_) => {
                        dropped += 1;
                        continue;
                    }
                    Ok(ev) => ev,
                };
                ended |= matches!(ev, AgentEvent::Result { .. } | AgentEvent::Error { .. });
                // A gone receiver means nobody listens; the run still
                // completes so that its state is recorded.
                let _ = tx.send(ev).await;
            }
        }
        // Counted, not logged one by one: a flood of bad lines must not
        // become a flood of log lines.
        if dropped > 0 || reader.remainder() > 0 {
            tracing::warn!(
                message = "Agent lines dropped.",
                lines = dropped,
                unterminated_bytes = reader.remainder()
            );
        }
        if !ended {
            return Err(AgentError::Connection(
                "agent stream ended without a result".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Reads a small answer whole: at most [`MAX_SMALL_BODY`] bytes within
/// [`REQUEST_TIMEOUT`].
async fn read_small(body: Incoming, what: &'static str) -> Result<Bytes, AgentError> {
    let collect = Limited::new(body, MAX_SMALL_BODY).collect();
    match tokio::time::timeout(REQUEST_TIMEOUT, collect).await {
        Err(_) => Err(Violation::NoAnswer(REQUEST_TIMEOUT).into()),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Violation::BodyTooLarge {
            what,
            limit: MAX_SMALL_BODY,
        }
        .into()),
        Ok(Err(e)) => Err(AgentError::Connection(e.to_string())),
    }
}

/// Connects to the agent's socket without following a symlink there.
///
/// The socket directory is writable from inside the container, so a hostile
/// container could swap `agent.sock` for a symlink to any socket on the
/// host (another container's agent, the engine's). The daemon must reach
/// only the file that is there: it is opened `O_PATH | O_NOFOLLOW`, must be
/// a socket, and is connected to through `/proc/self/fd`, which names that
/// very inode.
async fn connect_no_follow(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; the fd is owned right below.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if !file.metadata()?.file_type().is_socket() {
        return Err(std::io::Error::other(format!(
            "{} is not a socket (a symlink is never followed)",
            path.display()
        )));
    }
    UnixStream::connect(format!("/proc/self/fd/{}", file.as_raw_fd())).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A forged agent on `dir/agent.sock`: answers every request with
    /// `head`, then writes `body` chunks (and holds the connection open).
    fn forged(dir: &Path, head: &'static str, body: Vec<Vec<u8>>) {
        let listener = UnixListener::bind(dir.join(AGENT_SOCKET)).unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    conn.write_all(head.as_bytes()).await?;
                    for chunk in body {
                        conn.write_all(&chunk).await?;
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    std::io::Result::Ok(())
                });
            }
        });
    }

    const STREAM: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\r\n";

    fn limits() -> AgentConfig {
        AgentConfig {
            max_line_bytes: 64 * 1024,
            max_events_per_run: 100,
            idle_timeout_secs: 1,
            ..AgentConfig::default()
        }
    }

    async fn run(dir: &Path) -> (Result<(), AgentError>, Vec<AgentEvent>) {
        let (tx, mut rx) = mpsc::channel(1000);
        let exec = ExecuteRequest {
            prompt: "p".into(),
            options: Default::default(),
            resume_session_id: None,
        };
        let r = AgentClient::new(dir).execute(&exec, &tx, &limits()).await;
        drop(tx);
        let mut got = Vec::new();
        while let Some(ev) = rx.recv().await {
            got.push(ev);
        }
        (r, got)
    }

    #[tokio::test]
    async fn an_endless_line_ends_the_run_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        // 16 MiB in 1 MiB frames, never a newline.
        forged(dir.path(), STREAM, vec![vec![b'x'; 1 << 20]; 16]);
        let (r, got) = run(dir.path()).await;
        assert!(
            matches!(r, Err(AgentError::Protocol(Violation::LineTooLong { .. }))),
            "{r:?}"
        );
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn events_past_the_cap_end_the_run_and_forgeries_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines = AgentEvent::container_recovered().to_line();
        lines.push_str("not json\n");
        lines.push_str(
            &AgentEvent::TextDelta { text: "x".into() }
                .to_line()
                .repeat(200),
        );
        forged(dir.path(), STREAM, vec![lines.into_bytes()]);
        let (r, got) = run(dir.path()).await;
        assert!(
            matches!(
                r,
                Err(AgentError::Protocol(Violation::TooManyEvents {
                    limit: 100
                }))
            ),
            "{r:?}"
        );
        // The forged and the bad line were dropped, and counted: at most
        // 98 events came through (the frame that broke the cap is lost).
        assert!(got.len() <= 98, "{}", got.len());
        assert!(got.iter().all(|e| e.name() == "text_delta"));
    }

    #[tokio::test]
    async fn a_silent_agent_ends_the_run_after_the_idle_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let started = AgentEvent::Started { prestarted: false }.to_line();
        forged(dir.path(), STREAM, vec![started.into_bytes()]);
        let t = Instant::now();
        let (r, got) = run(dir.path()).await;
        assert!(
            matches!(r, Err(AgentError::Protocol(Violation::Idle(_)))),
            "{r:?}"
        );
        assert_eq!(got.len(), 1);
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn large_answers_to_small_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        forged(
            dir.path(),
            "HTTP/1.1 500 Internal Server Error\r\n\r\n",
            vec![vec![b'x'; 1 << 20]],
        );
        let (r, _) = run(dir.path()).await;
        assert!(
            matches!(r, Err(AgentError::Protocol(Violation::BodyTooLarge { .. }))),
            "{r:?}"
        );
        let health = AgentClient::new(dir.path()).confinement().await;
        assert!(
            matches!(
                health,
                Err(AgentError::Protocol(Violation::BodyTooLarge { .. }))
            ),
            "{health:?}"
        );
    }

    #[tokio::test]
    async fn an_agent_that_never_answers_cannot_hold_wait_ready() {
        let dir = tempfile::tempdir().unwrap();
        // Accepts and never answers.
        let listener = UnixListener::bind(dir.path().join(AGENT_SOCKET)).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let t = Instant::now();
        let r = AgentClient::new(dir.path())
            .wait_ready(Duration::from_millis(300))
            .await;
        assert!(matches!(r, Err(AgentError::NotReady(_))), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_socket_connects_and_a_symlink_to_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.sock");
        let listener = UnixListener::bind(&real).unwrap();
        connect_no_follow(&real).await.expect("the socket itself");
        listener.accept().await.unwrap();

        let link = dir.path().join("agent.sock");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = connect_no_follow(&link).await.unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(100), listener.accept()).await;
        assert!(pending.is_err(), "the symlink's target was reached");
    }
}
