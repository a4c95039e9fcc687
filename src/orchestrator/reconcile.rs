//! Reconcile: make the state file and the engine agree. At start-up it
//! adopts live containers the state knows, removes ours that it does not
//! know (orphans), forgets those the engine lost and finishes what a crash
//! interrupted; on a timer it does the same, leaving creations in flight
//! alone.

use super::{proxy_ctx, Orchestrator, OrchestratorError};
use crate::agent_client::AgentClient;
use crate::audit::AuditEvent;
use crate::codes::DestroyReason;
use crate::state::{now_ms, ContainerState};
use crate::workers::WorkerState;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// How long an adopted ready container may take to answer at start-up.
const ADOPT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub(crate) struct ReconcileReport {
    pub adopted: usize,
    pub lost: usize,
    pub orphans: usize,
    pub removed: usize,
}

const WORKER: &str = "reconcile";

impl Orchestrator {
    /// One reconcile pass, reported as the `reconcile` worker.
    pub(crate) async fn reconcile(
        &self,
        startup: bool,
    ) -> Result<ReconcileReport, OrchestratorError> {
        let result = self.reconcile_once(startup).await;
        match &result {
            Ok(r) => self.workers.report(
                WORKER,
                WorkerState::Reconciled {
                    adopted: r.adopted,
                    lost: r.lost,
                    orphans: r.orphans,
                    removed: r.removed,
                },
                None,
            ),
            Err(e) => self
                .workers
                .report(WORKER, WorkerState::Failed, Some(e.to_string())),
        }
        result
    }

    async fn reconcile_once(&self, startup: bool) -> Result<ReconcileReport, OrchestratorError> {
        let cfg = self.cfg();
        let engine: HashMap<String, bool> = self
            .runtime
            .list_managed(Some(&cfg.server.instance))
            .await?
            .into_iter()
            .map(|c| (c.name, c.running))
            .collect();
        let records = self.store.containers().await?;
        let mut report = ReconcileReport::default();
        // A creation in flight is recorded before the engine knows it;
        // only one older than any start could take is stale.
        let stale_ms = 2 * cfg.container.start_timeout_secs * 1000;
        for r in &records {
            let in_flight = r.state == ContainerState::Warming
                && !startup
                && now_ms().saturating_sub(r.created_ms) < stale_ms;
            if in_flight {
                continue;
            }
            match engine.get(&r.name) {
                None => {
                    self.proxies.stop(&r.name);
                    self.remove_dirs(&r.name);
                    self.store.remove_container(&r.name).await?;
                    crate::audit::emit(&AuditEvent::ContainerDestroyed {
                        subject: super::subject(&r.name, r.binding.as_ref()),
                        reason: DestroyReason::Lost,
                    });
                    report.lost += 1;
                }
                Some(false) => {
                    crate::audit::emit(&AuditEvent::ContainerCrashed {
                        subject: super::subject(&r.name, r.binding.as_ref()),
                        state: r.state.as_str().to_owned(),
                    });
                    self.destroy(&r.name, DestroyReason::Crashed).await;
                    report.removed += 1;
                }
                Some(true)
                    if matches!(
                        r.state,
                        ContainerState::Warming | ContainerState::Destroying
                    ) =>
                {
                    self.destroy(&r.name, DestroyReason::Interrupted).await;
                    report.removed += 1;
                }
                Some(true) if startup => {
                    self.proxies
                        .ensure(
                            self.gateway.clone(),
                            &self.socket_dir(&r.name),
                            proxy_ctx(&r.name, r.binding.as_ref()),
                        )
                        .map_err(OrchestratorError::Proxy)?;
                    let healthy = AgentClient::new(&self.socket_dir(&r.name))
                        .wait_ready(ADOPT_HEALTH_TIMEOUT)
                        .await
                        .is_ok();
                    if healthy || r.state == ContainerState::Claimed {
                        report.adopted += 1;
                        // A crash may have come between its claim and the
                        // raise of its weight; raising twice is harmless.
                        if r.state == ContainerState::Claimed && r.low_cpu_weight {
                            self.restore_cpu_weight(&r.name);
                        }
                    } else {
                        self.destroy(&r.name, DestroyReason::Unhealthy).await;
                        report.removed += 1;
                    }
                }
                Some(true) => {}
            }
        }
        let known: HashSet<&str> = records.iter().map(|r| r.name.as_str()).collect();
        for name in engine.keys().filter(|n| !known.contains(n.as_str())) {
            tracing::warn!(message = "Removing orphan container.", container_id = %name);
            self.destroy(name, DestroyReason::Orphan).await;
            report.orphans += 1;
        }
        if startup {
            self.sweep_stray_dirs(&known);
        }
        if startup || report.lost + report.orphans + report.removed > 0 {
            tracing::info!(
                message = "Reconciled state with the engine.",
                startup,
                adopted = report.adopted,
                lost = report.lost,
                orphans = report.orphans,
                removed = report.removed
            );
        }
        Ok(report)
    }

    /// Socket and workspace directories left by containers nobody knows.
    fn sweep_stray_dirs(&self, known: &HashSet<&str>) {
        let cfg = self.cfg();
        for root in [&cfg.container.socket_root, &cfg.container.workspace_root] {
            let Ok(entries) = std::fs::read_dir(root) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("agentbox-") && !known.contains(name.as_str()) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}
