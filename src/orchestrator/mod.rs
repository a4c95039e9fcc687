//! The orchestrator: owns the workspace containers. It keeps a warm pool,
//! binds a container to a conversation in one state transaction (a claim),
//! falls back to a cold start when the pool is empty, reconciles the state
//! file with the engine, and sweeps idle, old and orphaned containers.
//!
//! **Invariants:** a container is recorded (`Warming`) before the engine is
//! asked to create it, so a crash at any point leaves something reconcile
//! can act on; its proxy socket listens before it starts; pool containers
//! carry nothing conversation- or tenant-specific until claimed.

mod create;
mod demand;
mod engine_watch;
mod gc;
mod pool;
mod reconcile;
mod teardown;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;

pub(crate) use engine_watch::EngineStatus;
pub(crate) use teardown::destroy_all;

use crate::agent_client::AgentClient;
use crate::audit::{AuditEvent, Subject};
use crate::codes::{DestroyReason, ErrorCode};
use crate::config::{Config, IsolationTier};
use crate::ids::ConversationKey;
use crate::isolation::{Isolation, IsolationReport};
use crate::locks::RunLocks;
use crate::proxy::{Gateway, ProxyContext, ProxyRegistry};
use crate::runtime::{ContainerRuntime, RuntimeError, DEFAULT_CPU_SHARES};
use crate::state::{Binding, ContainerRecord, ContainerState, StateError, Store};
use crate::workers::{WorkerBoard, WorkerSet, WorkerStatus};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::Notify;

/// `HOME` inside the container: inside the workspace, so the CLI's session
/// files travel with it and a conversation can resume in a new container.
pub(crate) const CONTAINER_HOME: &str = "/workspace/.agentbox/home";

/// How long a reused container's agent may take to answer before the
/// conversation gets a new container.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("container engine: {0}")]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("preparing {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("proxy socket: {0}")]
    Proxy(std::io::Error),
    #[error("container did not become ready: {0}")]
    NotReady(String),
    #[error("at capacity: {0} containers (pool.max_size)")]
    Capacity(usize),
    #[error("workspace quota: {0}")]
    Quota(#[from] crate::isolation::quota::QuotaError),
}

impl OrchestratorError {
    /// Stable code for the SSE `error` event.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Runtime(RuntimeError::Unreachable(_)) => ErrorCode::RuntimeUnavailable,
            Self::Runtime(_) | Self::NotReady(_) => ErrorCode::ContainerStartFailed,
            Self::State(_) => ErrorCode::StateError,
            Self::Prepare { .. } | Self::Quota(_) => ErrorCode::WorkspaceFailed,
            Self::Proxy(_) => ErrorCode::ProxyFailed,
            Self::Capacity(_) => ErrorCode::CapacityExhausted,
        }
    }
}

/// A container ready to run the agent for one conversation.
#[derive(Clone, Debug)]
pub(crate) struct Assigned {
    /// The container's name, which the state records as its id.
    pub container: String,
    pub socket_dir: PathBuf,
    pub workspace_dir: PathBuf,
    /// True when the conversation got this container for this request.
    pub fresh: bool,
    /// True when it replaces a container the conversation lost.
    pub recovered: bool,
}

#[derive(Default)]
struct Counters {
    warm_claims: AtomicU64,
    cold_starts: AtomicU64,
}

/// The picture the admin API and `agentbox status` show.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Status {
    pub pool: PoolStatus,
    pub containers: Vec<ContainerRecord>,
    pub workers: BTreeMap<&'static str, WorkerStatus>,
    /// Which isolation layers protect the containers on this host.
    pub isolation: IsolationReport,
    /// Whether the engine answers (the engine watch).
    pub engine: EngineStatus,
}

impl Status {
    /// The figures behind the pool and container gauges.
    pub(crate) fn gauges(&self) -> crate::metrics::PoolGauges {
        let count = |state| self.containers.iter().filter(|c| c.state == state).count();
        crate::metrics::PoolGauges {
            max_size: self.pool.max_size,
            tiers: self
                .pool
                .tiers
                .iter()
                .map(|t| crate::metrics::TierGauges {
                    tier: t.tier,
                    target: t.target,
                    warming: t.warming,
                    ready: t.ready,
                })
                .collect(),
            warming: count(ContainerState::Warming),
            ready: count(ContainerState::Ready),
            claimed: count(ContainerState::Claimed),
            destroying: count(ContainerState::Destroying),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct PoolStatus {
    pub image: String,
    /// Ready containers kept, all tiers together.
    pub target: usize,
    pub max_size: usize,
    pub ready: usize,
    pub warming: usize,
    pub claimed: usize,
    pub warm_claims_total: u64,
    pub cold_starts_total: u64,
    /// The same figures per isolation tier.
    pub tiers: Vec<TierStatus>,
    /// The tier of tenants that name none.
    pub default_tier: IsolationTier,
}

/// One isolation tier's share of the pool.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TierStatus {
    pub tier: IsolationTier,
    pub target: usize,
    pub ready: usize,
    pub warming: usize,
    pub claimed: usize,
}

pub(crate) struct Orchestrator {
    cfg: RwLock<Arc<Config>>,
    runtime: Arc<dyn ContainerRuntime>,
    store: Store,
    gateway: Arc<Gateway>,
    proxies: ProxyRegistry,
    locks: RunLocks,
    workers: WorkerBoard,
    refill: Notify,
    /// Container starts in flight (`pool.max_parallel_starts`); a fair
    /// semaphore, so runs that wait are served in arrival order.
    starts: tokio::sync::Semaphore,
    /// Woken when a pool container turns ready, for runs waiting on one.
    ready: Notify,
    /// Runs waiting for a container; the refill gives way to them.
    waiting_runs: AtomicUsize,
    /// Recent claims per tier, which raise the pool's target after a burst.
    demand: demand::Demand,
    counters: Counters,
    engine: engine_watch::EngineHealth,
    isolation: Isolation,
    /// Workspace sync, so a container's last changes are pushed before
    /// its workspace is removed.
    sync: std::sync::OnceLock<crate::sync::SyncService>,
    /// One engine weight update at a time once the cgroup already has the
    /// weight: they only bring the engine's record in line, and fifty at
    /// once would take the cores from the runs they are for.
    record_weights: Arc<tokio::sync::Semaphore>,
}

impl Orchestrator {
    #[cfg(test)]
    pub(crate) fn new(
        cfg: Config,
        runtime: Arc<dyn ContainerRuntime>,
        store: Store,
        gateway: Arc<Gateway>,
    ) -> Arc<Self> {
        Self::with_isolation(cfg, runtime, store, gateway, Isolation::default())
    }

    /// The orchestrator with the host's detected isolation layers (seccomp profile, AppArmor or Landlock, userns-remap
    /// ownership, disk quota) for every container it creates.
    pub(crate) fn with_isolation(
        cfg: Config,
        runtime: Arc<dyn ContainerRuntime>,
        store: Store,
        gateway: Arc<Gateway>,
        isolation: Isolation,
    ) -> Arc<Self> {
        Arc::new(Self {
            starts: tokio::sync::Semaphore::new(cfg.pool.max_parallel_starts),
            ready: Notify::new(),
            waiting_runs: AtomicUsize::new(0),
            demand: demand::Demand::default(),
            isolation,
            cfg: RwLock::new(Arc::new(cfg)),
            runtime,
            store,
            gateway,
            proxies: ProxyRegistry::default(),
            locks: RunLocks::default(),
            workers: WorkerBoard::default(),
            refill: Notify::new(),
            counters: Counters::default(),
            engine: engine_watch::EngineHealth::default(),
            sync: std::sync::OnceLock::new(),
            record_weights: Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }

    /// Hands the orchestrator the workspace sync (set once, at start-up).
    pub(crate) fn set_sync(&self, sync: crate::sync::SyncService) {
        let _ = self.sync.set(sync);
    }

    /// The configuration in force (replaced on reload).
    pub(crate) fn cfg(&self) -> Arc<Config> {
        self.cfg.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn locks(&self) -> &RunLocks {
        &self.locks
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The egress gateway, whose spend ledger the executor opens and
    /// closes runs on.
    pub(crate) fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Reconciles with the engine, then starts the pool and sweeper
    /// workers in `workers`, which the caller owns and stops. Returns once
    /// the state matches the engine; the pool fills in the background.
    pub(crate) async fn start(
        self: &Arc<Self>,
        workers: &mut WorkerSet,
    ) -> Result<(), OrchestratorError> {
        let interrupted = self.store.interrupt_running_runs().await?;
        if interrupted > 0 {
            tracing::warn!(
                message = "Runs interrupted by the last stop.",
                runs = interrupted
            );
        }
        self.reconcile(true).await?;
        let this = self.clone();
        workers.spawn(pool::WORKER, |shutdown| this.refill_loop(shutdown));
        let this = self.clone();
        workers.spawn(gc::WORKER, |shutdown| this.gc_loop(shutdown));
        let this = self.clone();
        workers.spawn(engine_watch::WORKER, |shutdown| {
            this.engine_watch_loop(shutdown)
        });
        Ok(())
    }

    /// Applies a reloaded configuration: pool size, image (rolling the
    /// pool) and GC settings take effect; other sections need a restart.
    pub(crate) fn reload(&self, new: Config) {
        let old = self.cfg();
        if old.server.listen != new.server.listen
            || old.server.admin_listen != new.server.admin_listen
            || old.state.path != new.state.path
            || old.server.instance != new.server.instance
            || old.pool.max_parallel_starts != new.pool.max_parallel_starts
        {
            tracing::warn!(message = "Changes to server.*, state.* and pool.max_parallel_starts apply only after a restart.");
        }
        tracing::info!(message = "Configuration reloaded.", pool_min = new.pool.min_size,
            pool_max = new.pool.max_size, image = %new.container.image);
        *self.cfg.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        self.refill.notify_one();
    }

    /// The conversation's running container, else a claimed pool
    /// container, else a cold start.
    pub(crate) async fn acquire(
        &self,
        key: &ConversationKey,
    ) -> Result<Assigned, OrchestratorError> {
        let mut lost = None;
        if let Some(conv) = self.store.conversation(key).await? {
            if let Some(name) = conv.container_id {
                if self.runtime.is_running(&name).await? && self.healthy(&name).await {
                    self.bind_proxy(&name, key)?;
                    return Ok(self.assigned(&name, false));
                }
                tracing::warn!(message = "Conversation container is gone or unhealthy; assigning a new one.",
                    container_id = %name, tenant_id = %key.tenant_id, conversation_id = %key.conversation_id);
                self.destroy(&name, DestroyReason::Crashed).await;
                lost = Some(name);
            }
        }
        let mut assigned = self.claim_or_start(key).await?;
        if let Some(previous) = lost {
            assigned.recovered = true;
            crate::audit::emit(&AuditEvent::ContainerRecovered {
                subject: subject(&assigned.container, Some(key)),
                previous_container_id: previous,
                reason: "container_lost".to_owned(),
            });
        }
        Ok(assigned)
    }

    /// Whether the engine still runs the container after a connection to
    /// it broke. The engine reports a killed container as running for a
    /// moment, so a "running" answer is re-checked for up to `settle`.
    pub(crate) async fn survived(&self, name: &str, settle: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + settle;
        loop {
            if !self.runtime.is_running(name).await.unwrap_or(false) {
                return false;
            }
            if tokio::time::Instant::now() >= deadline {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Whether the container's agent answers.
    async fn healthy(&self, name: &str) -> bool {
        AgentClient::new(&self.socket_dir(name))
            .wait_ready(HEALTH_TIMEOUT)
            .await
            .is_ok()
    }

    /// A warm container of the tenant's tier, else a cold start once a
    /// start slot is free. While it waits for the slot, a pool container
    /// that turns ready is taken instead: whichever comes first.
    async fn claim_or_start(&self, binding: &Binding) -> Result<Assigned, OrchestratorError> {
        let cfg = self.cfg();
        // The tenant's tier now: a claim never takes another tier's container.
        let tier = cfg.tier_for(&binding.tenant_id);
        self.demand.record(tier, std::time::Instant::now());
        // Counted from the first failed claim until a start slot is taken.
        let mut waiting = None;
        // Pinned across the loop, so the run keeps its place in line.
        let slot = self.starts.acquire();
        tokio::pin!(slot);
        loop {
            // Enabled before the claim, so a container that turns ready
            // between a failed claim and the wait still wakes this run.
            let turned_ready = self.ready.notified();
            tokio::pin!(turned_ready);
            turned_ready.as_mut().enable();
            if let Some(claim) = self
                .store
                .claim(None, &cfg.container.image, tier, binding)
                .await?
            {
                self.counters.warm_claims.fetch_add(1, Ordering::Relaxed);
                self.refill.notify_one();
                if claim.container.low_cpu_weight {
                    self.restore_cpu_weight(&claim.container.name);
                }
                let name = claim.container.name;
                self.bind_proxy(&name, binding)?;
                crate::audit::emit(&AuditEvent::PoolClaimed {
                    subject: subject(&name, Some(binding)),
                    warm: true,
                    tier,
                });
                return Ok(self.assigned(&name, true));
            }
            waiting.get_or_insert_with(|| Waiting::new(&self.waiting_runs));
            tokio::select! {
                // A ready container first: a claim is cheaper than a start.
                biased;
                () = &mut turned_ready => {}
                permit = &mut slot => {
                    // Never closed; a closed semaphore would only mean no limit.
                    let _permit = permit.ok();
                    drop(waiting.take());
                    return self.cold_start(binding, tier).await;
                }
            }
        }
    }

    async fn cold_start(
        &self,
        binding: &Binding,
        tier: IsolationTier,
    ) -> Result<Assigned, OrchestratorError> {
        let cfg = self.cfg();
        let live = self
            .store
            .containers()
            .await?
            .iter()
            .filter(|c| c.state != ContainerState::Destroying)
            .count();
        if live >= cfg.pool.max_size {
            return Err(OrchestratorError::Capacity(cfg.pool.max_size));
        }
        self.counters.cold_starts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(message = "Pool empty; cold start.", tenant_id = %binding.tenant_id,
            conversation_id = %binding.conversation_id, tier = tier.as_str());
        let name = new_container_name();
        // A cold start pre-starts its CLI: it starts while the workspace
        // is restored, before the run needs it.
        self.create_in_slot(&name, Some(binding), tier, true)
            .await?;
        match self
            .store
            .claim(Some(&name), &cfg.container.image, tier, binding)
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                self.destroy(&name, DestroyReason::ClaimFailed).await;
                return Err(OrchestratorError::NotReady(
                    "claim of a cold container failed".into(),
                ));
            }
        };
        self.bind_proxy(&name, binding)?;
        crate::audit::emit(&AuditEvent::PoolClaimed {
            subject: subject(&name, Some(binding)),
            warm: false,
            tier,
        });
        self.refill.notify_one();
        Ok(self.assigned(&name, true))
    }

    /// Gives a claimed pool container the engine's default CPU weight
    /// (`pool.refill_cpu_shares`). Straight into its cgroup when the
    /// runtime can (one file write, before the run reaches the agent);
    /// the engine's update follows off the claim's path, so the engine's
    /// record agrees (a later `docker update` re-applies the whole
    /// record). Without the direct write the engine's update is the raise
    /// itself. A failure leaves the run on the low weight: slower under
    /// contention, not broken; reconcile raises it again at start-up.
    pub(super) fn restore_cpu_weight(&self, name: &str) {
        use crate::metrics::{weight_raised, WeightRaise};
        let written = self.runtime.write_cpu_weight(name, DEFAULT_CPU_SHARES);
        if written {
            weight_raised(WeightRaise::Cgroup);
        }
        let (runtime, name) = (self.runtime.clone(), name.to_owned());
        let queue = written.then(|| self.record_weights.clone());
        tokio::spawn(async move {
            // Never closed; a closed semaphore would only mean no queue.
            let _turn = match &queue {
                Some(queue) => queue.acquire().await.ok(),
                None => None,
            };
            match runtime.set_cpu_shares(&name, DEFAULT_CPU_SHARES).await {
                Ok(()) if !written => weight_raised(WeightRaise::Engine),
                Ok(()) => {}
                Err(error) => {
                    if !written {
                        weight_raised(WeightRaise::Failed);
                    }
                    tracing::warn!(message = "Restoring a claimed container's CPU weight failed.",
                        container_id = %name, written_directly = written, %error);
                }
            }
        });
    }

    fn assigned(&self, name: &str, fresh: bool) -> Assigned {
        Assigned {
            container: name.to_owned(),
            socket_dir: self.socket_dir(name),
            workspace_dir: self.workspace_dir(name),
            fresh,
            recovered: false,
        }
    }

    fn bind_proxy(&self, name: &str, binding: &Binding) -> Result<(), OrchestratorError> {
        self.proxies
            .ensure(
                self.gateway.clone(),
                &self.socket_dir(name),
                proxy_ctx(name, Some(binding)),
            )
            .map_err(OrchestratorError::Proxy)
    }

    /// Removes the conversation's container, if it has one. The caller
    /// holds the conversation's run lock.
    pub(crate) async fn release_conversation(
        &self,
        key: &ConversationKey,
    ) -> Result<(), OrchestratorError> {
        if let Some(name) = self
            .store
            .conversation(key)
            .await?
            .and_then(|c| c.container_id)
        {
            self.destroy(&name, DestroyReason::Deleted).await;
        }
        Ok(())
    }

    /// Records agent activity, which the idle TTL is measured from.
    pub(crate) async fn touch(&self, name: &str) {
        if let Err(error) = self.store.touch_container(name).await {
            tracing::warn!(message = "Recording activity failed.", container_id = %name, %error);
        }
    }

    /// Removes a container and everything that belongs to it. Idempotent;
    /// a failure leaves the record `Destroying` for the sweeper to retry.
    pub(crate) async fn destroy(&self, name: &str, reason: DestroyReason) {
        let rec = self.store.container(name).await.ok().flatten();
        if rec.as_ref().is_some_and(|r| r.state.can_destroy()) {
            let _ = self
                .store
                .transition(name, ContainerState::Destroying)
                .await;
        }
        self.proxies.stop(name);
        if let Err(error) = self.runtime.remove(name).await {
            tracing::warn!(message = "Container removal failed; will retry.", container_id = %name, %error);
            return;
        }
        // The workspace outlives its container on the host: push what the
        // last checkpoint missed (a crash mid-run) before it goes. The
        // conversation's generation has not moved on yet, so the push is
        // not fenced off; it is refused if the workspace was never restored.
        // A conversation that moved to another host is never pushed from
        // here: the bucket holds a newer generation than this copy.
        if let (Some(sync), Some(b)) = (
            self.sync.get(),
            rec.as_ref().and_then(|r| r.binding.as_ref()),
        ) {
            if reason == DestroyReason::Moved {
                tracing::info!(message = "Dropping a moved conversation's container unpushed.", container_id = %name);
            } else if let Err(error) = sync.push_now(b).await {
                tracing::warn!(message = "Final push before removal failed.", container_id = %name, %error);
            }
            sync.forget(b);
        }
        self.remove_dirs(name);
        if let Err(error) = self.store.remove_container(name).await {
            tracing::warn!(message = "Forgetting container failed.", container_id = %name, %error);
        }
        let binding = rec.and_then(|r| r.binding);
        crate::audit::emit(&AuditEvent::ContainerDestroyed {
            subject: subject(name, binding.as_ref()),
            reason,
        });
    }

    fn remove_dirs(&self, name: &str) {
        // A quota filesystem must be unmounted first, or removing the
        // workspace empties it and leaves the mount and its image behind.
        if let Err(error) = crate::isolation::quota::release(&self.workspace_dir(name)) {
            tracing::warn!(message = "Releasing the workspace quota failed.", container_id = %name, %error);
        }
        for dir in [self.socket_dir(name), self.workspace_dir(name)] {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(message = "Removing directory failed.", path = %dir.display(), error = %e);
                }
            }
        }
    }

    pub(crate) async fn status(&self) -> Result<Status, OrchestratorError> {
        let cfg = self.cfg();
        let containers = self.store.containers().await?;
        let count = |s: ContainerState| {
            containers
                .iter()
                .filter(|c| c.state == s && !c.cold)
                .count()
        };
        let tiers = IsolationTier::ALL
            .iter()
            .map(|&tier| {
                let n = |s: ContainerState, pool_only: bool| {
                    containers
                        .iter()
                        .filter(|c| c.tier == tier && c.state == s && !(pool_only && c.cold))
                        .count()
                };
                TierStatus {
                    tier,
                    target: self.pool_target(&cfg, tier),
                    ready: n(ContainerState::Ready, true),
                    warming: n(ContainerState::Warming, true),
                    claimed: n(ContainerState::Claimed, false),
                }
            })
            .collect();
        Ok(Status {
            pool: PoolStatus {
                image: cfg.container.image.clone(),
                default_tier: cfg.container.isolation_tier,
                tiers,
                target: IsolationTier::ALL
                    .iter()
                    .map(|&t| self.pool_target(&cfg, t))
                    .sum(),
                max_size: cfg.pool.max_size,
                ready: count(ContainerState::Ready),
                warming: count(ContainerState::Warming),
                claimed: containers
                    .iter()
                    .filter(|c| c.state == ContainerState::Claimed)
                    .count(),
                warm_claims_total: self.counters.warm_claims.load(Ordering::Relaxed),
                cold_starts_total: self.counters.cold_starts.load(Ordering::Relaxed),
            },
            containers,
            workers: self.workers.snapshot(),
            isolation: self.isolation.report.clone(),
            engine: self.engine.status(),
        })
    }

    /// Every container's workspace: `{workspace_root}/{container}`, filled
    /// from the object store when a conversation claims it.
    /// The ready containers to keep for `tier` now: its configured size,
    /// raised after a burst of claims (see `demand.rs`).
    pub(crate) fn pool_target(&self, cfg: &Config, tier: IsolationTier) -> usize {
        let window = std::time::Duration::from_secs(cfg.pool.burst_window_secs);
        let recent = self.demand.recent(tier, std::time::Instant::now(), window);
        demand::target(cfg.pool_min(tier), recent, cfg.pool.burst_max_size)
    }

    pub(crate) fn workspace_dir(&self, name: &str) -> PathBuf {
        self.cfg().container.workspace_root.join(name)
    }

    pub(crate) fn socket_dir(&self, name: &str) -> PathBuf {
        self.cfg().container.socket_root.join(name)
    }
}

/// Counts a run as waiting for a container while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) fn new_container_name() -> String {
    format!("agentbox-{}", uuid::Uuid::new_v4().simple())
}

fn subject(name: &str, binding: Option<&Binding>) -> Subject {
    Subject {
        tenant_id: binding.map(|b| b.tenant_id.clone()).unwrap_or_default(),
        conversation_id: binding
            .map(|b| b.conversation_id.clone())
            .unwrap_or_default(),
        container_id: name.to_owned(),
    }
}

fn proxy_ctx(name: &str, binding: Option<&Binding>) -> ProxyContext {
    ProxyContext {
        container_id: name.to_owned(),
        tenant_id: binding.map(|b| b.tenant_id.clone()).unwrap_or_default(),
        conversation_id: binding
            .map(|b| b.conversation_id.clone())
            .unwrap_or_default(),
    }
}
