"""Direct UDP paths negotiated by disco, with DERP as the fallback: magicsock's path rules.

Spec: coder-control-plane.md §6 (layout, messages, receiver rules, §6.4 timers); Go:
coder/tailscale ``wgengine/magicsock/magicsock.go`` (handleDiscoMessage, handlePingLocked,
handleCallMeMaybe) and ``endpoint.go`` (heartbeat, sendDiscoPingsLocked,
handlePongConnLocked, addrForSendLocked, betterAddr). Written from those rules, not copied.

:class:`Magicsock` is a sans-IO core with an injected clock (every method takes ``now``):

* **In.** :meth:`receive_derp` (a DERP packet, with its source node key and region; returns
  False for WireGuard) and :meth:`receive_udp` (a disco datagram from the WireGuard socket,
  with its source address). Input from the network never raises: what is not from a known
  peer, does not open or does not parse is dropped and counted in :attr:`drops`.
* **Peers.** :meth:`add_peer` with what the coordinator said (node key, disco key, home DERP
  region, advertised ``endpoints``); CallMeMaybe and incoming UDP pings add candidates.
* **Out.** :meth:`packets_to_send` drains ``(Via, packet)``: ``Via.udp`` is an endpoint,
  ``Via.region``/``Via.node_key`` a DERP destination. :meth:`next_event` gives
  :class:`PathChanged` (the WireGuard peer must now be reached at ``endpoint``, or through DERP
  for ``None``) and what came in (pings, pongs, CallMeMaybe).
* **Time.** :meth:`get_timer`/:meth:`handle_timer`: every :data:`HEARTBEAT_INTERVAL` a peer
  whose session is active (something sent to it within :data:`SESSION_ACTIVE_TIMEOUT`, asked of
  the ``last_send`` callback) pings its best address, and pings every candidate when it has no
  trusted one (each endpoint at most once per :data:`DISCO_PING_INTERVAL`), followed by a
  CallMeMaybe over DERP. A UDP pong makes its address the best one if :func:`better_addr` says
  so and trusts the best one for :data:`TRUST_UDP_ADDR_DURATION`; when that trust lapses the
  peer falls back to DERP (a :class:`PathChanged` to ``None``) until a pong comes again.
  Pongs over DERP never make a path.
"""
from __future__ import annotations

import ipaddress
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nacl.bindings import crypto_box_afternm, crypto_box_open_afternm
from nacl.exceptions import CryptoError

from .disco import (
    HEADER_LEN,
    MAGIC,
    NONCE_LEN,
    CallMeMaybe,
    CallMeMaybeReceived,
    DiscoError,
    DiscoMessage,
    Endpoint,
    Ping,
    PingReceived,
    Pong,
    PongReceived,
    _shared_key,
    emit_message,
    looks_like_disco,
    parse_message,
)
from .keys import DiscoPrivate, DiscoPublic, NodePublic, derp_magic_endpoint

__all__ = [
    "DISCO_PING_INTERVAL",
    "HEARTBEAT_INTERVAL",
    "PING_TIMEOUT",
    "SESSION_ACTIVE_TIMEOUT",
    "TRUST_UDP_ADDR_DURATION",
    "Magicsock",
    "PathChanged",
    "Via",
    "better_addr",
]

HEARTBEAT_INTERVAL = 3.0           # heartbeatInterval
TRUST_UDP_ADDR_DURATION = 6.5      # trustUDPAddrDuration
PING_TIMEOUT = 5.0                 # pingTimeoutDuration
DISCO_PING_INTERVAL = 5.0          # discoPingInterval
SESSION_ACTIVE_TIMEOUT = 45.0      # sessionActiveTimeout
UPGRADE_INTERVAL = 60.0            # upgradeInterval
GOOD_ENOUGH_LATENCY = 0.005        # goodEnoughLatency
MAX_CANDIDATES = 100               # addCandidateEndpoint's pruning bound
_TXID_LEN = 12

#: Addresses a CallMeMaybe may carry that are never pinged: IPv6 link-local, and the tailnet's
#: own ranges (Tailscale's and Coder's ULAs, ``tsaddr.IsCoderIP``).
_IGNORED = (ipaddress.ip_network("fe80::/10"), ipaddress.ip_network("fd7a:115c:a1e0::/48"),
            ipaddress.ip_network("fd60:627a:a42b::/48"))


@dataclass(frozen=True, slots=True)
class Via:
    """Where a packet goes: ``udp`` (an endpoint) or DERP ``region`` to ``node_key``."""

    udp: Endpoint | None = None
    region: int = 0
    node_key: NodePublic | None = None


@dataclass(frozen=True, slots=True)
class PathChanged:
    """Reach ``node_key`` at ``endpoint`` (direct UDP), or through DERP when ``None``."""

    node_key: NodePublic
    disco: DiscoPublic
    endpoint: Endpoint | None
    latency: float | None


def _points(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    points = 0
    if ip.is_loopback:
        points += 50
    elif ip.is_private:
        points += 20
    if ip.version == 6:
        points += 10
    return points


def better_addr(a: tuple[Endpoint, float] | None, b: tuple[Endpoint, float] | None) -> bool:
    """``betterAddr``: whether ``a`` (endpoint, latency) beats ``b``: points for being faster
    (percent of the slower one's latency), +50 loopback or +20 private, +10 IPv6; a gain of
    at most 1 point over 0 does not switch (hysteresis)."""
    if a is None:
        return False
    if b is None:
        return True
    if a[0] == b[0]:
        return False
    a_lat, b_lat = a[1], b[1]
    a_points = b_points = 0
    if a_lat > b_lat and a_lat > 0:
        b_points = int(100 - (b_lat * 100) / a_lat)
    elif b_lat > 0:
        a_points = int(100 - (a_lat * 100) / b_lat)
    a_points += _points(a[0][0])
    b_points += _points(b[0][0])
    if a_points <= 1 and b_points == 0:
        return False
    return a_points > b_points


@dataclass
class _EndpointState:
    in_node: bool = False                 # advertised in the peer's Node
    call_me_maybe: bool = False           # advertised by its last CallMeMaybe
    last_got_ping: float | None = None    # learned from an incoming ping (runtime candidate)
    last_got_ping_tx: bytes = b""
    last_ping: float | None = None        # our last ping to it
    latency: float | None = None          # from its last pong
    last_pong: float | None = None

    def should_delete(self, now: float) -> bool:
        if self.call_me_maybe or self.in_node:
            return False
        if self.last_got_ping is None:
            return True
        return now - self.last_got_ping > SESSION_ACTIVE_TIMEOUT


@dataclass
class _SentPing:
    to: Endpoint | None                   # None: over DERP
    at: float
    purpose: str                          # "discovery", "heartbeat", "derp"


@dataclass
class _PeerPath:
    node_key: NodePublic
    disco: DiscoPublic
    region: int
    endpoints: dict[Endpoint, _EndpointState] = field(default_factory=dict)
    sent: dict[bytes, _SentPing] = field(default_factory=dict)
    best: Endpoint | None = None
    best_latency: float = 0.0
    trust_until: float = float("-inf")
    last_full_ping: float | None = None
    next_heartbeat: float = 0.0
    reported: Endpoint | None = None      # the path last announced with PathChanged
    added_at: float = 0.0
    counters: Counter[str] = field(default_factory=Counter)


class Magicsock:
    """Disco over DERP and UDP, and the choice of each peer's path (see module doc).

    ``last_send(node_key)``: when WireGuard last sent to that peer (the same clock as
    ``now``), or None; it tells an active session (heartbeats) from an idle one.
    ``block_endpoints``: never use or learn direct endpoints (DERP only), as Go's
    ``BlockEndpoints``; pings are still answered.
    """

    def __init__(self, private: DiscoPrivate, node_key: NodePublic, *,
                 last_send: Callable[[NodePublic], float | None] | None = None,
                 block_endpoints: bool = False) -> None:
        self.private = private
        self.public = private.public
        self.node_key = node_key
        self.block_endpoints = block_endpoints
        self.local_endpoints: tuple[Endpoint, ...] = ()
        self._last_send = last_send
        self._peers: dict[DiscoPublic, _PeerPath] = {}
        self._shared: dict[DiscoPublic, bytes] = {}
        self._out: deque[tuple[Via, bytes]] = deque()
        self._events: deque[object] = deque()
        self.drops: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()

    # -- peers ------------------------------------------------------------------------------

    def add_peer(self, disco: DiscoPublic, node_key: NodePublic, region: int,
                 endpoints: Iterable[Endpoint], now: float) -> None:
        """Learn (or update) a peer from its Node: disco key, node key, home region and
        advertised endpoints. A new peer, or a new disco key (a restarted peer), starts over
        on DERP; a new peer is sent our CallMeMaybe and pinged at once."""
        disco, node_key = DiscoPublic(disco), NodePublic(node_key)
        peer = self._peers.get(disco)
        fresh = peer is None or peer.node_key != node_key
        if peer is not None and peer.node_key != node_key:
            self.remove_peer(disco)
        if fresh:
            peer = self._peers[disco] = _PeerPath(node_key, disco, region, added_at=now,
                                                   next_heartbeat=now)
        assert peer is not None
        peer.region = region
        listed = set()
        if not self.block_endpoints:
            for ep in endpoints:
                listed.add(ep)
                st = peer.endpoints.get(ep)
                if st is None:
                    st = peer.endpoints[ep] = _EndpointState()
                st.in_node = True
        for ep, st in list(peer.endpoints.items()):
            if ep not in listed:
                st.in_node = False
                if st.should_delete(now):
                    self._delete_endpoint(peer, ep)
        if fresh:
            self._send_call_me_maybe(peer)
            self._send_pings(peer, now, call_me_maybe=False)
        self._check_path(peer, now)

    def remove_peer(self, disco: DiscoPublic) -> None:
        """Forget a peer (no-op if unknown)."""
        self._peers.pop(disco, None)
        self._shared.pop(disco, None)

    def peer_disco(self, node_key: NodePublic) -> DiscoPublic | None:
        for peer in self._peers.values():
            if peer.node_key == node_key:
                return peer.disco
        return None

    def set_local_endpoints(self, endpoints: Iterable[Endpoint]) -> bool:
        """Our own UDP endpoints (what our Node advertises). When they change, every peer is
        sent a CallMeMaybe with the new set. Returns whether they changed."""
        eps = () if self.block_endpoints else tuple(dict.fromkeys(endpoints))
        if eps == self.local_endpoints:
            return False
        self.local_endpoints = eps
        for peer in self._peers.values():
            self._send_call_me_maybe(peer)
        return True

    def path(self, node_key: NodePublic) -> Endpoint | None:
        """The direct address a peer is reached at now (None: DERP)."""
        for peer in self._peers.values():
            if peer.node_key == node_key:
                return peer.reported
        return None

    def peer_status(self, disco: DiscoPublic, now: float) -> dict[str, object]:
        """Diagnostics of one peer's paths."""
        peer = self._peers.get(disco)
        if peer is None:
            return {}
        return {
            "path": "direct" if peer.reported is not None else "derp",
            "endpoint": _fmt(peer.reported) if peer.reported is not None else None,
            "latency": peer.best_latency if peer.reported is not None else None,
            "trusted_for": max(0.0, peer.trust_until - now) if peer.best else 0.0,
            "candidates": {_fmt(ep): {"latency": st.latency,
                                      "source": "node" if st.in_node else
                                      "call-me-maybe" if st.call_me_maybe else "ping"}
                           for ep, st in peer.endpoints.items()},
            "pings_outstanding": len(peer.sent),
            "pings_sent": peer.counters["pings_sent"],
            "pongs_received": peer.counters["pongs_received"],
            "path_switches": peer.counters["path_switches"],
        }

    # -- sealing ----------------------------------------------------------------------------

    def _key(self, peer: DiscoPublic) -> bytes:
        key = self._shared.get(peer)
        if key is None:
            key = self._shared[peer] = _shared_key(self.private, peer)
        return key

    def _seal(self, peer: DiscoPublic, msg: DiscoMessage) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return MAGIC + bytes(self.public) + nonce + crypto_box_afternm(
            emit_message(msg), nonce, self._key(peer))

    def _open(self, data: bytes) -> tuple[_PeerPath, DiscoMessage] | None:
        sender = DiscoPublic(data[len(MAGIC):HEADER_LEN - NONCE_LEN])
        peer = self._peers.get(sender)
        if peer is None:
            self.drops["unknown_peer"] += 1
            return None
        nonce = bytes(data[HEADER_LEN - NONCE_LEN:HEADER_LEN])
        try:
            plain = crypto_box_open_afternm(bytes(data[HEADER_LEN:]), nonce, self._key(sender))
        except CryptoError:
            self.drops["bad_box"] += 1
            return None
        try:
            return peer, parse_message(plain)
        except DiscoError:
            self.drops["bad_message"] += 1
            return None

    # -- receive ----------------------------------------------------------------------------

    def receive_derp(self, src: NodePublic, data: bytes, region: int, now: float) -> bool:
        """A packet from DERP node ``src`` on ``region``: False when it is not disco (it is
        WireGuard); True when consumed (answered or dropped). Never raises."""
        if not looks_like_disco(data):
            return False
        self.counters["disco_in_derp"] += 1
        opened = self._open(data)
        if opened is None:
            return True
        peer, msg = opened
        if peer.node_key != src:
            self.drops["node_key_mismatch"] += 1
            return True
        if isinstance(msg, Ping):
            self.counters["pings_received"] += 1
            self._queue(Via(region=region, node_key=src),
                        self._seal(peer.disco, Pong(msg.tx_id, derp_magic_endpoint(region))))
            self.counters["pongs_sent"] += 1
            self._events.append(PingReceived(peer.disco, src, region, msg.tx_id))
        elif isinstance(msg, Pong):
            self._on_pong(peer, msg, None, region, now)
        else:
            self._on_call_me_maybe(peer, msg, now)
        self._check_path(peer, now)
        return True

    def receive_udp(self, data: bytes, src: Endpoint, now: float) -> None:
        """A disco datagram that arrived on our UDP socket from ``src``. Never raises."""
        if not looks_like_disco(data):
            self.drops["not_disco"] += 1
            return
        self.counters["disco_in_udp"] += 1
        opened = self._open(data)
        if opened is None:
            return
        peer, msg = opened
        if isinstance(msg, Ping):
            if msg.node_key is not None and msg.node_key != peer.node_key:
                self.drops["node_key_mismatch"] += 1
                return
            self.counters["pings_received"] += 1
            if self._add_candidate(peer, src, msg.tx_id, now):
                self.counters["duplicate_pings"] += 1
                return
            self._queue(Via(udp=src), self._seal(peer.disco, Pong(msg.tx_id, src)))
            self.counters["pongs_sent"] += 1
            self._events.append(PingReceived(peer.disco, peer.node_key, 0, msg.tx_id))
        elif isinstance(msg, Pong):
            self._on_pong(peer, msg, src, 0, now)
        else:
            self.drops["call_me_maybe_over_udp"] += 1   # only valid over DERP
            return
        self._check_path(peer, now)

    def _add_candidate(self, peer: _PeerPath, ep: Endpoint, tx_id: bytes, now: float) -> bool:
        """``addCandidateEndpoint``: remember where a ping came from; True for a duplicate."""
        if self.block_endpoints:
            return False
        st = peer.endpoints.get(ep)
        if st is not None:
            duplicate = st.last_got_ping_tx == tx_id
            st.last_got_ping_tx = tx_id
            if st.last_got_ping is not None or not (st.in_node or st.call_me_maybe):
                st.last_got_ping = now
            return duplicate
        peer.endpoints[ep] = _EndpointState(last_got_ping=now, last_got_ping_tx=tx_id)
        if len(peer.endpoints) > MAX_CANDIDATES:
            for old, state in list(peer.endpoints.items()):
                if state.should_delete(now):
                    self._delete_endpoint(peer, old)
        return False

    def _on_pong(self, peer: _PeerPath, msg: Pong, src: Endpoint | None, region: int,
                 now: float) -> None:
        sent = peer.sent.pop(msg.tx_id, None)
        if sent is None:
            self.drops["unsolicited_pong"] += 1
            return
        self.counters["pongs_received"] += 1
        peer.counters["pongs_received"] += 1
        latency = now - sent.at
        self._events.append(PongReceived(peer.disco, peer.node_key, region, msg.tx_id,
                                         msg.src, latency))
        if src is None or sent.to is None:
            return                                   # a pong over DERP never makes a path
        st = peer.endpoints.get(sent.to)
        if st is None:
            return                                   # no longer an endpoint we care about
        st.latency, st.last_pong = latency, now
        this = (sent.to, latency)
        if better_addr(this, (peer.best, peer.best_latency) if peer.best else None):
            peer.best = sent.to
        if peer.best == sent.to:
            peer.best_latency = latency
            peer.trust_until = now + TRUST_UDP_ADDR_DURATION

    def _on_call_me_maybe(self, peer: _PeerPath, msg: CallMeMaybe, now: float) -> None:
        self.counters["call_me_maybe_received"] += 1
        self._events.append(CallMeMaybeReceived(peer.disco, peer.node_key, msg.endpoints))
        if self.block_endpoints:
            return
        listed = set()
        for ep in msg.endpoints:
            if any(ep[0] in net for net in _IGNORED if net.version == ep[0].version):
                continue
            listed.add(ep)
            st = peer.endpoints.get(ep)
            if st is None:
                st = peer.endpoints[ep] = _EndpointState()
            st.call_me_maybe = True
        for ep, st in list(peer.endpoints.items()):
            if st.call_me_maybe and ep not in listed:
                st.call_me_maybe = False
                if st.should_delete(now):
                    self._delete_endpoint(peer, ep)
        for st in peer.endpoints.values():
            st.last_ping = None                      # ping now, whatever the interval
        self._send_pings(peer, now, call_me_maybe=False)

    def _delete_endpoint(self, peer: _PeerPath, ep: Endpoint) -> None:
        peer.endpoints.pop(ep, None)
        if peer.best == ep:
            peer.best = None
            peer.trust_until = float("-inf")

    # -- send -------------------------------------------------------------------------------

    def _queue(self, via: Via, packet: bytes) -> None:
        self._out.append((via, packet))

    def _ping(self, peer: _PeerPath, ep: Endpoint, now: float, purpose: str) -> None:
        st = peer.endpoints.get(ep)
        if st is None:
            return
        st.last_ping = now
        tx_id = os.urandom(_TXID_LEN)
        peer.sent[tx_id] = _SentPing(ep, now, purpose)
        self._queue(Via(udp=ep), self._seal(peer.disco, Ping(tx_id, self.node_key)))
        self.counters["pings_sent"] += 1
        peer.counters["pings_sent"] += 1

    def ping_derp(self, disco: DiscoPublic, now: float) -> bytes:
        """Disco-ping a peer over its DERP region (a pong never makes a path); its tx id.
        Raises KeyError for an unknown peer."""
        peer = self._peers[disco]
        tx_id = os.urandom(_TXID_LEN)
        peer.sent[tx_id] = _SentPing(None, now, "derp")
        self._queue(Via(region=peer.region, node_key=peer.node_key),
                    self._seal(peer.disco, Ping(tx_id, self.node_key)))
        self.counters["pings_sent"] += 1
        return tx_id

    def _send_pings(self, peer: _PeerPath, now: float, *, call_me_maybe: bool) -> None:
        """``sendDiscoPingsLocked``: ping every live candidate not pinged in the last 5 s;
        then, if any was and ``call_me_maybe``, a CallMeMaybe over DERP."""
        peer.last_full_ping = now
        sent_any = False
        for ep, st in list(peer.endpoints.items()):
            if st.should_delete(now):
                self._delete_endpoint(peer, ep)
                continue
            if st.last_ping is not None and now - st.last_ping < DISCO_PING_INTERVAL:
                continue
            sent_any = True
            self._ping(peer, ep, now, "discovery")
        if sent_any and call_me_maybe:
            self._send_call_me_maybe(peer)

    def _send_call_me_maybe(self, peer: _PeerPath) -> None:
        if not self.local_endpoints or not peer.region:
            return
        self._queue(Via(region=peer.region, node_key=peer.node_key),
                    self._seal(peer.disco, CallMeMaybe(self.local_endpoints)))
        self.counters["call_me_maybe_sent"] += 1

    # -- path -------------------------------------------------------------------------------

    def _current(self, peer: _PeerPath, now: float) -> Endpoint | None:
        """``addrForSendLocked``: the best address while trusted, else DERP."""
        if peer.best is not None and now <= peer.trust_until:
            return peer.best
        return None

    def _check_path(self, peer: _PeerPath, now: float) -> None:
        path = self._current(peer, now)
        if path != peer.reported:
            peer.reported = path
            self.counters["path_switches"] += 1
            self.counters["to_direct" if path is not None else "to_derp"] += 1
            peer.counters["path_switches"] += 1
            self._events.append(PathChanged(peer.node_key, peer.disco, path,
                                            peer.best_latency if path is not None else None))

    def _want_full_ping(self, peer: _PeerPath, now: float) -> bool:
        if peer.best is None or peer.last_full_ping is None:
            return True
        if now > peer.trust_until:
            return True
        if peer.best_latency <= GOOD_ENOUGH_LATENCY:
            return False
        return now - peer.last_full_ping >= UPGRADE_INTERVAL

    def _active(self, peer: _PeerPath, now: float) -> bool:
        last = self._last_send(peer.node_key) if self._last_send is not None else None
        last = max(last if last is not None else float("-inf"), peer.added_at)
        return now - last <= SESSION_ACTIVE_TIMEOUT

    def _heartbeat(self, peer: _PeerPath, now: float) -> None:
        peer.next_heartbeat = now + HEARTBEAT_INTERVAL
        self.counters["heartbeats"] += 1
        if not self._active(peer, now):
            return                                  # idle session: no heartbeats
        if peer.best is not None:                   # trusted or not, as addrForSendLocked
            self._ping(peer, peer.best, now, "heartbeat")
        if self._want_full_ping(peer, now):
            self._send_pings(peer, now, call_me_maybe=True)

    def handle_timer(self, now: float) -> None:
        """Expire pings, lapse trust (fall back to DERP), run due heartbeats."""
        for peer in list(self._peers.values()):
            for tx_id, sent in list(peer.sent.items()):
                if now >= sent.at + PING_TIMEOUT:
                    del peer.sent[tx_id]
                    self.counters["ping_timeouts"] += 1
            if now >= peer.next_heartbeat:
                self._heartbeat(peer, now)
            self._check_path(peer, now)

    def get_timer(self) -> float | None:
        """The next deadline (heartbeat, a ping's timeout, a trusted path's lapse), or None."""
        deadline: float | None = None
        for peer in self._peers.values():
            at = peer.next_heartbeat
            if peer.reported is not None:
                at = min(at, peer.trust_until + 1e-3)
            for sent in peer.sent.values():
                at = min(at, sent.at + PING_TIMEOUT)
            if deadline is None or at < deadline:
                deadline = at
        return deadline

    # -- output -----------------------------------------------------------------------------

    def packets_to_send(self) -> list[tuple[Via, bytes]]:
        """Drain the queued packets: ``(Via, packet)`` each."""
        out = list(self._out)
        self._out.clear()
        return out

    def next_event(self) -> object | None:
        """The next event (PathChanged, PingReceived, PongReceived, CallMeMaybeReceived)."""
        return self._events.popleft() if self._events else None

    def stats(self) -> dict[str, object]:
        return {**self.counters, "drops": dict(self.drops),
                "local_endpoints": [_fmt(ep) for ep in self.local_endpoints]}


def _fmt(ep: Endpoint) -> str:
    ip, port = ep
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def format_endpoint(ep: Endpoint) -> str:
    """``1.2.3.4:5`` or ``[::1]:5`` (Go's ``netip.AddrPort.String``)."""
    return _fmt(ep)


def parse_endpoint(text: str) -> Endpoint | None:
    """An ``ip:port`` / ``[ip6]:port`` string (a Node's ``endpoints`` entry), or None."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return None
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        num = int(port)
    except ValueError:
        return None
    if not 0 < num < 65536:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, num
