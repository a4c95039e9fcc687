//! The execute service: one run of the agent for one conversation. Takes
//! the conversation's run lock, gets a container from the orchestrator,
//! runs the agent and relays its events, and records the Claude session.
//!
//! **Invariant:** API handlers never touch containers; they call
//! [`Executor::start_run`] and read the events it sends.

use crate::agent_client::AgentClient;
use crate::orchestrator::Orchestrator;
use crate::state::{now_ms, StateError};
use std::sync::Arc;
use tokio::sync::mpsc;
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
    orchestrator: Arc<Orchestrator>,
}

impl Executor {
    pub fn new(orchestrator: Arc<Orchestrator>) -> Arc<Self> {
        Arc::new(Self { orchestrator })
    }

    /// Takes the conversation's run lock and starts the run in the
    /// background; its events arrive on the returned channel, ending with
    /// `result` or `error`.
    pub fn start_run(
        self: &Arc<Self>,
        key: ConversationKey,
        exec: ExecuteRequest,
    ) -> Result<mpsc::Receiver<AgentEvent>, ExecuteError> {
        let guard = self
            .orchestrator
            .locks()
            .try_lock(&key.tenant_id, &key.conversation_id)
            .ok_or(ExecuteError::Busy)?;
        let (tx, rx) = mpsc::channel(256);
        let this = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let started = std::time::Instant::now();
            let outcome = this.run(&key, exec, &tx).await;
            crate::audit::emit(&crate::audit::AuditEvent::RunFinished {
                subject: crate::audit::Subject {
                    tenant_id: key.tenant_id.clone(),
                    conversation_id: key.conversation_id.clone(),
                    container_id: String::new(),
                },
                error_code: match &outcome {
                    Err(AgentEvent::Error { code, .. }) => Some(code.clone()),
                    _ => None,
                },
                duration_ms: started.elapsed().as_millis() as u64,
            });
            if let Err(ev) = outcome {
                tracing::warn!(message = "Run failed.", tenant_id = %key.tenant_id,
                    conversation_id = %key.conversation_id, error = ?ev);
                let _ = tx.send(ev).await;
            }
        });
        Ok(rx)
    }

    async fn run(
        &self,
        key: &ConversationKey,
        mut exec: ExecuteRequest,
        tx: &mpsc::Sender<AgentEvent>,
    ) -> Result<(), AgentEvent> {
        let state_err = |e: StateError| AgentEvent::error("state_error", e.to_string());
        let assigned = self
            .orchestrator
            .acquire(&key.tenant_id, &key.conversation_id)
            .await
            .map_err(|e| AgentEvent::error(e.code(), e.to_string()))?;
        self.orchestrator.touch(&assigned.container).await;
        let store = self.orchestrator.store();
        exec.resume_session_id = store
            .conversation(&key.tenant_id, &key.conversation_id)
            .await
            .map_err(state_err)?
            .and_then(|c| c.session_id);

        let (agent_tx, mut agent_rx) = mpsc::channel(256);
        let client = AgentClient::new(&assigned.socket_dir);
        let mut session_id = None;
        let relay = async {
            while let Some(ev) = agent_rx.recv().await {
                if let AgentEvent::Session { session_id: s }
                | AgentEvent::Result { session_id: s, .. } = &ev
                {
                    if !s.is_empty() {
                        session_id = Some(s.clone());
                    }
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
        self.orchestrator.touch(&assigned.container).await;
        store
            .update_conversation(&key.tenant_id, &key.conversation_id, move |rec| {
                if session_id.is_some() {
                    rec.session_id = session_id;
                }
                rec.last_activity_ms = now_ms();
            })
            .await
            .map_err(state_err)?;
        outcome.map_err(|e| AgentEvent::error("agent_failed", e.to_string()))
    }
}
