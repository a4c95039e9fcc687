//! What the Agent SDK offers beyond a prompt, on a real engine with the
//! real CLI: interrupting a turn over the SSE API, and MCP tools.

use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "sk-sdk-test";

/// Posts an interrupt for `conversation` as `token`: (status, body).
async fn interrupt(d: &Daemon, token: &str, conversation: &str) -> (u16, Value) {
    let resp = client()
        .post(d.url(&format!("/v1/conversations/{conversation}/interrupt")))
        .bearer_auth(token)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Reads `resp`'s SSE body until it contains `marker`; returns what came.
async fn read_until(resp: &mut reqwest::Response, marker: &str) -> String {
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while !seen.contains(marker) {
            let chunk = resp
                .chunk()
                .await
                .expect("read")
                .expect("stream ended early");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {marker:?} within 120 s; got {seen}"));
    seen
}

/// The run's `result` data, the last event of a whole stream.
fn result_of(events: &[SseEvent]) -> Value {
    let last = events.last().expect("events");
    assert_eq!(last.event, "result", "{events:#?}");
    last.data.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupt_stops_the_running_tool_and_the_session_goes_on() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock(KEY).await;
    // No run yet: nothing to interrupt, and nobody else's conversation.
    assert_eq!(interrupt(&d, TOKEN, "intr").await.0, 404);
    post_message(&d, Some(TOKEN), "intr", json!({"prompt": "!text hello"})).await;
    let (status, body) = interrupt(&d, TOKEN, "intr").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");

    // A Bash tool that would run for a minute, then a final answer.
    let prompt = "!bash for i in $(seq 60); do sleep 1; done\n!text never reached";
    let mut resp = client()
        .post(d.url("/v1/conversations/intr/messages"))
        .bearer_auth(TOKEN)
        .json(&json!({"prompt": prompt}))
        .send()
        .await
        .unwrap();
    let mut body = read_until(&mut resp, "event: tool_use").await;
    // Another tenant cannot stop it.
    assert_eq!(interrupt(&d, OTHER_TOKEN, "intr").await.0, 404);
    let (status, ack) = interrupt(&d, TOKEN, "intr").await;
    assert_eq!(status, 202, "{ack}");
    assert_eq!(ack["interrupt"], "requested");
    let run = ack["run"].as_u64().expect("run number");
    body.push_str(
        &tokio::time::timeout(Duration::from_secs(120), resp.text())
            .await
            .expect("the run ends")
            .unwrap(),
    );
    let events = parse_sse(&body);
    let result = result_of(&events);
    assert_eq!(result["interrupted"], true, "{result}");
    assert_eq!(result["is_error"], true, "{result}");
    assert!(
        !body.contains("never reached"),
        "the turn went on after the interrupt: {body}"
    );
    let stopped = events
        .iter()
        .find(|e| e.event == "tool_result")
        .expect("the stopped tool's result");
    assert_eq!(stopped.data["is_error"], true, "{stopped:?}");
    assert!(events.iter().all(|e| e
        .id
        .as_deref()
        .is_none_or(|id| id.starts_with(&format!("{run}-")))));

    // The audit trail names the interrupt, and the session carries on.
    let audited = d
        .audit_events()
        .into_iter()
        .filter(|e| e["event"] == "agent_execution_interrupted")
        .collect::<Vec<_>>();
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["accepted"], true);
    assert_eq!(audited[0]["tenant_id"], TENANT);
    assert_eq!(audited[0]["conversation_id"], "intr");
    let (_, next) = post_message(&d, Some(TOKEN), "intr", json!({"prompt": "!text after"})).await;
    let next = result_of(&parse_sse(&next));
    assert_eq!(next["interrupted"], false, "{next}");
    assert_eq!(next["is_error"], false, "{next}");
    assert_eq!(next["result"], "after");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupt_right_after_the_message_stops_the_model_call() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock(KEY).await;
    // The model would think for a minute before answering.
    let slow = spawn_run(&d, TOKEN, "early", "!sleep 60000\n!text late");
    // The interrupt may come before the run has its container: it is kept
    // until the agent takes the run.
    let ack = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match interrupt(&d, TOKEN, "early").await {
                (202, ack) => return ack,
                // The message has not created the conversation yet.
                (404 | 409, _) => tokio::time::sleep(Duration::from_millis(20)).await,
                (status, body) => panic!("{status} {body}"),
            }
        }
    })
    .await
    .expect("the run starts");
    assert_eq!(ack["run"], 1);
    let body = tokio::time::timeout(Duration::from_secs(120), slow)
        .await
        .expect("the run ends")
        .unwrap();
    let result = result_of(&parse_sse(&body));
    assert_eq!(result["interrupted"], true, "{result}");
    assert!(!body.contains("late"), "{body}");
}

/// A stdio MCP server in a few lines of Python: one tool, `add`, which
/// also leaves its arguments in `mcp-called.txt` so the test sees that it
/// ran inside the container. It has no backslash: the `!write` directive
/// turns `\n` into line breaks.
const CALC_SERVER: &str = r#"import json, sys
def reply(id, result):
    print(json.dumps({"jsonrpc": "2.0", "id": id, "result": result}), flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    method, id = msg.get("method"), msg.get("id")
    if method == "initialize":
        reply(id, {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": {"name": "calc", "version": "1"}})
    elif method == "tools/list":
        reply(id, {"tools": [{"name": "add", "description": "Adds two numbers", "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}]})
    elif method == "tools/call":
        args = msg["params"]["arguments"]
        open("mcp-called.txt", "w").write(json.dumps(args))
        reply(id, {"content": [{"type": "text", "text": "sum=%s" % (args["a"] + args["b"])}]})
    elif id is not None:
        print(json.dumps({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "no such method"}}), flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_stdio_mcp_server_in_the_workspace_is_called_by_the_model() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock(KEY).await;
    let write = format!("!write calc_server.py {}", CALC_SERVER.replace('\n', "\\n"));
    let (status, body) = post_message(&d, Some(TOKEN), "mcp", json!({"prompt": write})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(result_of(&parse_sse(&body))["is_error"], false, "{body}");

    let options = json!({"mcp_servers": {
        "calc": {"type": "stdio", "command": "python3", "args": ["calc_server.py"]}
    }});
    let prompt = "!tool mcp__calc__add {\"a\": 2, \"b\": 40}\n!text finished";
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "mcp",
        json!({"prompt": prompt, "options": options}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    let call = events
        .iter()
        .find(|e| e.event == "tool_use" && e.data["name"] == "mcp__calc__add")
        .unwrap_or_else(|| panic!("no MCP tool call: {events:#?}"));
    assert_eq!(call.data["input"], json!({"a": 2, "b": 40}));
    let answer = events
        .iter()
        .find(|e| e.event == "tool_result" && e.data["tool_use_id"] == call.data["id"])
        .expect("the MCP tool's result");
    assert_eq!(answer.data["is_error"], false, "{answer:?}");
    assert!(
        answer.data["content"].to_string().contains("sum=42"),
        "{answer:?}"
    );
    let result = result_of(&events);
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(result["result"], "finished");
    // The server ran in the container, in the workspace.
    let called = read_file(&d.workspace(TENANT, "mcp").join("mcp-called.txt"));
    assert_eq!(
        serde_json::from_str::<Value>(&called).unwrap(),
        json!({"a": 2, "b": 40})
    );
}
