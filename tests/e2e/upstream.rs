//! The model upstream as it really is: HTTPS (the harness's mock, trusted
//! through `model.extra_ca_file`), pooled connections, and each failure
//! the real API has, through the real daemon and the real CLI in the real
//! image. Each case checks what the CLI retried, what reached the client
//! (the SSE `error` code), and what an operator sees (the audit event and
//! the metric). `docs/operations.md`, "What happens when", lists the same
//! cases.

use crate::harness::*;
use serde_json::{json, Value};

const KEY: &str = "sk-ant-upstream-e2e-0123456789";

/// `POST /v1/messages` calls of the prompt's script (side calls aside).
fn scripted_calls(mock: &mock_model::MockModel, marker: &str) -> usize {
    mock.requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/messages") && !r.path.contains("count_tokens"))
        .filter(|r| r.body.to_string().contains(marker))
        .count()
}

/// The daemon's log lines about model calls, for a failure's message.
fn gateway_log(d: &Daemon) -> String {
    d.logs()
        .into_iter()
        .filter(|l| l.contains("upstream") || l.contains("gateway"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The daemon's `/metrics` text.
async fn metrics(d: &Daemon) -> String {
    client()
        .get(format!("http://{}/metrics", d.admin_addr))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}

fn failed_count(scrape: &str, code: &str) -> f64 {
    let series = format!("agentbox_executions_failed_total{{code=\"{code}\"");
    scrape
        .lines()
        .filter(|l| l.starts_with(&series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_upstream_failure_has_one_outcome_with_the_real_cli() {
    let _engine = serial::shared().await;
    // Two retries: enough to see the CLI retry, with its backoff short.
    let env = vec![("AGENTBOX_MODEL_MAX_RETRIES".to_owned(), "2".to_owned())];
    let (mock, d) = start_with_mock_env(KEY, 2, "", env).await;
    assert!(mock.url().starts_with("https://"), "the mock talks TLS");

    // A 429 the CLI retries past: the client sees an ordinary result.
    let prompt = "!fault 429 times=1\n!text recovered-429";
    let (status, body) = post_message(&d, Some(TOKEN), "up", json!({ "prompt": prompt })).await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    let last = events.last().expect("events");
    assert_eq!(last.event, "result", "{events:#?}");
    assert_eq!(last.data["is_error"], false, "{events:#?}");
    assert_eq!(
        scripted_calls(&mock, "recovered-429"),
        2,
        "one 429, one retry"
    );

    // Failures that outlast the retries: each ends its run with one code.
    // A conversation each: a CLI that resumes after a failed turn sends
    // the failed prompt again (and on "prompt is too long" compacts the
    // whole transcript), so one case's fault would leak into the next.
    // (fault, code, fewest and most model calls the CLI makes for it)
    let cases = [
        ("429", "rate_limited", 3, 3),
        ("529", "overloaded", 3, 3),
        ("500", "upstream_unavailable", 3, 3),
        // A broken stream is retried, and may be retried once more
        // without streaming.
        ("reset", "upstream_unavailable", 3, 6),
        ("midstream", "overloaded", 1, 3),
        ("401", "upstream_auth_failed", 3, 3),
        ("too_long", "prompt_too_long", 1, 1),
    ];
    for (i, (fault, code, fewest, most)) in cases.iter().enumerate() {
        let marker = format!("case-{i}-{fault}");
        let prompt = format!("!fault {fault}\n!text {marker}");
        let conversation = format!("up-{i}");
        let (status, body) =
            post_message(&d, Some(TOKEN), &conversation, json!({ "prompt": prompt })).await;
        assert_eq!(status, 200, "{fault}: {body}");
        let events = parse_sse(&body);
        let last = events.last().expect("events");
        assert_eq!(last.event, "error", "{fault}: {events:#?}");
        assert_eq!(
            last.data["code"],
            *code,
            "{fault}: {events:#?}\n{}",
            gateway_log(&d)
        );
        assert!(
            !events.iter().any(|e| e.event == "result"),
            "{fault}: the CLI's result is replaced by the error: {events:#?}"
        );
        assert!(!body.contains(KEY), "{fault}: key material in the stream");
        // The CLI retries what it retries (max_retries = 2), not the rest.
        let calls = scripted_calls(&mock, &marker);
        assert!(
            (*fewest..=*most).contains(&calls),
            "{fault}: the CLI made {calls} model calls, expected {fewest}..={most}"
        );
    }

    // The conversation that met a 429 goes on.
    let (_, body) = post_message(&d, Some(TOKEN), "up", json!({ "prompt": "!text after" })).await;
    assert_eq!(
        parse_sse(&body).last().map(|e| e.event.clone()).as_deref(),
        Some("result"),
        "{body}"
    );

    // The operator's view: one audited failure and one count per case.
    let failed: Vec<Value> = d
        .audit_events()
        .into_iter()
        .filter(|e| e["event"] == "agent_execution_failed")
        .collect();
    let scrape = metrics(&d).await;
    for code in [
        "rate_limited",
        "overloaded",
        "upstream_unavailable",
        "upstream_auth_failed",
        "prompt_too_long",
    ] {
        let want = cases.iter().filter(|(_, c, _, _)| *c == code).count();
        let audited = failed.iter().filter(|e| e["code"] == code).count();
        assert_eq!(audited, want, "{code}: audit {failed:#?}");
        assert_eq!(failed_count(&scrape, code), want as f64, "{code} metric");
    }
    let audit_text = std::fs::read_to_string(d.dir.path().join("audit.log")).unwrap();
    assert!(!audit_text.contains(KEY), "key material in the audit log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_reuses_its_upstream_tls_connection() {
    let _engine = serial::shared().await;
    let (mock, d) = start_with_mock(KEY).await;
    let prompt = "!bash echo one\n!bash echo two\n!bash echo three\n!text pooled";
    let (_, body) = post_message(&d, Some(TOKEN), "pool", json!({ "prompt": prompt })).await;
    assert_eq!(
        parse_sse(&body).last().map(|e| e.event.clone()).as_deref(),
        Some("result"),
        "{body}"
    );
    let calls = scripted_calls(&mock, "pooled");
    assert_eq!(calls, 4, "three tool turns and the answer");
    // Side calls may overlap the scripted ones and open a connection of
    // their own, but sequential turns reuse the pooled one.
    let total = mock
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/messages"))
        .count() as u64;
    let handshakes = mock.tls_handshakes();
    assert!(handshakes >= 1, "the daemon spoke TLS to the mock");
    assert!(
        handshakes < total,
        "{handshakes} TLS handshakes for {total} model calls: the upstream is not pooled"
    );
}

/// An upstream that takes the request and sends nothing back (the mock's
/// `stall`, two minutes: longer than anything else in this test waits).
/// The gateway's own bound, `model.first_byte_timeout_secs` (set to 2 s
/// here; 600 s by default), answers the CLI 504 for each call; the CLI
/// retries, then gives up, and the client gets `upstream_unavailable`
/// rather than a stream that hangs until a run limit. The conversation
/// keeps its container and files.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_first_byte_ends_the_run_at_the_gateways_bound() {
    let _engine = serial::shared().await;
    let env = vec![
        ("AGENTBOX_MODEL_MAX_RETRIES".to_owned(), "1".to_owned()),
        (
            "AGENTBOX_MODEL_FIRST_BYTE_TIMEOUT_SECS".to_owned(),
            "2".to_owned(),
        ),
    ];
    let (mock, d) = start_with_mock_env(KEY, 1, "", env).await;
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "stalled",
        json!({"prompt": "!write before.txt kept"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let container = d.container_of(TENANT, "stalled").unwrap();

    // Only the first two calls stall: the CLI's first try and its retry.
    let prompt = "!fault stall ms=120000 times=2\n!text stalled-marker";
    let (status, body) =
        post_message(&d, Some(TOKEN), "stalled", json!({ "prompt": prompt })).await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    let last = events.last().expect("events");
    assert_eq!(last.event, "error", "{events:#?}\n{}", gateway_log(&d));
    assert_eq!(last.data["code"], "upstream_unavailable", "{events:#?}");
    assert!(!events.iter().any(|e| e.event == "result"), "{events:#?}");
    // Each stalled call was cut by the gateway's bound, and audited so.
    let calls = scripted_calls(&mock, "stalled-marker");
    assert_eq!(calls, 2, "the CLI's try and its one retry");
    let timeouts = d
        .audit_events()
        .into_iter()
        .filter(|e| e["event"] == "proxy_request_blocked" && e["reason"] == "upstream_timeout")
        .count();
    assert_eq!(timeouts, calls, "one upstream_timeout per stalled call");
    let failed = d
        .audit_events()
        .into_iter()
        .filter(|e| e["event"] == "agent_execution_failed")
        .map(|e| e["code"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(failed, ["upstream_unavailable"]);

    // Nothing else was harmed: the conversation keeps its container and
    // files, and the gateway serves the next run. (Another conversation:
    // a CLI resuming after a failed turn sends the failed prompt again,
    // which the mock would stall again.)
    assert_eq!(d.container_of(TENANT, "stalled"), Some(container));
    let kept = std::fs::read_to_string(d.workspace(TENANT, "stalled").join("before.txt"));
    assert!(
        kept.is_ok_and(|k| k.contains("kept")),
        "the workspace lost before.txt"
    );
    let (status, body) =
        post_message(&d, Some(TOKEN), "after", json!({"prompt": "!text fine"})).await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("result"),
        "{events:#?}"
    );
}
