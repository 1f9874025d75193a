"""Exceptions of the DERP client and server (all under :class:`~agentconn.errors.AgentConnError`).

Network input never raises out of a sans-IO core: a core that meets a fatal protocol error
ends the connection and reports it as a :class:`~.events.ConnectionTerminated` event carrying
one of these. The asyncio adapters raise them to callers (for example from ``connect()``).
"""

from __future__ import annotations

from ...errors import AgentConnError

__all__ = [
    "DerpClosedError",
    "DerpConnectError",
    "DerpError",
    "DerpLoginError",
    "DerpProtocolError",
    "DerpSendError",
]


class DerpError(AgentConnError):
    """Root of the DERP errors."""


class DerpConnectError(DerpError):
    """The DERP node could not be reached or refused the upgrade (dial, TLS, HTTP status).

    ``status`` is the HTTP status of a refused upgrade (``None`` when none arrived);
    ``forced_websocket`` is True when the refusal (a 4xx) switched the client to websockets.
    """

    def __init__(self, message: str, *, status: int | None = None,
                 forced_websocket: bool = False) -> None:
        self.status = status
        self.forced_websocket = forced_websocket
        super().__init__(message)


class DerpProtocolError(DerpError):
    """The peer broke the DERP protocol (bad greeting, box that does not open, oversized or
    malformed frame)."""


class DerpLoginError(DerpProtocolError):
    """The login handshake failed (ServerKey/ClientInfo/ServerInfo, or its deadline)."""


class DerpClosedError(DerpError):
    """The DERP client or connection is closed."""


class DerpSendError(DerpError, ValueError):
    """A packet cannot be sent as given (larger than ``MaxPacketSize``, key not 32 bytes)."""
