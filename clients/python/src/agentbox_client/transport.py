"""`AgentboxTransport`: the SDK's `Transport` over an agentbox session
WebSocket (`GET /v1/conversations/{id}/session`). One text message per
stream-json line both ways; `{"type":"end_input"}` closes the CLI's stdin.
asyncio only (the `websockets` library), which is the SDK's default."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit, urlencode

import anyio
from claude_agent_sdk import ClaudeAgentOptions, Transport
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from .errors import AgentboxConnectionLost, AgentboxError, http_error
from .options import options_to_json

_END_INPUT = '{"type":"end_input"}'


class AgentboxTransport(Transport):
    """Runs the SDK's agent in an agentbox container.

    `base_url` is the daemon's (`https://host:8443`), `token` a tenant's API
    token, `options` the same `ClaudeAgentOptions` given to the SDK (the
    SDK does not hand them to a custom transport). Every wait is bounded:
    `open_timeout` for the upgrade, `close_timeout` for the close handshake,
    `max_message_bytes` for one line from the daemon. `egress_rules`, when
    given, narrows the session's egress to those of the tenant's rules
    (docs/api.md); an empty list keeps none."""

    def __init__(
        self,
        base_url: str,
        token: str,
        conversation_id: str,
        options: ClaudeAgentOptions | None = None,
        *,
        open_timeout: float = 60.0,
        close_timeout: float = 10.0,
        max_message_bytes: int = 8 * 1024 * 1024,
        egress_rules: list[str] | None = None,
    ) -> None:
        self._url = session_url(base_url, conversation_id, options_to_json(options), egress_rules)
        self._token = token
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._max_message_bytes = max_message_bytes
        self._ws: ClientConnection | None = None
        self._ready = False
        self._input_ended = False
        # How the session was lost, once it was: writes after it raise it too.
        self._lost: AgentboxConnectionLost | None = None
        self._write_lock = anyio.Lock()

    async def connect(self) -> None:
        if self._ws is not None:
            return
        try:
            self._ws = await connect(
                self._url,
                additional_headers={"Authorization": f"Bearer {self._token}"},
                open_timeout=self._open_timeout,
                close_timeout=self._close_timeout,
                max_size=self._max_message_bytes,
                # The daemon may hold a line back while the CLI thinks; pings
                # keep idle middleboxes from cutting the socket.
                ping_interval=20,
                ping_timeout=20,
            )
        except InvalidStatus as e:
            raise http_error(e.response.status_code, e.response.body or b"") from None
        except (OSError, TimeoutError, WebSocketException) as e:
            raise AgentboxError(f"cannot open the agentbox session at {self._url}: {e}") from e
        self._ready = True

    async def write(self, data: str) -> None:
        async with self._write_lock:
            if self._lost is not None:
                raise self._lost
            if not self._ready or self._ws is None or self._input_ended:
                raise AgentboxError("the agentbox session is not open for writing")
            try:
                # The SDK writes newline-terminated JSON; the wire is one line a message.
                for line in data.splitlines():
                    if line.strip():
                        await self._ws.send(line)
            except ConnectionClosed as e:
                self._ready = False
                self._lost = _lost(e)
                raise self._lost from e

    async def end_input(self) -> None:
        async with self._write_lock:
            if self._ws is None or self._input_ended:
                return
            self._input_ended = True
            try:
                await self._ws.send(_END_INPUT)
            except ConnectionClosed:
                pass  # read_messages reports how the session ended

    def read_messages(self) -> AsyncIterator[dict[str, Any]]:
        return self._read()

    async def _read(self) -> AsyncIterator[dict[str, Any]]:
        ws = self._ws
        if ws is None:
            raise AgentboxError("the agentbox session is not connected")
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    message = message.decode("utf-8", "replace")
                try:
                    parsed = json.loads(message)
                except ValueError as e:
                    raise AgentboxError(f"agentbox sent a line that is not JSON: {message[:200]!r}") from e
                if isinstance(parsed, dict):
                    yield parsed
        except ConnectionClosed as e:
            self._lost = _lost(e)
            raise self._lost from e
        finally:
            self._ready = False
        # The iterator ends without an exception only on a normal close.
        rcvd = ws.close_code
        if rcvd not in (None, 1000):
            self._lost = AgentboxConnectionLost(rcvd, ws.close_reason or "")
            raise self._lost

    async def close(self) -> None:
        self._ready = False
        ws, self._ws = self._ws, None
        if ws is None:
            return
        # The SDK calls this shielded: bound the handshake ourselves, and
        # drop the socket if the daemon does not answer in time.
        with anyio.move_on_after(self._close_timeout + 1):
            try:
                await ws.close()
            except Exception:
                pass
        ws.transport.abort()

    def is_ready(self) -> bool:
        return self._ready


def _lost(e: ConnectionClosed) -> AgentboxConnectionLost:
    frame = e.rcvd
    if frame is not None and frame.code == 1000:
        return AgentboxConnectionLost(1000, "the daemon ended the session")
    if frame is not None:
        return AgentboxConnectionLost(frame.code, frame.reason)
    if e.sent is not None:
        # This side closed: a line over `max_message_bytes` (1009), a missed ping.
        return AgentboxConnectionLost(e.sent.code, e.sent.reason)
    # No close frame at all: the daemon's host died (a crash, kill -9, a lost
    # machine) or the network between went away. The conversation's next
    # session works on another host behind a load balancer (docs/scale-out.md).
    return AgentboxConnectionLost(
        None, "host_lost: the connection dropped without a close frame; the daemon's host may be gone"
    )


def session_url(
    base_url: str,
    conversation_id: str,
    options: dict[str, Any],
    egress_rules: list[str] | None = None,
) -> str:
    """The session endpoint's `ws(s)://` URL for `conversation_id`."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"base_url must be an http(s):// URL, not {base_url!r}")
    path = f"{parts.path.rstrip('/')}/v1/conversations/{quote(conversation_id, safe='')}/session"
    params = {"options": json.dumps(options, separators=(",", ":"))} if options else {}
    if egress_rules is not None:
        params["egress_rules"] = ",".join(egress_rules)
    query = urlencode(params)
    return urlunsplit((scheme, parts.netloc, path, query, ""))
