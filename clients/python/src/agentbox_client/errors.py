"""The client's exceptions. All are `CLIConnectionError`s of the SDK, so a
program that handles the SDK's connection errors handles these too."""

from __future__ import annotations

import re

from claude_agent_sdk import CLIConnectionError


class AgentboxError(CLIConnectionError):
    """Something went wrong between the client and the daemon."""


class AgentboxHTTPError(AgentboxError):
    """The daemon refused the session before the WebSocket upgrade."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"agentbox refused the session: {status} {code or ''}: {message}".strip())


class AgentboxAuthError(AgentboxHTTPError):
    """401: the token is missing, wrong or revoked."""


class AgentboxConflictError(AgentboxHTTPError):
    """409: the conversation already has a live session or run."""


# `options.cli_path: ...` from the daemon's checks, or serde's
# "unknown field `name`" for a name it does not know.
_OPTION_NAME = re.compile(r"options\.([A-Za-z_]+)|unknown field `([A-Za-z_]+)`")


class AgentboxOptionsError(AgentboxHTTPError):
    """400: an option was refused; `option` names it when the daemon did."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(status, code, message)
        m = _OPTION_NAME.search(message)
        self.option: str | None = (m.group(1) or m.group(2)) if m else None


class AgentboxConnectionLost(AgentboxError):
    """The session ended abnormally: the daemon closed with an error (1011,
    `code` and `message` from its reason) or the socket dropped (`code`
    `host_lost`: no close frame came, the daemon's host may be gone)."""

    def __init__(self, close_code: int | None, reason: str) -> None:
        self.close_code = close_code
        self.reason = reason
        code, _, message = reason.partition(": ")
        self.code: str | None = code if message else None
        self.message = message or reason
        super().__init__(f"agentbox session lost (close {close_code}): {reason or 'no reason'}")


def http_error(status: int, body: bytes) -> AgentboxHTTPError:
    """The exception for a refused upgrade, from the daemon's error body
    (`{"error": {"code", "message"}}`)."""
    import json

    code: str | None = None
    message = body[:500].decode("utf-8", "replace")
    try:
        err = json.loads(body)["error"]
        code, message = str(err.get("code")), str(err.get("message"))
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    cls = {401: AgentboxAuthError, 409: AgentboxConflictError, 400: AgentboxOptionsError}.get(
        status, AgentboxHTTPError
    )
    return cls(status, code, message)
