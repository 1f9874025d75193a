"""Protocol behaviour of the WireGuard control path between two of our Devices (spec §4-§11).

Everything runs on DevicePair's fake clock (pair.py): minutes of protocol time take
milliseconds and nothing sleeps. Numbers asserted are the spec's (§7.1): REKEY_TIMEOUT 5 s +
0..333 ms jitter, KEEPALIVE_TIMEOUT 10 s, REKEY_AFTER_TIME 120 s, REJECT_AFTER_TIME 180 s,
540 s key zeroing, 128 staged packets, 20 initiations before giving up.
"""
from __future__ import annotations

import ipaddress
import itertools
import random
import socket
from collections import Counter
from collections.abc import Callable

import pytest
from pair import ADDR_A, ADDR_B, IP_A, IP_B, RES_DATA, DevicePair, Side, ipv4_packet

from _wgcore.datapath import PacketBatch
from agentconn.wg import device as device_module
from agentconn.wg.config import PeerConfig
from agentconn.wg.constants import (
    HANDSHAKE_QUEUE_WINDOW,
    MAX_STAGED_PACKETS,
    RATE_LIMITER_PACKETS_BURSTABLE,
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_MESSAGES,
    UNDER_LOAD_AFTER_TIME,
    UNDER_LOAD_QUEUE_THRESHOLD,
)
from agentconn.wg.cookie import CookieGenerator
from agentconn.wg.endpoint import sockaddr
from agentconn.wg.noise import Handshake
from agentconn.wg.timers import Timer

INIT, RESP, COOKIE, DATA = 1, 2, 3, 4
NEW_ADDR = sockaddr("192.0.2.10", 4444, socket.AF_INET)
OTHER_ADDR = sockaddr("198.51.100.7", 5555, socket.AF_INET)


# -- helpers ---------------------------------------------------------------------------------------

def a2b(n: int) -> bytes:
    return ipv4_packet(IP_A, IP_B, b"a->b %06d" % n)


def b2a(n: int) -> bytes:
    return ipv4_packet(IP_B, IP_A, b"b->a %06d" % n)


def kind(datagram: bytes) -> int:
    return datagram[0]


def receiver_index(datagram: bytes) -> int:
    return int.from_bytes(datagram[4:8], "little")


def counter_of(datagram: bytes) -> int:
    return int.from_bytes(datagram[8:16], "little")


Fault = Callable[[bytes, Side, Side], list[bytes]]


def passthrough(d: bytes, src: Side, dst: Side) -> list[bytes]:
    return [d]


class Wire:
    """Installed as ``pair.link``: records (time, direction, datagram) of everything a side sends,
    then applies ``fault`` (drop/duplicate/reorder) to decide what is delivered."""

    def __init__(self, pair: DevicePair, fault: Fault = passthrough) -> None:
        self.pair = pair
        self.fault = fault
        self.log: list[tuple[float, str, bytes]] = []
        pair.link = self

    def __call__(self, d: bytes, src: Side, dst: Side) -> list[bytes]:
        self.log.append((self.pair.now, "a->b" if src is self.pair.a else "b->a", d))
        return self.fault(d, src, dst)

    def sent(self, direction: str | None = None, kinds: tuple[int, ...] | None = None,
             since: float | None = None) -> list[tuple[float, str, bytes]]:
        return [(t, dr, d) for t, dr, d in self.log
                if (direction is None or dr == direction)
                and (kinds is None or kind(d) in kinds)
                and (since is None or t >= since)]

    def times(self, direction: str, kinds: tuple[int, ...], since: float | None = None
              ) -> list[float]:
        return [t for t, _, _ in self.sent(direction, kinds, since)]


def drop_when(pred: Callable[[bytes, Side], bool]) -> Fault:
    return lambda d, src, dst: [] if pred(d, src) else [d]


def establish(pair: DevicePair) -> None:
    """A handshake initiated by A with no data (A confirms with a keepalive)."""
    pair.peer_of_a.send_handshake_initiation(pair.now, pair.wall, retry=False)
    pair.run()
    assert pair.peer_of_a.current is not None and pair.peer_of_b.current is not None


def assert_session(pair: DevicePair, initiator: str) -> None:
    """Both sides have a current keypair and they are the two ends of one session."""
    pa, pb = pair.peer_of_a.current, pair.peer_of_b.current
    assert pa is not None and pb is not None
    assert pa.remote_index == pb.local_index and pb.remote_index == pa.local_index
    assert pa.is_initiator == (initiator == "a")
    assert pb.is_initiator == (initiator == "b")


def exchange(pair: DevicePair, n: int, start: int = 0) -> None:
    """Send `n` packets each way and check that they all arrive, in order."""
    got_a, got_b = len(pair.a.received), len(pair.b.received)
    pair.send(pair.a, *[a2b(i) for i in range(start, start + n)])
    pair.send(pair.b, *[b2a(i) for i in range(start, start + n)])
    pair.run()
    assert pair.b.received[got_b:] == [a2b(i) for i in range(start, start + n)]
    assert pair.a.received[got_a:] == [b2a(i) for i in range(start, start + n)]


def drops(side: Side, now: float) -> dict[str, int]:
    return side.device.stats(now)["drops"]  # type: ignore[return-value]


def assert_no_drops(pair: DevicePair) -> None:
    for side in (pair.a, pair.b):
        assert {k: v for k, v in drops(side, pair.now).items() if v} == {}


def craft_initiation(pair: DevicePair, wall: float, index: int = 0x0BADCAFE,
                     generator: CookieGenerator | None = None) -> tuple[bytes, CookieGenerator]:
    """A genuine initiation from A's static key, built outside A's Device (A's state untouched)."""
    handshake = Handshake(pair.a.device.identity, pair.b.device.public_key)
    generator = generator or CookieGenerator(pair.b.device.public_key)
    message = handshake.create_initiation(index, wall)
    generator.add_macs(message, pair.now)
    return bytes(message), generator


# -- §4: the handshake, both roles -----------------------------------------------------------------

def test_handshake_a_initiates() -> None:
    p = DevicePair()
    wire = Wire(p)
    p.send(p.a, a2b(0))
    p.run()
    assert [(dr, kind(d), len(d)) for _, dr, d in wire.log] == [
        ("a->b", INIT, 148), ("b->a", RESP, 92), ("a->b", DATA, 64)]
    assert p.b.received == [a2b(0)]
    assert_session(p, initiator="a")
    exchange(p, 5, start=1)
    assert p.peer_of_a.counters["handshake_initiations_sent"] == 1
    assert p.peer_of_b.counters["handshake_responses_sent"] == 1
    assert_no_drops(p)


def test_handshake_b_initiates() -> None:
    p = DevicePair()
    wire = Wire(p)
    p.send(p.b, b2a(0))
    p.run()
    assert [(dr, kind(d)) for _, dr, d in wire.log] == [
        ("b->a", INIT), ("a->b", RESP), ("b->a", DATA)]
    assert p.a.received == [b2a(0)]
    assert_session(p, initiator="b")
    exchange(p, 5, start=1)
    assert_no_drops(p)


@pytest.mark.parametrize("established", [False, True])
def test_both_initiate_at_once(established: bool) -> None:
    """Initiations cross: each side consumes the other's, which replaces its own pending one (and
    its index), so both responses are refused. The first retransmission (5 s + jitter) then
    completes a handshake; its initiator had a `next` from acting as responder, which becomes
    `previous`, and its old `current` is deleted (§8)."""
    p = DevicePair()
    wire = Wire(p)
    pa, pb = p.peer_of_a, p.peer_of_b
    old = {"a": None, "b": None}
    if established:
        establish(p)
        old = {"a": pa.current, "b": pb.current}
        p.advance(6)
        pa.send_handshake_initiation(p.now, p.wall, retry=False)
        pb.send_handshake_initiation(p.now, p.wall, retry=False)
    else:
        p.send(p.a, a2b(0))
        p.send(p.b, b2a(0))
    from_a, from_b = p.flush(p.a), p.flush(p.b)
    assert [kind(d) for d in from_a] == [INIT] and [kind(d) for d in from_b] == [INIT]
    p.deliver(p.b, from_a, ADDR_A)
    p.deliver(p.a, from_b, ADDR_B)
    p.run()
    assert p.a.device.counters["drop_response_unknown_index"] == 1
    assert p.b.device.counters["drop_response_unknown_index"] == 1
    assert pa.current is old["a"] and pb.current is old["b"]
    assert pa.next is not None and pb.next is not None
    responder_next = {"a": pa.next, "b": pb.next}
    start = p.now

    p.advance(5.334)
    initiator = "a" if pa.current is not None and pa.current.is_initiator else "b"
    assert_session(p, initiator=initiator)
    retries = wire.sent(kinds=(INIT,), since=start + 0.001)
    assert len(retries) == 1                  # the other side's retry is within 5 s of its response
    assert 5.0 <= retries[0][0] - start < 5.334
    assert retries[0][1] == f"{initiator}->{'b' if initiator == 'a' else 'a'}"
    peer = pa if initiator == "a" else pb
    assert peer.previous is responder_next[initiator]       # §8: previous = next
    assert peer.next is None
    if established:
        stale = old[initiator]
        assert not stale.valid                               # §8: old current deleted
        dp = (p.a if initiator == "a" else p.b).device.datapath
        assert not dp.index_in_use(stale.local_index)
    else:
        assert p.a.received == [b2a(0)] and p.b.received == [a2b(0)]
    exchange(p, 10, start=1)


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_preshared_key_on_both_sides(initiator: str) -> None:
    psk = bytes(range(32))
    p = DevicePair(psk=psk)
    side = p.a if initiator == "a" else p.b
    p.send(side, a2b(0) if initiator == "a" else b2a(0))
    p.run()
    assert_session(p, initiator=initiator)
    exchange(p, 3, start=1)


def _replace_b_peer(p: DevicePair, psk: bytes | None) -> None:
    p.b.device.remove_peer(p.a.device.public_key)
    p.peer_of_b = p.b.device.add_peer(
        PeerConfig(public_key=p.a.device.public_key, preshared_key=psk,
                   allowed_ips=[ipaddress.ip_network("10.0.0.1/32")]), ADDR_A)


@pytest.mark.parametrize("psk_a, psk_b", [
    (bytes(range(32)), bytes(range(1, 33))),
    (bytes(range(32)), None),
    (None, bytes(range(32))),
])
def test_mismatched_preshared_key_never_makes_a_session(psk_a: bytes | None,
                                                         psk_b: bytes | None) -> None:
    p = DevicePair(psk=psk_a)
    _replace_b_peer(p, psk_b)
    wire = Wire(p)
    p.send(p.a, a2b(0))
    p.run()
    p.advance(30)
    pa, pb = p.peer_of_a, p.peer_of_b
    assert pa.current is None and pb.current is None
    n_init = len(wire.sent("a->b", (INIT,)))
    assert n_init >= 6                                   # retried every ~5 s, never completed
    assert len(wire.sent("b->a", (RESP,))) == n_init     # B answers (msg 1 has no PSK) ...
    assert p.a.device.counters["drop_handshake_invalid"] == n_init   # ... A refuses each
    assert wire.sent(kinds=(DATA,)) == []
    assert p.a.received == [] and p.b.received == []


# -- §7.3 / §8: staged packets ---------------------------------------------------------------------

def test_packets_before_a_session_are_staged_and_delivered_in_order() -> None:
    p = DevicePair()
    wire = Wire(p)
    packets = [a2b(i) for i in range(10)]
    p.send(p.a, *packets)
    p.run()
    assert p.b.received == packets
    # the staged packets themselves confirm the session: no extra keepalive (§7.3)
    data = [d for _, _, d in wire.sent("a->b", (DATA,))]
    assert [counter_of(d) for d in data] == list(range(10))
    assert all(len(d) > 32 for d in data)


def test_more_than_128_staged_drops_the_oldest_and_counts() -> None:
    p = DevicePair()
    wire = Wire(p, drop_when(lambda d, src: True))        # B unreachable for now
    packets = [a2b(i) for i in range(MAX_STAGED_PACKETS + 5)]
    p.send(p.a, *packets)
    p.run()
    pa = p.peer_of_a
    assert len(pa.staged) == MAX_STAGED_PACKETS == 128
    assert pa.counters["staged_dropped"] == 5
    assert list(pa.staged) == packets[5:]
    wire.fault = passthrough                               # link restored
    p.advance(5.334)                                       # first retransmission
    assert p.b.received == packets[5:]
    assert p.peer_of_a.status(p.now)["staged_dropped"] == 5


def test_responder_sends_on_new_keypair_only_after_initiators_first_packet() -> None:
    p = DevicePair()
    wire = Wire(p, drop_when(lambda d, src: src is p.a and kind(d) == DATA))
    pa, pb = p.peer_of_a, p.peer_of_b
    p.send(p.a, a2b(0))
    p.run()
    # A consumed the response: its keypair is current at once.
    assert pa.current is not None and pa.current.is_initiator
    # B sent the response: its keypair waits in `next` (§8).
    assert pb.current is None and pb.previous is None and pb.next is not None
    assert pb.next.local_index == pa.current.remote_index
    pending = pb.next

    p.send(p.b, b2a(0))
    p.run()
    # B's data waits; B does not initiate itself (its response counts for the 5 s spacing).
    assert list(pb.staged) == [b2a(0)]
    assert [kind(d) for _, dr, d in wire.log if dr == "b->a"] == [RESP]
    assert p.a.received == []

    wire.fault = passthrough
    p.send(p.a, a2b(1))
    p.run()
    assert pb.current is pending and pb.next is None and pb.previous is None
    assert list(pb.staged) == []
    assert p.a.received == [b2a(0)]
    assert p.b.received == [a2b(1)]
    assert pb.counters["handshakes_completed"] == 1
    assert [kind(d) for _, dr, d in wire.log if dr == "b->a"] == [RESP, DATA]


# -- §7.3: rekey after time, no loss; §8 slots -----------------------------------------------------

def test_rekey_after_time_loses_nothing_over_300s() -> None:
    p = DevicePair()
    wire = Wire(p)
    t0 = p.now
    for i in range(300):
        p.send(p.a, a2b(i))
        p.send(p.b, b2a(i))
        p.run()
        p.advance(1.0)
    assert p.b.received == [a2b(i) for i in range(300)]
    assert p.a.received == [b2a(i) for i in range(300)]
    # Only the initiator rekeys on time: first send on a keypair older than 120 s.
    assert [t - t0 for t in wire.times("a->b", (INIT,))] == [0.0, 121.0, 242.0]
    assert wire.sent("b->a", (INIT,)) == []
    assert p.peer_of_a.counters["handshakes_completed"] == 3
    assert p.peer_of_b.counters["handshakes_completed"] == 3
    assert_session(p, initiator="a")
    assert_no_drops(p)


def test_keypair_slots_rotate_and_previous_accepts_in_flight_packets() -> None:
    p = DevicePair()
    wire = Wire(p)
    pa, pb = p.peer_of_a, p.peer_of_b
    dp_a, dp_b = p.a.device.datapath, p.b.device.datapath
    p.send(p.a, a2b(0))
    p.run()
    t0 = p.now
    k1a, k1b = pa.current, pb.current
    assert pa.previous is None and pa.next is None and pb.previous is None and pb.next is None

    # Packets sealed on the first session, still in flight when the rekey happens (sealed
    # less than 15 s before it, so no newHandshake timer fires meanwhile).
    p.advance(110)
    p.send(p.b, b2a(1))
    in_flight_to_a = [d for d in p.flush(p.b) if kind(d) == DATA]
    p.send(p.a, a2b(1))
    in_flight_to_b = [d for d in p.flush(p.a) if kind(d) == DATA]
    assert len(in_flight_to_a) == len(in_flight_to_b) == 1

    # First rekey (A sends on a keypair older than 120 s).
    p.advance(11)
    p.send(p.a, a2b(2))
    p.run()
    assert wire.times("a->b", (INIT,)) == [t0, t0 + 121]
    assert wire.sent("b->a", (INIT,)) == []
    k2a, k2b = pa.current, pb.current
    assert k2a is not k1a and k2b is not k1b
    assert pa.previous is k1a and pa.next is None
    assert pb.previous is k1b and pb.next is None
    assert_session(p, initiator="a")

    # The previous keypair still accepts what was in flight.
    p.deliver(p.a, in_flight_to_a, ADDR_B)
    p.deliver(p.b, in_flight_to_b, ADDR_A)
    assert p.a.received == [b2a(1)]
    assert p.b.received == [a2b(0), a2b(2), a2b(1)]

    # Second rekey; hold A's confirmation to look at B between response and first packet.
    p.advance(121)
    wire.fault = drop_when(lambda d, src: src is p.a and kind(d) == DATA)
    p.send(p.a, a2b(3))          # goes out on k2a (dropped), then A initiates
    p.run()
    k3a = pa.current
    assert pa.previous is k2a and k3a is not k2a
    assert not dp_a.index_in_use(k1a.local_index) and not k1a.valid   # oldest deleted
    assert pb.current is k2b and pb.next is not None and pb.previous is None
    assert not dp_b.index_in_use(k1b.local_index) and not k1b.valid
    k3b = pb.next
    wire.fault = passthrough
    p.send(p.a, a2b(4))
    p.run()
    assert pb.previous is k2b and pb.current is k3b and pb.next is None
    assert_session(p, initiator="a")
    assert p.b.received[-1] == a2b(4)

    # A packet sealed on the deleted first session is dropped at index lookup.
    p.deliver(p.a, in_flight_to_a, ADDR_B)
    assert drops(p.a, p.now)["unknown_index"] == 1
    assert p.a.received == [b2a(1)]
    assert t0 < p.now


# -- §7.3: rekey after messages; §6/§7.1 reject after messages -------------------------------------

@pytest.mark.parametrize("sender", ["a", "b"])
def test_rekey_after_messages_either_side(sender: str) -> None:
    p = DevicePair()
    wire = Wire(p)
    p.send(p.a, a2b(0))
    p.run()
    p.advance(6)                                         # past the 5 s initiation spacing
    side = p.a if sender == "a" else p.b
    peer = p.peer_of_a if sender == "a" else p.peer_of_b
    direction = "a->b" if sender == "a" else "b->a"
    make = a2b if sender == "a" else b2a
    old = peer.current
    n_init = len(wire.sent(direction, (INIT,)))

    old.send_counter = REKEY_AFTER_MESSAGES - 1
    p.send(side, make(1))
    p.run()
    assert counter_of(wire.sent(direction, (DATA,))[-1][2]) == REKEY_AFTER_MESSAGES - 1
    assert len(wire.sent(direction, (INIT,))) == n_init         # counter now 2^60: not > 2^60
    assert peer.current is old

    n = len(wire.sent(direction))
    p.send(side, make(2))                                # uses counter 2^60 -> now > 2^60
    p.run()
    after = wire.sent(direction)[n:]
    assert [kind(d) for _, _, d in after] == [DATA, INIT, DATA]
    assert counter_of(after[0][2]) == REKEY_AFTER_MESSAGES
    assert (counter_of(after[2][2]), len(after[2][2])) == (0, 32)   # confirmation keepalive
    assert len(wire.sent(direction, (INIT,))) == n_init + 1
    assert peer.current is not old
    assert_session(p, initiator=sender)
    other = p.b if sender == "a" else p.a
    assert other.received[-2:] == [make(1), make(2)]


def test_reject_after_messages_never_sends_on_that_keypair() -> None:
    p = DevicePair()
    wire = Wire(p)
    p.send(p.a, a2b(0))
    p.run()
    p.advance(6)
    pa = p.peer_of_a
    old = pa.current
    old.send_counter = REJECT_AFTER_MESSAGES
    wire.fault = drop_when(lambda d, src: True)
    n = len(wire.log)
    p.send(p.a, a2b(1))
    p.run()
    assert list(pa.staged) == [a2b(1)]
    assert [kind(d) for _, _, d in wire.log[n:]] == [INIT]     # staged + handshake, no data
    assert not any(kind(d) == DATA and receiver_index(d) == old.remote_index
                   and counter_of(d) >= REJECT_AFTER_MESSAGES for _, _, d in wire.log)
    wire.fault = passthrough
    p.advance(5.334)
    assert p.b.received == [a2b(0), a2b(1)]
    assert pa.current is not old
    assert receiver_index(wire.sent("a->b", (DATA,))[-1][2]) == pa.current.remote_index


def test_counter_at_reject_after_messages_is_not_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Keypair.seal refuses that counter, so forge the authentic message with the pure-Python
    # reference AEAD and B's real transport keys (captured as they are derived).
    import struct

    from agentconn.wg.crypto import aead_encrypt
    from agentconn.wg.noise import Handshake

    derived = []
    original = Handshake.derive_keys

    def spy(self: Handshake):  # type: ignore[no-untyped-def]
        keys = original(self)
        derived.append(keys)
        return keys

    monkeypatch.setattr(Handshake, "derive_keys", spy)
    p = DevicePair()
    p.send(p.a, a2b(0))
    p.run()
    kb = p.peer_of_b.current
    keys = next(k for k in derived if k.local_index == kb.local_index)
    forged_but_authentic = (struct.pack("<IIQ", 4, keys.remote_index, REJECT_AFTER_MESSAGES)
                            + aead_encrypt(keys.send_key, REJECT_AFTER_MESSAGES, b2a(1), b""))
    assert counter_of(forged_but_authentic) == REJECT_AFTER_MESSAGES
    p.deliver(p.a, [forged_but_authentic], ADDR_B)
    assert p.a.received == []
    assert drops(p.a, p.now)["replay"] == 1


# -- §7.1 / §9: reject after time ------------------------------------------------------------------

def test_keypair_older_than_180s_is_not_used_to_send_or_receive() -> None:
    p = DevicePair()
    # Handshake messages never arrive from here on, so nothing replaces the first session.
    wire = Wire(p)
    p.send(p.a, a2b(0))
    p.run()
    t0 = p.now
    wire.fault = drop_when(lambda d, src: kind(d) in (INIT, RESP, COOKIE))
    pa, pb = p.peer_of_a, p.peer_of_b
    ka, kb = pa.current, pb.current

    p.advance(179.5)
    p.send(p.b, b2a(1), b2a(2))
    sealed_by_b = [d for d in p.flush(p.b) if kind(d) == DATA]
    assert len(sealed_by_b) == 2                           # 179.5 s old: still used to send
    p.deliver(p.a, sealed_by_b[:1], ADDR_B)
    assert p.a.received == [b2a(1)]                        # ... and to receive

    p.advance(1.0)                                         # now 180.5 s old
    p.deliver(p.a, sealed_by_b[1:], ADDR_B)
    assert p.a.received == [b2a(1)]
    assert drops(p.a, p.now)["expired_keypair"] == 1

    data_before = len(wire.sent(kinds=(DATA,)))
    p.send(p.a, a2b(3))
    p.send(p.b, b2a(4))
    p.run()
    assert len(wire.sent(kinds=(DATA,))) == data_before    # nothing sent on the old keypairs
    assert list(pa.staged) == [a2b(3)] and list(pb.staged) == [b2a(4)]
    assert pa.current is ka and pb.current is kb           # still there, just unusable
    # handshakes were started: A's "last minute" one when it received at age > 165 s (§7.3),
    # B's own when it had to stage (its last handshake message is > 5 s old)
    assert pa.timers.sent_last_minute_handshake
    assert wire.times("a->b", (INIT,), since=t0 + 1) == [t0 + 180.5]
    assert wire.times("b->a", (INIT,)) == [t0 + 180.5]


# -- §7.2: retransmission and giving up ------------------------------------------------------------

def test_unreachable_responder_gets_20_initiations_then_give_up() -> None:
    """§7.2: retransmit expiry gives up when attempts > MAX_TIMER_HANDSHAKES (18), so attempts
    0..18 each send a retry: 1 + 19 = 20 initiations (wireguard-go logs "after 20 attempts")."""
    p = DevicePair()
    wire = Wire(p, drop_when(lambda d, src: True))
    pa = p.peer_of_a
    t0 = p.now
    p.send(p.a, a2b(0), a2b(1))
    p.run()
    assert list(pa.staged) == [a2b(0), a2b(1)]
    p.advance(120)

    times = wire.times("a->b", (INIT,))
    assert sum(1 for direction, d in p.wire_log if kind(d) == INIT) == 20
    assert len(times) == 20
    assert times[0] == t0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(5.0 <= g < 5.334 for g in gaps), gaps
    inits = [d for _, _, d in wire.sent("a->b", (INIT,))]
    assert len({d[4:8] for d in inits}) == 20              # a new index each time (§4.6)
    assert len({d[8:40] for d in inits}) == 20             # and a new ephemeral
    assert wire.sent("b->a") == []

    # Gave up: staged packets flushed, zero-key timer armed 540 s after the give-up.
    assert pa.counters["handshake_gave_up"] == 1
    assert pa.timers.handshake_attempts == 19
    assert list(pa.staged) == []
    assert pa.timers.pending(Timer.ZERO_KEY_MATERIAL)
    gave_up_at = pa.timers.deadlines[Timer.ZERO_KEY_MATERIAL] - 540
    assert 5.0 <= gave_up_at - times[-1] < 5.334
    assert not pa.timers.pending(Timer.RETRANSMIT_HANDSHAKE)
    assert not pa.timers.pending(Timer.SEND_KEEPALIVE)

    # Reachable again: nothing happens by itself; new data starts a fresh handshake.
    wire.fault = passthrough
    p.advance(30)
    assert len(wire.sent("a->b", (INIT,))) == 20
    p.send(p.a, a2b(2))
    p.run()
    assert p.b.received == [a2b(2)]
    assert pa.timers.handshake_attempts == 0


class _ZeroJitter(random.Random):
    def randrange(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
        return 0


@pytest.mark.parametrize("start", [1000.0, 1019.9355790467063])
def test_retransmission_with_zero_jitter_still_goes_out(start: float) -> None:
    """Jitter 0 is one of the 334 values (§7.1): the retransmit timer expires exactly 5 s after
    the last initiation, and the retry must go out (wireguard-go's timers never fire early, so
    its 5 s lastSentHandshake spacing never suppresses a retry). With float seconds,
    (t + 5.0) - t can be 4.999999999999886 (it is for the second start time); a suppressed
    retry that also leaves the retransmit timer unarmed would stop the handshake for good."""
    p = DevicePair()
    p.now = start
    wire = Wire(p, drop_when(lambda d, src: True))
    p.peer_of_a.timers.rng = _ZeroJitter()
    p.send(p.a, a2b(0))
    p.run()
    p.advance(26)
    times = wire.times("a->b", (INIT,))
    assert [round(t - start, 6) for t in times] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]


# -- §7.2: keepalives ------------------------------------------------------------------------------

def test_passive_keepalive_10s_after_data_when_nothing_to_send() -> None:
    p = DevicePair()
    wire = Wire(p)
    establish(p)
    p.advance(1)
    t1 = p.now
    p.send(p.a, a2b(0))
    p.run()
    p.advance(60)
    after = [(t - t1, dr, kind(d), len(d)) for t, dr, d in wire.sent(since=t1)]
    assert after == [(0.0, "a->b", DATA, 64), (10.0, "b->a", DATA, 32)]
    assert p.a.received == []                    # a keepalive delivers nothing


def test_reply_within_10s_replaces_the_passive_keepalive() -> None:
    p = DevicePair()
    wire = Wire(p)
    establish(p)
    p.advance(1)
    t1 = p.now
    p.send(p.a, a2b(0))
    p.run()
    p.advance(3)
    p.send(p.b, b2a(0))
    p.run()
    p.advance(60)
    after = [(t - t1, dr, len(d)) for t, dr, d in wire.sent(since=t1)]
    # B's data cancels its owed keepalive; A, which received data, owes one 10 s later.
    assert after == [(0.0, "a->b", 64), (3.0, "b->a", 64), (13.0, "a->b", 32)]


def test_persistent_keepalive_every_interval() -> None:
    p = DevicePair(keepalive=25)
    wire = Wire(p)
    establish(p)
    t0 = p.now
    p.advance(101)
    for direction in ("a->b", "b->a"):
        keepalives = wire.sent(direction, (DATA,), since=t0 + 0.001)
        assert all(len(d) == 32 for _, _, d in keepalives)
        assert [t - t0 for t, _, _ in keepalives] == [25.0, 50.0, 75.0, 100.0]


def test_persistent_keepalive_is_pushed_back_by_traffic() -> None:
    p = DevicePair()
    p.peer_of_a.timers.persistent_keepalive = 25            # only A keeps the path open
    wire = Wire(p)
    establish(p)
    t0 = p.now
    p.advance(20)
    p.send(p.b, b2a(0))                                     # traversal at t0 + 20
    p.run()
    p.advance(60)
    a_keepalives = [t - t0 for t, _, d in wire.sent("a->b", (DATA,), since=t0 + 0.001)
                    if len(d) == 32]
    # passive keepalive for B's data at +30; then persistent every 25 s from there
    assert a_keepalives == [30.0, 55.0, 80.0]
    assert all(len(d) > 32 for _, _, d in wire.sent("b->a", (DATA,)))


def test_no_keepalives_on_an_idle_session() -> None:
    p = DevicePair()
    wire = Wire(p)
    establish(p)
    n = len(wire.log)
    assert [kind(d) for _, _, d in wire.log] == [INIT, RESP, DATA]     # confirmation only
    p.advance(530)
    assert len(wire.log) == n


def test_authenticated_data_from_a_disallowed_source_still_counts_as_data_received() -> None:
    """§9 step 3: DataReceived follows "any carried data" among the authenticated packets; the
    allowed-IPs source check comes after (wireguard-go sets dataPacketReceived, and the kernel
    calls wg_timers_data_received, before checking the inner source). The packet itself is
    dropped, but the receiver owes a keepalive 10 s later."""
    p = DevicePair()
    wire = Wire(p)
    establish(p)
    p.advance(1)
    t1 = p.now
    p.send(p.b, ipv4_packet(ipaddress.ip_address("10.9.9.9"), IP_A, b"not from an allowed IP"))
    p.run()
    assert p.a.received == []
    assert drops(p.a, p.now)["source_not_allowed"] == 1
    p.advance(30)
    assert [(t - t1, len(d)) for t, _, d in wire.sent("a->b", (DATA,), since=t1)] == [(10.0, 32)]


# -- §7.2 newHandshake: sent data, heard nothing for 15 s ------------------------------------------

def test_new_handshake_when_sent_data_gets_no_reply_for_15s() -> None:
    p = DevicePair()
    wire = Wire(p)
    p.send(p.a, a2b(0))
    p.run()
    p.advance(20)                               # B's passive keepalive at +10 settles things
    wire.fault = drop_when(lambda d, src: src is p.b)      # B -> A is cut
    t1 = p.now
    p.send(p.a, a2b(1))
    p.run()
    p.advance(15.4)
    inits = wire.times("a->b", (INIT,), since=t1)
    assert len(inits) == 1
    assert 15.0 <= inits[0] - t1 < 15.334
    # B's owed keepalive did go out (and was lost) at +10; it did not stop A's timer.
    assert wire.times("b->a", (DATA,), since=t1) == [t1 + 10]
    assert p.b.received == [a2b(0), a2b(1)]


def test_no_new_handshake_while_replies_arrive() -> None:
    p = DevicePair()
    wire = Wire(p)
    p.send(p.a, a2b(0))
    p.run()
    for i in range(1, 40):
        p.advance(1)
        p.send(p.a, a2b(i))
        p.run()
    p.advance(20)
    assert len(wire.sent(kinds=(INIT,))) == 1


# -- §7.2 zeroKeyMaterial --------------------------------------------------------------------------

def test_keys_zeroed_540s_after_the_last_session() -> None:
    p = DevicePair()
    wire = Wire(p)
    p.send(p.a, a2b(0))
    p.run()
    pa, pb = p.peer_of_a, p.peer_of_b
    ka, kb = pa.current, pb.current
    p.advance(539.9)
    assert pa.current is ka and pb.current is kb
    p.advance(0.2)
    for peer, kp, dp in ((pa, ka, p.a.device.datapath), (pb, kb, p.b.device.datapath)):
        assert peer.previous is None and peer.current is None and peer.next is None
        assert not kp.valid
        assert not dp.index_in_use(kp.local_index)
        assert peer.handshake_index is None
    assert len(wire.sent(kinds=(INIT,))) == 1

    p.send(p.a, a2b(1))
    p.run()
    assert len(wire.sent("a->b", (INIT,))) == 2
    assert p.b.received == [a2b(0), a2b(1)]
    assert_session(p, initiator="a")
    assert pa.current is not ka


# -- §11: endpoint roaming -----------------------------------------------------------------------

def test_valid_transport_packet_from_new_address_moves_endpoint() -> None:
    p = DevicePair()
    p.send(p.a, a2b(0))
    p.run()
    pa = p.peer_of_a
    assert pa.slot.endpoint == ADDR_B
    p.send(p.b, b2a(1))
    p.deliver(p.a, [d for d in p.flush(p.b) if kind(d) == DATA], NEW_ADDR)
    assert p.a.received == [b2a(1)]
    assert pa.slot.endpoint == NEW_ADDR
    assert pa.status(p.now)["endpoint"] == "192.0.2.10:4444"
    # a keepalive is authenticated too
    kb = p.peer_of_b.current
    keepalive = kb.seal(b"")
    p.deliver(p.a, [keepalive], OTHER_ADDR)
    assert pa.slot.endpoint == OTHER_ADDR


def test_invalid_packets_do_not_move_endpoint() -> None:
    p = DevicePair()
    wire = Wire(p)
    p.send(p.a, a2b(0))
    p.run()
    pa, pb = p.peer_of_a, p.peer_of_b
    p.send(p.b, b2a(1))
    genuine = next(d for d in p.flush(p.b) if kind(d) == DATA)
    p.deliver(p.a, [genuine], ADDR_B)
    assert p.a.received == [b2a(1)]

    forged = bytearray(genuine)
    forged[20] ^= 1
    p.deliver(p.a, [bytes(forged)], NEW_ADDR)             # fails authentication
    p.deliver(p.a, [genuine], NEW_ADDR)                    # authentic but replayed
    unknown = bytearray(genuine)
    unknown[4:8] = (receiver_index(genuine) ^ 0x5A5A5A5A).to_bytes(4, "little")
    p.deliver(p.a, [bytes(unknown)], NEW_ADDR)             # no such keypair
    assert pa.slot.endpoint == ADDR_B
    d = drops(p.a, p.now)
    assert (d["auth_failed"], d["replay"], d["unknown_index"]) == (1, 1, 1)

    # handshake messages: a replayed initiation and one with a bad mac1 do not move B's endpoint
    init = wire.sent("a->b", (INIT,))[0][2]
    p.deliver(p.b, [init], NEW_ADDR)
    bad = bytearray(init)
    bad[116] ^= 1
    p.deliver(p.b, [bytes(bad)], NEW_ADDR)
    assert pb.slot.endpoint == ADDR_A
    assert p.b.device.counters["drop_handshake_replay"] == 1
    assert p.b.device.counters["drop_mac1"] == 1
    assert p.a.received == [b2a(1)]


def test_valid_initiation_from_new_address_moves_endpoint() -> None:
    p = DevicePair()
    p.send(p.a, a2b(0))
    p.run()
    p.advance(6)
    pa, pb = p.peer_of_a, p.peer_of_b
    pa.send_handshake_initiation(p.now, p.wall, retry=False)
    init = [d for d in p.flush(p.a) if kind(d) == INIT]
    p.deliver(p.b, init, NEW_ADDR)
    assert pb.slot.endpoint == NEW_ADDR
    assert p.peer_of_b.counters["handshake_responses_sent"] == 2


def test_valid_response_from_new_address_moves_endpoint() -> None:
    p = DevicePair()
    p.send(p.a, a2b(0))
    init = [d for d in p.flush(p.a) if kind(d) == INIT]
    p.deliver(p.b, init, ADDR_A)
    response = [d for d in p.flush(p.b) if kind(d) == RESP]
    p.deliver(p.a, response, NEW_ADDR)
    assert p.peer_of_a.slot.endpoint == NEW_ADDR
    assert p.peer_of_a.current is not None


def test_peer_without_endpoint_learns_it_from_an_initiation() -> None:
    p = DevicePair(b_endpoint=False)
    wire = Wire(p)
    pb = p.peer_of_b
    p.send(p.b, b2a(0))
    p.run()
    assert wire.log == []                                  # nowhere to send the initiation
    assert p.b.device.counters["no_endpoint"] == 1
    assert list(pb.staged) == [b2a(0)]
    p.send(p.a, a2b(0))
    p.run()
    assert pb.slot.endpoint == ADDR_A
    assert p.a.received == [b2a(0)] and p.b.received == [a2b(0)]


# -- §4.2: replay and flood of initiations ---------------------------------------------------------

def test_replayed_initiation_is_ignored() -> None:
    p = DevicePair()
    wire = Wire(p)
    p.send(p.a, a2b(0))
    p.run()
    pb = p.peer_of_b
    current = pb.current
    init = wire.sent("a->b", (INIT,))[0][2]
    p.advance(1)
    p.deliver(p.b, [init], ADDR_A)
    assert p.b.device.counters["drop_handshake_replay"] == 1
    assert not p.b.device.has_pending()                     # no second response
    assert p.flush(p.b) == []
    assert pb.counters["handshake_responses_sent"] == 1
    assert pb.current is current and pb.next is None


def test_initiation_flood_within_20ms_is_ignored() -> None:
    p = DevicePair()
    pb = p.peer_of_b
    first, _ = craft_initiation(p, p.wall + 10, index=1)
    p.deliver(p.b, [first], ADDR_A)
    assert pb.counters["handshake_responses_sent"] == 1
    p.now += 0.010
    second, _ = craft_initiation(p, p.wall + 11, index=2)  # newer timestamp, but 10 ms later
    p.deliver(p.b, [second], ADDR_A)
    assert pb.counters["handshake_responses_sent"] == 1
    assert p.b.device.counters["drop_handshake_replay"] == 1
    p.now += 0.015                                         # 25 ms after the accepted one
    third, _ = craft_initiation(p, p.wall + 12, index=3)
    p.deliver(p.b, [third], ADDR_A)
    assert pb.counters["handshake_responses_sent"] == 2
    responses = [d for d in p.flush(p.b) if kind(d) == RESP]
    assert [int.from_bytes(d[8:12], "little") for d in responses] == [1, 3]


# -- §5: mac1 ------------------------------------------------------------------------------------

def test_bad_mac1_initiation_is_dropped_before_any_dh(monkeypatch: pytest.MonkeyPatch) -> None:
    p = DevicePair()
    p.send(p.a, a2b(0))
    init = next(d for d in p.flush(p.a) if kind(d) == INIT)
    calls: list[bytes] = []
    real = device_module.consume_initiation

    def spy(identity, data, precomputed):  # type: ignore[no-untyped-def]
        calls.append(bytes(data))
        return real(identity, data, precomputed)

    monkeypatch.setattr(device_module, "consume_initiation", spy)
    for offset in (116, 131):
        bad = bytearray(init)
        bad[offset] ^= 0x80
        p.deliver(p.b, [bytes(bad)], ADDR_A)
    assert calls == []
    assert p.b.device.counters["drop_mac1"] == 2
    assert not p.b.device.has_pending()
    assert p.peer_of_b.next is None and p.peer_of_b.current is None
    p.deliver(p.b, [init], ADDR_A)                          # the genuine one still works
    assert len(calls) == 1 and p.peer_of_b.next is not None


def test_bad_mac1_response_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    p = DevicePair()
    pa = p.peer_of_a
    calls: list[bytes] = []
    real = pa.handshake.consume_response
    monkeypatch.setattr(pa.handshake, "consume_response",
                        lambda m: calls.append(bytes(m)) or real(m))

    def corrupt(d: bytes, src: Side, dst: Side) -> list[bytes]:
        if kind(d) == RESP:
            d = d[:60] + bytes([d[60] ^ 1]) + d[61:]
        return [d]

    Wire(p, corrupt)
    p.send(p.a, a2b(0))
    p.run()
    assert p.a.device.counters["drop_mac1"] == 1
    assert calls == []
    assert pa.current is None and list(pa.staged) == [a2b(0)]


# -- §5: cookies under load ---------------------------------------------------------------------

def test_cookie_reply_then_mac2_both_roles() -> None:
    p = DevicePair()
    wire = Wire(p)
    pa, pb = p.peer_of_a, p.peer_of_b
    p.b.device.force_under_load = True
    t0 = p.now
    p.send(p.a, a2b(0))
    p.run()
    log = [(dr, kind(d), len(d)) for _, dr, d in wire.log]
    assert log == [("a->b", INIT, 148), ("b->a", COOKIE, 64)]
    init1, reply = wire.log[0][2], wire.log[1][2]
    assert init1[132:148] == bytes(16)                     # no cookie yet: mac2 zero
    assert reply[:4] == b"\x03\x00\x00\x00"
    assert reply[4:8] == init1[4:8]                        # receiver = initiation's sender
    assert p.b.device.counters["cookie_replies_sent"] == 1
    assert p.a.device.counters["cookie_replies_received"] == 1
    assert pa.current is None and pb.next is None          # the reply triggers no resend

    p.advance(5.334)
    assert [(dr, kind(d)) for _, dr, d in wire.log[2:]] == [
        ("a->b", INIT), ("b->a", RESP), ("a->b", DATA)]
    t_retry, _, init2 = wire.log[2]
    assert 5.0 <= t_retry - t0 < 5.334
    assert init2[132:148] != bytes(16)                     # mac2 carries the cookie
    assert p.b.received == [a2b(0)]
    assert_session(p, initiator="a")
    assert p.b.device.counters["cookie_replies_sent"] == 1

    # Both under load; B initiates (rekey after messages). A answers with a cookie reply; B's
    # retransmission carries mac2; A's response carries mac2 from the cookie A got from B.
    p.a.device.force_under_load = True
    p.advance(6)
    n = len(wire.log)
    t1 = p.now
    pb.current.send_counter = REKEY_AFTER_MESSAGES
    p.send(p.b, b2a(0))
    p.run()
    assert [(dr, kind(d)) for _, dr, d in wire.log[n:]] == [
        ("b->a", DATA), ("b->a", INIT), ("a->b", COOKIE)]
    p.advance(5.334)
    assert [(dr, kind(d)) for _, dr, d in wire.log[n + 3:]] == [
        ("b->a", INIT), ("a->b", RESP), ("b->a", DATA)]
    assert 5.0 <= wire.log[n + 3][0] - t1 < 5.334
    assert wire.log[n + 4][2][76:92] != bytes(16)          # the response's mac2
    assert_session(p, initiator="b")
    assert p.a.device.counters["cookie_replies_sent"] == 1
    assert p.b.device.counters["cookie_replies_received"] == 1
    exchange(p, 3, start=1)


def test_cookie_both_under_load_from_scratch_b_initiates() -> None:
    """Neither side has a cookie: B's initiation gets a cookie reply; its retry is accepted but
    A's response (mac2 zero) gets a cookie reply from B; B's next retry completes."""
    p = DevicePair()
    wire = Wire(p)
    p.a.device.force_under_load = True
    p.b.device.force_under_load = True
    p.send(p.b, b2a(0))
    p.run()
    p.advance(10.7)
    assert [(dr, kind(d)) for _, dr, d in wire.log] == [
        ("b->a", INIT), ("a->b", COOKIE),
        ("b->a", INIT), ("a->b", RESP), ("b->a", COOKIE),
        ("b->a", INIT), ("a->b", RESP), ("b->a", DATA)]
    responses = [d for _, _, d in wire.sent("a->b", (RESP,))]
    assert responses[0][76:92] == bytes(16) and responses[1][76:92] != bytes(16)
    assert p.a.received == [b2a(0)]
    assert_session(p, initiator="b")
    for side in (p.a, p.b):
        assert side.device.counters["cookie_replies_sent"] == 1
        assert side.device.counters["cookie_replies_received"] == 1
        assert side.device.counters["drop_rate_limited"] == 0


def test_under_load_engages_at_128_handshake_messages_and_lasts_1s() -> None:
    """§5 "when under load engages": 128 queued handshake messages (wireguard-go 1024 / 8; ours:
    received within HANDSHAKE_QUEUE_WINDOW), then sticky for UnderLoadAfterTime = 1 s. Messages
    with a bad mac1 count: they were queued."""
    p = DevicePair()
    device = p.b.device
    junk = bytearray(craft_initiation(p, p.wall, index=7)[0])
    junk[116] ^= 1
    p.deliver(p.b, [bytes(junk)] * 127, OTHER_ADDR)
    assert not device.under_load(p.now)
    p.deliver(p.b, [bytes(junk)] * 128, OTHER_ADDR)
    assert device.under_load(p.now)
    assert device.counters["drop_mac1"] == 255
    assert p.flush(p.b) == []                              # bad mac1: not even a cookie reply

    p.now += 0.5                                           # still under load
    genuine, _ = craft_initiation(p, p.wall + 1, index=8)
    p.deliver(p.b, [genuine], ADDR_A)
    assert [kind(d) for d in p.flush(p.b)] == [COOKIE]
    assert p.peer_of_b.counters["handshake_responses_sent"] == 0

    p.now += 0.6                                           # 1.1 s after the burst
    assert not device.under_load(p.now)
    genuine, _ = craft_initiation(p, p.wall + 2, index=9)
    p.deliver(p.b, [genuine], ADDR_A)
    assert [kind(d) for d in p.flush(p.b)] == [RESP]


@pytest.mark.parametrize("tamper", ["receiver_index", "ciphertext", "nonce"])
def test_bad_cookie_reply_is_ignored(tamper: str) -> None:
    p = DevicePair()
    p.b.device.force_under_load = True
    tampered: list[bytes] = []

    def fault(d: bytes, src: Side, dst: Side) -> list[bytes]:
        if kind(d) == COOKIE and not tampered:
            b = bytearray(d)
            if tamper == "receiver_index":
                b[4:8] = (receiver_index(d) ^ 0xFFFFFFFF).to_bytes(4, "little")
            elif tamper == "ciphertext":
                b[40] ^= 1
            else:
                b[8] ^= 1
            tampered.append(bytes(b))
            return [bytes(b)]
        return [d]

    wire = Wire(p, fault)
    p.send(p.a, a2b(0))
    p.run()
    assert p.a.device.counters["drop_cookie_reply"] == 1
    assert p.a.device.counters["cookie_replies_received"] == 0
    p.advance(5.334)
    inits = [d for _, _, d in wire.sent("a->b", (INIT,))]
    assert len(inits) == 2 and inits[1][132:148] == bytes(16)    # no cookie was stored
    assert p.b.device.counters["cookie_replies_sent"] == 2
    assert p.a.device.counters["cookie_replies_received"] == 1  # the untampered second one
    p.advance(5.334)
    assert p.b.received == [a2b(0)]
    assert_session(p, initiator="a")


def test_rate_limiter_drops_sixth_initiation_from_one_source_in_an_instant() -> None:
    p = DevicePair()
    p.b.device.force_under_load = True
    source = sockaddr("192.0.2.55", 7777, socket.AF_INET)
    probe, generator = craft_initiation(p, p.wall + 1, index=100)
    p.deliver(p.b, [probe], source)
    replies = [d for d in p.flush(p.b) if kind(d) == COOKIE]
    assert len(replies) == 1
    assert generator.consume_reply(replies[0], p.now)
    batch = [craft_initiation(p, p.wall + 2 + i, index=101 + i, generator=generator)[0]
             for i in range(6)]
    assert all(m[132:148] != bytes(16) for m in batch)
    p.deliver(p.b, batch, source)
    counters = p.b.device.counters
    assert counters["drop_rate_limited"] == 1              # 5 pass the limiter, the 6th not
    assert counters["cookie_replies_sent"] == 1
    assert p.peer_of_b.counters["handshake_responses_sent"] == 1
    assert counters["drop_handshake_replay"] == 4          # 2..5 hit the 20 ms flood rule
    # a different source IP has its own bucket
    p.now += 0.05
    other, _ = craft_initiation(p, p.wall + 20, index=200)
    p.deliver(p.b, [other], OTHER_ADDR)
    assert counters["cookie_replies_sent"] == 2            # (needs its own cookie first)
    assert counters["drop_rate_limited"] == 1


# -- loss, duplication and reordering --------------------------------------------------------------

class FaultyLink:
    """Seeded loss, duplication and reordering (held datagrams are released behind later ones)."""

    def __init__(self, pair: DevicePair, seed: int, loss: float, dup: float, hold: float) -> None:
        self.pair = pair
        self.rng = random.Random(seed)
        self.loss, self.dup, self.hold = loss, dup, hold
        self.held: dict[str, list[bytes]] = {"a->b": [], "b->a": []}
        self.delivered: dict[str, list[bytes]] = {"a->b": [], "b->a": []}
        self.duplicated = 0
        pair.link = self

    def __call__(self, d: bytes, src: Side, dst: Side) -> list[bytes]:
        direction = "a->b" if src is self.pair.a else "b->a"
        out: list[bytes] = []
        if self.rng.random() >= self.loss:
            copies = [d, d] if self.rng.random() < self.dup else [d]
            self.duplicated += len(copies) - 1
            for c in copies:
                (self.held[direction] if self.rng.random() < self.hold else out).append(c)
        held = self.held[direction]
        if held and self.rng.random() < 0.3:
            self.rng.shuffle(held)
            out.extend(held)
            held.clear()
        self.delivered[direction].extend(out)
        return out

    def drain(self) -> None:
        for direction, dst, src_addr in (("a->b", self.pair.b, ADDR_A),
                                         ("b->a", self.pair.a, ADDR_B)):
            held, self.held[direction] = self.held[direction], []
            if held:
                self.delivered[direction].extend(held)
                self.pair.deliver(dst, held, src_addr)


def _bulk(p: DevicePair, link: FaultyLink, n: int = 200) -> tuple[list[bytes], list[bytes]]:
    sent_a = [a2b(i) for i in range(n)]
    sent_b = [b2a(i) for i in range(n)]
    for i in range(0, n, 10):
        p.send(p.a, *sent_a[i:i + 10])
        p.send(p.b, *sent_b[i:i + 10])
        p.run()
    link.drain()
    return sent_a, sent_b


def _check_at_most_once(p: DevicePair, link: FaultyLink, direction: str, sent: list[bytes],
                        received: list[bytes], receiver: Side) -> None:
    assert len(received) == len(set(received))             # never delivered twice
    assert set(received) <= set(sent)                      # never something not sent
    data = Counter(d for d in link.delivered[direction] if kind(d) == DATA and len(d) > 32)
    assert len(received) == len(data)                      # each distinct datagram, once
    extra = sum(c - 1 for c in data.values())
    assert drops(receiver, p.now)["replay"] == extra       # every extra copy: replay window


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_duplication_and_reordering_without_loss_deliver_everything_once(seed: int) -> None:
    p = DevicePair(seed=seed)
    establish(p)
    link = FaultyLink(p, seed=seed, loss=0.0, dup=0.2, hold=0.3)
    sent_a, sent_b = _bulk(p, link)
    assert link.duplicated > 0
    assert sorted(p.b.received) == sorted(sent_a) and len(p.b.received) == 200
    assert sorted(p.a.received) == sorted(sent_b) and len(p.a.received) == 200
    assert p.b.received != sent_a and p.a.received != sent_b     # reordering did happen
    _check_at_most_once(p, link, "a->b", sent_a, p.b.received, p.b)
    _check_at_most_once(p, link, "b->a", sent_b, p.a.received, p.a)


@pytest.mark.parametrize("seed", [4, 5])
def test_loss_duplication_reordering_deliver_at_most_once(seed: int) -> None:
    p = DevicePair(seed=seed)
    establish(p)
    link = FaultyLink(p, seed=seed, loss=0.2, dup=0.2, hold=0.3)
    sent_a, sent_b = _bulk(p, link)
    assert 0 < len(p.b.received) < 200 and 0 < len(p.a.received) < 200
    _check_at_most_once(p, link, "a->b", sent_a, p.b.received, p.b)
    _check_at_most_once(p, link, "b->a", sent_b, p.a.received, p.a)


def test_handshake_completes_over_a_lossy_link() -> None:
    p = DevicePair(seed=9)
    link = FaultyLink(p, seed=9, loss=0.5, dup=0.1, hold=0.2)
    for i in range(60):
        p.send(p.a, a2b(i))
        p.run()
        p.advance(1)
        if p.peer_of_b.current is not None:
            break
    link.drain()
    p.link = lambda d, s, r: [d]
    p.advance(1)
    assert_session(p, initiator="a")
    assert len(p.b.received) == len(set(p.b.received)) > 0
    assert set(p.b.received) <= {a2b(i) for i in range(60)}
    exchange(p, 5, start=1000)


# -- issue 14 item 3: a handshake flood engages cookies within the flood --------------------------

def forged_initiation(p: DevicePair, rnd: random.Random, generator: CookieGenerator) -> bytes:
    """Junk shaped like an initiation with a valid mac1 (anyone who knows B's public key can),
    and mac2 from `generator`'s cookie if it holds one: it passes mac1, fails in the DH."""
    message = bytearray(rnd.randbytes(148))
    message[0:4] = bytes([INIT, 0, 0, 0])
    generator.add_macs(message, p.now)
    return bytes(message)


def deliver_mixed(p: DevicePair, side: Side, datagrams: list[tuple[bytes, bytes]]) -> None:
    """One receive batch of at most 64 datagrams (udpio's size) from several sources."""
    assert len(datagrams) <= 64
    rx = PacketBatch(64, 2048)
    for datagram, source in datagrams:
        rx.add_datagram(datagram, source)
    side.device.datapath.decrypt(rx, p.now)
    for i in range(rx.count):
        if rx.result(i) == RES_DATA:
            side.received.append(rx.inner(i))
    side.device.after_decrypt(rx, p.now, p.wall)


def test_handshake_flood_engages_cookies_within_the_burst_and_spares_the_session() -> None:
    """10 batches of 48 forged initiations (valid mac1, no cookie) + 16 transport packets of a
    live session. The 128th handshake message flips B under load in the 3rd batch; every later
    forged initiation gets a cookie reply without any Diffie-Hellman, and every transport
    packet is delivered. Under load ends 1 s after the last flood message."""
    p = DevicePair()
    establish(p)
    p.now += HANDSHAKE_QUEUE_WINDOW                        # the handshake above is not queued
    device = p.b.device
    rnd = random.Random(7)
    attacker = CookieGenerator(device.public_key)
    consumed_before = device.counters["handshakes_consumed"]
    flipped_in_batch = None
    sent: list[bytes] = []
    for batch_no in range(10):
        packets = [a2b(batch_no * 16 + i) for i in range(16)]
        sent.extend(packets)
        p.send(p.a, *packets)
        transport = [d for d in p.flush(p.a) if kind(d) == DATA]
        assert len(transport) == 16
        flood = [(forged_initiation(p, rnd, attacker), OTHER_ADDR) for _ in range(48)]
        mixed = [item for pair_ in zip(flood[0::3], flood[1::3], flood[2::3],
                                       [(d, ADDR_A) for d in transport]) for item in pair_]
        deliver_mixed(p, p.b, mixed)
        if flipped_in_batch is None and device.under_load(p.now):
            flipped_in_batch = batch_no
    threshold = UNDER_LOAD_QUEUE_THRESHOLD
    assert flipped_in_batch == (threshold - 1) // 48                  # within the burst
    # Only the messages before the flip reached Diffie-Hellman (and failed there).
    assert device.counters["handshakes_consumed"] - consumed_before == threshold - 1
    assert device.counters["drop_handshake_invalid"] == threshold - 1
    assert device.counters["cookie_replies_sent"] == 480 - (threshold - 1)
    replies = [d for d in p.flush(p.b) if kind(d) == COOKIE]
    assert len(replies) == 480 - (threshold - 1)
    # The live session was never disturbed: every packet arrived, in order, none dropped.
    assert p.b.received == sent
    assert drops(p.b, p.now).get("replay", 0) == 0
    exchange(p, 5, start=1000)

    # The attacker can receive at its address: it takes the cookie and puts it into mac2. Now
    # the per-source rate limiter decides: the burst of 5 reaches DH, the rest is refused.
    assert attacker.consume_reply(replies[-1], p.now)
    consumed_before = device.counters["handshakes_consumed"]
    deliver_mixed(p, p.b, [(forged_initiation(p, rnd, attacker), OTHER_ADDR) for _ in range(50)])
    assert device.counters["handshakes_consumed"] - consumed_before == \
        RATE_LIMITER_PACKETS_BURSTABLE
    assert device.counters["drop_rate_limited"] == 50 - RATE_LIMITER_PACKETS_BURSTABLE

    burst_end = p.now
    p.now = burst_end + UNDER_LOAD_AFTER_TIME - 0.001
    assert device.under_load(p.now)
    p.now = burst_end + UNDER_LOAD_AFTER_TIME + 0.001
    assert not device.under_load(p.now)
    genuine, _ = craft_initiation(p, p.wall + 5, index=0x5EED)
    p.deliver(p.b, [genuine], ADDR_A)
    assert [kind(d) for d in p.flush(p.b)] == [RESP]


def test_handshakes_spread_over_time_do_not_engage_under_load() -> None:
    """Fewer than 128 handshake messages per HANDSHAKE_QUEUE_WINDOW never count as a queue."""
    p = DevicePair()
    device = p.b.device
    rnd = random.Random(3)
    attacker = CookieGenerator(device.public_key)
    per_window = UNDER_LOAD_QUEUE_THRESHOLD // 2
    for _ in range(10):
        deliver_mixed(p, p.b, [(forged_initiation(p, rnd, attacker), OTHER_ADDR)
                               for _ in range(per_window)])
        assert not device.under_load(p.now)
        p.now += HANDSHAKE_QUEUE_WINDOW
    assert device.counters["cookie_replies_sent"] == 0


def test_force_under_load_overrides_the_queue_model() -> None:
    p = DevicePair()
    device = p.b.device
    device.force_under_load = False
    rnd = random.Random(5)
    attacker = CookieGenerator(device.public_key)
    for _ in range(3):
        deliver_mixed(p, p.b, [(forged_initiation(p, rnd, attacker), OTHER_ADDR)
                               for _ in range(64)])
    assert not device.under_load(p.now)
    assert device.counters["cookie_replies_sent"] == 0
    device.force_under_load = None
    assert device.under_load(p.now)                        # the model saw the 192 messages


def test_timer_jitter_is_not_drawn_from_the_system_rng() -> None:
    # Indices stay unpredictable (SystemRandom); the new-handshake timer's jitter, re-drawn on
    # every sent batch after a received one, comes from a seeded PRNG (wireguard-go: fastrandn)
    # so it costs no getrandom() syscall per batch.
    from agentconn.wg.crypto import dh_generate
    from agentconn.wg.device import Device

    def random_bytes(n: int) -> bytes:
        return bytes(range(n))

    dev = Device(dh_generate(), random_bytes=random_bytes)
    other = Device(dh_generate())
    peer = dev.add_peer(PeerConfig(public_key=other.public_key, preshared_key=None,
                                   endpoint=None,
                                   allowed_ips=[ipaddress.ip_network("10.9.0.2/32")],
                                   persistent_keepalive=0), b"")
    assert isinstance(dev.rng, random.SystemRandom)
    rng = peer.timers.rng
    assert type(rng) is random.Random                   # not SystemRandom
    assert rng.random() == random.Random(bytes(range(16))).random()   # seeded by random_bytes
