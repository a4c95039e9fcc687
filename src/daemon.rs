//! `agentbox serve`: builds every subsystem from the config, serves the API
//! and drains on SIGTERM.
//!
//! Order: state file -> Docker -> proxy gateway -> object store (sync) ->
//! executor -> listener.
//! On SIGTERM or SIGINT the listener stops accepting; streams in flight get
//! `server.shutdown_grace_secs`, then the process exits 0.

use crate::api::{self, AppState, Authenticator};
use crate::config::Config;
use crate::execute::Executor;
use crate::orchestrator::Orchestrator;
use crate::proxy::Gateway;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::RuntimeError;
use crate::secrets;
use crate::state::{StateError, Store};
use crate::sync::fsx::Owner;
use crate::sync::store::StoreError;
use crate::sync::SyncService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("model gateway: {0}")]
    Gateway(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("object store: {0}")]
    Storage(#[from] StoreError),
}

pub async fn serve(cfg: Config) -> Result<(), DaemonError> {
    let store = Store::open(&cfg.state.path)?;
    let runtime = Arc::new(DockerRuntime::connect().await?);
    let api_key = secrets::anthropic_api_key();
    if api_key.is_none() {
        tracing::warn!(
            message = "ANTHROPIC_API_KEY is not set; model requests go out without a key."
        );
    }
    let gateway = Arc::new(
        Gateway::new(&cfg.model.anthropic_base_url, api_key).map_err(DaemonError::Gateway)?,
    );
    let orchestrator = Orchestrator::new(cfg.clone(), runtime, gateway);
    let owner = Owner {
        uid: cfg.container.uid,
        gid: cfg.container.gid,
    };
    let sync = SyncService::open(&cfg.storage, owner, store.clone())?;
    let executor = Executor::new(orchestrator, store, sync);
    let state = AppState {
        auth: Arc::new(Authenticator::new(&cfg.tenants)),
        executor,
    };
    let addr = cfg.server.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(DaemonError::Serve)?;
    tracing::info!(message = "Listening.", addr = %local, instance = %cfg.server.instance,
        version = env!("CARGO_PKG_VERSION"));

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(message = "Shutdown requested; draining.");
        let _ = stop_tx.send(true);
    });
    let mut drain_rx = stop_rx.clone();
    let server = axum::serve(listener, api::router(state)).with_graceful_shutdown(async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    });
    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    tokio::select! {
        r = server => r.map_err(DaemonError::Serve)?,
        _ = async {
            let _ = drain_rx.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(message = "Grace period over; closing streams still open."),
    }
    tracing::info!(message = "Stopped.");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
