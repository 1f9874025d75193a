"""Two sans-IO Nodes over an in-memory link with a fake clock (node_pair.py): ping, TCP, UDP,
API errors, rekeying and close_all, with no socket, no loop and no sleep."""
from __future__ import annotations

import errno
import hashlib
import ipaddress
import random

import pytest
from _wgcore.tcpip import TcpConn, TcpEvent, TcpListener, TcpState
from node_pair import NodePair

from agentconn.errors import NoRouteError
from agentconn.net.events import DatagramReceived, DatagramUnclaimed, PingReplied, TcpActivity
from agentconn.node import Node
from agentconn.wg.constants import REKEY_AFTER_TIME

A4, B4 = ipaddress.ip_address("10.44.0.1"), ipaddress.ip_address("10.44.0.2")
A6, B6 = ipaddress.ip_address("fd44::1"), ipaddress.ip_address("fd44::2")


def tcp_flags(pair: NodePair, node: Node, sock: TcpConn | TcpListener) -> TcpEvent:
    """Every TcpEvent flag `node` reported for `sock` so far."""
    flags = TcpEvent(0)
    for _, event in pair.events[node]:
        if isinstance(event, TcpActivity) and event.socket is sock:
            flags |= event.flags
    return flags


def handshakes(pair: NodePair, node: Node) -> int:
    return node.stats(pair.now)["handshakes"]["completed"]


def established(pair: NodePair, port: int = 4) -> tuple[TcpListener, TcpConn, TcpConn]:
    """B listens on `port`, A connects: (listener, A's conn, B's accepted conn)."""
    listener = pair.b.iface.listen(port)
    conn_a = pair.a.iface.connect(str(B4), port, pair.now)
    pair.run(lambda: TcpEvent.CONNECTED in tcp_flags(pair, pair.a, conn_a))
    pair.run(lambda: TcpEvent.ACCEPT in tcp_flags(pair, pair.b, listener))
    conn_b = listener.accept()
    assert conn_b is not None and listener.accept() is None
    return listener, conn_a, conn_b


class Reader:
    """B's event handler: reads whatever its connection has (as a transport would)."""

    def __init__(self, conn: TcpConn) -> None:
        self.conn, self.data = conn, bytearray()

    def __call__(self, event: object) -> None:
        if isinstance(event, TcpActivity) and event.socket is self.conn:
            self.data += self.conn.read()


# -- 1. ping -------------------------------------------------------------------------------------

@pytest.mark.parametrize("address,kind", [("10.44.0.2", "icmp"), ("fd44::2", "icmp"),
                                          ("fd44::2", "tsmp"), ("10.44.0.2", "tsmp")])
def test_ping_rtt_is_fake_time_and_first_includes_handshake(address: str, kind: str) -> None:
    pair = NodePair(delay=0.125)
    a, b = pair.a, pair.b
    # first ping: initiation, response, then the staged echo request and its reply
    for answered, legs in ((1, 4), (2, 2)):
        t0 = pair.now
        token = a.iface.ping(address, t0, kind=kind)  # type: ignore[arg-type]
        pair.run(lambda: any(isinstance(e, PingReplied) and e.token == token
                             for _, e in pair.events[a]))
        at, reply = pair.last_event(a, PingReplied)
        assert isinstance(reply, PingReplied) and reply.token == token
        assert reply.rtt == at - t0 == legs * pair.delay
        assert b.iface.counters["echo_answered"] == answered
        assert a.iface.counters["unhandled"] == b.iface.counters["unhandled"] == 0
    assert handshakes(pair, a) == handshakes(pair, b) == 1
    stats = a.stats(pair.now)
    assert sum(stats["drops"].values()) == 0 and stats["ip"]["echo_answered"] == 0


# -- 2. TCP --------------------------------------------------------------------------------------

def test_tcp_one_mib_exact_then_close_both_ways() -> None:
    pair = NodePair(delay=0.01)
    a, b = pair.a, pair.b
    listener, conn_a, conn_b = established(pair)
    assert conn_a.state == conn_b.state == TcpState.ESTABLISHED
    assert conn_a.remote == (B4.packed, 4) and conn_b.remote == conn_a.local
    assert handshakes(pair, a) == 1

    data = random.Random(7).randbytes(1 << 20)
    offset = 0

    def writer(event: object = None) -> None:     # A refills its send buffer when it can
        nonlocal offset
        if offset < len(data):
            offset += conn_a.send(memoryview(data)[offset:])

    reader = Reader(conn_b)
    pair.handlers[a], pair.handlers[b] = writer, reader
    writer()
    pair.run(lambda: len(reader.data) >= len(data), max_time=120)
    assert hashlib.sha256(reader.data).hexdigest() == hashlib.sha256(data).hexdigest()
    pair.run(lambda: conn_a.bytes_acked == len(data))      # the last ACKs were in flight
    assert conn_a.unsent == 0 and conn_a.retransmits == 0

    conn_a.close()                                    # A's FIN
    pair.run(lambda: conn_b.at_eof)
    assert TcpEvent.EOF in tcp_flags(pair, b, conn_b)
    pair.run(lambda: conn_a.state == TcpState.FIN_WAIT_2)   # B's ACK of the FIN was in flight
    assert conn_b.state == TcpState.CLOSE_WAIT
    conn_b.close()                                    # B's FIN
    pair.run(lambda: conn_a.state == TcpState.TIME_WAIT)
    pair.run(lambda: conn_b.state == TcpState.CLOSED)
    assert conn_b.error == 0
    pair.run(lambda: conn_a.state == TcpState.CLOSED, max_time=61)   # 2 MSL of fake time
    assert pair.now - pair.start_time >= 60
    assert a.iface.tcp.connections() == [] and b.iface.tcp.connections() == []
    listener.close()


# -- 3. UDP --------------------------------------------------------------------------------------

def test_udp_bound_port_gets_datagram_with_owner() -> None:
    pair = NodePair()
    a, b = pair.a, pair.b
    owner = object()
    assert b.iface.bind_udp(owner, None, 7) == (None, 7, None)
    local, sport, remote = a.iface.bind_udp(object(), None, 0, remote=(str(B6), 7))
    assert local == A6 and remote == (B6, 7) and 32768 <= sport <= 60999
    a.iface.send_datagram(None, sport, B4, 7, b"over v4")
    a.iface.send_datagram(local, sport, B6, 7, b"over v6")
    limit = a.iface.max_datagram(B4)
    a.iface.send_datagram(None, sport, B4, 7, b"L" * limit)
    pair.run(lambda: b.iface.counters["udp_received"] == 3)
    got = [e for _, e in pair.events[b] if isinstance(e, DatagramReceived)]
    assert got == [DatagramReceived(owner, b"over v4", A4, sport),
                   DatagramReceived(owner, b"over v6", A6, sport),
                   DatagramReceived(owner, b"L" * limit, A4, sport)]
    assert got[0].owner is owner
    with pytest.raises(OSError) as info:
        a.iface.send_datagram(None, sport, B4, 7, b"L" * (limit + 1))
    assert info.value.errno == errno.EMSGSIZE
    with pytest.raises(OSError) as info:
        a.iface.send_datagram(None, sport, B6, 7, b"L" * (a.iface.max_datagram(B6) + 1))
    assert info.value.errno == errno.EMSGSIZE


@pytest.mark.parametrize("other_binding", [
    True,
    False,
], ids=["some-port-bound", "nothing-bound"])
def test_udp_unbound_port_dropped_or_reported(other_binding: bool) -> None:
    pair = NodePair()
    a, b = pair.a, pair.b
    if other_binding:
        b.iface.bind_udp(object(), None, 7)
    a.iface.send_datagram(None, 5000, B4, 8, b"nobody")
    pair.run(lambda: pair.delivered >= 3 and not a.has_output)   # handshake + the datagram
    assert b.iface.counters["udp_no_socket"] == 1
    assert b.iface.counters["udp_received"] == b.iface.counters["udp_fallback"] == 0
    assert not any(isinstance(e, (DatagramReceived, DatagramUnclaimed))
                   for _, e in pair.events[b])

    b.iface.report_unclaimed_udp = True
    a.iface.send_datagram(None, 5000, B6, 9, b"fallback")
    pair.run(lambda: b.iface.counters["udp_fallback"] == 1)
    _, event = pair.last_event(b, DatagramUnclaimed)
    assert isinstance(event, DatagramUnclaimed)
    d = event.datagram
    assert (d.src, d.src_port, d.dst, d.dst_port, d.payload) == (A6, 5000, B6, 9, b"fallback")
    assert b.iface.counters["udp_no_socket"] == 1


# -- 4. API errors -------------------------------------------------------------------------------

def test_api_errors_are_typed() -> None:
    pair = NodePair()
    iface, now = pair.a.iface, pair.now
    for host in ("10.44.0.9", "fd44::9", "192.0.2.1"):
        with pytest.raises(NoRouteError, match=host):
            iface.connect(host, 80, now)
        with pytest.raises(NoRouteError):
            iface.ping(host, now)
    for host in ("not-an-address", "10.44.0.2:80", ""):
        with pytest.raises(ValueError) as info:
            iface.connect(host, 80, now)
        assert not isinstance(info.value, NoRouteError)
    for port in (0, 65536):
        with pytest.raises(ValueError):
            iface.connect(str(B4), port, now)
    for host in ("10.44.0.2", "fd44::2", "10.44.0.9"):
        with pytest.raises(ValueError):
            iface.listen(4, host)
    iface.listen(4, "10.44.0.1")
    with pytest.raises(OSError) as info:
        iface.listen(4, "10.44.0.1")
    assert info.value.errno == errno.EADDRINUSE
    iface.bind_udp(object(), None, 53)
    for host in (None, "10.44.0.1"):
        with pytest.raises(OSError) as info:
            iface.bind_udp(object(), host, 53)
        assert info.value.errno == errno.EADDRINUSE
    with pytest.raises(ValueError):
        iface.bind_udp(object(), "10.44.0.2", 54)
    with pytest.raises(NoRouteError):
        iface.bind_udp(object(), None, 0, remote=("10.44.0.9", 53))
    # nothing was queued by the failed calls
    assert not pair.a.has_output and pair.a.iface.tcp.connections() == []


# -- 5. rekey ------------------------------------------------------------------------------------

def test_rekey_after_time_keeps_tcp_flowing() -> None:
    pair = NodePair(delay=0.01)
    a, b = pair.a, pair.b
    _, conn_a, conn_b = established(pair)
    reader = Reader(conn_b)
    pair.handlers[b] = reader
    sent = bytearray()
    for i in range(int(REKEY_AFTER_TIME // 10) + 4):     # a chunk every 10 s for ~160 s
        chunk = bytes([i]) * 20_000
        assert conn_a.send(chunk) == len(chunk)
        sent += chunk
        pair.run(lambda: len(reader.data) == len(sent))
        pair.advance(10)
        if i == 10:
            assert handshakes(pair, a) == 1          # 110 s in: still the first session
    assert reader.data == sent
    assert handshakes(pair, a) == handshakes(pair, b) == 2
    assert conn_a.state == conn_b.state == TcpState.ESTABLISHED
    assert conn_a.retransmits == 0
    assert sum(a.stats(pair.now)["drops"].values()) == 0


# -- 6. close_all --------------------------------------------------------------------------------

def test_close_all_resets_the_peers_connections() -> None:
    pair = NodePair()
    a, b = pair.a, pair.b
    listener, conn_a, conn_b = established(pair)
    conn_a.send(b"in flight")
    b.iface.close_all()
    assert listener.closed and conn_b.state == TcpState.CLOSED
    pair.run(lambda: conn_a.state == TcpState.CLOSED)
    assert conn_a.error == errno.ECONNRESET
    assert TcpEvent.CLOSED in tcp_flags(pair, a, conn_a)
    assert b.iface.tcp.connections() == [] and b.iface.tcp.listeners() == []
    # the port is closed now: a new connection is refused
    again = a.iface.connect(str(B4), 4, pair.now)
    pair.run(lambda: again.state == TcpState.CLOSED)
    assert again.error == errno.ECONNREFUSED


# -- the lossy link ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tcp_exact_over_a_lossy_duplicating_link(seed: int) -> None:
    pair = NodePair(delay=0.02, drop=0.05, duplicate=0.05, seed=seed)
    _, conn_a, conn_b = established(pair)
    data = random.Random(seed).randbytes(256 << 10)
    offset = 0

    def writer(event: object = None) -> None:
        nonlocal offset
        if offset < len(data):
            offset += conn_a.send(memoryview(data)[offset:])

    reader = Reader(conn_b)
    pair.handlers[pair.a], pair.handlers[pair.b] = writer, reader
    writer()
    pair.run(lambda: len(reader.data) >= len(data), max_time=300)
    assert bytes(reader.data) == data
    assert pair.dropped > 0 and conn_a.retransmits > 0
    assert pair.b.stats(pair.now)["drops"].get("replay", 0) > 0    # the duplicates


# -- capture hook --------------------------------------------------------------------------------

def test_capture_hook_sees_each_inner_packet_once_both_ways() -> None:
    """Node.capture gets (wall, inner IP packets): the echo request staged for the handshake
    once, when sealed; the reply after decryption; never handshake messages or keepalives."""
    pair = NodePair(delay=0.125)
    a, b = pair.a, pair.b
    seen: list[tuple[float, bytes]] = []
    wall0 = pair.wall
    a.capture = lambda wall, packets: seen.extend((wall, p) for p in packets)
    for _ in range(2):
        token = a.iface.ping("10.44.0.2", pair.now)
        pair.run(lambda: any(isinstance(e, PingReplied) and e.token == token
                             for _, e in pair.events[a]))
    # the wall clock of the batch: request sealed once the handshake response is in (2 legs)
    assert [wall - wall0 for wall, _ in seen] == [0.25, 0.5, 0.5, 0.75]
    kinds = [(p[0] >> 4, p[9], p[20], p[12:16], p[16:20]) for _, p in seen]
    request, reply = (4, 1, 8, A4.packed, B4.packed), (4, 1, 0, B4.packed, A4.packed)
    assert kinds == [request, reply, request, reply]
    # a keepalive (an empty transport message) is not an IP packet: nothing captured
    for peer in a.device.iter_peers():
        peer.send_keepalive()
    pair._flush(a)
    pair.advance(15.0)                 # and B's passive keepalive after 10 s
    assert len(seen) == 4
    a.capture = None
    token = a.iface.ping("10.44.0.2", pair.now)
    pair.run(lambda: any(isinstance(e, PingReplied) and e.token == token
                         for _, e in pair.events[a]))
    assert len(seen) == 4
    assert b.capture is None
