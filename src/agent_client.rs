//! The host's client for the in-container agent's HTTP API on its Unix socket.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use workspace_agent::protocol::{
    AgentEvent, Confinement, Enforcement, ExecuteRequest, Health, AGENT_SOCKET,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent did not become ready within {0:?}")]
    NotReady(Duration),
    #[error("agent connection: {0}")]
    Connection(String),
    #[error("agent refused the request ({status}): {body}")]
    Refused { status: StatusCode, body: String },
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

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, AgentError> {
        let conn = |e: &dyn std::fmt::Display| AgentError::Connection(e.to_string());
        let stream = connect_no_follow(&self.socket)
            .await
            .map_err(|e| conn(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| conn(&e))?;
        tokio::spawn(connection);
        sender.send_request(req).await.map_err(|e| conn(&e))
    }

    /// Polls `GET /health` until it answers 200 or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            let req = Request::get("/health")
                .header("host", "agent")
                .body(Full::new(Bytes::new()))
                .map_err(|e| AgentError::Connection(e.to_string()))?;
            if let Ok(resp) = self.send(req).await {
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
        let body = self
            .send(req)
            .await?
            .into_body()
            .collect()
            .await
            .map_err(|e| AgentError::Connection(e.to_string()))?
            .to_bytes();
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

    /// Starts a run and forwards its events to `tx` until the agent's stream
    /// ends. A stream that ends without `result` or `error` yields an error
    /// event, so the caller always sees an ending.
    pub async fn execute(
        &self,
        exec: &ExecuteRequest,
        tx: &mpsc::Sender<AgentEvent>,
    ) -> Result<(), AgentError> {
        let body = serde_json::to_vec(exec).map_err(|e| AgentError::Connection(e.to_string()))?;
        let req = Request::post("/execute")
            .header("host", "agent")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AgentError::Connection(e.to_string()))?;
        let resp = self.send(req).await?;
        match resp.status() {
            StatusCode::OK => {}
            status => {
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return Err(AgentError::Refused {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
            }
        }
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut ended = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| AgentError::Connection(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let Ok(ev) = serde_json::from_slice::<AgentEvent>(&line) else {
                    tracing::warn!(message = "Unparseable agent event dropped.");
                    continue;
                };
                ended |= matches!(ev, AgentEvent::Result { .. } | AgentEvent::Error { .. });
                // A gone receiver means nobody listens; the run still
                // completes so that its state is recorded.
                let _ = tx.send(ev).await;
            }
        }
        if !ended {
            return Err(AgentError::Connection(
                "agent stream ended without a result".to_owned(),
            ));
        }
        Ok(())
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
    use super::connect_no_follow;
    use tokio::net::UnixListener;

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
