//! Long runs: a tool that runs for a while keeps its client's stream alive
//! with heartbeat comments (`server.sse_heartbeat_secs`), a client that
//! reconnects (`GET .../events`) gets the run replayed and followed to its
//! end, and a run past `agent.max_run_secs` ends with `run_timeout` and a
//! new container for its conversation. Short configured values stand in
//! for minutes.

use crate::harness::*;
use serde_json::json;
use std::time::Duration;

const KEY: &str = "sk-ant-longrun-e2e";

fn ids(events: &[SseEvent]) -> Vec<String> {
    events.iter().filter_map(|e| e.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn long_runs_keep_their_stream_survive_a_reconnect_and_are_bounded() {
    let _engine = serial::shared().await;
    let env = vec![
        (
            "AGENTBOX_SERVER_SSE_HEARTBEAT_SECS".to_owned(),
            "1".to_owned(),
        ),
        ("AGENTBOX_AGENT_MAX_RUN_SECS".to_owned(), "20".to_owned()),
    ];
    let (_mock, d) = start_with_mock_env(KEY, 1, "", env).await;

    // A tool that runs for seconds, with a client that reconnects meanwhile.
    let run = spawn_run(
        &d,
        TOKEN,
        "long",
        "!bash sleep 5 && echo slept > slept.txt\n!text long done",
    );
    let d = std::sync::Arc::new(d);
    let waiter = d.clone();
    tokio::task::spawn_blocking(move || {
        waiter.wait_status(60, "the run's container", |_| {
            waiter.container_of(TENANT, "long").is_some()
        })
    })
    .await
    .unwrap();
    let reconnect = client()
        .get(d.url("/v1/conversations/long/events"))
        .bearer_auth(TOKEN)
        .send();
    let replayed = tokio::time::timeout(Duration::from_secs(120), async {
        reconnect.await.expect("events").text().await.expect("body")
    })
    .await
    .expect("the reconnected stream ended with the run");
    let original = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ended")
        .expect("run task");
    let events = parse_sse(&original);
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("result"),
        "{original}"
    );
    // Heartbeats: comment lines while the tool ran (5 s, one a second).
    let beats = original.lines().filter(|l| *l == ":").count();
    assert!(beats >= 2, "{beats} heartbeats in {original}");
    // The reconnected client saw the same run, replayed then followed.
    assert_eq!(ids(&parse_sse(&replayed)), ids(&events), "{replayed}");

    // A run past agent.max_run_secs: run_timeout, and a new container.
    let before = d.container_of(TENANT, "long").expect("container");
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "long",
        json!({ "prompt": "!bash tail -f /dev/null\n!text never" }),
    )
    .await;
    assert_eq!(status, 200);
    let events = parse_sse(&body);
    let last = events.last().expect("events");
    assert_eq!(last.event, "error", "{body}");
    assert_eq!(last.data["code"], "run_timeout", "{body}");
    assert!(
        !d.engine_names().contains(&before),
        "the timed-out run's container is gone"
    );
    let destroyed = d
        .audit_events()
        .into_iter()
        .any(|e| e["event"] == "container_destroyed" && e["reason"] == "run_timeout");
    assert!(destroyed, "container_destroyed with reason run_timeout");

    // The conversation goes on in a new container with its files.
    let (_, body) = post_message(
        &d,
        Some(TOKEN),
        "long",
        json!({ "prompt": "!bash cat slept.txt\n!text again" }),
    )
    .await;
    let events = parse_sse(&body);
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("result"),
        "{body}"
    );
    assert!(body.contains("slept"), "the workspace came back: {body}");
    let after = d.container_of(TENANT, "long").expect("container");
    assert_ne!(before, after);
}
