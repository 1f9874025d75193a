"""ICMP echo request and reply, for ICMPv4 (RFC 792) and ICMPv6 (RFC 4443 §4).

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     Type      |     Code      |          Checksum             |
    |           Identifier          |        Sequence Number        |
    |     Data ...
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

The ICMPv4 checksum covers the ICMP message only (RFC 792); the ICMPv6 checksum also covers
the IPv6 pseudo-header with Next Header 58 (RFC 4443 §2.3). Every other ICMP type, and echo
messages with a non-zero code, are rejected as unsupported.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal, TypeAlias

from agentconn.net.wire import WireError
from agentconn.net.wire.checksum import Buffer, checksum, pseudo_sum

__all__ = ["HEADER_LEN", "PROTOCOL_ICMPV4", "PROTOCOL_ICMPV6", "EchoRepr"]

PROTOCOL_ICMPV4 = 1
"""IPv4 protocol number of ICMP (IANA)."""

PROTOCOL_ICMPV6 = 58
"""IPv6 Next Header value of ICMPv6 (IANA, RFC 4443 §1)."""

HEADER_LEN = 8
"""Type, code, checksum, identifier, sequence number."""

MAX_DATA_LEN = 0xFFFF - HEADER_LEN
"""Largest echo data: an IPv6 payload of 65535 bytes (an IPv4 packet allows 20 + 8 fewer)."""

# (family, kind) -> ICMP type: RFC 792 (8 request, 0 reply), RFC 4443 §4.1/§4.2 (128, 129).
_TYPES: dict[tuple[int, str], int] = {
    (4, "request"): 8,
    (4, "reply"): 0,
    (6, "request"): 128,
    (6, "reply"): 129,
}
_KINDS: dict[tuple[int, int], Literal["request", "reply"]] = {
    (4, 8): "request",
    (4, 0): "reply",
    (6, 128): "request",
    (6, 129): "reply",
}

_HEADER = struct.Struct("!BBHHH")

Address: TypeAlias = IPv4Address | IPv6Address


def _family(src: Address, dst: Address) -> int:
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        return 4
    if isinstance(src, IPv6Address) and isinstance(dst, IPv6Address):
        return 6
    raise ValueError(f"ICMP: mixed address families {src} and {dst}")


def _initial(family: int, src: Address, dst: Address, length: int) -> int:
    # RFC 4443 §2.3: ICMPv6 includes the pseudo-header; RFC 792: ICMPv4 does not.
    return pseudo_sum(src, dst, PROTOCOL_ICMPV6, length) if family == 6 else 0


@dataclass(frozen=True, slots=True)
class EchoRepr:
    """An ICMP echo request or reply; the family comes from the addresses given to
    :meth:`parse` and :meth:`emit`.

    ``ident`` and ``seq`` are 16-bit; ``data`` is the opaque payload a reply echoes back.
    Construction raises :class:`ValueError` for out-of-range fields.
    """

    kind: Literal["request", "reply"]
    ident: int
    seq: int
    data: bytes = b""

    def __post_init__(self) -> None:
        if self.kind not in ("request", "reply"):
            raise ValueError(f"EchoRepr: kind must be 'request' or 'reply', got {self.kind!r}")
        for name, value in (("ident", self.ident), ("seq", self.seq)):
            if not 0 <= value <= 0xFFFF:
                raise ValueError(f"EchoRepr: {name} must be 0..65535, got {value}")
        if len(self.data) > MAX_DATA_LEN:
            raise ValueError(f"EchoRepr: data is {len(self.data)} bytes, at most {MAX_DATA_LEN}")

    @classmethod
    def parse(cls, data: Buffer, src: Address, dst: Address) -> EchoRepr:
        """Parse the ICMP message *data* carried from *src* to *dst* (the IP header's addresses).

        IPv4 addresses mean ICMPv4 and IPv6 addresses ICMPv6. Raises :class:`WireError` on a
        truncated message, a bad checksum, or any type other than echo request/reply;
        :class:`ValueError` if *src* and *dst* differ in family.
        """
        family = _family(src, dst)
        if len(data) < HEADER_LEN:
            raise WireError(f"ICMPv{family}: truncated ({len(data)} < {HEADER_LEN} bytes)")
        icmp_type, code, _, ident, seq = _HEADER.unpack_from(data)
        kind = _KINDS.get((family, icmp_type))
        if kind is None or code != 0:
            raise WireError(f"ICMPv{family}: unsupported type {icmp_type} code {code}")
        if checksum(data, _initial(family, src, dst, len(data))) != 0:
            raise WireError(f"ICMPv{family}: bad checksum")
        return cls(kind, ident, seq, bytes(data[HEADER_LEN:]))

    def buffer_len(self) -> int:
        """Length of the emitted ICMP message in bytes."""
        return HEADER_LEN + len(self.data)

    def emit(self, src: Address, dst: Address) -> bytes:
        """Return the ICMP message (with checksum) to be carried from *src* to *dst*.

        Raises :class:`ValueError` if *src* and *dst* differ in family.
        """
        family = _family(src, dst)
        icmp_type = _TYPES[(family, self.kind)]
        unsummed = _HEADER.pack(icmp_type, 0, 0, self.ident, self.seq) + self.data
        total = checksum(unsummed, _initial(family, src, dst, len(unsummed)))
        return _HEADER.pack(icmp_type, 0, total, self.ident, self.seq) + self.data
