//! The execute service: one run of the agent for one conversation. Takes
//! the conversation's run lock, gets a container from the orchestrator,
//! runs the agent and relays its events, and records the Claude session.
//!
//! **Invariant:** API handlers never touch containers; they reach runs
//! through [`crate::conversations`], which calls [`Executor::start_run`],
//! and read the events it sends.

use crate::agent_client::{AgentClient, AgentError, Violation};
use crate::audit::{AuditEvent, ExecutionAudit, Subject};
use crate::codes::{DestroyReason, ErrorCode};
use crate::faults::{self, Phase};
use crate::orchestrator::Orchestrator;
use crate::proxy::{Exceeded, RunSpend, SpendLedger};
use crate::runs::{LiveRun, RunHub};
use crate::state::{now_ms, StateError};
use crate::sync::lease::{LeaseHold, Leases};
use crate::sync::{Placement, RunSync, SyncService};
use agent_protocol::{AgentEvent, ExecuteRequest};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tracing::Instrument;

mod capacity;
mod carried_session;
mod drain;
mod moved;
mod session;
mod steps;
#[cfg(test)]
pub(crate) mod tests;

pub(crate) use drain::Drain;

/// How long a broken agent connection may take to show as a stopped container.
const LOSS_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecuteError {
    #[error("a run is already in progress for this conversation")]
    Busy,
    #[error("the daemon is shutting down; send the message again once it is back")]
    ShuttingDown,
    #[error("the state file's disk has {free_mb} MiB free, below state.min_free_mb ({min_mb}); new runs start again once space returns")]
    StateDiskFull { free_mb: u64, min_mb: u64 },
    #[error("the Docker engine does not answer; runs start again once it is back")]
    EngineUnavailable,
    /// Another host's live lease: it runs the conversation now.
    #[error(
        "host {holder} is running this conversation (its lease runs {expires_in_ms} ms more); \
         send the message again once that run ended"
    )]
    HeldElsewhere { holder: String, expires_in_ms: u64 },
    /// Every container slot is taken and the conversation has none here.
    #[error("this host runs its most containers (pool.max_size = {max}); another host may take the conversation")]
    AtCapacity { max: usize },
    /// The conversation's lease could not be read or written.
    #[error("the conversation's lease in the object store: {0}")]
    Lease(String),
    #[error(transparent)]
    State(#[from] StateError),
}

pub(crate) use crate::ids::ConversationKey;

pub(crate) struct Executor {
    orchestrator: Arc<Orchestrator>,
    hub: Arc<RunHub>,
    sync: SyncService,
    drain: Drain,
    /// Which host runs a conversation (`[scaleout]`); `None` when off.
    leases: Option<Arc<Leases>>,
}

/// What an admitted run holds until it ends: its conversation's run lock
/// and, with leases on, its lease in the bucket.
pub(crate) type RunHold = (tokio::sync::OwnedMutexGuard<()>, Option<LeaseHold>);

impl Executor {
    /// The egress gateway, for checking a run's options against its rules.
    pub(crate) fn gateway(&self) -> &Arc<crate::proxy::Gateway> {
        self.orchestrator.gateway()
    }

    pub(crate) fn new(orchestrator: Arc<Orchestrator>, sync: SyncService) -> Arc<Self> {
        let cfg = orchestrator.cfg();
        let leases = cfg
            .scaleout
            .lease_ttl()
            .map(|ttl| sync.leases(&cfg.server.instance, ttl));
        Arc::new(Self {
            orchestrator,
            hub: Arc::new(RunHub::default()),
            sync,
            drain: Drain::default(),
            leases,
        })
    }

    /// This host's leases, when `[scaleout]` has them on.
    pub(crate) fn leases(&self) -> Option<Arc<Leases>> {
        self.leases.clone()
    }

    pub(crate) fn sync(&self) -> &SyncService {
        &self.sync
    }

    pub(crate) fn hub(&self) -> &RunHub {
        &self.hub
    }

    pub(crate) fn orchestrator(&self) -> &Arc<Orchestrator> {
        &self.orchestrator
    }

    /// Refusal of new runs and the cut of running ones, driven by the
    /// daemon's drain.
    pub(crate) fn drain(&self) -> &Drain {
        &self.drain
    }

    /// Takes the conversation's run lock, records a new run and starts it
    /// in the background. Its events, ending with `result` or `error`, are
    /// on the returned live run whether or not anybody listens.
    #[cfg(test)]
    pub(crate) async fn start_run(
        self: &Arc<Self>,
        key: ConversationKey,
        exec: ExecuteRequest,
    ) -> Result<Arc<LiveRun>, ExecuteError> {
        self.start_run_narrowed(key, exec, None).await
    }

    /// [`Self::start_run`], the run keeping only the named egress rules of
    /// its tenant (`None`: all of them).
    pub(crate) async fn start_run_narrowed(
        self: &Arc<Self>,
        key: ConversationKey,
        exec: ExecuteRequest,
        egress_rules: Option<Vec<String>>,
    ) -> Result<Arc<LiveRun>, ExecuteError> {
        let mut steps = steps::RunSteps::start();
        let (guard, live, tx) = self.begin(&key, egress_rules).await?;
        steps.mark("admit");
        let this = self.clone();
        let interrupts = live.clone();
        // Every line and audit event of the run carries these ids.
        let span = crate::telemetry::execution_span(&key);
        tokio::spawn(
            async move {
                let (_lock, lease) = guard;
                let mut audit = ExecutionAudit::start(&key, &exec.options);
                let outcome = this
                    .run(&key, exec, &tx, &mut audit, &interrupts, &mut steps)
                    .await;
                // Audited before the stream ends, so a client that saw the
                // end can find the record.
                audit.finish(outcome.as_ref().err());
                if let Err(ev) = outcome {
                    tracing::warn!(message = "Run failed.", error = ?ev);
                    let _ = tx.send(ev).await;
                }
                // Let go before the lock: the conversation's next message,
                // here or on another host, finds it free.
                if let Some(lease) = lease {
                    lease.release().await;
                }
            }
            .instrument(span),
        );
        Ok(live)
    }

    /// How every run and session begins: admitted (not while the daemon
    /// drains, not on a state disk too full to record it, not while the
    /// engine is down), the conversation's lock taken, its lease taken
    /// (not while another host runs it), a new run recorded, and the
    /// conversation's egress narrowed to `egress_rules` (`None`: all of
    /// its tenant's rules). Its events go to the returned sender.
    async fn begin(
        &self,
        key: &ConversationKey,
        egress_rules: Option<Vec<String>>,
    ) -> Result<(RunHold, Arc<LiveRun>, mpsc::Sender<AgentEvent>), ExecuteError> {
        let admitted = self.drain.admit().await.ok_or(ExecuteError::ShuttingDown)?;
        self.admissible().await?;
        let guard = self
            .orchestrator
            .locks()
            .try_lock(key)
            .ok_or(ExecuteError::Busy)?;
        // Before the run is recorded: a refused message leaves no trace.
        self.check_capacity(key).await?;
        let lease = self.take_lease(key).await?;
        let store = self.orchestrator.store().clone();
        let run = store.begin_run(key).await?;
        // Under the conversation's lock: no other run of it can be going.
        self.orchestrator.gateway().narrow_conversation(
            &key.tenant_id,
            &key.conversation_id,
            egress_rules,
        );
        // The recorder never waits on the disk, so a short queue keeps up;
        // it bounds what is in flight, where events are parsed values.
        let (tx, rx) = mpsc::channel(16);
        let max_stored = self.orchestrator.cfg().agent.max_stored_bytes_per_run;
        let live = self.hub.record(store, key, run, max_stored, rx);
        drop(admitted);
        Ok(((guard, lease), live, tx))
    }

    /// Whether a new run would be admitted now (the readiness probe): the
    /// checks of [`Self::begin`], taking nothing.
    pub(crate) async fn ready(&self) -> Result<(), ExecuteError> {
        let _admitted = self.drain.admit().await.ok_or(ExecuteError::ShuttingDown)?;
        self.admissible().await
    }

    /// What an admitted run still needs: room on the state disk, and an
    /// engine the watch sees up (a pool container died with the engine:
    /// none is handed out until the watch has reconciled with it again).
    async fn admissible(&self) -> Result<(), ExecuteError> {
        self.check_state_disk().await?;
        if !self.orchestrator.engine_up() {
            return Err(ExecuteError::EngineUnavailable);
        }
        Ok(())
    }

    /// A run writes the state file all along: it does not start on a disk
    /// too full to record it, rather than fail half-way.
    async fn check_state_disk(&self) -> Result<(), ExecuteError> {
        let state = &self.orchestrator.cfg().state;
        let min_mb = state.min_free_mb;
        if min_mb == 0 {
            return Ok(());
        }
        match crate::state::free_bytes(&state.path).await {
            Ok(free) if free < min_mb * 1024 * 1024 => {
                let free_mb = free / (1024 * 1024);
                tracing::warn!(
                    message = "State disk below state.min_free_mb; refusing new runs.",
                    free_mb,
                    min_mb
                );
                Err(ExecuteError::StateDiskFull { free_mb, min_mb })
            }
            Ok(_) => Ok(()),
            Err(error) => {
                // Not known to be full: the run goes on, and a failed write
                // fails it the usual way.
                tracing::warn!(message = "Cannot read the state disk's free space.", %error);
                Ok(())
            }
        }
    }

    async fn run(
        &self,
        key: &ConversationKey,
        mut exec: ExecuteRequest,
        tx: &mpsc::Sender<AgentEvent>,
        audit: &mut ExecutionAudit,
        live: &LiveRun,
        steps: &mut steps::RunSteps,
    ) -> Result<(), AgentEvent> {
        let state_err = |e: StateError| failure(ErrorCode::StateError, e.to_string());
        // The gateway counts the run's spend from here; a tenant whose day
        // is spent gets no container and no agent.
        let meter = RunMeter::begin(
            self.orchestrator.gateway().spend().clone(),
            key,
            exec.options.max_budget_usd,
        )
        .map_err(budget_error)?;
        steps.mark("meter");
        // Upstream failures count from this run on.
        let outcomes = self.orchestrator.gateway().upstream_outcomes().clone();
        let _ = outcomes.take(&key.tenant_id, &key.conversation_id);
        let (assigned, mut run_sync) = self.assign(key, tx, steps).await?;
        tracing::Span::current().record("container_id", assigned.container.as_str());
        audit.set_container(&assigned.container);
        let store = self.orchestrator.store();
        let kept = store
            .conversation(key)
            .await
            .map_err(state_err)?
            .and_then(|c| c.session_id);
        exec.resume_session_id = self.session_to_resume(kept, &assigned).await;
        steps.mark("session_lookup");

        let limits = self.orchestrator.cfg().agent.clone();
        let (agent_tx, mut agent_rx) = mpsc::channel(16);
        let client = AgentClient::new(&assigned.socket_dir);
        let mut cut = self.drain.watch_cut();
        let mut session_id = None;
        let mut result_event = None;
        // The agent has taken the run: an interrupt sent earlier would find
        // no run to stop.
        let agent_took_it = Notify::new();
        let mut tool_result_seen = false;
        let relay = async {
            while let Some(ev) = agent_rx.recv().await {
                if matches!(ev, AgentEvent::Started { .. }) {
                    agent_took_it.notify_one();
                    steps.reached_agent("agent");
                }
                audit.observe(&ev);
                if let AgentEvent::Session { session_id: s }
                | AgentEvent::Result { session_id: s, .. } = &ev
                {
                    if !s.is_empty() {
                        session_id = Some(s.clone());
                    }
                }
                run_sync.observe(&ev);
                // `result` waits for the end-of-run sync: a client that
                // sees it may rely on the turn's files being stored.
                if matches!(ev, AgentEvent::Result { .. }) {
                    result_event = Some(ev);
                    continue;
                }
                let phase = match &ev {
                    AgentEvent::Started { .. } => Some(Phase::AgentStarted),
                    AgentEvent::ToolResult { .. } if !tool_result_seen => {
                        tool_result_seen = true;
                        Some(Phase::MidStream)
                    }
                    _ => None,
                };
                let _ = tx.send(ev).await;
                if let Some(phase) = phase {
                    faults::reach(phase).await;
                }
            }
        };
        // `None`: the daemon's drain cut the run. Dropping the call closes
        // the agent's connection; the next run on the container stops
        // whatever the CLI still does. The run's time limit covers the
        // agent's whole turn; past it the container is replaced below.
        let mut timed_out = false;
        let (outcome, ()) = tokio::join!(
            async {
                let call = tokio::time::timeout(
                    limits.max_run(),
                    client.execute(&exec, &agent_tx, &limits),
                );
                let r = tokio::select! {
                    r = call => match r {
                        Ok(r) => Some(r),
                        Err(_) => {
                            timed_out = true;
                            Some(Ok(()))
                        }
                    },
                    never = forward_interrupts(live, &agent_took_it, &client) => match never {},
                    () = drain::cut_requested(&mut cut) => None,
                };
                drop(agent_tx);
                r
            },
            relay
        );
        if timed_out {
            return Err(self
                .timed_out(&assigned.container, limits.max_run_secs)
                .await);
        }
        let Some(outcome) = outcome else {
            tracing::warn!(message = "Run cut by the drain; syncing its workspace.");
            if let Err(error) = run_sync.finish().await {
                tracing::warn!(message = "Final sync of a cut run failed.", %error);
            }
            meter.finish();
            return Err(failure(
                ErrorCode::ShuttingDown,
                "the daemon is shutting down and the run outlasted server.shutdown_grace_secs; \
                 its files were synced; send the message again once the daemon is back",
            ));
        };
        faults::reach(Phase::FinalSync).await;
        // The end of a run always syncs, and `result` waits for it (capped
        // by storage.final_sync_timeout_secs): a client that saw `result`
        // may rely on the turn's files being in the store. A failed sync
        // is logged, audited and retried in the background; the run's
        // outcome stays the agent's. Files the sync left out for their
        // size are named to the client before `result`.
        if let Ok(report) = run_sync.finish().await {
            if let Some(ev) = self.sync.skipped_event(&report) {
                let _ = tx.send(ev).await;
            }
        }
        let spent = meter.finish();
        tracing::info!(
            message = "Run spend.",
            tokens = spent.spend.tokens(),
            cost_usd = spent.spend.cost_usd,
            exceeded = spent.exceeded.is_some()
        );
        // A stream that broke a bound is not believed: its `result` is
        // not relayed, and its session id is not kept for the next run.
        // A run that went past a spending limit ends with
        // `budget_exceeded` instead of the CLI's `result`.
        let violated = matches!(outcome, Err(AgentError::Protocol(_)));
        // A CLI that gave up on the model API ends the run with the code
        // of what the gateway saw fail, instead of its own `result`.
        let upstream = outcomes.take(&key.tenant_id, &key.conversation_id);
        let upstream = upstream.filter(|_| {
            matches!(
                result_event,
                Some(AgentEvent::Result { is_error: true, .. })
            )
        });
        if violated {
            session_id = None;
        } else if let Some(ev) =
            result_event.filter(|_| spent.exceeded.is_none() && upstream.is_none())
        {
            let _ = tx.send(ev).await;
        }
        self.keep_session(key, &assigned.container, session_id)
            .await?;
        match outcome {
            Ok(()) => match (spent.exceeded, upstream) {
                (Some(over), _) => Err(budget_error(over)),
                (None, Some(failed)) => Err(failure(failed.code(), failed.message())),
                (None, None) => Ok(()),
            },
            Err(AgentError::Protocol(v)) => Err(self.violated(&assigned.container, &v).await),
            Err(e)
                if !self
                    .orchestrator
                    .survived(&assigned.container, LOSS_SETTLE)
                    .await =>
            {
                // The container died under the run: say so, then get the
                // conversation a new one so its next message just works.
                tracing::warn!(message = "Container lost during a run.", container_id = %assigned.container, error = %e);
                let lost = failure(
                    ErrorCode::ContainerLost,
                    format!("the container stopped during the run: {e}"),
                );
                audit.observe(&lost);
                let _ = tx.send(lost).await;
                self.assign(key, tx, &mut steps::RunSteps::start())
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(match spent.exceeded {
                Some(over) => budget_error(over),
                None => failure(ErrorCode::AgentFailed, e.to_string()),
            }),
        }
    }

    /// A stream that broke a bound of `[agent]`: the container can no
    /// longer be trusted (its user may have replaced the agent), so it is
    /// destroyed rather than reused; the conversation's next message gets
    /// a new one with the workspace restored from the store. Only this run
    /// pays: the daemon and other conversations carry on.
    async fn violated(&self, container: &str, violation: &Violation) -> AgentEvent {
        tracing::warn!(message = "Agent broke the stream protocol; destroying its container.",
            container_id = %container, limit = violation.limit(), error = %violation);
        crate::audit::emit(&AuditEvent::AgentProtocolViolation {
            subject: Subject {
                container_id: container.to_owned(),
                ..Subject::default()
            },
            limit: violation.limit().to_owned(),
            detail: violation.to_string(),
        });
        self.orchestrator
            .destroy(container, DestroyReason::AgentProtocolViolation)
            .await;
        failure(
            ErrorCode::AgentProtocolViolation,
            format!(
                "the agent's stream broke a bound: {violation}; its container was destroyed, \
                 the next message gets a new one"
            ),
        )
    }

    /// A run past `agent.max_run_secs`: its tool may still be running, so
    /// the container is replaced rather than reused; what the run changed
    /// since the last checkpoint is pushed first (the orchestrator's
    /// removal syncs a claimed container's workspace), and the next
    /// message restores it into a new one.
    /// After a run or session: the container was just used, and the
    /// conversation keeps the Claude session id the agent reported (an
    /// unknown one keeps the previous).
    async fn keep_session(
        &self,
        key: &ConversationKey,
        container: &str,
        session_id: Option<String>,
    ) -> Result<(), AgentEvent> {
        self.orchestrator.touch(container).await;
        self.orchestrator
            .store()
            .update_conversation(key, move |rec| {
                if session_id.is_some() {
                    rec.session_id = session_id;
                }
                rec.last_activity_ms = now_ms();
            })
            .await
            .map(drop)
            .map_err(|e| failure(ErrorCode::StateError, e.to_string()))
    }

    async fn timed_out(&self, container: &str, secs: u64) -> AgentEvent {
        tracing::warn!(message = "Run went past its time limit; replacing its container.",
            container_id = %container, max_run_secs = secs);
        self.orchestrator
            .destroy(container, DestroyReason::RunTimeout)
            .await;
        failure(
            ErrorCode::RunTimeout,
            format!(
                "the run went past agent.max_run_secs ({secs} s); its container was replaced, \
                 the next message gets a new one with the workspace from the last sync"
            ),
        )
    }

    /// The CLI session a run continues: the one this host's state keeps,
    /// else, in a container new to the conversation, the newest one its
    /// restored workspace carries (see `carried_session.rs`).
    async fn session_to_resume(
        &self,
        kept: Option<String>,
        assigned: &crate::orchestrator::Assigned,
    ) -> Option<String> {
        if kept.is_some() || !assigned.fresh {
            return kept;
        }
        let workspace = assigned.workspace_dir.clone();
        let carried = tokio::task::spawn_blocking(move || carried_session::newest(&workspace))
            .await
            .ok()
            .flatten();
        if let Some(id) = &carried {
            tracing::info!(message = "Resuming the session the workspace carries.", session_id = %id);
        }
        carried
    }

    /// The conversation's container with its workspace ready (restored
    /// from the object store when the container is new to it); a
    /// replacement for a lost one is announced with `container_recovered`
    /// once its files are back.
    async fn assign(
        &self,
        key: &ConversationKey,
        tx: &mpsc::Sender<AgentEvent>,
        steps: &mut steps::RunSteps,
    ) -> Result<(crate::orchestrator::Assigned, RunSync), AgentEvent> {
        let assigned = self
            .orchestrator
            .acquire(key)
            .await
            .map_err(|e| failure(e.code(), e.to_string()))?;
        steps.mark("acquire");
        // A claim stamped the container's activity in its own transaction.
        if !assigned.fresh {
            self.orchestrator.touch(&assigned.container).await;
            steps.mark("touch");
        }
        faults::reach(Phase::Claim).await;
        let mut rec = self
            .orchestrator
            .store()
            .conversation(key)
            .await
            .map_err(|e| failure(ErrorCode::StateError, e.to_string()))?
            .ok_or_else(|| failure(ErrorCode::StateError, "the conversation vanished"))?;
        let place = Placement {
            container: &assigned.container,
            workspace_dir: &assigned.workspace_dir,
            fresh: assigned.fresh,
        };
        let run_sync = self
            .sync
            .prepare(&mut rec, place)
            .await
            .map_err(|e| failure(e.code(), e.to_string()))?;
        steps.mark("restore");
        if assigned.recovered {
            let _ = tx.send(AgentEvent::container_recovered()).await;
        }
        Ok((assigned, run_sync))
    }
}

/// Passes each interrupt request of the run to the agent, once the agent
/// has taken the run; ends only when the run does (the caller drops it).
async fn forward_interrupts(
    live: &LiveRun,
    agent_took_it: &Notify,
    client: &AgentClient,
) -> std::convert::Infallible {
    agent_took_it.notified().await;
    loop {
        live.interrupt_requested().await;
        let (accepted, error) = match client.interrupt().await {
            Ok(accepted) => (accepted, None),
            Err(e) => (false, Some(e.to_string())),
        };
        tracing::info!(
            message = "Run interrupt passed to the agent.",
            accepted,
            error = error.as_deref()
        );
        crate::audit::emit(&AuditEvent::AgentExecutionInterrupted {
            subject: Subject::default(),
            accepted,
            error,
        });
    }
}

fn budget_error(e: Exceeded) -> AgentEvent {
    failure(ErrorCode::BudgetExceeded, e.to_string())
}

/// The SSE `error` event a run ends with.
fn failure(code: ErrorCode, message: impl Into<String>) -> AgentEvent {
    AgentEvent::error(code.as_str(), message)
}

/// A run open on the gateway's spend ledger; closed when finished, or
/// when dropped on an early return so the ledger never keeps it.
struct RunMeter {
    ledger: Arc<SpendLedger>,
    key: ConversationKey,
    open: bool,
}

impl RunMeter {
    fn begin(
        ledger: Arc<SpendLedger>,
        key: &ConversationKey,
        max_budget_usd: Option<f64>,
    ) -> Result<Self, Exceeded> {
        ledger.begin_run(&key.tenant_id, &key.conversation_id, max_budget_usd)?;
        Ok(Self {
            ledger,
            key: key.clone(),
            open: true,
        })
    }

    fn finish(mut self) -> RunSpend {
        self.open = false;
        self.ledger
            .end_run(&self.key.tenant_id, &self.key.conversation_id)
    }
}

impl Drop for RunMeter {
    fn drop(&mut self) {
        if self.open {
            self.ledger
                .end_run(&self.key.tenant_id, &self.key.conversation_id);
        }
    }
}
