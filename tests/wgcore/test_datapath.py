"""The batch data path (_wgcore.datapath): two Datapaths back to back in memory.

A and B each hold a mirrored Keypair for the other; A's sealed datagrams are copied into a
receive batch of B. Checked against wireguard.md §3.4 (layout), §6 (padding, counters),
§7.3 (rekey), §9 (receive checks in order), §11 (roaming), and against the pure-Python
reference ``agentconn.wg.crypto.aead_encrypt`` byte for byte.
"""
from __future__ import annotations

import random
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _wgcore.datapath import EVENTS, RESULT, Datapath, PacketBatch, PeerSlot
from _wgcore.keypair import Keypair
from agentconn.net.wire.checksum import checksum
from agentconn.wg import crypto

RES_DATA = RESULT["DATA"]
RES_KEEPALIVE = RESULT["KEEPALIVE"]
RES_HANDSHAKE = RESULT["HANDSHAKE"]
RES_PENDING = RESULT["PENDING"]
RES_SEALED = RESULT["SEALED"]
RES_STAGE = RESULT["STAGE"]
DROP_SHORT = RESULT["DROP_SHORT"]
DROP_TYPE = RESULT["DROP_BAD_TYPE"]
DROP_NO_KEYPAIR = RESULT["DROP_UNKNOWN_INDEX"]
DROP_EXPIRED = RESULT["DROP_EXPIRED_KEYPAIR"]
DROP_AUTH = RESULT["DROP_AUTH_FAILED"]
DROP_REPLAY = RESULT["DROP_REPLAY"]
DROP_IP = RESULT["DROP_BAD_INNER_IP"]
DROP_SOURCE = RESULT["DROP_SOURCE_NOT_ALLOWED"]
DROP_NO_ROUTE = RESULT["DROP_NO_ROUTE"]
DROP_TOO_BIG = RESULT["DROP_TOO_BIG"]

EV_SENT_DATA = EVENTS["SENT_DATA"]
EV_SENT_ANY = EVENTS["SENT_ANY"]
EV_RECEIVED_DATA = EVENTS["RECEIVED_DATA"]
EV_RECEIVED_ANY = EVENTS["RECEIVED_ANY"]
EV_WANT_HANDSHAKE = EVENTS["WANT_HANDSHAKE"]
EV_ENDPOINT_CHANGED = EVENTS["ENDPOINT_CHANGED"]

REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
REKEY_AFTER_MESSAGES = 2**60
HEADER = struct.Struct("<IIQ")
SLOT = 2048
NOW = 1000.0


def sockaddr_in(ip: str, port: int) -> bytes:
    return (struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip)
            + bytes(8))


ADDR_A = sockaddr_in("192.0.2.1", 51820)
ADDR_A2 = sockaddr_in("198.51.100.7", 40000)
ADDR_A3 = sockaddr_in("203.0.113.9", 41000)
ADDR_B = sockaddr_in("192.0.2.2", 51821)
IP_A4, IP_B4, IP_C4 = (socket.inet_aton(f"10.0.0.{i}") for i in (1, 2, 3))
IP_A6, IP_B6, IP_C6 = (socket.inet_pton(socket.AF_INET6, f"fd00::{i}") for i in (1, 2, 3))
IP_OTHER4 = socket.inet_aton("10.9.9.9")
IP_OTHER6 = socket.inet_pton(socket.AF_INET6, "fd00::99")


def ipv4(src: bytes, dst: bytes, payload: bytes, total: int | None = None,
         version_ihl: int = 0x45) -> bytes:
    length = 20 + len(payload) if total is None else total
    header = bytearray(struct.pack("!BBHHHBBH4s4s", version_ihl, 0, length, 0x1234, 0x4000, 64,
                                   253, 0, src, dst))
    header[10:12] = struct.pack("!H", checksum(header))
    return bytes(header) + payload


def ipv6(src: bytes, dst: bytes, payload: bytes, payload_len: int | None = None) -> bytes:
    length = len(payload) if payload_len is None else payload_len
    return struct.pack("!IHBB16s16s", 0x60000000, length, 59, 64, src, dst) + payload


def packet(v6: bool, size: int, rnd: random.Random, src: bytes | None = None,
           dst: bytes | None = None) -> bytes:
    """An inner IP packet of exactly `size` bytes from A to B (unless src/dst say otherwise)."""
    if v6:
        return ipv6(src or IP_A6, dst or IP_B6, rnd.randbytes(size - 40))
    return ipv4(src or IP_A4, dst or IP_B4, rnd.randbytes(size - 20))


def padded_len(length: int, mtu: int) -> int:
    return min((length + 15) // 16 * 16, mtu)


class Pair:
    """Datapaths A (10.0.0.1, fd00::1) and B (10.0.0.2, fd00::2) with one session between them.

    ``slot_b`` is A's PeerSlot for B, ``slot_a`` is B's PeerSlot for A.
    """

    def __init__(self, *, mtu: int = 1420, seed: int = 0, created: float = NOW) -> None:
        rnd = random.Random(seed)
        self.key_ab, self.key_ba = rnd.randbytes(32), rnd.randbytes(32)
        self.index_a, self.index_b = rnd.getrandbits(32), rnd.getrandbits(32) | 1
        if self.index_a == self.index_b:
            self.index_a ^= 2
        self.mtu = mtu
        self.a, self.b = Datapath(mtu), Datapath(mtu)
        self.slot_b, self.slot_a = PeerSlot(2), PeerSlot(1)
        self.kp_a = Keypair(self.key_ab, self.key_ba, self.index_a, self.index_b, True, created)
        self.kp_b = Keypair(self.key_ba, self.key_ab, self.index_b, self.index_a, False, created)
        self.a.add_keypair(self.kp_a, self.slot_b)
        self.slot_b.set_current(self.kp_a)
        self.slot_b.endpoint = ADDR_B
        self.b.add_keypair(self.kp_b, self.slot_a)
        self.slot_a.set_current(self.kp_b)
        self.slot_a.endpoint = ADDR_A
        self.a.set_routes([(IP_B4, 32, self.slot_b), (IP_B6, 128, self.slot_b)])
        self.b.set_routes([(IP_A4, 32, self.slot_a), (IP_A6, 128, self.slot_a)])

    def encrypt_a(self, packets: list[bytes], now: float = NOW) -> PacketBatch:
        batch = PacketBatch(max(1, len(packets)), SLOT)
        for p in packets:
            batch.add_packet(p)
        self.a.encrypt(batch, now)
        return batch

    def seal_a(self, packets: list[bytes], now: float = NOW) -> list[bytes]:
        """A's sealed datagrams for `packets` (all must seal)."""
        batch = self.encrypt_a(packets, now)
        assert batch.results() == [RES_SEALED] * len(packets)
        return [batch.datagram(i) for i in range(batch.count)]

    def seal_forced(self, plaintext_packet: bytes, now: float = NOW) -> bytes:
        """Seal any bytes towards B, bypassing A's routing (for bad inner packets)."""
        batch = PacketBatch(1, SLOT)
        batch.add_packet(plaintext_packet, self.slot_b)
        assert self.a.encrypt(batch, now) == 1
        return batch.datagram(0)

    def decrypt_b(self, datagrams: list[bytes], now: float = NOW,
                  source: bytes = ADDR_A) -> PacketBatch:
        batch = PacketBatch(max(1, len(datagrams)), max(SLOT, *map(len, datagrams), 32))
        for d in datagrams:
            batch.add_datagram(d, source)
        self.b.decrypt(batch, now)
        return batch


def drops(dp: Datapath) -> dict[str, int]:
    return {name: n for name, n in dp.counters()["drops"].items() if n}


# -- round trip, padding, reference -------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.tuples(st.booleans(), st.integers(0, 10**6)), min_size=1, max_size=64),
       mtu=st.sampled_from([1420, 1280, 1421, 1500]), seed=st.integers(0, 2**32),
       start=st.sampled_from([0, 1, 2**32 - 3, REKEY_AFTER_MESSAGES - 70]))
def test_round_trip_agrees_with_reference(shape: list[tuple[bool, int]], mtu: int, seed: int,
                                          start: int) -> None:
    rnd = random.Random(seed)
    pair = Pair(mtu=mtu, seed=seed)
    pair.kp_a.send_counter = start
    packets = []
    for v6, n in shape:
        low = 40 if v6 else 20
        packets.append(packet(v6, low + n % (mtu - low + 1), rnd))
    tx = pair.encrypt_a(packets)
    assert tx.results() == [RES_SEALED] * len(packets)
    for i, p in enumerate(packets):
        d = tx.datagram(i)
        padded = padded_len(len(p), mtu)
        assert len(d) == 32 + padded
        counter = start + i
        assert d[:16] == HEADER.pack(4, pair.index_b, counter)
        assert d[16:] == crypto.aead_encrypt(pair.key_ab, counter, p + bytes(padded - len(p)), b"")
        assert tx.address(i) == ADDR_B
        assert tx.peer(i) is pair.slot_b
    assert pair.kp_a.send_counter == start + len(packets)
    sizes = [len(tx.datagram(i)) for i in range(tx.count)]
    counters = pair.a.counters()
    assert (counters["tx_packets"], counters["tx_bytes"]) == (len(packets), sum(sizes))

    rx = pair.decrypt_b([tx.datagram(i) for i in range(tx.count)])
    assert rx.results() == [RES_DATA] * len(packets)
    assert [rx.inner(i) for i in range(rx.count)] == packets
    assert all(rx.peer(i) is pair.slot_a for i in range(rx.count))
    counters = pair.b.counters()
    assert (counters["rx_packets"], counters["rx_bytes"]) == (len(packets), sum(sizes))
    assert pair.slot_a.counters() == {"rx_bytes": sum(sizes), "rx_packets": len(packets),
                                      "tx_bytes": 0, "tx_packets": 0}
    assert drops(pair.a) == {} and drops(pair.b) == {}


@pytest.mark.parametrize("length,expected", [
    (20, 32), (21, 32), (32, 32), (33, 48), (40, 48), (48, 48), (1279, 1280), (1280, 1280),
    (1404, 1408), (1405, 1408), (1408, 1408), (1409, 1420), (1419, 1420), (1420, 1420),
])
def test_padding_to_16_capped_at_mtu(length: int, expected: int) -> None:
    # wireguard.md §6 (wireguard-go calculatePaddingSize) with MTU 1420 (not a multiple of 16).
    pair = Pair(mtu=1420)
    p = packet(False, length, random.Random(length))
    (d,) = pair.seal_a([p])
    assert len(d) == 32 + expected
    assert crypto.aead_decrypt(pair.key_ab, 0, d[16:], b"") == p + bytes(expected - length)
    rx = pair.decrypt_b([d])
    assert rx.results() == [RES_DATA]
    assert rx.inner(0) == p                         # trimmed to the IPv4 total length


def test_decrypt_returns_number_of_data_packets() -> None:
    pair = Pair()
    rnd = random.Random(1)
    datagrams = pair.seal_a([packet(False, 100, rnd), packet(True, 200, rnd)])
    batch = PacketBatch(3, SLOT)
    for d in datagrams:
        batch.add_datagram(d, ADDR_A)
    ka = PacketBatch(1, SLOT)
    ka.add_keepalive(pair.slot_b)
    assert pair.a.encrypt(ka, NOW) == 1
    batch.add_datagram(ka.datagram(0), ADDR_A)
    assert pair.b.decrypt(batch, NOW) == 2
    assert batch.results() == [RES_DATA, RES_DATA, RES_KEEPALIVE]
    assert pair.b.decrypt(PacketBatch(1, SLOT), NOW) == 0


def test_encrypt_returns_number_sealed() -> None:
    pair = Pair()
    rnd = random.Random(2)
    batch = PacketBatch(4, SLOT)
    batch.add_packet(packet(False, 60, rnd))
    batch.add_packet(packet(False, 60, rnd, dst=IP_OTHER4))
    batch.add_packet(packet(True, 60, rnd))
    assert pair.a.encrypt(batch, NOW) == 2
    assert batch.results() == [RES_SEALED, DROP_NO_ROUTE, RES_SEALED]


def test_trims_to_inner_length_inside_padding() -> None:
    # An IPv4 total length shorter than the plaintext (padding) is trimmed; boringtun sends no
    # padding, so exact-length plaintexts must work too.
    pair = Pair()
    p = ipv4(IP_A4, IP_B4, b"\x01" * 10)
    for plaintext in (p, p + bytes(2), p + bytes(9)):
        rx = pair.decrypt_b([pair.seal_forced(plaintext)])
        assert rx.results() == [RES_DATA]
        assert rx.inner(0) == p
    v6 = ipv6(IP_A6, IP_B6, b"\x02" * 3)
    rx = pair.decrypt_b([pair.seal_forced(v6 + bytes(5))])
    assert (rx.results(), rx.inner(0)) == ([RES_DATA], v6)


# -- receive drops, one reason at a time ----------------------------------------------------


def test_unknown_receiver_index() -> None:
    pair = Pair()
    (d,) = pair.seal_a([packet(False, 64, random.Random(3))])
    forged = d[:4] + struct.pack("<I", pair.index_b ^ 0x80000000) + d[8:]
    rx = pair.decrypt_b([forged, d[:4] + struct.pack("<I", pair.index_a) + d[8:]])
    assert rx.results() == [DROP_NO_KEYPAIR, DROP_NO_KEYPAIR]
    assert drops(pair.b) == {"unknown_index": 2}
    assert pair.b.counters()["rx_packets"] == 0


def test_removed_keypair_is_unknown() -> None:
    pair = Pair()
    (d,) = pair.seal_a([packet(False, 64, random.Random(4))])
    pair.b.remove_keypair(pair.kp_b)
    assert pair.slot_a.current is None             # it was the current one
    assert pair.b.get_keypair(pair.index_b) is None
    assert pair.decrypt_b([d]).results() == [DROP_NO_KEYPAIR]
    # The index can be installed again (a new session with the same keys, for the test).
    fresh = Keypair(pair.key_ba, pair.key_ab, pair.index_b, pair.index_a, False, NOW)
    pair.b.add_keypair(fresh, pair.slot_a)
    assert pair.decrypt_b([d]).results() == [RES_DATA]
    assert drops(pair.b) == {"unknown_index": 1}


def test_zeroed_keypair_drops() -> None:
    pair = Pair()
    (d,) = pair.seal_a([packet(False, 64, random.Random(5))])
    pair.kp_b.zero()
    assert pair.decrypt_b([d]).results() == [DROP_NO_KEYPAIR]
    assert drops(pair.b) == {"unknown_index": 1}


def test_expired_keypair() -> None:
    pair = Pair(created=NOW)
    datagrams = pair.seal_a([packet(False, 64, random.Random(6))] * 2, now=NOW + 1)
    # wireguard.md §9: older than REJECT_AFTER_TIME (180 s) -> drop (wireguard-go: "created +
    # 180 s is before now"), checked before the AEAD and the replay window, so the same
    # datagram is still good for a younger clock.
    assert pair.decrypt_b([datagrams[0]], now=NOW + 180.25).results() == [DROP_EXPIRED]
    assert pair.decrypt_b([datagrams[0]], now=NOW + 1e6).results() == [DROP_EXPIRED]
    assert pair.decrypt_b(datagrams, now=NOW + 179.75).results() == [RES_DATA, RES_DATA]
    assert drops(pair.b) == {"expired_keypair": 2}


@pytest.mark.parametrize("where", ["counter", "ciphertext", "tag"])
def test_bad_authentication(where: str) -> None:
    pair = Pair()
    (d,) = pair.seal_a([packet(False, 100, random.Random(7))])
    offset = {"counter": 9, "ciphertext": 40, "tag": len(d) - 1}[where]
    forged = bytearray(d)
    forged[offset] ^= 0x10
    rx = pair.decrypt_b([bytes(forged), d])
    assert rx.results() == [DROP_AUTH, RES_DATA]
    assert drops(pair.b) == {"auth_failed": 1}
    assert pair.b.counters()["rx_packets"] == 1


def test_truncated_transport_message() -> None:
    pair = Pair()
    (d,) = pair.seal_a([packet(False, 100, random.Random(8))])
    rx = pair.decrypt_b([d[:31], d[:32], d[:-1], d + b"\0"])
    assert rx.results() == [DROP_SHORT, DROP_AUTH, DROP_AUTH, DROP_AUTH]
    assert drops(pair.b) == {"short": 1, "auth_failed": 3}


def test_replay() -> None:
    pair = Pair()
    rnd = random.Random(9)
    d1, d2 = pair.seal_a([packet(False, 64, rnd), packet(True, 64, rnd)])
    assert pair.decrypt_b([d2, d1, d2]).results() == [RES_DATA, RES_DATA, DROP_REPLAY]
    assert pair.decrypt_b([d1]).results() == [DROP_REPLAY]
    assert drops(pair.b) == {"replay": 2}
    assert pair.b.counters()["rx_packets"] == 2


def test_counter_beyond_reject_after_messages_is_dropped() -> None:
    pair = Pair()
    counter = REJECT_AFTER_MESSAGES
    forged = HEADER.pack(4, pair.index_b, counter) + crypto.aead_encrypt(
        pair.key_ab, counter, ipv4(IP_A4, IP_B4, b""), b"")
    assert pair.decrypt_b([forged]).results() == [DROP_REPLAY]
    assert drops(pair.b) == {"replay": 1}


def test_source_not_in_allowed_ips() -> None:
    pair = Pair()
    slot_c = PeerSlot(3)
    pair.b.set_routes([(IP_A4, 32, pair.slot_a), (IP_A6, 128, pair.slot_a),
                       (IP_C4, 32, slot_c), (IP_C6, 128, slot_c)])
    rnd = random.Random(10)
    bad = [
        packet(False, 60, rnd, src=IP_OTHER4),      # nobody's
        packet(False, 60, rnd, src=IP_C4),          # another peer's address
        packet(True, 60, rnd, src=IP_OTHER6),
        packet(True, 60, rnd, src=IP_C6),
    ]
    good = packet(False, 60, rnd)
    datagrams = pair.seal_a(bad + [good])
    rx = pair.decrypt_b(datagrams)
    assert rx.results() == [DROP_SOURCE] * 4 + [RES_DATA]
    assert rx.inner(4) == good
    assert drops(pair.b) == {"source_not_allowed": 4}


def test_allowed_ips_prefix() -> None:
    pair = Pair()
    pair.b.set_routes([(socket.inet_aton("10.0.0.0"), 24, pair.slot_a),
                       (socket.inet_pton(socket.AF_INET6, "fd00::"), 64, pair.slot_a)])
    rnd = random.Random(11)
    ok = [packet(False, 40, rnd, src=socket.inet_aton("10.0.0.77")),
          packet(True, 80, rnd, src=socket.inet_pton(socket.AF_INET6, "fd00::1234:5678"))]
    bad = [packet(False, 40, rnd, src=socket.inet_aton("10.0.1.1")),
           packet(True, 80, rnd, src=socket.inet_pton(socket.AF_INET6, "fd00:0:0:1::1"))]
    rx = pair.decrypt_b(pair.seal_a(ok + bad))
    assert rx.results() == [RES_DATA, RES_DATA, DROP_SOURCE, DROP_SOURCE]


def _linear_route(routes: list[tuple[bytes, int, PeerSlot]], address: bytes) -> PeerSlot | None:
    """The slow reference: the first of the longest prefixes covering `address`."""
    value = int.from_bytes(address, "big")
    bits = len(address) * 8
    best: tuple[int, PeerSlot] | None = None
    for net, plen, slot in routes:
        if len(net) != len(address):
            continue
        shift = bits - plen
        if (int.from_bytes(net, "big") >> shift) == (value >> shift) and (
                best is None or plen > best[0]):
            best = (plen, slot)
    return None if best is None else best[1]


_ROUTE = st.one_of(
    st.tuples(st.binary(min_size=4, max_size=4), st.sampled_from([0, 1, 8, 15, 16, 24, 31, 32])),
    st.tuples(st.binary(min_size=16, max_size=16),
              st.sampled_from([0, 7, 48, 64, 100, 127, 128])))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_ROUTE, st.integers(0, 3)), max_size=40),
       st.lists(st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16)),
                max_size=20),
       st.randoms(use_true_random=False))
def test_route_lookup_agrees_with_a_linear_scan(
        entries: list[tuple[tuple[bytes, int], int]], extra: list[bytes], rnd: random.Random,
) -> None:
    """The hashed per-prefix-length table (issue 14 item 5) answers like a linear
    longest-prefix scan, host bits set or not, duplicates included (the first one wins)."""
    slots = [PeerSlot(i + 1) for i in range(4)]
    routes = [(net, plen, slots[k]) for (net, plen), k in entries]
    dp = Datapath()
    dp.set_routes(routes)
    # Probe inside every route (random host bits) and at arbitrary addresses.
    probes = list(extra)
    for net, plen, _ in routes:
        host = rnd.getrandbits(len(net) * 8) & ((1 << (len(net) * 8 - plen)) - 1)
        value = (int.from_bytes(net, "big") >> (len(net) * 8 - plen) << (len(net) * 8 - plen)
                 if plen else 0) | host
        probes.append(value.to_bytes(len(net), "big"))
    for address in probes:
        assert dp.route(address) is _linear_route(routes, address)


def test_route_table_of_1000_host_routes_finds_each() -> None:
    dp = Datapath()
    slots = [PeerSlot(i + 1) for i in range(1000)]
    dp.set_routes([(struct.pack("!I", 0x64400000 + i), 32, slot) for i, slot in enumerate(slots)])
    for i in range(1000):
        assert dp.route(struct.pack("!I", 0x64400000 + i)) is slots[i]
    assert dp.route(struct.pack("!I", 0x64400000 + 1000)) is None


@pytest.mark.parametrize("plaintext", [
    ipv4(IP_A4, IP_B4, b"x" * 20, version_ihl=0x55),            # version 5
    bytes([0x00]) + bytes(47),                                  # version 0
    bytes([0xF0]) + bytes(47),                                  # version 15
    ipv4(IP_A4, IP_B4, b"x" * 40, total=100),                   # total length > plaintext
    ipv4(IP_A4, IP_B4, b"x" * 40, total=19),                    # total length < header
    ipv4(IP_A4, IP_B4, b"x" * 40, total=0),
    ipv4(IP_A4, IP_B4, b"")[:16],                               # 16-byte "IPv4" (padded 16)
    ipv6(IP_A6, IP_B6, b"x" * 8, payload_len=9),                # payload length > plaintext
    ipv6(IP_A6, IP_B6, b"", payload_len=0xFFFF),
    ipv6(IP_A6, IP_B6, b"")[:24],                               # 24-byte "IPv6" (padded 32)
], ids=["v5", "v0", "v15", "v4-total-too-long", "v4-total-19", "v4-total-0", "v4-short",
        "v6-length-too-long", "v6-length-max", "v6-short"])
def test_bad_inner_ip(plaintext: bytes) -> None:
    pair = Pair()
    good = packet(False, 100, random.Random(12))
    rx = pair.decrypt_b([pair.seal_forced(plaintext), pair.seal_forced(good)])
    assert rx.results() == [DROP_IP, RES_DATA]
    assert drops(pair.b) == {"bad_inner_ip": 1}


# -- handshake messages and framing ----------------------------------------------------------


def test_handshake_messages_go_to_the_control_path() -> None:
    pair = Pair()
    rnd = random.Random(13)
    messages = [b"\x01\0\0\0" + rnd.randbytes(144), b"\x02\0\0\0" + rnd.randbytes(88),
                b"\x03\0\0\0" + rnd.randbytes(60)]
    rx = pair.decrypt_b(messages, source=ADDR_A3)
    assert rx.results() == [RES_HANDSHAKE] * 3
    assert [(i, m, a, p) for i, m, a, p in rx.collect(RES_HANDSHAKE)] == [
        (i, m, ADDR_A3, None) for i, m in enumerate(messages)]
    assert drops(pair.b) == {}
    assert pair.b.counters()["rx_packets"] == 0
    assert pair.slot_a.endpoint == ADDR_A           # unauthenticated: no roaming


@pytest.mark.parametrize("kind,length", [
    (1, 147), (1, 149), (1, 92), (1, 64), (2, 91), (2, 93), (2, 148), (3, 63), (3, 65),
    (3, 148), (0, 148), (5, 148), (255, 92), (0x0101, 148), (0x01000001, 148), (0x0104, 64),
])
def test_wrong_type_or_length_is_dropped(kind: int, length: int) -> None:
    # wireguard.md §3: the 4-byte header is one u32 LE, so reserved bytes must be zero.
    pair = Pair()
    message = struct.pack("<I", kind) + bytes(random.Random(kind).randbytes(length - 4))
    assert pair.decrypt_b([message]).results() == [DROP_TYPE]
    assert drops(pair.b) == {"bad_type": 1}


@pytest.mark.parametrize("kind", [1, 2, 3, 4, 0])
def test_short_datagrams(kind: int) -> None:
    pair = Pair()
    datagrams = [struct.pack("<I", kind)[:n] + bytes(max(0, n - 4)) for n in range(32)]
    assert pair.decrypt_b(datagrams).results() == [DROP_SHORT] * 32
    assert drops(pair.b) == {"short": 32}


def test_drop_counters_count_each_reason_exactly() -> None:
    pair = Pair()
    rnd = random.Random(14)
    d = pair.seal_a([packet(False, 80, rnd) for _ in range(6)])
    bad_auth = bytearray(d[1])
    bad_auth[20] ^= 1
    batch = [
        d[0],                                               # data
        d[0],                                               # replay
        bytes(bad_auth),                                    # auth
        d[1][:4] + b"\xee\xee\xee\xee" + d[1][8:],          # unknown index
        d[2][:20],                                          # short
        b"\x07\0\0\0" + bytes(60),                          # type
        b"\x01\0\0\0" + bytes(144),                         # handshake
        pair.seal_forced(ipv4(IP_A4, IP_B4, b"", version_ihl=0x75) + bytes(12)),  # inner ip
        pair.seal_forced(packet(False, 60, rnd, src=IP_OTHER4)),                  # source
        d[3],                                               # data
    ]
    rx = pair.decrypt_b(batch)
    assert rx.results() == [RES_DATA, DROP_REPLAY, DROP_AUTH, DROP_NO_KEYPAIR, DROP_SHORT,
                            DROP_TYPE, RES_HANDSHAKE, DROP_IP, DROP_SOURCE, RES_DATA]
    assert pair.b.counters()["drops"] == {
        "short": 1, "bad_type": 1, "unknown_index": 1, "expired_keypair": 0, "auth_failed": 1,
        "replay": 1, "bad_inner_ip": 1, "source_not_allowed": 1, "no_route": 0,
        "truncated": 0, "too_big": 0, "send_failed": 0,
    }
    # wireguard-go counts authenticated packets whatever their inner check says.
    assert pair.b.counters()["rx_packets"] == 4
    # Same batch again: everything that was accepted is now a replay; counters accumulate.
    rx = pair.decrypt_b(batch[:1] + batch[7:])
    assert rx.results() == [DROP_REPLAY] * 4
    assert drops(pair.b)["replay"] == 5


def test_drop_counter_from_python() -> None:
    dp = Datapath()
    dp.drop(DROP_AUTH)
    dp.drop(DROP_AUTH)
    dp.drop(DROP_SHORT)
    dp.drop(0)
    dp.drop(-100)
    dp.drop(7)
    assert drops(dp) == {"auth_failed": 2, "short": 1}


# -- keepalives, events, stamps ---------------------------------------------------------------


def test_keepalive() -> None:
    pair = Pair()
    tx = PacketBatch(1, SLOT)
    tx.add_keepalive(pair.slot_b)
    assert pair.a.encrypt(tx, NOW + 1) == 1
    d = tx.datagram(0)
    assert len(d) == 32
    assert d == HEADER.pack(4, pair.index_b, 0) + crypto.aead_encrypt(pair.key_ab, 0, b"", b"")
    assert pair.slot_b.take_events() == EV_SENT_ANY
    assert (pair.slot_b.last_sent_any, pair.slot_b.last_sent_data) == (NOW + 1, -1e18)
    rx = pair.decrypt_b([d], now=NOW + 2)
    assert rx.results() == [RES_KEEPALIVE]
    assert rx.inner(0) == b""
    assert rx.peer(0) is pair.slot_a
    assert pair.slot_a.take_events() == EV_RECEIVED_ANY
    assert (pair.slot_a.last_received_any, pair.slot_a.last_received_data) == (NOW + 2, -1e18)
    assert pair.b.counters()["rx_packets"] == 1
    assert pair.decrypt_b([d]).results() == [DROP_REPLAY]


def test_data_events_and_stamps() -> None:
    pair = Pair()
    (d,) = pair.seal_a([packet(True, 300, random.Random(15))], now=NOW + 3)
    assert pair.slot_b.take_events() == EV_SENT_ANY | EV_SENT_DATA
    assert pair.slot_b.take_events() == 0
    assert (pair.slot_b.last_sent_any, pair.slot_b.last_sent_data) == (NOW + 3, NOW + 3)
    rx = pair.decrypt_b([d], now=NOW + 4)
    assert rx.touched_peers() == [pair.slot_a]
    assert pair.slot_a.take_events() == EV_RECEIVED_ANY | EV_RECEIVED_DATA
    assert (pair.slot_a.last_received_any, pair.slot_a.last_received_data) == (NOW + 4, NOW + 4)


def test_touched_peers_of_independent_batches() -> None:
    # Each batch must report every peer it touched, whatever other batches touched before:
    # here B's fresh transmit batch and B's fresh receive batch both touch slot_a once.
    pair = Pair()
    b_tx = PacketBatch(1, SLOT)
    b_tx.add_keepalive(pair.slot_a)
    assert pair.b.encrypt(b_tx, NOW) == 1
    assert b_tx.touched_peers() == [pair.slot_a]
    a_tx = PacketBatch(1, SLOT)
    a_tx.add_keepalive(pair.slot_b)
    pair.a.encrypt(a_tx, NOW)
    rx = PacketBatch(1, SLOT)
    rx.add_datagram(a_tx.datagram(0), ADDR_A)
    pair.b.decrypt(rx, NOW)
    assert rx.results() == [RES_KEEPALIVE]
    assert rx.touched_peers() == [pair.slot_a]


def test_touched_peers_once_per_batch() -> None:
    pair = Pair()
    slot_c = PeerSlot(3)
    pair.a.set_routes([(IP_B4, 32, pair.slot_b), (IP_C4, 32, slot_c)])
    rnd = random.Random(16)
    tx = PacketBatch(8, SLOT)
    for dst in (IP_B4, IP_C4, IP_B4, IP_C4, IP_B4):
        tx.add_packet(packet(False, 50, rnd, dst=dst))
    pair.a.encrypt(tx, NOW)
    assert tx.results() == [RES_SEALED, RES_STAGE, RES_SEALED, RES_STAGE, RES_SEALED]
    assert tx.touched_peers() == [pair.slot_b, slot_c]
    assert slot_c.take_events() == EV_WANT_HANDSHAKE


# -- send side: staging, routing, limits ------------------------------------------------------


def test_stage_without_current_keypair() -> None:
    pair = Pair()
    pair.slot_b.set_current(None)
    p = packet(False, 77, random.Random(17))
    tx = pair.encrypt_a([p])
    assert tx.results() == [RES_STAGE]
    assert tx.inner(0) == p                         # kept for Python to stage
    assert tx.peer(0) is pair.slot_b
    assert tx.collect(RES_STAGE) == [(0, p, b"", pair.slot_b)]
    assert pair.slot_b.take_events() & EV_WANT_HANDSHAKE
    assert pair.a.counters()["tx_packets"] == 0
    assert drops(pair.a) == {}
    ka = PacketBatch(1, SLOT)
    ka.add_keepalive(pair.slot_b)
    assert pair.a.encrypt(ka, NOW) == 0
    assert ka.results() == [RES_STAGE]


def test_stage_without_endpoint() -> None:
    pair = Pair()
    pair.slot_b.endpoint = b""
    assert pair.slot_b.endpoint == b""
    tx = pair.encrypt_a([packet(True, 77, random.Random(18))])
    assert tx.results() == [RES_STAGE]
    assert pair.slot_b.take_events() & EV_WANT_HANDSHAKE
    assert pair.kp_a.send_counter == 0              # nothing consumed
    pair.slot_b.endpoint = ADDR_B
    assert pair.encrypt_a([packet(True, 77, random.Random(18))]).results() == [RES_SEALED]


@pytest.mark.parametrize("how", ["expired", "zeroed", "exhausted"])
def test_stage_with_unusable_keypair(how: str) -> None:
    pair = Pair()
    now = NOW
    if how == "expired":
        now = NOW + 180.0
    elif how == "zeroed":
        pair.kp_a.zero()
    else:
        pair.kp_a.send_counter = REJECT_AFTER_MESSAGES
    tx = pair.encrypt_a([packet(False, 64, random.Random(19))], now=now)
    assert tx.results() == [RES_STAGE]
    assert pair.slot_b.take_events() & EV_WANT_HANDSHAKE


def test_last_counter_before_reject_after_messages() -> None:
    pair = Pair()
    pair.kp_a.send_counter = REJECT_AFTER_MESSAGES - 1
    p = packet(False, 64, random.Random(20))
    (d,) = pair.seal_a([p])
    assert d[8:16] == struct.pack("<Q", REJECT_AFTER_MESSAGES - 1)
    assert pair.decrypt_b([d]).results() == [RES_DATA]
    assert pair.encrypt_a([p]).results() == [RES_STAGE]


def test_no_route() -> None:
    pair = Pair()
    rnd = random.Random(21)
    tx = pair.encrypt_a([packet(False, 64, rnd, dst=IP_OTHER4), packet(True, 64, rnd,
                                                                        dst=IP_OTHER6),
                         packet(False, 64, rnd, dst=IP_B6[:4])])
    assert tx.results() == [DROP_NO_ROUTE] * 3
    assert tx.peer(0) is None
    assert drops(pair.a) == {"no_route": 3}
    assert pair.kp_a.send_counter == 0


@pytest.mark.parametrize("p", [ipv4(IP_A4, IP_B4, b"", version_ihl=0x55), b"\x45" + bytes(18),
                               b"\x60" + bytes(38), b"\x00" * 64])
def test_encrypt_bad_ip_without_peer(p: bytes) -> None:
    pair = Pair()
    assert pair.encrypt_a([p]).results() == [DROP_IP]
    assert drops(pair.a) == {"bad_inner_ip": 1}


def test_too_big() -> None:
    pair = Pair(mtu=1280)
    rnd = random.Random(22)
    tx = pair.encrypt_a([packet(False, 1281, rnd), packet(False, 1280, rnd)])
    assert tx.results() == [DROP_TOO_BIG, RES_SEALED]
    assert len(tx.datagram(1)) == 32 + 1280
    assert drops(pair.a) == {"too_big": 1}


def test_add_packet_checks_slot_room() -> None:
    batch = PacketBatch(2, 128)
    batch.add_packet(bytes(128 - 47))
    with pytest.raises(ValueError):
        batch.add_packet(bytes(128 - 46))
    batch.add_packet(bytes(1))
    with pytest.raises(OverflowError):
        batch.add_packet(bytes(1))


def test_explicit_peer_skips_routing() -> None:
    pair = Pair()
    p = packet(False, 64, random.Random(23), dst=IP_OTHER4)
    tx = PacketBatch(1, SLOT)
    tx.add_packet(p, pair.slot_b)
    assert pair.a.encrypt(tx, NOW) == 1
    assert pair.decrypt_b([tx.datagram(0)]).inner(0) == p


def test_empty_packet_without_peer_is_dropped_not_crash() -> None:
    # An empty inner packet with no peer chosen is not an IP packet: a drop code, not a crash.
    # (Run in a child: a NULL dereference would take the whole test session down.)
    code = textwrap.dedent("""
        from _wgcore.datapath import Datapath, PacketBatch, RESULT
        dp = Datapath()
        batch = PacketBatch(2, 2048)
        batch.add_packet(b"")
        print(dp.encrypt(batch, 0.0), batch.results() == [RESULT["DROP_BAD_INNER_IP"]],
              dp.counters()["drops"]["bad_inner_ip"])
    """)
    result = _child(code)
    assert (result.returncode, result.stdout.split()) == (0, ["0", "True", "1"]), result.stderr


def test_batch_keeps_its_peer_slots_alive() -> None:
    # A descriptor queued for a PeerSlot nobody else references must not leave a dangling
    # pointer: encrypt, peer() and touched_peers() use it after the caller dropped the slot.
    code = textwrap.dedent("""
        import gc
        from _wgcore.datapath import Datapath, PacketBatch, PeerSlot, RESULT
        dp = Datapath()
        batch = PacketBatch(2, 2048)
        batch.add_keepalive(PeerSlot(5))
        gc.collect()
        junk = [bytearray(400) for _ in range(1000)]
        dp.encrypt(batch, 0.0)
        slot = batch.peer(0)
        print(batch.results() == [RESULT["STAGE"]], slot.peer_id,
              [p.peer_id for p in batch.touched_peers()], slot.take_events())
    """)
    result = _child(code)
    assert (result.returncode, result.stdout.split()) == (0, ["True", "5", "[5]", "16"]), (
        result.stderr)


# -- rekey, roaming -------------------------------------------------------------------------


@pytest.mark.parametrize("start,want", [
    (REKEY_AFTER_MESSAGES - 2, False), (REKEY_AFTER_MESSAGES - 1, False),
    (REKEY_AFTER_MESSAGES, True), (REKEY_AFTER_MESSAGES + 5, True),
])
def test_rekey_after_messages(start: int, want: bool) -> None:
    # wireguard.md §7.3 keep-key-fresh (sending): the next counter is past REKEY_AFTER_MESSAGES.
    pair = Pair()
    pair.kp_a.send_counter = start
    pair.seal_a([packet(False, 64, random.Random(24))])
    assert bool(pair.slot_b.take_events() & EV_WANT_HANDSHAKE) is want


@pytest.mark.parametrize("initiator,age,want", [
    (True, 119.0, False), (True, 120.0, False), (True, 120.5, True), (True, 179.0, True),
    (False, 120.5, False), (False, 179.0, False),
])
def test_rekey_after_time(initiator: bool, age: float, want: bool) -> None:
    pair = Pair()
    kp = Keypair(pair.key_ab, pair.key_ba, 0x777, pair.index_b, initiator, NOW - age)
    pair.a.add_keypair(kp, pair.slot_b)
    pair.slot_b.set_current(kp)
    pair.seal_a([packet(False, 64, random.Random(25))])
    events = pair.slot_b.take_events()
    assert events & (EV_SENT_ANY | EV_SENT_DATA) == EV_SENT_ANY | EV_SENT_DATA
    assert bool(events & EV_WANT_HANDSHAKE) is want


def test_roaming_follows_authenticated_packets_only() -> None:
    pair = Pair()
    rnd = random.Random(26)
    d = pair.seal_a([packet(False, 64, rnd) for _ in range(5)])
    pair.slot_a.take_events()
    assert pair.decrypt_b([d[0]], source=ADDR_A2).results() == [RES_DATA]
    assert pair.slot_a.endpoint == ADDR_A2
    assert pair.slot_a.take_events() & EV_ENDPOINT_CHANGED
    forged = bytearray(d[1])
    forged[-1] ^= 1
    expired_kp = Keypair(b"k" * 32, b"k" * 32, 0x999, 1, False, NOW - 500)
    pair.b.add_keypair(expired_kp, pair.slot_a)
    expired = Keypair(b"k" * 32, b"k" * 32, 1, 0x999, True, NOW - 500).seal(
        ipv4(IP_A4, IP_B4, b""))
    invalid = [bytes(forged), d[0], d[1][:4] + b"\xab\xcd\xef\x01" + d[1][8:], d[1][:31],
               expired]
    rx = pair.decrypt_b(invalid, source=ADDR_A3)
    assert rx.results() == [DROP_AUTH, DROP_REPLAY, DROP_NO_KEYPAIR, DROP_SHORT, DROP_EXPIRED]
    assert pair.slot_a.endpoint == ADDR_A2
    assert pair.slot_a.take_events() == 0
    # B answers to where A is now.
    b_tx = PacketBatch(1, SLOT)
    b_tx.add_packet(packet(False, 64, rnd, src=IP_B4, dst=IP_A4))
    assert pair.b.encrypt(b_tx, NOW) == 1
    assert b_tx.address(0) == ADDR_A2
    # Several valid packets from different sources in one batch: the last one wins.
    batch = PacketBatch(3, SLOT)
    batch.add_datagram(d[2], ADDR_A3)
    batch.add_datagram(d[3], ADDR_A)
    batch.add_datagram(d[4], b"")                   # no source known: leaves it alone
    assert pair.b.decrypt(batch, NOW) == 3
    assert pair.slot_a.endpoint == ADDR_A


def test_roaming_on_keepalive_and_same_address_is_no_event() -> None:
    pair = Pair()
    ka = PacketBatch(2, SLOT)
    ka.add_keepalive(pair.slot_b)
    ka.add_keepalive(pair.slot_b)
    pair.a.encrypt(ka, NOW)
    pair.slot_a.take_events()
    assert pair.decrypt_b([ka.datagram(0)], source=ADDR_A).results() == [RES_KEEPALIVE]
    assert pair.slot_a.take_events() == EV_RECEIVED_ANY
    assert pair.decrypt_b([ka.datagram(1)], source=ADDR_A2).results() == [RES_KEEPALIVE]
    assert pair.slot_a.take_events() == EV_RECEIVED_ANY | EV_ENDPOINT_CHANGED
    assert pair.slot_a.endpoint == ADDR_A2


# -- index table ----------------------------------------------------------------------------


def test_add_keypair_rejects_duplicate_index() -> None:
    pair = Pair()
    pair.b.add_keypair(pair.kp_b, pair.slot_a)      # the same object again: no-op
    other = Keypair(bytes(32), bytes(32), pair.index_b, 1, False, NOW)
    with pytest.raises(KeyError):
        pair.b.add_keypair(other, pair.slot_a)
    assert pair.b.get_keypair(pair.index_b) is pair.kp_b
    assert pair.b.index_in_use(pair.index_b)


def _child(code: str) -> subprocess.CompletedProcess[str]:
    # Import _wgcore from wherever this process got it (src/ in development, the installed
    # wheel under scripts/test.sh).
    import _wgcore

    site = Path(_wgcore.__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          timeout=10, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})


def test_many_keypairs_all_reachable() -> None:
    # Thousands of sessions (a busy server): every index stays reachable as the table grows.
    code = textwrap.dedent("""
        from _wgcore.datapath import Datapath, PacketBatch, PeerSlot, RESULT
        from _wgcore.keypair import Keypair
        dp, slot, receivers, senders = Datapath(), PeerSlot(1), [], []
        for i in range(3000):
            key = i.to_bytes(32, "little")
            receivers.append(Keypair(key, key, i * 7919 + 1, i, False, 0.0))
            dp.add_keypair(receivers[-1], slot)
            senders.append(Keypair(key, key, i, i * 7919 + 1, True, 0.0))
        batch = PacketBatch(len(senders), 64)
        for sender in senders:
            batch.add_datagram(sender.seal(b""))
        dp.decrypt(batch, 0.0)
        print(batch.results().count(RESULT["KEEPALIVE"]))
    """)
    try:
        result = _child(code)
    except subprocess.TimeoutExpired:
        pytest.fail("adding 3000 keypairs hung (index table rebuild)")
    assert (result.returncode, result.stdout.split()) == (0, ["3000"]), result.stderr


def test_index_table_survives_churn() -> None:
    # Rekeying many peers leaves tombstones; the rebuild they trigger must keep every live
    # keypair reachable (and must not hang: run in a child with a timeout).
    code = textwrap.dedent("""
        from _wgcore.datapath import Datapath, PacketBatch, PeerSlot, RESULT
        from _wgcore.keypair import Keypair
        dp, slot, live = Datapath(), PeerSlot(1), {}
        def add(i):
            key = i.to_bytes(32, "little")
            live[i] = (Keypair(key, key, i, i, False, 0.0), Keypair(key, key, i, i, True, 0.0))
            dp.add_keypair(live[i][0], slot)
        for i in range(1, 301):
            add(i)
        for i in range(1, 601):               # 600 rekeys: remove one, add one
            dp.remove_keypair(live.pop(i)[0])
            add(300 + i)
        batch = PacketBatch(len(live), 64)
        for receiver, sender in live.values():
            batch.add_datagram(sender.seal(b""))
        dp.decrypt(batch, 0.0)
        print(len(live), batch.results().count(RESULT["KEEPALIVE"]))
    """)
    try:
        result = _child(code)
    except subprocess.TimeoutExpired:
        pytest.fail("add_keypair/remove_keypair churn hung (index table rebuild)")
    assert (result.returncode, result.stdout.split()) == (0, ["300", "300"]), result.stderr


def test_disco_and_stun_datagrams_are_marked_for_python() -> None:
    """Disco ("TS💬", ≥ 62 bytes) and STUN binding responses (0x0101 + magic cookie) sharing
    the WireGuard socket get RES_DISCO and bump ``disco_rx`` (the tunnel polls that once per
    batch); anything else that is not WireGuard stays a counted bad_type drop."""
    import ipaddress

    from agentconn.coder import stun
    from agentconn.coder.disco import MAGIC

    dp = Datapath(1420)
    rx = PacketBatch(8, 2048)
    source = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 9) + bytes(12)
    disco = MAGIC + bytes(56) + b"x" * 40
    short_disco = MAGIC + bytes(50)                   # < 62 bytes: not disco
    stun_resp = stun.binding_response(bytes(12), (ipaddress.ip_address("127.0.0.1"), 5))
    stun_req = stun.binding_request(bytes(12))        # a request is not ours to answer here
    garbage = b"\xff" * 64
    for d in (disco, short_disco, stun_resp, stun_req, garbage):
        rx.add_datagram(d, source)
    dp.decrypt(rx, 0.0)
    res = RESULT
    assert rx.results() == [res["DISCO"], res["DROP_BAD_TYPE"], res["DISCO"],
                            res["DROP_BAD_TYPE"], res["DROP_BAD_TYPE"]]
    assert dp.disco_rx == 2
    assert dp.counters()["drops"]["bad_type"] == 3
    got = [payload for _, payload, _, _ in rx.collect(res["DISCO"])]
    assert got == [disco, stun_resp]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(0, 2**32 - 1), st.none()),
                          st.binary(min_size=1, max_size=64)), max_size=12))
def test_collect_relayed_matches_collect_and_relay_path(
        items: list[tuple[int | None, bytes]]) -> None:
    # The tunnel's relay hand-off: (path, datagram) of each relay-addressed RES_RAW/RES_SEALED
    # descriptor, exactly what collect() + wg.endpoint.relay_path give, UDP ones skipped.
    from agentconn.wg.endpoint import relay_path, relay_sockaddr, sockaddr
    batch = PacketBatch(16, 128)
    udp = sockaddr("127.0.0.1", 9, socket.AF_INET)
    for path, datagram in items:
        batch.add_raw(datagram, udp if path is None else relay_sockaddr(path))
    want = []
    for result in (RESULT["RAW"], RES_SEALED):
        for _, datagram, addr, _ in batch.collect(result):
            path = relay_path(addr)
            if path is not None:
                want.append((path, datagram))
    assert batch.collect_relayed() == want
    assert want == [(p, d) for p, d in items if p is not None]
