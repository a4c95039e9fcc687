//! MCP servers the agent reaches over the network (`http`, `sse`): they
//! live outside the container, and the CLI reaches them only through the
//! egress proxy, so only hosts on the allowlist connect.

use crate::harness::*;
use crate::sdk::{run_python, sdk_python};
use crate::sdk_ts::run_node;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const KEY: &str = "sk-sdk-mcp-test";

/// Two MCP servers with one tool, `add`, from the `mcp` package the SDK
/// depends on: one speaks streamable HTTP, one the older SSE transport.
/// Each prints `PORTS` once, then a `CALLED` line per call. Their
/// DNS-rebinding check takes only `mcp.test` as Host.
const WEB_SERVERS: &str = r#"
import asyncio, json, socket
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

SECURITY = TransportSecuritySettings(allowed_hosts=["mcp.test:*"], allowed_origins=["http://mcp.test:*"])

def server(transport):
    mcp = MCPServer("web-" + transport)
    @mcp.tool(description="Adds two numbers")
    def add(a: int, b: int) -> str:
        print("CALLED " + json.dumps({"transport": transport, "a": a, "b": b}), flush=True)
        return "sum=%d over %s" % (a + b, transport)
    return mcp

def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s

async def main():
    apps = {"http": server("http").streamable_http_app(transport_security=SECURITY),
            "sse": server("sse").sse_app(transport_security=SECURITY)}
    socks = {name: listener() for name in apps}
    print("PORTS " + json.dumps({name: s.getsockname()[1] for name, s in socks.items()}), flush=True)
    await asyncio.gather(*(
        uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on")).serve(sockets=[socks[name]])
        for name, app in apps.items()))

asyncio.run(main())
"#;

/// The running [`WEB_SERVERS`]: their ports and the lines they printed.
struct WebServers {
    http: u16,
    sse: u16,
    printed: Arc<Mutex<Vec<String>>>,
    _child: tokio::process::Child,
}

impl WebServers {
    async fn start() -> WebServers {
        let mut child = tokio::process::Command::new(sdk_python())
            .arg("-c")
            .arg(WEB_SERVERS)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the MCP servers");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ports: Value = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let line = lines.next_line().await.unwrap().expect("the servers died");
                if let Some(ports) = line.strip_prefix("PORTS ") {
                    return serde_json::from_str(ports).unwrap();
                }
            }
        })
        .await
        .expect("the MCP servers listen within 60 s");
        let printed = Arc::new(Mutex::new(Vec::new()));
        let sink = printed.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let port = |name: &str| u16::try_from(ports[name].as_u64().unwrap()).unwrap();
        WebServers {
            http: port("http"),
            sse: port("sse"),
            printed,
            _child: child,
        }
    }

    /// The calls the tools received, as `{transport, a, b}`.
    fn calls(&self) -> Vec<Value> {
        self.printed
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("CALLED "))
            .map(|c| serde_json::from_str(c).unwrap())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_and_sse_mcp_servers_are_reached_through_the_egress_allowlist() {
    let _engine = serial::shared().await;
    let web = WebServers::start().await;
    // Both names lead to the same servers on the host's loopback (the
    // test's stand-in for a public address); only `mcp.test` is listed.
    let extra = format!(
        r#"
[proxy]
allowed_domains = ["mcp.test"]
allowed_ports = [{http}, {sse}]
allow_private_cidrs = ["127.0.0.0/8"]

[proxy.resolve]
"mcp.test" = "127.0.0.1"
"far.test" = "127.0.0.1"
"#,
        http = web.http,
        sse = web.sse,
    );
    let (mock, d) = start_with_mock_opts(KEY, 1, &extra).await;

    // An SDK program names the servers in its options; the model calls
    // both listed servers' tools over the session.
    let program = format!(
        r#"
async def main():
    opts = ClaudeAgentOptions(permission_mode="bypassPermissions", mcp_servers={{
        "web": {{"type": "http", "url": "http://mcp.test:{http}/mcp"}},
        "websse": {{"type": "sse", "url": "http://mcp.test:{sse}/sse"}},
        "far": {{"type": "http", "url": "http://far.test:{http}/mcp"}},
    }})
    prompt = '!tool mcp__web__add {{"a": 2, "b": 40}}\n!tool mcp__websse__add {{"a": 3, "b": 4}}\n!text added'
    async with ClaudeSDKClient(options=opts, transport=transport("py-web", opts)) as client:
        messages = await turn(client, prompt)
        status = await client.get_mcp_status()
    init = next(m.data for m in messages if isinstance(m, SystemMessage) and m.subtype == "init")
    out(init={{s["name"]: s["status"] for s in init["mcp_servers"]}},
        status={{s["name"]: s["status"] for s in status["mcpServers"]}},
        uses=[b.name for b in blocks(messages, ToolUseBlock)],
        results=[json.dumps(r.content) for r in blocks(messages, ToolResultBlock) if not r.is_error],
        result=messages[-1].result)
asyncio.run(main())
"#,
        http = web.http,
        sse = web.sse,
    );
    let got = run_python(&d, TOKEN, &program).await;

    // The listed servers connected and their tools answered the model.
    for (name, what) in [("web", "connected"), ("websse", "connected")] {
        assert_eq!(got["init"][name], what, "{got}");
        assert_eq!(got["status"][name], what, "{got}");
    }
    let uses = got["uses"].to_string();
    assert!(
        uses.contains("mcp__web__add") && uses.contains("mcp__websse__add"),
        "{got}"
    );
    let results = got["results"].to_string();
    assert!(
        results.contains("sum=42 over http") && results.contains("sum=7 over sse"),
        "{got}"
    );
    assert_eq!(got["result"], "added", "{got}");
    for answer in ["sum=42 over http", "sum=7 over sse"] {
        assert!(
            mock.requests()
                .iter()
                .any(|r| r.body.to_string().contains(answer)),
            "the model never saw {answer:?}"
        );
    }
    assert_eq!(
        web.calls(),
        vec![
            json!({"transport": "http", "a": 2, "b": 40}),
            json!({"transport": "sse", "a": 3, "b": 4}),
        ]
    );

    // The unlisted name never reached the servers (no third call): the
    // proxy refused it with a 403, which the CLI's MCP client reads as an
    // authorization demand, so the client sees the server as `needs-auth`.
    assert_eq!(got["init"]["far"], "needs-auth", "{got}");
    assert_eq!(got["status"]["far"], "needs-auth", "{got}");
    // Each proxied request is audited when it ends: the SSE stream's only
    // when the CLI has gone, so wait for the events, bounded.
    let audit = audit_until(&d, |audit| {
        let allowed = |port: u16| {
            audit.iter().any(|e| {
                e["event"] == "proxy_request_allowed"
                    && e["host"] == "mcp.test"
                    && e["port"] == port
            })
        };
        allowed(web.http)
            && allowed(web.sse)
            && audit
                .iter()
                .any(|e| e["event"] == "proxy_request_blocked" && e["host"] == "far.test")
    })
    .await;
    let refused = audit
        .iter()
        .find(|e| e["event"] == "proxy_request_blocked" && e["host"] == "far.test")
        .unwrap();
    assert_eq!(refused["reason"], "domain_not_allowed", "{refused}");
    assert_eq!(refused["conversation_id"], "py-web", "{refused}");
    assert_eq!(refused["tenant_id"], TENANT, "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_sdk_reaches_an_http_mcp_server_named_in_argv() {
    let _engine = serial::shared().await;
    let web = WebServers::start().await;
    let extra = format!(
        r#"
[proxy]
allowed_domains = ["mcp.test"]
allowed_ports = [{http}]
allow_private_cidrs = ["127.0.0.0/8"]

[proxy.resolve]
"mcp.test" = "127.0.0.1"
"#,
        http = web.http,
    );
    let (_mock, d) = start_with_mock_opts(KEY, 1, &extra).await;
    // With mcpServersDelivery 'argv' the SDK puts the server in
    // --mcp-config, which the client carries as the session's mcp_servers.
    let program = format!(
        r#"
const messages = await run('ts-web', '!tool mcp__web__add {{"a": 5, "b": 6}}\n!text added', {{
  permissionMode: 'bypassPermissions', mcpServersDelivery: 'argv',
  mcpServers: {{ web: {{ type: 'http', url: 'http://mcp.test:{http}/mcp' }} }} }});
const init = messages.find((m) => m.type === 'system' && m.subtype === 'init');
out({{ servers: Object.fromEntries(init.mcp_servers.map((s) => [s.name, s.status])),
       results: JSON.stringify(blocks(messages, 'tool_result')), result: messages.at(-1).result }});
"#,
        http = web.http,
    );
    let got = run_node(&d, &program).await;
    assert_eq!(got["servers"]["web"], "connected", "{got}");
    assert!(
        got["results"].to_string().contains("sum=11 over http"),
        "{got}"
    );
    assert_eq!(got["result"], "added", "{got}");
    assert_eq!(
        web.calls(),
        vec![json!({"transport": "http", "a": 5, "b": 6})]
    );
}

/// The audit events once `done` holds for them, within 30 s.
async fn audit_until(d: &Daemon, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let audit = d.audit_events();
        if done(&audit) {
            return audit;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the audit events never showed it: {audit:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
