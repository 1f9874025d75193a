"""A minimal STUN binding client and server (RFC 5389), as magicsock's netcheck uses it.

A binding request is a 20-byte header (type ``0x0001``, attribute length, the magic cookie
``0x2112A442``, a 12-byte transaction id) followed, as Tailscale's ``net/stun`` sends it, by a
``SOFTWARE`` attribute (``"tailnode"``) and a ``FINGERPRINT`` (CRC-32 of what precedes it,
XOR ``0x5354554e``). The success response (type ``0x0101``) carries the address the server saw
the request come from in ``XOR-MAPPED-ADDRESS`` (port XOR the cookie's top 16 bits, address
XOR the cookie, and for IPv6 the cookie followed by the transaction id); old servers send
``MAPPED-ADDRESS`` in the clear.

Parsing never raises for network input: :func:`parse_response` returns ``None`` for anything
that is not a well-formed binding success response.
"""
from __future__ import annotations

import binascii
import ipaddress
import os
import struct

__all__ = [
    "BINDING_REQUEST",
    "BINDING_SUCCESS",
    "MAGIC_COOKIE",
    "binding_request",
    "binding_response",
    "is_binding_request",
    "new_tx_id",
    "parse_request",
    "parse_response",
]

BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
MAGIC_COOKIE = 0x2112A442
_COOKIE = MAGIC_COOKIE.to_bytes(4, "big")
_HEADER = struct.Struct("!HHI12s")
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
ATTR_XOR_MAPPED_ADDRESS = 0x0020
_SOFTWARE = b"tailnode"
_FINGERPRINT_XOR = 0x5354554E

Address = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


def new_tx_id() -> bytes:
    """A random 12-byte transaction id."""
    return os.urandom(12)


def _attr(kind: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("!HH", kind, len(value)) + value + b"\x00" * pad


def _fingerprinted(kind: int, tx_id: bytes, attrs: bytes) -> bytes:
    # The FINGERPRINT covers the message up to it, with the length already counting it.
    header = _HEADER.pack(kind, len(attrs) + 8, MAGIC_COOKIE, tx_id)
    crc = binascii.crc32(header + attrs) ^ _FINGERPRINT_XOR
    return header + attrs + _attr(ATTR_FINGERPRINT, crc.to_bytes(4, "big"))


def binding_request(tx_id: bytes) -> bytes:
    """A binding request with ``SOFTWARE: tailnode`` and a ``FINGERPRINT``."""
    if len(tx_id) != 12:
        raise ValueError(f"STUN transaction id must be 12 bytes, got {len(tx_id)}")
    return _fingerprinted(BINDING_REQUEST, tx_id, _attr(ATTR_SOFTWARE, _SOFTWARE))


def _xor_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
                 tx_id: bytes) -> bytes:
    family = 0x01 if ip.version == 4 else 0x02
    mask = _COOKIE if ip.version == 4 else _COOKIE + tx_id
    xaddr = bytes(a ^ b for a, b in zip(ip.packed, mask, strict=True))
    return struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xaddr


def binding_response(tx_id: bytes, address: Address) -> bytes:
    """A binding success response telling the client it was seen at ``address``."""
    ip, port = address
    return _fingerprinted(BINDING_SUCCESS, tx_id,
                          _attr(ATTR_XOR_MAPPED_ADDRESS, _xor_address(ip, port, tx_id)))


def _header(data: bytes) -> tuple[int, int, bytes] | None:
    if len(data) < 20:
        return None
    kind, length, cookie, tx_id = _HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE or kind & 0xC000 or length % 4 or 20 + length > len(data):
        return None
    return kind, length, tx_id


def is_binding_request(data: bytes) -> bool:
    head = _header(data)
    return head is not None and head[0] == BINDING_REQUEST


def parse_request(data: bytes) -> bytes | None:
    """The transaction id of a binding request, or ``None``."""
    head = _header(data)
    if head is None or head[0] != BINDING_REQUEST:
        return None
    return head[2]


def _attrs(data: bytes, length: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos, end = 20, 20 + length
    while pos + 4 <= end:
        kind, size = struct.unpack_from("!HH", data, pos)
        pos += 4
        if pos + size > end:
            break
        out.setdefault(kind, bytes(data[pos:pos + size]))
        pos += size + (-size) % 4
    return out


def _address(value: bytes, xor: bool, tx_id: bytes) -> Address | None:
    if len(value) < 4:
        return None
    family = value[1]
    port = int.from_bytes(value[2:4], "big")
    raw = value[4:]
    if family == 0x01 and len(raw) == 4:
        mask = _COOKIE
    elif family == 0x02 and len(raw) == 16:
        mask = _COOKIE + tx_id
    else:
        return None
    if xor:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, mask, strict=True))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, port


def parse_response(data: bytes) -> tuple[bytes, Address] | None:
    """``(tx_id, mapped address)`` of a binding success response, or ``None``."""
    head = _header(data)
    if head is None or head[0] != BINDING_SUCCESS:
        return None
    _, length, tx_id = head
    attrs = _attrs(data, length)
    if ATTR_XOR_MAPPED_ADDRESS in attrs:
        addr = _address(attrs[ATTR_XOR_MAPPED_ADDRESS], True, tx_id)
    elif ATTR_MAPPED_ADDRESS in attrs:
        addr = _address(attrs[ATTR_MAPPED_ADDRESS], False, tx_id)
    else:
        return None
    return None if addr is None else (tx_id, addr)
