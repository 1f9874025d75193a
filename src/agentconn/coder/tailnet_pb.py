"""The messages of protobuf package ``coder.tailnet.v2`` that the coordinator RPCs carry.

Field numbers and types are those of coder-control-plane.md §4.2–§4.5 (Coder's
``tailnet/proto/tailnet.proto``); the codec is :mod:`agentconn.coder.protobuf`. Each message is
a frozen dataclass with ``encode() -> bytes`` and ``decode(data) -> message``; both directions
are needed because the client sends requests and parses responses while the test coordinator
does the reverse.

Nested proto messages are flattened to module-level names: ``CoordinateRequest.Tunnel`` is
:class:`Tunnel`, ``CoordinateResponse.PeerUpdate`` is :class:`PeerUpdate`, ``DERPMap.Region``
is :class:`DERPRegion` and ``DERPMap.Region.Node`` is :class:`DERPNode`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

from .errors import ProtobufError
from .protobuf import Field, FieldType, Message

__all__ = [
    "CoordinateRequest",
    "CoordinateResponse",
    "DERPMap",
    "DERPNode",
    "DERPRegion",
    "Disconnect",
    "HomeParams",
    "Node",
    "PeerUpdate",
    "PeerUpdateKind",
    "ReadyForHandshake",
    "StreamDERPMapsRequest",
    "Timestamp",
    "Tunnel",
    "UpdateSelf",
]

T = FieldType


def _uuid_of(raw: bytes, what: str) -> uuid.UUID:
    if len(raw) != 16:
        # Go: uuid.FromBytes -> "invalid UUID (got N bytes)"; the coordinator then reports
        # "unable to convert bytes to UUID"
        raise ProtobufError(f"{what}: unable to convert bytes to UUID (got {len(raw)} bytes)")
    return uuid.UUID(bytes=raw)


@dataclass(frozen=True, slots=True)
class Timestamp(Message):
    """``google.protobuf.Timestamp``: seconds since the Unix epoch and nanoseconds."""

    seconds: int = 0
    nanos: int = 0
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field(1, "seconds", T.INT64),
        Field(2, "nanos", T.INT32),
    )

    @classmethod
    def from_time(cls, unix_seconds: float) -> Timestamp:
        """From ``time.time()``-style seconds, at microsecond precision (as Go's dbtime)."""
        micros = round(unix_seconds * 1_000_000)
        seconds, micro = divmod(micros, 1_000_000)
        return cls(seconds, micro * 1000)

    def to_time(self) -> float:
        """Seconds since the Unix epoch."""
        return self.seconds + self.nanos / 1e9


@dataclass(frozen=True, slots=True)
class Node(Message):
    """A tailnet node (§4.2). ``key`` is ``b"np"`` + the 32-byte WireGuard public key;
    ``disco`` is ``"discokey:" + 64 hex``; prefixes are text (``fd7a:…/128``)."""

    id: int = 0
    as_of: Timestamp | None = None
    key: bytes = b""
    disco: str = ""
    preferred_derp: int = 0
    derp_latency: dict[str, float] = field(default_factory=dict, hash=False)
    derp_forced_websocket: dict[int, str] = field(default_factory=dict, hash=False)
    addresses: tuple[str, ...] = ()
    allowed_ips: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field(1, "id", T.INT64),
        Field(2, "as_of", T.MESSAGE, message=Timestamp),
        Field(3, "key", T.BYTES),
        Field(4, "disco", T.STRING),
        Field(5, "preferred_derp", T.INT32),
        Field(6, "derp_latency", T.DOUBLE, map_key=T.STRING),
        Field(7, "derp_forced_websocket", T.STRING, map_key=T.INT32),
        Field(8, "addresses", T.STRING, repeated=True),
        Field(9, "allowed_ips", T.STRING, repeated=True),
        Field(10, "endpoints", T.STRING, repeated=True),
    )


@dataclass(frozen=True, slots=True)
class UpdateSelf(Message):
    """``CoordinateRequest.UpdateSelf``: our node, for every tunnel peer."""

    node: Node | None = None
    FIELDS: ClassVar[tuple[Field, ...]] = (Field(1, "node", T.MESSAGE, message=Node),)


@dataclass(frozen=True, slots=True)
class Disconnect(Message):
    """``CoordinateRequest.Disconnect``: graceful leave (empty)."""

    FIELDS: ClassVar[tuple[Field, ...]] = ()


@dataclass(frozen=True, slots=True)
class Tunnel(Message):
    """``CoordinateRequest.Tunnel``: the peer's 16-byte UUID (RFC 4122 byte order)."""

    id: bytes = b""
    FIELDS: ClassVar[tuple[Field, ...]] = (Field(1, "id", T.BYTES),)

    @classmethod
    def to(cls, peer: uuid.UUID) -> Tunnel:
        return cls(peer.bytes)

    @property
    def uuid(self) -> uuid.UUID:
        """The id as a UUID; raises :class:`ProtobufError` unless it is 16 bytes."""
        return _uuid_of(self.id, "tunnel id")


@dataclass(frozen=True, slots=True)
class ReadyForHandshake(Message):
    """``CoordinateRequest.ReadyForHandshake``: sent by agents only (§4.3)."""

    id: bytes = b""
    FIELDS: ClassVar[tuple[Field, ...]] = (Field(1, "id", T.BYTES),)

    @property
    def uuid(self) -> uuid.UUID:
        return _uuid_of(self.id, "ready_for_handshake id")


@dataclass(frozen=True, slots=True)
class CoordinateRequest(Message):
    """Client → coordinator (§4.3). Go clients set one field per message."""

    update_self: UpdateSelf | None = None
    disconnect: Disconnect | None = None
    add_tunnel: Tunnel | None = None
    remove_tunnel: Tunnel | None = None
    ready_for_handshake: tuple[ReadyForHandshake, ...] = ()
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field(1, "update_self", T.MESSAGE, message=UpdateSelf),
        Field(2, "disconnect", T.MESSAGE, message=Disconnect),
        Field(3, "add_tunnel", T.MESSAGE, message=Tunnel),
        Field(4, "remove_tunnel", T.MESSAGE, message=Tunnel),
        Field(5, "ready_for_handshake", T.MESSAGE, repeated=True, message=ReadyForHandshake),
    )


class PeerUpdateKind(IntEnum):
    """``CoordinateResponse.PeerUpdate.Kind``."""

    KIND_UNSPECIFIED = 0
    NODE = 1
    DISCONNECTED = 2
    LOST = 3
    READY_FOR_HANDSHAKE = 4


@dataclass(frozen=True, slots=True)
class PeerUpdate(Message):
    """``CoordinateResponse.PeerUpdate``: ``node`` is set for NODE only. ``kind`` is a
    :class:`PeerUpdateKind`, or a plain int for a kind newer than this code."""

    id: bytes = b""
    node: Node | None = None
    kind: PeerUpdateKind | int = PeerUpdateKind.KIND_UNSPECIFIED
    reason: str = ""
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field(1, "id", T.BYTES),
        Field(2, "node", T.MESSAGE, message=Node),
        Field(3, "kind", T.ENUM, enum=PeerUpdateKind),
        Field(4, "reason", T.STRING),
    )

    @property
    def uuid(self) -> uuid.UUID:
        return _uuid_of(self.id, "peer update id")


@dataclass(frozen=True, slots=True)
class CoordinateResponse(Message):
    """Coordinator → client (§4.4). ``error`` comes alone (newer servers)."""

    peer_updates: tuple[PeerUpdate, ...] = ()
    error: str = ""
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field(1, "peer_updates", T.MESSAGE, repeated=True, message=PeerUpdate),
        Field(2, "error", T.STRING),
    )


@dataclass(frozen=True, slots=True)
class DERPNode(Message):
    """``DERPMap.Region.Node`` (§4.5; JSON twin in §1.5). ``stun_port`` −1 = no STUN."""

    name: str = ""
    region_id: int = 0
    host_name: str = ""
    cert_name: str = ""
    ipv4: str = ""
    ipv6: str = ""
    stun_port: int = 0
    stun_only: bool = False
    derp_port: int = 0
    insecure_for_tests: bool = False
    force_http: bool = False
    stun_test_ip: str = ""
    can_port_80: bool = False
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field(1, "name", T.STRING),
        Field(2, "region_id", T.INT64),
        Field(3, "host_name", T.STRING),
        Field(4, "cert_name", T.STRING),
        Field(5, "ipv4", T.STRING),
        Field(6, "ipv6", T.STRING),
        Field(7, "stun_port", T.INT32),
        Field(8, "stun_only", T.BOOL),
        Field(9, "derp_port", T.INT32),
        Field(10, "insecure_for_tests", T.BOOL),
        Field(11, "force_http", T.BOOL),
        Field(12, "stun_test_ip", T.STRING),
        Field(13, "can_port_80", T.BOOL),
    )


@dataclass(frozen=True, slots=True)
class DERPRegion(Message):
    """``DERPMap.Region``."""

    region_id: int = 0
    embedded_relay: bool = False
    region_code: str = ""
    region_name: str = ""
    avoid: bool = False
    nodes: tuple[DERPNode, ...] = ()
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field(1, "region_id", T.INT64),
        Field(2, "embedded_relay", T.BOOL),
        Field(3, "region_code", T.STRING),
        Field(4, "region_name", T.STRING),
        Field(5, "avoid", T.BOOL),
        Field(6, "nodes", T.MESSAGE, repeated=True, message=DERPNode),
    )


@dataclass(frozen=True, slots=True)
class HomeParams(Message):
    """``DERPMap.HomeParams``: region id → score."""

    region_score: dict[int, float] = field(default_factory=dict, hash=False)
    FIELDS: ClassVar[tuple[Field, ...]] = (Field(1, "region_score", T.DOUBLE, map_key=T.INT64),)


@dataclass(frozen=True, slots=True)
class DERPMap(Message):
    """The relays to use (§4.5). Go always sets ``home_params`` (``0a 00`` when empty)."""

    home_params: HomeParams | None = None
    regions: dict[int, DERPRegion] = field(default_factory=dict, hash=False)
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field(1, "home_params", T.MESSAGE, message=HomeParams),
        Field(2, "regions", T.MESSAGE, map_key=T.INT64, message=DERPRegion),
    )


@dataclass(frozen=True, slots=True)
class StreamDERPMapsRequest(Message):
    """The (empty) request of ``StreamDERPMaps``."""

    FIELDS: ClassVar[tuple[Field, ...]] = ()
