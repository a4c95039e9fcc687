//! The execute service: one run of the agent for one conversation. Takes
//! the conversation's run lock, gets a container from the orchestrator,
//! runs the agent and relays its events, and records the Claude session.
//!
//! **Invariant:** API handlers never touch containers; they call
//! [`Executor::start_run`] and read the events it sends.

use crate::agent_client::AgentClient;
use crate::orchestrator::Orchestrator;
use crate::state::{now_ms, ConversationRecord, StateError, Store};
use crate::sync::{Placement, SyncService};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, OwnedMutexGuard};
use workspace_agent::protocol::{AgentEvent, ExecuteRequest};

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("a run is already in progress for this conversation")]
    Busy,
    #[error(transparent)]
    State(#[from] StateError),
}

/// Identifies one conversation of one tenant.
#[derive(Clone, Debug)]
pub struct ConversationKey {
    pub tenant_id: String,
    pub conversation_id: String,
}

pub struct Executor {
    orchestrator: Orchestrator,
    store: Store,
    sync: SyncService,
    /// One run per conversation at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Executor {
    pub fn new(orchestrator: Orchestrator, store: Store, sync: SyncService) -> Arc<Self> {
        Arc::new(Self {
            orchestrator,
            store,
            sync,
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// Takes the conversation's run lock and starts the run in the
    /// background; its events arrive on the returned channel, ending with
    /// `result` or `error`.
    pub fn start_run(
        self: &Arc<Self>,
        key: ConversationKey,
        exec: ExecuteRequest,
    ) -> Result<mpsc::Receiver<AgentEvent>, ExecuteError> {
        let guard = self.lock(&key)?;
        let (tx, rx) = mpsc::channel(256);
        let this = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(ev) = this.run(&key, exec, &tx).await {
                tracing::warn!(message = "Run failed.", tenant_id = %key.tenant_id,
                    conversation_id = %key.conversation_id, error = ?ev);
                let _ = tx.send(ev).await;
            }
        });
        Ok(rx)
    }

    fn lock(&self, key: &ConversationKey) -> Result<OwnedMutexGuard<()>, ExecuteError> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{}/{}", key.tenant_id, key.conversation_id))
            .or_default()
            .clone();
        lock.try_lock_owned().map_err(|_| ExecuteError::Busy)
    }

    async fn run(
        &self,
        key: &ConversationKey,
        mut exec: ExecuteRequest,
        tx: &mpsc::Sender<AgentEvent>,
    ) -> Result<(), AgentEvent> {
        let state_err = |e: StateError| AgentEvent::error("state_error", e.to_string());
        let mut rec = self
            .store
            .conversation(&key.tenant_id, &key.conversation_id)
            .await
            .map_err(state_err)?
            .unwrap_or_else(|| ConversationRecord::new(&key.tenant_id, &key.conversation_id));
        let assigned = self
            .orchestrator
            .acquire(&mut rec)
            .await
            .map_err(|e| AgentEvent::error(e.code(), e.to_string()))?;
        rec.last_activity_ms = now_ms();
        self.store.put_conversation(&rec).await.map_err(state_err)?;
        let place = Placement {
            container: &assigned.container,
            workspace_dir: &assigned.workspace_dir,
        };
        let mut run_sync = (self.sync.prepare(&mut rec, place).await)
            .map_err(|e| AgentEvent::error(e.code(), e.to_string()))?;

        exec.resume_session_id = rec.session_id.clone();
        let (agent_tx, mut agent_rx) = mpsc::channel(256);
        let client = AgentClient::new(&assigned.socket_dir);
        let mut result_event = None;
        let relay = async {
            while let Some(ev) = agent_rx.recv().await {
                if let AgentEvent::Session { session_id } | AgentEvent::Result { session_id, .. } =
                    &ev
                {
                    if !session_id.is_empty() {
                        rec.session_id = Some(session_id.clone());
                    }
                }
                run_sync.observe(&ev);
                // `result` waits for the end-of-run sync: a client that
                // sees it may rely on the turn's files being stored.
                if matches!(ev, AgentEvent::Result { .. }) {
                    result_event = Some(ev);
                    continue;
                }
                let _ = tx.send(ev).await;
            }
        };
        let (outcome, ()) = tokio::join!(
            async {
                let r = client.execute(&exec, &agent_tx).await;
                drop(agent_tx);
                r
            },
            relay
        );
        // Errors are logged, audited and retried in the background by the
        // sync service; the run's outcome is the agent's.
        let _ = run_sync.finish().await;
        if let Some(ev) = result_event {
            let _ = tx.send(ev).await;
        }
        rec.last_activity_ms = now_ms();
        self.store.put_conversation(&rec).await.map_err(state_err)?;
        outcome.map_err(|e| AgentEvent::error("agent_failed", e.to_string()))
    }
}
