"""Per-peer timer hooks with explicit ``now`` (spec §7.1, §7.2; wireguard-go ``timers.go``).

Each hook is checked against the table in §7.2: which deadline it arms (and at exactly what
offset), which it cancels, and which flags it touches. Jitter is uniform 0..333 ms
(``RekeyTimeoutJitterMaxMs = 334`` exclusive), drawn in whole milliseconds.
"""
from __future__ import annotations

import itertools
import random

import pytest

from agentconn.wg.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    ZERO_KEY_MATERIAL_AFTER,
)
from agentconn.wg.timers import Timer, Timers

NOW = 5000.0


def make(persistent_keepalive: int = 0, seed: int = 7) -> Timers:
    return Timers(persistent_keepalive=persistent_keepalive, rng=random.Random(seed))


def offset(timers: Timers, timer: Timer) -> float:
    return timers.deadlines[timer] - NOW


def assert_jittered(value: float, base: float) -> None:
    """`value` is `base` plus a whole number of milliseconds in 0..333."""
    jitter_ms = (value - base) * 1000
    assert jitter_ms == pytest.approx(round(jitter_ms), abs=1e-6)
    assert 0 <= round(jitter_ms) <= 333


# -- constants (spec §7.1) ------------------------------------------------------------------------

def test_constants_match_spec_table() -> None:
    assert REKEY_TIMEOUT == 5.0
    assert KEEPALIVE_TIMEOUT == 10.0
    assert REJECT_AFTER_TIME == 180.0
    assert REKEY_ATTEMPT_TIME == 90.0
    assert MAX_TIMER_HANDSHAKES == 18 == REKEY_ATTEMPT_TIME / REKEY_TIMEOUT
    assert ZERO_KEY_MATERIAL_AFTER == 540.0 == 3 * REJECT_AFTER_TIME


def test_fresh_timers_have_nothing_pending() -> None:
    t = make()
    assert t.deadlines == {}
    assert t.next_deadline() is None
    assert t.expired(NOW + 10_000) == []
    assert t.handshake_attempts == 0
    assert not t.need_another_keepalive
    assert not t.sent_last_minute_handshake


# -- jitter ---------------------------------------------------------------------------------------

def test_jitter_is_whole_milliseconds_from_0_to_333() -> None:
    t = make(seed=1)
    seen = set()
    for _ in range(20_000):
        t.on_handshake_initiated(NOW)
        ms = round((offset(t, Timer.RETRANSMIT_HANDSHAKE) - REKEY_TIMEOUT) * 1000)
        seen.add(ms)
    assert min(seen) == 0
    assert max(seen) == 333
    assert seen == set(range(334))          # uniform over all 334 values, nothing outside


# -- DataSent: newHandshake = 10 + 5 s + jitter, only if not pending -------------------------------

def test_data_sent_arms_new_handshake_15s_plus_jitter() -> None:
    t = make()
    t.on_data_sent(NOW)
    assert t.pending(Timer.NEW_HANDSHAKE)
    assert_jittered(offset(t, Timer.NEW_HANDSHAKE), KEEPALIVE_TIMEOUT + REKEY_TIMEOUT)
    assert 15.0 <= offset(t, Timer.NEW_HANDSHAKE) < 15.334


def test_data_sent_does_not_push_back_a_pending_new_handshake() -> None:
    t = make()
    t.on_data_sent(NOW)
    first = t.deadlines[Timer.NEW_HANDSHAKE]
    t.on_data_sent(NOW + 7)
    assert t.deadlines[Timer.NEW_HANDSHAKE] == first


# -- DataReceived: sendKeepalive = 10 s, else needAnotherKeepalive ---------------------------------

def test_data_received_arms_keepalive_10s() -> None:
    t = make()
    t.on_data_received(NOW)
    assert offset(t, Timer.SEND_KEEPALIVE) == KEEPALIVE_TIMEOUT == 10.0
    assert not t.need_another_keepalive


def test_data_received_while_keepalive_pending_sets_need_another() -> None:
    t = make()
    t.on_data_received(NOW)
    t.on_data_received(NOW + 3)
    assert offset(t, Timer.SEND_KEEPALIVE) == 10.0         # not moved
    assert t.need_another_keepalive


def test_rearm_keepalive_only_when_another_is_needed() -> None:
    t = make()
    t.rearm_keepalive(NOW)
    assert not t.pending(Timer.SEND_KEEPALIVE)
    t.need_another_keepalive = True
    t.rearm_keepalive(NOW)
    assert offset(t, Timer.SEND_KEEPALIVE) == 10.0
    assert not t.need_another_keepalive


# -- AnyAuthenticatedPacketSent / Received ---------------------------------------------------------

def test_any_packet_sent_cancels_keepalive_only() -> None:
    t = make()
    t.on_data_received(NOW)
    t.on_data_sent(NOW)
    t.on_any_authenticated_packet_sent(NOW + 1)
    assert not t.pending(Timer.SEND_KEEPALIVE)
    assert t.pending(Timer.NEW_HANDSHAKE)


def test_any_packet_received_cancels_new_handshake_only() -> None:
    t = make()
    t.on_data_received(NOW)
    t.on_data_sent(NOW)
    t.on_any_authenticated_packet_received(NOW + 1)
    assert not t.pending(Timer.NEW_HANDSHAKE)
    assert t.pending(Timer.SEND_KEEPALIVE)


# -- AnyAuthenticatedPacketTraversal: persistent keepalive -----------------------------------------

def test_traversal_rearms_persistent_keepalive_when_configured() -> None:
    t = make(persistent_keepalive=25)
    t.on_any_authenticated_packet_traversal(NOW)
    assert offset(t, Timer.PERSISTENT_KEEPALIVE) == 25.0
    t.on_any_authenticated_packet_traversal(NOW + 20)     # pushed back, not kept
    assert offset(t, Timer.PERSISTENT_KEEPALIVE) == 45.0


def test_traversal_without_persistent_keepalive_arms_nothing() -> None:
    t = make(persistent_keepalive=0)
    t.on_any_authenticated_packet_traversal(NOW)
    assert t.deadlines == {}


# -- HandshakeInitiated / HandshakeComplete --------------------------------------------------------

def test_handshake_initiated_arms_retransmit_5s_plus_jitter() -> None:
    t = make()
    t.on_handshake_initiated(NOW)
    assert_jittered(offset(t, Timer.RETRANSMIT_HANDSHAKE), REKEY_TIMEOUT)
    assert 5.0 <= offset(t, Timer.RETRANSMIT_HANDSHAKE) < 5.334


def test_handshake_complete_cancels_retransmit_and_resets_counters() -> None:
    t = make()
    t.on_handshake_initiated(NOW)
    t.on_session_derived(NOW)
    t.handshake_attempts = 7
    t.sent_last_minute_handshake = True
    t.on_handshake_complete(NOW + 1)
    assert not t.pending(Timer.RETRANSMIT_HANDSHAKE)
    assert t.handshake_attempts == 0
    assert not t.sent_last_minute_handshake
    assert t.pending(Timer.ZERO_KEY_MATERIAL)               # untouched


# -- SessionDerived / gave up: zeroKeyMaterial = 540 s ---------------------------------------------

def test_session_derived_arms_zero_key_material_540s_and_pushes_it_back() -> None:
    t = make()
    t.on_session_derived(NOW)
    assert offset(t, Timer.ZERO_KEY_MATERIAL) == 540.0
    t.on_session_derived(NOW + 100)
    assert offset(t, Timer.ZERO_KEY_MATERIAL) == 640.0


def test_gave_up_cancels_keepalive_and_arms_zero_key_if_not_pending() -> None:
    t = make()
    t.on_data_received(NOW)
    t.on_gave_up(NOW)
    assert not t.pending(Timer.SEND_KEEPALIVE)
    assert offset(t, Timer.ZERO_KEY_MATERIAL) == 540.0


def test_gave_up_keeps_a_pending_zero_key_deadline() -> None:
    t = make()
    t.on_session_derived(NOW - 300)
    t.on_gave_up(NOW)
    assert offset(t, Timer.ZERO_KEY_MATERIAL) == 240.0


# -- expiry bookkeeping ----------------------------------------------------------------------------

def test_expired_pops_due_timers_earliest_first_inclusive() -> None:
    t = make(persistent_keepalive=3)
    t.on_data_received(NOW)                      # keepalive at +10
    t.on_any_authenticated_packet_traversal(NOW)  # persistent at +3
    t.on_session_derived(NOW)                    # zero key at +540
    assert t.next_deadline() == NOW + 3
    assert t.expired(NOW + 2.999) == []
    assert t.expired(NOW + 10) == [Timer.PERSISTENT_KEEPALIVE, Timer.SEND_KEEPALIVE]
    assert set(t.deadlines) == {Timer.ZERO_KEY_MATERIAL}
    assert t.expired(NOW + 10) == []                       # popped, not reported twice
    assert t.next_deadline() == NOW + 540


def test_cancel_and_cancel_all() -> None:
    t = make(persistent_keepalive=1)
    t.on_data_sent(NOW)
    t.on_handshake_initiated(NOW)
    t.on_any_authenticated_packet_traversal(NOW)
    t.cancel(Timer.NEW_HANDSHAKE)
    t.cancel(Timer.NEW_HANDSHAKE)                  # cancelling twice is harmless
    assert set(t.deadlines) == {Timer.RETRANSMIT_HANDSHAKE, Timer.PERSISTENT_KEEPALIVE}
    t.cancel_all()
    assert t.deadlines == {} and t.next_deadline() is None


def test_retransmit_schedule_gives_up_after_20_initiations() -> None:
    """Drive the retransmit deadline the way Peer.handle_timer does (spec §7.2 expiry table):
    ``attempts > MAX_TIMER_HANDSHAKES`` gives up, so there are 1 + 19 initiations."""
    t = make(seed=3)
    now = NOW
    sent = [now]
    t.on_handshake_initiated(now)
    while True:
        now = t.next_deadline()
        assert t.expired(now) == [Timer.RETRANSMIT_HANDSHAKE]
        if t.handshake_attempts > MAX_TIMER_HANDSHAKES:
            t.on_gave_up(now)
            break
        t.handshake_attempts += 1
        sent.append(now)
        t.on_handshake_initiated(now)
    assert len(sent) == 20
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(5.0 <= g < 5.334 for g in gaps)
    assert 100.0 <= now - NOW < 20 * 5.334                  # gave up ≈ 100 s after the first
    assert offset(t, Timer.ZERO_KEY_MATERIAL) == pytest.approx(now - NOW + 540)
