"""IPv6 fixed header (RFC 8200 §3), without extension headers.

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Version| Traffic Class |           Flow Label                  |
    |         Payload Length        |  Next Header  |   Hop Limit   |
    |                   Source Address (16 bytes)                   |
    |                 Destination Address (16 bytes)                |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

A packet whose Next Header is an extension header (the IANA "IPv6 Extension Header Types"
registry) is rejected: nothing in a Coder tailnet sends them, and skipping them correctly
(fragments, routing headers) is more code than it is worth here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address

from agentconn.net.wire import WireError
from agentconn.net.wire.checksum import Buffer

__all__ = ["EXTENSION_HEADERS", "HEADER_LEN", "Ipv6Packet", "Ipv6Repr"]

HEADER_LEN = 40
"""Length of the IPv6 fixed header (RFC 8200 §3)."""

EXTENSION_HEADERS = frozenset({0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254})
"""Next Header values that are extension headers (IANA registry, RFC 8200 §4, RFC 7045):
Hop-by-Hop, Routing, Fragment, ESP, AH, Destination Options, Mobility, HIP, Shim6, and the
two experimental values."""

MAX_PAYLOAD_LEN = 0xFFFF

# Field offsets (RFC 8200 §3).
_VER_TC_FLOW = slice(0, 4)
_PAYLOAD_LEN = slice(4, 6)
_NEXT_HEADER = 6
_HOP_LIMIT = 7
_SRC = slice(8, 24)
_DST = slice(24, 40)

_HEADER = struct.Struct("!IHBB16s16s")


class Ipv6Packet:
    """A read-only view over an IPv6 packet whose fixed header is known to be present.

    Build it with :meth:`new_checked`; after that no accessor can fail.
    """

    __slots__ = ("buffer",)

    def __init__(self, buffer: memoryview) -> None:
        self.buffer = buffer

    @classmethod
    def new_checked(cls, data: Buffer) -> Ipv6Packet:
        """Wrap *data*; raise :class:`WireError` if it is shorter than the fixed header."""
        if len(data) < HEADER_LEN:
            raise WireError(f"IPv6: truncated header ({len(data)} < {HEADER_LEN} bytes)")
        return cls(memoryview(data))

    @property
    def _first_word(self) -> int:
        return int.from_bytes(self.buffer[_VER_TC_FLOW], "big")

    @property
    def version(self) -> int:
        """IP version nibble (6 for a well-formed packet)."""
        return self._first_word >> 28

    @property
    def traffic_class(self) -> int:
        """Traffic class byte (DSCP and ECN)."""
        return (self._first_word >> 20) & 0xFF

    @property
    def flow_label(self) -> int:
        """20-bit flow label."""
        return self._first_word & 0xFFFFF

    @property
    def payload_len(self) -> int:
        """Payload length field: bytes after the fixed header."""
        return int.from_bytes(self.buffer[_PAYLOAD_LEN], "big")

    @property
    def next_header(self) -> int:
        """Next Header (IANA protocol number or extension header type)."""
        return self.buffer[_NEXT_HEADER]

    @property
    def hop_limit(self) -> int:
        """Hop limit."""
        return self.buffer[_HOP_LIMIT]

    @property
    def src(self) -> IPv6Address:
        """Source address."""
        return IPv6Address(bytes(self.buffer[_SRC]))

    @property
    def dst(self) -> IPv6Address:
        """Destination address."""
        return IPv6Address(bytes(self.buffer[_DST]))


@dataclass(frozen=True, slots=True)
class Ipv6Repr:
    """A parsed IPv6 fixed header whose Next Header is not an extension header.

    Construction raises :class:`TypeError` for non-IPv6 addresses and :class:`ValueError` for
    out-of-range fields or an extension header.
    """

    src: IPv6Address
    dst: IPv6Address
    next_header: int
    payload_len: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.src, IPv6Address) and isinstance(self.dst, IPv6Address)):
            raise TypeError(
                f"Ipv6Repr: src and dst must be IPv6Address, got {self.src!r}, {self.dst!r}"
            )
        if self.next_header in EXTENSION_HEADERS:
            raise ValueError(f"Ipv6Repr: extension header {self.next_header} not supported")
        for name, value, high in (
            ("next_header", self.next_header, 0xFF),
            ("payload_len", self.payload_len, MAX_PAYLOAD_LEN),
            ("hop_limit", self.hop_limit, 0xFF),
            ("traffic_class", self.traffic_class, 0xFF),
            ("flow_label", self.flow_label, 0xFFFFF),
        ):
            if not 0 <= value <= high:
                raise ValueError(f"Ipv6Repr: {name} must be 0..{high}, got {value}")

    @classmethod
    def parse(cls, data: Buffer) -> tuple[Ipv6Repr, memoryview]:
        """Parse an IPv6 packet; return its header and a zero-copy view of its payload.

        Bytes after ``40 + payload_len`` are ignored. Raises :class:`WireError` on a
        truncated packet, a version other than 6, a payload length beyond the data, or an
        extension header.
        """
        packet = Ipv6Packet.new_checked(data)
        if packet.version != 6:
            raise WireError(f"IPv6: bad version {packet.version}")
        end = HEADER_LEN + packet.payload_len
        if end > len(data):
            raise WireError(
                f"IPv6: payload length {packet.payload_len} exceeds {len(data) - HEADER_LEN} bytes"
            )
        if packet.next_header in EXTENSION_HEADERS:
            raise WireError(f"IPv6: extension header {packet.next_header} not supported")
        repr_ = cls(
            src=packet.src,
            dst=packet.dst,
            next_header=packet.next_header,
            payload_len=packet.payload_len,
            hop_limit=packet.hop_limit,
            traffic_class=packet.traffic_class,
            flow_label=packet.flow_label,
        )
        return repr_, packet.buffer[HEADER_LEN:end]

    def buffer_len(self) -> int:
        """Length of the emitted packet: header plus payload."""
        return HEADER_LEN + self.payload_len

    def emit_header(self) -> bytes:
        """The 40-byte fixed header."""
        first = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        return _HEADER.pack(
            first,
            self.payload_len,
            self.next_header,
            self.hop_limit,
            self.src.packed,
            self.dst.packed,
        )

    def emit(self, payload: Buffer) -> bytes:
        """Return the whole packet: header followed by *payload*.

        Raises :class:`ValueError` if ``len(payload) != payload_len``.
        """
        if len(payload) != self.payload_len:
            raise ValueError(
                f"Ipv6Repr.emit: payload is {len(payload)} bytes, header says {self.payload_len}"
            )
        return self.emit_header() + bytes(payload)
