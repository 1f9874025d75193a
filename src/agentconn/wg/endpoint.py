"""UDP endpoints as raw ``struct sockaddr`` bytes, the form the data path stores and sends to.

The data path (``_wgcore``) copies a peer's endpoint straight into ``sendmmsg``, so endpoints
are kept as the sockaddr the socket expects: ``sockaddr_in`` (16 bytes) on an AF_INET socket,
``sockaddr_in6`` (28 bytes) on an AF_INET6 one, where IPv4 peers appear as ``::ffff:a.b.c.d``.

A peer reached through a relay (a DERP server) has a *relay endpoint* instead: an 8-byte
sockaddr of family AF_UNSPEC carrying a 32-bit path number (:func:`relay_sockaddr`). The UDP
sender skips those, the tunnel hands them to its relay, and datagrams that come back over the
relay enter the data path with that address as their source, so WireGuard's roaming (the
endpoint follows the last authenticated source) works across UDP and relays alike.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import sys

from ..errors import ConfigError

__all__ = [
    "format_sockaddr",
    "parse_sockaddr",
    "relay_path",
    "relay_sockaddr",
    "sockaddr",
    "source_bytes",
]

_FAMILY = struct.Struct("=H")        # Linux sa_family_t, host byte order

#: True where ``struct sockaddr`` begins with ``sa_len`` (one byte) then a one-byte family.
SOCKADDR_HAS_LEN = sys.platform == "darwin" or "bsd" in sys.platform


def _head(family: int, length: int) -> bytes:
    """The first two bytes of a ``length``-byte sockaddr of ``family``."""
    return bytes((length, family)) if SOCKADDR_HAS_LEN else _FAMILY.pack(family)


def _family(raw: bytes) -> int:
    return raw[1] if SOCKADDR_HAS_LEN else int(_FAMILY.unpack_from(raw)[0])

_PORT = struct.Struct("!H")
_RELAY_PATH = struct.Struct("!I")  # after an AF_UNSPEC family: the path number


def sockaddr(host: str, port: int, family: int) -> bytes:
    """The sockaddr for numeric ``host``:``port`` on a socket of ``family``.

    Raises :class:`ConfigError` if ``host`` is not an IP address usable on that family.
    """
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ConfigError(f"endpoint host {host!r} is not an IP address") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"endpoint port {port} out of range 0-65535")
    if family == socket.AF_INET:
        if ip.version != 4:
            raise ConfigError(f"endpoint {host} is IPv6 but the socket is IPv4-only")
        return _head(socket.AF_INET, 16) + _PORT.pack(port) + ip.packed + bytes(8)
    if ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return (_head(socket.AF_INET6, 28) + _PORT.pack(port) + bytes(4) + ip.packed
            + bytes(4))


def parse_sockaddr(raw: bytes) -> tuple[str, int]:
    """(host, port) of a sockaddr; IPv4-mapped IPv6 addresses are shown as IPv4."""
    if len(raw) < 8:
        return ("", 0)
    family = _family(raw)
    (port,) = _PORT.unpack_from(raw, 2)
    if family == socket.AF_INET:
        return (str(ipaddress.IPv4Address(raw[4:8])), port)
    if family == socket.AF_INET6 and len(raw) >= 24:
        ip = ipaddress.IPv6Address(raw[8:24])
        if ip.ipv4_mapped is not None:
            return (str(ip.ipv4_mapped), port)
        return (str(ip), port)
    return ("", 0)


def relay_sockaddr(path: int) -> bytes:
    """The relay endpoint for relay path number `path` (0 to 2**32-1)."""
    if not 0 <= path < 1 << 32:
        raise ValueError(f"relay path {path} out of range 0-4294967295")
    return bytes(2) + _RELAY_PATH.pack(path) + bytes(2)  # AF_UNSPEC, either layout


def relay_path(raw: bytes) -> int | None:
    """The path number of a relay endpoint, or None for a UDP sockaddr (or none)."""
    if len(raw) != 8 or raw[0] or raw[1]:
        return None
    return int(_RELAY_PATH.unpack_from(raw, 2)[0])


def format_sockaddr(raw: bytes) -> str:
    """``host:port`` (``[v6]:port``) for display, ``relay:<path>`` for a relay endpoint; empty
    string for no endpoint."""
    path = relay_path(raw)
    if path is not None:
        return f"relay:{path}"
    host, port = parse_sockaddr(raw)
    if not host:
        return ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _ip_and_port(raw: bytes) -> tuple[bytes, int] | None:
    """The packed IP (IPv4-mapped IPv6 as IPv4) and port of a UDP sockaddr, else None.

    Straight from the bytes, no ``ipaddress`` round trip: it runs for every handshake message
    under load, including every message of a flood (issue 14 item 3).
    """
    if len(raw) < 8:
        return None
    family = _family(raw)
    if family == socket.AF_INET:
        return raw[4:8], _PORT.unpack_from(raw, 2)[0]
    if family == socket.AF_INET6 and len(raw) >= 24:
        ip = raw[8:24]
        return (ip[12:] if ip[:12] == _V4_MAPPED_PREFIX else ip), _PORT.unpack_from(raw, 2)[0]
    return None


def source_bytes(raw: bytes) -> bytes:
    """IP bytes then port (u16 LE) of a sockaddr, as wireguard-go keys cookies (spec §5)."""
    parsed = _ip_and_port(raw)
    if parsed is None:
        return raw
    return parsed[0] + struct.pack("<H", parsed[1])


def source_ip(raw: bytes) -> bytes:
    """The IP bytes of a sockaddr (the rate limiter's key)."""
    parsed = _ip_and_port(raw)
    return raw if parsed is None else parsed[0]
