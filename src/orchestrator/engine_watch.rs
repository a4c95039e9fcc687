//! The engine watch: pings the Docker engine every [`TICK`] so the daemon
//! knows when it is gone. While it is down new runs are refused (503
//! `runtime_unavailable`) rather than handed a pool container that died
//! with the engine. When it answers again, a reconcile removes what the
//! outage stopped; only then are runs admitted again and the pool refills
//! (its worker does not try while the engine is down).

use super::Orchestrator;
use crate::audit::{AuditEvent, Subject};
use crate::workers::{Shutdown, WorkerState};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(super) const WORKER: &str = "engine_watch";
/// How often the engine is pinged: an outage shows within this.
const TICK: Duration = Duration::from_secs(1);
/// A ping slower than this counts as down: a stopping engine may accept
/// the connection and never answer.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// What the daemon knows of the engine; starts up, as start-up reconciled
/// with it.
#[derive(Debug)]
pub(super) struct EngineHealth {
    up: AtomicBool,
    /// When the current outage began (0 while up).
    down_since_ms: AtomicU64,
    outages: AtomicU64,
}

impl Default for EngineHealth {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            down_since_ms: AtomicU64::new(0),
            outages: AtomicU64::new(0),
        }
    }
}

/// The engine as the status shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct EngineStatus {
    /// False from a failed ping until the engine answers and a reconcile
    /// went through.
    pub up: bool,
    pub down_since_ms: Option<u64>,
    /// Outages seen since the daemon started.
    pub outages_total: u64,
}

impl EngineHealth {
    pub(super) fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(super) fn status(&self) -> EngineStatus {
        let since = self.down_since_ms.load(Ordering::Acquire);
        EngineStatus {
            up: self.up(),
            down_since_ms: (since > 0).then_some(since),
            outages_total: self.outages.load(Ordering::Acquire),
        }
    }
}

impl Orchestrator {
    /// False while the engine is known to be down: runs are refused.
    pub(crate) fn engine_up(&self) -> bool {
        self.engine.up()
    }

    pub(super) async fn engine_watch_loop(self: Arc<Self>, mut shutdown: Shutdown) {
        crate::metrics::set_engine_up(true);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                () = shutdown.requested() => return,
            }
            self.check_engine().await;
        }
    }

    /// One ping, and what follows from its answer.
    pub(crate) async fn check_engine(&self) {
        let answer = match tokio::time::timeout(PING_TIMEOUT, self.runtime.ping()).await {
            Ok(answer) => answer.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} s", PING_TIMEOUT.as_secs())),
        };
        match (answer, self.engine.up()) {
            (Ok(()), true) => {}
            (Err(error), true) => self.engine_went_down(error),
            (Err(_), false) => {}
            (Ok(()), false) => self.engine_came_back().await,
        }
    }

    fn engine_went_down(&self, error: String) {
        let now = crate::state::now_ms();
        self.engine.down_since_ms.store(now, Ordering::Release);
        self.engine.outages.fetch_add(1, Ordering::AcqRel);
        self.engine.up.store(false, Ordering::Release);
        crate::metrics::set_engine_up(false);
        tracing::error!(message = "Docker engine unreachable; refusing new runs.", %error);
        self.workers
            .report(WORKER, WorkerState::Failed, Some(error.clone()));
        crate::audit::emit(&AuditEvent::EngineUnavailable {
            subject: Subject::default(),
            error,
        });
    }

    /// The engine answers again. Its containers were stopped (unless it
    /// runs with `live-restore`): the reconcile removes them, the pool
    /// refills, and conversations get a new container with their synced
    /// files on their next message. Runs stay refused until the reconcile
    /// went through, so none is handed a dead pool container.
    async fn engine_came_back(&self) {
        if let Err(error) = self.reconcile(false).await {
            tracing::warn!(message = "Engine answers again, but the reconcile failed; runs stay refused.", %error);
            return;
        }
        let since = self.engine.down_since_ms.swap(0, Ordering::AcqRel);
        let down_ms = crate::state::now_ms().saturating_sub(since);
        self.engine.up.store(true, Ordering::Release);
        crate::metrics::set_engine_up(true);
        self.refill.notify_one();
        tracing::info!(
            message = "Docker engine reachable again; runs are admitted.",
            down_ms
        );
        self.workers.report(WORKER, WorkerState::Idle, None);
        crate::audit::emit(&AuditEvent::EngineRecovered {
            subject: Subject::default(),
            down_ms,
        });
    }
}
