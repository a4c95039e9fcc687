//! The options of an Agent SDK session (`GET /v1/conversations/{id}/session`),
//! spelled as the SDK's `ClaudeAgentOptions` spells them.
//!
//! With a custom transport the SDK does not turn its options into CLI
//! flags, so the client sends them when the session opens and the agent
//! starts the CLI with the flags the SDK's own subprocess transport would
//! use. Options that would weaken isolation or make no sense remotely are
//! refused by name; callbacks (`can_use_tool`, `hooks`) and SDK MCP servers
//! stay in the client and travel over the control protocol.

use crate::PermissionMode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The directory the CLI works in, and the only tree `cwd` and `add_dirs`
/// may name.
pub const WORKSPACE: &str = "/workspace";

/// `extra_args` flags a session may pass, each a flag without a value.
/// Anything else is refused: an unknown flag could undo what the daemon
/// sets (permissions, MCP config, settings).
pub const ALLOWED_EXTRA_ARGS: &[&str] = &["replay-user-messages"];

/// Environment variables a session may not set: they steer the CLI's
/// model connection, proxy, or the process itself.
const RESERVED_ENV_PREFIXES: &[&str] = &[
    "ANTHROPIC_",
    "CLAUDE_",
    "AWS_",
    "AGENTBOX_",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "LD_",
    "NODE_",
    "DISABLE_",
];
const RESERVED_ENV: &[&str] = &["HOME", "PATH", "IS_SANDBOX", "SHELL", "USER"];

/// A session's options. Unknown names are refused (serde names them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_model: Option<String>,
    /// A string, or `{"type": "preset", "preset": "claude_code", "append"?}`.
    /// Absent means an empty system prompt, as in the SDK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<Value>,
    /// A list of tool names, or `{"type": "preset", "preset": "claude_code"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tools: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disallowed_tools: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<PermissionMode>,
    /// `stdio` when the client has a `can_use_tool` callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_prompt_tool_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget_usd: Option<f64>,
    /// As in the SSE API, plus `{"type": "sdk", "name"}` servers that run
    /// in the client's process and answer over the control protocol.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub mcp_servers: Map<String, Value>,
    #[serde(default)]
    pub strict_mcp_config: bool,
    #[serde(default)]
    pub include_partial_messages: bool,
    #[serde(default)]
    pub include_hook_events: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub betas: Vec<String>,
    /// Inside [`WORKSPACE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Inside [`WORKSPACE`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_dirs: Vec<String>,
    /// For the CLI's tools; names that steer the CLI itself are refused.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub env: Map<String, Value>,
    /// Only [`ALLOWED_EXTRA_ARGS`].
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting_sources: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_thinking_tokens: Option<u32>,
    /// `{"type": "adaptive" | "enabled" (with "budget_tokens") | "disabled", "display"?}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effort: Option<String>,
    /// `{"type": "json_schema", "schema": {...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<Value>,

    // Refused, each with its reason (see `refused`). Kept as fields so
    // the error says why, not just "unknown field".
    #[serde(default, skip_serializing)]
    cli_path: Option<Value>,
    #[serde(default, skip_serializing)]
    resume: Option<Value>,
    #[serde(default, skip_serializing)]
    session_id: Option<Value>,
    #[serde(default, skip_serializing)]
    continue_conversation: Option<Value>,
    #[serde(default, skip_serializing)]
    fork_session: Option<Value>,
    #[serde(default, skip_serializing)]
    resume_session_at: Option<Value>,
    #[serde(default, skip_serializing)]
    settings: Option<Value>,
    #[serde(default, skip_serializing)]
    sandbox: Option<Value>,
    #[serde(default, skip_serializing)]
    plugins: Option<Value>,
    #[serde(default, skip_serializing)]
    user: Option<Value>,
}

impl SessionOptions {
    /// Refuses what serde cannot; the error names the option.
    pub fn validate(&self) -> Result<(), String> {
        self.refused()?;
        for (field, v) in [
            ("model", &self.model),
            ("fallback_model", &self.fallback_model),
        ] {
            if v.as_deref()
                .is_some_and(|s| s.trim().is_empty() || s.starts_with('-'))
            {
                return Err(format!("options.{field} must be a model name"));
            }
        }
        if self.max_turns == Some(0) {
            return Err("options.max_turns must be at least 1".to_owned());
        }
        if let Some(b) = self.max_budget_usd {
            if !(b.is_finite() && b > 0.0) {
                return Err("options.max_budget_usd must be a positive number".to_owned());
            }
        }
        for (field, names) in [
            ("allowed_tools", &self.allowed_tools),
            ("disallowed_tools", &self.disallowed_tools),
            ("betas", &self.betas),
        ] {
            if names.iter().any(|t| !is_list_item(t)) {
                return Err(format!(
                    "options.{field} entries must be non-empty names without commas"
                ));
            }
        }
        if let Some(name) = &self.permission_prompt_tool_name {
            if !is_list_item(name) {
                return Err(
                    "options.permission_prompt_tool_name must be a tool name or \"stdio\""
                        .to_owned(),
                );
            }
        }
        system_prompt_ok(self.system_prompt.as_ref())?;
        tools_ok(self.tools.as_ref())?;
        mcp_servers_ok(&self.mcp_servers)?;
        if let Some(cwd) = &self.cwd {
            in_workspace("cwd", cwd)?;
        }
        for dir in &self.add_dirs {
            in_workspace("add_dirs", dir)?;
        }
        env_ok(&self.env)?;
        for (flag, value) in &self.extra_args {
            if !ALLOWED_EXTRA_ARGS.contains(&flag.as_str()) || !value.is_null() {
                return Err(format!(
                    "options.extra_args.{flag} is not allowed remotely (allowed: {}, without a value)",
                    ALLOWED_EXTRA_ARGS.join(", ")
                ));
            }
        }
        for source in self.setting_sources.iter().flatten() {
            if !matches!(source.as_str(), "user" | "project" | "local") {
                return Err(format!(
                    "options.setting_sources entries must be user, project or local, not {source:?}"
                ));
            }
        }
        thinking_ok(self.thinking.as_ref())?;
        if let Some(e) = &self.effort {
            if !matches!(e.as_str(), "low" | "medium" | "high" | "xhigh" | "max") {
                return Err(format!(
                    "options.effort must be low, medium, high, xhigh or max, not {e:?}"
                ));
            }
        }
        if let Some(f) = &self.output_format {
            if f.get("type").and_then(Value::as_str) != Some("json_schema")
                || !f.get("schema").is_some_and(Value::is_object)
            {
                return Err(
                    "options.output_format must be {\"type\": \"json_schema\", \"schema\": {...}}"
                        .to_owned(),
                );
            }
        }
        Ok(())
    }

    /// The names of the SDK MCP servers: the client serves them.
    pub fn sdk_mcp_servers(&self) -> impl Iterator<Item = &str> {
        self.mcp_servers
            .iter()
            .filter(|(_, s)| s.get("type").and_then(Value::as_str) == Some("sdk"))
            .map(|(name, _)| name.as_str())
    }

    fn refused(&self) -> Result<(), String> {
        let refusals: [(&str, bool, &str); 10] = [
            (
                "cli_path",
                self.cli_path.is_some(),
                "the CLI is the container's own",
            ),
            (
                "resume",
                self.resume.is_some(),
                "agentbox resumes the conversation's session itself",
            ),
            (
                "session_id",
                self.session_id.is_some(),
                "agentbox resumes the conversation's session itself",
            ),
            (
                "continue_conversation",
                self.continue_conversation.is_some(),
                "agentbox resumes the conversation's session itself",
            ),
            (
                "fork_session",
                self.fork_session.is_some(),
                "agentbox resumes the conversation's session itself",
            ),
            (
                "resume_session_at",
                self.resume_session_at.is_some(),
                "agentbox resumes the conversation's session itself",
            ),
            (
                "settings",
                self.settings.is_some(),
                "the container's settings are the daemon's",
            ),
            (
                "sandbox",
                self.sandbox.is_some(),
                "the container is the sandbox",
            ),
            (
                "plugins",
                self.plugins.is_some(),
                "plugin directories are on the client's machine",
            ),
            (
                "user",
                self.user.is_some(),
                "the container runs as its own user",
            ),
        ];
        match refusals.iter().find(|(_, set, _)| *set) {
            Some((name, _, why)) => Err(format!("options.{name} is not supported remotely: {why}")),
            None => Ok(()),
        }
    }
}

fn is_list_item(s: &str) -> bool {
    !s.trim().is_empty() && !s.contains(',') && !s.starts_with('-')
}

fn system_prompt_ok(v: Option<&Value>) -> Result<(), String> {
    match v {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Object(o))
            if o.get("type").and_then(Value::as_str) == Some("preset")
                && o.get("append").is_none_or(Value::is_string) =>
        {
            Ok(())
        }
        _ => Err("options.system_prompt must be a string or {\"type\": \"preset\", \"preset\": \"claude_code\", \"append\"?}".to_owned()),
    }
}

fn tools_ok(v: Option<&Value>) -> Result<(), String> {
    match v {
        None => Ok(()),
        Some(Value::Array(names)) if names.iter().all(|n| n.as_str().is_some_and(is_list_item)) => Ok(()),
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("preset") => Ok(()),
        _ => Err("options.tools must be a list of tool names or {\"type\": \"preset\", \"preset\": \"claude_code\"}".to_owned()),
    }
}

fn mcp_servers_ok(servers: &Map<String, Value>) -> Result<(), String> {
    for (name, server) in servers {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "options.mcp_servers: {name:?} is not a server name ([A-Za-z0-9_-]+)"
            ));
        }
        crate::mcp_server_ok(name, server, true)?;
    }
    Ok(())
}

/// `path` is [`WORKSPACE`] or below it, absolute, with no `..`.
fn in_workspace(field: &str, path: &str) -> Result<(), String> {
    let inside = path == WORKSPACE
        || path
            .strip_prefix(WORKSPACE)
            .is_some_and(|rest| rest.starts_with('/'));
    if !inside || path.split('/').any(|part| part == "..") {
        return Err(format!(
            "options.{field} must be {WORKSPACE} or a directory inside it, not {path:?}"
        ));
    }
    Ok(())
}

fn env_ok(env: &Map<String, Value>) -> Result<(), String> {
    for (name, value) in env {
        let well_formed = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !well_formed {
            return Err(format!("options.env: {name:?} is not a variable name"));
        }
        let upper = name.to_ascii_uppercase();
        if RESERVED_ENV.contains(&upper.as_str())
            || RESERVED_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
        {
            return Err(format!(
                "options.env.{name} is not allowed remotely: it steers the CLI or its connection"
            ));
        }
        if !value.is_string() {
            return Err(format!("options.env.{name} must be a string"));
        }
    }
    Ok(())
}

fn thinking_ok(v: Option<&Value>) -> Result<(), String> {
    let Some(t) = v else { return Ok(()) };
    let ok = match t.get("type").and_then(Value::as_str) {
        Some("adaptive" | "disabled") => true,
        Some("enabled") => t.get("budget_tokens").is_some_and(Value::is_u64),
        _ => false,
    } && t.get("display").is_none_or(Value::is_string);
    ok.then_some(()).ok_or_else(|| {
        "options.thinking must be {\"type\": \"adaptive\" | \"disabled\"} or {\"type\": \"enabled\", \"budget_tokens\": N}".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<SessionOptions, String> {
        let o: SessionOptions = serde_json::from_str(json).map_err(|e| e.to_string())?;
        o.validate().map(|()| o)
    }

    #[test]
    fn sdk_options_are_accepted() {
        let o = parse(
            r#"{"model":"claude-x","system_prompt":{"type":"preset","preset":"claude_code","append":"be brief"},
                "allowed_tools":["Write"],"permission_mode":"default","permission_prompt_tool_name":"stdio",
                "max_turns":4,"mcp_servers":{"calc":{"type":"sdk","name":"calc"},"fs":{"command":"node"}},
                "include_partial_messages":true,"cwd":"/workspace/sub","add_dirs":["/workspace"],
                "env":{"MY_TOKEN_NAME":"x"},"extra_args":{"replay-user-messages":null},
                "thinking":{"type":"enabled","budget_tokens":1024},"effort":"high",
                "output_format":{"type":"json_schema","schema":{"type":"object"}}}"#,
        )
        .unwrap();
        assert_eq!(o.sdk_mcp_servers().collect::<Vec<_>>(), ["calc"]);
    }

    #[test]
    fn each_refusal_names_its_option() {
        for (json, name) in [
            (r#"{"cli_path":"/usr/bin/claude"}"#, "options.cli_path"),
            (r#"{"resume":"abc"}"#, "options.resume"),
            (r#"{"settings":"{}"}"#, "options.settings"),
            (r#"{"sandbox":{"enabled":true}}"#, "options.sandbox"),
            (r#"{"cwd":"/etc"}"#, "options.cwd"),
            (r#"{"cwd":"/workspace/../etc"}"#, "options.cwd"),
            (r#"{"cwd":"/workspacex"}"#, "options.cwd"),
            (r#"{"add_dirs":["/"]}"#, "options.add_dirs"),
            (
                r#"{"extra_args":{"dangerously-skip-permissions":null}}"#,
                "options.extra_args.dangerously-skip-permissions",
            ),
            (
                r#"{"extra_args":{"replay-user-messages":"x"}}"#,
                "options.extra_args.replay-user-messages",
            ),
            (
                r#"{"env":{"ANTHROPIC_BASE_URL":"http://evil"}}"#,
                "options.env.ANTHROPIC_BASE_URL",
            ),
            (r#"{"env":{"https_proxy":"x"}}"#, "options.env.https_proxy"),
            (
                r#"{"mcp_servers":{"x":{"type":"ftp"}}}"#,
                "options.mcp_servers.x.type",
            ),
            (
                r#"{"mcp_servers":{"x":{"type":"sdk"}}}"#,
                "options.mcp_servers.x.name",
            ),
            (
                r#"{"model":"--dangerously-skip-permissions"}"#,
                "options.model",
            ),
            (r#"{"max_turns":0}"#, "options.max_turns"),
            (r#"{"thinking":{"type":"enabled"}}"#, "options.thinking"),
            (r#"{"effort":"extreme"}"#, "options.effort"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(name), "{json}: {err}");
        }
        let err = parse(r#"{"hooks":{}}"#).unwrap_err();
        assert!(err.contains("hooks"), "{err}");
    }
}
