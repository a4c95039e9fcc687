//! The audit trail of one agent run: `agent_execution_started` when it
//! begins, then exactly one of `agent_execution_completed` or
//! `agent_execution_failed`, with the run's duration and the time to the
//! agent's first event. A run dropped without a verdict (its task panicked
//! or was cancelled) is recorded as failed with code `aborted`, so every
//! start has an end and the in-flight gauge returns to zero.

use super::{emit, AuditEvent, ExecutionOptions, ExecutionTiming, Subject};
use crate::codes::ErrorCode;
use crate::codes::RunOutcome;
use crate::ids::ConversationKey;
use agent_protocol::{AgentEvent, AgentOptions};
use std::time::{Duration, Instant};

/// Longest error message kept in an audit line.
const MAX_MESSAGE: usize = 512;

struct Summary {
    is_error: bool,
    subtype: String,
    num_turns: u64,
}

pub(crate) struct ExecutionAudit {
    subject: Subject,
    started: Instant,
    first_event: Option<Duration>,
    result: Option<Summary>,
    /// The last `error` event the agent sent, as (code, message).
    agent_error: Option<(String, String)>,
    finished: bool,
}

impl ExecutionAudit {
    /// Emits `agent_execution_started`.
    pub(crate) fn start(key: &ConversationKey, options: &AgentOptions) -> Self {
        let subject = Subject {
            tenant_id: key.tenant_id.clone(),
            conversation_id: key.conversation_id.clone(),
            container_id: String::new(),
        };
        emit(&AuditEvent::AgentExecutionStarted {
            subject: subject.clone(),
            options: ExecutionOptions {
                model: options.model.clone(),
                permission_mode: options.permission_mode.map(|m| m.as_cli_arg().to_owned()),
                max_turns: options.max_turns,
                allowed_tools: options.allowed_tools.clone(),
            },
        });
        Self {
            subject,
            started: Instant::now(),
            first_event: None,
            result: None,
            agent_error: None,
            finished: false,
        }
    }

    /// The container now serving the run.
    pub(crate) fn set_container(&mut self, container_id: &str) {
        container_id.clone_into(&mut self.subject.container_id);
    }

    /// Notes one event the agent sent.
    pub(crate) fn observe(&mut self, event: &AgentEvent) {
        self.first_event
            .get_or_insert_with(|| self.started.elapsed());
        match event {
            AgentEvent::Result {
                is_error,
                subtype,
                num_turns,
                ..
            } => {
                self.result = Some(Summary {
                    is_error: *is_error,
                    subtype: subtype.clone(),
                    num_turns: *num_turns,
                })
            }
            AgentEvent::Error { code, message } => {
                self.agent_error = Some((code.clone(), message.clone()))
            }
            _ => {}
        }
    }

    /// Emits the run's end. `failure` is the error event the run ended
    /// with, if it did not end normally.
    pub(crate) fn finish(mut self, failure: Option<&AgentEvent>) {
        let v = verdict(failure, self.result.take(), self.agent_error.take());
        self.emit_end(v);
    }

    fn timing(&self) -> ExecutionTiming {
        ExecutionTiming {
            duration_ms: self.started.elapsed().as_millis() as u64,
            first_event_ms: self.first_event.map(|d| d.as_millis() as u64),
        }
    }

    fn emit_end(&mut self, verdict: Result<Summary, (String, String)>) {
        self.finished = true;
        let timing = self.timing();
        let subject = self.subject.clone();
        match verdict {
            Ok(s) => {
                tracing::info!(
                    message = "Run finished.",
                    outcome = RunOutcome::Completed.as_str(),
                    duration_ms = timing.duration_ms,
                    is_error = s.is_error,
                    num_turns = s.num_turns
                );
                emit(&AuditEvent::AgentExecutionCompleted {
                    subject,
                    timing,
                    is_error: s.is_error,
                    subtype: s.subtype,
                    num_turns: s.num_turns,
                });
            }
            Err((code, message)) => {
                tracing::info!(message = "Run finished.", outcome = RunOutcome::Failed.as_str(),
                    duration_ms = timing.duration_ms, code = %code);
                emit(&AuditEvent::AgentExecutionFailed {
                    subject,
                    timing,
                    code,
                    message: message.chars().take(MAX_MESSAGE).collect(),
                });
            }
        }
    }
}

/// How a run ended: the error it ended with wins, then the CLI's result,
/// then an error event the agent sent; nothing at all is a failure too.
fn verdict(
    failure: Option<&AgentEvent>,
    result: Option<Summary>,
    agent_error: Option<(String, String)>,
) -> Result<Summary, (String, String)> {
    match (failure, result, agent_error) {
        (Some(AgentEvent::Error { code, message }), _, _) => Err((code.clone(), message.clone())),
        (Some(other), _, _) => Err((ErrorCode::Internal.to_string(), other.name().to_owned())),
        (None, Some(summary), _) => Ok(summary),
        (None, None, Some(error)) => Err(error),
        (None, None, None) => Err((
            ErrorCode::NoResult.to_string(),
            "the run ended without a result".to_owned(),
        )),
    }
}

impl Drop for ExecutionAudit {
    fn drop(&mut self) {
        if !self.finished {
            self.emit_end(Err((
                ErrorCode::Aborted.to_string(),
                "the run stopped before it ended".to_owned(),
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(is_error: bool) -> AgentEvent {
        AgentEvent::Result {
            session_id: "s".into(),
            is_error,
            subtype: "success".into(),
            num_turns: 2,
            duration_ms: 1,
            total_cost_usd: 0.0,
            usage: serde_json::Value::Null,
            result: None,
            interrupted: false,
        }
    }

    fn summary() -> Summary {
        Summary {
            is_error: false,
            subtype: "success".into(),
            num_turns: 1,
        }
    }

    #[test]
    fn verdicts() {
        let err = AgentEvent::error("agent_failed", "boom");
        assert_eq!(
            verdict(Some(&err), Some(summary()), None).err(),
            Some(("agent_failed".into(), "boom".into()))
        );
        assert!(verdict(None, Some(summary()), Some(("x".into(), "y".into()))).is_ok());
        assert_eq!(
            verdict(None, None, Some(("cli_failed".into(), "y".into()))).err(),
            Some(("cli_failed".into(), "y".into()))
        );
        assert_eq!(verdict(None, None, None).err().unwrap().0, "no_result");
    }

    #[test]
    fn every_start_ends_once_whatever_happens() {
        let mut a =
            ExecutionAudit::start(&ConversationKey::new("t", "c"), &AgentOptions::default());
        a.set_container("agentbox-x");
        a.observe(&result(false));
        a.finish(None);
        // Dropped without finish: still ends (as aborted), without panicking.
        let b = ExecutionAudit::start(&ConversationKey::new("t", "c"), &AgentOptions::default());
        drop(b);
    }

    #[test]
    fn first_event_is_timed_once() {
        let mut a =
            ExecutionAudit::start(&ConversationKey::new("t", "c"), &AgentOptions::default());
        a.observe(&AgentEvent::Started { prestarted: false });
        let first = a.first_event;
        std::thread::sleep(Duration::from_millis(5));
        a.observe(&result(false));
        assert_eq!(a.first_event, first);
        assert!(a.result.is_some());
        a.finish(None);
    }
}
