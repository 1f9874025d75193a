"""asyncio DatagramTransport for UDP sockets on a Tunnel (``Tunnel.create_datagram_endpoint``).

Behaves like the transport ``loop.create_datagram_endpoint`` returns: ``sendto(data, addr)``
(``addr`` omitted on a connected endpoint), ``close()``/``abort()``, ``get_extra_info("sockname"
| "peername")``; the protocol gets ``connection_made``, ``datagram_received(data, addr)``,
``error_received(exc)`` (e.g. EMSGSIZE for a datagram larger than the tunnel MTU allows, as the
kernel would raise) and ``connection_lost(None)``.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
from typing import TYPE_CHECKING, Any

from ..net.udp import emit_datagram

if TYPE_CHECKING:
    from .tunnel import Tunnel

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["TunnelDatagramTransport"]


class TunnelDatagramTransport(asyncio.DatagramTransport):
    """One bound UDP socket of the userspace stack."""

    def __init__(self, tunnel: Tunnel, protocol: asyncio.DatagramProtocol,
                 local: tuple[Address | None, int], remote: tuple[Address, int] | None) -> None:
        super().__init__()
        self._tunnel = tunnel
        self._protocol = protocol
        self._local = local
        self._remote = remote
        self._closing = False

    # -- asyncio.BaseTransport / DatagramTransport --------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            host = self._local[0]
            return (str(host) if host is not None else "", self._local[1])
        if name == "peername":
            return None if self._remote is None else (str(self._remote[0]), self._remote[1])
        if name == "tunnel":
            return self._tunnel
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._tunnel._udp_ports.unbind(self._local[0], self._local[1])
        self._tunnel._loop_call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0   # datagrams are sealed at the next flush; nothing accumulates here

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing:
            raise OSError(errno.EBADF, "UDP transport is closed")
        if addr is None:
            if self._remote is None:
                raise ValueError("sendto() needs an address on an unconnected endpoint")
            dst, port = self._remote
        else:
            if self._remote is not None and addr is not None:
                raise ValueError(f"endpoint is connected to {self._remote}; sendto() takes no address")
            dst, port = ipaddress.ip_address(addr[0]), int(addr[1])
        src = self._local[0] or self._tunnel._source_for(dst)
        payload = bytes(data)
        limit = self._tunnel.device.mtu - (20 if dst.version == 4 else 40) - 8
        if len(payload) > limit:
            # The kernel raises EMSGSIZE for a datagram it would have to fragment with DF set;
            # asyncio transports report send errors through error_received.
            self._protocol.error_received(OSError(
                errno.EMSGSIZE, f"UDP payload of {len(payload)} bytes exceeds {limit} "
                                f"(tunnel MTU {self._tunnel.device.mtu})"))
            return
        self._tunnel.send_packet(emit_datagram(src, self._local[1], dst, port, payload))

    # -- from the tunnel --------------------------------------------------------------------

    def _deliver(self, payload: bytes, src: Address, src_port: int) -> None:
        if self._closing:
            return
        if self._remote is not None and (src, src_port) != self._remote:
            return                      # a connected socket only hears its peer
        self._protocol.datagram_received(payload, (str(src), src_port))
