"""IPv4 header (RFC 791 §3.1), without options or fragmentation.

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Version|  IHL  |   DSCP/ECN    |          Total Length         |
    |         Identification        |Flags|      Fragment Offset    |
    |  Time to Live |    Protocol   |         Header Checksum       |
    |                       Source Address                          |
    |                    Destination Address                        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Packets we cannot represent are rejected by :meth:`Ipv4Repr.parse`: options (IHL > 5; nothing
in a WireGuard tunnel needs them) and fragments (MF set or offset ≠ 0; our MTU keeps peers
from fragmenting, and a tunnel endpoint is not obliged to reassemble).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from agentconn.net.wire import WireError
from agentconn.net.wire.checksum import Buffer, checksum

__all__ = ["HEADER_LEN", "Ipv4Packet", "Ipv4Repr"]

HEADER_LEN = 20
"""Length of an option-less IPv4 header (RFC 791 §3.1, IHL = 5)."""

MAX_TOTAL_LEN = 0xFFFF

# Field offsets (RFC 791 §3.1).
_VER_IHL = 0
_DSCP_ECN = 1
_TOTAL_LEN = slice(2, 4)
_IDENT = slice(4, 6)
_FLAGS_FRAG = slice(6, 8)
_TTL = 8
_PROTOCOL = 9
_CHECKSUM = slice(10, 12)
_SRC = slice(12, 16)
_DST = slice(16, 20)

_FLAG_DF = 0x4000
_FLAG_MF = 0x2000
_FRAG_OFFSET_MASK = 0x1FFF

_HEADER = struct.Struct("!BBHHHBBH4s4s")


class Ipv4Packet:
    """A read-only view over an IPv4 packet whose fixed header is known to be present.

    Build it with :meth:`new_checked`; after that no accessor can fail. Use it to peek at a
    field without building an :class:`Ipv4Repr`.
    """

    __slots__ = ("buffer",)

    def __init__(self, buffer: memoryview) -> None:
        self.buffer = buffer

    @classmethod
    def new_checked(cls, data: Buffer) -> Ipv4Packet:
        """Wrap *data*; raise :class:`WireError` if it is shorter than the fixed header."""
        if len(data) < HEADER_LEN:
            raise WireError(f"IPv4: truncated header ({len(data)} < {HEADER_LEN} bytes)")
        return cls(memoryview(data))

    @property
    def version(self) -> int:
        """IP version nibble (4 for a well-formed packet)."""
        return self.buffer[_VER_IHL] >> 4

    @property
    def header_len(self) -> int:
        """Header length in bytes (IHL × 4)."""
        return (self.buffer[_VER_IHL] & 0x0F) * 4

    @property
    def dscp_ecn(self) -> int:
        """The former type-of-service byte: DSCP (6 bits) and ECN (2 bits)."""
        return self.buffer[_DSCP_ECN]

    @property
    def total_len(self) -> int:
        """Total length field: header plus payload, in bytes."""
        return int.from_bytes(self.buffer[_TOTAL_LEN], "big")

    @property
    def ident(self) -> int:
        """Identification field."""
        return int.from_bytes(self.buffer[_IDENT], "big")

    @property
    def dont_fragment(self) -> bool:
        """The DF flag."""
        return bool(int.from_bytes(self.buffer[_FLAGS_FRAG], "big") & _FLAG_DF)

    @property
    def more_fragments(self) -> bool:
        """The MF flag."""
        return bool(int.from_bytes(self.buffer[_FLAGS_FRAG], "big") & _FLAG_MF)

    @property
    def frag_offset(self) -> int:
        """Fragment offset in 8-byte units."""
        return int.from_bytes(self.buffer[_FLAGS_FRAG], "big") & _FRAG_OFFSET_MASK

    @property
    def ttl(self) -> int:
        """Time to live."""
        return self.buffer[_TTL]

    @property
    def protocol(self) -> int:
        """Upper-layer protocol number (IANA)."""
        return self.buffer[_PROTOCOL]

    @property
    def header_checksum(self) -> int:
        """Header checksum field as stored."""
        return int.from_bytes(self.buffer[_CHECKSUM], "big")

    @property
    def src(self) -> IPv4Address:
        """Source address."""
        return IPv4Address(bytes(self.buffer[_SRC]))

    @property
    def dst(self) -> IPv4Address:
        """Destination address."""
        return IPv4Address(bytes(self.buffer[_DST]))


@dataclass(frozen=True, slots=True)
class Ipv4Repr:
    """A parsed IPv4 header that we support (no options, not a fragment).

    ``payload_len`` is the number of bytes after the 20-byte header. Construction raises
    :class:`TypeError` for addresses of the wrong family and :class:`ValueError` for out-of-range
    fields.
    """

    src: IPv4Address
    dst: IPv4Address
    protocol: int
    payload_len: int
    ttl: int = 64
    ident: int = 0
    dscp_ecn: int = 0
    dont_fragment: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.src, IPv4Address) and isinstance(self.dst, IPv4Address)):
            raise TypeError(
                f"Ipv4Repr: src and dst must be IPv4Address, got {self.src!r}, {self.dst!r}"
            )
        for name, value, high in (
            ("protocol", self.protocol, 0xFF),
            ("payload_len", self.payload_len, MAX_TOTAL_LEN - HEADER_LEN),
            ("ttl", self.ttl, 0xFF),
            ("ident", self.ident, 0xFFFF),
            ("dscp_ecn", self.dscp_ecn, 0xFF),
        ):
            if not 0 <= value <= high:
                raise ValueError(f"Ipv4Repr: {name} must be 0..{high}, got {value}")

    @classmethod
    def parse(cls, data: Buffer) -> tuple[Ipv4Repr, memoryview]:
        """Parse an IPv4 packet; return its header and a zero-copy view of its payload.

        Bytes after the total length (link padding, or WireGuard's zero padding) are ignored.
        Raises :class:`WireError` on a truncated packet, a version other than 4, IHL < 5,
        options, a total length out of range, a bad header checksum, or a fragment.
        """
        packet = Ipv4Packet.new_checked(data)
        if packet.version != 4:
            raise WireError(f"IPv4: bad version {packet.version}")
        if packet.header_len < HEADER_LEN:
            raise WireError(f"IPv4: bad IHL {packet.header_len // 4} (< 5)")
        if packet.header_len > HEADER_LEN:
            raise WireError(f"IPv4: options not supported (IHL {packet.header_len // 4})")
        total_len = packet.total_len
        if not HEADER_LEN <= total_len <= len(data):
            raise WireError(f"IPv4: bad total length {total_len} for {len(data)} bytes")
        if checksum(packet.buffer[:HEADER_LEN]) != 0:
            raise WireError(f"IPv4: bad header checksum {packet.header_checksum:#06x}")
        if packet.more_fragments or packet.frag_offset:
            raise WireError(
                f"IPv4: fragments not supported (MF={int(packet.more_fragments)}, "
                f"offset={packet.frag_offset})"
            )
        repr_ = cls(
            src=packet.src,
            dst=packet.dst,
            protocol=packet.protocol,
            payload_len=total_len - HEADER_LEN,
            ttl=packet.ttl,
            ident=packet.ident,
            dscp_ecn=packet.dscp_ecn,
            dont_fragment=packet.dont_fragment,
        )
        return repr_, packet.buffer[HEADER_LEN:total_len]

    def buffer_len(self) -> int:
        """Length of the emitted packet: header plus payload."""
        return HEADER_LEN + self.payload_len

    def emit_header(self) -> bytes:
        """The 20-byte header with its checksum filled in."""
        flags = _FLAG_DF if self.dont_fragment else 0
        fields = (
            0x45,
            self.dscp_ecn,
            HEADER_LEN + self.payload_len,
            self.ident,
            flags,
            self.ttl,
            self.protocol,
        )
        header = _HEADER.pack(*fields, 0, self.src.packed, self.dst.packed)
        return _HEADER.pack(*fields, checksum(header), self.src.packed, self.dst.packed)

    def emit(self, payload: Buffer) -> bytes:
        """Return the whole packet: header followed by *payload*.

        Raises :class:`ValueError` if ``len(payload) != payload_len``.
        """
        if len(payload) != self.payload_len:
            raise ValueError(
                f"Ipv4Repr.emit: payload is {len(payload)} bytes, header says {self.payload_len}"
            )
        return self.emit_header() + bytes(payload)
