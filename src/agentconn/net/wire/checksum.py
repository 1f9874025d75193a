"""RFC 1071 internet checksum, and the IPv4/IPv6 pseudo-headers of RFC 768/793 and RFC 8200.

This is the pure-Python reference; the data path uses ``_wgcore.checksum`` and tests compare
the two. The sum uses the RFC 1071 §2(B) identity that the 16-bit one's-complement sum equals
the sum of the words modulo 0xFFFF (because 2**16 ≡ 1 mod 0xFFFF), so the whole buffer can be
folded with one big-integer ``%`` instead of a loop over words.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import TypeAlias

__all__ = [
    "Buffer",
    "checksum",
    "ones_sum",
    "pseudo_header_ipv4",
    "pseudo_header_ipv6",
    "pseudo_sum",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Any bytes-like input the parsers and checksums accept."""


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """Return the 16-bit one's-complement sum of *data* plus *initial* (not complemented).

    *data* is read as big-endian 16-bit words; an odd trailing byte is padded with a zero on
    the right (RFC 1071 §4.1). *initial* is an earlier result of this function, so sums over
    separate pieces combine as long as every piece but the last has even length. The result
    is 0 only when every word (and *initial*) is zero; otherwise it is in 1..0xFFFF.
    """
    total = int.from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8
    total += initial
    if total == 0:
        return 0
    folded = total % 0xFFFF
    return folded if folded else 0xFFFF


def checksum(data: Buffer, initial: int = 0) -> int:
    """Return the internet checksum (RFC 1071) of *data*, seeded with the sum *initial*.

    Computing it over a message whose checksum field is already filled in yields 0 when the
    checksum is correct.
    """
    return ~ones_sum(data, initial) & 0xFFFF


def pseudo_header_ipv4(src: IPv4Address, dst: IPv4Address, protocol: int, length: int) -> bytes:
    """The 12-byte IPv4 pseudo-header (RFC 793 §3.1): src, dst, zero, protocol, length."""
    return src.packed + dst.packed + struct.pack("!BBH", 0, protocol, length)


def pseudo_header_ipv6(src: IPv6Address, dst: IPv6Address, next_header: int, length: int) -> bytes:
    """The 40-byte IPv6 pseudo-header (RFC 8200 §8.1).

    Source, destination, upper-layer length (u32), three zero bytes, next header.
    """
    return src.packed + dst.packed + struct.pack("!I3xB", length, next_header)


def pseudo_sum(
    src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address, protocol: int, length: int
) -> int:
    """One's-complement sum of the pseudo-header for the family of *src*, for ``initial=``.

    *protocol* is the IPv4 protocol or IPv6 next-header number, *length* the upper-layer
    length in bytes. Raises :class:`ValueError` if *src* and *dst* differ in family.
    """
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        return ones_sum(pseudo_header_ipv4(src, dst, protocol, length))
    if isinstance(src, IPv6Address) and isinstance(dst, IPv6Address):
        return ones_sum(pseudo_header_ipv6(src, dst, protocol, length))
    raise ValueError(f"pseudo_sum: mixed address families {src} and {dst}")
