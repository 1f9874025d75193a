"""Memory per connection stays flat over time (issue 14 item 4), on the fake-clock link.

A connection our side closes first passes through TIME_WAIT (2 MSL, 60 s). It used to keep
its send and receive rings (64 KiB + 256 KiB reserved, the touched pages resident) for that
whole minute, so a burst of short connections held hundreds of MiB, and the allocator rarely
gave the fragmented heap back. Now a connection frees its rings on entering TIME_WAIT (only
the 4-tuple and sequence state stay) and the object itself when TIME_WAIT ends. Checked with
``TcpStack.buffer_bytes`` (ring bytes allocated), tracemalloc (PyMem allocations, which the
rings are) and the garbage collector's view of live TcpConn objects. Simulated time only.
"""
from __future__ import annotations

import gc
import tracemalloc

import pytest
from tcp_sim import A_ADDR, B_ADDR, Link

from _wgcore.tcpip import TcpConn, TcpStack

REQUEST = b"q" * 3000
RESPONSE = b"r" * 9000


def _live_conns() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, TcpConn))


def _exchange(link: Link, port: int, server_first: bool) -> None:
    """One short connection a -> b: a request, a response, then the server (b) closes first
    (it goes through TIME_WAIT) or the client does (then a does)."""
    listener = next(iter(link.b.listeners()))
    client = link.a.connect(A_ADDR, port, B_ADDR, 80, link.now)
    accepted: list[TcpConn] = []

    def established() -> bool:
        if not accepted and (c := listener.accept()) is not None:
            accepted.append(c)
        return bool(accepted) and client.state_name == "ESTABLISHED"

    link.run(established, max_time=10)
    server = accepted[0]
    assert client.send(REQUEST) == len(REQUEST)
    got = bytearray()

    def request_in() -> bool:
        got.extend(server.read())
        return len(got) == len(REQUEST)

    link.run(request_in, max_time=10)
    assert server.send(RESPONSE) == len(RESPONSE)
    first, second = (server, client) if server_first else (client, server)
    got.clear()

    def response_in() -> bool:
        got.extend(client.read())
        return len(got) == len(RESPONSE)

    link.run(response_in, max_time=10)
    first.close()
    link.run(lambda: second.at_eof, max_time=10)
    second.close()
    link.run(lambda: first.state_name in ("TIME_WAIT", "CLOSED")
             and second.state_name == "CLOSED", max_time=10)
    link.collect_events()


def _round(link: Link, n: int, base_port: int, server_first: bool = True) -> None:
    for i in range(n):
        _exchange(link, base_port + i, server_first)
    link._events.clear()           # the link's own event log holds every connection


@pytest.mark.parametrize("server_first", [True, False], ids=["we-close-first", "peer-first"])
def test_connection_memory_returns_after_time_wait(server_first: bool) -> None:
    """2,000 short connections in two rounds: in TIME_WAIT a connection holds no ring, and
    once TIME_WAIT ends every connection, ring and object is gone; the second round ends
    where the first did."""
    link = Link()
    link.b.listen(80)
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        after_rounds = []
        for r in range(2):
            _round(link, 1000, 10000 + 1000 * r, server_first)
            closer = link.b if server_first else link.a
            other = link.a if server_first else link.b
            tw = [c for c in closer.connections() if c.state_name == "TIME_WAIT"]
            assert len(tw) == 1000 == closer.counters()["connections"]
            assert other.counters()["connections"] == 0
            # (1) TIME_WAIT keeps only the 4-tuple and sequence state: no ring at all
            assert closer.buffer_bytes == 0 and other.buffer_bytes == 0
            held = tracemalloc.get_traced_memory()[0] - baseline
            assert held < 1000 * 4096, f"{held} bytes held by 1000 TIME_WAIT connections"
            del tw
            # (2) TIME_WAIT (60 s) ends: everything goes
            link.advance(61)
            link.collect_events()
            link._events.clear()
            assert closer.counters()["connections"] == 0
            assert closer.get_timer() is None
            assert _live_conns() == 0
            after_rounds.append(tracemalloc.get_traced_memory()[0] - baseline)
        # what is left is the stacks' grown tables (hash table, connection list), not
        # per-connection memory; and it does not grow with a second round
        assert after_rounds[0] < 512 * 1024, after_rounds
        assert after_rounds[1] <= after_rounds[0] + 64 * 1024, after_rounds
    finally:
        tracemalloc.stop()


def test_time_wait_rings_freed_with_unread_data_kept_until_read() -> None:
    """Data the application has not read yet when TIME_WAIT starts stays readable; the
    receive ring goes once it is drained."""
    link = Link()
    listener = link.b.listen(80)
    client = link.a.connect(A_ADDR, 5000, B_ADDR, 80, link.now)
    link.run(lambda: listener.pending == 1 and client.state_name == "ESTABLISHED")
    server = listener.accept()
    assert server is not None
    ring_bytes = link.a.buffer_bytes
    assert ring_bytes > 0
    client.shutdown()                       # we close first, but keep reading
    link.run(lambda: client.state_name == "FIN_WAIT_2")
    server.send(b"late data")
    server.close()
    link.run(lambda: client.state_name == "TIME_WAIT")
    assert client.readable == 9
    assert 0 < link.a.buffer_bytes < ring_bytes      # the send ring went, the data stays
    assert client.read() == b"late data" and client.at_eof
    assert link.a.buffer_bytes == 0
    with pytest.raises(BrokenPipeError):
        client.send(b"x")
    assert client.send_space == 0
    link.advance(61)
    assert client.state_name == "CLOSED" and link.a.counters()["connections"] == 0


def test_time_wait_still_answers_a_retransmitted_fin() -> None:
    """With its rings gone, a TIME_WAIT connection still ACKs the peer's retransmitted FIN
    (RFC 9293 §3.10.7.4) and restarts its 2 MSL timer; it leaves after a quiet 2 MSL."""
    link = Link(time_wait=5.0)
    listener = link.b.listen(80)
    client = link.a.connect(A_ADDR, 5001, B_ADDR, 80, link.now)
    link.run(lambda: listener.pending == 1 and client.state_name == "ESTABLISHED")
    server = listener.accept()
    assert server is not None
    client.close()
    link.run(lambda: server.at_eof)
    # the server's FIN reaches the client, but the client's last ACK is lost: the server
    # retransmits its FIN, the client in TIME_WAIT answers it again
    from tcp_sim import ACK, parse_tcp

    dropped: list[bytes] = []

    def drop_first_ack(side: int, packet: bytes) -> None:
        seg = parse_tcp(packet)
        if side == 0 and seg.flags == ACK and not dropped and client.state_name == "TIME_WAIT":
            dropped.append(packet)
            link.faults[0].loss = 1.0
    link.taps.append(drop_first_ack)
    server.close()
    link.run(lambda: client.state_name == "TIME_WAIT" and bool(dropped))
    link.faults[0].loss = 0.0
    assert link.a.buffer_bytes == 0
    link.run(lambda: server.state_name == "CLOSED", max_time=30)
    assert client.state_name == "TIME_WAIT"
    link.advance(6)
    assert client.state_name == "CLOSED" and link.a.counters()["connections"] == 0


def test_time_wait_knob() -> None:
    assert TcpStack().time_wait == 60.0
    assert TcpStack(time_wait=0.25).time_wait == 0.25
    with pytest.raises(ValueError):
        TcpStack(time_wait=-1)
