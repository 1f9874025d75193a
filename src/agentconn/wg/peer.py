"""One WireGuard peer: keypair slots, handshake, cookie generator, timers and staged packets.

Theory of operation (wireguard.md §7-§8)
----------------------------------------
Slots: ``previous``, ``current``, ``next``. Sends use ``current`` (mirrored into the data
path's PeerSlot); receives are accepted on any of the three while their index is registered.

* We initiate and consume a response -> a new ``current`` at once (``previous`` = old current,
  or old ``next`` if one was pending); we send at once (key confirmation, staged packets).
* We respond -> the new keypair waits in ``next``; it becomes ``current`` only when the first
  authenticated packet arrives on it (responder key confirmation).
* Timers (timers.py) drive retransmission (every 5 s + jitter; 1 + 19 initiations, then give up),
  passive and persistent keepalives, the 15 s "no reply" new handshake, and key zeroing.

Packets with no usable keypair are staged (at most MAX_STAGED_PACKETS, oldest dropped) and a
handshake is started; they leave as soon as a session exists.

The peer never does I/O. It asks its Device to queue datagrams, allocate indices and install
keypairs in the data path.
"""
from __future__ import annotations

import collections
import random
from typing import TYPE_CHECKING

from _wgcore.datapath import EVENTS, PeerSlot
from _wgcore.keypair import Keypair

from .config import PeerConfig
from .constants import (
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME,
    REKEY_TIMEOUT,
)
from .cookie import CookieGenerator
from .keys import StaticIdentity, encode_key
from .noise import Handshake, SessionKeys
from .timers import Timer, Timers

if TYPE_CHECKING:
    from .device import Device

__all__ = ["Peer"]

EV_SENT_DATA = EVENTS["SENT_DATA"]
EV_SENT_ANY = EVENTS["SENT_ANY"]
EV_RECEIVED_DATA = EVENTS["RECEIVED_DATA"]
EV_RECEIVED_ANY = EVENTS["RECEIVED_ANY"]
EV_WANT_HANDSHAKE = EVENTS["WANT_HANDSHAKE"]
EV_ENDPOINT_CHANGED = EVENTS["ENDPOINT_CHANGED"]

_SPACING_TOLERANCE = 0.010

# wireguard.md §7.3 "keep key fresh, receiving": 180 - 10 - 5 s.
_LAST_MINUTE_HANDSHAKE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT


class Peer:
    """A configured peer of a :class:`~agentconn.wg.device.Device`."""

    def __init__(self, device: Device, identity: StaticIdentity, config: PeerConfig,
                 peer_id: int, rng: random.Random) -> None:
        self.device = device
        self.config = config
        self.public_key = config.public_key
        self.handshake = Handshake(identity, config.public_key, config.preshared_key)
        self.cookie = CookieGenerator(config.public_key)
        self.peer_id = peer_id
        self.slot = PeerSlot(peer_id)
        # The deadline of this peer's entry in the device's timer heap (None: no entry).
        self.heap_at: float | None = None
        self.timers = Timers(persistent_keepalive=config.persistent_keepalive, rng=rng,
                             schedule=lambda at: device.schedule_timer(self, at))
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None
        self.staged: collections.deque[bytes] = collections.deque()
        self.handshake_index: int | None = None
        self.last_sent_handshake = float("-inf")
        self.last_handshake_at: float | None = None       # monotonic
        self.last_handshake_unix: float | None = None     # wall clock, for status
        self.counters = collections.Counter[str]()
        #: When set, the endpoint does not roam to the source of authenticated packets: a
        #: path selector above WireGuard (Coder's magicsock: DERP or a direct UDP address)
        #: decides where this peer is reached, as magicsock's endpoint does for wireguard-go.
        self.pinned_endpoint: bytes | None = None

    def __repr__(self) -> str:
        return f"Peer({encode_key(self.public_key)})"

    # -- sending handshakes and keepalives -------------------------------------------------

    def send_handshake_initiation(self, now: float, wall: float, *, retry: bool) -> None:
        """wireguard-go SendHandshakeInitiation: at most one initiation per REKEY_TIMEOUT."""
        if not retry:
            self.timers.handshake_attempts = 0
        # Tolerance: a retry armed for exactly +5.000 s must not be refused by float rounding or
        # an event loop firing a timer a millisecond early (uvloop has ms resolution).
        if now - self.last_sent_handshake < REKEY_TIMEOUT - _SPACING_TOLERANCE:
            return
        self.last_sent_handshake = now
        index = self.device.allocate_index(self, replacing=self.handshake_index)
        self.handshake_index = index
        message = self.handshake.create_initiation(index, wall)
        self.cookie.add_macs(message, now)
        self.timers.on_any_authenticated_packet_traversal(now)
        self.timers.on_any_authenticated_packet_sent(now)
        self.device.queue_datagram(bytes(message), self.slot.endpoint)
        self.counters["handshake_initiations_sent"] += 1
        self.timers.on_handshake_initiated(now)

    def send_keepalive(self) -> None:
        """wireguard-go SendKeepalive: a keepalive unless staged packets will go out anyway."""
        self.device.want_flush(self, keepalive=not self.staged)

    def stage(self, packet: bytes) -> None:
        """Hold a packet until a session exists (oldest dropped past MAX_STAGED_PACKETS)."""
        if len(self.staged) >= MAX_STAGED_PACKETS:
            self.staged.popleft()
            self.counters["staged_dropped"] += 1
        self.staged.append(packet)

    # -- keypair slots (wireguard.md §8) ------------------------------------------------------

    def _delete(self, keypair: Keypair | None) -> None:
        if keypair is not None:
            self.device.delete_keypair(keypair)

    def _set_current(self, keypair: Keypair | None) -> None:
        self.current = keypair
        self.slot.set_current(keypair)

    def derive_as_initiator(self, keys: SessionKeys, now: float, wall: float) -> None:
        """A response was consumed: the new keypair becomes current at once."""
        keypair = self._install(keys, now)
        if self.next is not None:
            self._delete(self.previous)
            self._delete(self.current)
            self.previous = self.next
            self.next = None
        else:
            self._delete(self.previous)
            self.previous = self.current
        self._set_current(keypair)
        self.timers.on_session_derived(now)
        self._handshake_complete(now, wall)
        self.send_keepalive()

    def derive_as_responder(self, keys: SessionKeys, now: float) -> None:
        """A response was sent: the new keypair waits in `next` for the initiator's first packet."""
        keypair = self._install(keys, now)
        self._delete(self.next)
        self._delete(self.previous)
        self.previous = None
        self.next = keypair
        self.timers.on_session_derived(now)

    def _install(self, keys: SessionKeys, now: float) -> Keypair:
        keypair = Keypair(keys.send_key, keys.receive_key, keys.local_index, keys.remote_index,
                          keys.is_initiator, now)
        self.handshake_index = None          # the keypair inherits the handshake's index
        self.device.install_keypair(self, keypair)
        return keypair

    def _promote_next(self, now: float, wall: float) -> None:
        # wireguard.md §8: first authenticated packet on `next` confirms the responder's session.
        self._delete(self.previous)
        self.previous = self.current
        self._set_current(self.next)
        self.next = None
        self._handshake_complete(now, wall)
        if self.staged:
            self.device.want_flush(self, keepalive=False)

    def _handshake_complete(self, now: float, wall: float) -> None:
        self.timers.on_handshake_complete(now)
        self.last_handshake_at = now
        self.last_handshake_unix = wall
        self.counters["handshakes_completed"] += 1

    def zero_key_material(self) -> None:
        """Drop every keypair, the handshake state and staged packets (zeroKeyMaterial)."""
        for keypair in (self.previous, self.current, self.next):
            self._delete(keypair)
        self.previous = self.next = None
        self._set_current(None)
        if self.handshake_index is not None:
            self.device.release_index(self.handshake_index)
            self.handshake_index = None
        self.handshake.clear()
        self.staged.clear()

    # -- events from the data path, once per peer per batch ---------------------------------

    def roam(self, source: bytes) -> None:
        """Move the endpoint to `source` (an authenticated handshake came from there), unless
        it is pinned."""
        if self.pinned_endpoint is None:
            self.slot.endpoint = source

    def handle_events(self, events: int, now: float, wall: float) -> None:
        """Run the timer hooks for what a batch did (wireguard.md §7.2, §7.3)."""
        if events & EV_ENDPOINT_CHANGED and self.pinned_endpoint is not None:
            self.slot.endpoint = self.pinned_endpoint      # no roaming while pinned
        if events & EV_RECEIVED_ANY:
            if self.next is not None and self.next.rx_packets > 0:
                self._promote_next(now, wall)
            self.timers.on_any_authenticated_packet_traversal(now)
            self.timers.on_any_authenticated_packet_received(now)
            self._keep_key_fresh_receiving(now, wall)
        if events & EV_RECEIVED_DATA:
            self.timers.on_data_received(now)
        if events & EV_SENT_ANY:
            self.timers.on_any_authenticated_packet_traversal(now)
            self.timers.on_any_authenticated_packet_sent(now)
        if events & EV_SENT_DATA:
            self.timers.on_data_sent(now)
        if events & EV_WANT_HANDSHAKE:
            self.send_handshake_initiation(now, wall, retry=False)

    def _keep_key_fresh_receiving(self, now: float, wall: float) -> None:
        current = self.current
        if (current is not None and current.is_initiator
                and not self.timers.sent_last_minute_handshake
                and now - current.created > _LAST_MINUTE_HANDSHAKE_AGE):
            self.timers.sent_last_minute_handshake = True
            self.send_handshake_initiation(now, wall, retry=False)

    # -- timer expiry -----------------------------------------------------------------------

    def handle_timer(self, now: float, wall: float) -> None:
        """Perform the actions of every expired timer (wireguard.md §7.2, expiry table)."""
        for timer in self.timers.expired(now):
            if timer is Timer.RETRANSMIT_HANDSHAKE:
                if self.timers.handshake_attempts > MAX_TIMER_HANDSHAKES:
                    self.timers.on_gave_up(now)
                    self.staged.clear()
                    self.counters["handshake_gave_up"] += 1
                else:
                    self.timers.handshake_attempts += 1
                    self.send_handshake_initiation(now, wall, retry=True)
            elif timer is Timer.SEND_KEEPALIVE:
                self.send_keepalive()
                self.timers.rearm_keepalive(now)
            elif timer is Timer.NEW_HANDSHAKE:
                self.send_handshake_initiation(now, wall, retry=False)
            elif timer is Timer.ZERO_KEY_MATERIAL:
                self.zero_key_material()
            elif timer is Timer.PERSISTENT_KEEPALIVE:
                if self.timers.persistent_keepalive > 0:
                    self.send_keepalive()

    # -- status -----------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, object]:
        """A JSON-able snapshot: endpoint, last handshake, counters, keypairs, timers."""
        from .endpoint import format_sockaddr

        def keypair_info(kp: Keypair | None) -> dict[str, object] | None:
            if kp is None:
                return None
            return {"local_index": kp.local_index, "remote_index": kp.remote_index,
                    "age": round(now - kp.created, 3), "is_initiator": kp.is_initiator,
                    "send_counter": kp.send_counter, "rx_packets": kp.rx_packets}

        return {
            "public_key": encode_key(self.public_key),
            "endpoint": format_sockaddr(self.slot.endpoint),
            "allowed_ips": [str(n) for n in self.config.allowed_ips],
            "last_handshake_unix": self.last_handshake_unix,
            "persistent_keepalive": self.timers.persistent_keepalive,
            **self.slot.counters(),
            **dict(self.counters),
            "staged": len(self.staged),
            "keypairs": {"previous": keypair_info(self.previous),
                         "current": keypair_info(self.current),
                         "next": keypair_info(self.next)},
            "handshake_attempts": self.timers.handshake_attempts,
            "timers": {t.value: round(at - now, 3) for t, at in self.timers.deadlines.items()},
        }
