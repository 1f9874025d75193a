"""Websockets to a web app in the workspace, through the tunnel (``AgentConn.websocket``).

Theory of operation: :meth:`AgentConn.dial` opens a TCP stream to the agent's port through the
tunnel and :func:`~agentconn.web.websocket.websocket_connect` runs the RFC 6455 handshake on
it with wsproto's sans-IO core (the same client the Coder DERP and tailnet code use), so the
result is an ordinary :class:`~agentconn.web.websocket.WebSocket`: ``send``, ``receive``,
``ping``, ``close``, permessage-deflate when the server accepts it.

The other route, for code written against httpx, is httpx-ws on :meth:`AgentConn.http_client`:
``async with httpx_ws.aconnect_ws("/ws", conn.http_client(8000)) as ws`` works unchanged,
because the tunnel transport hands httpx the upgraded connection (httpcore's
``network_stream`` extension) as httpx's own transport does.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from agentconn.web.websocket import DEFAULT_MAX_MESSAGE_SIZE, WebSocket, websocket_connect

if TYPE_CHECKING:
    from .conn import AgentConn

__all__ = ["websocket"]


async def websocket(conn: AgentConn, port: int, path: str = "/", *, host: str | None = None,
                    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
                    subprotocols: Iterable[str] = (), compression: bool = True,
                    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                    timeout: float | None = 30.0) -> WebSocket:
    """An open websocket to ``path`` on the agent's ``port``.

    ``host`` is the Host header (default ``localhost:<port>``, what a browser on the
    workspace would send). Raises :class:`~agentconn.web.errors.WebSocketRejected` when the
    server refuses the upgrade (its ``status_hint`` is the HTTP status), ``OSError`` when
    nothing listens on ``port``.
    """
    reader, writer = await conn.dial("tcp", port)
    return await websocket_connect(
        reader, writer, host or f"localhost:{port}", path, headers=headers,
        subprotocols=subprotocols, compression=compression,
        max_message_size=max_message_size, timeout=timeout)
