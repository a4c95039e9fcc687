//! The sweeper: removes claimed containers idle past `gc.idle_ttl_secs`
//! and any container older than `gc.max_age_secs`, never while its
//! conversation has a run in progress, then reconciles to reclaim orphans.

use super::{Orchestrator, OrchestratorError};
use crate::codes::DestroyReason;
use crate::state::{now_ms, ContainerState};
use crate::workers::{Shutdown, WorkerState};
use std::sync::Arc;
use std::time::Duration;

pub(super) const WORKER: &str = "gc";

impl Orchestrator {
    pub(super) async fn gc_loop(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(self.cfg().gc.interval_secs)) => {}
                () = shutdown.requested() => return,
            }
            match self.sweep().await {
                Ok(removed) => self.workers.report(WORKER, swept(removed, false), None),
                Err(e) => {
                    tracing::warn!(message = "Sweep failed.", error = %e);
                    self.workers
                        .report(WORKER, WorkerState::Failed, Some(e.to_string()));
                }
            }
        }
    }

    /// A sweep asked for by an operator (`agentbox gc`), reported like the
    /// timer's so the status page shows it.
    pub(crate) async fn sweep_now(&self) -> Result<usize, OrchestratorError> {
        let result = self.sweep().await;
        match &result {
            Ok(n) => self.workers.report(WORKER, swept(*n, true), None),
            Err(e) => self
                .workers
                .report(WORKER, WorkerState::Failed, Some(e.to_string())),
        }
        result
    }

    /// One sweep; returns how many containers it removed.
    pub(crate) async fn sweep(&self) -> Result<usize, OrchestratorError> {
        let cfg = self.cfg();
        let now = now_ms();
        let idle_ms = cfg.gc.idle_ttl_secs * 1000;
        let age_ms = cfg.gc.max_age_secs * 1000;
        let mut removed = 0;
        for r in self.store.containers().await? {
            let old = now.saturating_sub(r.created_ms) > age_ms;
            let idle = now.saturating_sub(r.last_activity_ms) > idle_ms;
            match (r.state, &r.binding) {
                (ContainerState::Claimed, Some(b)) if idle || old => {
                    // Holding the run lock keeps a new run from starting on
                    // a container being removed.
                    let Some(_guard) = self.locks.try_lock(b) else {
                        continue;
                    };
                    let reason = if idle {
                        DestroyReason::Idle
                    } else {
                        DestroyReason::MaxAge
                    };
                    self.destroy(&r.name, reason).await;
                    removed += 1;
                }
                (ContainerState::Ready, _) if old => {
                    self.destroy(&r.name, DestroyReason::MaxAge).await;
                    removed += 1;
                }
                _ => {}
            }
        }
        let report = self.reconcile(false).await?;
        let cutoff = now.saturating_sub(cfg.gc.run_retention_secs * 1000);
        self.store.prune_runs(cutoff).await?;
        self.locks.prune();
        if removed > 0 {
            self.refill.notify_one();
        }
        Ok(removed + report.orphans + report.removed)
    }
}

fn swept(removed: usize, on_request: bool) -> WorkerState {
    WorkerState::Swept {
        removed,
        on_request,
    }
}
