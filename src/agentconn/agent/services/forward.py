"""Forwarding of tunnel TCP and UDP ports the agent does not serve to the workspace loopback.

Theory of operation (agent-api.md §2.2): the agent listens with the TCP stack's catch-all
listener (port 0), which takes a SYN for every port that has no listener of its own (the API,
SSH, PTY and speedtest ports keep theirs). Each accepted connection is joined to a kernel TCP
connection to ``127.0.0.1:<the dialed port>``; bytes are copied both ways with backpressure
and half-closes passed on. If nothing listens on the loopback port, the tunnel connection is
reset (the dialer sees ECONNRESET; gVisor's forwarder, which dials before answering the SYN,
gives ECONNREFUSED instead). UDP datagrams to ports without a tunnel socket arrive through the
tunnel's ``udp_fallback`` and travel over one kernel UDP socket per flow (idle flows closed).
This is what ``AgentConn.dial`` and port-forwarding rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from agentconn.agent.options import AgentOptions
from agentconn.aio.relay import join

if TYPE_CHECKING:
    from agentconn.aio.tunnel import Tunnel

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
    """One tunnel (client address, client port, agent port) ↔ a kernel UDP socket connected
    to the workspace loopback port; replies go back from the agent port."""

    def __init__(self, owner: UdpLoopbackForwarder, key: tuple[Any, int, Any, int]) -> None:
        self.owner = owner
        self.key = key
        self.transport: asyncio.DatagramTransport | None = None
        self.last = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        src, sport, dst, dport = self.key
        self.last = asyncio.get_running_loop().time()
        self.owner.replies += 1
        self.owner.send_back(dst, dport, src, sport, data)

    def error_received(self, exc: Exception) -> None:  # e.g. ECONNREFUSED: nobody listens
        _log.debug("UDP flow %s: %s", self.key, exc)


class UdpLoopbackForwarder:
    """UDP datagrams to agent ports without a tunnel socket go to ``host:<port>``.

    One kernel UDP socket per (client address, client port, agent port) flow, closed after
    ``idle`` seconds without traffic (Tailscale's netstack forwards UDP the same way).
    """

    def __init__(self, options: AgentOptions, *, host: str = "127.0.0.1",
                 idle: float = 60.0) -> None:
        self.options = options
        self.host = host
        self.idle = idle
        self.forwarded = 0
        self.replies = 0
        self._tunnel: Tunnel | None = None
        self._flows: dict[tuple[Any, int, Any, int], _UdpFlow] = {}
        self._pending: dict[tuple[Any, int, Any, int], list[bytes]] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def start(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel
        tunnel.udp_fallback = self._on_datagram
        self._reaper = asyncio.create_task(self._reap())

    def send_back(self, src: Any, sport: int, dst: Any, dport: int, data: bytes) -> None:
        from agentconn.net.udp import emit_datagram

        if self._tunnel is not None:
            with contextlib.suppress(Exception):
                self._tunnel.send_packet(emit_datagram(src, sport, dst, dport, data))

    def _on_datagram(self, d: Any) -> None:
        key = (d.src, d.src_port, d.dst, d.dst_port)
        self.forwarded += 1
        flow = self._flows.get(key)
        if flow is not None and flow.transport is not None:
            flow.last = asyncio.get_running_loop().time()
            flow.transport.sendto(d.payload)
            return
        if key in self._pending:
            self._pending[key].append(d.payload)
            return
        self._pending[key] = [d.payload]
        asyncio.get_running_loop().create_task(self._open(key))

    async def _open(self, key: tuple[Any, int, Any, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, flow = await loop.create_datagram_endpoint(
                lambda: _UdpFlow(self, key), remote_addr=(self.host, key[3]))
        except OSError as e:
            _log.debug("UDP forward to %s:%d failed: %s", self.host, key[3], e)
            self._pending.pop(key, None)
            return
        flow.last = loop.time()
        self._flows[key] = flow
        for payload in self._pending.pop(key, []):
            assert flow.transport is not None
            flow.transport.sendto(payload)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(self.idle, 10.0))
            now = asyncio.get_running_loop().time()
            for key, flow in list(self._flows.items()):
                if now - flow.last > self.idle and flow.transport is not None:
                    flow.transport.close()
                    del self._flows[key]

    async def close(self) -> None:
        if self._tunnel is not None and self._tunnel.udp_fallback == self._on_datagram:
            self._tunnel.udp_fallback = None
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        for flow in self._flows.values():
            if flow.transport is not None:
                flow.transport.close()
        self._flows.clear()


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
