"""DERP (Designated Encrypted Relay for Packets), protocol version 2, as Coder uses it.

Spec: coder-control-plane.md §5. Layers, bottom up:

- :mod:`.frames`: the wire format (header, frame reprs, ClientInfo/ServerInfo boxes);
- :mod:`.clientconn` / :mod:`.serverconn`: sans-IO cores of a client connection and of the
  server side (a connection, and the :class:`Relay` routing table);
- :mod:`.derpmap`: the DERP map JSON and what to dial;
- :mod:`.transport`: ``Upgrade: DERP`` and websocket byte pipes (asyncio);
- :mod:`.client` (:class:`DerpClient`, :class:`DerpPool`) and :mod:`.server`
  (:class:`DerpServer`): the asyncio adapters.
"""

from __future__ import annotations

from .client import DerpClient, DerpPool
from .clientconn import ClientState, DerpClientConnection
from .derpmap import DerpMap, DerpNode, DerpRegion, home_region_id, rewrite_default_relay
from .errors import (
    DerpClosedError,
    DerpConnectError,
    DerpError,
    DerpLoginError,
    DerpProtocolError,
    DerpSendError,
)
from .events import (
    ClientAuthenticated,
    Connected,
    ConnectionTerminated,
    DerpEvent,
    Disconnected,
    Health,
    KeepAlive,
    NotePreferred,
    PacketReceived,
    PacketToForward,
    PeerGone,
    PeerPresent,
    Ping,
    Pong,
    Restarting,
)
from .frames import MAX_PACKET_SIZE, PROTOCOL_VERSION, ClientInfo, PeerGoneReason, ServerInfo
from .server import DerpServer
from .serverconn import DerpServerConnection, Relay, ServerConnState

__all__ = [
    "MAX_PACKET_SIZE",
    "PROTOCOL_VERSION",
    "ClientAuthenticated",
    "ClientInfo",
    "ClientState",
    "Connected",
    "ConnectionTerminated",
    "DerpClient",
    "DerpClientConnection",
    "DerpClosedError",
    "DerpConnectError",
    "DerpError",
    "DerpEvent",
    "DerpLoginError",
    "DerpMap",
    "DerpNode",
    "DerpPool",
    "DerpProtocolError",
    "DerpRegion",
    "DerpSendError",
    "DerpServer",
    "DerpServerConnection",
    "Disconnected",
    "Health",
    "KeepAlive",
    "NotePreferred",
    "PacketReceived",
    "PacketToForward",
    "PeerGone",
    "PeerGoneReason",
    "PeerPresent",
    "Ping",
    "Pong",
    "Relay",
    "Restarting",
    "ServerConnState",
    "ServerInfo",
    "home_region_id",
    "rewrite_default_relay",
]
