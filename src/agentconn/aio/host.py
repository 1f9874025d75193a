"""The narrow interface a transport needs from the tunnel adapter.

Transports (:mod:`.streams`, :mod:`.datagram`) run over the sans-IO IP interface
(:class:`agentconn.net.iface.Interface`) and need exactly four things from whoever drives it:
the interface itself, the running loop, a coalesced flush, and a way to hear about their own
TCP sockets' events. :class:`~agentconn.aio.tunnel.Tunnel` provides them; nothing else of the
tunnel is visible to a transport.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from _wgcore.tcpip import TcpConn, TcpEvent, TcpListener

from ..net.iface import Interface

__all__ = ["StackHost"]


class StackHost(Protocol):
    """What :class:`~agentconn.aio.tunnel.Tunnel` offers its transports."""

    @property
    def iface(self) -> Interface:
        """The IP interface: TCP stack, UDP ports, addressing."""

    @property
    def closed(self) -> bool:
        """True once the tunnel was closed."""

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the tunnel runs on. Raises TunnelClosedError if it is not running."""

    def clock(self) -> float:
        """The protocol clock (monotonic seconds, sub-millisecond) the node's deadlines use."""

    def schedule_flush(self) -> None:
        """Send what the interface has queued, once, soon (coalesced ``call_soon``)."""

    def watch(self, socket: TcpConn | TcpListener, handler: Callable[[TcpEvent], None]) -> None:
        """Call `handler(flags)` with the socket's events from now on (replacing any earlier
        handler); events are delivered once per socket per batch."""

    def unwatch(self, socket: TcpConn | TcpListener) -> None:
        """Stop delivering the socket's events (no-op if not watched)."""
