"""Events of the sans-IO IP interface (:class:`agentconn.net.iface.Interface`).

The interface never calls back into its user: what happened while it consumed packets or
timers is queued as one of these frozen records, drained with ``Interface.next_event()`` (the
aioquic pattern). TCP reports once per touched socket per batch, never per segment.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Generic, TypeVar

from _wgcore.tcpip import TcpConn, TcpEvent, TcpListener

from .udp import Datagram

__all__ = ["DatagramReceived", "DatagramUnclaimed", "Event", "PingReplied", "TcpActivity"]

Address = IPv4Address | IPv6Address
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class TcpActivity:
    """A TCP connection or listener has news since its last event.

    ``socket``: the ``TcpConn`` or ``TcpListener``; ``flags``: what happened
    (``TcpEvent.CONNECTED | READABLE | EOF | WRITABLE | CLOSED | ACCEPT``), accumulated over
    the batch.
    """

    socket: TcpConn | TcpListener
    flags: TcpEvent


@dataclass(frozen=True, slots=True)
class DatagramReceived(Generic[S]):
    """A UDP datagram for a bound port.

    ``owner``: what was passed to ``Interface.bind_udp`` for that port; ``src``/``src_port``:
    the sender; ``payload``: the UDP payload.
    """

    owner: S
    payload: bytes
    src: Address
    src_port: int


@dataclass(frozen=True, slots=True)
class DatagramUnclaimed:
    """A UDP datagram to one of our addresses on a port nobody bound (only reported when
    ``Interface.report_unclaimed_udp`` is set; otherwise dropped and counted)."""

    datagram: Datagram


@dataclass(frozen=True, slots=True)
class PingReplied:
    """The reply to the echo request ``token`` (from ``Interface.ping``) came back after
    ``rtt`` seconds."""

    token: int
    rtt: float


Event = TcpActivity | DatagramReceived[object] | DatagramUnclaimed | PingReplied
