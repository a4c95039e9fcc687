//! Typed audit events: one variant per thing that happens. [`emit`] writes
//! each as one JSON line to the append-only audit file ([`sink`]) and to the
//! tracing output under the `audit` target, then hands it to the
//! [`Subscriber`]s registered at start-up (metrics, the status page).
//! The request, tenant, conversation and container ids an event lacks are
//! taken from the enclosing tracing span, so code below an execution never
//! passes them by hand. `docs/audit-events.md` lists every event and field.
//!
//! **Invariant:** no event carries a credential value; at most a
//! credential's name. Prompts and file contents never appear either.

mod execution;
mod sink;
mod subscribers;
mod timestamp;

pub(crate) use execution::ExecutionAudit;
pub(crate) use sink::{install, AuditError, AuditFile};
pub(crate) use subscribers::{subscribe, Subscriber};

use crate::config::IsolationTier;
use serde::Serialize;

/// Ids that tie an event to a conversation; empty ones are omitted.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Subject {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tenant_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub conversation_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container_id: String,
}

impl Subject {
    /// Takes the ids this subject lacks from the span context.
    fn fill_missing(&mut self, ctx: &crate::telemetry::SpanContext) {
        for (mine, theirs) in [
            (&mut self.tenant_id, &ctx.tenant_id),
            (&mut self.conversation_id, &ctx.conversation_id),
            (&mut self.container_id, &ctx.container_id),
        ] {
            if mine.is_empty() {
                if let Some(v) = theirs {
                    mine.clone_from(v);
                }
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum AuditEvent {
    /// A container was created and its agent answers.
    ContainerCreated {
        #[serde(flatten)]
        subject: Subject,
        image: String,
        /// `runc` or `gvisor`.
        tier: IsolationTier,
    },
    /// A container and its directories were removed.
    ContainerDestroyed {
        #[serde(flatten)]
        subject: Subject,
        reason: crate::codes::DestroyReason,
    },
    /// A container that should be running was found stopped; it is then
    /// destroyed (`container_destroyed`, reason `crashed`).
    ContainerCrashed {
        #[serde(flatten)]
        subject: Subject,
        /// Its lifecycle state when found (`ready`, `claimed`, ...).
        state: String,
    },
    /// A conversation whose container died got a new one, its files
    /// restored from the last sync. The subject names the new container.
    ContainerRecovered {
        #[serde(flatten)]
        subject: Subject,
        previous_container_id: String,
        reason: String,
    },
    /// This host took a conversation's lease that another host (or this
    /// one before a restart) never released: that holder's run was lost
    /// with it (`host_lost`).
    ConversationTakenOver {
        #[serde(flatten)]
        subject: Subject,
        previous_host: String,
        /// The lost run, in the previous host's numbering.
        lost_run: u64,
    },
    /// A conversation this host had a container for moved to another
    /// host while this one was away: the container is removed unpushed
    /// (`container_destroyed`, reason `moved`).
    ConversationMovedAway {
        #[serde(flatten)]
        subject: Subject,
        /// The generation this host's copy belongs to.
        own_generation: u64,
        /// The newest generation in the bucket.
        stored_generation: u64,
        /// The host whose live lease it saw, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        holder: Option<String>,
    },
    /// A container was bound to a conversation.
    PoolClaimed {
        #[serde(flatten)]
        subject: Subject,
        /// False for a cold start (the pool was empty).
        warm: bool,
        /// The tenant's tier, which the container's always matches.
        tier: IsolationTier,
    },
    /// The egress proxy let a request or tunnel through (written when it ends).
    ProxyRequestAllowed {
        #[serde(flatten)]
        subject: Subject,
        #[serde(flatten)]
        request: ProxyRequest,
    },
    /// The egress proxy refused a request.
    ProxyRequestBlocked {
        #[serde(flatten)]
        subject: Subject,
        #[serde(flatten)]
        request: ProxyRequest,
    },
    /// Refusals from one container beyond its audit rate
    /// (`proxy.audit_refusal_burst`, `proxy.audit_refusals_per_minute`),
    /// counted instead of written one by one.
    ProxyRequestsCoalesced {
        #[serde(flatten)]
        subject: Subject,
        /// Refusals held back, in all.
        count: u64,
        /// Count per refusal reason.
        reasons: std::collections::BTreeMap<String, u64>,
        /// From the first held-back refusal to this summary.
        window_ms: u64,
    },
    /// A container's proxy task died and was started again.
    ProxyTaskRestarted {
        #[serde(flatten)]
        subject: Subject,
        cause: String,
    },
    /// The Docker engine stopped answering; new runs are refused until it
    /// is back (`engine_recovered`).
    EngineUnavailable {
        #[serde(flatten)]
        subject: Subject,
        error: String,
    },
    /// The engine answers again and the state was reconciled with it; runs
    /// are admitted again.
    EngineRecovered {
        #[serde(flatten)]
        subject: Subject,
        down_ms: u64,
    },
    /// A workspace restore from the object store into the container's
    /// workspace.
    FileSyncToContainer {
        #[serde(flatten)]
        subject: Subject,
        #[serde(flatten)]
        sync: SyncFigures,
    },
    /// A push of the container's workspace to the object store.
    FileSyncFromContainer {
        #[serde(flatten)]
        subject: Subject,
        #[serde(flatten)]
        sync: SyncFigures,
    },
    /// A push left files out of the store for their size: above
    /// `sync.max_file_bytes`, or past `sync.max_workspace_bytes`. Written
    /// when a push refuses a file the previous push did not.
    FileSyncRefused {
        #[serde(flatten)]
        subject: Subject,
        generation: u64,
        /// Files this push refused.
        refused: u64,
        /// Of which not refused by the previous push.
        new: u64,
        /// The new ones, the first 20 by path.
        files: Vec<agent_protocol::SkippedFile>,
        max_file_bytes: u64,
        max_workspace_bytes: u64,
    },
    /// A run of the agent began (before a container is assigned).
    AgentExecutionStarted {
        #[serde(flatten)]
        subject: Subject,
        #[serde(flatten)]
        options: ExecutionOptions,
    },
    /// A run ended with the CLI's `result`.
    AgentExecutionCompleted {
        #[serde(flatten)]
        subject: Subject,
        #[serde(flatten)]
        timing: ExecutionTiming,
        /// The CLI's own verdict (for example `error_max_turns`).
        is_error: bool,
        subtype: String,
        num_turns: u64,
    },
    /// A client asked to stop the run's turn, and the daemon passed it to
    /// the agent.
    AgentExecutionInterrupted {
        #[serde(flatten)]
        subject: Subject,
        /// The agent took it; false when the turn had already ended.
        accepted: bool,
        /// Why the agent could not be asked.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The agent's stream broke a bound of `[agent]` (line length, events
    /// per run, idle time, answer size); the run ends with
    /// `agent_protocol_violation` and the container is destroyed.
    AgentProtocolViolation {
        #[serde(flatten)]
        subject: Subject,
        /// The bound: `max_line_bytes`, `max_events_per_run`,
        /// `idle_timeout`, `answer_timeout` or `max_body_bytes`.
        limit: String,
        detail: String,
    },
    /// A run ended without a result.
    AgentExecutionFailed {
        #[serde(flatten)]
        subject: Subject,
        #[serde(flatten)]
        timing: ExecutionTiming,
        /// The stable code of the SSE `error` event.
        code: String,
        message: String,
    },
}

/// One proxy decision. `credential` names the credential the proxy added
/// (`anthropic_api_key`, `aws_sigv4:env`, ...), never its value.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProxyRequest {
    /// `model_gateway`, `connect`, `http` or `none` (unparseable).
    pub route: String,
    pub method: String,
    pub host: String,
    pub port: u16,
    /// The rule that allowed it, or the stable refusal code.
    pub reason: String,
    /// The `[[egress.rules]]` entry that decided: the rule that allowed
    /// it, or for a refusal by rules the host's rules (comma-separated),
    /// none of which allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub bytes_from_container: u64,
    pub bytes_to_container: u64,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// What one file sync moved and how it ended.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct SyncFigures {
    pub generation: u64,
    pub files: u64,
    pub bytes: u64,
    pub duration_ms: u64,
    /// `ok`, `failed` or `stale` (refused: a newer generation owns the
    /// conversation).
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The security-relevant options a run asked for; never the prompt.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ExecutionOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
}

/// How long a run took, and how long until the agent's first event.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ExecutionTiming {
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_event_ms: Option<u64>,
}

impl AuditEvent {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::ContainerCreated { .. } => "container_created",
            Self::ContainerDestroyed { .. } => "container_destroyed",
            Self::ContainerCrashed { .. } => "container_crashed",
            Self::ContainerRecovered { .. } => "container_recovered",
            Self::ConversationTakenOver { .. } => "conversation_taken_over",
            Self::ConversationMovedAway { .. } => "conversation_moved_away",
            Self::PoolClaimed { .. } => "pool_claimed",
            Self::ProxyRequestAllowed { .. } => "proxy_request_allowed",
            Self::ProxyRequestBlocked { .. } => "proxy_request_blocked",
            Self::ProxyRequestsCoalesced { .. } => "proxy_requests_coalesced",
            Self::ProxyTaskRestarted { .. } => "proxy_task_restarted",
            Self::EngineUnavailable { .. } => "engine_unavailable",
            Self::EngineRecovered { .. } => "engine_recovered",
            Self::FileSyncToContainer { .. } => "file_sync_to_container",
            Self::FileSyncFromContainer { .. } => "file_sync_from_container",
            Self::FileSyncRefused { .. } => "file_sync_refused",
            Self::AgentExecutionStarted { .. } => "agent_execution_started",
            Self::AgentExecutionCompleted { .. } => "agent_execution_completed",
            Self::AgentExecutionInterrupted { .. } => "agent_execution_interrupted",
            Self::AgentProtocolViolation { .. } => "agent_protocol_violation",
            Self::AgentExecutionFailed { .. } => "agent_execution_failed",
        }
    }

    fn subject_mut(&mut self) -> &mut Subject {
        match self {
            Self::ContainerCreated { subject, .. }
            | Self::ContainerDestroyed { subject, .. }
            | Self::ContainerCrashed { subject, .. }
            | Self::ContainerRecovered { subject, .. }
            | Self::ConversationTakenOver { subject, .. }
            | Self::ConversationMovedAway { subject, .. }
            | Self::PoolClaimed { subject, .. }
            | Self::ProxyRequestAllowed { subject, .. }
            | Self::ProxyRequestBlocked { subject, .. }
            | Self::ProxyRequestsCoalesced { subject, .. }
            | Self::ProxyTaskRestarted { subject, .. }
            | Self::EngineUnavailable { subject, .. }
            | Self::EngineRecovered { subject, .. }
            | Self::FileSyncToContainer { subject, .. }
            | Self::FileSyncFromContainer { subject, .. }
            | Self::FileSyncRefused { subject, .. }
            | Self::AgentExecutionStarted { subject, .. }
            | Self::AgentExecutionCompleted { subject, .. }
            | Self::AgentExecutionInterrupted { subject, .. }
            | Self::AgentProtocolViolation { subject, .. }
            | Self::AgentExecutionFailed { subject, .. } => subject,
        }
    }
}

/// One line of the audit log: when, under which request, and the event.
#[derive(Serialize)]
struct Record<'a> {
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

/// The JSON line for `event`, completed from the span context.
fn record_line(event: &AuditEvent, ctx: &crate::telemetry::SpanContext) -> (AuditEvent, String) {
    let mut event = event.clone();
    event.subject_mut().fill_missing(ctx);
    let record = Record {
        timestamp: timestamp::now_rfc3339(),
        request_id: ctx.request_id.as_deref(),
        event: &event,
    };
    // Serialising plain strings and numbers cannot fail; should it ever,
    // the line still says which event it lost.
    let line = serde_json::to_string(&record).unwrap_or_else(|e| {
        serde_json::json!({"timestamp": record.timestamp, "event": event.name(),
            "serialization_error": e.to_string()})
        .to_string()
    });
    (event, line)
}

/// Records one audit event: audit file, tracing output, subscribers.
pub(crate) fn emit(event: &AuditEvent) {
    let ctx = crate::telemetry::current_context();
    let (event, line) = record_line(event, &ctx);
    if !sink::append(&line) {
        subscribers::each(|s| s.write_failed());
    }
    tracing::info!(target: "audit", message = "Audit event.", event = event.name(), audit = %line);
    subscribers::each(|s| s.event(&event));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::SpanContext;

    #[test]
    fn events_are_flat_json_with_their_name() {
        let ev = AuditEvent::ContainerCreated {
            subject: Subject {
                tenant_id: "t".into(),
                container_id: "c".into(),
                ..Default::default()
            },
            image: "img".into(),
            tier: IsolationTier::Gvisor,
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["tier"], "gvisor");
        assert_eq!(v["event"], "container_created");
        assert_eq!(v["tenant_id"], "t");
        assert!(v.get("conversation_id").is_none());
        assert_eq!(ev.name(), "container_created");
    }

    #[test]
    fn name_matches_the_serialised_tag() {
        let s = Subject::default();
        let t = ExecutionTiming::default();
        for ev in [
            AuditEvent::ContainerCrashed {
                subject: s.clone(),
                state: "ready".into(),
            },
            AuditEvent::AgentExecutionStarted {
                subject: s.clone(),
                options: ExecutionOptions::default(),
            },
            AuditEvent::AgentExecutionFailed {
                subject: s.clone(),
                timing: t.clone(),
                code: "x".into(),
                message: "y".into(),
            },
            AuditEvent::FileSyncFromContainer {
                subject: s.clone(),
                sync: SyncFigures::default(),
            },
            AuditEvent::FileSyncRefused {
                subject: s.clone(),
                generation: 1,
                refused: 1,
                new: 1,
                files: Vec::new(),
                max_file_bytes: 1,
                max_workspace_bytes: 1,
            },
            AuditEvent::AgentExecutionInterrupted {
                subject: s.clone(),
                accepted: true,
                error: None,
            },
            AuditEvent::AgentProtocolViolation {
                subject: s.clone(),
                limit: "max_line_bytes".into(),
                detail: "d".into(),
            },
            AuditEvent::EngineUnavailable {
                subject: s.clone(),
                error: "e".into(),
            },
            AuditEvent::EngineRecovered {
                subject: s.clone(),
                down_ms: 1,
            },
        ] {
            let v = serde_json::to_value(&ev).unwrap();
            assert_eq!(v["event"], ev.name());
        }
    }

    #[test]
    fn lines_carry_timestamp_request_id_and_span_ids() {
        let ctx = SpanContext {
            request_id: Some("req-1".into()),
            tenant_id: Some("acme".into()),
            conversation_id: Some("conv".into()),
            container_id: Some("from-span".into()),
        };
        let ev = AuditEvent::PoolClaimed {
            subject: Subject {
                container_id: "agentbox-1".into(),
                ..Default::default()
            },
            warm: true,
            tier: IsolationTier::Runc,
        };
        let (_, line) = record_line(&ev, &ctx);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "pool_claimed");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["tenant_id"], "acme");
        assert_eq!(v["conversation_id"], "conv");
        // The event's own ids win over the span's.
        assert_eq!(v["container_id"], "agentbox-1");
        assert_eq!(v["warm"], true);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(line.starts_with("{\"timestamp\":"), "{line}");
    }

    #[test]
    fn without_a_span_there_is_no_request_id() {
        let ev = AuditEvent::ContainerDestroyed {
            subject: Subject {
                container_id: "c".into(),
                ..Default::default()
            },
            reason: crate::codes::DestroyReason::Idle,
        };
        let (_, line) = record_line(&ev, &SpanContext::default());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("request_id").is_none());
        assert!(v.get("tenant_id").is_none());
    }
}
