"""`ClaudeAgentOptions` to the session endpoint's `options` JSON.

With a custom transport the SDK turns no option into CLI flags; the daemon's
agent does, from this JSON. Every field that differs from its default is
sent under its own name, so a field the daemon refuses (`cli_path`,
`resume`, ...) or does not know comes back as a 400 naming it instead of
being dropped here without a word."""

from __future__ import annotations

import dataclasses
import json
from os import PathLike
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions

from .errors import AgentboxOptionsError

# Fields that stay in the caller's process: callables, and what the SDK sends
# itself in its `initialize` control request (hooks, agents) or uses itself
# when it frames messages and sessions.
_LOCAL = frozenset(
    {
        "can_use_tool",
        "hooks",
        "agents",
        "stderr",
        "debug_stderr",
        "max_buffer_size",
        "session_store",
        "session_store_flush",
        "load_timeout_ms",
        "verbatim_prompts",
        "forward_subagent_text",
        "client_app",
    }
)


def _jsonable(name: str, value: Any) -> Any:
    if isinstance(value, PathLike):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(name, v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(name, v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise AgentboxOptionsError(400, "bad_request", f"options.{name}: {type(value).__name__} cannot be sent to agentbox")


def _mcp_servers(value: Any) -> dict[str, Any]:
    if isinstance(value, (str, PathLike)):
        # A JSON string works; a path names a file on this machine, not the container's.
        try:
            parsed = json.loads(str(value))
            servers = parsed.get("mcpServers", parsed)
        except (ValueError, AttributeError):
            raise AgentboxOptionsError(
                400, "bad_request", "options.mcp_servers: give a dict (a config file path is on the client's machine)"
            ) from None
        return _jsonable("mcp_servers", servers)  # type: ignore[no-any-return]
    out: dict[str, Any] = {}
    for name, config in value.items():
        if isinstance(config, dict) and config.get("type") == "sdk":
            # In-process server: the CLI learns only its name; its calls come
            # back as `mcp_message` control requests to this process.
            out[name] = {"type": "sdk", "name": config.get("name", name)}
        else:
            out[name] = _jsonable("mcp_servers", config)
    return out


def options_to_json(options: ClaudeAgentOptions | None) -> dict[str, Any]:
    """The `options` object the session endpoint takes for `options`."""
    if options is None:
        return {}
    default = ClaudeAgentOptions()
    out: dict[str, Any] = {}
    for field in dataclasses.fields(options):
        name = field.name
        value = getattr(options, name)
        if name in _LOCAL or value == getattr(default, name):
            continue
        if name == "mcp_servers":
            servers = _mcp_servers(value)
            if servers:
                out[name] = servers
        else:
            out[name] = _jsonable(name, value)
    if options.can_use_tool is not None and "permission_prompt_tool_name" not in out:
        # As the SDK does for its own subprocess: permission prompts come to
        # this process over the control protocol.
        out["permission_prompt_tool_name"] = "stdio"
    return out
