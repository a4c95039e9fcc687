//! The pool worker: keeps each isolation tier's ready containers of the
//! configured image (`pool.min_size` runc, `pool.gvisor_min_size` gVisor,
//! raised for a while after a burst of claims, see `demand.rs`),
//! rolls ready containers of an older image, trims a pool that shrank, and
//! never goes past `pool.max_size` containers of all tiers together.

use super::{new_container_name, Orchestrator, OrchestratorError};
use crate::codes::DestroyReason;
use crate::config::IsolationTier;
use crate::state::{ContainerRecord, ContainerState};
use crate::workers::{Shutdown, WorkerState};
use std::sync::Arc;
use std::time::Duration;

pub(super) const WORKER: &str = "pool_refill";
const TICK: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one pass of the worker should do.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// Ready containers to remove, with the reason.
    pub destroy: Vec<(String, DestroyReason)>,
    /// How many containers to create.
    pub create: usize,
    /// How many of those get a pre-started CLI (the first ones).
    pub prestart: usize,
}

/// Pure: decides one tier's pool from the records alone, so it is
/// unit-tested. Containers of other tiers count only towards `max`.
/// `prestarted_max` bounds the kept containers with a pre-started CLI.
pub(super) fn plan(
    records: &[ContainerRecord],
    image: &str,
    tier: IsolationTier,
    min: usize,
    max: usize,
    prestarted_max: Option<usize>,
) -> Plan {
    let mut plan = Plan::default();
    let mut ready: Vec<&ContainerRecord> = Vec::new();
    let mut warming: Vec<&ContainerRecord> = Vec::new();
    for r in records.iter().filter(|r| !r.cold && r.tier == tier) {
        match r.state {
            ContainerState::Ready if r.image != image => {
                plan.destroy
                    .push((r.name.clone(), DestroyReason::ImageRoll));
            }
            ContainerState::Ready => ready.push(r),
            ContainerState::Warming if r.image == image => warming.push(r),
            _ => {}
        }
    }
    // Shrink: drop the newest first; the oldest are claimed first anyway.
    ready.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
    let excess = (ready.len() + warming.len()).saturating_sub(min);
    for r in ready.iter().take(excess) {
        plan.destroy
            .push((r.name.clone(), DestroyReason::PoolShrink));
    }
    let live = records
        .iter()
        .filter(|r| r.state != ContainerState::Destroying)
        .count()
        .saturating_sub(plan.destroy.len());
    let kept = || ready.iter().skip(excess).chain(&warming);
    let pool = kept().count();
    plan.create = min.saturating_sub(pool).min(max.saturating_sub(live));
    let prestarted = kept().filter(|r| r.prestarted).count();
    plan.prestart = prestarted_max.map_or(plan.create, |m| {
        m.saturating_sub(prestarted).min(plan.create)
    });
    plan
}

impl Orchestrator {
    pub(super) async fn refill_loop(self: Arc<Self>, mut shutdown: Shutdown) {
        // Doubled by hand, not through a retry crate (backon and the like):
        // this loop never gives up, resets on success, still wakes on a
        // refill request and reports each failure to the worker status; a
        // retry combinator wraps one call and models none of that.
        let mut backoff = Duration::ZERO;
        loop {
            tokio::select! {
                _ = self.refill.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                () = shutdown.requested() => return,
            }
            // Nothing to create on an engine that is down; the engine watch
            // wakes this loop once it is back, and the pool refills at once.
            if !self.engine_up() {
                backoff = Duration::ZERO;
                continue;
            }
            if !backoff.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    () = shutdown.requested() => return,
                }
            }
            match self.refill_once().await {
                Ok(()) => backoff = Duration::ZERO,
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                    tracing::warn!(message = "Pool refill failed.", error = %e, retry_in_ms = backoff.as_millis() as u64);
                    self.workers
                        .report(WORKER, WorkerState::BackingOff, Some(e.to_string()));
                }
            }
        }
    }

    pub(crate) async fn refill_once(&self) -> Result<(), OrchestratorError> {
        for tier in IsolationTier::ALL {
            self.refill_tier(tier).await?;
        }
        self.workers.report(WORKER, WorkerState::Idle, None);
        Ok(())
    }

    async fn refill_tier(&self, tier: IsolationTier) -> Result<(), OrchestratorError> {
        let cfg = self.cfg();
        let records = self.store.containers().await?;
        let plan = plan(
            &records,
            &cfg.container.image,
            tier,
            self.pool_target(&cfg, tier),
            cfg.pool.max_size,
            cfg.pool.prestarted_max,
        );
        for (name, reason) in &plan.destroy {
            self.destroy(name, *reason).await;
        }
        let mut failures = Vec::new();
        let (mut left, mut created) = (plan.create, 0);
        while left > 0 {
            // Runs waiting for a container go first: a start for one of
            // them serves a user now; the pool can fill after the burst
            // (each cold start asks for a refill when it is done).
            if self.waiting_runs.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                break;
            }
            let batch = left.min(cfg.pool.refill_parallelism);
            let results = futures_util::future::join_all((0..batch).map(|i| {
                let prestart = created + failures.len() + i < plan.prestart;
                async move { self.create(&new_container_name(), tier, prestart).await }
            }))
            .await;
            for result in results {
                match result {
                    Ok(()) => created += 1,
                    Err(e) => failures.push(e),
                }
            }
            left -= batch;
            if !failures.is_empty() {
                break;
            }
        }
        if created > 0 || !plan.destroy.is_empty() {
            tracing::info!(
                message = "Pool refilled.",
                created,
                removed = plan.destroy.len(),
                target = self.pool_target(&cfg, tier),
                tier = tier.as_str()
            );
        }
        match failures.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, state: ContainerState, image: &str, created: u64) -> ContainerRecord {
        let mut r = ContainerRecord::warming(name, image, false);
        r.state = state;
        r.created_ms = created;
        r
    }

    #[test]
    fn fills_up_to_min() {
        let recs = vec![rec("a", ContainerState::Ready, "i", 1)];
        assert_eq!(
            plan(&recs, "i", IsolationTier::Runc, 3, 10, None),
            Plan {
                destroy: vec![],
                create: 2,
                prestart: 2
            }
        );
    }

    #[test]
    fn only_the_first_containers_get_a_prestarted_cli() {
        let mut bare = rec("b", ContainerState::Ready, "i", 2);
        bare.prestarted = false;
        let recs = vec![rec("a", ContainerState::Ready, "i", 1), bare];
        // One pre-started kept of at most two: one of the three new ones.
        let p = plan(&recs, "i", IsolationTier::Runc, 5, 10, Some(2));
        assert_eq!((p.create, p.prestart), (3, 1));
        // Unset: every new one.
        let p = plan(&recs, "i", IsolationTier::Runc, 5, 10, None);
        assert_eq!((p.create, p.prestart), (3, 3));
        // Already enough: none.
        let p = plan(&recs, "i", IsolationTier::Runc, 5, 10, Some(1));
        assert_eq!((p.create, p.prestart), (3, 0));
    }

    #[test]
    fn warming_counts_and_claimed_does_not() {
        let recs = vec![
            rec("a", ContainerState::Warming, "i", 1),
            rec("b", ContainerState::Claimed, "i", 1),
        ];
        assert_eq!(plan(&recs, "i", IsolationTier::Runc, 2, 10, None).create, 1);
    }

    #[test]
    fn never_past_max() {
        let recs: Vec<_> = (0..9)
            .map(|n| rec(&n.to_string(), ContainerState::Claimed, "i", 1))
            .collect();
        assert_eq!(plan(&recs, "i", IsolationTier::Runc, 4, 10, None).create, 1);
    }

    #[test]
    fn rolls_old_image_and_refills() {
        let recs = vec![
            rec("old", ContainerState::Ready, "v1", 1),
            rec("claimed-old", ContainerState::Claimed, "v1", 1),
        ];
        let p = plan(&recs, "v2", IsolationTier::Runc, 1, 10, None);
        assert_eq!(
            p.destroy,
            vec![("old".to_owned(), DestroyReason::ImageRoll)]
        );
        assert_eq!(p.create, 1);
    }

    #[test]
    fn tiers_fill_apart_and_share_max() {
        let gv = |name: &str, state| rec(name, state, "i", 1).with_tier(IsolationTier::Gvisor);
        let recs = vec![
            rec("r", ContainerState::Ready, "i", 1),
            gv("g", ContainerState::Ready),
            gv("g2", ContainerState::Claimed),
        ];
        // The gVisor containers fill nothing of the runc pool, and back.
        assert_eq!(plan(&recs, "i", IsolationTier::Runc, 2, 10, None).create, 1);
        assert_eq!(
            plan(&recs, "i", IsolationTier::Gvisor, 2, 10, None).create,
            1
        );
        // A shrunk gVisor pool removes only gVisor containers.
        let p = plan(&recs, "i", IsolationTier::Gvisor, 0, 10, None);
        assert_eq!(p.destroy, vec![("g".to_owned(), DestroyReason::PoolShrink)]);
        // Every tier counts towards max.
        assert_eq!(
            plan(&recs, "i", IsolationTier::Gvisor, 5, 4, None).create,
            1
        );
    }

    #[test]
    fn shrinks_newest_first() {
        let recs = vec![
            rec("a", ContainerState::Ready, "i", 1),
            rec("b", ContainerState::Ready, "i", 3),
            rec("c", ContainerState::Ready, "i", 2),
        ];
        let p = plan(&recs, "i", IsolationTier::Runc, 1, 10, None);
        assert_eq!(
            p.destroy,
            vec![
                ("b".to_owned(), DestroyReason::PoolShrink),
                ("c".to_owned(), DestroyReason::PoolShrink)
            ]
        );
        assert_eq!(p.create, 0);
    }
}
