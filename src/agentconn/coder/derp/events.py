"""Events of the DERP cores (:mod:`.client`, :mod:`.server`) and of the asyncio client.

Each is a frozen, slotted dataclass; times are seconds, keys are
:class:`~agentconn.coder.keys.NodePublic`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..keys import NodePublic
from .errors import DerpError
from .frames import ClientInfo

__all__ = [
    "ClientAuthenticated",
    "Connected",
    "ConnectionTerminated",
    "DerpEvent",
    "Disconnected",
    "Health",
    "KeepAlive",
    "NotePreferred",
    "PacketReceived",
    "PacketToForward",
    "PeerGone",
    "PeerPresent",
    "Ping",
    "Pong",
    "Restarting",
    "ServerEvent",
]

# ----- client side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The ServerInfo arrived: the login is complete.

    ``server_key``: the DERP server's public key. ``generation``: 1 for the first connection
    of an asyncio client, +1 per reconnection (a caller re-announces itself when > 1).
    ``token_bucket_bytes_per_second``/``token_bucket_bytes_burst``: the server's advisory
    send rate (0 = none).
    """

    server_key: NodePublic
    generation: int = 1
    token_bucket_bytes_per_second: int = 0
    token_bucket_bytes_burst: int = 0


@dataclass(frozen=True, slots=True)
class PacketReceived:
    """A RecvPacket: ``data`` sent by node key ``src`` (disco if it starts with the disco
    magic, else WireGuard)."""

    src: NodePublic
    data: bytes


@dataclass(frozen=True, slots=True)
class PeerGone:
    """``peer`` is gone from this server: ``reason`` 0 = Disconnected (it left after sending
    to us), 1 = NotHere (we sent disco to a key the server does not know)."""

    peer: NodePublic
    reason: int


@dataclass(frozen=True, slots=True)
class PeerPresent:
    """``peer`` connected (only mesh watchers get these)."""

    peer: NodePublic


@dataclass(frozen=True, slots=True)
class Ping:
    """The server pinged us with ``data`` (8 bytes); the core already queued the Pong."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to our Ping carrying ``data`` (8 bytes)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Health:
    """The server's view of our connection: ``problem`` text, ``""`` when healthy again."""

    problem: str


@dataclass(frozen=True, slots=True)
class Restarting:
    """The server is restarting: reconnect after ``reconnect_in`` seconds and keep trying for
    ``try_for`` seconds (both advisory)."""

    reconnect_in: float
    try_for: float


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A server keepalive arrived (no reply needed)."""


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The core ended the connection: ``reason`` in words; ``error`` is set when the peer
    broke the protocol or a deadline passed (``None`` for an orderly EOF or local close)."""

    reason: str
    error: DerpError | None = None


@dataclass(frozen=True, slots=True)
class Disconnected:
    """(asyncio client) The connection dropped; the client reconnects unless closed.

    ``reason``: why; ``reconnect_in``: seconds until the next attempt (``None`` when closed).
    """

    reason: str
    reconnect_in: float | None


DerpEvent = (
    Connected | PacketReceived | PeerGone | PeerPresent | Ping | Pong | Health | Restarting
    | KeepAlive | ConnectionTerminated | Disconnected
)

# ----- server side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientAuthenticated:
    """The client proved its key (the ClientInfo box opened); ServerInfo is queued."""

    client_key: NodePublic
    info: ClientInfo


@dataclass(frozen=True, slots=True)
class PacketToForward:
    """The client sent ``data`` for ``dst`` (a SendPacket)."""

    dst: NodePublic
    data: bytes


@dataclass(frozen=True, slots=True)
class NotePreferred:
    """The client says whether we are its home region."""

    preferred: bool


ServerEvent = ClientAuthenticated | PacketToForward | NotePreferred | Ping | ConnectionTerminated
