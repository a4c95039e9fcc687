//! `agentbox status`: the status page's picture as terminal tables, read
//! from the running daemon's admin listener (`--json` prints it raw).

use super::client::AdminClient;
use super::table::Table;
use super::{human_bytes, human_duration, load_config, AdminArgs, CliError};
use serde_json::Value;
use std::process::ExitCode;

/// Events printed; the JSON carries more.
const EVENTS_SHOWN: usize = 15;

pub async fn run(args: &AdminArgs, json: bool) -> Result<ExitCode, CliError> {
    let cfg = load_config(args.config.as_ref())?;
    let client = AdminClient::new(&cfg, args)?;
    let status = client.get("/admin/api/status").await?;
    if json {
        let text = serde_json::to_string_pretty(&status)
            .map_err(|e| CliError::BadResponse(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", render(&status, client.addr()));
    }
    Ok(ExitCode::SUCCESS)
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ms(v: &Value) -> String {
    v.as_u64().map(human_duration).unwrap_or_else(|| "-".into())
}

/// Container names without the common prefix, as on the page.
fn short(v: &Value) -> String {
    let name = s(v);
    name.strip_prefix("agentbox-")
        .map(|n| n.chars().take(12).collect())
        .unwrap_or(name)
}

/// Which host holds which conversation (the leases in the bucket): this
/// host's first, then the others by host.
fn render_hosts(out: &mut String, h: &Value, me: String) {
    if h["enabled"] != true {
        return;
    }
    let empty = Vec::new();
    let mut leases: Vec<&Value> = h["leases"].as_array().unwrap_or(&empty).iter().collect();
    leases.sort_by_key(|l| (l["mine"] != true, s(&l["holder"])));
    let mut t = Table::new(&["HOST", "TENANT", "CONVERSATION", "LEASE"]);
    for l in &leases {
        let host = if l["mine"] == true {
            format!("{me} (this host)")
        } else {
            s(&l["holder"])
        };
        let lease = if l["live"] == true {
            "held: running"
        } else {
            "released or expired"
        };
        t.row(vec![
            host,
            s(&l["tenant_id"]),
            s(&l["conversation_id"]),
            lease.into(),
        ]);
    }
    let mut title = format!(
        "{} conversations by host (leases in the bucket)",
        leases.len()
    );
    if h["truncated"] == true {
        title.push_str(", more not shown");
    }
    if let Some(e) = h["error"].as_str() {
        title.push_str(&format!(", survey failed: {e}"));
    }
    section(out, &t, &title);
}

/// Each tenant's egress rules in the order tried, with what they decided
/// since the daemon started.
fn render_rules(out: &mut String, tenants: &Value, now: u64) {
    let empty = Vec::new();
    let mut t = Table::new(&[
        "TENANT", "RULE", "SCOPE", "HOST", "ALLOWED", "REFUSED", "REFUSALS", "LAST",
    ]);
    let mut n = 0;
    for tenant in tenants.as_array().unwrap_or(&empty) {
        for r in tenant["rules"].as_array().unwrap_or(&empty) {
            n += 1;
            let refusals = r["refusals"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into());
            let last = match r["last_ms"].as_u64().filter(|t| *t > 0) {
                Some(t) => format!("{} ago", human_duration(now.saturating_sub(t))),
                None => "never".into(),
            };
            t.row(vec![
                s(&tenant["tenant_id"]),
                s(&r["name"]),
                s(&r["scope"]),
                s(&r["host"]),
                s(&r["allowed"]),
                s(&r["refused"]),
                refusals,
                last,
            ]);
        }
    }
    if n > 0 {
        section(out, &t, &format!("{n} egress rules by tenant"));
    }
}

/// Pure: the whole report for one status document.
pub fn render(st: &Value, addr: &str) -> String {
    let mut out = String::new();
    let d = &st["daemon"];
    let now = d["now_ms"].as_u64().unwrap_or(0);
    out.push_str(&format!(
        "agentbox {}  instance {}  up {}  admin {addr}\n\n",
        s(&d["version"]),
        s(&d["instance"]),
        human_duration(now.saturating_sub(d["started_ms"].as_u64().unwrap_or(now))),
    ));

    let h = &st["health"];
    let mut t = Table::new(&["HEALTH", "STATE", "DETAIL"]);
    for (name, key) in [
        ("docker", "docker"),
        ("state store", "state_store"),
        ("object store", "object_store"),
    ] {
        let c = &h[key];
        let mut detail = s(&c["detail"]);
        if let Some(fix) = c["fix"].as_str() {
            detail.push_str(&format!(" (fix: {fix})"));
        }
        t.row(vec![name.into(), s(&c["level"]).to_uppercase(), detail]);
    }
    for (name, key) in [
        ("seccomp", "seccomp"),
        ("apparmor", "apparmor"),
        ("landlock", "landlock"),
        ("userns-remap", "userns_remap"),
    ] {
        let l = &h["isolation"][key];
        t.row(vec![name.into(), s(&l["state"]), s(&l["detail"])]);
    }
    out.push_str(&t.render());
    out.push('\n');

    let p = &st["pool"];
    out.push_str(&format!(
        "POOL  ready {}/{}  warming {}  claimed {}  max {}  warm claims {}  cold starts {}\n      image {}\n",
        s(&p["ready"]),
        s(&p["target"]),
        s(&p["warming"]),
        s(&p["claimed"]),
        s(&p["max_size"]),
        s(&p["warm_claims_total"]),
        s(&p["cold_starts_total"]),
        s(&p["image"]),
    ));
    let empty_tiers = Vec::new();
    for t in p["tiers"].as_array().unwrap_or(&empty_tiers) {
        out.push_str(&format!(
            "      tier {:6}  ready {}/{}  warming {}  claimed {}\n",
            s(&t["tier"]),
            s(&t["ready"]),
            s(&t["target"]),
            s(&t["warming"]),
            s(&t["claimed"]),
        ));
    }
    out.push('\n');

    let empty = Vec::new();
    let containers = st["containers"].as_array().unwrap_or(&empty);
    let mut t = Table::new(&[
        "CONTAINER",
        "STATE",
        "TIER",
        "TENANT",
        "CONVERSATION",
        "AGE",
        "IDLE",
        "MEMORY",
        "CPU",
        "PIDS",
    ]);
    for c in containers {
        let stats = &c["stats"];
        let memory = match (
            stats["memory_bytes"].as_u64(),
            stats["memory_limit_bytes"].as_u64(),
        ) {
            (Some(m), Some(l)) if l > 0 => format!("{} / {}", human_bytes(m), human_bytes(l)),
            (Some(m), _) => human_bytes(m),
            _ => "-".into(),
        };
        let cpu = stats["cpu_percent"]
            .as_f64()
            .map(|p| format!("{p:.1}%"))
            .unwrap_or_else(|| "-".into());
        let mut state = s(&c["state"]);
        if c["cold"] == true {
            state.push_str(" (cold)");
        }
        t.row(vec![
            short(&c["name"]),
            state,
            s(&c["tier"]),
            s(&c["binding"]["tenant_id"]),
            s(&c["binding"]["conversation_id"]),
            ms(&c["age_ms"]),
            ms(&c["idle_ms"]),
            memory,
            cpu,
            s(&stats["pids"]),
        ]);
    }
    section(&mut out, &t, &format!("{} containers", containers.len()));

    let convs = st["conversations"].as_array().unwrap_or(&empty);
    let mut t = Table::new(&["TENANT", "CONVERSATION", "CONTAINER", "IDLE", "LAST RUN"]);
    for c in convs {
        let last = if c["running"] == true {
            "running".to_owned()
        } else {
            match &c["last_run"] {
                Value::Null => "none since start".to_owned(),
                r => format!(
                    "{} {} ago, took {}",
                    r["error_code"].as_str().unwrap_or("ok"),
                    human_duration(now.saturating_sub(r["finished_ms"].as_u64().unwrap_or(now))),
                    ms(&r["duration_ms"]),
                ),
            }
        };
        t.row(vec![
            s(&c["tenant_id"]),
            s(&c["conversation_id"]),
            short(&c["container_id"]),
            ms(&c["idle_ms"]),
            last,
        ]);
    }
    section(
        &mut out,
        &t,
        &format!("{} conversations", s(&st["conversations_total"])),
    );

    render_hosts(&mut out, &st["hosts"], s(&d["instance"]));
    render_rules(&mut out, &st["egress_rules"], now);

    let mut t = Table::new(&["WORKER", "STATUS", "RUNS", "LAST RUN", "LAST ERROR"]);
    if let Some(workers) = st["workers"].as_object() {
        for (name, w) in workers {
            let last = w["last_run_ms"]
                .as_u64()
                .filter(|t| *t > 0)
                .map(|t| format!("{} ago", human_duration(now.saturating_sub(t))))
                .unwrap_or_else(|| "-".into());
            t.row(vec![
                name.clone(),
                s(&w["status"]),
                s(&w["runs"]),
                last,
                s(&w["last_error"]),
            ]);
        }
    }
    let n = st["workers"].as_object().map_or(0, |w| w.len());
    section(&mut out, &t, &format!("{n} workers"));

    let events = st["events"].as_array().unwrap_or(&empty);
    let mut t = Table::new(&["AGO", "EVENT", "TENANT", "CONVERSATION", "DETAILS"]);
    for e in events.iter().take(EVENTS_SHOWN) {
        let f = &e["fields"];
        let details = f
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "tenant_id" | "conversation_id" | "container_id")
                    })
                    .map(|(k, v)| format!("{k}={}", s(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let name = if e["blocked"] == true {
            format!("BLOCKED {}", s(&e["event"]))
        } else {
            s(&e["event"])
        };
        t.row(vec![
            human_duration(now.saturating_sub(e["ts_ms"].as_u64().unwrap_or(now))),
            name,
            s(&f["tenant_id"]),
            s(&f["conversation_id"]),
            details,
        ]);
    }
    section(
        &mut out,
        &t,
        &format!("{} recent audit events", events.len()),
    );
    out
}

fn section(out: &mut String, t: &Table, caption: &str) {
    out.push_str(&t.render());
    out.push_str(&format!("({caption})\n\n"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_every_section() {
        let st = json!({
            "daemon": {"version": "0.1.0", "instance": "default", "started_ms": 0, "now_ms": 60_000},
            "pool": {"image": "img:1", "target": 2, "max_size": 8, "ready": 1, "warming": 1,
                     "claimed": 1, "warm_claims_total": 3, "cold_starts_total": 0,
                     "tiers": [{"tier": "gvisor", "target": 1, "ready": 0, "warming": 1, "claimed": 1}]},
            "containers": [{"name": "agentbox-0123456789abcdef", "state": "claimed", "cold": false,
                "tier": "gvisor",
                "binding": {"tenant_id": "acme", "conversation_id": "c1"},
                "age_ms": 30_000, "idle_ms": 5_000,
                "stats": {"memory_bytes": 1_048_576, "memory_limit_bytes": 1_073_741_824,
                          "cpu_percent": 1.26, "pids": 4}}],
            "conversations": [{"tenant_id": "acme", "conversation_id": "c1",
                "container_id": "agentbox-0123456789abcdef", "idle_ms": 5_000, "running": false,
                "last_run": {"finished_ms": 55_000, "duration_ms": 1_500, "error_code": null}}],
            "conversations_total": 1,
            "hosts": {"enabled": true, "truncated": false, "surveyed_ms": 59_000,
                "leases": [
                    {"tenant_id": "acme", "conversation_id": "c9", "holder": "host-b",
                     "live": true, "mine": false},
                    {"tenant_id": "acme", "conversation_id": "c1", "holder": "default",
                     "live": false, "mine": true}]},
            "egress_rules": [{"tenant_id": "acme", "rules": [
                {"name": "repo-a", "scope": "tenant", "host": "git.test", "methods": ["GET"],
                 "paths": ["/org/a.git/**"], "credential": "git", "intercepted": true,
                 "allowed": 7, "refused": 2, "refusals": {"path_not_allowed": 2},
                 "last_ms": 58_000}]}],
            "workers": {"gc": {"status": "removed 0", "runs": 2, "last_run_ms": 50_000, "last_error": null}},
            "events": [{"seq": 1, "ts_ms": 58_000, "event": "proxy_request_blocked", "blocked": true,
                "fields": {"tenant_id": "acme", "conversation_id": "c1", "host": "example.com"}}],
            "health": {
                "docker": {"name": "docker", "level": "pass", "detail": "Docker 20.10"},
                "state_store": {"name": "state-store", "level": "pass", "detail": "ok"},
                "object_store": {"name": "object-store", "level": "warn", "detail": "missing", "fix": "mkdir"},
                "isolation": {
                    "seccomp": {"state": "active", "detail": "profile default"},
                    "apparmor": {"state": "absent", "detail": "no AppArmor"},
                    "landlock": {"state": "available", "detail": "Landlock ABI 7"},
                    "userns_remap": {"state": "absent", "detail": "off"}}}
        });
        let out = render(&st, "127.0.0.1:8788");
        for want in [
            "instance default",
            "up 1m 0s",
            "ready 1/2",
            "tier gvisor  ready 0/1  warming 1  claimed 1",
            "claimed  gvisor",
            "0123456789ab",
            "1.0 MiB / 1.0 GiB",
            "1.3%",
            "ok 5s ago, took 1s",
            "BLOCKED proxy_request_blocked",
            "host=example.com",
            "landlock      available",
            "(fix: mkdir)",
            "removed 0",
            "2 conversations by host",
            "default (this host)",
            "host-b",
            "1 egress rules by tenant",
            "repo-a",
            "path_not_allowed 2",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }
}
