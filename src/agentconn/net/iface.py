"""The userspace IP interface, sans-IO: addresses, the TCP stack, UDP ports, ICMP/TSMP, pings.

Theory of operation (STYLE §3, DATAPATH.md)
-------------------------------------------
An :class:`Interface` is what a kernel's network interface plus its IP layer would be, with
no socket, no clock and no event loop. Its user (the asyncio adapter, ``aio.tunnel``) feeds
it and drains it:

* **Input.** ``receive_batch(rx, tx, now)`` hands a batch of decrypted inner packets to the
  TCP engine in C (segments are demultiplexed and consumed there; owed ACKs go straight into
  ``tx``) and returns whether the batch held anything else. ``receive_other(rx, now)`` then
  takes those other packets one by one: ICMPv4/ICMPv6 echo requests and TSMP pings to our
  addresses are answered, echo replies matched to our pings, UDP demultiplexed to bound
  ports. ``receive_packet(packet, now)`` does the same for a single packet.
* **Output, always pulled.** ``fill(tx, now)`` appends queued IP packets (replies, UDP
  datagrams, pings) and then TCP segments to a ``PacketBatch``; it returns True while more
  is waiting. ``has_output`` says whether a fill would add anything.
* **Events.** ``next_event()`` returns the next :mod:`agentconn.net.events` record or
  ``None``: TCP activity once per touched connection or listener, UDP datagrams for bound
  ports (and, if asked for, those for unbound ports), ping replies.
* **Timers.** ``get_timer()`` is the earliest deadline (TCP retransmission, delayed ACK,
  TIME_WAIT...) or ``None``; ``handle_timer(now)`` runs what is due.
* **API calls** open TCP connections and listeners, bind UDP ports and send datagrams, and
  send pings; each validates its arguments and raises typed errors (``ValueError``,
  :class:`~agentconn.errors.NoRouteError`, ``OSError`` with the kernel's errno).

``now`` is the caller's monotonic clock in seconds. TCP deadlines come back in that clock,
so the adapter must use one clock for ``receive_batch``/``fill``/timers; ping RTTs are the
difference of the ``now`` given to :meth:`ping` and to :meth:`receive_other`, so those two
should come from a clock with sub-millisecond resolution.

Routing (which destinations some peer's AllowedIPs cover) is WireGuard's business; the
interface only asks through the ``has_route`` callable it is given, so ``net/`` never imports
``wg/`` (STYLE §1). Malformed input is dropped and counted in :attr:`counters`, never raised.
"""
from __future__ import annotations

import errno
import ipaddress
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

from _wgcore.datapath import RESULT, PacketBatch
from _wgcore.tcpip import TcpConn, TcpEvent, TcpListener, TcpStack

from ..errors import NoRouteError, TunnelError
from .events import DatagramReceived, DatagramUnclaimed, Event, PingReplied, TcpActivity
from .icmp import Pinger, answer
from .udp import EPHEMERAL_PORTS, PortTable, emit_datagram, parse_datagram
from .wire import WireError

__all__ = ["Address", "Interface"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_RES_DATA = RESULT["DATA"]
_PROTOCOL_UDP = 17


def _ip_protocol(packet: bytes) -> int:
    """The transport protocol number of an IPv4/IPv6 packet (no extension headers), or -1."""
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return packet[6]
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return packet[9]
    return -1


class Interface:
    """The IP layer of one tunnel (see module doc).

    `addresses`: the interface's own addresses; `mtu`: the inner MTU; `has_route(raw)`:
    whether a packet to the packed address `raw` can leave (some peer's AllowedIPs cover it).
    """

    def __init__(self, addresses: Sequence[Address], *, mtu: int,
                 has_route: Callable[[bytes], bool]) -> None:
        self.addresses: list[Address] = list(addresses)
        self.mtu = mtu
        self._has_route = has_route
        self.tcp = TcpStack(mtu=mtu)
        self.tcp.set_addresses([a.packed for a in self.addresses])
        self._udp: PortTable[object] = PortTable()
        self._pinger = Pinger()
        self._out: deque[bytes] = deque()
        self._events: deque[Event] = deque()
        #: When True, UDP datagrams to our addresses on unbound ports are reported as
        #: :class:`DatagramUnclaimed` events instead of being dropped.
        self.report_unclaimed_udp = False
        self.counters = {"echo_answered": 0, "unhandled": 0, "udp_received": 0,
                         "udp_no_socket": 0, "udp_malformed": 0, "udp_fallback": 0,
                         "too_big": 0}

    # -- input ----------------------------------------------------------------------------------

    def receive_batch(self, rx: PacketBatch, tx: PacketBatch, now: float) -> bool:
        """Feed a decrypted batch: TCP segments are handled in C (ACKs owed go into `tx`).
        Returns True when the batch also held other packets (then call :meth:`receive_other`)."""
        tcp = self.tcp
        before = tcp.non_tcp
        tcp.input(rx, tx, now)
        return tcp.non_tcp != before

    def receive_other(self, rx: PacketBatch, now: float) -> None:
        """Handle the packets of the batch that :meth:`receive_batch` left (not TCP)."""
        for _, packet, _, _ in rx.collect(_RES_DATA):
            self.receive_packet(packet, now)

    def receive_packet(self, packet: bytes, now: float) -> None:
        """Handle one inbound non-TCP IP packet: UDP to its port, echo requests answered,
        echo replies matched; anything else counted as unhandled."""
        if _ip_protocol(packet) == _PROTOCOL_UDP:
            self._receive_udp(packet)
            return
        reply = answer(packet, self.addresses)
        if reply is not None:
            self.counters["echo_answered"] += 1
            self._out.append(reply)
            return
        matched = self._pinger.receive(packet, now)
        if matched is not None:
            self._events.append(PingReplied(*matched))
            return
        self.counters["unhandled"] += 1

    def _receive_udp(self, packet: bytes) -> None:
        try:
            datagram = parse_datagram(packet)
        except WireError:
            self.counters["udp_malformed"] += 1
            return
        if datagram.dst not in self.addresses:
            self.counters["udp_no_socket"] += 1
            return
        owner = self._udp.lookup(datagram.dst, datagram.dst_port)
        if owner is None:
            if self.report_unclaimed_udp:
                self.counters["udp_fallback"] += 1
                self._events.append(DatagramUnclaimed(datagram))
            else:
                self.counters["udp_no_socket"] += 1
            return
        self.counters["udp_received"] += 1
        self._events.append(DatagramReceived(owner, datagram.payload, datagram.src,
                                             datagram.src_port))

    # -- events and timers ----------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event, or None when there is none (TCP activity is gathered lazily, one
        event per touched connection or listener)."""
        events = self._events
        if not events:
            for obj in self.tcp.take_touched():
                flags = obj.take_events()
                if flags:
                    events.append(TcpActivity(obj, TcpEvent(flags)))
            if not events:
                return None
        return events.popleft()

    def get_timer(self) -> float | None:
        """The earliest deadline of the stack (``now`` clock), or None."""
        return self.tcp.get_timer()

    def handle_timer(self, now: float) -> None:
        """Run every timer due at `now` (retransmissions, delayed ACKs, TIME_WAIT...)."""
        self.tcp.handle_timer(now)

    # -- output ---------------------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        """Whether :meth:`fill` would add a packet."""
        return bool(self._out) or self.tcp.has_output

    def fill(self, tx: PacketBatch, now: float) -> bool:
        """Append queued IP packets, then TCP segments, to `tx` while it has room. Returns
        True if something is still waiting (call again with an emptied batch). A packet too
        big for the batch's slots is dropped and counted in ``counters["too_big"]``."""
        out = self._out
        while out and tx.count < tx.slots:
            packet = out.popleft()
            try:
                tx.add_packet(packet)
            except ValueError:
                self.counters["too_big"] += 1
        more = self.tcp.output(tx, now) if self.tcp.has_output else False
        return more or bool(out)

    def send_packet(self, packet: bytes) -> None:
        """Queue a raw inner IP packet (routed by the WireGuard layer at the next fill)."""
        self._out.append(packet)

    # -- addressing -----------------------------------------------------------------------------

    def source_for(self, dst: Address) -> Address:
        """Our address of `dst`'s family. Raises TunnelError if there is none."""
        for address in self.addresses:
            if address.version == dst.version:
                return address
        raise TunnelError(f"the interface has no IPv{dst.version} address to reach {dst} from")

    def require_route(self, dst: Address) -> None:
        """Raise NoRouteError unless some peer's AllowedIPs cover `dst`."""
        if not self._has_route(dst.packed):
            raise NoRouteError(f"no peer's AllowedIPs cover {dst}")

    def own_address(self, host: str | None) -> Address | None:
        """`host` parsed as one of our addresses; None/"" for every address. Raises
        ValueError for an address that is not ours."""
        if not host:
            return None
        ip = ipaddress.ip_address(host)
        if ip not in self.addresses:
            raise ValueError(f"{ip} is not an address of this tunnel "
                             f"({', '.join(map(str, self.addresses))})")
        return ip

    def ephemeral_port(self, in_use: Callable[[int], bool], what: str) -> int:
        """A free port from EPHEMERAL_PORTS, starting at a random point (RFC 6056 §3.3.1)."""
        low, span = EPHEMERAL_PORTS.start, len(EPHEMERAL_PORTS)
        start = int.from_bytes(os.urandom(2), "big") % span
        for i in range(span):
            port = low + (start + i) % span
            if not in_use(port):
                return port
        raise OSError(errno.EADDRNOTAVAIL, f"no free local port to reach {what}")

    # -- TCP ------------------------------------------------------------------------------------

    def connect(self, host: str, port: int, now: float, *, local_port: int = 0) -> TcpConn:
        """Start a TCP connection to `host`:`port` (an address literal). The connection
        reports ``TcpEvent.CONNECTED`` or ``CLOSED`` (with ``error``) through :meth:`next_event`.
        Raises ValueError for a bad host or port, NoRouteError, OSError(EADDRNOTAVAIL)."""
        try:
            dst = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"host must be an IP address inside the tunnel, got {host!r}") from None
        if not 0 < int(port) < 65536:
            raise ValueError(f"port {port} out of range 1-65535")
        self.require_route(dst)
        src = self.source_for(dst)
        s, d, dport = src.packed, dst.packed, int(port)
        lport = local_port or self.ephemeral_port(
            lambda p: self.tcp.in_use(s, p, d, dport), f"{dst} port {dport}")
        return self.tcp.connect(s, lport, d, dport, now)

    def listen(self, port: int, host: str | None = None, *, backlog: int = 128) -> TcpListener:
        """Listen on TCP `port` of `host` (one of our addresses) or of every address (None).
        Port 0 is the catch-all: SYNs to ports without a listener of their own. Raises
        OSError(EADDRINUSE) and ValueError."""
        address = self.own_address(host)
        return self.tcp.listen(int(port), address.packed if address is not None else b"",
                               backlog)

    def close_all(self) -> None:
        """Close every listener and reset every connection (their RSTs go out at the next
        fill; their CLOSED events follow)."""
        for listener in self.tcp.listeners():
            listener.close()
        for conn in self.tcp.connections():
            conn.abort()

    # -- UDP ------------------------------------------------------------------------------------

    def bind_udp(self, owner: object, host: str | None, port: int,
                 remote: tuple[str, int] | None = None
                 ) -> tuple[Address | None, int, tuple[Address, int] | None]:
        """Bind a UDP port for `owner` (reported in :class:`DatagramReceived`). `host`: one of
        our addresses or None for all; port 0 picks an ephemeral port; `remote` connects the
        socket (then the local address is the source used to reach it). Returns (local
        address or None, port, remote). Raises OSError(EADDRINUSE), ValueError, NoRouteError."""
        local = self.own_address(host)
        peer: tuple[Address, int] | None = None
        if remote is not None:
            peer = (ipaddress.ip_address(remote[0]), int(remote[1]))
            self.require_route(peer[0])
            if local is None:
                local = self.source_for(peer[0])
        if port == 0:
            port = self.ephemeral_port(lambda p: self._udp.in_use(local, p), "a UDP peer")
        bound = self._udp.bind(local, int(port), owner)
        return local, bound, peer

    def unbind_udp(self, address: Address | None, port: int) -> None:
        """Release a UDP binding (no-op if it is not bound)."""
        self._udp.unbind(address, port)

    def max_datagram(self, dst: Address) -> int:
        """The largest UDP payload that fits the inner MTU towards `dst`."""
        return self.mtu - (20 if dst.version == 4 else 40) - 8

    def send_datagram(self, src: Address | None, src_port: int, dst: Address, dst_port: int,
                      payload: bytes) -> None:
        """Queue one UDP datagram (`src` None: our address of `dst`'s family). Raises
        OSError(EMSGSIZE) for a payload beyond the MTU, as the kernel does with DF set."""
        limit = self.max_datagram(dst)
        if len(payload) > limit:
            raise OSError(errno.EMSGSIZE, f"UDP payload of {len(payload)} bytes exceeds "
                                          f"{limit} (tunnel MTU {self.mtu})")
        self._out.append(emit_datagram(src or self.source_for(dst), src_port, dst, dst_port,
                                       payload))

    # -- ping -----------------------------------------------------------------------------------

    def ping(self, address: str, now: float, *, kind: Literal["icmp", "tsmp"] = "icmp",
             payload_size: int = 0) -> int:
        """Queue an echo request (ICMP, or TSMP as Coder clients send) and return its token;
        the reply arrives as :class:`PingReplied`. Raises ValueError, NoRouteError."""
        dst = ipaddress.ip_address(address)
        self.require_route(dst)
        token, packet = self._pinger.request(self.source_for(dst), dst, kind=kind, now=now,
                                             payload_size=payload_size)
        self._out.append(packet)
        return token

    def forget_pings(self, now: float, timeout: float) -> None:
        """Drop outstanding pings older than `timeout` seconds."""
        self._pinger.expire(now, timeout)

    # -- status ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """IP counters and the TCP stack's counters with its connections and listeners."""
        tcp = self.tcp.counters()
        tcp["connections"] = [_conn_stats(c) for c in self.tcp.connections()]
        tcp["listeners"] = [
            {"address": str(ipaddress.ip_address(lst.address)) if lst.address else "",
             "port": lst.port, "pending": lst.pending, "half_open": lst.half_open,
             "accepted": lst.accepted, "syn_received": lst.syn_received,
             "syn_evicted": lst.syn_evicted} for lst in self.tcp.listeners()]
        ip = {k: v for k, v in self.counters.items() if k != "too_big"}
        return {"ip": ip, "tcp": tcp}


def _conn_stats(conn: TcpConn) -> dict[str, Any]:
    info = conn.counters()
    local, remote = conn.local, conn.remote
    info["local"] = (str(ipaddress.ip_address(local[0])), local[1])
    info["remote"] = (str(ipaddress.ip_address(remote[0])), remote[1])
    return info
