"""Exceptions raised by :mod:`agentconn.web`.

The h11 split applies (STYLE §7): :class:`LocalProtocolError` means this side misused the API
(for example a body longer than its Content-Length); :class:`RemoteProtocolError` means the
peer broke HTTP or the websocket protocol. Both wrap the h11/wsproto exception as ``__cause__``.
"""

from __future__ import annotations

from ..errors import AgentConnError

__all__ = [
    "ConnectionClosed",
    "HttpTimeoutError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "WebError",
    "WebSocketRejected",
]


class WebError(AgentConnError):
    """Root of the HTTP and websocket errors."""


class LocalProtocolError(WebError):
    """This side tried to do something HTTP or the websocket protocol forbids."""


class RemoteProtocolError(WebError):
    """The peer sent something that breaks HTTP/1.1 or the websocket protocol, or hung up early.

    ``status_hint`` is the HTTP status a server should answer with (h11's
    ``error_status_hint``: 400, or 431 for oversized headers).
    """

    def __init__(self, message: str, *, status_hint: int = 400) -> None:
        self.status_hint = status_hint
        super().__init__(message)


class HttpTimeoutError(WebError, TimeoutError):
    """An HTTP or websocket operation did not complete in time (a :class:`TimeoutError`)."""


class ConnectionClosed(WebError):
    """The websocket is closed; ``code`` and ``reason`` are from the close frame (RFC 6455 §7).

    ``code`` is 1006 when the connection dropped without a close frame (RFC 6455 §7.1.5).
    """

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"websocket closed: code {code}" + (f" ({reason})" if reason else ""))


class WebSocketRejected(RemoteProtocolError):
    """The server answered a websocket upgrade with a normal HTTP response instead of 101.

    ``status`` is its status code, ``headers`` its headers (lower-case names) and ``body`` the
    first 64 KiB of its body, so a caller can decode the server's error message.
    """

    def __init__(self, message: str, *, status: int, headers: dict[str, str],
                 body: bytes) -> None:
        super().__init__(message, status_hint=status)
        self.status = status
        self.headers = headers
        self.body = body
