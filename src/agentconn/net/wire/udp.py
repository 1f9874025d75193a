"""UDP header (RFC 768).

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |          Source Port          |       Destination Port        |
    |            Length             |           Checksum            |
    |     Data ...
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Length counts the header and the data. The checksum covers the IPv4 (RFC 768) or IPv6
(RFC 8200 §8.1) pseudo-header, the header and the data. Over IPv4 a checksum field of zero
means the sender computed none (RFC 768); over IPv6 it is invalid and the datagram is
discarded (RFC 8200 §8.1; the zero-checksum tunnel exception of RFC 6935 is not supported).
A computed checksum of zero is sent as 0xFFFF, its other one's-complement form (RFC 768).
IPv6 jumbograms (Length 0, RFC 2675) are not supported.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TypeAlias

from agentconn.net.wire import WireError
from agentconn.net.wire.checksum import Buffer, checksum, ones_sum, pseudo_sum

__all__ = ["HEADER_LEN", "MAX_PAYLOAD_LEN", "PROTOCOL_UDP", "UdpPacket", "UdpRepr"]

PROTOCOL_UDP = 17
"""IPv4 protocol / IPv6 Next Header number of UDP (IANA)."""

HEADER_LEN = 8
"""Source port, destination port, length, checksum (RFC 768)."""

MAX_PAYLOAD_LEN = 0xFFFF - HEADER_LEN
"""Largest data a 16-bit Length field can describe."""

# Field offsets (RFC 768).
_SRC_PORT = slice(0, 2)
_DST_PORT = slice(2, 4)
_LENGTH = slice(4, 6)
_CHECKSUM = slice(6, 8)

_HEADER = struct.Struct("!HHHH")

Address: TypeAlias = IPv4Address | IPv6Address


def _family(src: Address, dst: Address) -> int:
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        return 4
    if isinstance(src, IPv6Address) and isinstance(dst, IPv6Address):
        return 6
    raise ValueError(f"UDP: mixed address families {src} and {dst}")


class UdpPacket:
    """A read-only view over a UDP datagram whose Length field fits the buffer.

    Build it with :meth:`new_checked`; after that no accessor can fail.
    """

    __slots__ = ("buffer",)

    def __init__(self, buffer: memoryview) -> None:
        self.buffer = buffer

    @classmethod
    def new_checked(cls, data: Buffer) -> UdpPacket:
        """Wrap the datagram *data* (the IP payload) after checking its lengths once.

        Raises :class:`WireError` if *data* is shorter than the 8-byte header, or if the
        Length field is below 8 or larger than *data*.
        """
        if len(data) < HEADER_LEN:
            raise WireError(f"UDP: truncated header ({len(data)} < {HEADER_LEN} bytes)")
        packet = cls(memoryview(data))
        length = packet.length
        if not HEADER_LEN <= length <= len(data):
            raise WireError(f"UDP: bad length {length} for {len(data)} bytes")
        return packet

    @property
    def src_port(self) -> int:
        """Source port (0 if the sender expects no reply, RFC 768)."""
        return int.from_bytes(self.buffer[_SRC_PORT], "big")

    @property
    def dst_port(self) -> int:
        """Destination port."""
        return int.from_bytes(self.buffer[_DST_PORT], "big")

    @property
    def length(self) -> int:
        """Length field: header plus data, in bytes."""
        return int.from_bytes(self.buffer[_LENGTH], "big")

    @property
    def checksum(self) -> int:
        """Checksum field as stored (0 over IPv4: none was computed)."""
        return int.from_bytes(self.buffer[_CHECKSUM], "big")

    @property
    def payload(self) -> memoryview:
        """The data: bytes 8 up to Length; anything after Length is not part of it."""
        return self.buffer[HEADER_LEN : self.length]


@dataclass(frozen=True, slots=True)
class UdpRepr:
    """A parsed UDP header: 16-bit ports and the length of the data in bytes.

    Construction raises :class:`ValueError` for out-of-range fields.
    """

    src_port: int
    dst_port: int
    payload_len: int

    def __post_init__(self) -> None:
        for name, value, high in (
            ("src_port", self.src_port, 0xFFFF),
            ("dst_port", self.dst_port, 0xFFFF),
            ("payload_len", self.payload_len, MAX_PAYLOAD_LEN),
        ):
            if not 0 <= value <= high:
                raise ValueError(f"UdpRepr: {name} must be 0..{high}, got {value}")

    @classmethod
    def parse(
        cls, data: Buffer, src: Address, dst: Address, *, verify_checksum: bool = True
    ) -> tuple[UdpRepr, memoryview]:
        """Parse the UDP datagram *data* carried from *src* to *dst* (the IP header's addresses).

        Returns the header and a zero-copy view of the data; bytes after the Length field's
        end are ignored. Pass ``verify_checksum=False`` only when the checksum was verified
        already; it then skips the zero-checksum rule as well.

        Raises :class:`WireError` on a truncated datagram, a Length below 8 or beyond the
        data, a zero checksum over IPv6, or a bad checksum; :class:`ValueError` if *src* and
        *dst* differ in family.
        """
        family = _family(src, dst)
        packet = UdpPacket.new_checked(data)
        length = packet.length
        if verify_checksum:
            if packet.checksum == 0:
                if family == 6:
                    raise WireError("UDP: zero checksum over IPv6 (RFC 8200 §8.1)")
            else:
                initial = pseudo_sum(src, dst, PROTOCOL_UDP, length)
                if checksum(packet.buffer[:length], initial) != 0:
                    raise WireError(f"UDP: bad checksum {packet.checksum:#06x}")
        repr_ = cls(packet.src_port, packet.dst_port, length - HEADER_LEN)
        return repr_, packet.payload

    def buffer_len(self) -> int:
        """Length of the emitted datagram: header plus data."""
        return HEADER_LEN + self.payload_len

    def emit(self, payload: Buffer, src: Address, dst: Address) -> bytes:
        """Return the datagram (header with checksum, then *payload*) from *src* to *dst*.

        Always computes the checksum, over IPv4 too. Raises :class:`ValueError` if
        ``len(payload) != payload_len`` or *src* and *dst* differ in family.
        """
        _family(src, dst)
        if len(payload) != self.payload_len:
            raise ValueError(
                f"UdpRepr.emit: payload is {len(payload)} bytes, header says {self.payload_len}"
            )
        length = HEADER_LEN + self.payload_len
        header = _HEADER.pack(self.src_port, self.dst_port, length, 0)
        total = checksum(payload, ones_sum(header, pseudo_sum(src, dst, PROTOCOL_UDP, length)))
        # RFC 768: a computed zero is transmitted as all ones; zero means "no checksum".
        if total == 0:
            total = 0xFFFF
        return _HEADER.pack(self.src_port, self.dst_port, length, total) + bytes(payload)
