"""Which platform paths this build compiled in, and the portable pieces Linux cannot run natively.

scripts/test.sh runs the suite twice: once against the normal wheel (on Linux: recvmmsg/sendmmsg
with UDP_GRO/UDP_SEGMENT) and once against a wheel built with ``AGENTCONN_PORTABLE=1`` (the
POSIX recvmsg/sendmsg loops macOS and the BSDs get). ``test_backend_is_the_one_built`` is what
proves the second pass really ran the fallback: the same variable is set for its pytest run.
"""
from __future__ import annotations

import os
import select
import socket
import sys
from collections.abc import Iterator

import pytest

from _wgcore import udpio
from _wgcore.datapath import PacketBatch
from _wgcore.udpio import UdpIO
from agentconn.wg import endpoint

PORTABLE_REQUESTED = os.environ.get("AGENTCONN_PORTABLE") == "1"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    yield socks[0], socks[1]
    for s in socks:
        s.close()


def test_backend_is_the_one_built() -> None:
    expected = "linux" if sys.platform.startswith("linux") and not PORTABLE_REQUESTED else "portable"
    assert udpio.BACKEND == expected


def test_portable_backend_has_no_gro_or_gso(pair: tuple[socket.socket, socket.socket]) -> None:
    io = UdpIO(pair[0])
    if udpio.BACKEND == "portable":
        assert (io.gro, io.gso) == (False, False)
    else:
        # Loopback on any Linux this suite supports (>= 5.0) has both.
        assert (io.gro, io.gso) == (True, True)


def test_socket_buffers_are_enlarged(pair: tuple[socket.socket, socket.socket]) -> None:
    # Without FORCE (not root) Linux clamps to rmem_max; macOS refuses too large a size and
    # UdpIO halves until accepted. Either way the buffer ends above the default.
    before = pair[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    UdpIO(pair[0], buffer_size=4 * before)
    assert pair[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= before


def test_batch_round_trip_counts_syscalls(pair: tuple[socket.socket, socket.socket]) -> None:
    # Ten datagrams out and in through one send() and recv() each, whichever backend.
    tx, rx = pair
    host, port = rx.getsockname()
    dest = endpoint.sockaddr(host, port, socket.AF_INET)
    batch = PacketBatch(10, 2048)
    for i in range(10):
        batch.add_raw(bytes([i]) * (100 + i), dest)
    tx_io, rx_io = UdpIO(tx), UdpIO(rx)
    assert tx_io.send(batch) == 10
    got = PacketBatch(16, 2048 if udpio.BACKEND == "portable" else 65536, 64)
    received: list[bytes] = []
    while len(received) < 10:
        select.select([rx], [], [], 5)
        if rx_io.recv(got):
            received += [got.datagram(i) for i in range(got.count)]
    assert received == [bytes([i]) * (100 + i) for i in range(10)]
    assert endpoint.parse_sockaddr(got.address(0)) == tx.getsockname()


@pytest.mark.parametrize("bsd", [False, True], ids=["linux-layout", "bsd-layout"])
def test_sockaddr_layouts(monkeypatch: pytest.MonkeyPatch, bsd: bool) -> None:
    # macOS and the BSDs lead with sa_len and a one-byte family; Linux with a u16 family.
    monkeypatch.setattr(endpoint, "SOCKADDR_HAS_LEN", bsd)
    v4 = endpoint.sockaddr("192.0.2.7", 51820, socket.AF_INET)
    v6 = endpoint.sockaddr("2001:db8::9", 51820, socket.AF_INET6)
    mapped = endpoint.sockaddr("192.0.2.7", 51820, socket.AF_INET6)
    assert (len(v4), len(v6)) == (16, 28)
    if bsd:
        assert v4[:2] == bytes((16, socket.AF_INET)) and v6[:2] == bytes((28, socket.AF_INET6))
    else:
        assert v4[:2] == socket.AF_INET.to_bytes(2, sys.byteorder)
    assert v4[2:4] == v6[2:4] == (51820).to_bytes(2, "big")
    assert endpoint.parse_sockaddr(v4) == ("192.0.2.7", 51820)
    assert endpoint.parse_sockaddr(v6) == ("2001:db8::9", 51820)
    assert endpoint.parse_sockaddr(mapped) == ("192.0.2.7", 51820)
    assert endpoint.source_bytes(v4) == endpoint.source_bytes(mapped)
    relay = endpoint.relay_sockaddr(7)
    assert endpoint.relay_path(relay) == 7 and endpoint.relay_path(v4) is None
    assert endpoint.format_sockaddr(v6) == "[2001:db8::9]:51820"


def test_native_sockaddr_matches_the_kernel(pair: tuple[socket.socket, socket.socket]) -> None:
    # What endpoint.sockaddr builds is byte for byte what the kernel reports as a source, so the
    # data path's roaming check (memcmp) sees the same peer.
    tx, rx = pair
    tx.sendto(b"x", rx.getsockname())
    select.select([rx], [], [], 5)
    batch = PacketBatch(4, 2048)
    while UdpIO(rx, gro=False).recv(batch) == 0:
        select.select([rx], [], [], 5)
    host, port = tx.getsockname()
    assert batch.results()[0] == 0
    assert endpoint.sockaddr(host, port, socket.AF_INET) in _sources(batch)


def _sources(batch: PacketBatch) -> list[bytes]:
    return [batch.address(i) for i in range(batch.count)]
