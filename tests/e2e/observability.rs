//! Observability end to end. On a real engine with the real CLI: one
//! execution cycle (warm claim, a `!write` run, idle reclaim) leaves its
//! lifecycle in the audit file as valid JSON lines carrying their ids, with
//! no trace of the API key anywhere; the `/metrics` scrape passes
//! `promtool check metrics`, counts the cycle, and holds every metric the
//! dashboard and the alerts use. Without a daemon: the alert rules pass
//! `promtool check rules` and their unit tests, and every dashboard query
//! is valid PromQL.

use crate::harness::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Handed to the daemon as `ANTHROPIC_API_KEY`; must never be written out.
const CANARY: &str = "sk-ant-obs-canary-5e1f0a93c7";
const REQUEST_ID: &str = "obs-e2e-request-0001";
const CONVERSATION: &str = "obs-conv";
const ALERTS: &str = "appliance/monitoring/prometheus-alerts.yml";
const DASHBOARD: &str = "appliance/monitoring/grafana-dashboard.json";
const ALERT_TESTS: &str = "tests/monitoring/prometheus-alerts.test.yml";

/// `promtool`, installed by the setup script when missing (never skipped).
fn promtool() -> Command {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let script = repo_root().join("tests/setup/ensure-promtool.sh");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(status.success(), "{} failed: {status}", script.display());
    });
    let mut cmd = Command::new("promtool");
    cmd.current_dir(repo_root());
    cmd
}

/// Runs `cmd` (with `stdin` fed in) and returns its output; panics with
/// that output when it fails.
fn run_ok(cmd: &mut Command, stdin: Option<&str>) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Metric names (`agentbox_...`) a monitoring file mentions.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut rest = text;
    while let Some(at) = rest.find("agentbox_") {
        let boundary = rest[..at].chars().next_back().is_none_or(|c| !is_ident(c));
        let len = rest[at..].find(|c| !is_ident(c)).unwrap_or(rest.len() - at);
        if boundary {
            out.insert(rest[at..at + len].to_owned());
        }
        rest = &rest[at + len..];
    }
    out
}

/// Every PromQL expression of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let dash: Value =
        serde_json::from_str(&read_file(&repo_root().join(DASHBOARD))).expect("dashboard JSON");
    dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("target expr").to_owned())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let out = run_ok(promtool().args(["check", "rules", ALERTS]), None);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(promtool().args(["test", "rules", ALERT_TESTS]), None);
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert has at least one unit test.
    let rules = read_file(&repo_root().join(ALERTS));
    let tests = read_file(&repo_root().join(ALERT_TESTS));
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool unit test"
        );
    }
}

#[test]
fn dashboard_is_grafana_json_with_valid_promql() {
    let dash: Value =
        serde_json::from_str(&read_file(&repo_root().join(DASHBOARD))).expect("dashboard JSON");
    assert_eq!(dash["uid"], "agentbox-overview");
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id {p}"
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(!p["targets"].as_array().expect("targets").is_empty());
        }
    }
    let titles = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row");
    let rows: Vec<&str> = titles.map(|p| p["title"].as_str().unwrap()).collect();
    for want in [
        "Pool",
        "Containers",
        "Executions",
        "Proxy",
        "Sync",
        "Errors",
    ] {
        assert!(rows.contains(&want), "no {want} row in {rows:?}");
    }
    // promtool parses PromQL only inside rule files: wrap each query in a
    // recording rule, Grafana's variables replaced by concrete values.
    let dir = tempfile::tempdir().expect("tempdir");
    let rules: Vec<Value> = dashboard_exprs()
        .iter()
        .enumerate()
        .map(|(n, e)| {
            let expr = e
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            json!({"record": format!("dashboard:query_{n}"), "expr": expr})
        })
        .collect();
    let file = dir.path().join("dashboard-queries.yml");
    let doc = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, doc.to_string()).expect("write rules");
    let out = run_ok(promtool().arg("check").arg("rules").arg(&file), None);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The series names of a scrape (sample lines only).
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

/// The value of one series, written exactly as the scrape writes it.
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not in the scrape:\n{scrape}"))
        .trim()
        .parse()
        .expect("a number")
}

async fn scrape(d: &Daemon) -> String {
    let resp = crate::harness::client()
        .get(format!("http://{}/metrics", d.admin_addr))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    resp.text().await.expect("scrape body")
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The fields each event must carry, non-empty, in this cycle.
fn required_fields(event: &str) -> &'static [&'static str] {
    const RUN: &[&str] = &["request_id", "tenant_id", "conversation_id", "container_id"];
    match event {
        "pool_claimed" | "agent_execution_completed" | "agent_execution_failed" => RUN,
        "agent_execution_started" => &["request_id", "tenant_id", "conversation_id"],
        // The proxy serves the container, not an API request: no request id.
        "proxy_request_allowed"
        | "proxy_request_blocked"
        | "file_sync_to_container"
        | "file_sync_from_container" => &["tenant_id", "conversation_id", "container_id"],
        "container_created" | "container_destroyed" | "container_crashed" => &["container_id"],
        other => panic!("unexpected audit event {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_execution_cycle_is_audited_and_counted_without_leaking_the_key() {
    let _engine = serial::shared().await;
    let gc = "[gc]\nidle_ttl_secs = 2\ninterval_secs = 1\n";
    let (mock, d) = start_with_mock_opts(CANARY, 1, gc).await;
    d.wait_status(120, "a warm container", |s| s["pool"]["ready"] == 1);

    let resp = crate::harness::client()
        .post(d.url(&format!("/v1/conversations/{CONVERSATION}/messages")))
        .bearer_auth(TOKEN)
        .header("x-request-id", REQUEST_ID)
        .json(&json!({"prompt": "Write it.\n!write notes.txt observed"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], REQUEST_ID);
    let events = parse_sse(&resp.text().await.expect("body"));
    assert!(
        events
            .iter()
            .any(|e| e.event == "result" && e.data["is_error"] == false),
        "run did not succeed: {events:#?}"
    );
    let container = d
        .container_of(TENANT, CONVERSATION)
        .expect("a bound container");
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.header("x-api-key") == Some(CANARY)),
        "the canary never reached the model, so its absence proves nothing"
    );

    // The idle TTL reclaims the container.
    let audit_path = d.dir.path().join("audit.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = audit_lines(&audit_path);
        let reclaimed = lines.iter().any(|l| {
            l["event"] == "container_destroyed"
                && l["container_id"] == container.as_str()
                && l["reason"] == "idle"
        });
        if reclaimed {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "no idle container_destroyed for {container}: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Every line: valid JSON (parsed above), required ids present and non-empty.
    for l in &lines {
        let event = l["event"].as_str().expect("event");
        for field in ["timestamp", "event"].iter().chain(required_fields(event)) {
            let v = l[field].as_str().unwrap_or_default();
            assert!(!v.is_empty(), "{event} lacks {field}: {l}");
        }
        assert!(l["timestamp"].as_str().unwrap().ends_with('Z'), "{l}");
    }
    // The lifecycle of this container, in order (its egress decisions and
    // workspace syncs interleave with the run and are checked above).
    let cycle: Vec<&str> = lines
        .iter()
        .filter(|l| l["container_id"] == container.as_str())
        .filter(|l| {
            let e = l["event"].as_str().unwrap_or("");
            !e.starts_with("proxy_") && !e.starts_with("file_sync_")
        })
        .map(|l| l["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        cycle,
        [
            "container_created",
            "pool_claimed",
            "agent_execution_completed",
            "container_destroyed"
        ],
        "{lines:#?}"
    );
    let names: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    let pos = |n: &str| names.iter().position(|e| *e == n).unwrap_or(usize::MAX);
    assert!(
        pos("agent_execution_started") < pos("pool_claimed"),
        "{names:?}"
    );
    for l in lines.iter().filter(|l| {
        [
            "pool_claimed",
            "agent_execution_started",
            "agent_execution_completed",
        ]
        .contains(&l["event"].as_str().unwrap())
    }) {
        assert_eq!(l["request_id"], REQUEST_ID, "{l}");
        assert_eq!(l["tenant_id"], TENANT, "{l}");
        assert_eq!(l["conversation_id"], CONVERSATION, "{l}");
    }
    let claimed = lines.iter().find(|l| l["event"] == "pool_claimed").unwrap();
    assert_eq!(claimed["warm"], true);
    let done = lines
        .iter()
        .find(|l| l["event"] == "agent_execution_completed")
        .unwrap();
    assert!(done["duration_ms"].as_u64().is_some(), "{done}");
    assert!(done["first_event_ms"].as_u64().is_some(), "{done}");
    let destroyed = lines
        .iter()
        .find(|l| l["event"] == "container_destroyed" && l["container_id"] == container.as_str())
        .unwrap();
    assert_eq!(destroyed["conversation_id"], CONVERSATION, "{destroyed}");

    // Log lines below the run carry the execution span's ids.
    let logs = d.logs();
    let finished = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "Run finished.")
        .expect("a `Run finished.` log line");
    let span = &finished["span"];
    assert_eq!(span["request_id"], REQUEST_ID, "{finished}");
    assert_eq!(span["tenant_id"], TENANT, "{finished}");
    assert_eq!(span["conversation_id"], CONVERSATION, "{finished}");
    assert_eq!(span["container_id"], container.as_str(), "{finished}");

    // The key is nowhere: not in the audit file, not in the logs.
    let audit_text = read_file(&audit_path);
    assert!(
        !audit_text.contains(CANARY),
        "the key reached the audit file"
    );
    assert!(
        logs.iter().all(|l| !l.contains(CANARY)),
        "the key reached a log line"
    );

    // The scrape: lint-clean, counting this cycle, covering the monitoring.
    let text = scrape(&d).await;
    run_ok(promtool().args(["check", "metrics"]), Some(&text));
    assert_eq!(
        value(
            &text,
            "agentbox_pool_claims_total{kind=\"warm\",tier=\"runc\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "agentbox_pool_claims_total{kind=\"cold\",tier=\"runc\"}"
        ),
        0.0
    );
    assert_eq!(value(&text, "agentbox_executions_started_total"), 1.0);
    assert_eq!(value(&text, "agentbox_executions_completed_total"), 1.0);
    assert_eq!(value(&text, "agentbox_executions_in_flight"), 0.0);
    assert_eq!(
        value(
            &text,
            "agentbox_containers_reclaimed_total{reason=\"idle\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "agentbox_execution_duration_seconds_count{outcome=\"completed\"}"
        ),
        1.0
    );
    assert!(value(&text, "agentbox_containers_created_total{tier=\"runc\"}") >= 1.0);
    assert_eq!(
        value(&text, "agentbox_pool_target_containers{tier=\"runc\"}"),
        1.0
    );
    assert!(
        !text.contains(CONVERSATION),
        "a conversation id became a label"
    );

    let present = sample_names(&text);
    let mut wanted = referenced_metrics(&read_file(&repo_root().join(ALERTS)));
    wanted.extend(referenced_metrics(&dashboard_exprs().join("\n")));
    let missing: Vec<_> = wanted.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "dashboard or alerts use metrics the daemon does not export: {missing:?}"
    );
    // The catalogue documents every family the daemon exports.
    let doc = read_file(&repo_root().join("docs/metrics.md"));
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split_whitespace().next().unwrap();
        assert!(
            doc.contains(&format!("`{name}`")),
            "{name} is not in docs/metrics.md"
        );
    }
}
