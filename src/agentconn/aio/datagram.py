"""asyncio DatagramTransport for UDP sockets on a Tunnel, and its factory
(:class:`DatagramEndpoints`, mixed into ``Tunnel``).

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
from collections.abc import Callable
from typing import Any

from ..errors import TunnelClosedError
from .host import StackHost

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["DatagramEndpoints", "TunnelDatagramTransport"]


class TunnelDatagramTransport(asyncio.DatagramTransport):
    """One bound UDP socket of the userspace stack."""

    def __init__(self, host: StackHost, protocol: asyncio.DatagramProtocol,
                 local: tuple[Address | None, int], remote: tuple[Address, int] | None) -> None:
        super().__init__()
        self._host = host
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
            return self._host
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._host.iface.unbind_udp(self._local[0], self._local[1])
        if not self._host.closed:
            self._host.running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0   # datagrams are sealed at the next flush; nothing accumulates here

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing:
            raise OSError(errno.EBADF, "UDP transport is closed")
        if self._host.closed:
            raise TunnelClosedError("tunnel is not running")
        if addr is None:
            if self._remote is None:
                raise ValueError("sendto() needs an address on an unconnected endpoint")
            dst, port = self._remote
        else:
            if self._remote is not None and addr is not None:
                raise ValueError(f"endpoint is connected to {self._remote}; sendto() takes no address")
            dst, port = ipaddress.ip_address(addr[0]), int(addr[1])
        try:
            self._host.iface.send_datagram(self._local[0], self._local[1], dst, port, bytes(data))
        except OSError as exc:
            # The kernel raises EMSGSIZE for a datagram it would have to fragment with DF set;
            # asyncio transports report send errors through error_received.
            self._protocol.error_received(exc)
            return
        self._host.schedule_flush()

    # -- from the interface (the handler bound with the port) ---------------------------------

    def _deliver(self, payload: bytes, src: Address, src_port: int) -> None:
        if self._closing:
            return
        if self._remote is not None and (src, src_port) != self._remote:
            return                      # a connected socket only hears its peer
        self._protocol.datagram_received(payload, (str(src), src_port))


class DatagramEndpoints:
    """``create_datagram_endpoint`` for a :class:`~agentconn.aio.host.StackHost` (mixed into
    ``Tunnel``)."""

    async def create_datagram_endpoint(
            self: StackHost, protocol_factory: Callable[[], asyncio.DatagramProtocol], *,
            local_addr: tuple[str | None, int] | None = None,
            remote_addr: tuple[str, int] | None = None,
    ) -> tuple[TunnelDatagramTransport, asyncio.DatagramProtocol]:
        """A UDP socket on the tunnel's own addresses, like ``loop.create_datagram_endpoint``.

        `local_addr` (host, port): host must be one of the interface addresses, or None/""
        for all of them; port 0 picks an ephemeral port. `remote_addr` connects the socket.
        Raises OSError(EADDRINUSE) for a taken port, ValueError for a foreign address,
        NoRouteError for an unroutable remote.
        """
        self.running_loop()
        address, port = local_addr if local_addr is not None else (None, 0)
        transports: list[TunnelDatagramTransport] = []

        def deliver(payload: bytes, src: Address, src_port: int) -> None:
            for transport in transports:
                transport._deliver(payload, src, src_port)

        # Bind first: a taken port or a foreign address raises before the protocol exists.
        local, bound, remote = self.iface.bind_udp(deliver, address, int(port), remote_addr)
        try:
            protocol = protocol_factory()
        except BaseException:
            self.iface.unbind_udp(local, bound)
            raise
        transport = TunnelDatagramTransport(self, protocol, (local, bound), remote)
        transports.append(transport)
        protocol.connection_made(transport)
        return transport, protocol
