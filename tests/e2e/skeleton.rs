//! The walking skeleton end to end: real dockerd, the real workspace image,
//! the real Claude Code CLI; only the model API is the mock.

use crate::harness::*;
use serde_json::json;

const REAL_KEY: &str = "sk-ant-e2e-canary-7f3d9c1b";

#[tokio::test(flavor = "multi_thread")]
async fn write_tool_runs_in_a_hardened_container_and_the_key_stays_outside() {
    let _engine = serial::shared().await;
    let (mock, daemon) = start_with_mock(REAL_KEY).await;
    let prompt = "Please write the file.\n!write hello.txt Hello from agentbox";
    let (status, body) =
        post_message(&daemon, Some(TOKEN), "conv-1", json!({"prompt": prompt})).await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    let order: Vec<&str> = names(&events)
        .into_iter()
        .filter(|n| ["tool_use", "tool_result", "result", "error"].contains(n))
        .collect();
    assert_eq!(
        order,
        ["tool_use", "tool_result", "result"],
        "events: {events:#?}"
    );
    let tool_use = events.iter().find(|e| e.event == "tool_use").unwrap();
    assert_eq!(tool_use.data["name"], "Write");
    let result = events.iter().find(|e| e.event == "result").unwrap();
    assert_eq!(result.data["is_error"], false, "{result:?}");
    assert!(
        events.iter().any(|e| e.event == "text_delta"),
        "no text_delta: {events:#?}"
    );
    assert!(
        events.iter().all(|e| e.id.is_some()),
        "every event has an id"
    );

    // The file is in the conversation's workspace on the host.
    let file = daemon.workspace(TENANT, "conv-1").join("hello.txt");
    assert_eq!(read_file(&file), "Hello from agentbox");

    // The model saw the daemon's real key; the CLI only had the placeholder.
    let model_calls: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/messages"))
        .collect();
    assert!(!model_calls.is_empty(), "the mock saw no model request");
    for r in &model_calls {
        assert_eq!(
            r.header("x-api-key"),
            Some(REAL_KEY),
            "gateway must inject the real key"
        );
    }

    // The conversation's container is hardened and holds no trace of the key.
    let containers = [daemon
        .container_of(TENANT, "conv-1")
        .expect("bound container")];
    let c = inspect(&containers[0]);
    let hc = &c["HostConfig"];
    assert_eq!(hc["NetworkMode"], "none");
    assert_eq!(hc["ReadonlyRootfs"], true);
    assert_eq!(hc["CapDrop"], json!(["ALL"]));
    assert!(
        hc["SecurityOpt"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o.as_str().unwrap().starts_with("no-new-privileges")),
        "{hc}"
    );
    let user = c["Config"]["User"].as_str().unwrap();
    assert!(
        !user.is_empty() && !user.starts_with("0") && !user.starts_with("root"),
        "user {user}"
    );
    assert_eq!(c["Config"]["Labels"]["agentbox.managed"], "true");
    let env = c["Config"]["Env"].to_string();
    assert!(
        !env.contains(REAL_KEY),
        "container env holds the real key: {env}"
    );
    assert!(
        env.contains("ANTHROPIC_API_KEY=agentbox-placeholder-key"),
        "{env}"
    );

    // No process inside (PID 1, the agent, anything) has the key in its environment.
    let environ = docker_ok(&[
        "exec",
        &containers[0],
        "sh",
        "-c",
        "cat /proc/1/environ /proc/*/environ 2>/dev/null | tr '\\0' '\\n'",
    ]);
    assert!(
        environ.contains("ANTHROPIC_API_KEY=agentbox-placeholder-key"),
        "{environ}"
    );
    assert!(
        !environ.contains(REAL_KEY),
        "a process inside holds the real key"
    );

    // The key is never logged either.
    assert!(
        daemon.logs().iter().all(|l| !l.contains(REAL_KEY)),
        "the key reached a log line"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_missing_token_is_401_and_creates_nothing() {
    let _engine = serial::shared().await;
    let (mock, daemon) = start_with_mock(REAL_KEY).await;
    let body = json!({"prompt": "!write x.txt nope"});
    let (status, text) = post_message(&daemon, Some("not-a-token"), "conv-a", body.clone()).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("\"unauthorized\""), "{text}");
    let (status, _) = post_message(&daemon, None, "conv-a", body).await;
    assert_eq!(status, 401);
    let s = daemon.status();
    assert_eq!(s["pool"]["claimed"], 0, "a container was claimed: {s:#}");
    assert_eq!(s["pool"]["cold_starts_total"], 0);
    assert!(mock.requests().is_empty(), "the model was called");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_4xx() {
    let _engine = serial::shared().await;
    let (_mock, daemon) = start_with_mock(REAL_KEY).await;
    let client = crate::harness::client();
    let post = |conv: &str, body: String| {
        client
            .post(daemon.url(&format!("/v1/conversations/{conv}/messages")))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post(".hidden", json!({"prompt": "x"}).to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post("ok", "{not json".to_owned()).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post(
        "ok",
        json!({"prompt": "x", "options": {"modle": "y"}}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text().await.unwrap().contains("modle"),
        "the bad field is named"
    );
    let r = post("ok", json!({"prompt": "  "}).to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post(
        "ok",
        json!({"prompt": "x".repeat(2 * 1024 * 1024)}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
    // A fresh client: the server closes the connection after a 413 with an
    // unread body, and the pool might hand that connection out again.
    let client = crate::harness::client();
    let r = client.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let r = client.get(daemon.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(daemon.status()["pool"]["claimed"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_exits_zero() {
    let _engine = serial::shared().await;
    let (_mock, mut daemon) = start_with_mock(REAL_KEY).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = daemon.terminate();
        (s, daemon)
    })
    .await
    .unwrap()
    .0;
    assert!(status.success(), "exit status {status}");
}

#[test]
fn invalid_config_exits_64_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[container]\npids_limit = 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentbox"))
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("container.pids_limit"), "{err}");
}
