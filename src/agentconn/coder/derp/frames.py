"""The DERP wire format (protocol version 2): frame header, frame types, frame payloads.

Spec: coder-control-plane.md §5.3–§5.5; Go: ``derp/derp.go`` (constants, header),
``derp/derp_client.go`` (client side limits), ``derp/derp_server.go`` (server side limits).

A frame is ``type (1) | length (4, uint32 BE, excluding these 5 bytes) | payload``.

=====  ==============  =====  =============================================================
type   name            dir    payload
=====  ==============  =====  =============================================================
0x01   ServerKey       S→C    magic ``DERP🔑`` (8) + server public key (32) + future bytes
0x02   ClientInfo      C→S    client public key (32) + nonce (24) + NaCl box of JSON
0x03   ServerInfo      S→C    nonce (24) + NaCl box of JSON
0x04   SendPacket      C→S    destination key (32) + packet
0x05   RecvPacket      S→C    source key (32) + packet
0x06   KeepAlive       S→C    empty
0x07   NotePreferred   C→S    1 byte: 01 home region, 00 not
0x08   PeerGone        S→C    key (32) + reason (1, absent on old servers = Disconnected)
0x09   PeerPresent     S→C    key (32) [+ IP (16) + port (2) [+ flags (1)]] (mesh only)
0x0a   ForwardPacket   mesh   src key (32) + dst key (32) + packet
0x10   WatchConns      mesh   empty
0x11   ClosePeer       mesh   key (32)
0x12   Ping            both   8 bytes (server accepts 8..1000, echoes the first 8)
0x13   Pong            both   the 8 bytes of the ping
0x14   Health          S→C    UTF-8 problem text; empty = healthy again
0x15   Restarting      S→C    reconnect_in ms (u32 BE) + try_for ms (u32 BE)
=====  ==============  =====  =============================================================

Two levels, as in smoltcp's ``wire``: :class:`FrameReader` cuts a byte stream into
(type, payload) pairs with a length limit checked on the header, before any payload is
buffered; the ``*Frame`` reprs parse a payload (rejecting what Go rejects) and emit a whole
frame. The ClientInfo/ServerInfo boxes are sealed and opened here, with Go's JSON.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from nacl.bindings import crypto_box, crypto_box_open
from nacl.exceptions import CryptoError

from ..keys import NodePrivate, NodePublic
from .errors import DerpProtocolError

__all__ = [
    "CLIENT_INFO_MAX_LEN",
    "CLIENT_INFO_MIN_LEN",
    "CLIENT_MAX_FRAME_LEN",
    "FRAME_HEADER_LEN",
    "KEEP_ALIVE",
    "KEY_LEN",
    "MAGIC",
    "MAX_INFO_LEN",
    "MAX_PACKET_SIZE",
    "NONCE_LEN",
    "PING_MAX_LEN",
    "PROTOCOL_VERSION",
    "ClientInfo",
    "ClientInfoFrame",
    "FrameReader",
    "FrameType",
    "HealthFrame",
    "KeepAliveFrame",
    "NotePreferredFrame",
    "PeerGoneFrame",
    "PeerGoneReason",
    "PeerPresentFrame",
    "PingFrame",
    "PongFrame",
    "RecvPacketFrame",
    "RestartingFrame",
    "SendPacketFrame",
    "ServerInfo",
    "ServerInfoFrame",
    "ServerKeyFrame",
    "emit_frame",
    "emit_header",
]

#: ``magic``: "DERP🔑" = 44 45 52 50 f0 9f 94 91, opening the ServerKey frame.
MAGIC = "DERP🔑".encode()
FRAME_HEADER_LEN = 5  #: ``frameHeaderLen``: type byte + uint32 length
KEY_LEN = 32  #: ``keyLen``
NONCE_LEN = 24  #: ``nonceLen``
BOX_OVERHEAD = 16  #: Poly1305 tag of a NaCl box
MAX_PACKET_SIZE = 64 << 10  #: ``MaxPacketSize``: a SendPacket/RecvPacket's packet bytes
MAX_INFO_LEN = 1 << 20  #: ``maxInfoLen``: the client's bound on a ServerInfo box
PROTOCOL_VERSION = 2  #: ``ProtocolVersion``: RecvPacket carries the source key
KEEP_ALIVE = 60.0  #: ``KeepAlive``: seconds between server keepalives (plus 0–5 s jitter)
CLIENT_READ_TIMEOUT = 120.0  #: ``Client.Recv``: no frame for 2 minutes ⇒ the client gives up
CLIENT_MAX_FRAME_LEN = 1 << 20  #: client: larger ⇒ "unexpectedly large frame"
SERVER_KEY_READ_LIMIT = 1 << 10  #: client's limit on the ServerKey frame (``recvServerKey``)
CLIENT_INFO_MIN_LEN = KEY_LEN + NONCE_LEN  #: server: shorter ⇒ "short client info"
CLIENT_INFO_MAX_LEN = 256 << 10  #: server: longer ⇒ "long client info"
PING_LEN = 8
PING_MAX_LEN = 1000  #: server: a longer ping body closes the connection
HANDSHAKE_TIMEOUT = 10.0  #: server: deadline for each login step (``accept``)
WRITE_TIMEOUT = 2.0  #: server: ``writeTimeout`` for writes to a client

_HEADER = struct.Struct(">BI")
_U32X2 = struct.Struct(">II")


class FrameType(enum.IntEnum):
    """``frameType`` values (derp.go)."""

    SERVER_KEY = 0x01
    CLIENT_INFO = 0x02
    SERVER_INFO = 0x03
    SEND_PACKET = 0x04
    RECV_PACKET = 0x05
    KEEP_ALIVE = 0x06
    NOTE_PREFERRED = 0x07
    PEER_GONE = 0x08
    PEER_PRESENT = 0x09
    FORWARD_PACKET = 0x0A
    WATCH_CONNS = 0x10
    CLOSE_PEER = 0x11
    PING = 0x12
    PONG = 0x13
    HEALTH = 0x14
    RESTARTING = 0x15


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)


class PeerGoneReason(enum.IntEnum):
    """``PeerGoneReasonType``."""

    DISCONNECTED = 0x00  #: the peer disconnected from this server
    NOT_HERE = 0x01  #: the server has no connection for that key
    MESH_CONN_BROKE = 0xF0  #: invented by Go's mesh watcher; never on the wire


def emit_header(ftype: int, length: int) -> bytes:
    """The 5-byte frame header."""
    return _HEADER.pack(ftype, length)


def emit_frame(ftype: int, payload: bytes = b"") -> bytes:
    """A whole frame: header + payload."""
    return _HEADER.pack(ftype, len(payload)) + payload


class FrameReader:
    """Cuts a DERP byte stream into frames (sans-IO; the buffer side of ``readFrame``).

    Feed bytes with :meth:`feed`. :meth:`header` returns the next frame's (type, length)
    once its 5 header bytes are buffered; then either :meth:`payload` returns the payload once
    all of it is buffered (consuming the frame), or :meth:`discard` drops the frame as its
    bytes arrive, without buffering them (for unknown frame types of any length, as Go's
    ``io.CopyN(io.Discard, …)``). Callers check the length against their limit before
    asking for the payload, so a peer cannot make us buffer more than that limit.
    """

    __slots__ = ("_buf", "_pos", "_skip", "bytes_received")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._skip = 0
        self.bytes_received = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        self.bytes_received += len(data)
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        if data:
            if self._pos and self._pos == len(self._buf):
                self._buf.clear()
                self._pos = 0
            self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes held that no frame has consumed yet."""
        return len(self._buf) - self._pos

    def header(self) -> tuple[int, int] | None:
        """(type, length) of the next frame, or ``None`` until 5 bytes (and any discard)
        are through."""
        if self._skip or len(self._buf) - self._pos < FRAME_HEADER_LEN:
            return None
        return _HEADER.unpack_from(self._buf, self._pos)

    def payload(self) -> bytes | None:
        """The payload of the frame :meth:`header` described, consuming the frame; ``None``
        while incomplete."""
        hdr = self.header()
        if hdr is None:
            return None
        start = self._pos + FRAME_HEADER_LEN
        end = start + hdr[1]
        if end > len(self._buf):
            return None
        data = bytes(self._buf[start:end])
        self._consume(end)
        return data

    def packets(self, ftype: int, max_len: int) -> list[tuple[bytes, bytes]]:
        """Consume the run of complete frames of type ``ftype`` (SendPacket or RecvPacket)
        at the front whose length is between 32 and ``max_len``, in one pass: a
        ``(key, data)`` per frame (the first 32 payload bytes and the rest). Stops at the
        first frame that is incomplete, of another type or out of those bounds, and leaves
        it to :meth:`header`/:meth:`payload` (so every rule about it still applies)."""
        out: list[tuple[bytes, bytes]] = []
        if self._skip:
            return out
        buf, pos, end = self._buf, self._pos, len(self._buf)
        unpack = _HEADER.unpack_from
        with memoryview(buf) as view:  # released before _consume may resize the buffer
            while end - pos >= FRAME_HEADER_LEN:
                t, n = unpack(buf, pos)
                if t != ftype or n < 32 or n > max_len:
                    break
                start = pos + FRAME_HEADER_LEN
                stop = start + n
                if stop > end:
                    break
                out.append((bytes(view[start:start + 32]), bytes(view[start + 32:stop])))
                pos = stop
        if out:
            self._consume(pos)
        return out

    def discard(self) -> None:
        """Drop the frame :meth:`header` described, including bytes not yet received."""
        hdr = self.header()
        if hdr is None:
            return
        start = self._pos + FRAME_HEADER_LEN
        have = len(self._buf) - start
        if have >= hdr[1]:
            self._consume(start + hdr[1])
        else:
            self._skip = hdr[1] - have
            self._consume(len(self._buf))

    def preview(self, limit: int = 64) -> bytes:
        """Up to ``limit`` unconsumed bytes, for error messages."""
        return bytes(self._buf[self._pos:self._pos + limit])

    def _consume(self, end: int) -> None:
        self._pos = end
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0


# ----- JSON bodies of the boxes ---------------------------------------------------------------


def _go_json(obj: dict[str, Any]) -> bytes:
    """JSON as Go's ``json.Marshal`` writes it for these structs (compact, in field order)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """``ClientInfo``: JSON ``{"version":2,"CanAckPings":…}`` (+ ``meshKey``/``IsProber``
    when set). magicsock sends ``{"version":2,"CanAckPings":true}``."""

    version: int = PROTOCOL_VERSION
    can_ack_pings: bool = True
    mesh_key: str = ""
    is_prober: bool = False

    def to_json(self) -> bytes:
        """Go's bytes: ``version`` omitempty, ``meshKey`` omitempty, ``CanAckPings`` always,
        ``IsProber`` omitempty."""
        obj: dict[str, Any] = {}
        if self.mesh_key:
            obj["meshKey"] = self.mesh_key
        if self.version:
            obj["version"] = self.version
        obj["CanAckPings"] = self.can_ack_pings
        if self.is_prober:
            obj["IsProber"] = True
        return _go_json(obj)

    @classmethod
    def from_json(cls, data: bytes) -> ClientInfo:
        """Parse leniently as Go's ``json.Unmarshal`` (unknown fields ignored, names
        case-insensitive). Raises :class:`DerpProtocolError` for non-object or bad JSON."""
        obj = _json_object(data, "client info")
        return cls(
            version=_int_field(obj, "version"),
            can_ack_pings=bool(_field(obj, "CanAckPings", False)),
            mesh_key=str(_field(obj, "meshKey", "") or ""),
            is_prober=bool(_field(obj, "IsProber", False)),
        )


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """``serverInfo``: JSON ``{"version":2}`` plus the token bucket when non-zero (the
    client then rate-limits its sends, frame bytes counted)."""

    version: int = PROTOCOL_VERSION
    token_bucket_bytes_per_second: int = 0
    token_bucket_bytes_burst: int = 0

    def to_json(self) -> bytes:
        """Go's bytes: every field omitempty."""
        obj: dict[str, Any] = {}
        if self.version:
            obj["version"] = self.version
        if self.token_bucket_bytes_per_second:
            obj["TokenBucketBytesPerSecond"] = self.token_bucket_bytes_per_second
        if self.token_bucket_bytes_burst:
            obj["TokenBucketBytesBurst"] = self.token_bucket_bytes_burst
        return _go_json(obj)

    @classmethod
    def from_json(cls, data: bytes) -> ServerInfo:
        """Parse leniently; raises :class:`DerpProtocolError` for bad JSON."""
        obj = _json_object(data, "server info")
        return cls(
            version=_int_field(obj, "version"),
            token_bucket_bytes_per_second=_int_field(obj, "TokenBucketBytesPerSecond"),
            token_bucket_bytes_burst=_int_field(obj, "TokenBucketBytesBurst"),
        )


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DerpProtocolError(f"{what}: invalid JSON: {exc}") from None
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise DerpProtocolError(f"{what}: JSON is a {type(obj).__name__}, not an object")
    return obj


def _field(obj: dict[str, Any], name: str, default: Any) -> Any:
    if name in obj:
        return obj[name]
    lowered = name.lower()
    for k, v in obj.items():  # encoding/json matches field names case-insensitively
        if k.lower() == lowered:
            return v
    return default


def _int_field(obj: dict[str, Any], name: str) -> int:
    v = _field(obj, name, 0)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise DerpProtocolError(f"JSON field {name!r} is not an integer: {v!r}")
    return int(v)


# ----- frame reprs ---------------------------------------------------------------------------


def _key(raw: bytes | memoryview) -> NodePublic:
    return NodePublic(raw)


@dataclass(frozen=True, slots=True)
class ServerKeyFrame:
    """0x01: the server's greeting. ``extra`` holds bytes after the key (future use)."""

    server_key: NodePublic
    extra: bytes = b""

    @classmethod
    def parse(cls, payload: bytes) -> ServerKeyFrame:
        """``recvServerKey``: length ≥ 40 and the magic, else "invalid server greeting"."""
        if len(payload) < len(MAGIC) + KEY_LEN or payload[:len(MAGIC)] != MAGIC:
            raise DerpProtocolError("invalid server greeting")
        return cls(_key(payload[len(MAGIC):len(MAGIC) + KEY_LEN]),
                   payload[len(MAGIC) + KEY_LEN:])

    def emit(self) -> bytes:
        return emit_frame(FrameType.SERVER_KEY, MAGIC + bytes(self.server_key) + self.extra)


@dataclass(frozen=True, slots=True)
class ClientInfoFrame:
    """0x02: the client's key and a box (nonce ‖ ciphertext) to the server's key."""

    client_key: NodePublic
    box: bytes

    @classmethod
    def create(
        cls,
        client_private: NodePrivate,
        server_key: NodePublic,
        info: ClientInfo,
        *,
        nonce: bytes | None = None,
    ) -> ClientInfoFrame:
        """``sendClientKey``: seal ``info`` from the client to the server (``SealTo``)."""
        return cls(client_private.public, _seal(client_private, server_key, info.to_json(), nonce))

    @classmethod
    def parse(cls, payload: bytes) -> ClientInfoFrame:
        """``recvClientKey``'s size checks: 56 ≤ length ≤ 256 KiB."""
        if len(payload) < CLIENT_INFO_MIN_LEN:
            raise DerpProtocolError("short client info")
        if len(payload) > CLIENT_INFO_MAX_LEN:
            raise DerpProtocolError("long client info")
        return cls(_key(payload[:KEY_LEN]), payload[KEY_LEN:])

    def open(self, server_private: NodePrivate) -> ClientInfo:
        """``OpenFrom`` + JSON; raises :class:`DerpProtocolError` with Go's wording."""
        msg = _open(server_private, self.client_key, self.box)
        if msg is None:
            raise DerpProtocolError(
                f"msgbox: cannot open len={len(self.box)} with client key {self.client_key}"
            )
        return ClientInfo.from_json(msg)

    def emit(self) -> bytes:
        return emit_frame(FrameType.CLIENT_INFO, bytes(self.client_key) + self.box)


@dataclass(frozen=True, slots=True)
class ServerInfoFrame:
    """0x03: a box (nonce ‖ ciphertext) from the server to the client."""

    box: bytes

    @classmethod
    def create(
        cls,
        server_private: NodePrivate,
        client_key: NodePublic,
        info: ServerInfo,
        *,
        nonce: bytes | None = None,
    ) -> ServerInfoFrame:
        """``sendServerInfo``: seal ``info`` from the server to the client."""
        return cls(_seal(server_private, client_key, info.to_json(), nonce))

    @classmethod
    def parse(cls, payload: bytes) -> ServerInfoFrame:
        """``parseServerInfo``'s size checks: 24 ≤ length ≤ 24 + 1 MiB."""
        if len(payload) < NONCE_LEN:
            raise DerpProtocolError("short serverInfo frame")
        if len(payload) > NONCE_LEN + MAX_INFO_LEN:
            raise DerpProtocolError("long serverInfo frame")
        return cls(payload)

    def open(self, client_private: NodePrivate, server_key: NodePublic) -> ServerInfo:
        """Open the box and parse its JSON; raises :class:`DerpProtocolError`."""
        msg = _open(client_private, server_key, self.box)
        if msg is None:
            raise DerpProtocolError(f"failed to open naclbox from server key {server_key}")
        return ServerInfo.from_json(msg)

    def emit(self) -> bytes:
        return emit_frame(FrameType.SERVER_INFO, self.box)


def _seal(private: NodePrivate, peer: NodePublic, msg: bytes, nonce: bytes | None) -> bytes:
    """``SealTo``: 24-byte nonce ‖ NaCl box (X25519 + XSalsa20-Poly1305)."""
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
    return nonce + crypto_box(msg, nonce, bytes(peer), private.raw)


def _open(private: NodePrivate, peer: NodePublic, box: bytes) -> bytes | None:
    """``OpenFrom``: ``None`` when the box is short or does not authenticate."""
    if len(box) < NONCE_LEN + BOX_OVERHEAD:
        return None
    try:
        return crypto_box_open(box[NONCE_LEN:], box[:NONCE_LEN], bytes(peer), private.raw)
    except CryptoError:
        return None


@dataclass(frozen=True, slots=True)
class SendPacketFrame:
    """0x04: a packet for ``dst``."""

    dst: NodePublic
    data: bytes

    @classmethod
    def parse(cls, payload: bytes) -> SendPacketFrame:
        """``recvPacket``'s checks: a key, and at most :data:`MAX_PACKET_SIZE` bytes after it."""
        if len(payload) < KEY_LEN:
            raise DerpProtocolError("short send packet frame")
        if len(payload) - KEY_LEN > MAX_PACKET_SIZE:
            raise DerpProtocolError(
                f"data packet longer ({len(payload) - KEY_LEN}) than max of {MAX_PACKET_SIZE}"
            )
        return cls(_key(payload[:KEY_LEN]), payload[KEY_LEN:])

    def emit(self) -> bytes:
        return emit_header(FrameType.SEND_PACKET, KEY_LEN + len(self.data)) + self.dst + self.data


@dataclass(frozen=True, slots=True)
class RecvPacketFrame:
    """0x05: a packet from ``src`` (v2 layout)."""

    src: NodePublic
    data: bytes

    @classmethod
    def parse(cls, payload: bytes) -> RecvPacketFrame:
        """Go's client drops a RecvPacket shorter than a key (we raise; callers count)."""
        if len(payload) < KEY_LEN:
            raise DerpProtocolError("short packet from DERP server")
        return cls(_key(payload[:KEY_LEN]), payload[KEY_LEN:])

    def emit(self) -> bytes:
        return emit_header(FrameType.RECV_PACKET, KEY_LEN + len(self.data)) + self.src + self.data


@dataclass(frozen=True, slots=True)
class KeepAliveFrame:
    """0x06: no payload (the client ignores any)."""

    def emit(self) -> bytes:
        return emit_frame(FrameType.KEEP_ALIVE)


@dataclass(frozen=True, slots=True)
class NotePreferredFrame:
    """0x07: whether this is the client's home region (stats only)."""

    preferred: bool

    @classmethod
    def parse(cls, payload: bytes) -> NotePreferredFrame:
        """The server requires exactly one byte; non-zero means preferred."""
        if len(payload) != 1:
            raise DerpProtocolError("frameNotePreferred wrong size")
        return cls(payload[0] != 0)

    def emit(self) -> bytes:
        return emit_frame(FrameType.NOTE_PREFERRED, b"\x01" if self.preferred else b"\x00")


@dataclass(frozen=True, slots=True)
class PeerGoneFrame:
    """0x08: ``peer`` is not (or no longer) reachable through this server."""

    peer: NodePublic
    reason: int = PeerGoneReason.DISCONNECTED

    @classmethod
    def parse(cls, payload: bytes) -> PeerGoneFrame:
        """A key-only frame (old servers) means Disconnected."""
        if len(payload) < KEY_LEN:
            raise DerpProtocolError("short peerGone frame")
        reason = payload[KEY_LEN] if len(payload) > KEY_LEN else PeerGoneReason.DISCONNECTED
        try:
            reason = PeerGoneReason(reason)
        except ValueError:
            pass
        return cls(_key(payload[:KEY_LEN]), reason)

    def emit(self) -> bytes:
        return emit_frame(FrameType.PEER_GONE, bytes(self.peer) + bytes((self.reason,)))


@dataclass(frozen=True, slots=True)
class PeerPresentFrame:
    """0x09: ``peer`` connected (mesh watchers). Older servers omit the endpoint/flags."""

    peer: NodePublic
    endpoint: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None = None
    flags: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> PeerPresentFrame:
        if len(payload) < KEY_LEN:
            raise DerpProtocolError("short peerPresent frame")
        endpoint = None
        flags = 0
        if len(payload) >= KEY_LEN + 18:
            ip6 = ipaddress.IPv6Address(payload[KEY_LEN:KEY_LEN + 16])
            ip = ip6.ipv4_mapped or ip6
            endpoint = (ip, int.from_bytes(payload[KEY_LEN + 16:KEY_LEN + 18], "big"))
            if len(payload) >= KEY_LEN + 19:
                flags = payload[KEY_LEN + 18]
        return cls(_key(payload[:KEY_LEN]), endpoint, flags)

    def emit(self) -> bytes:
        body = bytes(self.peer)
        if self.endpoint is not None:
            ip, port = self.endpoint
            raw = (b"\x00" * 10 + b"\xff\xff" + ip.packed) if ip.version == 4 else ip.packed
            body += raw + port.to_bytes(2, "big") + bytes((self.flags,))
        return emit_frame(FrameType.PEER_PRESENT, body)


@dataclass(frozen=True, slots=True)
class PingFrame:
    """0x12: 8 opaque bytes to be echoed in a Pong."""

    data: bytes

    @classmethod
    def parse(cls, payload: bytes) -> PingFrame:
        """At least 8 bytes (the first 8 are echoed)."""
        if len(payload) < PING_LEN:
            raise DerpProtocolError(f"short ping: {len(payload)}")
        return cls(payload[:PING_LEN])

    def emit(self) -> bytes:
        return emit_frame(FrameType.PING, self.data)


@dataclass(frozen=True, slots=True)
class PongFrame:
    """0x13: the 8 bytes of the ping being answered."""

    data: bytes

    @classmethod
    def parse(cls, payload: bytes) -> PongFrame:
        if len(payload) < PING_LEN:
            raise DerpProtocolError(f"short pong: {len(payload)}")
        return cls(payload[:PING_LEN])

    def emit(self) -> bytes:
        return emit_frame(FrameType.PONG, self.data)


@dataclass(frozen=True, slots=True)
class HealthFrame:
    """0x14: ``problem`` text; empty means healthy again."""

    problem: str = ""

    @classmethod
    def parse(cls, payload: bytes) -> HealthFrame:
        return cls(payload.decode("utf-8", "replace"))

    def emit(self) -> bytes:
        return emit_frame(FrameType.HEALTH, self.problem.encode())


@dataclass(frozen=True, slots=True)
class RestartingFrame:
    """0x15: the server is restarting; reconnect after ``reconnect_in_ms`` and keep trying
    for ``try_for_ms`` (both advisory)."""

    reconnect_in_ms: int
    try_for_ms: int

    @classmethod
    def parse(cls, payload: bytes) -> RestartingFrame:
        if len(payload) < 8:
            raise DerpProtocolError("short server restarting frame")
        return cls(*_U32X2.unpack_from(payload))

    def emit(self) -> bytes:
        return emit_frame(FrameType.RESTARTING, _U32X2.pack(self.reconnect_in_ms, self.try_for_ms))


def is_known_type(ftype: int) -> bool:
    """True for the frame types of :class:`FrameType`."""
    return ftype in _KNOWN_TYPES
