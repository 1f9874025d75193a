"""Forwarding of tunnel TCP and UDP ports the agent does not serve to the workspace loopback.

Theory of operation (agent-api.md §2.2): the agent listens with the TCP stack's catch-all
listener (port 0), which takes a SYN for every port that has no listener of its own (the API,
SSH, PTY and speedtest ports keep theirs). Each accepted connection is joined to a kernel TCP
connection to ``127.0.0.1:<the dialed port>``; bytes are copied both ways with backpressure
and half-closes passed on. If nothing listens on the loopback port, the tunnel connection is
reset (the dialer sees ECONNRESET; gVisor's forwarder, which dials before answering the SYN,
gives ECONNREFUSED instead). A UDP datagram to a port without a tunnel socket arrives through
the tunnel's ``udp_fallback``; the agent then binds a tunnel datagram endpoint on that port and
relays each client over its own kernel UDP socket (idle flows closed).
This is what ``AgentConn.dial`` and port-forwarding rely on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from agentconn.agent.options import AgentOptions
from agentconn.aio.relay import join

if TYPE_CHECKING:
    from agentconn.aio.tunnel import Tunnel
    from agentconn.net.udp import Datagram

__all__ = ["LoopbackForwarder", "PortForwarding", "UdpLoopbackForwarder"]

_log = logging.getLogger("agentconn.agent.forward")


class LoopbackForwarder:
    """The catch-all TCP listener of an agent; ``host`` is the loopback address dialed."""

    def __init__(self, options: AgentOptions, *, host: str = "127.0.0.1") -> None:
        self.options = options
        self.host = host
        self.forwarded = 0
        self.refused = 0
        self._server: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, tunnel: Tunnel) -> None:
        self._server = await tunnel.start_server(self._accept, 0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        port = writer.get_extra_info("sockname")[1]
        try:
            try:
                local = await asyncio.wait_for(asyncio.open_connection(self.host, port), 10)
            except (TimeoutError, OSError) as e:
                self.refused += 1
                _log.debug("forward to %s:%d failed: %s", self.host, port, e)
                writer.transport.abort()
                return
            self.forwarded += 1
            await join((reader, writer), local)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _UdpFlow(asyncio.DatagramProtocol):
    """One tunnel client (address, port) of one forwarded agent port ↔ a kernel UDP socket
    connected to the workspace loopback port; replies go back through the port's tunnel
    endpoint, so they leave from the agent port the client sent to."""

    def __init__(self, port: _TunnelPort, client: tuple[str, int]) -> None:
        self.port = port
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.last = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.last = asyncio.get_running_loop().time()
        self.port.reply(self.client, data)

    def error_received(self, exc: Exception) -> None:  # e.g. ECONNREFUSED: nobody listens
        _log.debug("UDP flow %s -> port %d: %s", self.client, self.port.number, exc)


class _TunnelPort(asyncio.DatagramProtocol):
    """A tunnel UDP endpoint bound to one forwarded agent (address, port), opened on that
    port's first datagram; each client of the port gets its own loopback flow."""

    def __init__(self, forwarder: UdpLoopbackForwarder, number: int) -> None:
        self.forwarder = forwarder
        self.number = number
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[str, int], _UdpFlow] = {}
        self.pending: dict[tuple[str, int], list[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.forward((str(addr[0]), int(addr[1])), data)

    def forward(self, client: tuple[str, int], data: bytes) -> None:
        """Send `data` from `client` on to the loopback port (opening its flow first)."""
        self.forwarder.forwarded += 1
        flow = self.flows.get(client)
        if flow is not None and flow.transport is not None:
            flow.last = asyncio.get_running_loop().time()
            flow.transport.sendto(data)
        elif client in self.pending:
            self.pending[client].append(data)
        else:
            self.pending[client] = [data]
            self.forwarder.spawn(self._open(client))

    async def _open(self, client: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, flow = await loop.create_datagram_endpoint(
                lambda: _UdpFlow(self, client), remote_addr=(self.forwarder.host, self.number))
        except OSError as e:
            _log.debug("UDP forward to %s:%d failed: %s", self.forwarder.host, self.number, e)
            self.pending.pop(client, None)
            return
        flow.last = loop.time()
        self.flows[client] = flow
        for payload in self.pending.pop(client, []):
            assert flow.transport is not None
            flow.transport.sendto(payload)

    def reply(self, client: tuple[str, int], data: bytes) -> None:
        """A loopback answer for `client`: back through the tunnel from this port."""
        if self.transport is not None and not self.transport.is_closing():
            self.forwarder.replies += 1
            self.transport.sendto(data, client)

    def error_received(self, exc: Exception) -> None:  # e.g. EMSGSIZE for a reply too big
        _log.debug("UDP port %d: %s", self.number, exc)

    def reap(self, now: float, idle: float) -> bool:
        """Close flows idle for `idle` seconds; True when the port has none left."""
        for client, flow in list(self.flows.items()):
            if now - flow.last > idle and flow.transport is not None:
                flow.transport.close()
                del self.flows[client]
        return not self.flows and not self.pending

    def close(self) -> None:
        for flow in self.flows.values():
            if flow.transport is not None:
                flow.transport.close()
        self.flows.clear()
        if self.transport is not None:
            self.transport.close()


class UdpLoopbackForwarder:
    """UDP datagrams to agent ports without a tunnel socket go to ``host:<port>``.

    The first datagram to a port arrives through the tunnel's ``udp_fallback``; the forwarder
    then binds a tunnel datagram endpoint on that (agent address, port), which takes the
    port's later datagrams and sends the replies. One kernel UDP socket per (client address,
    client port, agent port) flow, closed after ``idle`` seconds without traffic, and the
    port's endpoint with its last flow (Tailscale's netstack forwards UDP the same way).
    """

    def __init__(self, options: AgentOptions, *, host: str = "127.0.0.1",
                 idle: float = 60.0) -> None:
        self.options = options
        self.host = host
        self.idle = idle
        self.forwarded = 0
        self.replies = 0
        self._tunnel: Tunnel | None = None
        self._ports: dict[tuple[str, int], _TunnelPort] = {}
        self._opening: dict[tuple[str, int], list[tuple[tuple[str, int], bytes]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None

    async def start(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel
        tunnel.udp_fallback = self._on_unclaimed
        self._reaper = asyncio.create_task(self._reap())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_unclaimed(self, d: Datagram) -> None:
        where = (str(d.dst), d.dst_port)
        client = (str(d.src), d.src_port)
        port = self._ports.get(where)
        if port is not None:            # bound meanwhile (datagram was already in flight)
            port.forward(client, d.payload)
        elif where in self._opening:
            self._opening[where].append((client, d.payload))
        else:
            self._opening[where] = [(client, d.payload)]
            self.spawn(self._bind(where))

    async def _bind(self, where: tuple[str, int]) -> None:
        assert self._tunnel is not None
        try:
            _, port = await self._tunnel.create_datagram_endpoint(
                lambda: _TunnelPort(self, where[1]), local_addr=where)
        except (OSError, ValueError) as e:
            _log.debug("cannot bind tunnel UDP %s:%d: %s", where[0], where[1], e)
            self._opening.pop(where, None)
            return
        assert isinstance(port, _TunnelPort)
        self._ports[where] = port
        for client, payload in self._opening.pop(where, []):
            port.forward(client, payload)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(self.idle, 10.0))
            now = asyncio.get_running_loop().time()
            for where, port in list(self._ports.items()):
                if port.reap(now, self.idle):
                    port.close()
                    del self._ports[where]

    async def close(self) -> None:
        if self._tunnel is not None and self._tunnel.udp_fallback == self._on_unclaimed:
            self._tunnel.udp_fallback = None
        for task in [self._reaper, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._reaper, *self._tasks] if t is not None),
                             return_exceptions=True)
        for port in self._ports.values():
            port.close()
        self._ports.clear()


class PortForwarding:
    """The agent's ``forward`` service: TCP (catch-all listener) and UDP (fallback) to the
    workspace loopback."""

    def __init__(self, options: AgentOptions, *, host: str = "127.0.0.1") -> None:
        self.tcp = LoopbackForwarder(options, host=host)
        self.udp = UdpLoopbackForwarder(options, host=host)

    async def start(self, tunnel: Tunnel) -> None:
        await self.tcp.start(tunnel)
        await self.udp.start(tunnel)

    async def close(self) -> None:
        await self.udp.close()
        await self.tcp.close()
