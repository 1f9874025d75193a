"""Fuzz the receive path of the batch data path (_wgcore.datapath.Datapath.decrypt).

Invariant (STYLE §12.3): ``decrypt()`` returns, sets a result code on every descriptor (one of
RES_DATA, RES_KEEPALIVE, RES_HANDSHAKE or a receive DROP_* code), never raises, never crashes;
forged input never authenticates, so the valid packets of a live session mixed into the same
batch still decrypt to exactly what was sent, the receive counters grow by exactly their number,
and the session keeps working afterwards in both directions.

Inputs: random bytes; valid type headers (1-4, also at the exact handshake lengths) with random
bodies; transport headers carrying the live receiver index with random counters and bodies;
real sealed messages truncated at every length and with single bit flips; huge (64 KiB) and
zero-length datagrams; duplicates of valid packets (replays). Seeds are real messages of a live
session (the spec §14.3 keepalive shape and IPv4/IPv6 data), built fresh per example.
"""
from __future__ import annotations

import random
import socket
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _wgcore.datapath import RESULT, Datapath, PacketBatch, PeerSlot
from _wgcore.keypair import Keypair

RES_DATA = RESULT["DATA"]
RES_KEEPALIVE = RESULT["KEEPALIVE"]
RES_HANDSHAKE = RESULT["HANDSHAKE"]
RES_SEALED = RESULT["SEALED"]
RES_STAGE = RESULT["STAGE"]
DROP_REPLAY = RESULT["DROP_REPLAY"]
RX_RESULTS = {RES_DATA, RES_KEEPALIVE, RES_HANDSHAKE} | {
    RESULT[f"DROP_{name}"] for name in ("SHORT", "BAD_TYPE", "UNKNOWN_INDEX", "EXPIRED_KEYPAIR",
                                        "AUTH_FAILED", "REPLAY", "BAD_INNER_IP",
                                        "SOURCE_NOT_ALLOWED")}
TX_RESULTS = {RES_SEALED, RES_STAGE, RESULT["DROP_BAD_INNER_IP"], RESULT["DROP_NO_ROUTE"],
              RESULT["DROP_TOO_BIG"]}
NOW = 500.0
MTU = 1420
BIG_SLOT = 65536
INDEX_A, INDEX_B = 0x0A0A0A0A, 0x0B0B0B0B
ADDR_A = (struct.pack("=H", socket.AF_INET) + struct.pack("!H", 51820)
          + socket.inet_aton("127.0.0.1") + bytes(8))
ADDR_B = ADDR_A[:2] + struct.pack("!H", 51821) + ADDR_A[4:]
IP_A4, IP_B4 = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
IP_A6 = socket.inet_pton(socket.AF_INET6, "fd00::1")
IP_B6 = socket.inet_pton(socket.AF_INET6, "fd00::2")


class Session:
    """A (10.0.0.1) and B (10.0.0.2) with one live session; only B's receive path is fuzzed."""

    def __init__(self, seed: int) -> None:
        rnd = random.Random(seed)
        self.rnd = rnd
        k1, k2 = rnd.randbytes(32), rnd.randbytes(32)
        self.a, self.b = Datapath(MTU), Datapath(MTU)
        self.slot_b, self.slot_a = PeerSlot(2), PeerSlot(1)
        self.kp_a = Keypair(k1, k2, INDEX_A, INDEX_B, True, NOW)
        self.kp_b = Keypair(k2, k1, INDEX_B, INDEX_A, False, NOW)
        for dp, kp, slot, endpoint in ((self.a, self.kp_a, self.slot_b, ADDR_B),
                                       (self.b, self.kp_b, self.slot_a, ADDR_A)):
            dp.add_keypair(kp, slot)
            slot.set_current(kp)
            slot.endpoint = endpoint
        self.a.set_routes([(IP_B4, 32, self.slot_b), (IP_B6, 128, self.slot_b)])
        self.b.set_routes([(IP_A4, 32, self.slot_a), (IP_A6, 128, self.slot_a)])

    def inner(self, kind: int, size: int) -> bytes:
        """kind 0: keepalive (b""), 1: IPv4, 2: IPv6 packet from A to B."""
        if kind == 0:
            return b""
        if kind == 1:
            n = 20 + size % (MTU - 19)
            return struct.pack("!BBHHHBBH4s4s", 0x45, 0, n, 1, 0, 64, 17, 0, IP_A4,
                               IP_B4) + self.rnd.randbytes(n - 20)
        n = 40 + size % (MTU - 39)
        return struct.pack("!IHBB16s16s", 0x60000000, n - 40, 17, 64, IP_A6,
                           IP_B6) + self.rnd.randbytes(n - 40)

    def seal(self, inners: list[bytes], dp: Datapath | None = None,
             slot: PeerSlot | None = None) -> list[bytes]:
        dp = dp or self.a
        slot = slot or self.slot_b
        batch = PacketBatch(max(1, len(inners)), 2048)
        for p in inners:
            if p:
                batch.add_packet(p, slot)
            else:
                batch.add_keepalive(slot)
        assert dp.encrypt(batch, NOW) == len(inners)
        return [batch.datagram(i) for i in range(batch.count)]


# One garbage item: (kind, a, b, raw bytes); turned into a datagram with a live session.
garbage = st.one_of(
    st.tuples(st.just("random"), st.just(0), st.just(0), st.binary(max_size=1600)),
    st.tuples(st.just("typed"), st.sampled_from([1, 2, 3, 4]),
              st.one_of(st.sampled_from([148, 92, 64, 32]), st.integers(4, 1600)),
              st.binary(max_size=0)),
    st.tuples(st.just("index"), st.integers(0, 2**64 - 1), st.integers(32, 1600),
              st.binary(max_size=0)),
    st.tuples(st.just("trunc"), st.sampled_from([0, 1, 2]), st.integers(0, 10**6),
              st.binary(max_size=0)),
    st.tuples(st.just("flip"), st.sampled_from([0, 1, 2]), st.integers(0, 10**6),
              st.binary(max_size=0)),
    st.tuples(st.just("huge"), st.sampled_from([0, 1, 4]),
              st.sampled_from([BIG_SLOT - 1, BIG_SLOT]), st.binary(max_size=0)),
    st.tuples(st.just("empty"), st.just(0), st.just(0), st.just(b"")),
    st.tuples(st.just("dup"), st.integers(0, 10**6), st.just(0), st.binary(max_size=0)),
)
valid = st.tuples(st.just("valid"), st.sampled_from([0, 1, 1, 2, 2]), st.integers(0, 10**6),
                  st.binary(max_size=0))


def _forge(session: Session, kind: str, a: int, b: int, raw: bytes,
           valid_datagrams: list[bytes]) -> bytes:
    rnd = session.rnd
    if kind == "random":
        return raw
    if kind == "typed":
        return struct.pack("<I", a) + rnd.randbytes(b - 4)
    if kind == "index":
        return struct.pack("<IIQ", 4, INDEX_B, a) + rnd.randbytes(b - 16)
    if kind in ("trunc", "flip"):
        # A real message sealed for B but never delivered whole (consumes one of A's counters).
        (sealed,) = session.seal([session.inner(a, b)])
        if kind == "trunc":
            return sealed[:b % len(sealed)]
        flipped = bytearray(sealed)
        bit = b % (8 * len(sealed))
        flipped[bit // 8] ^= 1 << (bit % 8)
        return bytes(flipped)
    if kind == "huge":
        head = struct.pack("<IIQ", a, INDEX_B, 7) if a else b""
        return head + rnd.randbytes(b - len(head))
    if kind == "empty":
        return b""
    raise AssertionError(kind)


def _check_batch(session: Session, items: list[tuple[str, int, int, bytes]]) -> None:
    inners = [session.inner(k, s) for kind, k, s, _ in items if kind == "valid"]
    valid_datagrams = session.seal(inners)
    datagrams: list[bytes] = []
    expected: dict[int, bytes | None] = {}       # position -> inner, for first deliveries
    replays: set[int] = set()
    delivered: set[int] = set()
    v = 0
    for kind, a, b, raw in items:
        if kind == "valid":
            expected[len(datagrams)] = inners[v]
            delivered.add(v)
            datagrams.append(valid_datagrams[v])
            v += 1
        elif kind == "dup":
            if not delivered:
                continue
            j = sorted(delivered)[a % len(delivered)]
            replays.add(len(datagrams))
            datagrams.append(valid_datagrams[j])
        else:
            datagrams.append(_forge(session, kind, a, b, raw, valid_datagrams))
    before = session.b.counters()
    batch = PacketBatch(max(1, len(datagrams)), BIG_SLOT)
    for d in datagrams:
        batch.add_datagram(d, ADDR_A)
    ndata = session.b.decrypt(batch, NOW)
    results = batch.results()

    assert len(results) == len(datagrams)
    assert set(results) <= RX_RESULTS
    for i, inner in expected.items():
        assert results[i] == (RES_DATA if inner else RES_KEEPALIVE), (i, results[i])
        assert batch.inner(i) == inner
    for i in replays:
        assert results[i] == DROP_REPLAY
    others = [r for i, r in enumerate(results) if i not in expected and i not in replays]
    assert RES_DATA not in others and RES_KEEPALIVE not in others
    assert ndata == sum(1 for inner in expected.values() if inner)
    after = session.b.counters()
    assert after["rx_packets"] - before["rx_packets"] == len(expected)
    dropped = sum(after["drops"].values()) - sum(before["drops"].values())
    assert dropped + results.count(RES_HANDSHAKE) + len(expected) == len(datagrams)


def _still_works(session: Session) -> None:
    p = session.inner(1, 99)
    rx = PacketBatch(2, 2048)
    for d in session.seal([p, b""]):
        rx.add_datagram(d, ADDR_A)
    assert session.b.decrypt(rx, NOW) == 1
    assert rx.results() == [RES_DATA, RES_KEEPALIVE]
    assert rx.inner(0) == p
    # And back from B to A.
    back = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 24, 1, 0, 64, 17, 0, IP_B4, IP_A4) + b"pong"
    rx = PacketBatch(1, 2048)
    rx.add_datagram(session.seal([back], session.b, session.slot_a)[0], ADDR_B)
    assert session.a.decrypt(rx, NOW) == 1
    assert rx.inner(0) == back


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(st.one_of(garbage, valid), max_size=40), seed=st.integers(0, 2**32))
def test_decrypt_survives_forged_datagrams_mixed_with_live_traffic(
        items: list[tuple[str, int, int, bytes]], seed: int) -> None:
    session = Session(seed)
    _check_batch(session, items)
    _still_works(session)


def test_every_truncation_of_real_messages() -> None:
    session = Session(1)
    sources = session.seal([b"", session.inner(1, 1000), session.inner(2, 77)])
    handshakes = [b"\x01\0\0\0" + bytes(144), b"\x02\0\0\0" + bytes(88), b"\x03\0\0\0" + bytes(60)]
    for message in sources + handshakes:
        batch = PacketBatch(len(message), 2048)
        for n in range(len(message)):
            batch.add_datagram(message[:n], ADDR_A)
        assert session.b.decrypt(batch, NOW) == 0
        results = batch.results()
        assert set(results) <= RX_RESULTS - {RES_DATA, RES_KEEPALIVE, RES_HANDSHAKE}
        assert results[:32] == [RESULT["DROP_SHORT"]] * min(32, len(message))
    assert session.b.counters()["rx_packets"] == 0
    _still_works(session)


def test_long_lived_session_under_garbage() -> None:
    # One session, many batches: the invariant holds batch after batch and the replay window,
    # index table and counters stay consistent.
    session = Session(7)
    rnd = random.Random(7)
    kinds = ["random", "typed", "index", "trunc", "flip", "empty", "dup", "valid", "valid"]
    total_valid = 0
    for _ in range(150):
        items = []
        for _ in range(rnd.randrange(1, 30)):
            kind = rnd.choice(kinds)
            if kind == "random":
                items.append((kind, 0, 0, rnd.randbytes(rnd.randrange(0, 300))))
            elif kind == "typed":
                items.append((kind, rnd.randrange(1, 5), rnd.choice([148, 92, 64, 40]), b""))
            elif kind == "valid":
                items.append((kind, rnd.randrange(0, 3), rnd.randrange(10**6), b""))
                total_valid += 1
            elif kind == "index":
                items.append((kind, rnd.randrange(0, 2**64), rnd.randrange(32, 1600), b""))
            else:                                   # trunc, flip (inner kind, position), dup
                items.append((kind, rnd.randrange(0, 3), rnd.randrange(10**6), b""))
        _check_batch(session, items)
    assert session.b.counters()["rx_packets"] == total_valid
    _still_works(session)


@settings(max_examples=100, deadline=None)
@given(inners=st.lists(st.tuples(st.binary(min_size=1, max_size=1500), st.booleans()),
                       max_size=20),
       seed=st.integers(0, 2**32))
def test_encrypt_of_arbitrary_inner_bytes(inners: list[tuple[bytes, bool]], seed: int) -> None:
    # The send path gets bytes from the local IP layer or the application; any of them yields
    # a send result code, and whatever was sealed opens at B as a prefix of what was sent or a
    # drop for a bad inner packet.
    session = Session(seed)
    batch = PacketBatch(max(1, len(inners)), 2048)
    for p, pinned in inners:
        batch.add_packet(p, session.slot_b if pinned else None)
    sealed = session.a.encrypt(batch, NOW)
    results = batch.results()
    assert set(results) <= TX_RESULTS
    assert sealed == results.count(RES_SEALED)
    rx = PacketBatch(max(1, len(inners)), 2048)
    for i, r in enumerate(results):
        if r == RES_SEALED:
            rx.add_datagram(batch.datagram(i), ADDR_A)
    session.b.decrypt(rx, NOW)
    opened = [i for i, r in enumerate(results) if r == RES_SEALED]
    for j, i in enumerate(opened):
        r = rx.result(j)
        assert r in {RES_DATA, RESULT["DROP_BAD_INNER_IP"], RESULT["DROP_SOURCE_NOT_ALLOWED"]}
        if r == RES_DATA:
            assert inners[i][0].startswith(rx.inner(j)) or (
                rx.inner(j).startswith(inners[i][0])
                and rx.inner(j)[len(inners[i][0]):] == bytes(len(rx.inner(j)) - len(inners[i][0])))
    _still_works(session)
