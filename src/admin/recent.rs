//! The most recent audit events, kept in memory for the status page, and
//! the last run of each conversation derived from them.
//!
//! Every audit event arrives here once [`keep_audit_events`] has
//! subscribed this ring to [`crate::audit`]. The buffers are bounded
//! (an old event falls out when a new one comes in), process-wide because
//! `emit` is a free function, and lost on restart: the audit log is the
//! record, this is the window onto it.

use crate::audit::AuditEvent;
use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use tokio::sync::watch;

/// Events kept for the page.
const CAPACITY: usize = 200;
/// Conversations whose last run is remembered.
const RUNS_CAPACITY: usize = 4096;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct RecentEvent {
    /// Increases by one per event since the daemon started.
    pub seq: u64,
    pub ts_ms: u64,
    pub event: String,
    /// The proxy refused a container's egress: the page highlights these.
    pub blocked: bool,
    /// The event's own fields (ids, host, reason, ...).
    pub fields: Value,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct LastRun {
    pub finished_ms: u64,
    pub duration_ms: u64,
    /// Set when the run ended in an `error` event.
    pub error_code: Option<String>,
}

#[derive(Default)]
struct Ring {
    seq: u64,
    events: VecDeque<RecentEvent>,
    runs: HashMap<String, LastRun>,
}

impl Ring {
    fn push(&mut self, event: &AuditEvent, now: u64) -> u64 {
        self.seq += 1;
        let finished = match event {
            AuditEvent::AgentExecutionCompleted {
                subject, timing, ..
            } => Some((subject, timing.duration_ms, None)),
            AuditEvent::AgentExecutionFailed {
                subject,
                timing,
                code,
                ..
            } => Some((subject, timing.duration_ms, Some(code.clone()))),
            _ => None,
        };
        if let Some((subject, duration_ms, error_code)) = finished {
            if self.runs.len() >= RUNS_CAPACITY {
                // Forget the oldest run; a status page has no use for it.
                let oldest = self
                    .runs
                    .iter()
                    .min_by_key(|(_, r)| r.finished_ms)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.runs.remove(&k);
                }
            }
            self.runs.insert(
                crate::state::conversation_key(&subject.tenant_id, &subject.conversation_id),
                LastRun {
                    finished_ms: now,
                    duration_ms,
                    error_code,
                },
            );
        }
        if self.events.len() >= CAPACITY {
            self.events.pop_front();
        }
        let fields = match serde_json::to_value(event) {
            Ok(Value::Object(mut m)) => {
                m.remove("event");
                Value::Object(m)
            }
            _ => Value::Null,
        };
        self.events.push_back(RecentEvent {
            seq: self.seq,
            ts_ms: now,
            event: event.name().to_owned(),
            blocked: matches!(
                event,
                AuditEvent::ProxyRequestBlocked { .. } | AuditEvent::ProxyRequestsCoalesced { .. }
            ),
            fields,
        });
        self.seq
    }

    fn newest(&self, limit: usize) -> Vec<RecentEvent> {
        self.events.iter().rev().take(limit).cloned().collect()
    }
}

static RING: LazyLock<Mutex<Ring>> = LazyLock::new(Default::default);
/// Carries the latest `seq`, so live views wake up on a new event.
static NOTIFY: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

fn ring() -> std::sync::MutexGuard<'static, Ring> {
    RING.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn record(event: &AuditEvent) {
    let seq = ring().push(event, crate::state::now_ms());
    NOTIFY.send_replace(seq);
}

struct Recorder;

impl crate::audit::Subscriber for Recorder {
    fn event(&self, event: &AuditEvent) {
        record(event);
    }
}

/// From now on every audit event is kept for the status page; the daemon
/// calls this at start-up.
pub(crate) fn keep_audit_events() {
    crate::audit::subscribe("recent", std::sync::Arc::new(Recorder));
}

/// Up to `limit` events, newest first.
pub(crate) fn events(limit: usize) -> Vec<RecentEvent> {
    ring().newest(limit)
}

/// The last run of the conversation `{tenant}/{conversation}`.
pub(crate) fn last_run(key: &str) -> Option<LastRun> {
    ring().runs.get(key).cloned()
}

/// Wakes whenever an event is recorded.
pub(crate) fn subscribe() -> watch::Receiver<u64> {
    NOTIFY.subscribe()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Subject;

    #[test]
    fn records_blocked_events_and_last_runs() {
        let mut ring = Ring::default();
        let subject = Subject {
            tenant_id: "t".into(),
            conversation_id: "c".into(),
            container_id: "agentbox-x".into(),
        };
        ring.push(
            &AuditEvent::ProxyRequestBlocked {
                subject: subject.clone(),
                request: crate::audit::ProxyRequest {
                    route: "http".into(),
                    method: "GET".into(),
                    host: "example.com".into(),
                    port: 80,
                    reason: "egress_not_allowed".into(),
                    status: Some(403),
                    bytes_from_container: 0,
                    bytes_to_container: 0,
                    duration_ms: 0,
                    credential: None,
                    rule: None,
                },
            },
            1,
        );
        ring.push(
            &AuditEvent::AgentExecutionFailed {
                subject,
                timing: crate::audit::ExecutionTiming {
                    duration_ms: 12,
                    first_event_ms: None,
                },
                code: "agent_failed".into(),
                message: "x".into(),
            },
            2,
        );
        let evs = ring.newest(10);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event, "agent_execution_failed");
        assert!(!evs[0].blocked);
        assert!(evs[1].blocked);
        assert_eq!(evs[1].event, "proxy_request_blocked");
        assert_eq!(evs[1].fields["host"], "example.com");
        assert!(evs[1].fields.get("event").is_none());
        let run = ring.runs.get("t/c").expect("last run kept");
        assert_eq!(run.error_code.as_deref(), Some("agent_failed"));
        assert_eq!((run.duration_ms, run.finished_ms), (12, 2));
    }

    #[test]
    fn ring_is_bounded() {
        let mut ring = Ring::default();
        for n in 0..CAPACITY as u64 + 10 {
            ring.push(
                &AuditEvent::PoolClaimed {
                    subject: Subject::default(),
                    warm: true,
                    tier: Default::default(),
                },
                n,
            );
        }
        let evs = ring.newest(usize::MAX);
        assert_eq!(evs.len(), CAPACITY);
        assert_eq!(evs[0].seq, CAPACITY as u64 + 10);
    }

    #[test]
    fn global_record_notifies() {
        let rx = subscribe();
        record(&AuditEvent::PoolClaimed {
            subject: Subject::default(),
            warm: false,
            tier: Default::default(),
        });
        assert!(rx.has_changed().unwrap());
        assert!(!events(1).is_empty());
    }
}
