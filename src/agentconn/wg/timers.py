"""Per-peer WireGuard timers as data (wireguard.md §7.2; wireguard-go timers.go, kernel timers.c).

Theory of operation
-------------------
wireguard-go runs five one-shot timers per peer. Here each is a deadline (``*_at``, a monotonic
float, ``None`` when not pending) in a plain object; hooks named after their trigger arm or cancel
them, and :meth:`Timers.expired` reports which deadlines have passed. The peer performs the
expiry actions. Nothing here reads a clock: every hook takes ``now``.

Timers: ``retransmit_handshake``, ``send_keepalive``, ``new_handshake``, ``zero_key_material``,
``persistent_keepalive``. Counters/flags: ``handshake_attempts``, ``need_another_keepalive``,
``sent_last_minute_handshake``.

``schedule``, when given, is told every deadline that is armed, so the device can keep all peers'
deadlines in one heap (device.py) instead of scanning every peer for the earliest one.
"""
from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field

from .constants import (
    KEEPALIVE_TIMEOUT,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEY_MATERIAL_AFTER,
)

__all__ = ["Timer", "Timers"]


class Timer(enum.Enum):
    RETRANSMIT_HANDSHAKE = "retransmit_handshake"
    SEND_KEEPALIVE = "send_keepalive"
    NEW_HANDSHAKE = "new_handshake"
    ZERO_KEY_MATERIAL = "zero_key_material"
    PERSISTENT_KEEPALIVE = "persistent_keepalive"


@dataclass
class Timers:
    """The deadlines and flags of one peer. ``persistent_keepalive`` is in seconds (0 = off)."""

    persistent_keepalive: int = 0
    rng: _random.Random = field(default_factory=_random.Random, repr=False)
    deadlines: dict[Timer, float] = field(default_factory=dict)
    handshake_attempts: int = 0
    need_another_keepalive: bool = False
    sent_last_minute_handshake: bool = False
    schedule: Callable[[float], None] | None = field(default=None, repr=False, compare=False)

    def _jitter(self) -> float:
        # RekeyTimeoutJitterMaxMs = 334: uniform 0..333 ms.
        return self.rng.randrange(int(REKEY_TIMEOUT_JITTER_MAX * 1000)) / 1000.0

    def pending(self, timer: Timer) -> bool:
        return timer in self.deadlines

    def _arm(self, timer: Timer, at: float) -> None:
        self.deadlines[timer] = at
        if self.schedule is not None:
            self.schedule(at)

    def cancel(self, timer: Timer) -> None:
        self.deadlines.pop(timer, None)

    def cancel_all(self) -> None:
        self.deadlines.clear()

    def next_deadline(self) -> float | None:
        return min(self.deadlines.values(), default=None)

    def expired(self, now: float) -> list[Timer]:
        """Pop and return the timers whose deadline is <= now, earliest first."""
        due = sorted((at, t.value, t) for t, at in self.deadlines.items() if at <= now)
        for _, _, timer in due:
            del self.deadlines[timer]
        return [timer for _, _, timer in due]

    # -- hooks (wireguard.md §7.2), each named after its trigger ------------------------------

    def on_data_sent(self, now: float) -> None:
        """A batch with a non-keepalive transport packet was sent: expect a reply within 15 s."""
        if not self.pending(Timer.NEW_HANDSHAKE):
            self._arm(Timer.NEW_HANDSHAKE, now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter())

    def on_data_received(self, now: float) -> None:
        """Authenticated data arrived: owe a keepalive in 10 s unless we send something first."""
        if not self.pending(Timer.SEND_KEEPALIVE):
            self._arm(Timer.SEND_KEEPALIVE, now + KEEPALIVE_TIMEOUT)
        else:
            self.need_another_keepalive = True

    def on_any_authenticated_packet_sent(self, now: float) -> None:
        """Anything authenticated went out: it serves as the keepalive we owed."""
        self.cancel(Timer.SEND_KEEPALIVE)

    def on_any_authenticated_packet_received(self, now: float) -> None:
        """Anything authenticated came in: the peer is alive, no new handshake needed."""
        self.cancel(Timer.NEW_HANDSHAKE)

    def on_any_authenticated_packet_traversal(self, now: float) -> None:
        """Any authenticated packet in or out: push the persistent keepalive back."""
        if self.persistent_keepalive > 0:
            self._arm(Timer.PERSISTENT_KEEPALIVE, now + self.persistent_keepalive)

    def on_handshake_initiated(self, now: float) -> None:
        """An initiation was sent: retransmit after REKEY_TIMEOUT + jitter."""
        self._arm(Timer.RETRANSMIT_HANDSHAKE, now + REKEY_TIMEOUT + self._jitter())

    def on_handshake_complete(self, now: float) -> None:
        """A session is confirmed: stop retransmitting, reset the attempt counters."""
        self.cancel(Timer.RETRANSMIT_HANDSHAKE)
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False

    def on_session_derived(self, now: float) -> None:
        """New keys exist: wipe everything if no newer session replaces them in 540 s."""
        self._arm(Timer.ZERO_KEY_MATERIAL, now + ZERO_KEY_MATERIAL_AFTER)

    def on_gave_up(self, now: float) -> None:
        """Handshake retries exhausted: stop keepalives; zero keys later if nothing else will."""
        self.cancel(Timer.SEND_KEEPALIVE)
        if not self.pending(Timer.ZERO_KEY_MATERIAL):
            self._arm(Timer.ZERO_KEY_MATERIAL, now + ZERO_KEY_MATERIAL_AFTER)

    def rearm_keepalive(self, now: float) -> None:
        """After sending the owed keepalive: if more data arrived meanwhile, owe another."""
        if self.need_another_keepalive:
            self.need_another_keepalive = False
            self._arm(Timer.SEND_KEEPALIVE, now + KEEPALIVE_TIMEOUT)
