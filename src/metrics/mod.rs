//! Prometheus metrics through OpenTelemetry: the instruments, a small typed
//! API that records them, and the text served at `GET /metrics` on the
//! admin listener.
//!
//! Names follow `agentbox_<noun>_<unit>`: counters end in `_total`,
//! durations are seconds, sizes bytes. Labels are bounded: fixed enums, or
//! strings capped by [`labels::Bounded`]; never a conversation or
//! container id, and a tenant id only on the model-spend and egress-rule
//! series (tenants and rules come from the config, so they are few). Most counters follow from audit
//! events ([`count_audit_events`]), so one thing that happens is one event, logged and counted alike. The
//! catalogue is `docs/metrics.md`.

mod events;
mod http;
mod instruments;
pub(crate) mod labels;

pub(crate) use events::count_audit_events;
pub(crate) use http::response;
pub(crate) use labels::{
    ProxyDirection, ProxyOutcome, SyncDirection, SyncOutcome, TxKind, WeightRaise,
};

use crate::config::IsolationTier;
use instruments::{Instruments, CONTAINER_STATES, POOL_STATES};
use opentelemetry::KeyValue;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub(crate) enum MetricsError {
    #[error("metrics pipeline unavailable: {0}")]
    Unavailable(String),
    #[error("encoding metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

/// The process-wide instruments, built on first use so that any code path
/// (and any unit test) can record without set-up. When the pipeline cannot
/// be built, recording is a no-op and scrapes fail loudly with the reason.
fn pipeline() -> Result<&'static Instruments, &'static str> {
    static CELL: OnceLock<Result<Instruments, String>> = OnceLock::new();
    CELL.get_or_init(|| Instruments::build().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(String::as_str)
}

fn with(f: impl FnOnce(&Instruments)) {
    if let Ok(i) = pipeline() {
        f(i)
    }
}

fn kv(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

/// The Prometheus text exposition of every metric.
pub(crate) fn render() -> Result<String, MetricsError> {
    let i = pipeline().map_err(|e| MetricsError::Unavailable(e.to_owned()))?;
    Ok(prometheus::TextEncoder::new().encode_to_string(&i.registry.gather())?)
}

/// What the pool and container gauges show, as the orchestrator counts
/// it; refreshed on every scrape, so as fresh as the state file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PoolGauges {
    pub max_size: usize,
    /// Each tier's pool: its target, and its unclaimed containers starting
    /// up and ready to be claimed.
    pub tiers: Vec<TierGauges>,
    /// All containers by lifecycle state.
    pub warming: usize,
    pub ready: usize,
    pub claimed: usize,
    pub destroying: usize,
}

/// One isolation tier's warm pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TierGauges {
    pub tier: IsolationTier,
    pub target: usize,
    pub warming: usize,
    pub ready: usize,
}

pub(crate) fn observe_pool(g: &PoolGauges) {
    with(|i| {
        i.pool_max.record(g.max_size as u64, &[]);
        for t in &g.tiers {
            let tier = kv("tier", t.tier.as_str());
            i.pool_target
                .record(t.target as u64, std::slice::from_ref(&tier));
            for (state, n) in POOL_STATES.iter().zip([t.warming, t.ready]) {
                i.pool_containers
                    .record(n as u64, &[kv("state", *state), tier.clone()]);
            }
        }
        let counts = [g.warming, g.ready, g.claimed, g.destroying];
        for (label, n) in CONTAINER_STATES.iter().zip(counts) {
            i.containers.record(n as u64, &[kv("state", *label)]);
        }
    });
}

/// Whether the Docker engine answers (the engine watch).
pub(crate) fn set_engine_up(up: bool) {
    with(|i| i.engine_up.record(u64::from(up), &[]));
}

/// A container came up: from the create request to its agent answering.
pub(crate) fn container_started(elapsed: Duration) {
    with(|i| i.container_start.record(elapsed.as_secs_f64(), &[]));
}

/// A claimed pool container's CPU weight raised (`pool.refill_cpu_shares`).
pub(crate) fn weight_raised(via: WeightRaise) {
    with(|i| i.weight_raises.add(1, &[kv("via", via.as_str())]));
}

/// One redb transaction, commit (and its fsync) included.
pub(crate) fn state_transaction(kind: TxKind, elapsed: Duration) {
    with(|i| {
        i.state_transaction
            .record(elapsed.as_secs_f64(), &[kv("kind", kind.as_str())])
    });
}

/// One egress proxy decision. `reason` is the allowing rule or the
/// refusal code; it must be a short code, never a host name.
pub(crate) fn proxy_decision(outcome: ProxyOutcome, reason: &str) {
    proxy_decisions(outcome, reason, 1);
}

/// `n` egress decisions with the same outcome and reason.
pub(crate) fn proxy_decisions(outcome: ProxyOutcome, reason: &str, n: u64) {
    with(|i| {
        let reason = i.proxy_reasons.get(reason);
        i.proxy_requests
            .add(n, &[kv("outcome", outcome.as_str()), kv("reason", reason)]);
    });
}

/// One decision an egress rule made (or, for a refusal, the host's rules
/// did): `rule` is a configured rule name, or several joined by commas.
pub(crate) fn egress_rule_decision(outcome: ProxyOutcome, tenant: &str, rule: &str) {
    with(|i| {
        let tenant = i.tenants.get(tenant);
        let rule = i.egress_rules.get(rule);
        i.egress_rule_requests.add(
            1,
            &[
                kv("outcome", outcome.as_str()),
                kv("rule", rule),
                kv("tenant", tenant),
            ],
        );
    });
}

/// Bytes through the egress proxy.
pub(crate) fn proxy_bytes(direction: ProxyDirection, n: u64) {
    with(|i| i.proxy_bytes.add(n, &[kv("direction", direction.as_str())]));
}

/// Token kinds of `agentbox_model_tokens_total`, in the order
/// [`model_usage`] takes them.
pub(crate) const TOKEN_KINDS: [&str; 4] = ["input", "output", "cache_read", "cache_write"];

/// One model answer billed to `tenant`: its tokens by [`TOKEN_KINDS`]
/// and its cost.
pub(crate) fn model_usage(tenant: &str, tokens: [u64; 4], cost_usd: f64) {
    with(|i| {
        let tenant = i.tenants.get(tenant);
        for (kind, n) in TOKEN_KINDS.iter().zip(tokens) {
            i.model_tokens
                .add(n, &[kv("tenant", tenant.clone()), kv("kind", *kind)]);
        }
        i.model_cost.add(cost_usd, &[kv("tenant", tenant)]);
    });
}

/// One workspace sync run.
pub(crate) fn sync_run(
    direction: SyncDirection,
    outcome: SyncOutcome,
    bytes: u64,
    duration: Duration,
) {
    with(|i| {
        let d = kv("direction", direction.as_str());
        i.sync_runs
            .add(1, &[d.clone(), kv("outcome", outcome.as_str())]);
        i.sync_bytes.add(bytes, std::slice::from_ref(&d));
        i.sync_duration.record(duration.as_secs_f64(), &[d]);
    });
}

/// One push's scan of a workspace: only the tracked changes, or a walk.
pub(crate) fn sync_scan(walked: bool) {
    let kind = if walked { "walked" } else { "tracked" };
    with(|i| i.sync_scans.add(1, &[kv("kind", kind)]));
}

/// Workspaces whose changes are tracked (fanotify groups held).
pub(crate) fn set_sync_tracked(n: i64) {
    with(|i| i.sync_tracked.record(n, &[]));
}

/// Conversations whose workspace changes are not yet in the object store.
pub(crate) fn set_sync_backlog(n: i64) {
    with(|i| i.sync_backlog.record(n, &[]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_has_the_zero_series_and_follows_the_naming_rules() {
        proxy_decision(ProxyOutcome::Blocked, "port_not_allowed");
        let text = render().unwrap();
        // The core's unit tests run in this process and move the pool,
        // sync and execution series: their presence is what is checked.
        for needle in [
            "agentbox_build_info{version=",
            "agentbox_pool_claims_total{kind=\"cold\",tier=\"gvisor\"} ",
            "agentbox_pool_containers{state=\"ready\",tier=\"runc\"} ",
            "agentbox_containers{state=\"claimed\"}",
            "agentbox_proxy_requests_total{outcome=\"blocked\",reason=\"port_not_allowed\"} 1",
            "agentbox_sync_runs_total{direction=\"from_container\",outcome=\"failed\"} ",
            "agentbox_sync_backlog_conversations ",
            "agentbox_sync_scans_total{kind=\"walked\"} ",
            "agentbox_sync_tracked_workspaces ",
            "agentbox_executions_in_flight ",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("agentbox_"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            assert!(!name.contains("otel"), "{line}");
        }
        assert!(!text.contains("otel_scope"), "{text}");
    }

    #[test]
    fn model_spend_is_counted_per_tenant_and_kind() {
        model_usage("spend-test", [1, 2, 3, 4], 0.25);
        model_usage("spend-test", [0, 2, 0, 0], 0.5);
        let text = render().unwrap();
        for needle in [
            "agentbox_model_tokens_total{kind=\"output\",tenant=\"spend-test\"} 4",
            "agentbox_model_tokens_total{kind=\"cache_write\",tenant=\"spend-test\"} 4",
            "agentbox_model_cost_usd_total{tenant=\"spend-test\"} 0.75",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
