"""A WireGuard device: peers, indices, allowed IPs, the handshake control path, and the glue
between the Cython data path and the per-peer state machines.

Theory of operation
-------------------
The asyncio adapter (aio/tunnel.py) owns the socket and the clock. Per receive wake-up it:
reads datagrams into a PacketBatch (udpio), calls ``Datapath.decrypt`` (C, whole batch), then
``Device.after_decrypt`` which runs the control path for the handshake messages in the batch
and the timer hooks once per touched peer; inner IP packets go to the IP layer. Per flush it
calls ``Device.fill`` (queued handshake datagrams, keepalives, staged packets), adds the IP
layer's packets, calls ``Datapath.encrypt`` (C), then ``Device.after_encrypt`` (stage what had no
session, start handshakes, timer hooks), and sends the batch (udpio).

Handshake input (wireguard.md §9 step 5): mac1 is checked before any Diffie-Hellman; under
load, mac2 must carry a valid cookie (else a cookie reply is sent) and a per-source rate limit
applies, both before any Diffie-Hellman, so a rejected initiation costs two BLAKE2s MACs and at
most one XChaCha20-Poly1305 seal.

"Under load" follows wireguard-go's ``IsUnderLoad``: the device is under load while its
handshake queue holds UNDER_LOAD_QUEUE_THRESHOLD (128) or more messages, and for
UNDER_LOAD_AFTER_TIME (1 s) after. We have no queue (the control path runs synchronously per
receive batch, and a batch holds at most 64 datagrams), so the queue is modelled as the number of
handshake-type messages received in the current HANDSHAKE_QUEUE_WINDOW (a fixed window of
monotonic time): 128 of them within 100 ms, i.e. more than a Python control path can put through
Diffie-Hellman. The count is checked per message, so a flood flips the device within the burst
that causes it, not at the next batch. Tests and operators can force it with
``force_under_load``.

Timers: every peer's deadlines live in its Timers; the device keeps a min-heap of
``(deadline, peer id, peer)`` with lazy invalidation, so ``get_timer`` and ``handle_timer`` cost
O(log peers) per due peer instead of a scan of every peer. Invariant: a peer with a pending timer
has ``peer.heap_at`` <= its earliest deadline and an entry ``(peer.heap_at, _, peer)`` in the
heap; any entry whose deadline differs from its peer's ``heap_at`` is stale and is discarded when
it reaches the top. Timers.schedule pushes an entry only when a timer is armed earlier than the
peer's ``heap_at``; cancelling never pushes (the entry becomes early, and is fixed up when it
reaches the top).

Routes: ``add_peer``/``remove_peer`` update the allowed-IPs table per network. The C route
table (``Datapath.set_routes``) is rebuilt lazily, at the first use of :attr:`Device.datapath`
after a change, so configuring N peers costs one rebuild, not N.

Nothing here reads a clock or touches a socket: ``now`` (monotonic) and ``wall`` (Unix time,
for TAI64N) come in as arguments.
"""
from __future__ import annotations

import collections
import heapq
import os
import random
from collections.abc import Iterable

from _wgcore.datapath import RESULT, Datapath, PacketBatch, PeerSlot
from _wgcore.keypair import Keypair

from ..errors import ConfigError
from .allowedips import AllowedIPs
from .config import PeerConfig
from .constants import (
    HANDSHAKE_QUEUE_WINDOW,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    UNDER_LOAD_AFTER_TIME,
    UNDER_LOAD_QUEUE_THRESHOLD,
)
from .cookie import CookieChecker, RateLimiter
from .endpoint import source_bytes, source_ip
from .keys import StaticIdentity, encode_key
from .messages import message_type
from .noise import consume_initiation
from .peer import Peer

__all__ = ["Device"]

RES_HANDSHAKE = RESULT["HANDSHAKE"]
RES_STAGE = RESULT["STAGE"]


#: Handshake datagrams and cookie replies queued for sending between two flushes, at most
#: (a flood answered with cookie replies must not grow the queue without limit).
MAX_QUEUED_DATAGRAMS = 4096

class Device:
    """The WireGuard interface state for one static identity (sans-IO).

    ``mtu`` is the inner (tunnel) MTU used for padding. ``rng`` supplies jitter and indices
    (a seeded :class:`random.Random` makes tests deterministic; by default indices come from
    :class:`random.SystemRandom` and timer jitter from a :class:`random.Random` seeded by
    ``random_bytes``).
    """

    def __init__(self, private_key: bytes, *, mtu: int = 1420,
                 rng: random.Random | None = None,
                 random_bytes: collections.abc.Callable[[int], bytes] = os.urandom) -> None:
        self.identity = StaticIdentity(private_key)
        self.rng = rng or random.SystemRandom()
        # Timer jitter needs no secrecy (wireguard-go: fastrandn); SystemRandom costs a
        # getrandom() syscall per call, and the new-handshake timer is re-armed with jitter
        # on every sent batch after a received one (per ACK clock tick of a TCP upload).
        self._timer_rng = rng or random.Random(random_bytes(16))
        self._datapath = Datapath(mtu)
        self._routes_dirty = False
        self.route_rebuilds = 0                              # full C route-table rebuilds
        self.peers: dict[bytes, Peer] = {}
        # The data path reports peers by their PeerSlot, which holds no reference up to us.
        self._peer_of_slot: dict[PeerSlot, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.cookie_checker = CookieChecker(self.identity.public, random=random_bytes)
        self.rate_limiter = RateLimiter()
        self.force_under_load: bool | None = None
        self._under_load_until = float("-inf")
        self._handshake_window_start = float("-inf")
        self._handshake_window_count = 0                     # the modelled handshake queue
        self._timer_heap: list[tuple[float, int, Peer]] = []
        self._index_owner: dict[int, Peer] = {}
        self._next_peer_id = 1
        # (datagram, sockaddr): handshake messages and cookie replies waiting for a batch,
        # bounded so that a flood cannot queue without limit between two flushes.
        self._out: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._flush: dict[Peer, bool] = {}                   # peer -> keepalive wanted
        self.counters = collections.Counter[str]()

    # -- configuration ------------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self.identity.public

    @property
    def mtu(self) -> int:
        return int(self._datapath.mtu)

    @property
    def datapath(self) -> Datapath:
        """The C data path, its route table first brought up to date with the allowed IPs.

        Call this (not a saved reference) before each decrypt/encrypt batch: the route table is
        rebuilt here, once, after any number of ``add_peer``/``remove_peer`` calls.
        """
        if self._routes_dirty:
            self._sync_routes()
        return self._datapath

    def add_peer(self, config: PeerConfig, endpoint: bytes = b"") -> Peer:
        """Configure a peer. Raises ConfigError for a duplicate key or our own key."""
        if config.public_key in self.peers:
            raise ConfigError(f"peer {encode_key(config.public_key)} is configured twice")
        if config.public_key == self.identity.public:
            raise ConfigError("a peer cannot have the interface's own public key")
        peer = Peer(self, self.identity, config, self._next_peer_id, self._timer_rng)
        self._next_peer_id += 1
        self.peers[config.public_key] = peer
        self._peer_of_slot[peer.slot] = peer
        for network in config.allowed_ips:
            self.allowed_ips.insert(network, peer)
        self._routes_dirty = True
        self.schedule_timer(peer)
        if endpoint:
            peer.slot.endpoint = endpoint
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        """Forget a configured peer: its keys, timers, routes and queued output.

        Raises KeyError for a key no peer has.
        """
        peer = self.peers.pop(public_key)
        del self._peer_of_slot[peer.slot]
        peer.zero_key_material()
        peer.timers.cancel_all()
        peer.heap_at = None              # its heap entries are now stale
        for network in peer.config.allowed_ips:
            self.allowed_ips.discard(network, peer)
        self._routes_dirty = True
        self._flush.pop(peer, None)

    def _sync_routes(self) -> None:
        self._routes_dirty = False
        self.route_rebuilds += 1
        self._datapath.set_routes([
            (network.network_address.packed, network.prefixlen, peer.slot)
            for network, peer in self.allowed_ips.entries()
        ])

    # -- services for peers ---------------------------------------------------------------------

    def allocate_index(self, peer: Peer, *, replacing: int | None = None) -> int:
        """A fresh random local index for `peer` (wireguard.md §4.6), releasing `replacing`."""
        if replacing is not None:
            self.release_index(replacing)
        while True:
            index = self.rng.getrandbits(32)
            if index not in self._index_owner:
                self._index_owner[index] = peer
                return index

    def release_index(self, index: int) -> None:
        self._index_owner.pop(index, None)

    def install_keypair(self, peer: Peer, keypair: Keypair) -> None:
        self._index_owner[keypair.local_index] = peer
        self._datapath.add_keypair(keypair, peer.slot)

    def delete_keypair(self, keypair: Keypair) -> None:
        """wireguard.md §8: remove its index so later packets for it drop; wipe its keys."""
        self._datapath.remove_keypair(keypair)
        if self._index_owner.get(keypair.local_index) is not None:
            del self._index_owner[keypair.local_index]
        keypair.zero()

    def queue_datagram(self, datagram: bytes, sockaddr: bytes) -> None:
        """Send `datagram` unencrypted (handshake messages, cookie replies) at the next flush."""
        if not sockaddr:
            self.counters["no_endpoint"] += 1
        elif len(self._out) >= MAX_QUEUED_DATAGRAMS:
            self.counters["drop_out_queue_full"] += 1
        else:
            self._out.append((datagram, sockaddr))

    def want_flush(self, peer: Peer, *, keepalive: bool) -> None:
        self._flush[peer] = self._flush.get(peer, False) or keepalive

    def under_load(self, now: float) -> bool:
        """Whether handshakes must carry a cookie (mac2) and pass the rate limiter at `now`."""
        if self.force_under_load is not None:
            return self.force_under_load
        return now < self._under_load_until

    def _count_handshake(self, now: float) -> None:
        """One handshake message entered the (modelled) handshake queue at `now`.

        wireguard-go ``IsUnderLoad``: a queue at or past the threshold means under load, and
        keeps meaning it for UNDER_LOAD_AFTER_TIME after the last time it was that full.
        """
        if now - self._handshake_window_start >= HANDSHAKE_QUEUE_WINDOW:
            self._handshake_window_start = now
            self._handshake_window_count = 0
        self._handshake_window_count += 1
        if self._handshake_window_count >= UNDER_LOAD_QUEUE_THRESHOLD:
            self._under_load_until = now + UNDER_LOAD_AFTER_TIME

    # -- receive --------------------------------------------------------------------------------

    def after_decrypt(self, batch: PacketBatch, now: float, wall: float) -> None:
        """Control-path work for a decrypted batch: handshake messages, then per-peer hooks."""
        self._handle_peer_events(batch, now, wall)
        for _, datagram, source, _ in batch.collect(RES_HANDSHAKE):
            self.receive_handshake(datagram, source, now, wall)

    def receive_handshake(self, data: bytes, source: bytes, now: float, wall: float) -> None:
        """Consume one handshake-type datagram from `source` (a sockaddr). Never raises.

        Type, length and mac1 are one C call (``CookieGate.screen``), and under load so are
        mac2 and the cookie reply: a forged initiation costs a few microseconds, never a
        Diffie-Hellman (wireguard.md §9 step 5; hardening issue item 3)."""
        checker = self.cookie_checker
        kind = checker.screen(data)
        if kind == 0:
            self.counters["drop_bad_handshake"] += 1
            return
        self._count_handshake(now)
        if kind == MESSAGE_COOKIE_REPLY:
            self._consume_cookie_reply(data, now)
            return
        if kind < 0:
            self.counters["drop_mac1"] += 1
            return
        # wireguard.md §9 step 5: under load, mac2 and the rate limiter, still before any DH.
        if self.under_load(now):
            src = source_bytes(source)
            if not checker.check_mac2(data, src, now):
                self.queue_datagram(checker.create_reply(data, src, now), source)
                self.counters["cookie_replies_sent"] += 1
                return
            if not self.rate_limiter.allow(source_ip(source), now):
                self.counters["drop_rate_limited"] += 1
                return
        if kind == MESSAGE_INITIATION:
            self.counters["handshakes_consumed"] += 1        # reaches Diffie-Hellman
            self._consume_initiation(data, source, now, wall)
        else:
            self._consume_response(data, source, now, wall)

    def _consume_cookie_reply(self, data: bytes, now: float) -> None:
        receiver = int.from_bytes(data[4:8], "little")
        peer = self._index_owner.get(receiver)
        if peer is None or not peer.cookie.consume_reply(data, now):
            self.counters["drop_cookie_reply"] += 1
            return
        self.counters["cookie_replies_received"] += 1

    def _precomputed(self, public_key: bytes) -> bytes | None:
        peer = self.peers.get(public_key)
        return None if peer is None else peer.handshake.precomputed_static_static

    def _consume_initiation(self, data: bytes, source: bytes, now: float, wall: float) -> None:
        consumed = consume_initiation(self.identity, data, self._precomputed)
        if consumed is None:
            self.counters["drop_handshake_invalid"] += 1
            return
        peer = self.peers[consumed.peer_public]
        if not peer.handshake.accept_initiation(consumed, now):
            self.counters["drop_handshake_replay"] += 1
            return
        peer.timers.on_any_authenticated_packet_traversal(now)
        peer.timers.on_any_authenticated_packet_received(now)
        peer.roam(source)
        # Respond (wireguard.md §4.3) and derive our keys at once, into `next`.
        index = self.allocate_index(peer, replacing=peer.handshake_index)
        peer.handshake_index = index
        response = peer.handshake.create_response(index)
        peer.cookie.add_macs(response, now)
        peer.derive_as_responder(peer.handshake.derive_keys(), now)
        peer.last_sent_handshake = now     # a response counts for the 5 s spacing (§8)
        peer.timers.on_any_authenticated_packet_traversal(now)
        peer.timers.on_any_authenticated_packet_sent(now)
        self.queue_datagram(bytes(response), source)
        peer.counters["handshake_responses_sent"] += 1

    def _consume_response(self, data: bytes, source: bytes, now: float, wall: float) -> None:
        receiver = int.from_bytes(data[8:12], "little")
        peer = self._index_owner.get(receiver)
        if peer is None or peer.handshake_index != receiver:
            self.counters["drop_response_unknown_index"] += 1
            return
        self.counters["handshakes_consumed"] += 1            # reaches Diffie-Hellman
        if not peer.handshake.consume_response(data):
            self.counters["drop_handshake_invalid"] += 1
            return
        peer.roam(source)
        peer.timers.on_any_authenticated_packet_traversal(now)
        peer.timers.on_any_authenticated_packet_received(now)
        peer.derive_as_initiator(peer.handshake.derive_keys(), now, wall)

    # -- send -----------------------------------------------------------------------------------

    def has_pending(self) -> bool:
        """True when fill() has something to put in a batch."""
        return bool(self._out) or any(
            keepalive or (peer.staged and peer.current is not None)
            for peer, keepalive in self._flush.items())

    def fill(self, batch: PacketBatch) -> None:
        """Put queued handshake datagrams, keepalives and releasable staged packets in `batch`."""
        while self._out and batch.count < batch.slots:
            datagram, sockaddr = self._out.popleft()
            batch.add_raw(datagram, sockaddr)
        for peer in list(self._flush):
            keepalive = self._flush[peer]
            while peer.staged and batch.count < batch.slots:
                batch.add_packet(peer.staged.popleft(), peer.slot)
                keepalive = False
            if peer.staged:
                return                      # batch full; the rest goes in the next one
            if keepalive:
                if batch.count >= batch.slots:
                    return
                batch.add_keepalive(peer.slot)
            del self._flush[peer]

    def after_encrypt(self, batch: PacketBatch, now: float, wall: float) -> None:
        """Stage what had no usable session, then run the per-peer hooks for what was sent."""
        for _, packet, _, slot in batch.collect(RES_STAGE):
            # RES_STAGE always names its peer; one removed since the batch was filled is gone
            staging = self._peer_of_slot.get(slot) if slot is not None else None
            if staging is not None:
                staging.stage(packet)
        self._handle_peer_events(batch, now, wall)

    def _handle_peer_events(self, batch: PacketBatch, now: float, wall: float) -> None:
        """Run each touched peer's timer hooks once (a peer removed meanwhile is skipped)."""
        for peer_slot in batch.touched_peers():
            events = peer_slot.take_events()
            peer = self._peer_of_slot.get(peer_slot)
            if peer is not None:
                peer.handle_events(events, now, wall)

    # -- timers ---------------------------------------------------------------------------------

    def schedule_timer(self, peer: Peer, at: float | None = None) -> None:
        """Make the timer heap cover `peer`'s deadline `at` (default: its earliest one).

        Called by the peer's Timers whenever a timer is armed; O(log peers), and a no-op when
        the heap already holds an entry for the peer that is at least as early.
        """
        if at is None:
            at = peer.timers.next_deadline()
            if at is None:
                return
        if (peer.heap_at is None or at < peer.heap_at) and self.peers.get(peer.public_key) is peer:
            peer.heap_at = at
            heapq.heappush(self._timer_heap, (at, peer.peer_id, peer))
            if len(self._timer_heap) > 4 * len(self.peers) + 64:
                self._compact_timer_heap()

    def get_timer(self) -> float | None:
        """The earliest deadline among all peers (monotonic seconds), or None.

        Discards stale heap entries on the way; O(1) when the top entry is current.
        """
        heap = self._timer_heap
        while heap:
            at, _, peer = heap[0]
            if peer.heap_at != at:
                heapq.heappop(heap)                  # superseded or its peer was removed
                continue
            actual = peer.timers.next_deadline()
            if actual == at:
                return at
            # The timer this entry was pushed for was cancelled or moved later: re-key it.
            heapq.heappop(heap)
            peer.heap_at = None
            if actual is not None:
                self.schedule_timer(peer, actual)
        return None

    def handle_timer(self, now: float, wall: float) -> None:
        """Run the expired timers of every peer with a deadline <= `now` (monotonic s)."""
        heap = self._timer_heap
        due: list[Peer] = []
        while heap and heap[0][0] <= now:
            at, _, peer = heapq.heappop(heap)
            if peer.heap_at == at:
                peer.heap_at = None
                due.append(peer)
        for peer in due:
            peer.handle_timer(now, wall)
            self.schedule_timer(peer)

    def _compact_timer_heap(self) -> None:
        """Drop stale entries in place, keeping one entry per peer (bounds the heap's size)."""
        seen: set[int] = set()
        live: list[tuple[float, int, Peer]] = []
        for entry in self._timer_heap:
            at, peer_id, peer = entry
            if peer.heap_at == at and peer_id not in seen:
                seen.add(peer_id)
                live.append(entry)
        heapq.heapify(live)
        self._timer_heap[:] = live

    # -- status ---------------------------------------------------------------------------------

    def stats(self, now: float) -> dict[str, object]:
        data = self._datapath.counters()
        drops: dict[str, int] = dict(data.pop("drops"))
        for name, value in self.counters.items():
            if name.startswith("drop_"):
                drops[name[5:]] = drops.get(name[5:], 0) + value
        peers = [p.status(now) for p in self.peers.values()]
        totals = collections.Counter[str]()
        for p in self.peers.values():
            totals.update(p.counters)
        return {
            "public_key": encode_key(self.identity.public),
            **data,
            "handshakes": {
                "initiations_sent": totals["handshake_initiations_sent"],
                "responses_sent": totals["handshake_responses_sent"],
                "completed": totals["handshakes_completed"],
                "gave_up": totals["handshake_gave_up"],
                "cookie_replies_sent": self.counters["cookie_replies_sent"],
                "cookie_replies_received": self.counters["cookie_replies_received"],
            },
            "under_load": self.under_load(now),
            "drops": drops,
            "peers": peers,
        }

    def iter_peers(self) -> Iterable[Peer]:
        return self.peers.values()
