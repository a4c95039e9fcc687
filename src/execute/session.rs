//! An Agent SDK session as a run: the same lock, container, restore,
//! audit trail, spend meter, run record, checkpoints and final sync as a
//! message's run; only the traffic differs (the client's stream-json lines
//! in, the CLI's out, see `agent_client::SessionLines`). The run lasts as
//! long as the session.

use super::{budget_error, failure, ConversationKey, ExecuteError, Executor, RunMeter};
use crate::agent_client::{AgentClient, AgentError, SessionLines};
use crate::audit::ExecutionAudit;
use crate::codes::ErrorCode;
use crate::runs::LiveRun;
use crate::state::StateError;
use agent_protocol::{AgentEvent, AgentOptions, SessionOptions, SessionStart};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::Instrument;

impl Executor {
    /// Takes the conversation's run lock and starts the session in the
    /// background; its events are recorded on the returned run. The
    /// session ends when the client's lines end and the CLI has exited.
    pub(crate) async fn start_session(
        self: &Arc<Self>,
        key: ConversationKey,
        options: SessionOptions,
        lines: SessionLines,
        egress_rules: Option<Vec<String>>,
    ) -> Result<Arc<LiveRun>, ExecuteError> {
        let (guard, live, tx) = self.begin(&key, egress_rules).await?;
        let this = self.clone();
        let span = crate::telemetry::execution_span(&key);
        tokio::spawn(
            async move {
                let (_lock, lease) = guard;
                let mut audit = ExecutionAudit::start(&key, &audited(&options));
                let outcome = this.session(&key, options, lines, &tx, &mut audit).await;
                audit.finish(outcome.as_ref().err());
                if let Err(ev) = outcome {
                    tracing::warn!(message = "Session failed.", error = ?ev);
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

    async fn session(
        &self,
        key: &ConversationKey,
        options: SessionOptions,
        lines: SessionLines,
        tx: &mpsc::Sender<AgentEvent>,
        audit: &mut ExecutionAudit,
    ) -> Result<(), AgentEvent> {
        let state_err = |e: StateError| failure(ErrorCode::StateError, e.to_string());
        let meter = RunMeter::begin(
            self.orchestrator.gateway().spend().clone(),
            key,
            options.max_budget_usd,
        )
        .map_err(budget_error)?;
        let (assigned, mut run_sync) = self
            .assign(key, tx, &mut super::steps::RunSteps::start())
            .await?;
        tracing::Span::current().record("container_id", assigned.container.as_str());
        audit.set_container(&assigned.container);
        let store = self.orchestrator.store();
        let kept = store
            .conversation(key)
            .await
            .map_err(state_err)?
            .and_then(|c| c.session_id);
        let start = SessionStart {
            options,
            resume_session_id: self.session_to_resume(kept, &assigned).await,
        };
        let limits = self.orchestrator.cfg().agent.clone();
        let (agent_tx, mut agent_rx) = mpsc::channel(16);
        let client = AgentClient::new(&assigned.socket_dir);
        let mut session_id = None;
        let relay = async {
            while let Some(ev) = agent_rx.recv().await {
                audit.observe(&ev);
                if let AgentEvent::Session { session_id: s }
                | AgentEvent::Result { session_id: s, .. } = &ev
                {
                    if !s.is_empty() {
                        session_id = Some(s.clone());
                    }
                }
                // File-changing tool results schedule checkpoints, as in a run.
                run_sync.observe(&ev);
                let _ = tx.send(ev).await;
            }
        };
        let (outcome, ()) = tokio::join!(
            async {
                let r = client.session(&start, lines, &agent_tx, &limits).await;
                drop(agent_tx);
                r
            },
            relay
        );
        if let Ok(report) = run_sync.finish().await {
            if let Some(ev) = self.sync.skipped_event(&report) {
                let _ = tx.send(ev).await;
            }
        }
        let spent = meter.finish();
        if matches!(outcome, Err(AgentError::Protocol(_))) {
            session_id = None;
        }
        self.keep_session(key, &assigned.container, session_id)
            .await?;
        match outcome {
            Ok(()) => match spent.exceeded {
                Some(over) => Err(budget_error(over)),
                None => Ok(()),
            },
            Err(AgentError::Protocol(v)) => Err(self.violated(&assigned.container, &v).await),
            Err(e) => Err(match spent.exceeded {
                Some(over) => budget_error(over),
                None => failure(ErrorCode::AgentFailed, e.to_string()),
            }),
        }
    }
}

/// The options an audit line shows, in the SSE API's terms.
fn audited(o: &SessionOptions) -> AgentOptions {
    AgentOptions {
        model: o.model.clone(),
        permission_mode: o.permission_mode,
        max_turns: o.max_turns,
        allowed_tools: (!o.allowed_tools.is_empty()).then(|| o.allowed_tools.clone()),
        ..AgentOptions::default()
    }
}
