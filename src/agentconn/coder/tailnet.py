"""A node of ours on a Coder tailnet: DERP relays and the coordinator, joined to a Tunnel.

Theory of operation (coder-control-plane.md §1.7, §4.8–§4.10, §5.9, §6.4)
--------------------------------------------------------------------------
A :class:`TailnetNode` owns, for one :class:`~agentconn.aio.tunnel.Tunnel` whose WireGuard key
is our node key:

* **DERP.** A :class:`~agentconn.coder.derp.DerpPool` keeps our home region connected (the
  ``preferred_derp`` we announce) and opens a peer's region on demand. Every peer is reached
  through a *relay path* of the tunnel (``Tunnel.set_relay``): path number ↔ (region, peer node
  key). Sealed WireGuard datagrams for a path go to one sender task that writes them to the
  region's DERP connection; DERP packets that are not disco enter the tunnel with
  ``receive_relayed``.
* **Direct paths (disco).** A :class:`~agentconn.coder.magicsock.Magicsock` runs magicsock's
  rules over DERP and over the tunnel's own UDP socket (whose C receive path hands disco and
  STUN datagrams to :meth:`_on_udp`): our node advertises its ``endpoints`` (the socket's local
  addresses and the address STUN servers of the DERP map saw), we send CallMeMaybe over DERP
  and disco-ping every candidate endpoint of a peer; once a UDP pong comes back the WireGuard
  peer is pinned to that address, kept by heartbeats, and pinned back to its DERP relay path
  when the address stops answering (trust lapses 6.5 s after the last pong).
  ``block_endpoints`` keeps a node DERP-only.
* **Coordinator.** A session task dials the coordinate websocket (``version=2.0``), runs yamux
  and the DRPC ``Coordinate`` and ``StreamDERPMaps`` calls, sends ``UpdateSelf`` with our node
  (fresh node and disco keys, home region, our /128 as address and allowed IP, our UDP endpoints)
  and — in the client role — ``AddTunnel`` for each agent we want. Peer updates configure
  WireGuard: a client programs an agent after ``READY_FOR_HANDSHAKE`` or 5 s after its NODE;
  an agent programs a client as soon as its NODE arrives and answers ``ReadyForHandshake``.
  ``DISCONNECTED`` removes the peer; ``LOST`` keeps it (live TCP connections keep working if
  the peer comes back). When the websocket drops, the task reconnects with backoff, with the
  same keys, and re-announces; the tunnel and its TCP connections are not touched. A DERP
  reconnect (a new generation) re-announces too.
* **Close.** ``Disconnect{}`` and a wait for the coordinator to close the stream, so the peer
  sees a graceful ``DISCONNECTED`` rather than ``LOST``; then DERP and the websocket close.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..aio.tunnel import Tunnel
from ..errors import AgentConnError, ConfigError
from ..proto.ports import agent_addresses
from ..web.errors import WebSocketRejected
from ..web.websocket import websocket_connect
from ..wg.config import PeerConfig
from ..wg.endpoint import parse_sockaddr
from . import stun
from .derp import Connected, DerpMap, DerpPool, PacketReceived
from .disco import MAGIC
from .keys import DiscoPrivate, DiscoPublic, NodePrivate, NodePublic, random_node_id
from .magicsock import Magicsock, PathChanged, format_endpoint, parse_endpoint
from .netcheck import local_endpoints, stun_servers
from .tailnet_pb import (
    CoordinateRequest,
    Node,
    PeerUpdate,
    PeerUpdateKind,
    ReadyForHandshake,
    Timestamp,
    UpdateSelf,
)
from .tailnet_pb import (
    Tunnel as TunnelMsg,
)
from .tailnet_rpc import CoordinateCall, TailnetClient
from .yamux_aio import Role, yamux_over_websocket

__all__ = ["READY_FOR_HANDSHAKE_TIMEOUT", "CoordinateTarget", "TailnetError", "TailnetNode"]

log = logging.getLogger("agentconn.coder.tailnet")

READY_FOR_HANDSHAKE_TIMEOUT = 5.0     # readyForHandshakeTimeout (§4.10)
STUN_INTERVAL = 20.0                  # how often the STUN-seen endpoint is refreshed
STUN_TIMEOUT = 3.0
RECONNECT_BACKOFF = (0.1, 10.0)       # first and largest wait between coordinator dials
Opener = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class TailnetError(AgentConnError):
    """The coordinator or the relays could not be used (what was tried is in the message)."""


@dataclass(frozen=True, slots=True)
class CoordinateTarget:
    """Where and how to dial the coordinate websocket."""

    host: str
    port: int
    path: str
    headers: dict[str, str]
    ssl_context: ssl.SSLContext | None = None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.ssl_context is not None:
            return await asyncio.open_connection(self.host, self.port, ssl=self.ssl_context,
                                                 server_hostname=self.host)
        return await asyncio.open_connection(self.host, self.port)


@dataclass
class _Peer:
    """What we know of a peer from the coordinator."""

    id: uuid.UUID
    key: NodePublic | None = None
    disco: DiscoPublic | None = None
    region: int = 0
    allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    ready: bool = False                  # READY_FOR_HANDSHAKE seen (client role)
    configured: NodePublic | None = None  # the key programmed into WireGuard
    timer: asyncio.TimerHandle | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class TailnetNode:
    """Our node on a Coder tailnet (see module doc).

    `tunnel`: a started Tunnel whose private key is `node_key`'s; `derp_map`: the map from the
    connection info; `coordinate`: the websocket target; `role`: ``"client"`` (sends AddTunnel,
    waits for READY_FOR_HANDSHAKE) or ``"agent"`` (answers ReadyForHandshake); `addresses`: the
    /128s we announce (default: the tunnel's IPv6 addresses); `rewrite_derp_map`: applied to
    streamed maps (Go JSON form).
    """

    def __init__(self, tunnel: Tunnel, node_key: NodePrivate, derp_map: DerpMap,
                 coordinate: CoordinateTarget, *, role: str = "client",
                 force_websockets: bool = False, addresses: Iterable[ipaddress.IPv6Address] = (),
                 node_id: int | None = None,
                 rewrite_derp_map: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 block_endpoints: bool = False, loopback_endpoints: bool = False
                 ) -> None:
        if role not in ("client", "agent"):
            raise ValueError(f"role must be 'client' or 'agent', not {role!r}")
        self.tunnel = tunnel
        self.node_key = node_key
        self.disco_key = DiscoPrivate.generate()
        self.role = role
        self.coordinate = coordinate
        #: Coordinator sessions: the node's own (agent role) or one per agent (client role).
        self.sessions: dict[uuid.UUID | None, CoordinatorSession] = {}
        self.addresses = list(addresses) or [a for a in tunnel.addresses if a.version == 6]
        self.node_id = node_id if node_id is not None else random_node_id()
        #: Applied to every streamed DERP map (the client points the embedded relay at the
        #: URL it uses, as Go's RewriteDERPMapDefaultRelay does).
        self.rewrite_derp_map = rewrite_derp_map
        self.pool = DerpPool(node_key, derp_map, force_websockets=force_websockets)
        self.pool.packet_sink = self._derp_packets
        #: Disco over DERP and UDP and the choice of each peer's path.
        self.magicsock = Magicsock(self.disco_key, node_key.public, last_send=self._last_send,
                                   block_endpoints=block_endpoints)
        self.block_endpoints = block_endpoints
        #: Advertise loopback addresses of a wildcard-bound socket too (tests on one host).
        self.loopback_endpoints = loopback_endpoints
        self.stun_endpoint: tuple[Any, int] | None = None
        self._stun_pending: dict[bytes, float] = {}
        self._disco_timer: asyncio.TimerHandle | None = None
        self._disco_timer_at: float | None = None
        self.peers: dict[uuid.UUID, _Peer] = {}
        self.counters = {"coordinator_connects": 0, "coordinator_drops": 0, "derp_in": 0,
                         "derp_out": 0, "derp_send_dropped": 0, "disco_in": 0,
                         "node_updates": 0, "disco_in_udp": 0, "stun_requests": 0,
                         "stun_responses": 0, "udp_unknown": 0}
        self._paths: dict[tuple[int, bytes], int] = {}
        self._path_of: dict[int, tuple[int, NodePublic]] = {}
        self._out: deque[tuple[int, bytes]] = deque()
        self._out_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def home_region(self) -> int:
        return self.pool.home_region

    async def start(self, timeout: float = 30.0) -> None:
        """Connect the home DERP region and the coordinator. Raises TailnetError naming the
        relay or the coordinator that could not be reached within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self.pool.start()
        except TimeoutError:
            raise TailnetError(f"DERP region {self.home_region} not reachable within "
                               f"{timeout:g} s") from None
        except OSError as exc:
            raise TailnetError(f"DERP region {self.home_region} not reachable: {exc}") from None
        self.tunnel.set_relay(self._relay_send)
        self.tunnel.set_disco_handler(self._on_udp)
        self.tunnel.peer_info = self._peer_info
        self._update_endpoints()
        self._tasks = [asyncio.create_task(self._derp_reader(), name="tailnet-derp-in"),
                       asyncio.create_task(self._derp_sender(), name="tailnet-derp-out")]
        if not self.block_endpoints:
            self._tasks.append(asyncio.create_task(self._stun_loop(), name="tailnet-stun"))
        if self.role == "agent":
            try:
                await self._session(None, self.coordinate, timeout)
            except BaseException:
                await self.close()
                raise

    async def _session(self, key: uuid.UUID | None, target: CoordinateTarget,
                       timeout: float) -> CoordinatorSession:
        session = self.sessions.get(key)
        if session is None:
            session = CoordinatorSession(self, target, key)
            self.sessions[key] = session
            try:
                await session.start(timeout)
            except BaseException:
                self.sessions.pop(key, None)
                raise
        return session

    async def close(self) -> None:
        """Leave gracefully (Disconnect), then close the coordinator session and DERP."""
        if self._closing:
            return
        self._closing = True
        await asyncio.gather(*(session.close() for session in self.sessions.values()),
                             return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in self.peers.values():
            if peer.timer is not None:
                peer.timer.cancel()
            for waiter in peer.waiters:
                if not waiter.done():
                    waiter.set_exception(TailnetError("tailnet node closed"))
        if self._disco_timer is not None:
            self._disco_timer.cancel()
        self.tunnel.set_relay(None)
        self.tunnel.set_disco_handler(None)
        self.tunnel.peer_info = None
        await self.pool.close()

    # -- peers ----------------------------------------------------------------------------------

    async def add_agent(self, agent_id: uuid.UUID, target: CoordinateTarget | None = None,
                        timeout: float = 30.0) -> None:
        """Open a tunnel to an agent (client role) through the coordinator session for it
        (`target`, default the node's) and wait until WireGuard knows it. Raises TailnetError
        when the coordinator refuses or gives no node for it within `timeout` seconds."""
        peer = self.peers.setdefault(agent_id, _Peer(agent_id))
        await self._session(agent_id, target or self.coordinate, timeout)
        if peer.configured is not None:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        peer.waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise TailnetError(f"the coordinator sent no node for agent {agent_id} within "
                               f"{timeout:g} s: is the agent connected?") from None

    async def remove_agent(self, agent_id: uuid.UUID) -> None:
        """Close the tunnel to an agent (RemoveTunnel) and forget its peer."""
        session = self.sessions.pop(agent_id, None)
        if session is not None:
            await session.send(CoordinateRequest(remove_tunnel=TunnelMsg.to(agent_id)))
            await session.close()
        self._forget(agent_id)

    def node(self) -> Node:
        """Our node as we announce it (UpdateSelf)."""
        prefixes = tuple(f"{a}/128" for a in self.addresses)
        return Node(id=self.node_id, as_of=Timestamp.from_time(time.time()),
                    key=self.node_key.public.to_binary(), disco=str(self.disco_key.public),
                    preferred_derp=self.home_region, addresses=prefixes, allowed_ips=prefixes,
                    endpoints=tuple(format_endpoint(ep)
                                    for ep in self.magicsock.local_endpoints))

    def on_update(self, session: CoordinatorSession, update: PeerUpdate) -> None:
        """A PeerUpdate from one of our coordinator sessions."""
        peer_id = update.uuid
        kind = update.kind
        if kind == PeerUpdateKind.NODE and update.node is not None:
            self.counters["node_updates"] += 1
            self._on_node(session, peer_id, update.node)
        elif kind == PeerUpdateKind.READY_FOR_HANDSHAKE:
            peer = self.peers.setdefault(peer_id, _Peer(peer_id))
            peer.ready = True
            if peer.key is not None:
                self._configure(peer)
        elif kind == PeerUpdateKind.DISCONNECTED:
            log.info("peer %s disconnected (%s)", peer_id, update.reason)
            self._forget(peer_id)
        elif kind == PeerUpdateKind.LOST:
            log.info("peer %s lost (%s); keeping it", peer_id, update.reason)

    def _on_node(self, session: CoordinatorSession, peer_id: uuid.UUID, node: Node) -> None:
        try:
            key = NodePublic.from_binary(node.key)
            disco = DiscoPublic.parse(node.disco)
            allowed = [ipaddress.ip_network(p) for p in node.allowed_ips or node.addresses]
        except (ValueError, AgentConnError) as exc:
            log.warning("ignoring node of peer %s: %s", peer_id, exc)
            return
        if node.preferred_derp == 0:
            log.warning("ignoring node of peer %s: no preferred DERP region", peer_id)
            return
        peer = self.peers.setdefault(peer_id, _Peer(peer_id))
        if peer.key is not None and peer.key != key:
            peer.ready = False                     # a restarted peer: new key, new handshake
        if peer.disco is not None and peer.disco != disco:
            self.magicsock.remove_peer(peer.disco)     # a new disco key: start over on DERP
        peer.key, peer.disco, peer.region = key, disco, node.preferred_derp
        peer.allowed = [n for n in allowed if isinstance(n, ipaddress.IPv6Network)]
        endpoints = [ep for ep in map(parse_endpoint, node.endpoints) if ep is not None]
        self.magicsock.add_peer(disco, key, node.preferred_derp, endpoints, self._now())
        self._pump()
        if peer.configured == key:
            self._pin(key, self.magicsock.path(key))   # e.g. back to DERP after a new disco key
        if self.role == "agent":
            self._configure(peer)
            asyncio.get_running_loop().create_task(session.send(CoordinateRequest(
                ready_for_handshake=(ReadyForHandshake(id=peer_id.bytes),))))
        elif peer.ready:
            self._configure(peer)
        elif peer.timer is None:
            peer.timer = asyncio.get_running_loop().call_later(
                READY_FOR_HANDSHAKE_TIMEOUT, self._configure, peer)

    def _configure(self, peer: _Peer) -> None:
        """Program the peer into WireGuard, reached through its DERP region."""
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None
        if peer.key is None:
            return
        tunnel = self.tunnel
        if peer.configured is not None and peer.configured != peer.key:
            with contextlib.suppress(ConfigError):
                tunnel.remove_peer(bytes(peer.configured))
            peer.configured = None
        if peer.configured is None:
            tunnel.add_peer(PeerConfig(public_key=bytes(peer.key), allowed_ips=peer.allowed))
            peer.configured = peer.key
        self._pin(peer.key, self.magicsock.path(peer.key))
        for waiter in peer.waiters:
            if not waiter.done():
                waiter.set_result(None)
        peer.waiters.clear()

    def _forget(self, peer_id: uuid.UUID) -> None:
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return
        if peer.timer is not None:
            peer.timer.cancel()
        if peer.disco is not None:
            self.magicsock.remove_peer(peer.disco)
        if peer.configured is not None:
            with contextlib.suppress(ConfigError):
                self.tunnel.remove_peer(bytes(peer.configured))

    # -- DERP -----------------------------------------------------------------------------------

    def _path(self, region: int, key: NodePublic) -> int:
        path = self._paths.get((region, bytes(key)))
        if path is None:
            path = len(self._path_of) + 1
            self._paths[(region, bytes(key))] = path
            self._path_of[path] = (region, key)
        return path

    def _relay_send(self, items: list[tuple[int, bytes]]) -> None:
        self._out.extend(items)
        self._out_ready.set()

    async def _derp_sender(self) -> None:
        out, pool = self._out, self.pool
        while True:
            await self._out_ready.wait()
            self._out_ready.clear()
            while out:
                # One batch per run of datagrams to the same path, in order: one write and
                # one backpressure wait per run instead of per datagram.
                path, datagram = out.popleft()
                run = [datagram]
                while out and out[0][0] == path:
                    run.append(out.popleft()[1])
                target = self._path_of.get(path)
                if target is None:
                    continue
                try:
                    sent = await pool.send_batch(target[0], bytes(target[1]), run)
                except (AgentConnError, OSError) as exc:
                    sent = 0
                    log.debug("DERP send to region %d failed: %s", target[0], exc)
                self.counters["derp_out"] += sent
                self.counters["derp_send_dropped"] += len(run) - sent

    def _derp_packets(self, region: int, packets: list[PacketReceived]) -> None:
        """The packets of one DERP read, in order: disco to magicsock, the rest to the
        tunnel (processed together as one relayed batch)."""
        tunnel, magicsock, counters = self.tunnel, self.magicsock, self.counters
        now = asyncio.get_running_loop().time()
        for event in packets:
            src = event.src
            if magicsock.receive_derp(src, event.data, region, now):
                counters["disco_in"] += 1
                self._pump()
                continue
            counters["derp_in"] += 1
            tunnel.receive_relayed(self._path(region, src), event.data)

    async def _derp_reader(self) -> None:
        pool, tunnel, magicsock = self.pool, self.tunnel, self.magicsock
        loop = asyncio.get_running_loop()
        while True:
            region, event = await pool.next_event()
            if isinstance(event, PacketReceived):
                src = NodePublic(event.src)
                if magicsock.receive_derp(src, event.data, region, loop.time()):
                    self.counters["disco_in"] += 1
                    self._pump()
                    continue
                self.counters["derp_in"] += 1
                tunnel.receive_relayed(self._path(region, src), event.data)
            elif isinstance(event, Connected) and event.generation > 1:
                log.info("DERP region %d reconnected; announcing our node again", region)
                for session in list(self.sessions.values()):
                    loop.create_task(session.send(CoordinateRequest(
                        update_self=UpdateSelf(node=self.node()))))

    # -- disco and direct paths ------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _last_send(self, key: NodePublic) -> float | None:
        try:
            peer, = self.tunnel.node.peers_by_key(bytes(key))
        except (ConfigError, ValueError):
            return None
        return float(peer.slot.last_sent_any)

    def _pin(self, key: NodePublic, endpoint: Any) -> None:
        """Point the WireGuard peer at ``endpoint`` (direct) or its DERP relay path (None)."""
        peer = next((p for p in self.peers.values() if p.configured == key), None)
        if peer is None:
            return
        with contextlib.suppress(ConfigError):
            if endpoint is None:
                self.tunnel.pin_peer_endpoint(bytes(key), self._path(peer.region, key))
            else:
                self.tunnel.pin_peer_endpoint(bytes(key), (str(endpoint[0]), endpoint[1]))

    def _on_udp(self, datagram: bytes, source: bytes) -> None:
        """A disco or STUN datagram from the tunnel's UDP socket."""
        host, port = parse_sockaddr(source)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            self.counters["udp_unknown"] += 1
            return
        if datagram.startswith(MAGIC):
            self.counters["disco_in_udp"] += 1
            self.magicsock.receive_udp(datagram, (ip, port), self._now())
            self._pump()
            return
        parsed = stun.parse_response(datagram)
        if parsed is None or self._stun_pending.pop(parsed[0], None) is None:
            self.counters["udp_unknown"] += 1
            return
        self.counters["stun_responses"] += 1
        if parsed[1] != self.stun_endpoint:
            log.info("STUN: our UDP socket is seen at %s", format_endpoint(parsed[1]))
            self.stun_endpoint = parsed[1]
            self._update_endpoints()

    async def _stun_loop(self) -> None:
        """Ask the DERP map's STUN servers where our socket is seen, now and then."""
        loop = asyncio.get_running_loop()
        while True:
            self._update_endpoints()              # interfaces may have changed
            now = loop.time()
            for tx_id, at in list(self._stun_pending.items()):
                if now - at > STUN_TIMEOUT:
                    del self._stun_pending[tx_id]
            for host, port in stun_servers(self.pool.derp_map):
                try:
                    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
                except OSError as exc:
                    log.debug("STUN server %s:%d: %s", host, port, exc)
                    continue
                if not infos:
                    continue
                addr = infos[0][4]
                tx_id = stun.new_tx_id()
                self._stun_pending[tx_id] = now
                if self.tunnel.send_disco(stun.binding_request(tx_id), str(addr[0]), port):
                    self.counters["stun_requests"] += 1
            await asyncio.sleep(STUN_INTERVAL)

    def _update_endpoints(self) -> None:
        """Recompute our endpoints; if they changed, CallMeMaybe every peer (the magicsock
        does) and announce the node again."""
        try:
            host, port = self.tunnel.local_address
        except AgentConnError:
            return
        eps = local_endpoints(host, port, include_loopback=self.loopback_endpoints)
        if self.stun_endpoint is not None:
            eps.append(self.stun_endpoint)
        if self.magicsock.set_local_endpoints(eps):
            self._pump()
            loop = asyncio.get_running_loop()
            for session in list(self.sessions.values()):
                loop.create_task(session.send(CoordinateRequest(
                    update_self=UpdateSelf(node=self.node()))))

    def _pump(self) -> None:
        """Send what the magicsock queued, apply path changes, re-arm its timer."""
        magicsock, tunnel = self.magicsock, self.tunnel
        queued = False
        for via, packet in magicsock.packets_to_send():
            if via.udp is not None:
                tunnel.send_disco(packet, str(via.udp[0]), via.udp[1])
            elif via.node_key is not None:
                self._out.append((self._path(via.region, via.node_key), packet))
                queued = True
        if queued:
            self._out_ready.set()
        while (event := magicsock.next_event()) is not None:
            if isinstance(event, PathChanged):
                if event.endpoint is not None:
                    log.info("peer %s: direct path %s (%.1f ms)", event.node_key,
                             format_endpoint(event.endpoint), (event.latency or 0) * 1e3)
                else:
                    log.info("peer %s: using DERP", event.node_key)
                self._pin(event.node_key, event.endpoint)
        self._rearm_disco_timer()

    def _rearm_disco_timer(self) -> None:
        if self._closing:
            return
        deadline = self.magicsock.get_timer()
        if deadline == self._disco_timer_at and self._disco_timer is not None:
            return
        if self._disco_timer is not None:
            self._disco_timer.cancel()
            self._disco_timer = None
        self._disco_timer_at = deadline
        if deadline is not None:
            self._disco_timer = asyncio.get_running_loop().call_at(deadline, self._on_disco_timer)

    def _on_disco_timer(self) -> None:
        self._disco_timer = None
        self._disco_timer_at = None
        try:
            self.magicsock.handle_timer(self._now())
            self._pump()
        except Exception:
            log.exception("disco timer failed")

    def _peer_info(self, key: bytes) -> dict[str, Any]:
        """Disco facts of a WireGuard peer for the tunnel's diagnostics."""
        disco = self.magicsock.peer_disco(NodePublic(key))
        if disco is None:
            return {}
        return self.magicsock.peer_status(disco, self._now())

    async def follow_derp_maps(self, maps: Any) -> None:
        """Apply every map a StreamDERPMaps call sends."""
        while (derp_map := await maps.recv()) is not None:
            log.debug("new DERP map with %d regions", len(derp_map.regions))
            data = derp_map_json(derp_map)
            if self.rewrite_derp_map is not None:
                data = self.rewrite_derp_map(data)
            try:
                self.pool.update_map(DerpMap.from_json(data))
            except (AgentConnError, ValueError, KeyError) as exc:
                log.warning("ignoring a DERP map from the coordinator: %s", exc)

    def stats(self) -> dict[str, Any]:
        """Counters, the home region and the peers with their regions and states."""
        now = asyncio.get_running_loop().time()
        return {**self.counters, "home_region": self.home_region,
                "coordinator_sessions": len(self.sessions),
                "disco": self.magicsock.stats(),
                "peers": {str(p.id): {"region": p.region, "ready": p.ready,
                                      "configured": p.configured is not None,
                                      **(self.magicsock.peer_status(p.disco, now)
                                         if p.disco is not None else {})}
                          for p in self.peers.values()}}


class CoordinatorSession:
    """One coordinate websocket (yamux → DRPC ``Coordinate`` + ``StreamDERPMaps``) of a node,
    reconnected with backoff until closed. coderd authorizes a client's session for the one
    agent in its URL, so a client holds one session per agent; an agent holds one."""

    def __init__(self, node: TailnetNode, target: CoordinateTarget,
                 agent_id: uuid.UUID | None) -> None:
        self.node = node
        self.target = target
        self.agent_id = agent_id                 # the agent we AddTunnel to (client role)
        self.connects = 0
        self._call: CoordinateCall | None = None
        self._send_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._failed = asyncio.Event()           # a permanent refusal before the first session
        self._first_error: str | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float) -> None:
        """Dial until the first session is up. Raises TailnetError (refused, or not within
        `timeout` seconds) naming the coordinator and what it answered."""
        self._task = asyncio.create_task(self._loop(), name="tailnet-coordinate")
        where = f"coordinator at {self.target.host}:{self.target.port}"
        waits = [asyncio.ensure_future(self._connected.wait()),
                 asyncio.ensure_future(self._failed.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        if not self._connected.is_set():
            error = self._first_error
            await self.close(graceful=False)
            if self._failed.is_set():
                raise TailnetError(f"{where} refused us: {error}")
            raise TailnetError(f"{where} not usable within {timeout:g} s"
                               + (f": {error}" if error else ""))

    async def send(self, request: CoordinateRequest) -> None:
        """Send one request on the live session (dropped while reconnecting: the next session
        starts with UpdateSelf and AddTunnel again)."""
        call = self._call
        if call is not None:
            try:
                async with self._send_lock:      # one message at a time on the stream
                    await call.send(request)
            except Exception as exc:       # the session loop notices and reconnects
                log.debug("coordinator send failed: %s", exc)

    async def close(self, *, graceful: bool = True) -> None:
        """Disconnect (graceful: the peer sees DISCONNECTED, not LOST) and stop."""
        self._closing = True
        call = self._call
        if graceful and call is not None:
            with contextlib.suppress(Exception):
                await call.disconnect(timeout=2.0)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        delay = RECONNECT_BACKOFF[0]
        node = self.node
        while not self._closing:
            started = time.monotonic()
            try:
                await self._once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
                if self._first_error is None:
                    self._first_error = _describe(exc)
                log.info("coordinator session ended: %s", _describe(exc))
                # 400/401/403/404/409 on the first dial are permanent (dialer.go)
                if (not self._connected.is_set() and isinstance(exc, WebSocketRejected)
                        and exc.status in (400, 401, 403, 404, 409)):
                    self._failed.set()
                    return
            self._call = None
            if self._closing:
                return
            node.counters["coordinator_drops"] += 1
            if time.monotonic() - started > 30:
                delay = RECONNECT_BACKOFF[0]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_BACKOFF[1])

    async def _once(self) -> None:
        target, node = self.target, self.node
        reader, writer = await target.open()
        default = target.port == (443 if target.ssl_context is not None else 80)
        host = target.host if default else f"{target.host}:{target.port}"
        headers = {k: v for k, v in target.headers.items() if k.lower() != "host"}
        ws = await websocket_connect(reader, writer, host, target.path,
                                     headers=headers, compression=False,
                                     max_message_size=1 << 30)
        session = yamux_over_websocket(ws, Role.CLIENT)
        try:
            tailnet = TailnetClient(session)
            call = await tailnet.coordinate()
            maps = await tailnet.stream_derp_maps()
            self._call = call
            self.connects += 1
            node.counters["coordinator_connects"] += 1
            async with self._send_lock:
                await call.send(CoordinateRequest(update_self=UpdateSelf(node=node.node())))
                if self.agent_id is not None:
                    await call.send(CoordinateRequest(add_tunnel=TunnelMsg.to(self.agent_id)))
            self._connected.set()
            map_task = asyncio.create_task(node.follow_derp_maps(maps),
                                           name="tailnet-derp-maps")
            try:
                while (response := await call.recv()) is not None:
                    if response.error:
                        log.warning("coordinator: %s", response.error)
                    for update in response.peer_updates:
                        node.on_update(self, update)
            finally:
                map_task.cancel()
                await asyncio.gather(map_task, return_exceptions=True)
            if not self._closing:
                raise TailnetError("the coordinator closed the Coordinate stream")
        finally:
            with contextlib.suppress(Exception):
                await session.close()


def agent_node_addresses(agent_id: uuid.UUID) -> list[ipaddress.IPv6Address]:
    """The /128s an agent announces (its Tailscale and Coder service addresses)."""
    return list(agent_addresses(agent_id))


_NODE_FIELDS = (("name", "Name"), ("region_id", "RegionID"), ("host_name", "HostName"),
                ("cert_name", "CertName"), ("ipv4", "IPv4"), ("ipv6", "IPv6"),
                ("stun_port", "STUNPort"), ("stun_only", "STUNOnly"), ("derp_port", "DERPPort"),
                ("insecure_for_tests", "InsecureForTests"), ("force_http", "ForceHTTP"),
                ("stun_test_ip", "STUNTestIP"), ("can_port_80", "CanPort80"))


def derp_map_json(derp_map: Any) -> dict[str, Any]:
    """A streamed DERPMap message in the Go JSON form of the connection info (§4.5 mirrors
    §1.5 field for field, ``tailnet/convert.go``)."""
    regions: dict[str, Any] = {}
    for region_id, region in derp_map.regions.items():
        regions[str(region_id)] = {
            "RegionID": region.region_id, "EmbeddedRelay": region.embedded_relay,
            "RegionCode": region.region_code, "RegionName": region.region_name,
            "Avoid": region.avoid,
            "Nodes": [{json: getattr(node, attr) for attr, json in _NODE_FIELDS
                       if hasattr(node, attr)} for node in region.nodes]}
    scores = derp_map.home_params.region_score if derp_map.home_params is not None else {}
    return {"HomeParams": {"RegionScore": {str(k): v for k, v in scores.items()}},
            "Regions": regions}


def _describe(exc: BaseException) -> str:
    """An exception in one line; a refused websocket with coderd's message and detail."""
    if isinstance(exc, WebSocketRejected):
        try:
            import orjson

            body = orjson.loads(exc.body)
            text = str(body.get("message", ""))
            if body.get("detail"):
                text += f": {body['detail']}"
            return f"HTTP {exc.status}: {text}"
        except Exception:  # noqa: BLE001 - any body: fall back to the status
            return f"HTTP {exc.status}"
    return str(exc) or type(exc).__name__
