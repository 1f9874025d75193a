"""The asyncio adapter: one UDP socket, one Device, one timer, and the minimal IP layer.

Theory of operation (STYLE §3, DATAPATH.md)
-------------------------------------------
* The event loop's reader callback on the UDP socket calls :meth:`Tunnel._on_readable` once per
  wake-up. It reads batches with ``UdpIO.recv`` (recvmmsg + GRO), decrypts each whole batch in C
  (``Datapath.decrypt``), hands inner packets to the IP layer, and lets the Device run the
  control path once per touched peer. Then it flushes once.
* A flush (:meth:`_flush`) fills a PacketBatch with what the Device queued (handshakes,
  keepalives, staged packets) and what the IP layer wants to send, seals the batch in C, lets the
  Device stage what had no session, and sends with ``UdpIO.send`` (sendmmsg + GSO). Writes from
  the IP layer schedule one coalesced ``call_soon(flush)``.
* One ``loop.call_at`` is armed for the Device's earliest deadline and re-armed only when it
  moves.

This module is the only place that joins wg/ and net/ (STYLE §1) and the only one here that
reads clocks: ``loop.time()`` for protocol timers and ``time.time()`` for TAI64N timestamps.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Literal

from _wgcore.datapath import RESULT, PacketBatch
from _wgcore.tcpip import TcpConn, TcpEvent, TcpListener, TcpStack
from _wgcore.udpio import UdpIO

from ..errors import ConfigError, NoRouteError, PingTimeoutError, TunnelClosedError, TunnelError
from ..net.icmp import Pinger, answer
from ..net.udp import Datagram, PortTable, parse_datagram
from ..net.wire import WireError
from ..wg.config import InterfaceConfig, PeerConfig, load_config
from ..wg.device import Device
from ..wg.endpoint import format_sockaddr, sockaddr
from ..wg.keys import encode_key, parse_key
from .datagram import TunnelDatagramTransport
from .streams import TcpTransport, TunnelServer, address_tuple, connection_error

__all__ = ["Tunnel"]


def _ip_protocol(packet: bytes) -> int:
    """The transport protocol number of an IPv4/IPv6 packet (no extension headers), or -1."""
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return packet[6]
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return packet[9]
    return -1

log = logging.getLogger("agentconn.tunnel")

RES_DATA = RESULT["DATA"]
EVENTS_CLOSED = int(TcpEvent.CLOSED)
DEFAULT_MTU = 1280            # Coder's tailnet MTU (tailnet.md §3); set MTU in the config to change it
RX_SLOTS = 64                 # messages per recvmmsg
RX_SLOT_SIZE = 65536          # one GRO super-buffer per message
TX_SLOTS = 256
MAX_BATCHES_PER_WAKEUP = 16   # stay fair to the rest of the loop
MAX_TX_BATCHES_PER_FLUSH = 64
EPHEMERAL_PORTS = (32768, 60999)   # Linux's default ip_local_port_range


class Tunnel:
    """A userspace WireGuard interface over one UDP socket, as an async context manager.

    Build it with :meth:`from_config` (a wg-quick file path or text) and enter it::

        async with Tunnel.from_config("wg0.conf") as tunnel:
            rtt = await tunnel.ping("10.0.0.1")

    The tunnel answers ICMPv4/ICMPv6 echo and TSMP pings addressed to its ``Address`` entries.
    """

    def __init__(self, config: InterfaceConfig, *, listen_host: str = "",
                 sock: socket.socket | None = None, gro: bool = True, gso: bool = True) -> None:
        """`sock`: an unconnected UDP socket to use instead of binding one (it must already be
        bound; the tunnel makes it non-blocking and closes it). `gro`/`gso`: allow UDP receive
        and send offload where the kernel has it."""
        self.config = config
        mtu = config.mtu or DEFAULT_MTU
        if not 576 <= mtu <= 65535 - 80:
            raise ConfigError(f"MTU {mtu} out of range 576-65455")
        self.device = Device(config.private_key, mtu=mtu)
        self.addresses = [iface.ip for iface in config.addresses]
        self._listen_host = listen_host
        self._gro = gro
        self._gso = gso
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_sock = sock
        self._sock: socket.socket | None = None
        self._io: UdpIO | None = None
        self._rx: PacketBatch | None = None
        self._tx: PacketBatch | None = None
        self._ip_out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pinger = Pinger()
        self._ping_waiters: dict[int, asyncio.Future[float]] = {}
        self._closed = False
        self._ip_handlers: list[Callable[[bytes], bool]] = []
        self._udp_ports: PortTable[TunnelDatagramTransport] = PortTable()
        self.ip_counters = {"echo_answered": 0, "unhandled": 0, "udp_received": 0,
                            "udp_no_socket": 0, "udp_malformed": 0, "udp_fallback": 0}
        #: Called with each UDP datagram (net.udp.Datagram) to a local address whose port has
        #: no socket (the agent forwards these to its loopback); None: dropped and counted.
        self.udp_fallback: Callable[[Datagram], None] | None = None
        self.tcp = TcpStack(mtu=mtu)
        self.tcp.set_addresses([a.packed for a in self.addresses])
        self._tx_pending: PacketBatch | None = None     # sealed, waiting for socket space
        self._tx_spare: PacketBatch | None = None
        self._connect_waiters: dict[TcpConn, asyncio.Future[None]] = {}
        # who handles the events of each connection and listener (they hold no reference up)
        self._tcp_handlers: dict[TcpConn | TcpListener, TcpTransport | TunnelServer] = {}
        self._writer_armed = False

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
            self.device.add_peer(peer_config, endpoint)
        self._io = UdpIO(self._sock, gro=self._gro, gso=self._gso)
        slot = 32 + ((self.device.mtu + 15) & ~15)
        self._rx = PacketBatch(RX_SLOTS, RX_SLOT_SIZE if self._io.gro else max(slot, 2048),
                               RX_SLOTS * 64)
        self._tx = PacketBatch(TX_SLOTS, max(slot, 2048))
        loop.add_reader(self._sock.fileno(), self._on_readable)
        # Persistent keepalive: wg sends one as soon as the interface comes up.
        now = loop.time()
        for peer in self.device.iter_peers():
            if peer.timers.persistent_keepalive and peer.slot.endpoint:
                peer.send_keepalive()
        self._schedule_flush()
        self._rearm_timer(now)

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
        for listener in self.tcp.listeners():
            listener.close()
        for conn in self.tcp.connections():
            conn.abort()
        for conn_waiter in self._connect_waiters.values():
            if not conn_waiter.done():
                conn_waiter.set_exception(TunnelClosedError("tunnel closed"))
        self._dispatch_tcp()
        self._send_resets_on_close()
        for handle in (self._flush_handle, self._timer_handle):
            if handle is not None:
                handle.cancel()
        for peer in list(self.device.iter_peers()):
            peer.zero_key_material()
            peer.timers.cancel_all()
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
            now, wall = self._loop.time(), time.time()
            for _ in range(8):
                more = self.tcp.output(self._tx, now)
                if self._tx.count:
                    self._send_tx(now, wall)
                if not more or self._tx_pending is not None:
                    break
        except Exception:
            log.exception("sending resets at close failed")

    # -- properties -----------------------------------------------------------------------------

    @property
    def listen_port(self) -> int:
        if self._sock is None:
            raise TunnelClosedError("tunnel not started")
        return int(self._sock.getsockname()[1])

    @property
    def public_key(self) -> str:
        return encode_key(self.device.public_key)

    def set_peer_endpoint(self, public_key: str | bytes, host: str, port: int) -> None:
        """Point a configured peer at ``host:port`` (numeric address)."""
        key = parse_key(public_key, what="peer public key") if isinstance(public_key, str) else public_key
        peer = self.device.peers.get(key)
        if peer is None:
            raise ConfigError(f"no peer with public key {encode_key(key)}")
        if self._sock is None:
            raise TunnelClosedError("tunnel not started")
        peer.slot.endpoint = sockaddr(host, port, self._sock.family)

    def rekey(self, public_key: str | bytes | None = None) -> None:
        """Start a new handshake with one peer (default: every peer) now, as REKEY_AFTER_TIME
        would. At most one initiation per peer per REKEY_TIMEOUT (5 s) is sent."""
        if self._loop is None or self._closed:
            raise TunnelClosedError("tunnel is not running")
        peers = list(self.device.iter_peers())
        if public_key is not None:
            key = parse_key(public_key, what="peer public key") if isinstance(public_key, str) else public_key
            peers = [p for p in peers if p.public_key == key]
            if not peers:
                raise ConfigError(f"no peer with public key {encode_key(key)}")
        for peer in peers:
            peer.send_handshake_initiation(self._loop.time(), time.time(), retry=False)
        self._schedule_flush()

    def add_peer(self, peer_config: PeerConfig, endpoint: tuple[str, int] | None = None) -> None:
        """Configure another peer on a running tunnel."""
        if self._sock is None:
            raise TunnelClosedError("tunnel not started")
        raw = sockaddr(endpoint[0], endpoint[1], self._sock.family) if endpoint else b""
        self.device.add_peer(peer_config, raw)

    # -- receive --------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self._loop is not None and self._io is not None and self._rx is not None
        loop, io, rx, device, tcp = self._loop, self._io, self._rx, self.device, self.tcp
        non_tcp = tcp.non_tcp
        try:
            now = loop.time()
            wall = time.time()
            for _ in range(MAX_BATCHES_PER_WAKEUP):
                n = io.recv(rx)
                if n == 0:
                    break
                if device.datapath.decrypt(rx, now):
                    assert self._tx is not None
                    tcp.input(rx, self._tx, now)
                    if tcp.non_tcp != non_tcp:
                        non_tcp = tcp.non_tcp
                        for _, packet, _, _ in rx.collect(RES_DATA):
                            self._receive_ip(packet)
                    if self._tx.count * 2 >= self._tx.slots and self._tx_pending is None:
                        self._send_tx(now, wall)
                device.after_decrypt(rx, now, wall)
                if n < rx.slots:
                    break
            self._dispatch_tcp()
            self._flush()
        except Exception:
            log.exception("tunnel receive path failed; the packet batch was dropped")

    def _receive_ip(self, packet: bytes) -> None:
        if (self._udp_ports or self.udp_fallback is not None) and _ip_protocol(packet) == 17:
            self._receive_udp(packet)
            return
        reply = answer(packet, self.addresses)
        if reply is not None:
            self.ip_counters["echo_answered"] += 1
            self._ip_out.append(reply)
            return
        # RTTs use time.monotonic(): uvloop's loop.time() has millisecond resolution.
        matched = self._pinger.receive(packet, time.monotonic())
        if matched is not None:
            token, rtt = matched
            waiter = self._ping_waiters.pop(token, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(rtt)
            return
        for handler in self._ip_handlers:
            if handler(packet):
                return
        self.ip_counters["unhandled"] += 1

    def _receive_udp(self, packet: bytes) -> None:
        try:
            datagram = parse_datagram(packet)
        except WireError:
            self.ip_counters["udp_malformed"] += 1
            return
        if datagram.dst not in self.addresses:
            self.ip_counters["udp_no_socket"] += 1
            return
        transport = self._udp_ports.lookup(datagram.dst, datagram.dst_port)
        if transport is None:
            if self.udp_fallback is not None:
                self.ip_counters["udp_fallback"] += 1
                try:
                    self.udp_fallback(datagram)
                except Exception:  # noqa: BLE001 - a fallback bug must not break receiving
                    log.exception("UDP fallback failed")
                return
            self.ip_counters["udp_no_socket"] += 1
            return
        self.ip_counters["udp_received"] += 1
        transport._deliver(datagram.payload, datagram.src, datagram.src_port)

    # -- UDP sockets ------------------------------------------------------------------------

    async def create_datagram_endpoint(
            self, protocol_factory: Callable[[], asyncio.DatagramProtocol], *,
            local_addr: tuple[str | None, int] | None = None,
            remote_addr: tuple[str, int] | None = None,
    ) -> tuple[TunnelDatagramTransport, asyncio.DatagramProtocol]:
        """A UDP socket on the tunnel's own addresses, like ``loop.create_datagram_endpoint``.

        `local_addr` (host, port): host must be one of the interface addresses, or None/""
        for all of them; port 0 picks an ephemeral port. `remote_addr` connects the socket.
        Raises OSError(EADDRINUSE) for a taken port and ValueError for a foreign address.
        """
        if self._closed or self._loop is None:
            raise TunnelClosedError("tunnel is not running")
        host, port = local_addr if local_addr is not None else (None, 0)
        local_ip = ipaddress.ip_address(host) if host else None
        if local_ip is not None and local_ip not in self.addresses:
            raise ValueError(f"{local_ip} is not an address of this tunnel "
                             f"({', '.join(map(str, self.addresses))})")
        remote = None
        if remote_addr is not None:
            remote = (ipaddress.ip_address(remote_addr[0]), int(remote_addr[1]))
            if self.device.datapath.route(remote[0].packed) is None:
                raise NoRouteError(f"no peer's AllowedIPs cover {remote[0]}")
            if local_ip is None:
                local_ip = self._source_for(remote[0])
        protocol = protocol_factory()
        transport = TunnelDatagramTransport(self, protocol, (local_ip, 0), remote)
        bound = self._udp_ports.bind(local_ip, int(port), transport)
        transport._local = (local_ip, bound)
        protocol.connection_made(transport)
        return transport, protocol

    # -- TCP ------------------------------------------------------------------------------------

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._closed or self._loop is None:
            raise TunnelClosedError("tunnel is not running")
        return self._loop

    def _ephemeral_port(self, src: bytes, dst: bytes, dport: int) -> int:
        low, high = EPHEMERAL_PORTS
        span = high - low + 1
        start = int.from_bytes(os.urandom(2), "big") % span
        for i in range(span):
            port = low + (start + i) % span
            if not self.tcp.in_use(src, port, dst, dport):
                return port
        raise OSError(99, f"no free local port to reach {ipaddress.ip_address(dst)} port {dport}")

    async def create_connection(
            self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, *,
            local_port: int = 0,
    ) -> tuple[TcpTransport, asyncio.BaseProtocol]:
        """Open a TCP connection through the tunnel, like ``loop.create_connection``.

        `host` is an IPv4/IPv6 address literal covered by some peer's AllowedIPs. Returns
        (transport, protocol) once the handshake completed. Raises NoRouteError,
        ConnectionRefusedError (the peer answered RST), TimeoutError (no answer after 6 SYN
        retransmissions, about 2 minutes; bound it with asyncio.timeout), ValueError for a
        host that is not an address.
        """
        loop = self._require_loop()
        try:
            dst = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"host must be an IP address inside the tunnel, got {host!r}") from None
        if not 0 < int(port) < 65536:
            raise ValueError(f"port {port} out of range 1-65535")
        if self.device.datapath.route(dst.packed) is None:
            raise NoRouteError(f"no peer's AllowedIPs cover {dst}")
        src = self._source_for(dst)
        lport = local_port or self._ephemeral_port(src.packed, dst.packed, int(port))
        conn = self.tcp.connect(src.packed, lport, dst.packed, int(port), loop.time())
        waiter: asyncio.Future[None] = loop.create_future()
        self._connect_waiters[conn] = waiter
        self._schedule_flush()
        try:
            await waiter
        except BaseException:
            conn.abort()
            self._schedule_flush()
            raise
        finally:
            self._connect_waiters.pop(conn, None)
        protocol = protocol_factory()
        transport = TcpTransport(self, conn, protocol)
        protocol.connection_made(transport)
        transport._deliver()
        if conn.state_name == "CLOSED":
            transport._on_events(EVENTS_CLOSED)
        return transport, protocol

    async def open_connection(self, host: str, port: int, *, limit: int = 2 ** 16,
                              local_port: int = 0
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A (StreamReader, StreamWriter) pair for a TCP connection through the tunnel, like
        ``asyncio.open_connection``. Raises as :meth:`create_connection`."""
        loop = self._require_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await self.create_connection(lambda: protocol, host, port,
                                                    local_port=local_port)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                            port: int, host: str | None = None, *, backlog: int = 128
                            ) -> TunnelServer:
        """Listen on a TCP port of the tunnel's addresses (`host`: one of them, or None for
        all), like ``loop.create_server``. Raises OSError(EADDRINUSE) for a taken port and
        ValueError for an address that is not the tunnel's."""
        self._require_loop()
        raw = b""
        if host:
            ip = ipaddress.ip_address(host)
            if ip not in self.addresses:
                raise ValueError(f"{ip} is not an address of this tunnel "
                                 f"({', '.join(map(str, self.addresses))})")
            raw = ip.packed
        listener = self.tcp.listen(int(port), raw, backlog)
        return TunnelServer(self, listener, protocol_factory)

    async def start_server(self, client_connected_cb: Callable[..., Any], port: int,
                           host: str | None = None, *, backlog: int = 128,
                           limit: int = 2 ** 16) -> TunnelServer:
        """Like ``asyncio.start_server``: `client_connected_cb(reader, writer)` (plain or
        coroutine function) runs for every accepted connection."""
        loop = self._require_loop()

        def factory() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

        return await self.create_server(factory, port, host, backlog=backlog)

    def _loop_call_soon(self, callback: Callable[..., object], *args: object) -> None:
        if self._loop is not None:
            self._loop.call_soon(callback, *args)

    # -- send -----------------------------------------------------------------------------------

    def send_packet(self, packet: bytes) -> None:
        """Queue an inner IP packet; it is routed by AllowedIPs and sealed at the next flush."""
        if self._closed or self._sock is None:
            raise TunnelClosedError("tunnel is not running")
        self._ip_out.append(packet)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and self._loop is not None and not self._closed:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Fill the tx batch (handshakes, keepalives, staged and IP-layer packets, TCP
        segments), seal it and send it; repeat while there is more, up to a bound."""
        self._flush_handle = None
        if self._closed:
            return
        assert self._loop is not None and self._io is not None and self._tx is not None
        if self._tx_pending is not None:
            return                       # socket full: _on_writable resumes us
        device, tcp = self.device, self.tcp
        try:
            now = self._loop.time()
            wall = time.time()
            for _ in range(MAX_TX_BATCHES_PER_FLUSH):
                tx = self._tx
                if device.has_pending() and tx.count < tx.slots:
                    device.fill(tx)
                room = tx.slots - tx.count
                if room and self._ip_out:
                    chunk, self._ip_out = self._ip_out[:room], self._ip_out[room:]
                    for packet in chunk:
                        try:
                            tx.add_packet(packet)
                        except ValueError:
                            device.datapath.drop(RESULT["DROP_TOO_BIG"])
                more = tcp.output(tx, now) if tcp.has_output else False
                if tx.count:
                    self._send_tx(now, wall)
                if self._tx_pending is not None:
                    break
                if not (more or self._ip_out or device.has_pending()):
                    break
            else:
                self._schedule_flush()
            self._dispatch_tcp()
            self._rearm_timer(now)
        except Exception:
            log.exception("tunnel send path failed; the packet batch was dropped")

    def _send_tx(self, now: float, wall: float) -> None:
        """Seal and send the tx batch. If the socket buffer fills, keep the rest of the batch
        and wait for writability (backpressure instead of loss)."""
        assert self._io is not None and self._tx is not None and self._loop is not None
        tx = self._tx
        device = self.device
        device.datapath.encrypt(tx, now)
        device.after_encrypt(tx, now, wall)
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

    def _dispatch_tcp(self) -> None:
        """Deliver the TCP stack's per-connection events to transports, servers and
        connect() waiters (once per connection per batch)."""
        for obj in self.tcp.take_touched():
            events = obj.take_events()
            owner = self._tcp_handlers.get(obj)
            try:
                if owner is not None:
                    owner._on_events(events)
                elif isinstance(obj, TcpConn):
                    waiter = self._connect_waiters.get(obj)
                    if waiter is not None and not waiter.done():
                        if obj.state_name == "ESTABLISHED" or obj.state_name == "CLOSE_WAIT":
                            waiter.set_result(None)
                        elif obj.state_name == "CLOSED":
                            remote = obj.remote
                            waiter.set_exception(connection_error(
                                obj.error or errno.ECONNREFUSED, address_tuple(*remote)))
            except Exception:
                log.exception("TCP event handling failed for %r", obj)

    # -- timers ---------------------------------------------------------------------------------

    def _rearm_timer(self, now: float) -> None:
        assert self._loop is not None
        deadline = self.device.get_timer()
        tcp_deadline = self.tcp.get_timer()
        if tcp_deadline is not None and (deadline is None or tcp_deadline < deadline):
            deadline = tcp_deadline
        if deadline == self._timer_at:
            return
        if self._timer_handle is not None:
            self._timer_handle.cancel()
            self._timer_handle = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer_handle = self._loop.call_at(max(deadline, now), self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer_handle = None
        self._timer_at = None
        try:
            now = self._loop.time()
            self.device.handle_timer(now, time.time())
            self.tcp.handle_timer(now)
            self._dispatch_tcp()
        except Exception:
            log.exception("tunnel timer handling failed")
        self._flush()
        self._rearm_timer(self._loop.time())

    # -- ping -----------------------------------------------------------------------------------

    def _source_for(self, dst: ipaddress.IPv4Address | ipaddress.IPv6Address
                    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        for address in self.addresses:
            if address.version == dst.version:
                return address
        raise TunnelError(f"the interface has no IPv{dst.version} address to ping {dst} from")

    async def ping(self, address: str, timeout: float = 5.0,
                   kind: Literal["icmp", "tsmp"] = "icmp", payload_size: int = 0) -> float:
        """Send one echo request (ICMP, or TSMP as Coder clients do) and return the RTT in seconds.

        The first ping to a peer includes the WireGuard handshake. Raises
        :class:`~agentconn.errors.NoRouteError` if no peer's AllowedIPs cover `address`,
        :class:`~agentconn.errors.PingTimeoutError` if no reply came within `timeout` seconds.
        """
        if self._closed or self._loop is None:
            raise TunnelClosedError("tunnel is not running")
        dst = ipaddress.ip_address(address)
        if self.device.datapath.route(dst.packed) is None:
            raise NoRouteError(f"no peer's AllowedIPs cover {dst}")
        src = self._source_for(dst)
        token, packet = self._pinger.request(src, dst, kind=kind, now=time.monotonic(),
                                             payload_size=payload_size)
        waiter: asyncio.Future[float] = self._loop.create_future()
        self._ping_waiters[token] = waiter
        self.send_packet(packet)
        try:
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise PingTimeoutError(f"no reply from {dst} within {timeout:g} s") from None
        finally:
            self._ping_waiters.pop(token, None)
            self._pinger.expire(time.monotonic(), timeout)

    # -- status ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: handshakes, rx/tx packets and bytes, drops by reason, per-peer state."""
        now = self._loop.time() if self._loop is not None else 0.0
        data = self.device.stats(now)
        data["listen_port"] = self.listen_port if self._sock is not None and not self._closed else None
        data["udp"] = self._io.counters() if self._io is not None else {}
        data["ip"] = dict(self.ip_counters)
        tcp = self.tcp.counters()
        tcp["connections"] = [self._conn_stats(c) for c in self.tcp.connections()]
        tcp["listeners"] = [{"address": str(ipaddress.ip_address(l.address)) if l.address else "",
                             "port": l.port, "pending": l.pending, "half_open": l.half_open,
                             "accepted": l.accepted, "syn_received": l.syn_received,
                             "syn_evicted": l.syn_evicted} for l in self.tcp.listeners()]
        data["tcp"] = tcp
        return data

    @staticmethod
    def _conn_stats(conn: TcpConn) -> dict[str, Any]:
        info = conn.counters()
        local, remote = conn.local, conn.remote
        info["local"] = (str(ipaddress.ip_address(local[0])), local[1])
        info["remote"] = (str(ipaddress.ip_address(remote[0])), remote[1])
        return info
