//! The Agent SDK for TypeScript (`@anthropic-ai/claude-agent-sdk` from
//! npm) runs its agent in agentbox through `clients/typescript`: the SDK's
//! `spawnClaudeCodeProcess` answered by the session WebSocket, driven by
//! node with the real SDK, the real image and the real CLI.

use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "sk-sdk-ts-test";

/// The directory with the pinned SDK and the client, made or updated by
/// `tests/setup/ensure-node-sdk.sh` once per suite.
pub(crate) fn node_sdk() -> &'static str {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let script = repo_root().join("tests/setup/ensure-node-sdk.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(out.status.success(), "{} failed", script.display());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// What every program below starts with: `run()` gives one query's
/// messages on a conversation through the client, `out()` the one JSON
/// line the test reads.
const PRELUDE: &str = r#"
import { query, createSdkMcpServer, tool } from '@anthropic-ai/claude-agent-sdk';
import { agentboxOptions } from 'agentbox-client';
import { z } from 'zod';

const BASE = process.env.AGENTBOX_URL, TOKEN = process.env.AGENTBOX_TOKEN;
const out = (fields) => console.log('RESULT ' + JSON.stringify(fields));

async function run(conversationId, prompt, options = {}, token = TOKEN) {
  const remote = agentboxOptions({ baseUrl: BASE, token, conversationId, closeTimeoutMs: 5000 });
  const messages = [];
  for await (const m of query({ prompt, options: { ...options, ...remote } })) messages.push(m);
  return messages;
}

async function error(conversationId, prompt, options = {}, token = TOKEN) {
  try {
    await run(conversationId, prompt, options, token);
  } catch (e) {
    return e.message;
  }
  return null;
}

const blocks = (messages, type) => messages
  .filter((m) => (m.type === 'assistant' || m.type === 'user') && Array.isArray(m.message.content))
  .flatMap((m) => m.message.content.filter((b) => b.type === type));
"#;

/// Runs `program` (after [`PRELUDE`]) with node against `d`, within 180 s;
/// the fields of its `RESULT` line.
pub(crate) async fn run_node(d: &Daemon, program: &str) -> Value {
    let mut cmd = tokio::process::Command::new("node");
    cmd.args(["--input-type=module", "-e"])
        .arg(format!("{PRELUDE}\n{program}"))
        // Bare imports resolve from the working directory's node_modules.
        .current_dir(node_sdk())
        .env("AGENTBOX_URL", d.url(""))
        .env("AGENTBOX_TOKEN", TOKEN);
    crate::harness::session::program_result(cmd, "node").await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_sdk_runs_its_agent_in_agentbox_through_the_client() {
    let _engine = serial::shared().await;
    node_sdk();
    let (mock, d) = start_with_mock(KEY).await;

    // query(): a Write in the container, and an in-process SDK MCP tool
    // that runs in the node process.
    let got = run_node(
        &d,
        r#"
const calls = [];
const add = tool('add', 'Adds two numbers', { a: z.number(), b: z.number() }, async (args) => {
  calls.push(args);
  return { content: [{ type: 'text', text: `sum=${args.a + args.b} pid=${process.pid}` }] };
});
const messages = await run('ts-query',
  '!write from-node.txt written by the TypeScript SDK\n!tool mcp__nodecalc__add {"a": 2, "b": 40}\n!text done',
  { permissionMode: 'bypassPermissions',
    mcpServers: { nodecalc: createSdkMcpServer({ name: 'nodecalc', tools: [add] }) } });
const result = messages.at(-1);
out({ result: result.result, is_error: result.is_error, calls, pid: process.pid,
      uses: blocks(messages, 'tool_use').map((b) => b.name) });
"#,
    )
    .await;
    assert_eq!(got["result"], "done", "{got}");
    assert_eq!(got["is_error"], false, "{got}");
    assert_eq!(got["calls"], json!([{"a": 2, "b": 40}]), "{got}");
    assert!(
        got["uses"].to_string().contains("mcp__nodecalc__add"),
        "{got}"
    );
    let answer = format!("sum=42 pid={}", got["pid"]);
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.body.to_string().contains(&answer)),
        "the model never saw {answer:?}"
    );
    let resp = client()
        .get(d.url("/v1/conversations/ts-query/files/from-node.txt"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "written by the TypeScript SDK");

    // canUseTool runs in the caller and denies a Bash command.
    let got = run_node(
        &d,
        r#"
const asked = [];
const canUseTool = async (name, input) => {
  asked.push([name, input.command]);
  return name === 'Bash' ? { behavior: 'deny', message: 'node says no' }
                         : { behavior: 'allow', updatedInput: input };
};
const messages = await run('ts-perm', '!bash echo ran > bash-ran.txt\n!text after the denial',
  { canUseTool, permissionMode: 'default' });
out({ asked, denied: JSON.stringify(blocks(messages, 'tool_result').filter((b) => b.is_error)),
      result: messages.at(-1).result });
"#,
    )
    .await;
    assert_eq!(
        got["asked"],
        json!([["Bash", "echo ran > bash-ran.txt"]]),
        "{got}"
    );
    assert!(got["denied"].to_string().contains("node says no"), "{got}");
    assert_eq!(got["result"], "after the denial", "{got}");
    assert!(!d.workspace(TENANT, "ts-perm").join("bash-ran.txt").exists());

    // Refusals, each as the SDK's error with the client's message: the
    // daemon's (a second session, a bad token, a directory outside
    // /workspace) and the client's (a flag no session takes, MCP servers
    // the SDK would send in its initialize request).
    let got = run_node(
        &d,
        r#"
// A second session while the first is open: 409.
const busy = query({ prompt: '!bash sleep 2\n!text busy done', options: { permissionMode: 'bypassPermissions',
  ...agentboxOptions({ baseUrl: BASE, token: TOKEN, conversationId: 'ts-busy' }) } })[Symbol.asyncIterator]();
await busy.next();
const conflict = await error('ts-busy', '!text hi');
let last;
for (let r = await busy.next(); !r.done; r = await busy.next()) last = r.value;
out({
  conflict, busy: last.result,
  auth: await error('ts-bad', '!text hi', {}, 'not-a-token'),
  option: await error('ts-bad', '!text hi', { additionalDirectories: ['/etc'] }),
  flag: await error('ts-bad', '!text hi', { extraArgs: { 'dangerously-skip-permissions': null } }),
  initialize: await error('ts-bad', '!text hi',
    { mcpServers: { web: { type: 'http', url: 'http://mcp.test/mcp' } } }),
});
"#,
    )
    .await;
    let conflict = got["conflict"].as_str().unwrap_or_else(|| panic!("{got}"));
    assert!(conflict.contains("409"), "{got}");
    assert_eq!(got["busy"], "busy done", "{got}");
    let auth = got["auth"].as_str().unwrap_or_else(|| panic!("{got}"));
    assert!(auth.contains("401"), "{got}");
    let option = got["option"].as_str().unwrap_or_else(|| panic!("{got}"));
    assert!(
        option.contains("400") && option.contains("add_dirs"),
        "{got}"
    );
    let flag = got["flag"].as_str().unwrap_or_else(|| panic!("{got}"));
    assert!(flag.contains("dangerously-skip-permissions"), "{got}");
    let initialize = got["initialize"]
        .as_str()
        .unwrap_or_else(|| panic!("{got}"));
    assert!(initialize.contains("mcpServersDelivery"), "{got}");
}

#[tokio::test(flavor = "multi_thread")]
async fn typescript_hooks_and_interrupts_run_over_the_session() {
    let _engine = serial::shared().await;
    node_sdk();
    let (_mock, d) = start_with_mock(KEY).await;
    let got = run_node(
        &d,
        r#"
// A PreToolUse hook in the caller stops a Write.
const seen = [];
const preToolUse = async (input) => {
  seen.push([input.tool_name, input.tool_input.file_path.split('/').pop()]);
  return { hookSpecificOutput: { hookEventName: 'PreToolUse', permissionDecision: 'deny',
                                 permissionDecisionReason: 'the hook says no' } };
};
const hooked = await run('ts-hook', '!write hooked.txt never\n!text hooked',
  { permissionMode: 'bypassPermissions', hooks: { PreToolUse: [{ matcher: 'Write', hooks: [preToolUse] }] } });

// interrupt() stops a minute-long Bash command; the input stays open
// until the turn is over.
let release;
const released = new Promise((resolve) => { release = resolve; });
async function* prompts() {
  yield { type: 'user', session_id: '', parent_tool_use_id: null,
          message: { role: 'user', content: '!bash for i in $(seq 60); do sleep 1; done\n!text never reached' } };
  await released;
}
const q = query({ prompt: prompts(), options: { permissionMode: 'bypassPermissions',
  ...agentboxOptions({ baseUrl: BASE, token: TOKEN, conversationId: 'ts-intr' }) } });
const stopped = [];
let interrupted = false;
for await (const m of q) {
  stopped.push(m);
  if (!interrupted && blocks([m], 'tool_use').length > 0) {
    await q.interrupt();
    interrupted = true;
  }
  if (m.type === 'result') break;
}
release();
out({ seen, hook_results: JSON.stringify(blocks(hooked, 'tool_result')), hooked: hooked.at(-1).result,
      interrupted, stopped_error: stopped.at(-1).is_error,
      texts: blocks(stopped, 'text').map((b) => b.text) });
"#,
    )
    .await;
    assert_eq!(got["seen"], json!([["Write", "hooked.txt"]]), "{got}");
    assert!(
        got["hook_results"].to_string().contains("the hook says no"),
        "{got}"
    );
    assert_eq!(got["hooked"], "hooked", "{got}");
    assert!(!d.workspace(TENANT, "ts-hook").join("hooked.txt").exists());
    assert_eq!(got["interrupted"], true, "{got}");
    assert_eq!(got["stopped_error"], true, "{got}");
    assert!(!got.to_string().contains("never reached"), "{got}");
}

/// A session that answers one turn, prints `ALIVE` and keeps its input
/// open: how it ended, as the client saw it.
const LOSE_A_SESSION: &str = r#"
async function* prompts() {
  yield { type: 'user', session_id: '', parent_tool_use_id: null,
          message: { role: 'user', content: '!text alive' } };
  await new Promise(() => {});
}
const q = query({ prompt: prompts(), options: { permissionMode: 'bypassPermissions',
  ...agentboxOptions({ baseUrl: BASE, token: TOKEN, conversationId: 'ts-lost' }) } });
try {
  for await (const m of q) {
    if (m.type === 'result') console.log('ALIVE');
  }
  out({ error: null });
} catch (e) {
  out({ error: e.message });
}
process.exit(0);
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_typescript_session_fails_the_query_with_the_daemons_reason() {
    use tokio::io::AsyncBufReadExt;
    let _engine = serial::shared().await;
    node_sdk();
    let (_mock, d) = start_with_mock(KEY).await;
    let mut child = tokio::process::Command::new("node")
        .args(["--input-type=module", "-e"])
        .arg(format!("{PRELUDE}\n{LOSE_A_SESSION}"))
        .current_dir(node_sdk())
        .env("AGENTBOX_URL", d.url(""))
        .env("AGENTBOX_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "ALIVE" {
                return;
            }
        }
        panic!("the program ended before its first turn did");
    })
    .await
    .expect("the first turn ends within 120 s");
    // The container dies under the open session.
    let container = d.container_of(TENANT, "ts-lost").expect("a container");
    docker_ok(&["kill", &container]);
    let got: Value = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(result) = line.strip_prefix("RESULT ") {
                return serde_json::from_str(result).unwrap();
            }
        }
        panic!("no RESULT line");
    })
    .await
    .expect("the program ends within 120 s");
    let error = got["error"].as_str().unwrap_or_else(|| panic!("{got}"));
    assert!(
        error.contains("agentbox session lost (close 1011)"),
        "{got}"
    );
}
