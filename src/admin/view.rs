//! The status the page, `/admin/api/status` and `agentbox status` show:
//! the orchestrator's picture (pool, containers, workers) joined with
//! resource use, conversations and their last runs, recent audit events
//! and health.

use super::health::Health;
use super::recent::{self, LastRun, RecentEvent};
use super::stats::StatsView;
use super::Admin;
use crate::ids::ConversationKey;
use crate::orchestrator::{EngineStatus, OrchestratorError, PoolStatus};
use crate::state::{conversation_key, now_ms, ContainerRecord};
use crate::workers::WorkerStatus;
use serde::Serialize;
use std::collections::BTreeMap;

/// Events shown; the ring keeps more for a later page.
const EVENTS_SHOWN: usize = 50;
/// Conversations shown, most recently active first.
const CONVERSATIONS_SHOWN: usize = 200;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct StatusView {
    pub daemon: DaemonView,
    pub pool: PoolStatus,
    pub containers: Vec<ContainerView>,
    pub conversations: Vec<ConversationView>,
    pub conversations_total: usize,
    pub workers: BTreeMap<&'static str, WorkerStatus>,
    pub events: Vec<RecentEvent>,
    pub health: Health,
    /// Whether the engine answers; while it does not, runs are refused.
    pub engine: EngineStatus,
    /// Each configured tenant's model spend today (UTC), as the gateway
    /// counts it, with its daily limits.
    pub spend: Vec<TenantSpendView>,
    /// Which host holds which conversation, from the leases in the bucket.
    pub hosts: super::hosts::HostsView,
    /// Each tenant's egress rules, in the order they are tried, with how
    /// often each let requests through and refused them since start-up.
    pub egress_rules: Vec<super::rule_tally::TenantRulesView>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct TenantSpendView {
    pub tenant_id: String,
    pub tokens_today: u64,
    pub cost_usd_today: f64,
    pub daily_token_limit: Option<u64>,
    pub daily_cost_limit_usd: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct DaemonView {
    pub version: &'static str,
    pub instance: String,
    pub started_ms: u64,
    pub now_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ContainerView {
    #[serde(flatten)]
    pub record: ContainerRecord,
    pub age_ms: u64,
    pub idle_ms: u64,
    /// Absent when the engine gave no reading (not running, or slow).
    pub stats: Option<StatsView>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ConversationView {
    pub tenant_id: String,
    pub conversation_id: String,
    pub container_id: Option<String>,
    pub session_id: Option<String>,
    pub last_activity_ms: u64,
    pub idle_ms: u64,
    /// A run holds the conversation's lock right now.
    pub running: bool,
    /// The last run since the daemon started.
    pub last_run: Option<LastRun>,
}

pub(crate) async fn build(admin: &Admin) -> Result<StatusView, OrchestratorError> {
    let o = &admin.orchestrator;
    let status = o.status().await?;
    let now = now_ms();
    let names: Vec<String> = status.containers.iter().map(|c| c.name.clone()).collect();
    let (mut stats, health) = tokio::join!(
        admin.stats.sample(admin.runtime.as_ref(), &names),
        admin.health.get(o, admin.runtime.as_ref()),
    );
    let containers = status
        .containers
        .into_iter()
        .map(|record| ContainerView {
            age_ms: now.saturating_sub(record.created_ms),
            idle_ms: now.saturating_sub(record.last_activity_ms),
            stats: stats.remove(&record.name),
            record,
        })
        .collect();
    let mut convs = o.store().conversations().await?;
    let conversations_total = convs.len();
    convs.sort_by_key(|c| std::cmp::Reverse(c.last_activity_ms));
    let conversations = convs
        .into_iter()
        .take(CONVERSATIONS_SHOWN)
        .map(|c| ConversationView {
            running: o
                .locks()
                .is_held(&ConversationKey::new(&c.tenant_id, &c.conversation_id)),
            last_run: recent::last_run(&conversation_key(&c.tenant_id, &c.conversation_id)),
            idle_ms: now.saturating_sub(c.last_activity_ms),
            tenant_id: c.tenant_id,
            conversation_id: c.conversation_id,
            container_id: c.container_id,
            session_id: c.session_id,
            last_activity_ms: c.last_activity_ms,
        })
        .collect();
    Ok(StatusView {
        daemon: DaemonView {
            version: env!("CARGO_PKG_VERSION"),
            instance: o.cfg().server.instance.clone(),
            started_ms: admin.started_ms,
            now_ms: now,
        },
        pool: status.pool,
        containers,
        conversations,
        conversations_total,
        workers: status.workers,
        events: recent::events(EVENTS_SHOWN),
        health,
        engine: status.engine,
        spend: spend_view(o),
        hosts: admin
            .hosts
            .get(o.cfg().tenants.iter().map(|t| t.id.clone()).collect())
            .await,
        egress_rules: super::rule_tally::view(&o.cfg()),
    })
}

fn spend_view(o: &crate::orchestrator::Orchestrator) -> Vec<TenantSpendView> {
    let ledger = o.gateway().spend();
    o.cfg()
        .tenants
        .iter()
        .map(|t| {
            let today = ledger.tenant_today(&t.id);
            TenantSpendView {
                tenant_id: t.id.clone(),
                tokens_today: today.tokens(),
                cost_usd_today: today.cost_usd,
                daily_token_limit: t.daily_token_limit,
                daily_cost_limit_usd: t.daily_cost_limit_usd,
            }
        })
        .collect()
}
