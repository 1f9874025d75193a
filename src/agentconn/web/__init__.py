"""HTTP/1.1 (h11) and websocket (wsproto) over any asyncio (StreamReader, StreamWriter) pair.

h11 and wsproto are the sans-IO cores; the modules here are the thin asyncio adapters around
them: :mod:`.client` (keep-alive pooled client), :mod:`.server` (per-connection server loop)
and :mod:`.websocket` (client connect and server upgrade).
"""

from __future__ import annotations

from .client import HttpClient, Response
from .errors import (
    ConnectionClosed,
    HttpTimeoutError,
    LocalProtocolError,
    RemoteProtocolError,
    WebError,
    WebSocketRejected,
)
from .headers import Headers
from .server import HttpServer, Request, ServerResponse, json_response
from .websocket import WebSocket, websocket_connect

__all__ = [
    "ConnectionClosed",
    "Headers",
    "HttpClient",
    "HttpServer",
    "HttpTimeoutError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "ServerResponse",
    "WebError",
    "WebSocket",
    "WebSocketRejected",
    "json_response",
    "websocket_connect",
]
