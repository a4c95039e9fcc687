//! Health of what the daemon depends on: the Docker engine, the state
//! store, the object store, and the isolation layers in force. Probed at
//! most every [`TTL`], whatever the number of viewers.

use crate::orchestrator::Orchestrator;
use crate::preflight::isolation::{self, HostFacts, IsolationLayers};
use crate::preflight::{engine, storage, Check};
use crate::runtime::ContainerRuntime;
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const TTL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Health {
    pub docker: Check,
    pub state_store: Check,
    pub object_store: Check,
    pub isolation: IsolationLayers,
    pub checked_ms: u64,
}

#[derive(Default)]
pub(super) struct HealthProbe {
    cached: Mutex<Option<(Instant, Health)>>,
}

impl HealthProbe {
    pub(super) async fn get(&self, o: &Orchestrator, runtime: &dyn ContainerRuntime) -> Health {
        let mut cached = self.cached.lock().await;
        if let Some((at, h)) = cached.as_ref() {
            if at.elapsed() < TTL {
                return h.clone();
            }
        }
        let h = probe(o, runtime).await;
        *cached = Some((Instant::now(), h.clone()));
        h
    }
}

async fn probe(o: &Orchestrator, runtime: &dyn ContainerRuntime) -> Health {
    let cfg = o.cfg();
    let info = runtime.engine_info().await;
    let url = cfg.storage.url.clone();
    // Filesystem probes block; keep them off the async workers.
    let (object_store, host) =
        tokio::task::spawn_blocking(move || (storage::object_store(&url), HostFacts::read()))
            .await
            .unwrap_or_else(|e| {
                (
                    Check::fail("object-store", format!("probe panicked: {e}"), ""),
                    HostFacts::default(),
                )
            });
    Health {
        docker: engine::docker(&info),
        state_store: state_store(o, &cfg.state.path).await,
        isolation: isolation::assess(info.as_ref().ok(), &host),
        object_store,
        checked_ms: crate::state::now_ms(),
    }
}

async fn state_store(o: &Orchestrator, path: &std::path::Path) -> Check {
    const NAME: &str = "state-store";
    let store = o.store();
    match (store.containers().await, store.conversations().await) {
        (Ok(c), Ok(v)) => {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            Check::pass(
                NAME,
                format!(
                    "{}: {} containers, {} conversations, {} KiB",
                    path.display(),
                    c.len(),
                    v.len(),
                    size / 1024
                ),
            )
        }
        (Err(e), _) | (_, Err(e)) => Check::fail(
            NAME,
            format!("{}: {e}", path.display()),
            "see the daemon log; restart it to repair the file",
        ),
    }
}
