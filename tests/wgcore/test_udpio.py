"""UdpIO (_wgcore.udpio) on real loopback UDP sockets (127.0.0.1 only).

Sealed transport messages from a Datapath leave through ``UdpIO.send`` (sendmmsg, UDP_SEGMENT
coalescing of same-size runs to one destination: wireguard.md §13) and arrive through
``UdpIO.recv`` (recvmmsg, UDP_GRO buffers split at the segment size) on another socket, with the
right lengths, boundaries, order and source address, then decrypt to the packets that were sent.
Every combination of GSO on the sender and GRO on the receiver must deliver the same datagrams.
"""
from __future__ import annotations

import random
import select
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from _wgcore.datapath import RESULT, Datapath, PacketBatch, PeerSlot
from _wgcore.keypair import Keypair
from _wgcore.udpio import UdpIO

RES_EMPTY = RESULT["EMPTY"]
RES_DATA = RESULT["DATA"]
RES_SEALED = RESULT["SEALED"]
RES_RAW = RESULT["RAW"]
DROP_TRUNCATED = RESULT["DROP_TRUNCATED"]
DROP_SEND = RESULT["DROP_SEND_FAILED"]
MTU = 1420
NOW = 100.0
GRO_SLOT = 65536
IP_A4, IP_B4 = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65000


def sockaddr_of(sock: socket.socket) -> bytes:
    host, port = sock.getsockname()
    return (struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host)
            + bytes(8))


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    """Sender, receiver and a second receiver, non-blocking, on 127.0.0.1."""
    socks = []
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    yield socks[0], socks[1], socks[2]
    for s in socks:
        s.close()


class Link:
    """A seals towards `dest`; B holds the mirrored keypair to check what arrives."""

    def __init__(self, dest: bytes, seed: int = 0) -> None:
        rnd = random.Random(seed)
        self.rnd = rnd
        k1, k2 = rnd.randbytes(32), rnd.randbytes(32)
        self.a, self.b = Datapath(MTU), Datapath(MTU)
        self.slot_b, self.slot_a = PeerSlot(2), PeerSlot(1)
        self.kp_a = Keypair(k1, k2, 0x1111, 0x2222, True, NOW)
        self.kp_b = Keypair(k2, k1, 0x2222, 0x1111, False, NOW)
        self.a.add_keypair(self.kp_a, self.slot_b)
        self.slot_b.set_current(self.kp_a)
        self.slot_b.endpoint = dest
        self.b.add_keypair(self.kp_b, self.slot_a)
        self.slot_a.set_current(self.kp_b)
        self.a.set_routes([(IP_B4, 32, self.slot_b)])
        self.b.set_routes([(IP_A4, 32, self.slot_a)])

    def packet(self, size: int) -> bytes:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 7, 0, 64, 17, 0, IP_A4,
                           IP_B4) + self.rnd.randbytes(size - 20)

    def sealed_batch(self, inner_sizes: list[int]) -> tuple[PacketBatch, list[bytes]]:
        batch = PacketBatch(len(inner_sizes), 2048)
        packets = []
        for size in inner_sizes:
            if size:
                packets.append(self.packet(size))
                batch.add_packet(packets[-1])
            else:
                packets.append(b"")
                batch.add_keepalive(self.slot_b)
        assert self.a.encrypt(batch, NOW) == len(inner_sizes)
        return batch, packets


def receive(io: UdpIO, sock: socket.socket, expected: int, slot_size: int = GRO_SLOT,
            ) -> list[tuple[int, bytes, bytes]]:
    """(result, datagram, source) of everything that arrives, until `expected` datagrams came.

    The deadline only bounds a failing run; nothing is asserted about time.
    """
    out: list[tuple[int, bytes, bytes]] = []
    batch = PacketBatch(8, slot_size, 8 * MAX_GSO_SEGMENTS)
    deadline = time.monotonic() + 10
    while len(out) < expected and time.monotonic() < deadline:
        if io.recv(batch) == 0:
            select.select([sock], [], [], 0.2)
            continue
        out += [(batch.result(i), batch.datagram(i), batch.address(i))
                for i in range(batch.count)]
    return out


def gso_runs(lengths: list[int], destinations: list[bytes]) -> int:
    """How many multi-datagram sends the coalescing rule of wireguard.md §13 makes."""
    runs = 0
    size = count = total = 0
    head: bytes | None = None
    for length, dest in zip(lengths, destinations, strict=True):
        if (head == dest and count < MAX_GSO_SEGMENTS and total + length <= MAX_GSO_BYTES
                and length <= size):
            count += 1
            total += length
            if count == 2:
                runs += 1
            if length < size:
                head = None
            continue
        head, size, count, total = dest, length, 1, length
    return runs


SIZES = ([1420] * 10 + [100] + [1420] * 3 + [700, 700, 700, 64, 0, 0, 1419, 1420, 20]
         + [333] * 5 + [1400])


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
@pytest.mark.parametrize("gro", [True, False], ids=["gro", "no-gro"])
def test_batch_arrives_whole(sockets: tuple[socket.socket, ...], gso: bool, gro: bool) -> None:
    sender, receiver, _ = sockets
    tx_io, rx_io = UdpIO(sender, gro=gso, gso=gso), UdpIO(receiver, gro=gro, gso=gro)
    link = Link(sockaddr_of(receiver))
    batch, packets = link.sealed_batch(SIZES)
    sent = [batch.datagram(i) for i in range(batch.count)]
    assert tx_io.send(batch) == len(sent)
    counters = tx_io.counters()
    assert counters["tx_datagrams"] == len(sent)
    assert (counters["send_errors"], counters["send_eagain"]) == (0, 0)
    expected_runs = gso_runs([len(d) for d in sent], [sockaddr_of(receiver)] * len(sent))
    assert expected_runs == 6                        # worked out by hand from SIZES
    assert counters["gso_messages"] == (expected_runs if tx_io.gso else 0)
    assert counters["gso"] is tx_io.gso and tx_io.gso <= gso

    arrived = receive(rx_io, receiver, len(sent))
    assert [d for _, d, _ in arrived] == sent
    assert {(r, src) for r, _, src in arrived} == {(RES_EMPTY, sockaddr_of(sender))}
    rx_counters = rx_io.counters()
    assert rx_counters["rx_datagrams"] == len(sent)
    assert rx_counters["truncated"] == 0
    if tx_io.gso and rx_io.gro:
        # Loopback hands each GSO super-buffer to a GRO socket whole; recv splits it.
        assert rx_counters["gro_buffers"] == expected_runs
    if not rx_io.gro:
        assert rx_counters["gro_buffers"] == 0

    # Closing the loop: what arrived is what was sealed, and it opens.
    rx = PacketBatch(len(arrived), 2048)
    for _, d, src in arrived:
        rx.add_datagram(d, src)
    link.b.decrypt(rx, NOW)
    assert [rx.inner(i) for i in range(rx.count)] == packets
    assert link.slot_a.endpoint == sockaddr_of(sender)


def test_gso_segment_and_size_limits(sockets: tuple[socket.socket, ...]) -> None:
    sender, receiver, _ = sockets
    if receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < 1 << 20:
        UdpIO(receiver)                              # asks for 7 MiB (FORCE needs root)
    if receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < 1 << 20:
        pytest.skip("receive buffer too small to hold 150 datagrams at once")
    tx_io, rx_io = UdpIO(sender), UdpIO(receiver)
    link = Link(sockaddr_of(receiver), seed=1)
    # 1452-byte datagrams: the 65000-byte cap splits runs at 44; 100-byte ones: 64 segments.
    sizes = [1420] * 100 + [68] * 150
    batch, _ = link.sealed_batch(sizes)
    sent = [batch.datagram(i) for i in range(batch.count)]
    assert tx_io.send(batch) == len(sent)
    runs = gso_runs([len(d) for d in sent], [sockaddr_of(receiver)] * len(sent))
    assert runs == 3 + 3                             # 44+44+12, 64+64+22
    assert tx_io.counters()["gso_messages"] == (runs if tx_io.gso else 0)
    arrived = receive(rx_io, receiver, len(sent))
    assert [d for _, d, _ in arrived] == sent


def test_runs_break_at_destination_change(sockets: tuple[socket.socket, ...]) -> None:
    sender, r1, r2 = sockets
    tx_io = UdpIO(sender)
    link = Link(sockaddr_of(r1), seed=2)
    batch = PacketBatch(12, 2048)
    dests = [r1, r1, r1, r2, r2, r1, r1, r2, r1, r1, r1, r1]
    for i, r in enumerate(dests):
        batch.add_raw(bytes([i]) * 500, sockaddr_of(r))
    assert batch.results() == [RES_RAW] * 12
    assert tx_io.send(batch) == 12
    runs = gso_runs([500] * 12, [sockaddr_of(r) for r in dests])
    assert runs == 4
    assert tx_io.counters()["gso_messages"] == (runs if tx_io.gso else 0)
    got1 = receive(UdpIO(r1), r1, dests.count(r1))
    got2 = receive(UdpIO(r2), r2, dests.count(r2))
    assert [d for _, d, _ in got1] == [bytes([i]) * 500 for i, r in enumerate(dests) if r is r1]
    assert [d for _, d, _ in got2] == [bytes([i]) * 500 for i, r in enumerate(dests) if r is r2]
    del link


@pytest.mark.parametrize("gro", [True, False], ids=["gro", "no-gro"])
def test_oversized_datagram_is_marked_truncated(sockets: tuple[socket.socket, ...],
                                                gro: bool) -> None:
    sender, receiver, _ = sockets
    link = Link(sockaddr_of(receiver), seed=3)
    batch, _ = link.sealed_batch([980, 100])
    big, small = batch.datagram(0), batch.datagram(1)
    assert (len(big), len(small)) == (32 + 992, 32 + 112)
    # Two plain sends, so nothing coalesces on the way.
    sender.sendto(big, receiver.getsockname())
    sender.sendto(small, receiver.getsockname())
    rx_io = UdpIO(receiver, gro=gro)
    arrived = receive(rx_io, receiver, 2, slot_size=512)
    assert [(r, len(d)) for r, d, _ in arrived] == [(DROP_TRUNCATED, 512), (RES_EMPTY, 144)]
    assert arrived[1][1] == small
    assert rx_io.counters()["truncated"] == 1
    # The data path counts the truncation and never opens the partial datagram.
    rx = PacketBatch(4, 512)
    assert rx_io.recv(rx) == 0
    sender.sendto(big, receiver.getsockname())
    sender.sendto(small, receiver.getsockname())
    select.select([receiver], [], [], 5)
    got = 0
    while got < 2:
        n = rx_io.recv(rx)
        if n == 0:
            select.select([receiver], [], [], 0.2)
            continue
        got += rx.count
        link.b.decrypt(rx, NOW)
    assert link.b.counters()["drops"]["truncated"] == 1
    assert link.b.counters()["rx_packets"] == 1


def test_recv_on_empty_socket(sockets: tuple[socket.socket, ...]) -> None:
    _, receiver, _ = sockets
    for gro in (True, False):
        io = UdpIO(receiver, gro=gro)
        batch = PacketBatch(4, 2048)
        batch.add_datagram(b"stale")
        assert io.recv(batch) == 0
        assert batch.count == 0
        assert io.counters()["recv_calls"] == 1
        assert io.counters()["rx_datagrams"] == 0


def test_flags_reported(sockets: tuple[socket.socket, ...]) -> None:
    sender, _, _ = sockets
    off = UdpIO(sender, gro=False, gso=False)
    assert (off.gro, off.gso) == (False, False)
    assert off.counters()["gro"] is False and off.counters()["gso"] is False


def test_send_skips_descriptors_that_are_not_ready(sockets: tuple[socket.socket, ...]) -> None:
    sender, receiver, _ = sockets
    link = Link(sockaddr_of(receiver), seed=4)
    batch = PacketBatch(4, 2048)
    batch.add_packet(link.packet(60))
    batch.add_packet(link.packet(60)[:12])           # not IP: DROP_IP, must not be sent
    batch.add_raw(b"hello", sockaddr_of(receiver))
    link.a.encrypt(batch, NOW)
    io = UdpIO(sender)
    assert io.send(batch) == 2
    arrived = receive(UdpIO(receiver), receiver, 2)
    assert [d for _, d, _ in arrived] == [batch.datagram(0), b"hello"]


def test_refused_datagram_is_marked_and_counted(sockets: tuple[socket.socket, ...]) -> None:
    # UdpIO.send's contract: datagrams the kernel refused are marked DROP_SEND and counted;
    # the others still go. Port 0 is refused with EINVAL.
    sender, receiver, _ = sockets
    bad = sockaddr_of(receiver)[:2] + b"\0\0" + sockaddr_of(receiver)[4:]
    batch = PacketBatch(3, 2048)
    batch.add_raw(b"a" * 100, sockaddr_of(receiver))
    batch.add_raw(b"b" * 100, bad)
    batch.add_raw(b"c" * 100, sockaddr_of(receiver))
    io = UdpIO(sender, gso=False)
    assert io.send(batch) == 2
    assert io.counters()["send_errors"] == 1
    arrived = receive(UdpIO(receiver), receiver, 2)
    assert [d for _, d, _ in arrived] == [b"a" * 100, b"c" * 100]
    assert batch.results() == [RES_RAW, DROP_SEND, RES_RAW]
