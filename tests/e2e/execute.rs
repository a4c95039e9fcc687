//! The execute service's API contract on a real engine: reconnects with
//! `Last-Event-ID`, runs that outlive their client, conversation state and
//! deletion, tenants, one run at a time, multi-turn sessions.

use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "sk-execute-test";

fn ids(events: &[SseEvent]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| {
            let (r, s) = e.id.as_deref()?.split_once('-')?;
            Some((r.parse().ok()?, s.parse().ok()?))
        })
        .collect()
}

async fn get(d: &Daemon, token: &str, path: &str, last_event_id: Option<&str>) -> (u16, String) {
    let mut req = crate::harness::client().get(d.url(path)).bearer_auth(token);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = tokio::time::timeout(Duration::from_secs(120), req.send())
        .await
        .expect("in time")
        .expect("send");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_client_reconnects_without_duplicates_or_gaps() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock(KEY).await;
    let prompt = "!write a.txt 1\n!sleep 2000\n!write b.txt 2";
    let mut resp = crate::harness::client()
        .post(d.url("/v1/conversations/rc/messages"))
        .bearer_auth(TOKEN)
        .json(&json!({"prompt": prompt}))
        .send()
        .await
        .unwrap();
    // Read until the first tool result, then drop the connection mid-run.
    let mut first = String::new();
    while !first.contains("event: tool_result") {
        let chunk = resp.chunk().await.unwrap().expect("stream ended early");
        first.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Keep only complete events: the last block may be cut.
    let complete = &first[..first.rfind("\n\n").unwrap() + 2];
    drop(resp);
    let before = parse_sse(complete);
    let last = before.last().unwrap().id.clone().unwrap();

    let (status, rest) = get(&d, TOKEN, "/v1/conversations/rc/events", Some(&last)).await;
    assert_eq!(status, 200);
    let after = parse_sse(&rest);
    let mut all = ids(&before);
    all.extend(ids(&after));
    let seqs: Vec<u64> = all.iter().map(|(_, s)| *s).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "duplicates or gaps: {all:?}");
    assert!(all.iter().all(|(r, _)| *r == 1));
    assert_eq!(after.last().unwrap().event, "result", "{after:#?}");
    // The run went on without its client: both files exist.
    let ws = d.workspace(TENANT, "rc");
    assert_eq!(read_file(&ws.join("b.txt")), "2");

    // After the run, a reconnect replays from the state file.
    let (_, replay) = get(&d, TOKEN, "/v1/conversations/rc/events", Some("1-0")).await;
    assert_eq!(ids(&parse_sse(&replay)), all);
    let (status, _) = get(&d, TOKEN, "/v1/conversations/rc/events", Some("garbage")).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_run_at_a_time_and_tenants_are_isolated() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock(KEY).await;
    let slow = spawn_run(&d, TOKEN, "busy", "!sleep 2500\n!text done");
    // Wait until the run holds the conversation.
    let mut running = false;
    for _ in 0..100 {
        let (s, body) = get(&d, TOKEN, "/v1/conversations/busy", None).await;
        if s == 200 && serde_json::from_str::<Value>(&body).unwrap()["state"] == "running" {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(running, "the run never showed as running");
    let (status, body) = post_message(&d, Some(TOKEN), "busy", json!({"prompt": "again"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("\"conflict\""));
    let del = crate::harness::client()
        .delete(d.url("/v1/conversations/busy"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 409);
    // Another tenant sees nothing of it.
    for path in ["/v1/conversations/busy", "/v1/conversations/busy/events"] {
        let (status, _) = get(&d, OTHER_TOKEN, path, None).await;
        assert_eq!(status, 404, "{path}");
    }
    let del = crate::harness::client()
        .delete(d.url("/v1/conversations/busy"))
        .bearer_auth(OTHER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 404);
    let events = parse_sse(&slow.await.unwrap());
    assert_eq!(events.last().unwrap().event, "result");
}

#[tokio::test(flavor = "multi_thread")]
async fn conversation_state_and_delete() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock(KEY).await;
    let (_, body) = post_message(&d, Some(TOKEN), "doc", json!({"prompt": "!write a.txt x"})).await;
    assert!(body.contains("event: result"));
    let (status, body) = get(&d, TOKEN, "/v1/conversations/doc", None).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "idle");
    assert_eq!(v["runs"][0]["outcome"], "completed", "{v:#}");
    let container = v["container"]["id"].as_str().unwrap().to_owned();
    assert!(d.engine_names().contains(&container));

    let del = crate::harness::client()
        .delete(d.url("/v1/conversations/doc"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let (status, _) = get(&d, TOKEN, "/v1/conversations/doc", None).await;
    assert_eq!(status, 404);
    assert!(
        !d.engine_names().contains(&container),
        "container left behind"
    );
    let (status, _) = get(&d, TOKEN, "/v1/conversations/never-was", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_second_message_resumes_the_claude_session() {
    let _engine = serial::shared().await;
    let (mock, d) = start_with_mock(KEY).await;
    let (_, first) = post_message(
        &d,
        Some(TOKEN),
        "turns",
        json!({"prompt": "remember the word pelican\n!text ok"}),
    )
    .await;
    let session = parse_sse(&first)
        .into_iter()
        .find(|e| e.event == "result")
        .unwrap()
        .data["session_id"]
        .clone();
    let (_, second) = post_message(
        &d,
        Some(TOKEN),
        "turns",
        json!({"prompt": "what was the word?\n!text pelican"}),
    )
    .await;
    let result = parse_sse(&second)
        .into_iter()
        .find(|e| e.event == "result")
        .unwrap();
    assert_eq!(
        result.data["session_id"], session,
        "a new session was started"
    );
    let last = mock
        .requests()
        .into_iter()
        .rev()
        .find(|r| {
            r.path.starts_with("/v1/messages")
                && r.body["messages"].to_string().contains("what was the word")
        })
        .expect("the second turn reached the model");
    assert!(
        last.body["messages"]
            .to_string()
            .contains("remember the word pelican"),
        "the model did not see the earlier turn"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_speaks_https_with_the_configured_certificate() {
    let _engine = serial::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let openssl = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        openssl.status.success(),
        "{}",
        String::from_utf8_lossy(&openssl.stderr)
    );
    let env = vec![
        (
            "AGENTBOX_SERVER_TLS_CERT".to_owned(),
            cert.display().to_string(),
        ),
        (
            "AGENTBOX_SERVER_TLS_KEY".to_owned(),
            key.display().to_string(),
        ),
    ];
    let (_mock, d) = start_with_mock_env(KEY, 1, "", env).await;
    let url = format!("https://{}/v1/conversations/tls/messages", d.addr);
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--fail-with-body", "-N", "--cacert"])
        .arg(&cert)
        .args([
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            "-H",
            "content-type: application/json",
        ])
        .args(["-d", r#"{"prompt":"!write t.txt over tls"}"#, &url])
        .output()
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("event: result"), "{body}");
    // Plain HTTP on the TLS port does not get through.
    let plain = tokio::process::Command::new("curl")
        .args(["-sS", "-m", "5", &format!("http://{}/healthz", d.addr)])
        .output()
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("ok"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_container_is_replaced_before_the_next_run() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock(KEY).await;
    let (_, body) =
        post_message(&d, Some(TOKEN), "lost", json!({"prompt": "!write a.txt 1"})).await;
    assert!(body.contains("event: result"));
    let old = d.container_of(TENANT, "lost").unwrap();
    docker_ok(&["rm", "-f", &old]);
    let (status, body) =
        post_message(&d, Some(TOKEN), "lost", json!({"prompt": "!write b.txt 2"})).await;
    assert_eq!(status, 200);
    let events = parse_sse(&body);
    let names: Vec<&str> = names(&events);
    let recovered = names
        .iter()
        .position(|n| *n == "container_recovered")
        .expect("no container_recovered");
    let result = names
        .iter()
        .position(|n| *n == "result")
        .expect("no result");
    assert!(recovered < result, "{names:?}");
    assert_eq!(
        events[recovered].data,
        json!({"message": "Container recovered", "recovered": true})
    );
    let new = d.container_of(TENANT, "lost").unwrap();
    assert_ne!(new, old);
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_kill_mid_run_yields_error_then_recovery_and_a_working_next_turn() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock(KEY).await;
    let run = spawn_run(
        &d,
        TOKEN,
        "killed",
        "!write early.txt 1\n!sleep 4000\n!write late.txt 2",
    );
    let d_ref = &d;
    let victim = tokio::task::block_in_place(|| {
        d_ref.wait_status(60, "the run's container", |s| {
            s["containers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["binding"]["conversation_id"] == "killed")
        });
        d_ref.container_of(TENANT, "killed").unwrap()
    });
    // Let the first tool run, then kill the container under the run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    docker_ok(&["kill", &victim]);
    let body = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run hung after its container died")
        .unwrap();
    let events = parse_sse(&body);
    let names = names(&events);
    let error = names
        .iter()
        .position(|n| *n == "error")
        .expect("no error event");
    assert_eq!(events[error].data["code"], "container_lost");
    let recovered = names
        .iter()
        .position(|n| *n == "container_recovered")
        .expect("no container_recovered");
    assert!(error < recovered, "{names:?}");
    let fresh = d
        .container_of(TENANT, "killed")
        .expect("a new container is bound");
    assert_ne!(fresh, victim);
    assert_eq!(inspect(&fresh)["State"]["Running"], true);
    // The next message runs normally.
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "killed",
        json!({"prompt": "!write next.txt 3"}),
    )
    .await;
    assert_eq!(status, 200);
    let events = parse_sse(&body);
    let result = events
        .iter()
        .find(|e| e.event == "result")
        .expect("no result");
    assert_eq!(result.data["is_error"], false, "{events:#?}");
    assert!(!events.iter().any(|e| e.event == "container_recovered"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_over_its_run_limit_gets_429() {
    let _engine = serial::shared().await;
    // The harness gives OTHER_TENANT `max_concurrent_runs = 1`.
    let (_mock, d) = start_with_mock(KEY).await;
    let slow = spawn_run(&d, OTHER_TOKEN, "first", "!sleep 2500\n!text done");
    // The second request goes out once the first run is under way, so it
    // must be refused: retrying blindly let a second run that got in first
    // take its own seconds while the first one ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(&d, OTHER_TOKEN, "/v1/conversations/first", None).await;
        if status == 200 && serde_json::from_str::<Value>(&body).unwrap()["state"] == "running" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never showed as running: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) =
        post_message(&d, Some(OTHER_TOKEN), "second", json!({"prompt": "hi"})).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_runs"), "{body}");
    // Another tenant is not affected.
    let (status, _) = post_message(&d, Some(TOKEN), "mine", json!({"prompt": "!text ok"})).await;
    assert_eq!(status, 200);
    assert!(slow.await.unwrap().contains("event: result"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_files_are_listed_downloaded_confined_and_purged() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock(KEY).await;
    let (_, body) = post_message(
        &d,
        Some(TOKEN),
        "files",
        json!({"prompt": "!write sub/a.txt hello files"}),
    )
    .await;
    assert!(body.contains("event: result"), "{body}");
    // `result` came after the final sync, so the store has the file.
    let (status, list) = get(&d, TOKEN, "/v1/conversations/files/files", None).await;
    assert_eq!(status, 200, "{list}");
    let v: Value = serde_json::from_str(&list).unwrap();
    assert!(
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "sub/a.txt" && f["kind"] == "file"),
        "{v:#}"
    );
    let (status, content) = get(&d, TOKEN, "/v1/conversations/files/files/sub/a.txt", None).await;
    assert_eq!((status, content.as_str()), (200, "hello files"));
    for bad in [
        "../../etc/passwd",
        "sub/../../x",
        "%2e%2e/%2e%2e/etc/passwd",
    ] {
        let (status, _) = get(
            &d,
            TOKEN,
            &format!("/v1/conversations/files/files/{bad}"),
            None,
        )
        .await;
        assert!(status == 400 || status == 404, "{bad} -> {status}");
    }
    let (status, _) = get(&d, TOKEN, "/v1/conversations/files/files/missing.txt", None).await;
    assert_eq!(status, 404);
    // Another tenant sees nothing.
    let (status, _) = get(
        &d,
        OTHER_TOKEN,
        "/v1/conversations/files/files/sub/a.txt",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let objects = d.dir.path().join("objects").join(TENANT).join("files");
    assert!(
        walk_count(&objects) > 0,
        "nothing stored under {}",
        objects.display()
    );
    let del = crate::harness::client()
        .delete(d.url("/v1/conversations/files?purge=true"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let left = walk_count(&objects);
    assert_eq!(
        left,
        0,
        "stored objects left after purge under {}",
        objects.display()
    );
}

fn walk_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk_count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_past_its_budget_ends_with_budget_exceeded() {
    let _engine = serial::shared().await;
    let (mock, d) = start_with_mock(KEY).await;
    // Every answer bills the CLI's whole request (system prompt and tools,
    // thousands of tokens): the first one is far past $0.0001. The CLI
    // gets the budget too and may stop by itself; either way the run ends
    // with the gateway's count, not the CLI's `result`.
    let prompt = "!write a.txt 1\n!write b.txt 2\n!text done";
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "budget",
        json!({"prompt": prompt, "options": {"max_budget_usd": 0.0001}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    let last = events.last().expect("events");
    assert_eq!(last.event, "error", "{events:#?}");
    assert_eq!(last.data["code"], "budget_exceeded", "{events:#?}");
    assert!(
        last.data.to_string().contains("max_budget_usd"),
        "{events:#?}"
    );
    assert!(!events.iter().any(|e| e.event == "result"), "{events:#?}");
    assert_eq!(billed_calls(&mock), 1);
}

/// `POST /v1/messages` calls (token counting aside) the mock received.
fn billed_calls(mock: &mock_model::MockModel) -> usize {
    mock.requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST"
                && r.path.starts_with("/v1/messages")
                && !r.path.contains("count_tokens")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_past_its_daily_limit_is_refused_by_the_gateway() {
    let _engine = serial::shared().await;
    // The CLI knows nothing of the tenant's limit: only the gateway stops it.
    const METERED: &str = "test-token-metered";
    let extra = format!(
        "[[tenants]]\nid = \"metered\"\ntoken_sha256 = \"{}\"\ndaily_token_limit = 1000\n",
        agentbox::token_sha256(METERED)
    );
    let (mock, d) = start_with_mock_opts(KEY, 1, &extra).await;
    let (status, body) = post_message(
        &d,
        Some(METERED),
        "first",
        json!({"prompt": "!write a.txt 1\n!write b.txt 2\n!text done"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    let last = events.last().expect("events");
    assert_eq!(last.data["code"], "budget_exceeded", "{events:#?}");
    assert!(
        last.data.to_string().contains("daily token limit"),
        "{events:#?}"
    );
    // The first answer passed (the day had room), the second call was
    // refused by the gateway and never reached the model.
    assert_eq!(billed_calls(&mock), 1);
    let refused = d
        .logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("proxy_request_blocked") && l.contains("budget_exceeded"));
    assert!(refused, "no budget_exceeded refusal in the audit log");
    // The day is spent: the next run ends at once, without the agent.
    let (_, body) = post_message(&d, Some(METERED), "second", json!({"prompt": "!text hi"})).await;
    let events = parse_sse(&body);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].data["code"], "budget_exceeded", "{events:#?}");
    assert_eq!(billed_calls(&mock), 1);
    // Other tenants are not held back.
    let (_, body) = post_message(&d, Some(TOKEN), "other", json!({"prompt": "!text ok"})).await;
    assert!(body.contains("event: result"), "{body}");
    // A limit raised by SIGHUP applies to the next run; the day's tally stays.
    d.reload(|c| c.replace("daily_token_limit = 1000", "daily_token_limit = 100000000"));
    let mut resumed = false;
    for _ in 0..100 {
        let (_, body) =
            post_message(&d, Some(METERED), "third", json!({"prompt": "!text again"})).await;
        if body.contains("event: result") {
            resumed = true;
            break;
        }
        assert!(body.contains("budget_exceeded"), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "the raised limit was not reloaded");
}
