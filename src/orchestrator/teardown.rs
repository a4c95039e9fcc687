//! `agentbox destroy-all`: removes every container of this instance (or of
//! every instance), their socket and workspace directories, and their state
//! records. For operators and for the end of test runs; changes not yet
//! synced to the object store are lost.

use crate::config::Config;
use crate::runtime::ContainerRuntime;
use crate::state::Store;

#[derive(Debug, Default)]
pub(crate) struct Teardown {
    pub containers: usize,
    pub dirs: usize,
    pub records: usize,
    /// Set when the state file could not be opened (a running daemon holds it).
    pub state_skipped: Option<String>,
}

pub(crate) async fn destroy_all(
    cfg: &Config,
    runtime: &dyn ContainerRuntime,
    every_instance: bool,
) -> Result<Teardown, crate::runtime::RuntimeError> {
    let mut out = Teardown::default();
    let instance = (!every_instance).then_some(cfg.server.instance.as_str());
    for c in runtime.list_managed(instance).await? {
        runtime.remove(&c.name).await?;
        out.containers += 1;
    }
    for root in [&cfg.container.socket_root, &cfg.container.workspace_root] {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("agentbox-") {
                continue;
            }
            // Unmount a workspace quota first; removing through the mount
            // would leave the mount and its image behind.
            let _ = crate::isolation::quota::release(&entry.path());
            if std::fs::remove_dir_all(entry.path()).is_ok() {
                out.dirs += 1;
            }
        }
    }
    // Images whose mount is already gone (after a reboot) are left here.
    let images = cfg
        .container
        .quota_dir
        .clone()
        .unwrap_or_else(|| crate::isolation::default_quota_dir(&cfg.container.workspace_root));
    if let Ok(entries) = std::fs::read_dir(&images) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("agentbox-") && name.ends_with(".ext4") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    match Store::open(&cfg.state.path) {
        Ok(store) => {
            if let Ok(records) = store.containers().await {
                for r in records {
                    if store.remove_container(&r.name).await.is_ok() {
                        out.records += 1;
                    }
                }
            }
        }
        Err(e) => out.state_skipped = Some(e.to_string()),
    }
    Ok(out)
}
