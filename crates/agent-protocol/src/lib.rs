//! Wire protocol between the host daemon and `workspace-agent`: the one
//! crate both link, so the compiler checks that they agree. Types only, no I/O.
//!
//! The host sends one [`ExecuteRequest`] as JSON to `POST /execute` on the
//! agent's Unix socket; the agent answers with NDJSON, one [`AgentEvent`] per
//! line, until the run ends. `POST /interrupt` ([`INTERRUPT_PATH`]) asks the
//! run in progress to stop its turn: `202` when there is one, `409` when
//! not; the run then ends with a `result` whose `interrupted` is set.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod session;
pub use session::SessionOptions;

/// Directory inside the container holding both sockets (a host bind mount).
pub const SOCKET_DIR: &str = "/run/agentbox";
/// File name of the agent's own HTTP socket inside [`SOCKET_DIR`].
pub const AGENT_SOCKET: &str = "agent.sock";
/// File name of the host's proxy socket inside [`SOCKET_DIR`].
pub const PROXY_SOCKET: &str = "proxy.sock";
/// Address inside the container that is bridged to the proxy socket.
pub const GATEWAY_ADDR: &str = "127.0.0.1:8080";
/// The agent's route that interrupts the run in progress.
pub const INTERRUPT_PATH: &str = "/interrupt";
/// The agent's route for an Agent SDK session: the request body is NDJSON,
/// a [`SessionStart`] line then the client's stream-json lines for the
/// CLI's stdin; the answer is NDJSON [`AgentEvent`]s, each CLI stdout line
/// as [`AgentEvent::Stream`] followed by what it means as events.
pub const SESSION_PATH: &str = "/session";

/// The first line of a [`SESSION_PATH`] request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionStart {
    pub options: SessionOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_session_id: Option<String>,
}

/// Environment variable by which the host tells the agent which layer
/// confines paths: `apparmor` (the kernel already does), `gvisor` (gVisor's
/// kernel stands between the agent and the host's) or `landlock` (the agent
/// must restrict itself). Absent means `landlock`.
pub const L2_ENV: &str = "AGENTBOX_L2";

/// The layer that confines what paths a container may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathLayer {
    Apparmor,
    Landlock,
    /// The gVisor tier. gVisor implements no Landlock; the agent still
    /// tries it and relies on gVisor only when the kernel answers that it
    /// has none, so this value never weakens a runc container.
    Gvisor,
}

impl PathLayer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apparmor => "apparmor",
            Self::Landlock => "landlock",
            Self::Gvisor => "gvisor",
        }
    }

    /// Reads [`L2_ENV`]'s value; anything but `apparmor` or `gvisor`
    /// means Landlock, so a typo never switches confinement off.
    pub fn from_env_value(value: Option<&str>) -> Self {
        match value {
            Some("apparmor") => Self::Apparmor,
            Some("gvisor") => Self::Gvisor,
            _ => Self::Landlock,
        }
    }
}

/// How far the agent's Landlock restriction took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    FullyEnforced,
    PartiallyEnforced,
    NotEnforced,
    /// Not applied: AppArmor confines the container instead, or gVisor's
    /// kernel, which has no Landlock, stands in front of the host's.
    Skipped,
}

/// The confinement the agent reports in `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    pub layer: PathLayer,
    pub landlock: Enforcement,
    /// The kernel's Landlock ABI version, when it has one.
    pub landlock_abi: Option<i32>,
    /// Why it is not fully enforced, or what was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The JSON body of the agent's `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub confinement: Confinement,
}

/// Claude Code permission modes, spelled as the CLI and the Agent SDK spell them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PermissionMode {
    Default,
    AcceptEdits,
    Plan,
    DontAsk,
    BypassPermissions,
}

impl PermissionMode {
    pub fn as_cli_arg(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::AcceptEdits => "acceptEdits",
            Self::Plan => "plan",
            Self::DontAsk => "dontAsk",
            Self::BypassPermissions => "bypassPermissions",
        }
    }
}

/// The subset of the Agent SDK's `ClaudeAgentOptions` that a request may set.
///
/// Unknown fields are refused so that a misspelt option is an error, not a
/// silently ignored setting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_system_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disallowed_tools: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<PermissionMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget_usd: Option<f64>,
    /// MCP servers by name, as in the SDK: `{"type": "stdio", "command",
    /// "args", "env"}` servers run inside the container; `{"type": "http" |
    /// "sse", "url", "headers"}` servers are reached through the egress
    /// proxy and its allowlist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<serde_json::Map<String, Value>>,
}

impl AgentOptions {
    /// Checks values serde cannot; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let non_empty = |field: &str, v: &Option<String>| match v {
            Some(s) if s.trim().is_empty() => Err(format!("options.{field} must not be empty")),
            _ => Ok(()),
        };
        non_empty("model", &self.model)?;
        if self.max_turns == Some(0) {
            return Err("options.max_turns must be at least 1".to_owned());
        }
        if let Some(b) = self.max_budget_usd {
            if !(b.is_finite() && b > 0.0) {
                return Err("options.max_budget_usd must be a positive number".to_owned());
            }
        }
        for (field, tools) in [
            ("allowed_tools", &self.allowed_tools),
            ("disallowed_tools", &self.disallowed_tools),
        ] {
            if tools
                .iter()
                .flatten()
                .any(|t| t.trim().is_empty() || t.contains(','))
            {
                return Err(format!(
                    "options.{field} entries must be non-empty tool names without commas"
                ));
            }
        }
        for (name, server) in self.mcp_servers.iter().flatten() {
            mcp_server_ok(name, server, false)?;
        }
        Ok(())
    }
}

/// One run of the agent: a prompt, its options and the session to resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecuteRequest {
    pub prompt: String,
    #[serde(default)]
    pub options: AgentOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_session_id: Option<String>,
}

/// What the agent reports while a run goes on.
///
/// Serialised as `{"event": "<name>", "data": {...}}`; the host relays
/// `data` as the SSE payload of an event called `<name>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The agent accepted the run: the first byte the host gets from it.
    /// `prestarted` says the CLI was already running (no start-up wait).
    Started {
        #[serde(default)]
        prestarted: bool,
    },
    /// The CLI's session id; the host keeps it to resume the conversation.
    Session {
        session_id: String,
    },
    TextDelta {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: Value,
        is_error: bool,
    },
    Result {
        session_id: String,
        is_error: bool,
        subtype: String,
        num_turns: u64,
        duration_ms: u64,
        total_cost_usd: f64,
        usage: Value,
        result: Option<String>,
        /// The turn was stopped by an interrupt before it finished.
        #[serde(default)]
        interrupted: bool,
    },
    Error {
        code: String,
        message: String,
    },
    /// A session's CLI stdout line, verbatim, for the session's client;
    /// never recorded (its meaning is, as the other events).
    Stream {
        line: Value,
    },
    /// Sent by the host, never the agent: the conversation's container was
    /// lost, a new one is ready with the workspace restored.
    ContainerRecovered {
        message: String,
        recovered: bool,
    },
    /// Sent by the host, never the agent, after the end-of-run sync, just
    /// before `result`: files of the workspace the sync left out of the
    /// object store for their size. The rest of the workspace is stored.
    SyncSkipped {
        /// Files left out; `files` lists the first of them by path.
        count: u64,
        files: Vec<SkippedFile>,
        max_file_bytes: u64,
        max_workspace_bytes: u64,
    },
}

/// A workspace file the sync did not store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// Relative to the workspace.
    pub path: String,
    /// Apparent size (`st_size`): what storing it would read and upload.
    pub size: u64,
    /// What it occupies on disk (`st_blocks * 512`); far less than `size`
    /// for a sparse file.
    pub allocated: u64,
    /// `file_too_large` (above `max_file_bytes`) or `workspace_too_large`
    /// (the files stored already add up to `max_workspace_bytes`).
    pub reason: String,
}

impl AgentEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Session { .. } => "session",
            Self::TextDelta { .. } => "text_delta",
            Self::ToolUse { .. } => "tool_use",
            Self::ToolResult { .. } => "tool_result",
            Self::Result { .. } => "result",
            Self::Error { .. } => "error",
            Self::ContainerRecovered { .. } => "container_recovered",
            Self::SyncSkipped { .. } => "sync_skipped",
            Self::Stream { .. } => "stream",
        }
    }

    /// The SSE payload: the event's fields as a JSON object.
    pub fn data(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut map)) => map.remove("data").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    pub fn container_recovered() -> Self {
        Self::ContainerRecovered {
            message: "Container recovered".to_owned(),
            recovered: true,
        }
    }

    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::Error {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// One NDJSON line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"event":"error","data":{"code":"internal","message":"unserialisable event"}}"#
                .to_owned()
        });
        line.push('\n');
        line
    }
}

/// Checks one `mcp_servers` entry: its `type` (stdio when absent) and the
/// field that type needs. `sdk` servers live in the caller's process and
/// exist only over a session ([`session`]).
pub(crate) fn mcp_server_ok(name: &str, server: &Value, sdk_allowed: bool) -> Result<(), String> {
    let kind = server
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("stdio");
    let needs = match kind {
        "stdio" => "command",
        "http" | "sse" => "url",
        "sdk" if sdk_allowed => "name",
        other => {
            let kinds = match sdk_allowed {
                true => "stdio, http, sse or sdk",
                false => "stdio, http or sse",
            };
            return Err(format!(
                "options.mcp_servers.{name}.type must be {kinds}, not {other:?}"
            ));
        }
    };
    if !server.get(needs).is_some_and(Value::is_string) {
        return Err(format!(
            "options.mcp_servers.{name}.{needs} is required (a string)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips_as_tagged_json() {
        let ev = AgentEvent::ToolUse {
            id: "toolu_1".into(),
            name: "Write".into(),
            input: serde_json::json!({"file_path": "/workspace/a"}),
        };
        let line = ev.to_line();
        assert!(
            line.starts_with(r#"{"event":"tool_use","data":{"#),
            "{line}"
        );
        let back: AgentEvent = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(back, ev);
        assert_eq!(ev.data()["name"], "Write");
    }

    #[test]
    fn unknown_option_is_refused_with_its_name() {
        let err = serde_json::from_str::<AgentOptions>(r#"{"modle":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("modle"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |json: &str| {
            serde_json::from_str::<AgentOptions>(json)
                .unwrap()
                .validate()
                .unwrap_err()
        };
        assert!(bad(r#"{"max_turns":0}"#).contains("max_turns"));
        assert!(bad(r#"{"max_budget_usd":-1}"#).contains("max_budget_usd"));
        assert!(bad(r#"{"model":" "}"#).contains("model"));
        assert!(bad(r#"{"allowed_tools":["Write,Bash"]}"#).contains("allowed_tools"));
        assert!(bad(r#"{"mcp_servers":{"x":{"type":"ftp"}}}"#).contains("mcp_servers.x.type"));
        assert!(bad(r#"{"mcp_servers":{"x":{"type":"http"}}}"#).contains("mcp_servers.x.url"));
        let ok: AgentOptions = serde_json::from_str(
            r#"{"max_turns":3,"mcp_servers":{"fs":{"command":"node","args":["s.js"]},"web":{"type":"sse","url":"https://x"}}}"#,
        )
        .unwrap();
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn permission_mode_uses_sdk_spelling() {
        let o: AgentOptions = serde_json::from_str(r#"{"permission_mode":"acceptEdits"}"#).unwrap();
        assert_eq!(o.permission_mode, Some(PermissionMode::AcceptEdits));
    }
}
