//! Counting audit events: every event the daemon emits passes through
//! [`observe_event`] (an [`audit::Subscriber`] registered by
//! [`count_audit_events`]), so a thing that happens is logged and counted
//! from one place. Proxy and sync metrics follow from their audit events.

use super::{kv, proxy_bytes, proxy_decision, sync_run, with};
use super::{ProxyDirection, ProxyOutcome, SyncDirection, SyncOutcome};
use crate::audit::{self, AuditEvent, ExecutionTiming, ProxyRequest};
use crate::codes::RunOutcome;
use std::sync::Arc;
use std::time::Duration;

struct AuditCounts;

impl audit::Subscriber for AuditCounts {
    fn event(&self, event: &AuditEvent) {
        observe_event(event);
    }

    fn write_failed(&self) {
        with(|i| i.audit_write_failures.add(1, &[]));
    }
}

/// From now on every audit event is counted; the daemon calls this first
/// thing at start-up.
pub(crate) fn count_audit_events() {
    audit::subscribe("metrics", Arc::new(AuditCounts));
}

fn observe_event(event: &AuditEvent) {
    with(|i| i.audit_events.add(1, &[kv("event", event.name())]));
    match event {
        AuditEvent::ContainerCreated { tier, .. } => {
            with(|i| i.containers_created.add(1, &[kv("tier", tier.as_str())]))
        }
        AuditEvent::ContainerDestroyed { reason, .. } => with(|i| {
            let label = i.destroy_reasons.get(reason.as_str());
            i.containers_destroyed.add(1, &[kv("reason", label)]);
            if reason.is_reclaim() {
                i.containers_reclaimed
                    .add(1, &[kv("reason", reason.as_str())]);
            }
        }),
        AuditEvent::ContainerCrashed { .. } => with(|i| i.containers_crashed.add(1, &[])),
        AuditEvent::ContainerRecovered { .. } => with(|i| i.containers_recovered.add(1, &[])),
        AuditEvent::PoolClaimed { warm, tier, .. } => with(|i| {
            let kind = if *warm { "warm" } else { "cold" };
            i.pool_claims
                .add(1, &[kv("kind", kind), kv("tier", tier.as_str())]);
        }),
        AuditEvent::ProxyRequestAllowed { request, subject } => {
            proxied(ProxyOutcome::Allowed, &subject.tenant_id, request)
        }
        AuditEvent::ProxyRequestBlocked { request, subject } => {
            proxied(ProxyOutcome::Blocked, &subject.tenant_id, request)
        }
        // Each held-back refusal still counts as a decision, by reason.
        AuditEvent::ProxyRequestsCoalesced { count, reasons, .. } => {
            for (reason, n) in reasons {
                super::proxy_decisions(ProxyOutcome::Blocked, reason, *n);
            }
            with(|i| {
                i.audit_coalesced
                    .add(*count, &[kv("event", "proxy_request_blocked")])
            });
        }
        AuditEvent::ProxyTaskRestarted { .. } => {}
        AuditEvent::EngineUnavailable { .. } => with(|i| i.engine_outages.add(1, &[])),
        // The gauge is set by the engine watch itself.
        AuditEvent::EngineRecovered { .. } => {}
        // Counted by `agentbox_audit_events_total` alone.
        AuditEvent::ConversationTakenOver { .. } | AuditEvent::ConversationMovedAway { .. } => {}
        AuditEvent::FileSyncToContainer { sync, .. }
        | AuditEvent::FileSyncFromContainer { sync, .. } => {
            let direction = match event {
                AuditEvent::FileSyncToContainer { .. } => SyncDirection::ToContainer,
                _ => SyncDirection::FromContainer,
            };
            sync_run(
                direction,
                SyncOutcome::parse(&sync.outcome),
                sync.bytes,
                Duration::from_millis(sync.duration_ms),
            );
        }
        // Counted by `agentbox_audit_events_total{event="file_sync_refused"}`.
        AuditEvent::FileSyncRefused { .. } => {}
        AuditEvent::AgentExecutionStarted { .. } => with(|i| {
            i.executions_started.add(1, &[]);
            i.executions_in_flight.add(1, &[]);
        }),
        AuditEvent::AgentExecutionCompleted { timing, .. } => with(|i| {
            i.executions_completed.add(1, &[]);
            ended(i, RunOutcome::Completed, timing);
        }),
        // Counted by `agentbox_audit_events_total{event}` above, and as a
        // failed run by its `agent_execution_failed`.
        AuditEvent::AgentProtocolViolation { .. } => {}
        // Counted by `agentbox_audit_events_total{event}` above; the run
        // ends as completed (the CLI's `result`).
        AuditEvent::AgentExecutionInterrupted { .. } => {}
        AuditEvent::AgentExecutionFailed { timing, code, .. } => with(|i| {
            let code = i.failure_codes.get(code);
            i.executions_failed.add(1, &[kv("code", code)]);
            ended(i, RunOutcome::Failed, timing);
        }),
    }
}

fn proxied(outcome: ProxyOutcome, tenant: &str, request: &ProxyRequest) {
    proxy_decision(outcome, &request.reason);
    // The allowlist's own names are not rules.
    if let Some(rule) = request
        .rule
        .as_deref()
        .filter(|r| !matches!(*r, "allowed_domain" | "allowed_ip"))
    {
        super::egress_rule_decision(outcome, tenant, rule);
    }
    proxy_bytes(ProxyDirection::FromContainer, request.bytes_from_container);
    proxy_bytes(ProxyDirection::ToContainer, request.bytes_to_container);
}

fn ended(i: &super::Instruments, outcome: RunOutcome, timing: &ExecutionTiming) {
    i.executions_in_flight.add(-1, &[]);
    i.execution_duration.record(
        timing.duration_ms as f64 / 1000.0,
        &[kv("outcome", outcome.as_str())],
    );
    if let Some(ms) = timing.first_event_ms {
        i.execution_first_event.record(ms as f64 / 1000.0, &[]);
    }
}

#[cfg(test)]
mod tests {
    use crate::audit::{self, AuditEvent, ProxyRequest, Subject, SyncFigures};

    fn series(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{prefix} missing"))
            .parse()
            .unwrap()
    }

    // Proxy and sync counters come from their branches' audit events alone:
    // this is the wiring they rely on. Labels unique to this test keep it
    // independent of other tests sharing the process-wide registry.
    #[test]
    fn proxy_and_sync_events_are_counted() {
        super::count_audit_events();
        let request = ProxyRequest {
            route: "connect".into(),
            method: "CONNECT".into(),
            host: "example.org".into(),
            port: 443,
            reason: "events_test_refusal".into(),
            status: Some(403),
            bytes_from_container: 7,
            bytes_to_container: 11,
            duration_ms: 1,
            credential: None,
            rule: Some("events-test-rule".into()),
        };
        let before = crate::metrics::render().unwrap();
        let bytes = |t: &str| series(t, "agentbox_proxy_bytes_total{direction=\"to_container\"}");
        audit::emit(&AuditEvent::ProxyRequestBlocked {
            subject: Subject {
                tenant_id: "events-tenant".into(),
                ..Subject::default()
            },
            request,
        });
        audit::emit(&AuditEvent::FileSyncToContainer {
            subject: Subject::default(),
            sync: SyncFigures {
                bytes: 5,
                duration_ms: 20,
                outcome: "stale".into(),
                ..Default::default()
            },
        });
        let after = crate::metrics::render().unwrap();
        assert_eq!(
            series(
                &after,
                "agentbox_egress_rule_requests_total{outcome=\"blocked\",rule=\"events-test-rule\",tenant=\"events-tenant\"}"
            ),
            1.0
        );
        assert_eq!(
            series(
                &after,
                "agentbox_proxy_requests_total{outcome=\"blocked\",reason=\"events_test_refusal\"}"
            ),
            1.0
        );
        assert!(bytes(&after) - bytes(&before) >= 11.0);
        assert!(
            series(
                &after,
                "agentbox_sync_runs_total{direction=\"to_container\",outcome=\"stale\"}"
            ) >= 1.0
        );
        assert!(after.contains("agentbox_sync_duration_seconds_count{direction=\"to_container\"}"));
    }
}
