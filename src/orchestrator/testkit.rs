//! A daemon's core for unit tests: the orchestrator on the in-memory
//! runtime, a state file and object store in a temporary directory.

use super::Orchestrator;
use crate::config::Config;
use crate::proxy::{AwsEnv, Gateway};
use crate::runtime::memory::MemoryRuntime;
use crate::state::Store;
use crate::sync::fsx::Owner;
use crate::sync::store::ObjectStoreBackend;
use crate::sync::SyncService;
use std::sync::Arc;

pub(crate) struct Core {
    pub runtime: Arc<MemoryRuntime>,
    pub orchestrator: Arc<Orchestrator>,
    pub store: Store,
    pub sync: SyncService,
    pub backend: Arc<ObjectStoreBackend>,
    /// Keeps the directories for as long as the test runs.
    _dir: tempfile::TempDir,
}

/// A configuration whose directories are inside `dir`, with an empty pool.
pub(crate) fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.state.path = dir.join("state.redb");
    cfg.container.workspace_root = dir.join("ws");
    cfg.container.socket_root = dir.join("s");
    cfg.container.start_timeout_secs = 5;
    cfg.server.instance = "unit".to_owned();
    cfg.pool.min_size = 0;
    cfg.pool.max_size = 4;
    cfg
}

/// The core with `adjust` applied to [`config`]; nothing started yet.
pub(crate) fn core(adjust: impl FnOnce(&mut Config)) -> Core {
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

/// The reason of the last `container_destroyed` audit event for `name`.
pub(crate) fn destroy_reason(name: &str) -> Option<String> {
    crate::admin::recent::events(200)
        .into_iter()
        .find(|e| e.event == "container_destroyed" && e.fields["container_id"] == name)
        .and_then(|e| e.fields["reason"].as_str().map(str::to_owned))
}
