//! How often each tenant's egress rules let requests through and refused
//! them, for the status page: counted from the proxy's audit events since
//! the daemon started, beside the rules as the config now stands.
//!
//! Like [`super::recent`], the tally is process-wide (audit events are
//! emitted by a free function), bounded and lost on restart; the metric
//! `agentbox_egress_rule_requests_total` and the audit log are the record.
//! Refusals held back by the audit rate (`proxy_requests_coalesced`) carry
//! no rule, so a flood of refusals counts only its audited part here.

use crate::audit::{AuditEvent, ProxyRequest};
use crate::config::{Config, RuleConfig};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};

/// (tenant, rule) pairs counted; a container cannot name rules, so only
/// configured names (and the tenants' ids) get here, but a config that
/// changes often must not grow this without end.
const PAIRS: usize = 4096;
/// Refusal reasons kept per rule; the rest count under `other`.
const REASONS: usize = 16;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct RuleCounts {
    pub allowed: u64,
    pub refused: u64,
    /// Refusals by reason (`path_not_allowed`, `method_not_allowed`, ...).
    pub refusals: BTreeMap<String, u64>,
    /// Unix ms of the rule's last decision.
    pub last_ms: u64,
}

#[derive(Default)]
struct Tally {
    counts: HashMap<(String, String), RuleCounts>,
}

impl Tally {
    fn record(&mut self, event: &AuditEvent, now: u64) {
        let (subject, request, allowed) = match event {
            AuditEvent::ProxyRequestAllowed { subject, request } => (subject, request, true),
            AuditEvent::ProxyRequestBlocked { subject, request } => (subject, request, false),
            _ => return,
        };
        for rule in rules_of(request) {
            let key = (subject.tenant_id.clone(), rule.to_owned());
            if !self.counts.contains_key(&key) && self.counts.len() >= PAIRS {
                continue;
            }
            let c = self.counts.entry(key).or_default();
            c.last_ms = now;
            if allowed {
                c.allowed += 1;
            } else {
                c.refused += 1;
                let reason =
                    if c.refusals.len() < REASONS || c.refusals.contains_key(&request.reason) {
                        request.reason.clone()
                    } else {
                        "other".to_owned()
                    };
                *c.refusals.entry(reason).or_default() += 1;
            }
        }
    }
}

/// The rules that decided: a refusal names every rule of the host that
/// was tried ("a,b"), and counts as a refusal of each. The allowlist's own
/// names are not rules.
fn rules_of(request: &ProxyRequest) -> impl Iterator<Item = &str> {
    request
        .rule
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|r| !r.is_empty() && !matches!(*r, "allowed_domain" | "allowed_ip"))
}

static TALLY: LazyLock<Mutex<Tally>> = LazyLock::new(Default::default);

fn tally() -> std::sync::MutexGuard<'static, Tally> {
    TALLY.lock().unwrap_or_else(|e| e.into_inner())
}

struct Recorder;

impl crate::audit::Subscriber for Recorder {
    fn event(&self, event: &AuditEvent) {
        tally().record(event, crate::state::now_ms());
    }
}

/// From now on every rule decision is counted; the daemon calls this at
/// start-up.
pub(crate) fn count_rule_decisions() {
    crate::audit::subscribe("rule_tally", std::sync::Arc::new(Recorder));
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct TenantRulesView {
    pub tenant_id: String,
    pub rules: Vec<RuleView>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct RuleView {
    pub name: String,
    /// `tenant` (the tenant's own, tried first) or `global`; `removed` for
    /// a rule that decided earlier and is gone from the config now.
    pub scope: &'static str,
    pub host: String,
    pub methods: Vec<String>,
    pub paths: Vec<String>,
    pub credential: Option<String>,
    /// The proxy terminates TLS to judge this rule's requests.
    pub intercepted: bool,
    #[serde(flatten)]
    pub counts: RuleCounts,
}

/// Each tenant's rules in the order the proxy tries them, with what they
/// decided. Tenants with no rule at all are left out.
pub(crate) fn view(cfg: &Config) -> Vec<TenantRulesView> {
    build(cfg, &tally().counts)
}

fn build(cfg: &Config, counts: &HashMap<(String, String), RuleCounts>) -> Vec<TenantRulesView> {
    let mut out = Vec::new();
    for t in &cfg.tenants {
        let counted = |name: &str| {
            counts
                .get(&(t.id.clone(), name.to_owned()))
                .cloned()
                .unwrap_or_default()
        };
        let mut rules: Vec<RuleView> = t
            .egress_rules
            .iter()
            .map(|r| rule_view(r, "tenant", counted(&r.name)))
            .chain(
                cfg.egress
                    .rules
                    .iter()
                    .map(|r| rule_view(r, "global", counted(&r.name))),
            )
            .collect();
        let mut removed: Vec<RuleView> = counts
            .iter()
            .filter(|((tenant, name), _)| tenant == &t.id && !rules.iter().any(|r| &r.name == name))
            .map(|((_, name), c)| RuleView {
                name: name.clone(),
                scope: "removed",
                host: String::new(),
                methods: Vec::new(),
                paths: Vec::new(),
                credential: None,
                intercepted: false,
                counts: c.clone(),
            })
            .collect();
        removed.sort_by(|a, b| a.name.cmp(&b.name));
        rules.extend(removed);
        if !rules.is_empty() {
            out.push(TenantRulesView {
                tenant_id: t.id.clone(),
                rules,
            });
        }
    }
    out
}

fn rule_view(r: &RuleConfig, scope: &'static str, counts: RuleCounts) -> RuleView {
    RuleView {
        name: r.name.clone(),
        scope,
        host: r.host.clone(),
        methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
        paths: r.paths.clone(),
        credential: r.credential.clone(),
        intercepted: !r.methods.is_empty() || !r.paths.is_empty() || r.credential.is_some(),
        counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Subject;

    fn decision(tenant: &str, allowed: bool, rule: Option<&str>, reason: &str) -> AuditEvent {
        let subject = Subject {
            tenant_id: tenant.into(),
            conversation_id: "c".into(),
            container_id: "agentbox-x".into(),
        };
        let request = ProxyRequest {
            route: "intercepted".into(),
            method: "POST".into(),
            host: "git.test".into(),
            port: 443,
            reason: reason.into(),
            status: Some(if allowed { 200 } else { 403 }),
            bytes_from_container: 0,
            bytes_to_container: 0,
            duration_ms: 0,
            credential: None,
            rule: rule.map(str::to_owned),
        };
        if allowed {
            AuditEvent::ProxyRequestAllowed { subject, request }
        } else {
            AuditEvent::ProxyRequestBlocked { subject, request }
        }
    }

    fn cfg() -> Config {
        Config::from_toml(
            r#"
            [[egress.credentials]]
            name = "git"
            format = "bearer"
            secret_env = "GIT_TOKEN"

            [[egress.rules]]
            name = "docs"
            host = "docs.test"

            [[tenants]]
            id = "acme"
            token_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            [[tenants.egress_rules]]
            name = "repo-a"
            host = "git.test"
            methods = ["get", "POST"]
            paths = ["/org/a.git/**"]
            credential = "git"

            [[tenants]]
            id = "quiet"
            token_sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
            "#,
            Vec::new(),
        )
        .expect("config")
    }

    #[test]
    fn counts_each_rule_per_tenant_with_refusals_by_reason() {
        let mut t = Tally::default();
        t.record(&decision("acme", true, Some("repo-a"), "repo-a"), 5);
        t.record(&decision("acme", true, Some("repo-a"), "repo-a"), 6);
        t.record(
            &decision("acme", false, Some("repo-a"), "path_not_allowed"),
            7,
        );
        // A refusal by several rules of the host counts for each.
        t.record(
            &decision("acme", false, Some("repo-a,docs"), "method_not_allowed"),
            8,
        );
        // Domain allowlist decisions and rule-less refusals are not rules.
        t.record(
            &decision("acme", true, Some("allowed_domain"), "allowed_domain"),
            9,
        );
        t.record(&decision("acme", false, None, "domain_not_allowed"), 9);
        t.record(&decision("quiet", true, Some("docs"), "docs"), 10);

        let views = build(&cfg(), &t.counts);
        let acme = &views[0];
        assert_eq!(acme.tenant_id, "acme");
        let names: Vec<_> = acme
            .rules
            .iter()
            .map(|r| (r.name.as_str(), r.scope))
            .collect();
        assert_eq!(names, [("repo-a", "tenant"), ("docs", "global")]);
        let repo = &acme.rules[0];
        assert!(repo.intercepted);
        assert_eq!(repo.methods, ["GET", "POST"]);
        assert_eq!((repo.counts.allowed, repo.counts.refused), (2, 2));
        assert_eq!(repo.counts.refusals["path_not_allowed"], 1);
        assert_eq!(repo.counts.refusals["method_not_allowed"], 1);
        assert_eq!(repo.counts.last_ms, 8);
        let docs = &acme.rules[1];
        assert!(!docs.intercepted);
        assert_eq!((docs.counts.allowed, docs.counts.refused), (0, 1));
        // The other tenant sees its own counts of the global rule only.
        let quiet = &views[1];
        assert_eq!(quiet.tenant_id, "quiet");
        assert_eq!(quiet.rules.len(), 1);
        assert_eq!(
            (quiet.rules[0].counts.allowed, quiet.rules[0].counts.refused),
            (1, 0)
        );
    }

    #[test]
    fn a_rule_gone_from_the_config_is_shown_as_removed() {
        let mut t = Tally::default();
        t.record(&decision("acme", true, Some("old-rule"), "old-rule"), 5);
        let views = build(&cfg(), &t.counts);
        let old = views[0].rules.last().expect("removed rule shown");
        assert_eq!((old.name.as_str(), old.scope), ("old-rule", "removed"));
        assert_eq!(old.counts.allowed, 1);
    }

    #[test]
    fn the_tally_is_bounded() {
        let mut t = Tally::default();
        for n in 0..PAIRS + 10 {
            t.record(&decision("acme", true, Some(&format!("r{n}")), "r"), 1);
        }
        assert_eq!(t.counts.len(), PAIRS);
        for n in 0..REASONS + 5 {
            t.record(&decision("acme", false, Some("r0"), &format!("why{n}")), 2);
        }
        let r0 = &t.counts[&("acme".to_owned(), "r0".to_owned())];
        assert_eq!(r0.refusals.len(), REASONS + 1);
        assert_eq!(r0.refusals["other"], 5);
        assert_eq!(r0.refused, REASONS as u64 + 5);
    }
}
