//! Every instrument the daemon exports, built once on one meter whose
//! reader is the Prometheus exporter. Names are final Prometheus names: the
//! exporter only appends `_total` to counters, so no OpenTelemetry unit is
//! set (it would append a second unit suffix).

use super::labels::{Bounded, ClaimKind, ProxyDirection, ProxyOutcome, SyncDirection, SyncOutcome};
use crate::codes::{DestroyReason, ErrorCode};
use crate::config::IsolationTier;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider, UpDownCounter};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;

/// Container states as the state file spells them (`ContainerState`).
pub(super) const CONTAINER_STATES: [&str; 4] = ["warming", "ready", "claimed", "destroying"];
/// Pool containers are the unclaimed ones.
pub(super) const POOL_STATES: [&str; 2] = ["warming", "ready"];
/// Failure codes that exist before any run fails, so error-rate queries
/// find a series.
const KNOWN_FAILURE_CODES: [ErrorCode; 6] = [
    ErrorCode::AgentFailed,
    ErrorCode::AgentProtocolViolation,
    ErrorCode::BudgetExceeded,
    ErrorCode::CapacityExhausted,
    ErrorCode::ContainerStartFailed,
    ErrorCode::RuntimeUnavailable,
];

pub(super) struct Instruments {
    pub registry: prometheus::Registry,
    // Dropping the provider shuts the pipeline down; it lives as long as
    // the instruments.
    _provider: SdkMeterProvider,

    pub pool_target: Gauge<u64>,
    pub pool_max: Gauge<u64>,
    pub pool_containers: Gauge<u64>,
    pub pool_claims: Counter<u64>,
    pub weight_raises: Counter<u64>,
    pub containers: Gauge<u64>,
    pub containers_created: Counter<u64>,
    pub containers_destroyed: Counter<u64>,
    pub containers_crashed: Counter<u64>,
    pub containers_recovered: Counter<u64>,
    pub containers_reclaimed: Counter<u64>,
    pub container_start: Histogram<f64>,
    pub engine_up: Gauge<u64>,
    pub engine_outages: Counter<u64>,

    pub executions_started: Counter<u64>,
    pub executions_completed: Counter<u64>,
    pub executions_failed: Counter<u64>,
    pub executions_in_flight: UpDownCounter<i64>,
    pub execution_duration: Histogram<f64>,
    pub execution_first_event: Histogram<f64>,

    pub proxy_requests: Counter<u64>,
    pub egress_rule_requests: Counter<u64>,
    pub proxy_bytes: Counter<u64>,
    pub model_tokens: Counter<u64>,
    pub model_cost: Counter<f64>,

    pub sync_runs: Counter<u64>,
    pub sync_bytes: Counter<u64>,
    pub sync_duration: Histogram<f64>,
    pub sync_backlog: Gauge<i64>,
    pub sync_scans: Counter<u64>,
    pub sync_tracked: Gauge<i64>,

    pub state_transaction: Histogram<f64>,
    pub audit_events: Counter<u64>,
    pub audit_coalesced: Counter<u64>,
    pub audit_write_failures: Counter<u64>,

    pub destroy_reasons: Bounded,
    pub failure_codes: Bounded,
    pub proxy_reasons: Bounded,
    /// Egress rule names come from the config, so they are few.
    pub egress_rules: Bounded,
    /// Tenant ids come from the config, so they are few; the cap guards
    /// against a config with very many tenants.
    pub tenants: Bounded,
}

fn kv(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

fn counter(m: &Meter, name: &'static str, help: &'static str) -> Counter<u64> {
    m.u64_counter(name).with_description(help).build()
}

fn seconds(m: &Meter, name: &'static str, help: &'static str, bounds: &[f64]) -> Histogram<f64> {
    m.f64_histogram(name)
        .with_description(help)
        .with_boundaries(bounds.to_vec())
        .build()
}

impl Instruments {
    pub(super) fn build() -> Result<Self, opentelemetry_sdk::error::OTelSdkError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            // Scope labels and `target_info` would add an `otel_scope_*`
            // label to every series and a metric outside our namespace;
            // `agentbox_build_info` says what they would.
            .without_target_info()
            .scope_info_enabled(false)
            .build()?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let m = provider.meter("agentbox");

        let this = Self {
            pool_target: m
                .u64_gauge("agentbox_pool_target_containers")
                .with_description("Ready containers the pool keeps warm now, by tier (the configured size, raised after a burst up to pool.burst_max_size).")
                .build(),
            pool_max: m
                .u64_gauge("agentbox_pool_max_containers")
                .with_description("Most containers the daemon runs at once (pool.max_size).")
                .build(),
            pool_containers: m
                .u64_gauge("agentbox_pool_containers")
                .with_description("Unclaimed pool containers by state (ready, warming) and tier (runc, gvisor).")
                .build(),
            pool_claims: counter(
                &m,
                "agentbox_pool_claims",
                "Containers handed to conversations, by kind: warm (from the pool) or cold (created on demand), and tier.",
            ),
            weight_raises: counter(
                &m,
                "agentbox_pool_weight_raises",
                "Claimed pool containers given the default CPU weight back, by how: written into the cgroup at the claim, through the engine after it, or failed.",
            ),
            containers: m
                .u64_gauge("agentbox_containers")
                .with_description("Containers in the state file, by lifecycle state.")
                .build(),
            containers_created: counter(
                &m,
                "agentbox_containers_created",
                "Containers created and answering, by tier.",
            ),
            containers_destroyed: counter(
                &m,
                "agentbox_containers_destroyed",
                "Containers removed, by reason.",
            ),
            containers_crashed: counter(
                &m,
                "agentbox_containers_crashed",
                "Containers found stopped that should have been running.",
            ),
            containers_recovered: counter(
                &m,
                "agentbox_containers_recovered",
                "Conversations moved to a new container after theirs died.",
            ),
            containers_reclaimed: counter(
                &m,
                "agentbox_containers_reclaimed",
                "Containers the sweeper reclaimed, by reason (idle, max_age, orphan).",
            ),
            container_start: seconds(
                &m,
                "agentbox_container_start_duration_seconds",
                "Time from create request to the agent answering.",
                &[0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0],
            ),
            engine_up: m
                .u64_gauge("agentbox_engine_up")
                .with_description("1 while the Docker engine answers (and was reconciled with after an outage), else 0; runs are refused at 0.")
                .build(),
            engine_outages: counter(
                &m,
                "agentbox_engine_outages",
                "Times the Docker engine stopped answering.",
            ),
            executions_started: counter(
                &m,
                "agentbox_executions_started",
                "Agent runs started.",
            ),
            executions_completed: counter(
                &m,
                "agentbox_executions_completed",
                "Agent runs that ended with a result.",
            ),
            executions_failed: counter(
                &m,
                "agentbox_executions_failed",
                "Agent runs that ended with an error, by error code.",
            ),
            executions_in_flight: m
                .i64_up_down_counter("agentbox_executions_in_flight")
                .with_description("Agent runs in progress.")
                .build(),
            execution_duration: seconds(
                &m,
                "agentbox_execution_duration_seconds",
                "Duration of agent runs, by outcome (completed, failed).",
                &[0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0],
            ),
            execution_first_event: seconds(
                &m,
                "agentbox_execution_first_event_seconds",
                "Time from accepting a run to the agent's first event (container claim or start included).",
                &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0],
            ),
            proxy_requests: counter(
                &m,
                "agentbox_proxy_requests",
                "Egress proxy decisions, by outcome (allowed, blocked) and reason.",
            ),
            egress_rule_requests: counter(
                &m,
                "agentbox_egress_rule_requests",
                "Egress proxy decisions an egress rule made, by tenant, rule and outcome (allowed, blocked).",
            ),
            proxy_bytes: counter(
                &m,
                "agentbox_proxy_bytes",
                "Bytes through the egress proxy, by direction seen from the container.",
            ),
            model_tokens: counter(
                &m,
                "agentbox_model_tokens",
                "Model tokens billed through the gateway, by tenant and kind (input, output, cache_read, cache_write).",
            ),
            model_cost: m
                .f64_counter("agentbox_model_cost_usd")
                .with_description("Model spend through the gateway in USD (priced by model.prices), by tenant.")
                .build(),
            sync_runs: counter(
                &m,
                "agentbox_sync_runs",
                "Workspace syncs, by direction and outcome (ok, failed, stale).",
            ),
            sync_bytes: counter(
                &m,
                "agentbox_sync_bytes",
                "Bytes moved by workspace syncs, by direction.",
            ),
            sync_duration: seconds(
                &m,
                "agentbox_sync_duration_seconds",
                "Duration of workspace syncs, by direction.",
                &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0],
            ),
            sync_backlog: m
                .i64_gauge("agentbox_sync_backlog_conversations")
                .with_description("Conversations with workspace changes not yet in the object store.")
                .build(),
            sync_scans: counter(
                &m,
                "agentbox_sync_scans",
                "How pushes looked at workspaces: tracked (changed paths only) or walked.",
            ),
            sync_tracked: m
                .i64_gauge("agentbox_sync_tracked_workspaces")
                .with_description("Workspaces whose changes are tracked (fanotify groups held).")
                .build(),
            state_transaction: seconds(
                &m,
                "agentbox_state_transaction_duration_seconds",
                "Duration of redb transactions, by kind (read, write; writes include the fsync).",
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
            ),
            audit_events: counter(
                &m,
                "agentbox_audit_events",
                "Audit events emitted, by event name.",
            ),
            audit_coalesced: counter(
                &m,
                "agentbox_audit_coalesced",
                "Audit events held back by a rate limit and written as one summary, by the event held back.",
            ),
            audit_write_failures: counter(
                &m,
                "agentbox_audit_write_failures",
                "Audit lines that could not be written to the audit file.",
            ),
            destroy_reasons: Bounded::new(32),
            failure_codes: Bounded::new(48),
            proxy_reasons: Bounded::new(64),
            egress_rules: Bounded::new(128),
            tenants: Bounded::new(256),
            registry,
            _provider: provider,
        };
        this.static_series(&m);
        this.zero_series();
        Ok(this)
    }

    /// Build info and start time: recorded once, read on every scrape.
    fn static_series(&self, m: &Meter) {
        let build = m
            .u64_gauge("agentbox_build_info")
            .with_description("Always 1; labels say which build runs.")
            .build();
        build.record(1, &[kv("version", env!("CARGO_PKG_VERSION"))]);
        let start = m
            .f64_gauge("agentbox_start_time_seconds")
            .with_description("When the daemon started, in seconds since the Unix epoch.")
            .build();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        start.record(now, &[]);
    }

    /// Every counter and gauge series that dashboards and alerts query
    /// exists (at 0) from the first scrape: `rate()` over a missing series
    /// is empty, not 0, and that hides problems.
    fn zero_series(&self) {
        for tier in IsolationTier::ALL {
            let t = kv("tier", tier.as_str());
            for kind in [ClaimKind::Warm, ClaimKind::Cold] {
                self.pool_claims
                    .add(0, &[kv("kind", kind.as_str()), t.clone()]);
            }
            for state in POOL_STATES {
                self.pool_containers
                    .record(0, &[kv("state", state), t.clone()]);
            }
            self.pool_target.record(0, std::slice::from_ref(&t));
            self.containers_created.add(0, &[t]);
        }
        for state in CONTAINER_STATES {
            self.containers.record(0, &[kv("state", state)]);
        }
        for via in super::WeightRaise::ALL {
            self.weight_raises.add(0, &[kv("via", via.as_str())]);
        }
        self.pool_max.record(0, &[]);
        for c in [
            &self.containers_crashed,
            &self.containers_recovered,
            &self.executions_started,
            &self.executions_completed,
            &self.audit_write_failures,
            &self.engine_outages,
        ] {
            c.add(0, &[]);
        }
        self.engine_up.record(1, &[]);
        // Every destroy reason's series exists from the start.
        for reason in DestroyReason::ALL {
            let label = self.destroy_reasons.get(reason.as_str());
            self.containers_destroyed.add(0, &[kv("reason", label)]);
            if reason.is_reclaim() {
                self.containers_reclaimed
                    .add(0, &[kv("reason", reason.as_str())]);
            }
        }
        for code in KNOWN_FAILURE_CODES {
            let code = self.failure_codes.get(code.as_str());
            self.executions_failed.add(0, &[kv("code", code)]);
        }
        self.executions_in_flight.add(0, &[]);
        for (outcome, reason) in [
            (ProxyOutcome::Allowed, "model_gateway"),
            (ProxyOutcome::Blocked, "domain_not_allowed"),
        ] {
            let reason = self.proxy_reasons.get(reason);
            self.proxy_requests
                .add(0, &[kv("outcome", outcome.as_str()), kv("reason", reason)]);
        }
        for d in [ProxyDirection::FromContainer, ProxyDirection::ToContainer] {
            self.proxy_bytes.add(0, &[kv("direction", d.as_str())]);
        }
        self.audit_coalesced
            .add(0, &[kv("event", "proxy_request_blocked")]);
        for d in [SyncDirection::ToContainer, SyncDirection::FromContainer] {
            self.sync_bytes.add(0, &[kv("direction", d.as_str())]);
            for o in [SyncOutcome::Ok, SyncOutcome::Failed, SyncOutcome::Stale] {
                self.sync_runs
                    .add(0, &[kv("direction", d.as_str()), kv("outcome", o.as_str())]);
            }
        }
        self.sync_backlog.record(0, &[]);
        self.sync_tracked.record(0, &[]);
        for kind in ["tracked", "walked"] {
            self.sync_scans.add(0, &[kv("kind", kind)]);
        }
    }
}
