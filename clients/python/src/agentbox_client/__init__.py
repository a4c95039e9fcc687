"""Claude Agent SDK programs with their agent in an agentbox container."""

from .errors import (
    AgentboxAuthError,
    AgentboxConflictError,
    AgentboxConnectionLost,
    AgentboxError,
    AgentboxHTTPError,
    AgentboxOptionsError,
)
from .options import options_to_json
from .transport import AgentboxTransport, session_url

__all__ = [
    "AgentboxAuthError",
    "AgentboxConflictError",
    "AgentboxConnectionLost",
    "AgentboxError",
    "AgentboxHTTPError",
    "AgentboxOptionsError",
    "AgentboxTransport",
    "options_to_json",
    "session_url",
]
