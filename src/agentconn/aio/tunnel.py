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
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Literal

from _wgcore.datapath import RESULT, PacketBatch
from _wgcore.udpio import UdpIO

from ..errors import ConfigError, NoRouteError, PingTimeoutError, TunnelClosedError, TunnelError
from ..net.icmp import Pinger, answer
from ..net.udp import PortTable, parse_datagram
from ..net.wire import WireError
from ..wg.config import InterfaceConfig, PeerConfig, load_config
from ..wg.device import Device
from ..wg.endpoint import format_sockaddr, sockaddr
from ..wg.keys import encode_key, parse_key
from .datagram import TunnelDatagramTransport

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
DEFAULT_MTU = 1420            # wg-quick's default; Coder's tailnet uses 1280 (tailnet.md §3)
RX_SLOTS = 64                 # messages per recvmmsg
RX_SLOT_SIZE = 65536          # one GRO super-buffer per message
TX_SLOTS = 256
MAX_BATCHES_PER_WAKEUP = 16   # stay fair to the rest of the loop


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
                            "udp_no_socket": 0, "udp_malformed": 0}

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
        loop, io, rx, device = self._loop, self._io, self._rx, self.device
        try:
            now = loop.time()
            wall = time.time()
            for _ in range(MAX_BATCHES_PER_WAKEUP):
                n = io.recv(rx)
                if n == 0:
                    break
                if device.datapath.decrypt(rx, now):
                    for _, packet, _, _ in rx.collect(RES_DATA):
                        self._receive_ip(packet)
                device.after_decrypt(rx, now, wall)
                if n < rx.slots:
                    break
            self._flush()
        except Exception:
            log.exception("tunnel receive path failed; the packet batch was dropped")

    def _receive_ip(self, packet: bytes) -> None:
        if self._udp_ports and _ip_protocol(packet) == 17:
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
        self._flush_handle = None
        if self._closed:
            return
        assert self._loop is not None and self._io is not None and self._tx is not None
        loop, io, tx, device = self._loop, self._io, self._tx, self.device
        try:
            now = loop.time()
            wall = time.time()
            for _ in range(8):
                if not (self._ip_out or device.has_pending()):
                    break
                tx.clear()
                device.fill(tx)
                room = tx.slots - tx.count
                if room and self._ip_out:
                    chunk, self._ip_out = self._ip_out[:room], self._ip_out[room:]
                    for packet in chunk:
                        try:
                            tx.add_packet(packet)
                        except ValueError:
                            device.datapath.drop(RESULT["DROP_TOO_BIG"])
                device.datapath.encrypt(tx, now)
                device.after_encrypt(tx, now, wall)
                io.send(tx)
            if self._ip_out or device.has_pending():
                self._schedule_flush()
            self._rearm_timer(now)
        except Exception:
            log.exception("tunnel send path failed; the packet batch was dropped")

    # -- timers ---------------------------------------------------------------------------------

    def _rearm_timer(self, now: float) -> None:
        assert self._loop is not None
        deadline = self.device.get_timer()
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
            self.device.handle_timer(self._loop.time(), time.time())
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
        return data
