//! Counting audit events: every event the daemon emits passes through
//! [`observe_event`], so a thing that happens is logged and counted from
//! one place. Proxy and sync metrics follow from their audit events.

use super::instruments::RECLAIM_REASONS;
use super::{kv, proxy_bytes, proxy_decision, sync_run, with};
use super::{ProxyDirection, ProxyOutcome, SyncDirection, SyncOutcome};
use crate::audit::{AuditEvent, ExecutionTiming, ProxyRequest};
use std::time::Duration;

pub fn observe_event(event: &AuditEvent) {
    with(|i| i.audit_events.add(1, &[kv("event", event.name())]));
    match event {
        AuditEvent::ContainerCreated { .. } => with(|i| i.containers_created.add(1, &[])),
        AuditEvent::ContainerDestroyed { reason, .. } => with(|i| {
            let label = i.destroy_reasons.get(reason);
            i.containers_destroyed.add(1, &[kv("reason", label)]);
            if RECLAIM_REASONS.contains(&reason.as_str()) {
                i.containers_reclaimed
                    .add(1, &[kv("reason", reason.clone())]);
            }
        }),
        AuditEvent::ContainerCrashed { .. } => with(|i| i.containers_crashed.add(1, &[])),
        AuditEvent::ContainerRecovered { .. } => with(|i| i.containers_recovered.add(1, &[])),
        AuditEvent::PoolClaimed { warm, .. } => with(|i| {
            let kind = if *warm { "warm" } else { "cold" };
            i.pool_claims.add(1, &[kv("kind", kind)]);
        }),
        AuditEvent::ProxyRequestAllowed { request, .. } => proxied(ProxyOutcome::Allowed, request),
        AuditEvent::ProxyRequestBlocked { request, .. } => proxied(ProxyOutcome::Blocked, request),
        AuditEvent::ProxyTaskRestarted { .. } => {}
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
        AuditEvent::AgentExecutionStarted { .. } => with(|i| {
            i.executions_started.add(1, &[]);
            i.executions_in_flight.add(1, &[]);
        }),
        AuditEvent::AgentExecutionCompleted { timing, .. } => with(|i| {
            i.executions_completed.add(1, &[]);
            ended(i, "completed", timing);
        }),
        AuditEvent::AgentExecutionFailed { timing, code, .. } => with(|i| {
            let code = i.failure_codes.get(code);
            i.executions_failed.add(1, &[kv("code", code)]);
            ended(i, "failed", timing);
        }),
    }
}

fn proxied(outcome: ProxyOutcome, request: &ProxyRequest) {
    proxy_decision(outcome, &request.reason);
    proxy_bytes(ProxyDirection::FromContainer, request.bytes_from_container);
    proxy_bytes(ProxyDirection::ToContainer, request.bytes_to_container);
}

fn ended(i: &super::Instruments, outcome: &'static str, timing: &ExecutionTiming) {
    i.executions_in_flight.add(-1, &[]);
    i.execution_duration.record(
        timing.duration_ms as f64 / 1000.0,
        &[kv("outcome", outcome)],
    );
    if let Some(ms) = timing.first_event_ms {
        i.execution_first_event.record(ms as f64 / 1000.0, &[]);
    }
}
