"""The asyncio adapter: one UDP socket, one timer, one coalesced flush.

Theory of operation (STYLE §3, DATAPATH.md)
-------------------------------------------
A :class:`Tunnel` drives one sans-IO :class:`~agentconn.node.Node` (the WireGuard device and
the IP interface behind it) from a UDP socket and the event loop:

* The loop's reader callback on the UDP socket calls :meth:`Tunnel._on_readable` once per
  wake-up. It reads batches with ``UdpIO.recv`` (recvmmsg + GRO) and gives each to
  ``Node.receive_batch`` (decrypt, IP/TCP, the WireGuard control path). Then it dispatches the
  interface's events and flushes once.
* A flush (:meth:`_flush`) lets the node fill a PacketBatch and seal it, and sends it with
  ``UdpIO.send`` (sendmmsg + GSO). Transports ask for one coalesced ``call_soon(flush)``
  through :meth:`schedule_flush`.
* One ``loop.call_at`` is armed for the node's earliest deadline and re-armed only when it
  moves.
* Events: transports register a handler per TCP socket (:meth:`watch`), UDP sockets bind a
  handler with their port; pings wait on futures keyed by token.

The stream, server and datagram factories live beside their transports (:mod:`.streams`,
:mod:`.datagram`) as mixins that see this tunnel only as a
:class:`~agentconn.aio.host.StackHost`. This module and :mod:`agentconn.node` are the only places that join wg/ and net/
(STYLE §1) through the node and the only one that reads clocks: ``time.monotonic()`` for protocol
timers and ping RTTs (the same CLOCK_MONOTONIC as ``loop.time()``, but uvloop's ``loop.time()``
has millisecond resolution and is cached per loop iteration: TCP's RTT samples, RACK's transmit
times and its reordering window need microseconds on a sub-millisecond path) and ``time.time()``
for TAI64N timestamps.

Packet capture (:meth:`Tunnel.start_capture`, or ``pcap=`` at construction) sets the node's
``capture`` hook to a :class:`~agentconn.net.pcap.PcapWriter` on a file this module opens and
closes: the inner IP packets of both directions, as ``tcpdump -i wg0 -w FILE`` would record
them, timestamped with the batch's ``time.time()`` and bounded in size.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Literal

from _wgcore.datapath import RESULT, PacketBatch
from _wgcore.tcpip import TcpConn, TcpEvent, TcpListener
from _wgcore.udpio import UdpIO

from ..errors import ConfigError, PingTimeoutError, TunnelClosedError, TunnelError
from ..net.events import DatagramReceived, DatagramUnclaimed, PingReplied, TcpActivity
from ..net.pcap import PcapWriter
from ..net.udp import Datagram
from ..node import Node
from ..wg.config import InterfaceConfig, PeerConfig, load_config
from ..wg.endpoint import relay_sockaddr, sockaddr
from .datagram import DatagramEndpoints
from .streams import StreamEndpoints

__all__ = ["Tunnel"]

log = logging.getLogger("agentconn.tunnel")

RX_SLOTS = 64                 # messages per recvmmsg
RX_SLOT_SIZE = 65536          # one GRO super-buffer per message
TX_SLOTS = 256
MAX_BATCHES_PER_WAKEUP = 16   # stay fair to the rest of the loop
MAX_TX_BATCHES_PER_FLUSH = 64
RES_SEALED = RESULT["SEALED"]
RES_RAW = RESULT["RAW"]
RES_DISCO = RESULT["DISCO"]
#: Default bound of a capture file's size (header included).
PCAP_MAX_BYTES = 64 * 1024 * 1024

#: Receives disco datagrams that arrived on the UDP socket: (datagram, source sockaddr).
DiscoHandler = Callable[[bytes, bytes], None]
#: Sends datagrams over relay paths: called with [(path, datagram), ...] (see :meth:`Tunnel.set_relay`).
RelaySend = Callable[[list[tuple[int, bytes]]], None]


class Tunnel(StreamEndpoints, DatagramEndpoints):
    """A userspace WireGuard interface over one UDP socket, as an async context manager.

    Build it with :meth:`from_config` (a wg-quick file path or text) and enter it::

        async with Tunnel.from_config("wg0.conf") as tunnel:
            rtt = await tunnel.ping("10.0.0.1")

    The tunnel answers ICMPv4/ICMPv6 echo and TSMP pings addressed to its ``Address`` entries.
    TCP and UDP through it work like asyncio's own: ``open_connection``, ``start_server``,
    ``create_connection``, ``create_server`` (:class:`~.streams.StreamEndpoints`) and
    ``create_datagram_endpoint`` (:class:`~.datagram.DatagramEndpoints`).
    """

    def __init__(self, config: InterfaceConfig, *, listen_host: str = "",
                 sock: socket.socket | None = None, gro: bool = True, gso: bool = True,
                 pcap: str | os.PathLike[str] | None = None,
                 pcap_max_bytes: int = PCAP_MAX_BYTES) -> None:
        """`sock`: an unconnected UDP socket to use instead of binding one (it must already be
        bound; the tunnel makes it non-blocking and closes it). `gro`/`gso`: allow UDP receive
        and send offload where the kernel has it. `pcap`: capture the tunnel's inner packets
        to this file from :meth:`start` on (see :meth:`start_capture`), at most
        `pcap_max_bytes` bytes of it."""
        self.config = config
        #: The sans-IO core: WireGuard device + IP interface.
        self.node = Node(config)
        self.device = self.node.device
        #: The IP interface: addresses, TCP stack, UDP ports, ICMP/TSMP, pings.
        self.iface = self.node.iface
        self.addresses = self.iface.addresses
        self._listen_host = listen_host
        self._gro = gro
        self._gso = gso
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_sock = sock
        self._sock: socket.socket | None = None
        self._io: UdpIO | None = None
        self._rx: PacketBatch | None = None
        self._tx: PacketBatch | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._ping_waiters: dict[int, asyncio.Future[float]] = {}
        self._closed = False
        self._watchers: dict[TcpConn | TcpListener, Callable[[TcpEvent], None]] = {}
        self._udp_fallback: Callable[[Datagram], None] | None = None
        self._tx_pending: PacketBatch | None = None     # sealed, waiting for socket space
        self._tx_spare: PacketBatch | None = None
        self._writer_armed = False
        self._relay_send: RelaySend | None = None
        self._relayed_in: list[tuple[int, bytes]] = []
        self._relayed_handle: asyncio.Handle | None = None
        self._rx_relay: PacketBatch | None = None
        self._disco_handler: DiscoHandler | None = None
        self._disco_seen = 0
        self.disco_counters = {"rx": 0, "tx": 0, "tx_failed": 0, "unhandled": 0}
        #: Optional: more facts about a peer (raw public key) for :meth:`stats` (the tailnet
        #: node adds its disco path state under ``"disco"``).
        self.peer_info: Callable[[bytes], dict[str, Any]] | None = None
        self._pcap_request = (pcap, pcap_max_bytes) if pcap is not None else None
        self._capture: PcapWriter | None = None
        self._capture_path: str | None = None

    @classmethod
    def from_config(cls, path_or_text: str | os.PathLike[str], **kwargs: Any) -> Tunnel:
        """A Tunnel for a wg-quick configuration file path or configuration text.

        Raises :class:`~agentconn.errors.ConfigError` naming the line for bad input.
        """
        return cls(load_config(path_or_text), **kwargs)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Tunnel:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind the UDP socket, resolve peer endpoints and start serving."""
        if self._sock is not None:
            raise TunnelError("tunnel already started")
        if self._closed:
            raise TunnelClosedError("tunnel was closed")
        loop = asyncio.get_running_loop()
        if self._pcap_request is not None:
            self.start_capture(*self._pcap_request)
        self._loop = loop
        if self._own_sock is not None:
            self._sock = self._own_sock
            self._sock.setblocking(False)
        else:
            self._sock = self._bind()
        family = self._sock.family
        for peer_config in self.config.peers:
            endpoint = b""
            if peer_config.endpoint is not None:
                endpoint = await self._resolve(peer_config.endpoint, family)
            self.node.add_peer(peer_config, endpoint)
        self._io = UdpIO(self._sock, gro=self._gro, gso=self._gso)
        slot = 32 + ((self.device.mtu + 15) & ~15)
        self._rx = PacketBatch(RX_SLOTS, RX_SLOT_SIZE if self._io.gro else max(slot, 2048),
                               RX_SLOTS * 64)
        self._tx = PacketBatch(TX_SLOTS, max(slot, 2048))
        loop.add_reader(self._sock.fileno(), self._on_readable)
        self.node.start()
        self.schedule_flush()
        self._rearm_timer(time.monotonic())

    def _bind(self) -> socket.socket:
        port = self.config.listen_port or 0
        host = self._listen_host
        errors = []
        for family, addr in ((socket.AF_INET6, host or "::"), (socket.AF_INET, host or "0.0.0.0")):
            if host and (":" in host) != (family == socket.AF_INET6):
                continue
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as exc:
                errors.append(f"{family.name}: {exc}")
                continue
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind((addr, port))
                sock.setblocking(False)
                return sock
            except OSError as exc:
                sock.close()
                errors.append(f"{addr}:{port}: {exc}")
        raise TunnelError("cannot bind the WireGuard UDP socket: " + "; ".join(errors))

    async def _resolve(self, endpoint: tuple[str, int], family: int) -> bytes:
        host, port = endpoint
        try:
            return sockaddr(host, port, family)
        except ConfigError:
            pass
        assert self._loop is not None
        try:
            infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise ConfigError(f"cannot resolve endpoint {host}:{port}: {exc}") from None
        for fam, _, _, _, addr in infos:
            if family == socket.AF_INET6 or fam == socket.AF_INET:
                return sockaddr(str(addr[0]), port, family)
        raise ConfigError(f"endpoint {host}:{port} has no address usable on this socket")

    async def close(self) -> None:
        """Stop serving, wipe keys and close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            if self._writer_armed:
                self._loop.remove_writer(self._sock.fileno())
                self._writer_armed = False
        self.iface.close_all()
        self._dispatch()
        self._send_resets_on_close()
        for handle in (self._flush_handle, self._timer_handle, self._relayed_handle):
            if handle is not None:
                handle.cancel()
        self.stop_capture()             # after the RSTs: they are in the file
        self.node.zero_key_material()
        for waiter in self._ping_waiters.values():
            if not waiter.done():
                waiter.set_exception(TunnelClosedError("tunnel closed"))
        if self._sock is not None:
            self._sock.close()

    def _send_resets_on_close(self) -> None:
        """Last words: the RSTs of the aborted connections, so peers do not wait forever."""
        if self._loop is None or self._io is None or self._tx is None or self._tx_pending is not None:
            return
        try:
            now, wall = time.monotonic(), time.time()
            for _ in range(8):
                more = self.node.fill(self._tx, now)
                if self._tx.count:
                    self._send_tx(now, wall)
                if not more or self._tx_pending is not None:
                    break
        except Exception:
            log.exception("sending resets at close failed")

    # -- packet capture -------------------------------------------------------------------------

    def start_capture(self, path: str | os.PathLike[str],
                      max_bytes: int = PCAP_MAX_BYTES) -> None:
        """Write the inner IP packets of both directions to a new pcap file at `path`
        (truncated if it exists) until :meth:`stop_capture` or :meth:`close`.

        The file is what ``tcpdump -i wg0 -w path`` would give (``LINKTYPE_RAW``, microsecond
        timestamps): read it with ``tcpdump -r`` or Wireshark. Once the next packet would take
        it past `max_bytes` bytes, nothing more is written and packets are counted as
        dropped (:attr:`capture_stats`). Works before and after :meth:`start`. Raises
        TunnelError if a capture is running or the file cannot be created,
        TunnelClosedError after :meth:`close`.
        """
        if self._closed:
            raise TunnelClosedError("tunnel was closed")
        if self._capture is not None:
            raise TunnelError(f"already capturing to {self._capture_path}")
        name = os.fsdecode(path)
        try:
            file = open(name, "wb")  # noqa: SIM115 - closed by stop_capture
        except OSError as exc:
            raise TunnelError(f"cannot write capture file {name}: {exc.strerror or exc}") from None
        try:
            writer = PcapWriter(file, max_bytes=max_bytes)
        except BaseException:
            file.close()
            raise
        self._capture, self._capture_path = writer, name
        self.node.capture = self._record
        log.debug("capturing packets to %s (at most %d bytes)", name, max_bytes)

    def stop_capture(self) -> dict[str, Any] | None:
        """Stop capturing and close the file. Returns its :attr:`capture_stats`, or None if
        no capture was running."""
        writer = self._capture
        if writer is None:
            return None
        self.node.capture = None
        self._capture = None
        stats = self._capture_stats(writer)
        try:
            writer.close()
        except OSError as exc:
            log.warning("closing capture file %s failed: %s", self._capture_path, exc)
        if writer.dropped:
            log.warning("capture file %s reached its %d-byte bound: %d packets not written",
                        self._capture_path, writer.max_bytes, writer.dropped)
        return stats

    @property
    def capture_stats(self) -> dict[str, Any] | None:
        """The running capture's path, packets written and dropped, bytes, full; or None."""
        return None if self._capture is None else self._capture_stats(self._capture)

    def _capture_stats(self, writer: PcapWriter) -> dict[str, Any]:
        return {"path": self._capture_path, **writer.stats()}

    def _record(self, wall: float, packets: list[bytes]) -> None:
        """The node's capture hook: write the packets, or give the capture up on a write error
        (the data path must not fail because a disk did)."""
        writer = self._capture
        if writer is None:
            return
        try:
            writer.write_many(wall, packets)
        except OSError as exc:
            log.error("writing capture file %s failed (%s); capture stopped",
                      self._capture_path, exc)
            self.node.capture = None
            self._capture = None
            try:
                writer.close()
            except OSError:
                pass

    # -- properties and the StackHost interface of the transports --------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the tunnel runs on. Raises TunnelClosedError if it is not running."""
        if self._closed or self._loop is None:
            raise TunnelClosedError("tunnel is not running")
        return self._loop

    def watch(self, socket: TcpConn | TcpListener, handler: Callable[[TcpEvent], None]) -> None:
        """Deliver `socket`'s TCP events to `handler` (used by the transports)."""
        self._watchers[socket] = handler

    def unwatch(self, socket: TcpConn | TcpListener) -> None:
        """Stop delivering `socket`'s events."""
        self._watchers.pop(socket, None)

    @property
    def tcp(self) -> Any:
        """The interface's TCP stack (``_wgcore.tcpip.TcpStack``)."""
        return self.iface.tcp

    @property
    def udp_fallback(self) -> Callable[[Datagram], None] | None:
        """Called with each UDP datagram (``net.udp.Datagram``) to a local address whose port
        has no socket (the agent forwards these to its loopback); None: dropped and counted."""
        return self._udp_fallback

    @udp_fallback.setter
    def udp_fallback(self, handler: Callable[[Datagram], None] | None) -> None:
        self._udp_fallback = handler
        self.iface.report_unclaimed_udp = handler is not None

    @property
    def listen_port(self) -> int:
        if self._sock is None:
            raise TunnelClosedError("tunnel not started")
        return int(self._sock.getsockname()[1])

    @property
    def public_key(self) -> str:
        return self.node.public_key

    def set_peer_endpoint(self, public_key: str | bytes, host: str, port: int) -> None:
        """Point a configured peer at ``host:port`` (numeric address)."""
        peer, = self.node.peers_by_key(public_key)
        if self._sock is None:
            raise TunnelClosedError("tunnel not started")
        peer.slot.endpoint = sockaddr(host, port, self._sock.family)

    def rekey(self, public_key: str | bytes | None = None) -> None:
        """Start a new handshake with one peer (default: every peer) now, as REKEY_AFTER_TIME
        would. At most one initiation per peer per REKEY_TIMEOUT (5 s) is sent."""
        self.node.rekey(public_key, time.monotonic(), time.time())
        self.schedule_flush()

    def add_peer(self, peer_config: PeerConfig, endpoint: tuple[str, int] | None = None) -> None:
        """Configure another peer on a running tunnel."""
        if self._sock is None:
            raise TunnelClosedError("tunnel not started")
        raw = sockaddr(endpoint[0], endpoint[1], self._sock.family) if endpoint else b""
        self.node.add_peer(peer_config, raw)

    def remove_peer(self, public_key: str | bytes) -> None:
        """Forget a peer: its sessions, routes and timers. Raises ConfigError for an unknown
        key."""
        peer, = self.node.peers_by_key(public_key)
        self.device.remove_peer(peer.public_key)

    # -- receive --------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self._loop is not None and self._io is not None and self._rx is not None
        assert self._tx is not None
        loop, io, rx, node = self._loop, self._io, self._rx, self.node
        datapath = self.device.datapath
        try:
            now = time.monotonic()
            wall = time.time()
            for _ in range(MAX_BATCHES_PER_WAKEUP):
                n = io.recv(rx)
                if n == 0:
                    break
                node.receive_batch(rx, self._tx, now, wall, time.monotonic())
                if datapath.disco_rx != self._disco_seen:
                    self._disco_seen = datapath.disco_rx
                    self._take_disco(rx)      # per batch, only when the C path saw disco
                if self._tx.count * 2 >= self._tx.slots and self._tx_pending is None:
                    self._send_tx(now, wall)    # ACKs owed mid-burst go out now
                if n < rx.slots:
                    break
            self._dispatch()
            self._flush()
        except Exception:
            log.exception("tunnel receive path failed; the packet batch was dropped")

    def _take_disco(self, rx: PacketBatch) -> None:
        """Hand the batch's disco datagrams (``RES_DISCO``) to the disco handler."""
        handler = self._disco_handler
        for _, datagram, source, _ in rx.collect(RES_DISCO):
            self.disco_counters["rx"] += 1
            if handler is None:
                self.disco_counters["unhandled"] += 1
                continue
            try:
                handler(datagram, source)
            except Exception:
                log.exception("disco handler failed; datagram dropped")

    # -- disco (Coder magicsock) ----------------------------------------------------------------

    def set_disco_handler(self, handler: DiscoHandler | None) -> None:
        """Deliver disco datagrams that arrive on the UDP socket to ``handler(datagram,
        source_sockaddr)``. The C data path marks them (magic ``TS💬``, ≥ 62 bytes) so that
        WireGuard datagrams cost no Python work. None: they are dropped and counted."""
        self._disco_handler = handler

    def send_disco(self, datagram: bytes, host: str, port: int) -> bool:
        """Send one disco datagram from the WireGuard socket to ``host:port`` (numeric). Returns
        False (counted) when the address does not fit the socket or the send fails."""
        sock = self._sock
        if sock is None or self._closed:
            return False
        try:
            if sock.family == socket.AF_INET6:
                if ":" not in host:
                    host = "::ffff:" + host
                sock.sendto(datagram, (host, port, 0, 0))
            else:
                sock.sendto(datagram, (host, port))
        except (OSError, ValueError):
            self.disco_counters["tx_failed"] += 1
            return False
        self.disco_counters["tx"] += 1
        return True

    def pin_peer_endpoint(self, public_key: str | bytes, endpoint: tuple[str, int] | int
                          ) -> None:
        """Reach the peer at ``(host, port)`` over UDP, or through relay path ``endpoint`` (an
        int, see :meth:`set_relay`), and keep it there: authenticated packets from elsewhere
        do not move it (the path selector above decides, as magicsock does)."""
        peer, = self.node.peers_by_key(public_key)
        if self._sock is None:
            raise TunnelClosedError("tunnel not started")
        if isinstance(endpoint, int):
            raw = relay_sockaddr(endpoint)
        else:
            raw = sockaddr(endpoint[0], endpoint[1], self._sock.family)
        peer.pinned_endpoint = raw
        peer.slot.endpoint = raw
        self.schedule_flush()

    @property
    def local_address(self) -> tuple[str, int]:
        """The UDP socket's bound (host, port)."""
        if self._sock is None:
            raise TunnelClosedError("tunnel not started")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def _dispatch(self) -> None:
        """Deliver the interface's events: TCP activity to the socket's watcher, datagrams to
        their port's handler (or the UDP fallback), ping replies to their waiters."""
        iface, watchers = self.iface, self._watchers
        while (event := iface.next_event()) is not None:
            try:
                if isinstance(event, TcpActivity):
                    handler = watchers.get(event.socket)
                    if handler is not None:
                        handler(event.flags)
                elif isinstance(event, DatagramReceived):
                    deliver: Callable[..., None] = event.owner  # type: ignore[assignment]
                    deliver(event.payload, event.src, event.src_port)
                elif isinstance(event, PingReplied):
                    waiter = self._ping_waiters.pop(event.token, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(event.rtt)
                elif isinstance(event, DatagramUnclaimed) and self._udp_fallback is not None:
                    self._udp_fallback(event.datagram)
            except Exception:
                log.exception("event handling failed for %r", event)

    # -- send -----------------------------------------------------------------------------------

    def send_packet(self, packet: bytes) -> None:
        """Queue an inner IP packet; it is routed by AllowedIPs and sealed at the next flush."""
        if self._closed or self._sock is None:
            raise TunnelClosedError("tunnel is not running")
        self.iface.send_packet(packet)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        """Flush once, soon (one coalesced ``call_soon`` however often it is asked)."""
        if self._flush_handle is None and self._loop is not None and not self._closed:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Fill the tx batch (handshakes, keepalives, staged packets, then the interface's
        packets and TCP segments), seal it and send it; repeat while there is more, up to a
        bound."""
        self._flush_handle = None
        if self._closed:
            return
        assert self._loop is not None and self._io is not None and self._tx is not None
        if self._tx_pending is not None:
            return                       # socket full: _on_writable resumes us
        node = self.node
        try:
            now = time.monotonic()
            wall = time.time()
            for _ in range(MAX_TX_BATCHES_PER_FLUSH):
                tx = self._tx
                more = node.fill(tx, now)
                if tx.count:
                    self._send_tx(now, wall)
                if self._tx_pending is not None or not (more or node.has_output):
                    break         # (sealing may have queued a handshake initiation)
            else:
                self.schedule_flush()
            self._dispatch()
            self._rearm_timer(now)
        except Exception:
            log.exception("tunnel send path failed; the packet batch was dropped")

    def _send_tx(self, now: float, wall: float) -> None:
        """Seal and send the tx batch. If the socket buffer fills, keep the rest of the batch
        and wait for writability (backpressure instead of loss)."""
        assert self._io is not None and self._tx is not None and self._loop is not None
        tx = self._tx
        self.node.seal(tx, now, wall)
        if self._relay_send is not None:
            self._send_relayed(tx)
        self._io.send(tx)
        if self._io.blocked:
            self._tx_pending = tx
            self._tx = self._tx_spare or PacketBatch(tx.slots, tx.slot_size)
            self._tx_spare = None
            if not self._writer_armed and self._sock is not None and not self._closed:
                self._loop.add_writer(self._sock.fileno(), self._on_writable)
                self._writer_armed = True
        else:
            tx.clear()

    # -- relays (e.g. DERP) ----------------------------------------------------------------------

    def set_relay(self, send: RelaySend | None) -> None:
        """Carry datagrams for peers whose endpoint is a relay path through `send`.

        A peer whose endpoint is ``wg.endpoint.relay_sockaddr(path)`` (set it with
        :meth:`set_peer_relay`) is not reached over the UDP socket: every sealed datagram for
        it goes to ``send([(path, datagram), ...])``, called once per sent batch. Datagrams
        that come back over a relay enter with :meth:`receive_relayed`. None detaches.
        """
        self._relay_send = send

    def set_peer_relay(self, public_key: str | bytes, path: int) -> None:
        """Reach the peer with that key through relay path `path` (see :meth:`set_relay`)."""
        peer, = self.node.peers_by_key(public_key)
        peer.slot.endpoint = relay_sockaddr(path)
        self.schedule_flush()

    def receive_relayed(self, path: int, datagram: bytes) -> None:
        """A WireGuard datagram that arrived over relay path `path`; it is processed with the
        others that arrive in the same loop iteration, as one batch."""
        if self._closed:
            return
        self._relayed_in.append((path, datagram))
        if self._relayed_handle is None and self._loop is not None:
            self._relayed_handle = self._loop.call_soon(self._on_relayed)

    def _on_relayed(self) -> None:
        self._relayed_handle = None
        if self._closed or self._loop is None or self._tx is None:
            return
        if self._rx_relay is None:
            self._rx_relay = PacketBatch(RX_SLOTS, 32 + ((self.device.mtu + 15) & ~15) + 64)
        rx, node = self._rx_relay, self.node
        try:
            now, wall = time.monotonic(), time.time()
            while self._relayed_in:
                chunk, self._relayed_in = self._relayed_in[:rx.slots], self._relayed_in[rx.slots:]
                rx.clear()
                for path, datagram in chunk:
                    try:
                        rx.add_datagram(datagram, relay_sockaddr(path))
                    except ValueError:
                        self.device.datapath.drop(RESULT["DROP_TOO_BIG"])
                node.receive_batch(rx, self._tx, now, wall, time.monotonic())
            self._dispatch()
            self._flush()
        except Exception:
            log.exception("tunnel relay receive path failed; the datagrams were dropped")

    def _send_relayed(self, tx: PacketBatch) -> None:
        """Hand the batch's datagrams for relay endpoints to the relay (the UDP sender skips
        them)."""
        assert self._relay_send is not None
        out = tx.collect_relayed()  # [(path, datagram)], RES_RAW then RES_SEALED
        if out:
            try:
                self._relay_send(out)
            except Exception:
                log.exception("relay send failed; %d datagrams dropped", len(out))

    def _on_writable(self) -> None:
        assert self._io is not None and self._loop is not None and self._sock is not None
        pending = self._tx_pending
        if pending is not None:
            self._io.send(pending, self._io.resume_at)
            if self._io.blocked:
                return
            pending.clear()
            self._tx_spare = pending
            self._tx_pending = None
        self._loop.remove_writer(self._sock.fileno())
        self._writer_armed = False
        self._flush()

    # -- timers ---------------------------------------------------------------------------------

    def clock(self) -> float:
        """The protocol clock: monotonic seconds with sub-millisecond resolution."""
        return time.monotonic()

    def _rearm_timer(self, now: float) -> None:
        assert self._loop is not None
        deadline = self.node.get_timer()
        if deadline == self._timer_at:
            return
        if self._timer_handle is not None:
            self._timer_handle.cancel()
            self._timer_handle = None
        self._timer_at = deadline
        if deadline is not None:
            # call_later: the loop's own clock may lag the monotonic one by up to a millisecond
            self._timer_handle = self._loop.call_later(max(0.0, deadline - now), self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer_handle = None
        self._timer_at = None
        try:
            now = time.monotonic()
            self.node.handle_timer(now, time.time())
            self._dispatch()
        except Exception:
            log.exception("tunnel timer handling failed")
        self._flush()
        self._rearm_timer(time.monotonic())

    # -- ping -----------------------------------------------------------------------------------

    async def ping(self, address: str, timeout: float = 5.0,
                   kind: Literal["icmp", "tsmp"] = "icmp", payload_size: int = 0) -> float:
        """Send one echo request (ICMP, or TSMP as Coder clients do) and return the RTT in seconds.

        The first ping to a peer includes the WireGuard handshake. Raises
        :class:`~agentconn.errors.NoRouteError` if no peer's AllowedIPs cover `address`,
        :class:`~agentconn.errors.PingTimeoutError` if no reply came within `timeout` seconds.
        """
        loop = self.running_loop()
        token = self.iface.ping(address, time.monotonic(), kind=kind, payload_size=payload_size)
        waiter: asyncio.Future[float] = loop.create_future()
        self._ping_waiters[token] = waiter
        self.schedule_flush()
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise PingTimeoutError(f"no reply from {address} within {timeout:g} s") from None
        finally:
            self._ping_waiters.pop(token, None)
            self.iface.forget_pings(time.monotonic(), timeout)

    # -- status ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: handshakes, rx/tx packets and bytes, drops by reason, per-peer state."""
        now = time.monotonic() if self._loop is not None else 0.0
        data = self.node.stats(now)
        data["listen_port"] = self.listen_port if self._sock is not None and not self._closed else None
        data["udp"] = self._io.counters() if self._io is not None else {}
        data["disco"] = dict(self.disco_counters)
        if self.peer_info is not None:
            import base64
            for peer in data.get("peers", []):
                try:
                    info = self.peer_info(base64.b64decode(peer["public_key"]))
                except Exception:  # noqa: BLE001 - diagnostics must not fail
                    info = {}
                if info:
                    peer["disco"] = info
        if self._capture is not None:
            data["capture"] = self.capture_stats
        return data
