//! A daemon's core for unit tests: the orchestrator on the in-memory
//! runtime, a state file and object store in a temporary directory.

use super::Orchestrator;
use crate::audit::{self, AuditEvent};
use crate::config::Config;
use crate::proxy::{AwsEnv, Gateway};
use crate::runtime::memory::MemoryRuntime;
use crate::state::Store;
use crate::sync::fsx::Owner;
use crate::sync::store::ObjectStoreBackend;
use crate::sync::SyncService;
use std::sync::{Arc, Mutex};

pub(crate) struct Core {
    pub runtime: Arc<MemoryRuntime>,
    pub orchestrator: Arc<Orchestrator>,
    pub store: Store,
    pub sync: SyncService,
    pub backend: Arc<ObjectStoreBackend>,
    /// Keeps the directories for as long as the test runs.
    _dir: tempfile::TempDir,
}

/// A configuration whose directories are inside `dir`, with an empty pool
/// that does not grow after bursts.
pub(crate) fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.state.path = dir.join("state.redb");
    cfg.container.workspace_root = dir.join("ws");
    cfg.container.socket_root = dir.join("s");
    cfg.container.start_timeout_secs = 5;
    cfg.server.instance = "unit".to_owned();
    cfg.pool.min_size = 0;
    cfg.pool.max_size = 4;
    // A fixed pool size: tests count ready containers.
    cfg.pool.burst_max_size = 0;
    cfg
}

/// The core with `adjust` applied to [`config`]; nothing started yet.
pub(crate) fn core(adjust: impl FnOnce(&mut Config)) -> Core {
    audit::subscribe("testkit-destroyed", Arc::new(Destroyed));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path());
    adjust(&mut cfg);
    let store = Store::open(&cfg.state.path).expect("state file");
    let runtime = Arc::new(MemoryRuntime::default());
    let gateway = Arc::new(Gateway::new(&cfg, None, AwsEnv::default()).expect("gateway"));
    let orchestrator = Orchestrator::new(cfg.clone(), runtime.clone(), store.clone(), gateway);
    let backend = Arc::new(ObjectStoreBackend::in_memory());
    let owner = Owner {
        uid: cfg.container.uid,
        gid: cfg.container.gid,
    };
    let sync = SyncService::new(&cfg.storage, owner, store.clone(), backend.clone());
    orchestrator.set_sync(sync.clone());
    Core {
        runtime,
        orchestrator,
        store,
        sync,
        backend,
        _dir: dir,
    }
}

/// Every `container_destroyed` event of the test process: (container,
/// reason). Unbounded, unlike the status page's ring, so a burst of
/// events from other tests cannot push one out before a test looks.
static DESTROYED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Destroyed;

impl audit::Subscriber for Destroyed {
    fn event(&self, event: &AuditEvent) {
        if let AuditEvent::ContainerDestroyed { subject, reason } = event {
            let mut seen = DESTROYED.lock().unwrap_or_else(|e| e.into_inner());
            seen.push((subject.container_id.clone(), reason.to_string()));
        }
    }
}

/// The reason of the last `container_destroyed` audit event for `name`
/// since the first [`core`] of this process.
pub(crate) fn destroy_reason(name: &str) -> Option<String> {
    let seen = DESTROYED.lock().unwrap_or_else(|e| e.into_inner());
    seen.iter()
        .rev()
        .find(|(c, _)| c == name)
        .map(|(_, r)| r.clone())
}
