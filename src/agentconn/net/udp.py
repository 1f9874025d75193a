"""UDP sockets of the userspace stack (sans-IO): the port table and datagram codec.

Theory of operation: a bound socket owns ``(address, port)``; ``address`` None means every
interface address (a wildcard bind). An inbound datagram goes to the exact binding of its
destination first, then to the wildcard binding of its port; no match is counted by the caller
(the kernel would answer ICMP port unreachable; we stay silent, as gVisor's netstack in Coder's
agent does by default). :data:`EPHEMERAL_PORTS` is the one range that TCP and UDP pick local
ports from (``Interface.ephemeral_port``): Linux's default ``ip_local_port_range``.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Generic, TypeVar

from .wire import WireError
from .wire.ipv4 import Ipv4Repr
from .wire.ipv6 import Ipv6Repr
from .wire.udp import PROTOCOL_UDP, UdpRepr

__all__ = ["EPHEMERAL_PORTS", "Datagram", "PortTable", "emit_datagram", "parse_datagram"]

Address = IPv4Address | IPv6Address
S = TypeVar("S")
EPHEMERAL_PORTS = range(32768, 61000)   # Linux's default ip_local_port_range, 32768-60999


@dataclass(frozen=True, slots=True)
class Datagram:
    """One received UDP datagram: addresses, ports and payload."""

    src: Address
    src_port: int
    dst: Address
    dst_port: int
    payload: bytes


def parse_datagram(packet: bytes) -> Datagram:
    """Parse an IPv4/IPv6 packet carrying UDP; raises WireError for anything else or bad bytes."""
    if not packet:
        raise WireError("empty packet")
    ip: Ipv4Repr | Ipv6Repr
    if packet[0] >> 4 == 4:
        ip, rest = Ipv4Repr.parse(packet)
        protocol = ip.protocol
    else:
        ip, rest = Ipv6Repr.parse(packet)
        protocol = ip.next_header
    if protocol != PROTOCOL_UDP:
        raise WireError(f"not UDP (protocol {protocol})")
    udp, payload = UdpRepr.parse(rest, ip.src, ip.dst)
    return Datagram(ip.src, udp.src_port, ip.dst, udp.dst_port, bytes(payload))


def emit_datagram(src: Address, src_port: int, dst: Address, dst_port: int,
                  payload: bytes, *, hop_limit: int = 64) -> bytes:
    """The IP packet carrying `payload` from src:src_port to dst:dst_port."""
    udp = UdpRepr(src_port, dst_port, len(payload)).emit(payload, src, dst)
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        return Ipv4Repr(src, dst, PROTOCOL_UDP, len(udp), ttl=hop_limit).emit(udp)
    if isinstance(src, IPv6Address) and isinstance(dst, IPv6Address):
        return Ipv6Repr(src, dst, PROTOCOL_UDP, len(udp), hop_limit=hop_limit).emit(udp)
    raise ValueError(f"mixed address families: {src} and {dst}")


class PortTable(Generic[S]):
    """Bound UDP ports: (address or None for any, port) -> socket."""

    def __init__(self) -> None:
        self._bound: dict[tuple[Address | None, int], S] = {}

    def bind(self, address: Address | None, port: int, owner: S) -> int:
        """Bind `owner` to (address or None for any, port). Raises OSError(EADDRINUSE) and
        ValueError for a port outside 1-65535."""
        if not 0 < port < 65536:
            raise ValueError(f"UDP port {port} out of range 1-65535")
        elif self._in_use(address, port):
            where = f"{address}:{port}" if address is not None else f"*:{port}"
            raise OSError(errno.EADDRINUSE, f"UDP {where} is already bound in this tunnel")
        self._bound[(address, port)] = owner
        return port

    def in_use(self, address: Address | None, port: int) -> bool:
        """Whether binding (address, port) would conflict with an existing binding."""
        return self._in_use(address, port)

    def _in_use(self, address: Address | None, port: int) -> bool:
        if address is None:
            return any(p == port for _, p in self._bound)
        return (address, port) in self._bound or (None, port) in self._bound

    def unbind(self, address: Address | None, port: int) -> None:
        self._bound.pop((address, port), None)

    def lookup(self, address: Address, port: int) -> S | None:
        found = self._bound.get((address, port))
        return found if found is not None else self._bound.get((None, port))

    def __len__(self) -> int:
        return len(self._bound)
