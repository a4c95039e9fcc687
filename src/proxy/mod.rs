//! The per-container egress proxy: one Unix socket per container, the
//! container's only way out (it has `--network none`).
//!
//! **Invariant:** credentials exist only inside this module's [`Gateway`];
//! no other part of the daemon, and nothing in a container, ever holds them.

pub mod config;
mod env;
mod gateway;

pub use env::container_env;
pub use gateway::Gateway;

use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use workspace_agent::protocol::PROXY_SOCKET;

/// Who a proxy socket belongs to; carried on every log line it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyContext {
    pub container_id: String,
    pub tenant_id: String,
    pub conversation_id: String,
}

/// The running proxy tasks, one per container.
#[derive(Default)]
pub struct ProxyRegistry {
    tasks: Mutex<HashMap<String, (JoinHandle<()>, ProxyContext)>>,
}

impl ProxyRegistry {
    /// Makes sure a proxy serves `socket_dir/proxy.sock` for the container
    /// with this context, starting one if none runs (after a daemon
    /// restart, or if it died) and restarting it when the context changed
    /// (a pool container claimed by a conversation).
    pub fn ensure(
        &self,
        gateway: Arc<Gateway>,
        socket_dir: &Path,
        ctx: ProxyContext,
    ) -> std::io::Result<()> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((task, current)) = tasks.get(&ctx.container_id) {
            if !task.is_finished() && *current == ctx {
                return Ok(());
            }
            task.abort();
        }
        let listener = bind_socket(&socket_dir.join(PROXY_SOCKET))?;
        let id = ctx.container_id.clone();
        let task = tokio::spawn(serve(listener, gateway, ctx.clone()));
        tasks.insert(id, (task, ctx));
        Ok(())
    }

    /// Stops the container's proxy, if any.
    pub fn stop(&self, container_id: &str) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, _)) = tasks.remove(container_id) {
            t.abort();
        }
    }
}

/// Binds the socket so the container's unprivileged user can connect.
fn bind_socket(path: &PathBuf) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    // Connecting needs write permission on the socket file; the directory
    // around it (owned by the container user, mode 0700) keeps others out.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

async fn serve(listener: UnixListener, gateway: Arc<Gateway>, ctx: ProxyContext) {
    let ctx = Arc::new(ctx);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(error) => {
                tracing::warn!(message = "Proxy accept failed.", %error, container_id = %ctx.container_id);
                continue;
            }
        };
        let (gateway, ctx) = (gateway.clone(), ctx.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (gateway, ctx) = (gateway.clone(), ctx.clone());
                async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, &ctx).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
