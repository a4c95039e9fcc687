//! The sweeper: removes claimed containers idle past `gc.idle_ttl_secs`
//! and any container older than `gc.max_age_secs`, never while its
//! conversation has a run in progress, then reconciles to reclaim orphans.

use super::Orchestrator;
use crate::state::{now_ms, ContainerState};
use std::sync::Arc;
use std::time::Duration;

const WORKER: &str = "gc";

impl Orchestrator {
    pub(super) async fn gc_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(self.cfg().gc.interval_secs)).await;
            match self.sweep().await {
                Ok(removed) => self
                    .workers
                    .report(WORKER, &format!("removed {removed}"), None),
                Err(e) => {
                    tracing::warn!(message = "Sweep failed.", error = %e);
                    self.workers.report(WORKER, "failed", Some(e));
                }
            }
        }
    }

    /// A sweep asked for by an operator (`agentbox gc`), reported like the
    /// timer's so the status page shows it.
    pub async fn sweep_now(&self) -> Result<usize, String> {
        let result = self.sweep().await;
        match &result {
            Ok(n) => self
                .workers
                .report(WORKER, &format!("removed {n} (on request)"), None),
            Err(e) => self.workers.report(WORKER, "failed", Some(e.clone())),
        }
        result
    }

    /// One sweep; returns how many containers it removed.
    pub async fn sweep(&self) -> Result<usize, String> {
        let cfg = self.cfg();
        let now = now_ms();
        let idle_ms = cfg.gc.idle_ttl_secs * 1000;
        let age_ms = cfg.gc.max_age_secs * 1000;
        let mut removed = 0;
        for r in self.store.containers().await.map_err(|e| e.to_string())? {
            let old = now.saturating_sub(r.created_ms) > age_ms;
            let idle = now.saturating_sub(r.last_activity_ms) > idle_ms;
            match (r.state, &r.binding) {
                (ContainerState::Claimed, Some(b)) if idle || old => {
                    // Holding the run lock keeps a new run from starting on
                    // a container being removed.
                    let Some(_guard) = self.locks.try_lock(&b.tenant_id, &b.conversation_id) else {
                        continue;
                    };
                    self.destroy(&r.name, if idle { "idle" } else { "max_age" })
                        .await;
                    removed += 1;
                }
                (ContainerState::Ready, _) if old => {
                    self.destroy(&r.name, "max_age").await;
                    removed += 1;
                }
                _ => {}
            }
        }
        let report = self.reconcile(false).await.map_err(|e| e.to_string())?;
        let cutoff = now.saturating_sub(cfg.gc.run_retention_secs * 1000);
        self.store
            .prune_runs(cutoff)
            .await
            .map_err(|e| e.to_string())?;
        self.locks.prune();
        if removed > 0 {
            self.refill.notify_one();
        }
        Ok(removed + report.orphans + report.removed)
    }
}
