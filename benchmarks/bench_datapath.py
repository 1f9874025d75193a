"""Data path throughput against raw libsodium, and handshakes per second (STYLE §12).

(a) ours: ``Datapath.encrypt`` of a batch of 128 inner IPv4 packets then ``Datapath.decrypt`` of
    the sealed datagrams, in place on one PacketBatch (seal + open + header, counters, index
    lookup, replay window, padding, inner-IP and allowed-IPs checks); ``rearm`` between rounds
    (untimed) turns the opened packets back into pending ones.
(b) raw: ``bench_raw_libsodium`` (benchmarks/_rawsodium.pyx, compiled on first use by _build.py
    against _wgcore's .pxd files): crypto_aead_chacha20poly1305_ietf_encrypt
    then _decrypt on the same number of buffers of the same size in a C loop, through the same
    function pointers. Measured two ways: one batch per call under pytest-benchmark (the same
    method as (a)), and the function's own C-loop timer over many batches.
Throughput is inner payload bits per second with both ends of the tunnel on one core.

(c) handshakes: initiation -> mac1 check -> consume -> response -> mac1 check -> consume ->
    derive keys on both sides, between two ``agentconn.wg.noise.Handshake`` objects.
"""
from __future__ import annotations

import itertools
import socket
import struct
from typing import Any

import pytest

from _wgcore.datapath import RESULT, Datapath, PacketBatch, PeerSlot, rearm
from _wgcore.keypair import Keypair
from agentconn.wg.cookie import CookieChecker, CookieGenerator
from agentconn.wg.crypto import dh_generate
from agentconn.wg.keys import StaticIdentity
from agentconn.wg.noise import Handshake, consume_initiation

BATCH = 128
MTU = 1420
NOW = 10.0
ROUNDS = 400
SIZES = [1280, 1420]
IP_A, IP_B = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
ENDPOINT = (struct.pack("=H", socket.AF_INET) + struct.pack("!H", 51820)
            + socket.inet_aton("127.0.0.1") + bytes(8))


def median_seconds(benchmark: Any) -> float:
    return float(benchmark.stats.stats.median)


def ipv4(size: int, i: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, i & 0xFFFF, 0x4000, 64, 17, 0, IP_A, IP_B)
    return header + bytes((i + k) & 0xFF for k in range(size - 20))


class Tunnel:
    """Two Datapaths with one session; the batch is sealed by A and opened by B in place."""

    def __init__(self, size: int) -> None:
        k1, k2 = bytes(range(32)), bytes(range(32, 64))
        self.a, self.b = Datapath(MTU), Datapath(MTU)
        self.slot_b, self.slot_a = PeerSlot(2), PeerSlot(1)
        self.kp_a = Keypair(k1, k2, 0x1111, 0x2222, True, NOW)
        self.kp_b = Keypair(k2, k1, 0x2222, 0x1111, False, NOW)
        self.a.add_keypair(self.kp_a, self.slot_b)
        self.b.add_keypair(self.kp_b, self.slot_a)
        for slot, kp in ((self.slot_b, self.kp_a), (self.slot_a, self.kp_b)):
            slot.set_current(kp)
            slot.endpoint = ENDPOINT       # decrypt in place sees the send address as source
        self.a.set_routes([(IP_B, 32, self.slot_b)])
        self.b.set_routes([(IP_A, 32, self.slot_a)])
        self.batch = PacketBatch(BATCH, 2048)
        self.packets = [ipv4(size, i) for i in range(BATCH)]
        for p in self.packets:
            self.batch.add_packet(p)

    def round_trip(self) -> None:
        self.a.encrypt(self.batch, NOW)
        self.b.decrypt(self.batch, NOW)

    def rearm(self) -> None:
        rearm(self.batch)

    def check(self) -> None:
        """Every packet came back intact (run untimed, before and after measuring)."""
        assert self.batch.results() == [RESULT["DATA"]] * BATCH
        assert [self.batch.inner(i) for i in range(BATCH)] == self.packets


@pytest.mark.parametrize("size", SIZES)
def test_ours_encrypt_decrypt(benchmark: Any, record: Any, size: int) -> None:
    tunnel = Tunnel(size)
    tunnel.round_trip()
    tunnel.check()
    benchmark.group = f"seal+open {BATCH} x {size} B"
    benchmark.pedantic(tunnel.round_trip, setup=tunnel.rearm, rounds=ROUNDS, warmup_rounds=20)
    tunnel.check()
    drops = tunnel.b.counters()["drops"]
    assert sum(drops.values()) == 0, drops
    if benchmark.disabled:
        return
    # Every timed round really sealed and opened the whole batch.
    assert tunnel.b.counters()["rx_packets"] == BATCH * (1 + 20 + ROUNDS)
    record.add(benchmark, group=benchmark.group, name="ours: Datapath.encrypt+decrypt",
               seconds=median_seconds(benchmark), packets=BATCH, payload_bytes=BATCH * size,
               role="ours")


@pytest.fixture(scope="module")
def bench_raw_libsodium() -> Any:
    from _build import load_cython_module

    return load_cython_module("_rawsodium").bench_raw_libsodium


@pytest.mark.parametrize("size", SIZES)
def test_raw_libsodium(benchmark: Any, record: Any, size: int, bench_raw_libsodium: Any) -> None:
    benchmark.group = f"seal+open {BATCH} x {size} B"
    benchmark.pedantic(bench_raw_libsodium, args=(BATCH, size, 1), rounds=ROUNDS,
                       warmup_rounds=20)
    if benchmark.disabled:
        return
    record.add(benchmark, group=benchmark.group, name="raw libsodium, one call per batch",
               seconds=median_seconds(benchmark), packets=BATCH, payload_bytes=BATCH * size,
               role="raw", short="raw per call")
    # The same loop timed inside C over many batches: the ceiling with no Python at all.
    inner = min(bench_raw_libsodium(BATCH, size, ROUNDS) for _ in range(3)) / ROUNDS
    record.add(benchmark, group=benchmark.group, name="raw libsodium, C-loop timer",
               seconds=inner, packets=BATCH, payload_bytes=BATCH * size, role="raw",
               short="raw C loop")


class HandshakePair:
    """Two peers' handshake state, cookie generators and checkers, with a fake clock."""

    def __init__(self) -> None:
        self.initiator = StaticIdentity(dh_generate())
        self.responder = StaticIdentity(dh_generate())
        self.hs_i = Handshake(self.initiator, self.responder.public)
        self.hs_r = Handshake(self.responder, self.initiator.public)
        self.macs_i = CookieGenerator(self.responder.public)
        self.macs_r = CookieGenerator(self.initiator.public)
        self.check_i = CookieChecker(self.initiator.public)
        self.check_r = CookieChecker(self.responder.public)
        self.clock = itertools.count(1)
        self.indices = itertools.count(1)
        self.under_load = False

    def lookup(self, public: bytes) -> bytes | None:
        return self.hs_r.precomputed_static_static if public == self.initiator.public else None

    def get_cookie(self) -> None:
        """Under load: the first initiation gets a cookie reply; later ones carry mac2."""
        now = 0.0
        m1 = self.hs_i.create_initiation(0, 1_600_000_000.0)
        self.macs_i.add_macs(m1, now)
        assert not self.check_r.check_mac2(m1, ENDPOINT, now)
        reply = self.check_r.create_reply(m1, ENDPOINT, now)
        assert self.macs_i.consume_reply(reply, now)
        self.under_load = True

    def handshake(self) -> None:
        t = next(self.clock)
        # 50 ms apart: past the 20 ms flood limit, and 300 rounds stay within the cookie's
        # 120 s lifetime.
        now, unix = t * 0.05, 1_700_000_000.0 + t
        m1 = self.hs_i.create_initiation(next(self.indices), unix)
        self.macs_i.add_macs(m1, now)
        assert self.check_r.check_mac1(m1)
        if self.under_load:
            assert self.check_r.check_mac2(m1, ENDPOINT, now)
        consumed = consume_initiation(self.responder, m1, self.lookup)
        assert consumed is not None and self.hs_r.accept_initiation(consumed, now)
        m2 = self.hs_r.create_response(next(self.indices))
        self.macs_r.add_macs(m2, now)
        assert self.check_i.check_mac1(m2)
        assert self.hs_i.consume_response(m2)
        keys_i, keys_r = self.hs_i.derive_keys(), self.hs_r.derive_keys()
        assert keys_i.send_key == keys_r.receive_key and keys_i.receive_key == keys_r.send_key


@pytest.mark.parametrize("load", ["normal", "under-load"])
def test_handshakes_per_second(benchmark: Any, record: Any, load: str) -> None:
    pair = HandshakePair()
    if load == "under-load":
        pair.get_cookie()
    benchmark.group = "handshake"
    benchmark.pedantic(pair.handshake, rounds=300, warmup_rounds=10)
    if benchmark.disabled:
        return
    name = "initiation->response->keys, mac1" + (" + mac2" if pair.under_load else "")
    record.add(benchmark, group="handshake", name=name, seconds=median_seconds(benchmark))
