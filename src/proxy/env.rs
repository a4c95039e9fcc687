//! The environment a workspace container gets: how its CLI reaches the
//! model gateway, and nothing secret.

use crate::config::Config;
use workspace_agent::protocol::GATEWAY_ADDR;

/// The key the CLI sends to the gateway; the proxy replaces it.
pub const PLACEHOLDER_API_KEY: &str = "agentbox-placeholder-key";

pub fn container_env(cfg: &Config) -> Vec<(String, String)> {
    let gateway = format!("http://{GATEWAY_ADDR}");
    [
        ("ANTHROPIC_BASE_URL", gateway.as_str()),
        ("ANTHROPIC_API_KEY", PLACEHOLDER_API_KEY),
        ("NO_PROXY", "127.0.0.1,localhost"),
        ("DISABLE_TELEMETRY", "1"),
        ("DISABLE_ERROR_REPORTING", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("CLAUDE_CODE_DISABLE_TERMINAL_TITLE", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([(
        "CLAUDE_CODE_MAX_RETRIES".to_owned(),
        cfg.model.max_retries.to_string(),
    )])
    .collect()
}
