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

#[tokio::test(flavor = "multi_thread")]
async fn a_session_carries_stream_json_both_ways_through_the_run_machinery() {
    use futures_util::StreamExt;
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock(KEY).await;
    // Options are checked before the upgrade, and refusals name the option.
    for (options, name) in [
        (json!({"cli_path": "/bin/sh"}), "options.cli_path"),
        (json!({"cwd": "/etc"}), "options.cwd"),
        (
            json!({"extra_args": {"dangerously-skip-permissions": null}}),
            "options.extra_args",
        ),
        (json!({"no_such_option": 1}), "no_such_option"),
    ] {
        let (status, body) = open_session(&d, TOKEN, "sess", options)
            .await
            .err()
            .unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(name), "{body}");
    }
    assert_eq!(
        open_session(&d, "wrong", "sess", json!({}))
            .await
            .err()
            .unwrap()
            .0,
        401
    );

    let mut ws = open_session(
        &d,
        TOKEN,
        "sess",
        json!({"permission_mode": "bypassPermissions"}),
    )
    .await
    .unwrap();
    // The control protocol reaches the CLI and its answers come back.
    send_line(
        &mut ws,
        json!({"type": "control_request", "request_id": "init-1", "request": {"subtype": "initialize", "hooks": null}}),
    )
    .await;
    let init = lines_until(&mut ws, "control_response").await;
    assert_eq!(init.last().unwrap()["response"]["request_id"], "init-1");
    // One live session per conversation; the SSE API waits too.
    assert_eq!(
        open_session(&d, TOKEN, "sess", json!({}))
            .await
            .err()
            .unwrap()
            .0,
        409
    );
    let (status, _) = post_message(&d, Some(TOKEN), "sess", json!({"prompt": "hi"})).await;
    assert_eq!(status, 409);

    send_line(
        &mut ws,
        user_line("!write from-session.txt first turn\n!text one"),
    )
    .await;
    let first = lines_until(&mut ws, "result").await;
    assert_eq!(first.last().unwrap()["result"], "one", "{first:#?}");
    send_line(&mut ws, user_line("!text two")).await;
    let second = lines_until(&mut ws, "result").await;
    let result = second.last().unwrap();
    assert_eq!(result["result"], "two");
    assert_eq!(result["session_id"], first.last().unwrap()["session_id"]);

    // end_input: the CLI's stdin closes, the session ends, the socket closes.
    send_line(&mut ws, json!({"type": "end_input"})).await;
    let closed = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(msg) = ws.next().await {
            if let Ok(tokio_tungstenite::tungstenite::Message::Close(frame)) = msg {
                return frame;
            }
        }
        None
    })
    .await
    .expect("the session closes");
    assert_eq!(closed.map(|f| u16::from(f.code)), Some(1000));

    // The daemon saw everything: the run's record, the audit trail, the
    // final sync (the file through the Files API) and the session id.
    let (status, body) = get_json(&d, TOKEN, "/v1/conversations/sess").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["session_id"], result["session_id"]);
    let (_, replay) = get_text(&d, TOKEN, "/v1/conversations/sess/events").await;
    let recorded = parse_sse(&replay);
    let names: Vec<&str> = recorded.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "result").count(),
        2,
        "{names:?}"
    );
    assert!(
        names.contains(&"tool_use") && names.contains(&"tool_result"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"stream"),
        "raw lines are not recorded: {names:?}"
    );
    let (status, file) = get_text(&d, TOKEN, "/v1/conversations/sess/files/from-session.txt").await;
    assert_eq!((status, file.as_str()), (200, "first turn"));
    let audit = d.audit_events();
    assert!(audit
        .iter()
        .any(|e| e["event"] == "agent_execution_completed" && e["conversation_id"] == "sess"));
    // Another tenant's "sess" is its own conversation: none of these files.
    let (status, _) = get_text(
        &d,
        OTHER_TOKEN,
        "/v1/conversations/sess/files/from-session.txt",
    )
    .await;
    assert_eq!(status, 404);
    // The conversation goes on over SSE, in the same Claude session.
    let (_, body) = post_message(&d, Some(TOKEN), "sess", json!({"prompt": "!text three"})).await;
    let next = result_of(&parse_sse(&body));
    assert_eq!(next["session_id"], result["session_id"]);
}

async fn get_text(d: &Daemon, token: &str, path: &str) -> (u16, String) {
    let resp = client()
        .get(d.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn get_json(d: &Daemon, token: &str, path: &str) -> (u16, Value) {
    let (status, body) = get_text(d, token, path).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The venv with the pinned `claude-agent-sdk` and `clients/python`, made
/// or updated by `tests/setup/ensure-python-sdk.sh` once per suite.
pub(crate) fn sdk_python() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let script = repo_root().join("tests/setup/ensure-python-sdk.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(out.status.success(), "{} failed", script.display());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// What every program below starts with: the daemon's URL and token from
/// the environment, a transport per conversation, and `out()` for the one
/// JSON line the test reads.
const PRELUDE: &str = r#"
import asyncio, json, os
from claude_agent_sdk import *
from agentbox_client import *

URL, TOKEN = os.environ["AGENTBOX_URL"], os.environ["AGENTBOX_TOKEN"]

def transport(conversation, options, token=TOKEN):
    return AgentboxTransport(URL, token, conversation, options, close_timeout=5)

def out(**fields):
    print("RESULT " + json.dumps(fields, default=str), flush=True)

def blocks(messages, kind):
    return [b for m in messages if isinstance(m, (AssistantMessage, UserMessage))
            and isinstance(m.content, list) for b in m.content if isinstance(b, kind)]

async def turn(client, prompt):
    await client.query(prompt)
    return [m async for m in client.receive_response()]
"#;

/// Runs `program` (after [`PRELUDE`]) with the venv's Python against `d` as
/// `token`, within 180 s; the fields of its `RESULT` line.
pub(crate) async fn run_python(d: &Daemon, token: &str, program: &str) -> Value {
    let mut cmd = tokio::process::Command::new(sdk_python());
    cmd.arg("-c")
        .arg(format!("{PRELUDE}\n{program}"))
        .env("AGENTBOX_URL", d.url(""))
        .env("AGENTBOX_TOKEN", token);
    crate::harness::session::program_result(cmd, "python").await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_runs_its_agent_in_agentbox_through_the_client() {
    let _engine = serial::shared().await;
    let python = sdk_python();
    assert!(!python.is_empty());
    let (_mock, d) = start_with_mock(KEY).await;

    // query(): one prompt, a Write tool in the container, the session closed.
    let got = run_python(
        &d,
        TOKEN,
        r#"
async def main():
    opts = ClaudeAgentOptions(permission_mode="bypassPermissions")
    kinds, result = [], None
    async for m in query(prompt="!write from-python.txt written by the SDK\n!text wrote it",
                         options=opts, transport=transport("py-query", opts)):
        kinds.append(type(m).__name__)
        if isinstance(m, ResultMessage):
            result = m
    out(kinds=kinds, result=result.result, is_error=result.is_error)
asyncio.run(main())
"#,
    )
    .await;
    assert_eq!(got["result"], "wrote it", "{got}");
    assert_eq!(got["is_error"], false, "{got}");
    let kinds: Vec<&str> = got["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        kinds.contains(&"SystemMessage") && kinds.contains(&"AssistantMessage"),
        "{kinds:?}"
    );
    let (status, file) = get_text(
        &d,
        TOKEN,
        "/v1/conversations/py-query/files/from-python.txt",
    )
    .await;
    assert_eq!((status, file.as_str()), (200, "written by the SDK"));

    // ClaudeSDKClient: two turns in one session; the second remembers the first.
    let got = run_python(
        &d,
        TOKEN,
        r#"
async def main():
    opts = ClaudeAgentOptions(permission_mode="bypassPermissions")
    async with ClaudeSDKClient(options=opts, transport=transport("py-client", opts)) as client:
        first = (await turn(client, "!text the first answer"))[-1]
        second = (await turn(client, "!text the second answer\n!recall"))[-1]
    out(first=first.result, second=second.result,
        same_session=first.session_id == second.session_id)
asyncio.run(main())
"#,
    )
    .await;
    assert_eq!(got["first"], "the first answer", "{got}");
    assert_eq!(
        got["second"], "the second answer\nrecall: the first answer",
        "{got}"
    );
    assert_eq!(got["same_session"], true, "{got}");
    let (status, body) = get_json(&d, TOKEN, "/v1/conversations/py-client").await;
    assert_eq!(status, 200, "{body}");

    // Refusals become the client's exceptions.
    let got = run_python(
        &d,
        TOKEN,
        r#"
async def attempt(conversation, opts, token=TOKEN):
    try:
        async for _ in query(prompt="!text hi", options=opts,
                             transport=transport(conversation, opts, token)):
            pass
    except AgentboxError as e:
        return {"type": type(e).__name__, "status": getattr(e, "status", None),
                "option": getattr(e, "option", None), "sdk_error": isinstance(e, CLIConnectionError)}
    return {"type": None}

async def main():
    opts = ClaudeAgentOptions(permission_mode="bypassPermissions")
    # A second session on a conversation that has one open.
    async with ClaudeSDKClient(options=opts, transport=transport("py-busy", opts)) as client:
        await turn(client, "!text busy")
        conflict = await attempt("py-busy", opts)
    out(auth=await attempt("py-bad", ClaudeAgentOptions(), token="not-a-token"),
        option=await attempt("py-bad", ClaudeAgentOptions(cli_path="/bin/sh")),
        unknown=await attempt("py-bad", ClaudeAgentOptions(task_budget={"total": 5})),
        conflict=conflict)
asyncio.run(main())
"#,
    )
    .await;
    assert_eq!(
        got["auth"],
        json!({"type": "AgentboxAuthError", "status": 401, "option": null, "sdk_error": true}),
        "{got}"
    );
    assert_eq!(got["option"]["type"], "AgentboxOptionsError", "{got}");
    assert_eq!(got["option"]["status"], 400, "{got}");
    assert_eq!(got["option"]["option"], "cli_path", "{got}");
    assert_eq!(got["unknown"]["option"], "task_budget", "{got}");
    assert_eq!(got["conflict"]["type"], "AgentboxConflictError", "{got}");
    assert_eq!(got["conflict"]["status"], 409, "{got}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_callbacks_and_in_process_mcp_tools_run_in_the_callers_process() {
    let _engine = serial::shared().await;
    sdk_python();
    let (mock, d) = start_with_mock(KEY).await;

    // can_use_tool: the caller denies a Bash command; the CLI reports it.
    let got = run_python(
        &d,
        TOKEN,
        r#"
asked = []
async def can_use_tool(name, tool_input, context):
    asked.append([name, tool_input.get("command")])
    if name == "Bash":
        return PermissionResultDeny(message="the caller says no")
    return PermissionResultAllow()

async def main():
    opts = ClaudeAgentOptions(can_use_tool=can_use_tool, permission_mode="default")
    async with ClaudeSDKClient(options=opts, transport=transport("py-perm", opts)) as client:
        messages = await turn(client, "!bash echo ran > bash-ran.txt\n!text after the denial")
    results = blocks(messages, ToolResultBlock)
    out(asked=asked, denied=[json.dumps(r.content) for r in results if r.is_error],
        result=messages[-1].result)
asyncio.run(main())
"#,
    )
    .await;
    assert_eq!(
        got["asked"],
        json!([["Bash", "echo ran > bash-ran.txt"]]),
        "{got}"
    );
    assert!(
        got["denied"].to_string().contains("the caller says no"),
        "{got}"
    );
    assert_eq!(got["result"], "after the denial", "{got}");
    assert!(!d.workspace(TENANT, "py-perm").join("bash-ran.txt").exists());

    // A PreToolUse hook runs in the caller and stops a Write.
    let got = run_python(
        &d,
        TOKEN,
        r#"
seen = []
async def pre_tool_use(hook_input, tool_use_id, context):
    seen.append([hook_input["tool_name"], os.path.basename(hook_input["tool_input"]["file_path"])])
    return {"hookSpecificOutput": {"hookEventName": "PreToolUse",
            "permissionDecision": "deny", "permissionDecisionReason": "the hook says no"}}

async def main():
    opts = ClaudeAgentOptions(permission_mode="bypassPermissions",
                              hooks={"PreToolUse": [HookMatcher(matcher="Write", hooks=[pre_tool_use])]})
    async with ClaudeSDKClient(options=opts, transport=transport("py-hook", opts)) as client:
        messages = await turn(client, "!write hooked.txt never\n!text hooked")
    out(seen=seen, results=[json.dumps(r.content) for r in blocks(messages, ToolResultBlock)],
        result=messages[-1].result)
asyncio.run(main())
"#,
    )
    .await;
    assert_eq!(got["seen"], json!([["Write", "hooked.txt"]]), "{got}");
    assert!(
        got["results"].to_string().contains("the hook says no"),
        "{got}"
    );
    assert_eq!(got["result"], "hooked", "{got}");
    assert!(!d.workspace(TENANT, "py-hook").join("hooked.txt").exists());

    // An in-process SDK MCP tool, called by the model, runs in Python.
    let got = run_python(
        &d,
        TOKEN,
        r#"
calls = []
@tool("add", "Adds two numbers", {"a": int, "b": int})
async def add(args):
    calls.append(args)
    return {"content": [{"type": "text", "text": "sum=%d pid=%d" % (args["a"] + args["b"], os.getpid())}]}

async def main():
    server = create_sdk_mcp_server("pycalc", tools=[add])
    opts = ClaudeAgentOptions(permission_mode="bypassPermissions", mcp_servers={"pycalc": server})
    async with ClaudeSDKClient(options=opts, transport=transport("py-mcp", opts)) as client:
        messages = await turn(client, '!tool mcp__pycalc__add {"a": 2, "b": 40}\n!text added')
    out(calls=calls, pid=os.getpid(), uses=[b.name for b in blocks(messages, ToolUseBlock)],
        results=[json.dumps(r.content) for r in blocks(messages, ToolResultBlock)],
        result=messages[-1].result)
asyncio.run(main())
"#,
    )
    .await;
    assert_eq!(got["calls"], json!([{"a": 2, "b": 40}]), "{got}");
    assert!(
        got["uses"].to_string().contains("mcp__pycalc__add"),
        "{got}"
    );
    assert_eq!(got["result"], "added", "{got}");
    // The tool's answer, made in the caller's process, reached the model.
    let answer = format!("sum=42 pid={}", got["pid"]);
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.body.to_string().contains(&answer)),
        "the model never saw {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sdk_interrupt_over_the_session_stops_the_turn() {
    let _engine = serial::shared().await;
    sdk_python();
    let (_mock, d) = start_with_mock(KEY).await;
    let got = run_python(
        &d,
        TOKEN,
        r#"
async def main():
    opts = ClaudeAgentOptions(permission_mode="bypassPermissions")
    async with ClaudeSDKClient(options=opts, transport=transport("py-intr", opts)) as client:
        await client.query("!bash for i in $(seq 60); do sleep 1; done\n!text never reached")
        stopped, interrupted = [], False
        async for m in client.receive_response():
            stopped.append(m)
            if not interrupted and blocks([m], ToolUseBlock):
                await client.interrupt()
                interrupted = True
        after = (await turn(client, "!text after the interrupt"))[-1]
    texts = [b.text for b in blocks(stopped, TextBlock)]
    out(interrupted=interrupted, stopped_error=stopped[-1].is_error,
        stopped_result=stopped[-1].result, texts=texts, after=after.result)
asyncio.run(main())
"#,
    )
    .await;
    assert_eq!(got["interrupted"], true, "{got}");
    assert_eq!(got["stopped_error"], true, "{got}");
    assert!(!got.to_string().contains("never reached"), "{got}");
    assert_eq!(got["after"], "after the interrupt", "{got}");
}

/// A session that answers one turn, prints `ALIVE`, waits for a line on
/// stdin and then tries a second turn: how it ended, as the client saw it.
const LOSE_A_SESSION: &str = r#"
import sys

async def main():
    opts = ClaudeAgentOptions(permission_mode="bypassPermissions")
    try:
        async with ClaudeSDKClient(options=opts, transport=transport(sys.argv[1], opts)) as client:
            await turn(client, "!text alive")
            print("ALIVE", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            await turn(client, "!text after")
    except AgentboxConnectionLost as e:
        out(type="AgentboxConnectionLost", close_code=e.close_code, code=e.code, sdk_error=isinstance(e, CLIConnectionError))
        return
    except Exception as e:
        out(type=type(e).__name__, message=str(e))
        return
    out(type=None)
asyncio.run(main())
"#;

/// Runs [`LOSE_A_SESSION`] on `conversation`; `between` runs once the
/// first turn is done. The program's `RESULT` fields.
async fn lose_a_session(
    d: &mut Daemon,
    conversation: &str,
    between: impl FnOnce(&mut Daemon),
) -> Value {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut child = tokio::process::Command::new(sdk_python())
        .arg("-c")
        .arg(format!("{PRELUDE}\n{LOSE_A_SESSION}"))
        .arg(conversation)
        .env("AGENTBOX_URL", d.url(""))
        .env("AGENTBOX_TOKEN", TOKEN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start python");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "ALIVE" {
                return;
            }
            seen.push(line);
        }
        panic!("the program ended before its first turn did: {seen:?}");
    })
    .await
    .expect("the first turn ends within 120 s");
    between(d);
    stdin.write_all(b"go\n").await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(result) = line.strip_prefix("RESULT ") {
                return serde_json::from_str(result).unwrap();
            }
        }
        panic!("no RESULT line");
    })
    .await
    .expect("the program ends within 120 s")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_session_is_the_clients_connection_lost_error() {
    let _engine = serial::shared().await;
    sdk_python();
    let (_mock, mut d) = start_with_mock(KEY).await;
    // The container dies under the session: the daemon closes with 1011.
    let got = lose_a_session(&mut d, "py-lost", |d| {
        let container = d.container_of(TENANT, "py-lost").expect("a container");
        docker_ok(&["kill", &container]);
    })
    .await;
    assert_eq!(got["type"], "AgentboxConnectionLost", "{got}");
    assert_eq!(got["close_code"], 1011, "{got}");
    assert!(got["code"].is_string(), "{got}");
    assert_eq!(got["sdk_error"], true, "{got}");
    // The daemon itself goes away: the socket drops without a close frame.
    // The client says `host_lost` (docs/scale-out.md).
    let got = lose_a_session(&mut d, "py-drop", |d| d.kill9()).await;
    assert_eq!(got["type"], "AgentboxConnectionLost", "{got}");
    assert_eq!(got["close_code"], Value::Null, "{got}");
    assert_eq!(got["code"], "host_lost", "{got}");
}

/// A client that drops mid-turn (docs/api.md): the turn runs to its end,
/// is recorded and synced though nobody reads it, and a new session
/// resumes the same Claude session once the conversation is free.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_drops_mid_turn_leaves_a_finished_recorded_turn() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock(KEY).await;
    let options = json!({"permission_mode": "bypassPermissions"});
    let mut ws = open_session(&d, TOKEN, "drop", options.clone())
        .await
        .unwrap();
    send_line(
        &mut ws,
        user_line("!bash sleep 2\n!write after-drop.txt written after the drop\n!text finished"),
    )
    .await;
    // The model asked for the Bash tool: the turn is under way. Then the
    // client goes away without a close frame.
    lines_until(&mut ws, "assistant").await;
    drop(ws);

    // The replay follows the run to its end: the turn finished.
    let (status, replay) = get_text(&d, TOKEN, "/v1/conversations/drop/events").await;
    assert_eq!(status, 200, "{replay}");
    let events = parse_sse(&replay);
    let result = result_of(&events);
    assert_eq!(result["result"], "finished", "{result}");
    // `result` waits for the final sync: the file is in the store.
    let (status, file) = get_text(&d, TOKEN, "/v1/conversations/drop/files/after-drop.txt").await;
    assert_eq!((status, file.as_str()), (200, "written after the drop"));

    // The conversation is free once the CLI has exited; the next session
    // continues the same Claude session.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut ws = loop {
        match open_session(&d, TOKEN, "drop", options.clone()).await {
            Ok(ws) => break ws,
            Err((409, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("the next session: {e:?}"),
        }
    };
    send_line(&mut ws, user_line("!text again")).await;
    let next = lines_until(&mut ws, "result").await;
    let next = next.last().unwrap();
    assert_eq!(next["result"], "again");
    assert_eq!(next["session_id"], result["session_id"], "{next}");
}
