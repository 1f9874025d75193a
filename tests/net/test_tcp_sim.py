"""_wgcore.tcpip against itself over the in-memory link of tcp_sim (fake clock, seeded faults).

STYLE §12 kinds 1 and 5: whole transfers checked by sha256 under loss, duplication, reordering
and corruption, in both address families and full duplex; the RFC 9293 open and close
sequences (simultaneous open and close, half-close, TIME_WAIT); resets and refusals; a stalled
reader with a zero window; retransmission giving up on a black hole; and the listener's accept
queue and SYN backlog. Time is simulated: nothing sleeps and no assertion depends on wall time.
The hypothesis properties (delivery under any fault schedule, interleaved application calls,
forged segments) are in test_tcp_props.py.
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import random

import pytest
from tcp_sim import (
    A_ADDR,
    A_ADDR6,
    ACK,
    B_ADDR,
    B_ADDR6,
    RST,
    SYN,
    Faults,
    Flow,
    Link,
    Seg,
    accept,
    connect,
    parse_tcp,
    run_flows,
    tcp_packet,
)

from _wgcore.tcpip import TcpConn, TcpEvent, TcpStack

TEV_CONNECTED = TcpEvent.CONNECTED
TEV_EOF = TcpEvent.EOF
TEV_CLOSED = TcpEvent.CLOSED
TEV_ACCEPT = TcpEvent.ACCEPT
MIB = 1 << 20
TIME_WAIT = 60.0             # 2 MSL, as the engine documents (Linux's TCP_TIMEWAIT_LEN)
INITIAL_RECEIVE = 256 << 10  # TcpStack's receive_buffer_initial default
SPOOFED = bytes([10, 0, 0, 77])  # not an address of either stack: replies to it go nowhere


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def time_in(link: Link, conn: TcpConn, state: str) -> float:
    """Simulated seconds `conn` spent in `state` (from the watched trace)."""
    trace = link.trace[conn]
    i = next(i for i, (_, name) in enumerate(trace) if name == state)
    return trace[i + 1][0] - trace[i][0]


def close_both(link: Link, c: TcpConn, s: TcpConn) -> None:
    """Orderly close of an idle connection; both ends must reach CLOSED without an error."""
    c.close()
    s.close()
    link.run(lambda: c.state_name == s.state_name == "CLOSED", max_time=TIME_WAIT + 120)
    assert (c.error, s.error) == (0, 0)


# -- bulk transfers ----------------------------------------------------------------------------

BULK = [
    # loss, duplicate, reorder, v6, duplex
    pytest.param(0.0, 0.0, 0.0, False, True, id="clean-v4-duplex"),
    pytest.param(0.0, 0.0, 0.0, True, True, id="clean-v6-duplex"),
    pytest.param(0.01, 0.01, 0.02, False, True, id="loss1-v4-duplex"),
    pytest.param(0.01, 0.01, 0.02, True, False, id="loss1-v6"),
    pytest.param(0.05, 0.02, 0.05, False, False, id="loss5-v4"),
    pytest.param(0.05, 0.02, 0.05, True, True, id="loss5-v6-duplex"),
]


@pytest.mark.parametrize("loss, duplicate, reorder, v6, duplex", BULK)
def test_10mb_each_way_arrives_intact(loss: float, duplicate: float, reorder: float, v6: bool,
                                      duplex: bool) -> None:
    link = Link(Faults(loss=loss, duplicate=duplicate, reorder=reorder), seed=7)
    c, s = connect(link, v6=v6)
    up, down = payload(10 * MIB, 1), payload(10 * MIB, 2)
    if duplex:
        flows = [Flow(c, s, up, shutdown=True), Flow(s, c, down, shutdown=True)]
        run_flows(link, flows, max_time=3600)
    else:
        flows = [Flow(c, s, up, shutdown=True)]
        run_flows(link, flows, max_time=3600)
        flows.append(Flow(s, c, down, shutdown=True))
        run_flows(link, flows[1:], max_time=3600)
    assert sha(flows[0].received) == sha(up)
    assert sha(flows[1].received) == sha(down)
    link.run(lambda: c.unsent == s.unsent == 0, max_time=60)     # the last ACKs arrive
    assert c.bytes_acked == s.bytes_read == len(up)
    assert s.bytes_acked == c.bytes_read == len(down)
    if loss:
        assert c.retransmits > 0 and s.retransmits > 0
    else:
        assert c.retransmits == s.retransmits == 0
    close_both(link, c, s)


def wrapping_link(faults: Faults) -> tuple[Link, TcpConn, TcpConn]:
    """A connection whose initial sequence numbers both sit a few MB below 2**32, so a bulk
    transfer wraps the sequence space in both directions. RFC 6528 ISNs are a keyed hash
    plus a 4 µs clock: pick the start time that puts the client's ISN 3 MB below the wrap,
    and search secrets until the server's lands within 12 MB of it too."""
    modulus = 1 << 32

    def handshake(secret: bytes, now: float) -> tuple[Link, list[Seg]]:
        link = Link(faults, seed=21, secret=secret)
        link.now = now
        link.b.listen(80)
        segs: list[Seg] = []
        link.taps.append(lambda side, p: segs.append(parse_tcp(p)))
        link.a.connect(A_ADDR, 40000, B_ADDR, 80, link.now)
        link.run(lambda: len(segs) >= 2, max_time=5)
        return link, segs

    for i in range(20_000):
        secret = i.to_bytes(32, "big")
        _, segs = handshake(secret, 1000.0)
        start = 1000.0 + ((modulus - (3 << 20) - segs[0].seq) % modulus) / 250_000
        link, segs = handshake(secret, start)
        if segs[1].flags == SYN | ACK and modulus - (12 << 20) < segs[1].seq < modulus - MIB:
            break
    else:
        raise AssertionError("no secret puts both ISNs near the wrap")
    assert modulus - (4 << 20) < segs[0].seq < modulus - MIB
    listener = link.b.listeners()[0]
    link.run(lambda: listener.pending == 1, max_time=60)
    client = link.a.connections()[0]
    return link, client, accept(listener)


def test_sequence_numbers_wrap_during_transfer() -> None:
    link, c, s = wrapping_link(Faults(loss=0.01, duplicate=0.01, reorder=0.05))
    up, down = payload(10 * MIB, 34), payload(10 * MIB, 35)
    flows = [Flow(c, s, up, shutdown=True), Flow(s, c, down, shutdown=True)]
    run_flows(link, flows, max_time=3600)
    assert sha(flows[0].received) == sha(up) and sha(flows[1].received) == sha(down)
    assert c.fast_retransmits > 0 and s.fast_retransmits > 0
    close_both(link, c, s)


def test_receive_buffer_that_is_not_a_power_of_two() -> None:
    """The rings index with a mask; a configured maximum like 3,000,000 bytes must not make
    the receive ring grow to a size that is not a power of two (data would land in the wrong
    place once the ring wraps)."""
    link = Link(seed=8, receive_buffer=3_000_000, receive_buffer_initial=100_000)
    c, s = connect(link)
    data = payload(10 * MIB, 20)
    flow = Flow(c, s, data, shutdown=True)
    run_flows(link, [flow], max_time=600)
    assert sha(flow.received) == sha(data)
    assert s.counters()["receive_buffer"] & (s.counters()["receive_buffer"] - 1) == 0


@pytest.mark.parametrize("sack", [True, False], ids=["sack", "nosack"])
@pytest.mark.parametrize("timestamps", [True, False], ids=["ts", "nots"])
def test_option_combinations_under_loss(sack: bool, timestamps: bool) -> None:
    """Without SACK the sender recovers with NewReno partial ACKs (RFC 6582); without
    timestamps RTT samples come from one timed segment (Karn). Both sides must agree on
    what was negotiated and still deliver everything."""
    link = Link(Faults(loss=0.02, reorder=0.02), seed=9)
    link.b.sack_enabled = sack                # the server only offers what it supports
    link.b.timestamps_enabled = timestamps
    c, s = connect(link)
    for conn in (c, s):
        k = conn.counters()
        assert (k["sack"], k["timestamps"]) == (sack, timestamps)
    up, down = payload(3 * MIB, 21), payload(1 * MIB, 22)
    flows = [Flow(c, s, up, shutdown=True), Flow(s, c, down, shutdown=True)]
    run_flows(link, flows, max_time=1200)
    assert sha(flows[0].received) == sha(up) and sha(flows[1].received) == sha(down)
    assert c.fast_retransmits > 0
    assert c.counters()["srtt"] > 0
    if not sack:
        assert c.sack_blocks_received == 0


@pytest.mark.parametrize("mtu, v6", [(576, False), (1280, False), (1280, True), (1500, True)])
def test_segments_fit_the_mtu(mtu: int, v6: bool) -> None:
    link = Link(Faults(loss=0.02), seed=10, mtu=mtu)
    sizes: list[int] = []
    link.taps.append(lambda side, p: sizes.append(len(p)))
    c, s = connect(link, v6=v6)
    up, down = payload(1 * MIB, 23), payload(1 * MIB, 24)
    flows = [Flow(c, s, up, shutdown=True), Flow(s, c, down, shutdown=True)]
    run_flows(link, flows, max_time=600)
    assert flows[0].received == up and flows[1].received == down
    assert max(sizes) == mtu      # full-sized segments, never more (SACK blocks eat payload)


def test_fin_stays_at_the_end_when_sack_options_shorten_a_segment() -> None:
    """The client holds out-of-order data, so its segments carry a SACK option (12 more
    bytes). Its last full-sized segment, followed by its FIN, no longer fits the MTU whole:
    the payload is cut, and the FIN must move to a later segment. It must not ride on the
    shortened one: the receiver would see EOF 12 bytes early and lose them."""
    link = Link()
    c, s = connect(link)
    mss = c.counters()["mss"]
    hole: list[int] = []

    def lose_servers_first_segment(side: int, packet: bytes) -> None:
        seg = parse_tcp(packet)
        if side == 1 and seg.payload and not hole:
            hole.append(seg.seq)
        lose = side == 1 and bool(seg.payload) and seg.seq == hole[0] if hole else False
        link.faults[1] = Faults(loss=1.0 if lose else 0.0)

    link.taps.append(lose_servers_first_segment)
    s.send(bytes(2 * mss))
    link.advance(0.01)
    # the client SACKs from now on (the segment may have come twice: the loss probe resends it)
    assert c.ooo_segments >= 1 and c.readable == 0
    data = payload(mss, 36)
    c.send(data)
    c.shutdown()
    received = bytearray()
    link.advance(0.1, lambda: received.extend(s.read()))
    link.taps.clear()
    link.faults = [Faults(), Faults()]

    def done() -> bool:
        received.extend(s.read())
        return s.at_eof and c.readable == 2 * mss

    link.run(done, max_time=10)
    assert bytes(received) == data


# -- opening and closing ----------------------------------------------------------------------

def test_simultaneous_open() -> None:
    """RFC 9293 §3.5 figure 8: both SYNs cross; each side goes SYN-SENT → SYN-RECEIVED →
    ESTABLISHED and data flows both ways."""
    link = Link()
    a = link.a.connect(A_ADDR, 5000, B_ADDR, 6000, link.now)
    b = link.b.connect(B_ADDR, 6000, A_ADDR, 5000, link.now)
    link.watch(a, b)
    link.run(lambda: a.state_name == b.state_name == "ESTABLISHED", max_time=30)
    assert link.states(a) == ["SYN_SENT", "SYN_RECEIVED", "ESTABLISHED"]
    assert link.states(b) == ["SYN_SENT", "SYN_RECEIVED", "ESTABLISHED"]
    assert link.events_of(a) & TEV_CONNECTED and link.events_of(b) & TEV_CONNECTED
    up, down = payload(200_000, 3), payload(150_000, 4)
    flows = [Flow(a, b, up, shutdown=True), Flow(b, a, down, shutdown=True)]
    run_flows(link, flows, max_time=60)
    assert flows[0].received == up and flows[1].received == down


def test_simultaneous_close() -> None:
    """RFC 9293 §3.6 figure 13: both FINs cross; each side FIN-WAIT-1 → CLOSING → TIME-WAIT,
    then CLOSED after 2 MSL."""
    link = Link()
    c, s = connect(link)
    link.watch(c, s)
    c.shutdown()
    s.shutdown()
    link.states(c)
    link.run(lambda: c.state_name == s.state_name == "TIME_WAIT", max_time=30)
    link.run(lambda: c.state_name == s.state_name == "CLOSED", max_time=TIME_WAIT + 30)
    for conn in (c, s):
        assert TIME_WAIT <= time_in(link, conn, "TIME_WAIT") <= TIME_WAIT + 1
        assert link.states(conn) == ["ESTABLISHED", "FIN_WAIT_1", "CLOSING", "TIME_WAIT",
                                     "CLOSED"]
        assert conn.error == 0
        assert link.events_of(conn) & (TEV_EOF | TEV_CLOSED) == TEV_EOF | TEV_CLOSED


def test_active_and_passive_close_sequence() -> None:
    """Active closer: FIN-WAIT-1 → FIN-WAIT-2 → TIME-WAIT → CLOSED after 60 s simulated;
    passive closer: CLOSE-WAIT → LAST-ACK → CLOSED as soon as its FIN is acknowledged."""
    link = Link()
    c, s = connect(link)
    link.watch(c, s)
    c.send(b"last words")
    c.shutdown()
    link.states(c)
    link.run(lambda: s.state_name == "CLOSE_WAIT" and c.state_name == "FIN_WAIT_2",
             max_time=30)
    assert s.read() == b"last words" and s.at_eof
    assert link.events_of(s) & TEV_EOF
    with pytest.raises(BrokenPipeError):
        c.send(b"more")
    s.close()
    link.run(lambda: s.state_name == "CLOSED", max_time=30)
    assert c.state_name == "TIME_WAIT"
    link.run(lambda: c.state_name == "CLOSED", max_time=TIME_WAIT + 30)
    assert TIME_WAIT <= time_in(link, c, "TIME_WAIT") <= TIME_WAIT + 1
    assert link.states(c) == ["ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED"]
    assert link.states(s) == ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]
    assert (c.error, s.error) == (0, 0)
    assert link.events_of(c) & TEV_CLOSED and link.events_of(s) & TEV_CLOSED
    assert link.a.connections() == [] and link.b.connections() == []


@pytest.mark.parametrize("lost", ["SYN", "SYN-ACK", "ACK", "SYN-ACK+ACK"])
def test_handshake_survives_lost_segments(lost: str) -> None:
    """Each handshake segment lost once: the SYN and SYN-ACK are retransmitted by their
    timers; a lost third ACK is repaired by the client's first data segment (or by the
    ACK that a retransmitted SYN-ACK draws)."""
    link = Link()
    listener = link.b.listen(80)
    to_lose = set(lost.split("+"))
    dropped = []

    def tap(side: int, packet: bytes) -> None:
        seg = parse_tcp(packet)
        name = {SYN: "SYN", SYN | ACK: "SYN-ACK"}.get(seg.flags & (SYN | ACK | RST))
        if name is None and side == 0 and seg.flags & ACK and not seg.payload:
            name = "ACK"
        link.faults[side] = Faults(loss=1.0 if name in to_lose else 0.0)
        if name in to_lose:
            to_lose.discard(name)
            dropped.append(name)

    link.taps.append(tap)
    c = link.a.connect(A_ADDR, 40000, B_ADDR, 80, link.now)
    link.run(lambda: c.state_name == "ESTABLISHED", max_time=30)
    link.advance(0.5)         # the client's pure ACK goes out (and may be lost)
    c.send(b"GET / HTTP/1.0\r\n\r\n")
    link.run(lambda: listener.pending == 1, max_time=30)
    s = accept(listener)
    link.run(lambda: s.readable == 18, max_time=30)
    assert s.read() == b"GET / HTTP/1.0\r\n\r\n"
    assert sorted(dropped) == sorted(lost.split("+"))
    assert c.state_name == s.state_name == "ESTABLISHED"


def test_time_wait_acks_a_retransmitted_fin() -> None:
    """The last ACK is lost: the passive closer retransmits its FIN, TIME-WAIT answers it and
    the passive side still reaches CLOSED (RFC 9293 §3.10.7.4, TIME-WAIT)."""
    link = Link()
    c, s = connect(link)
    c.shutdown()
    link.run(lambda: s.at_eof and c.state_name == "FIN_WAIT_2", max_time=30)
    dropped: list[Seg] = []

    def lose_first_ack_of_fin(side: int, packet: bytes) -> None:
        seg = parse_tcp(packet)
        if side == 0 and c.state_name == "TIME_WAIT" and not dropped:
            dropped.append(seg)
            link.faults[0] = Faults(loss=1.0)
        elif dropped:
            link.faults[0] = Faults()

    link.taps.append(lose_first_ack_of_fin)
    s.close()
    link.run(lambda: s.state_name == "CLOSED", max_time=30)
    assert dropped and s.retransmits >= 1 and s.error == 0
    assert c.state_name == "TIME_WAIT"


def test_half_close_server_keeps_sending() -> None:
    """The client shuts down its sending side after a request; the server reads to EOF, then
    streams its response through CLOSE-WAIT while the client (FIN-WAIT-2) keeps reading."""
    link = Link(Faults(loss=0.01, reorder=0.02), seed=3)
    c, s = connect(link)
    request, response = payload(100_000, 5), payload(3 * MIB, 6)
    run_flows(link, [Flow(c, s, request, shutdown=True)], max_time=120)
    link.run(lambda: c.state_name == "FIN_WAIT_2", max_time=30)
    assert s.state_name == "CLOSE_WAIT"
    back = Flow(s, c, response, shutdown=True)
    states_while_streaming = set()

    def pump() -> bool:
        states_while_streaming.add((c.state_name, s.state_name))
        return back.pump()

    link.run(pump, max_time=600)
    assert sha(back.received) == sha(response)
    assert ("FIN_WAIT_2", "CLOSE_WAIT") in states_while_streaming
    link.run(lambda: s.state_name == "CLOSED" and c.state_name in ("TIME_WAIT", "CLOSED"),
             max_time=60)
    assert (c.error, s.error) == (0, 0)


def test_passive_opener_half_close_lasts_past_the_handshake_deadline() -> None:
    """The accepting side shuts down its sending side and keeps reading a slow upload for
    minutes. A half-closed connection whose application did not close() has no FIN-WAIT-2
    time limit (RFC 9293 §3.10.7.4; Linux applies tcp_fin_timeout to orphans only), so it
    must neither reset nor give up."""
    link = Link()
    c, s = connect(link)
    s.shutdown()
    link.run(lambda: s.state_name == "FIN_WAIT_2" and c.state_name == "CLOSE_WAIT",
             max_time=5)
    link.watch(c, s)
    start = link.now
    upload = payload(12 * 1000, 17)
    received = bytearray()
    for i in range(12):                       # 1000 bytes every 15 s: 3 minutes
        assert c.state_name == "CLOSE_WAIT", (link.now - start, link.trace, c.error)
        c.send(upload[i * 1000:(i + 1) * 1000])
        link.advance(15, lambda: received.extend(s.read()))
    assert link.states(s) == ["FIN_WAIT_2"], link.trace[s]
    assert (c.error, s.error) == (0, 0)
    assert received == upload
    c.close()
    link.run(lambda: s.state_name == "TIME_WAIT" and c.state_name == "CLOSED", max_time=10)


def test_orphaned_fin_wait_2_gives_up() -> None:
    """After close() the application can't read any more: a peer that never sends its FIN
    is given 60 s in FIN-WAIT-2 (Linux tcp_fin_timeout), then reset."""
    link = Link()
    c, s = connect(link)
    c.close()
    link.run(lambda: c.state_name == "FIN_WAIT_2", max_time=5)
    link.watch(c)
    link.run(lambda: c.state_name == "CLOSED", max_time=120)
    assert 59 <= time_in(link, c, "FIN_WAIT_2") <= 61
    assert c.error == 0
    link.run(lambda: s.state_name == "CLOSED", max_time=5)
    assert s.error == errno.ECONNRESET


def test_reconnect_same_four_tuple_while_peer_in_time_wait() -> None:
    """The server closed first and sits in TIME-WAIT; the client reconnects from the same
    port at once. The old incarnation must not block the new one for 2 MSL."""
    link = Link()
    listener = link.b.listen(80)
    c = link.a.connect(A_ADDR, 40000, B_ADDR, 80, link.now)
    link.run(lambda: listener.pending == 1 and c.state_name == "ESTABLISHED", max_time=5)
    s = accept(listener)
    s.close()
    link.run(lambda: c.state_name == "CLOSE_WAIT", max_time=5)
    c.close()
    link.run(lambda: c.state_name == "CLOSED" and s.state_name == "TIME_WAIT", max_time=5)
    c2 = link.a.connect(A_ADDR, 40000, B_ADDR, 80, link.now)
    link.run(lambda: listener.pending == 1 and c2.state_name == "ESTABLISHED", max_time=20)
    s2 = accept(listener)
    flow = Flow(c2, s2, payload(100_000, 25), shutdown=True)
    run_flows(link, [flow], max_time=30)
    assert flow.received == flow.data


def test_reconnect_after_bulk_transfer_while_peer_in_time_wait() -> None:
    """As above after 10 MB went the same way, so the old incarnation's sequence numbers ran
    past the new ISN (RFC 6528's clock moves 250 kB/s). RFC 6191 §2: when the old
    incarnation used timestamps, a SYN with a greater TSval is honoured at once; the client's
    first SYN must open the new connection (no SYN retransmission needed)."""
    link = Link()
    listener = link.b.listen(80)
    c = link.a.connect(A_ADDR, 40000, B_ADDR, 80, link.now)
    link.run(lambda: listener.pending == 1 and c.state_name == "ESTABLISHED", max_time=5)
    s = accept(listener)
    run_flows(link, [Flow(c, s, payload(10 * MIB, 27))], max_time=60)
    s.close()
    link.run(lambda: c.state_name == "CLOSE_WAIT", max_time=5)
    c.close()
    link.run(lambda: c.state_name == "CLOSED" and s.state_name == "TIME_WAIT", max_time=5)
    assert c.counters()["timestamps"]
    syns: list[float] = []
    link.taps.append(lambda side, p: syns.append(link.now)
                     if side == 0 and parse_tcp(p).flags == SYN else None)
    c2 = link.a.connect(A_ADDR, 40000, B_ADDR, 80, link.now)
    link.run(lambda: listener.pending == 1 and c2.state_name == "ESTABLISHED", max_time=20)
    assert len(syns) == 1, f"{len(syns)} SYNs needed"


def test_unread_data_survives_the_end_of_time_wait() -> None:
    """Both FINs exchanged while the application has not read the last response yet: the
    connection reaches CLOSED after TIME-WAIT, but the bytes stay readable and EOF only
    follows them."""
    link = Link()
    c, s = connect(link)
    c.shutdown()
    link.run(lambda: s.state_name == "CLOSE_WAIT", max_time=5)
    response = payload(100_000, 28)
    s.send(response)
    s.close()
    link.run(lambda: s.state_name == "CLOSED" and c.state_name == "TIME_WAIT", max_time=10)
    link.advance(TIME_WAIT + 10)
    assert c.state_name == "CLOSED" and c.error == 0
    assert not c.at_eof
    assert c.read() == response
    assert c.at_eof


# -- loss recovery at the tail -------------------------------------------------------------

def drop_nth_data_segment(link: Link, n: int) -> list[int]:
    """Lose the n-th (0-based) data segment the client sends, once."""
    seen: list[int] = []

    def tap(side: int, packet: bytes) -> None:
        seg = parse_tcp(packet)
        if side == 0 and seg.payload:
            seen.append(seg.seq)
        link.faults[0] = Faults(loss=1.0 if side == 0 and seg.payload and len(seen) == n + 1
                                else 0.0)

    link.taps.append(tap)
    return seen


def test_lost_last_segment_is_repaired_without_a_timeout() -> None:
    """RFC 8985 §7: the lost last segment of a burst is repaired by a tail-loss probe, not by
    an RTO. Once the other nine are acknowledged one segment is in flight, so the PTO
    (2·SRTT plus the peer's delayed-ACK allowance) reaches past the RTO; §7.2's
    TLP_calc_PTO then fires the probe at the RTO's time instead of dropping it."""
    link = Link()
    c, s = connect(link)
    run_flows(link, [Flow(c, s, payload(200_000, 29))], max_time=5)    # RTT samples
    link.advance(1)
    seen = drop_nth_data_segment(link, 9)
    burst = payload(10 * c.counters()["mss"], 30)
    flow = Flow(c, s, burst)
    run_flows(link, [flow], max_time=10)
    assert len(seen) > 10 and flow.received == burst
    assert c.timeouts == 0
    assert c.counters()["tail_probes"] >= 1


def test_loss_in_a_short_flight_is_repaired_without_a_timeout() -> None:
    """RFC 5827 early retransmit: with three segments outstanding and the first lost, two
    duplicate ACKs (or SACKs) are all that can come; they must be enough."""
    link = Link()
    c, s = connect(link)
    run_flows(link, [Flow(c, s, payload(200_000, 31))], max_time=5)
    link.advance(1)
    drop_nth_data_segment(link, 0)
    small = payload(3 * c.counters()["mss"], 32)
    flow = Flow(c, s, small)
    run_flows(link, [flow], max_time=10)
    assert flow.received == small
    assert c.timeouts == 0
    assert c.fast_retransmits >= 1


# -- resets -------------------------------------------------------------------------------------

@pytest.mark.parametrize("aborter, loss", [("receiver", 0.0), ("receiver", 0.02),
                                           ("sender", 0.0)])
def test_rst_mid_transfer(aborter: str, loss: float) -> None:
    link = Link(Faults(loss=loss, reorder=0.05 if loss else 0.0), seed=11)
    c, s = connect(link)
    flow = Flow(c, s, payload(3 * MIB, 7))
    link.run(lambda: flow.pump() or len(flow.received) > 500_000, max_time=120)
    assert not flow.done
    gone, other = (s, c) if aborter == "receiver" else (c, s)
    gone.abort()
    assert gone.state_name == "CLOSED" and gone.error == 0
    link.run(lambda: flow.pump() or other.state_name == "CLOSED", max_time=120)
    assert other.state_name == "CLOSED"
    assert other.error == errno.ECONNRESET
    assert link.events_of(other) & TEV_CLOSED
    assert link.events_of(gone) & TEV_CLOSED
    with pytest.raises(BrokenPipeError):
        other.send(b"x")
    assert link.a.connections() == [] and link.b.connections() == []


def test_close_with_unread_data_resets_the_peer() -> None:
    """close() with received bytes nobody read sends RST, not FIN (RFC 9293 §3.10.4 allows
    either; Linux and this engine reset so the peer learns its data was not consumed)."""
    link = Link()
    c, s = connect(link)
    c.send(b"request that is never read")
    link.run(lambda: s.readable > 0, max_time=5)
    s.close()
    assert s.state_name == "CLOSED"
    link.run(lambda: c.state_name == "CLOSED", max_time=5)
    assert c.error == errno.ECONNRESET


def test_peer_restart_resets_the_connection() -> None:
    """The server's stack restarts (all state lost); the client's next segment draws a RST
    (RFC 9293 §3.10.7.1) and its connection ends with ECONNRESET."""
    link = Link()
    c, s = connect(link)
    run_flows(link, [Flow(c, s, payload(10_000, 26))], max_time=5)
    link.stacks[1] = TcpStack()
    link.stacks[1].set_addresses([B_ADDR])
    c.send(b"anyone there?")
    link.run(lambda: c.state_name == "CLOSED", max_time=10)
    assert c.error == errno.ECONNRESET
    assert link.events_of(c) & TEV_CLOSED


def test_connect_to_closed_port_is_refused() -> None:
    link = Link()
    link.b.listen(80)
    c = link.a.connect(A_ADDR, 41000, B_ADDR, 81, link.now)
    link.run(lambda: c.state_name == "CLOSED", max_time=10)
    assert c.error == errno.ECONNREFUSED
    events = link.events_of(c)
    assert events & TEV_CLOSED and not events & TEV_CONNECTED
    assert link.b.counters()["resets_sent"] == 1


def test_connect_v6_to_closed_port_is_refused() -> None:
    link = Link()
    c = link.a.connect(A_ADDR6, 41000, B_ADDR6, 9, link.now)
    link.run(lambda: c.state_name == "CLOSED", max_time=10)
    assert c.error == errno.ECONNREFUSED


# -- flow control ---------------------------------------------------------------------------

def test_stalled_reader_is_bounded_by_its_window_then_completes() -> None:
    """A reader that never calls read(): the receiver keeps its initial ring (no growth
    without draining), the sender stops at about that many bytes and probes the zero window
    (RFC 9293 §3.8.6.1) for simulated minutes without giving up; draining completes it."""
    link = Link(Faults(loss=0.01), seed=5)
    c, s = connect(link)
    data = payload(3 * MIB, 8)
    flow = Flow(c, s, data, read=False)
    link.advance(30, flow.pump)
    acked_at_30s = c.bytes_acked
    link.advance(270, flow.pump)
    assert c.state_name == s.state_name == "ESTABLISHED"
    assert s.counters()["receive_buffer"] == INITIAL_RECEIVE
    assert s.readable == c.bytes_acked
    assert INITIAL_RECEIVE - 2 * c.counters()["mss"] <= c.bytes_acked <= INITIAL_RECEIVE
    assert c.bytes_acked == acked_at_30s            # stopped growing
    assert c.counters()["window_probes"] > 0
    assert c.counters()["snd_wnd"] == 0
    assert c.error == 0
    flow.read = flow.shutdown = True
    link.run(flow.pump, max_time=600)
    assert sha(flow.received) == sha(data)


def test_zero_window_probe_survives_lost_window_update() -> None:
    """The window update after draining is lost; the persist timer's probes recover it."""
    link = Link(seed=6)
    c, s = connect(link)
    data = payload(1 * MIB, 9)
    flow = Flow(c, s, data, read=False)
    link.advance(5, flow.pump)
    assert c.counters()["snd_wnd"] == 0
    link.faults[1] = Faults(loss=1.0)      # everything the reader sends is lost for a while
    flow.read = True
    flow.pump()
    link.advance(2)
    assert flow.received and not flow.done
    link.faults[1] = Faults()
    link.run(flow.pump, max_time=300)
    assert flow.received == data
    assert c.counters()["window_probes"] > 0


def test_zero_window_probing_gives_up_when_the_peer_vanishes() -> None:
    """RFC 9293 §3.8.6.1 (RFC 1122 §4.2.2.17) keeps a zero-window connection open only "as
    long as the receiving TCP continues to send acknowledgments in response to the probe
    segments". A peer that vanishes while its window is closed must not keep the sender
    probing forever: unanswered probes time out like retransmissions (Linux: tcp_retries2)."""
    link = Link(seed=5)
    c, s = connect(link)
    flow = Flow(c, s, payload(1 * MIB, 33), read=False)
    link.advance(10, flow.pump)
    assert c.counters()["snd_wnd"] == 0 and c.counters()["window_probes"] > 0
    link.faults = [Faults(loss=1.0), Faults(loss=1.0)]       # the reader's host is gone
    link.run(lambda: flow.pump() or c.state_name == "CLOSED", max_time=3600)
    assert c.error == errno.ETIMEDOUT
    assert link.events_of(c) & TEV_CLOSED


# -- loss recovery -----------------------------------------------------------------------------

def test_sack_fast_retransmit_under_loss() -> None:
    link = Link(Faults(loss=0.01), seed=12)
    c, s = connect(link)
    data = payload(4 * MIB, 10)
    flow = Flow(c, s, data, shutdown=True)
    run_flows(link, [flow], max_time=600)
    assert sha(flow.received) == sha(data)
    k = c.counters()
    assert k["sack"] and c.sack_blocks_received > 0
    assert s.ooo_segments > 0
    assert c.fast_retransmits > 0
    # SACK recovery repairs nearly everything; a timeout needs a lost retransmission or a
    # lost tail. Lost data segments: about 1 % of what was sent.
    lost = link.dropped[0]
    assert lost > 0
    assert c.retransmits >= c.fast_retransmits
    assert c.timeouts <= max(3, c.fast_retransmits // 10), k


def test_reordering_without_loss_needs_no_timeouts() -> None:
    link = Link(Faults(reorder=0.1, reorder_delay=0.0005), seed=13)
    c, s = connect(link)
    data = payload(2 * MIB, 11)
    flow = Flow(c, s, data, shutdown=True)
    run_flows(link, [flow], max_time=600)
    assert flow.received == data
    assert c.timeouts == 0


def test_black_holed_peer_times_out() -> None:
    """100 % loss after establishment: RTO backoff, then ETIMEDOUT after the retry budget
    (no sooner than RFC 9293 §3.8.3's R2 of 100 s)."""
    link = Link(seed=14)
    c, s = connect(link)
    run_flows(link, [Flow(c, s, payload(50_000, 12))], max_time=30)
    link.faults = [Faults(loss=1.0), Faults(loss=1.0)]
    c.send(payload(100_000, 13))
    start = link.now
    link.run(lambda: c.state_name == "CLOSED", max_time=3600)
    assert c.error == errno.ETIMEDOUT
    assert link.events_of(c) & TEV_CLOSED
    assert link.now - start >= 100
    assert c.timeouts >= 3
    assert link.a.connections() == []


def test_syn_to_black_hole_times_out() -> None:
    link = Link(Faults(loss=1.0))
    link.b.listen(80)
    syns = []
    link.taps.append(lambda side, p: syns.append(link.now) if parse_tcp(p).flags & SYN else None)
    c = link.a.connect(A_ADDR, 40000, B_ADDR, 80, link.now)
    start = link.now
    link.run(lambda: c.state_name == "CLOSED", max_time=600)
    assert c.error == errno.ETIMEDOUT
    assert link.events_of(c) & TEV_CLOSED
    assert len(syns) == 7            # the SYN and SYN_RETRIES (6) retransmissions
    gaps = [b - a for a, b in itertools.pairwise(syns)]
    assert gaps == sorted(gaps)      # exponential backoff
    assert link.now - start >= 60


# -- adversity ----------------------------------------------------------------------------------

@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_corrupted_packets_are_dropped_by_checksum(v6: bool) -> None:
    link = Link(Faults(corrupt=0.03), seed=15)
    c, s = connect(link, v6=v6)
    up, down = payload(2 * MIB, 14), payload(1 * MIB, 15)
    flows = [Flow(c, s, up, shutdown=True), Flow(s, c, down, shutdown=True)]
    run_flows(link, flows, max_time=600)
    assert sha(flows[0].received) == sha(up) and sha(flows[1].received) == sha(down)
    checksum_drops = 0
    for stack in link.stacks:
        drops = stack.counters()["drops"]
        checksum_drops += drops["tcp_checksum"] + drops["ip_checksum"]
    assert checksum_drops > 0


# -- listeners ------------------------------------------------------------------------------

def client_conns(link: Link, n: int, port: int, first_port: int = 30000) -> list[TcpConn]:
    return [link.a.connect(A_ADDR, first_port + i, B_ADDR, port, link.now) for i in range(n)]


def test_accept_queue_holds_backlog_and_resets_overflow() -> None:
    link = Link()
    listener = link.b.listen(8080, backlog=2)
    clients = client_conns(link, 4, 8080)
    link.advance(0.5)
    assert listener.pending == 2
    assert link.events_of(listener) & TEV_ACCEPT
    # the engine resets a connection that completes while the queue is full
    reset = [c for c in clients if c.state_name == "CLOSED"]
    assert len(reset) == 2 and all(c.error == errno.ECONNRESET for c in reset)
    assert listener.queue_overflows == 2
    assert link.b.counters()["drops"]["accept_queue_full"] >= 2
    accepted = [accept(listener), accept(listener)]
    assert listener.accept() is None and listener.accepted == 2
    assert {a.remote[1] for a in accepted} == {c.local[1] for c in clients if c.error == 0}
    assert all(a.state_name == "ESTABLISHED" for a in accepted)


def test_syn_while_accept_queue_full_waits_for_accept() -> None:
    """A SYN arriving while the accept queue is full is dropped without a reply; the client's
    SYN retransmission gets in once the application accepted."""
    link = Link()
    listener = link.b.listen(8080, backlog=1)
    first = client_conns(link, 1, 8080)[0]
    link.run(lambda: listener.pending == 1, max_time=5)
    second = link.a.connect(A_ADDR, 31000, B_ADDR, 8080, link.now)
    link.advance(0.5)
    assert second.state_name == "SYN_SENT"
    assert listener.accept() is not None
    link.run(lambda: second.state_name == "ESTABLISHED" and listener.pending == 1, max_time=10)
    assert accept(listener).remote == (A_ADDR, 31000)
    assert first.state_name == "ESTABLISHED"


def spoofed_syn(sport: int, port: int, seq: int) -> bytes:
    options = bytes([2, 4, 0x04, 0xC4, 4, 2, 1, 3, 3, 7])   # MSS 1220, SACK-perm, WS 7
    return tcp_packet(SPOOFED, B_ADDR, sport, port, seq=seq, flags=SYN, window=65535,
                      options=options)


def test_syn_flood_evicts_oldest_half_open_and_real_client_gets_in() -> None:
    link = Link(seed=16)
    listener = link.b.listen(8080, backlog=8, syn_backlog=16)
    rng = random.Random(16)
    for i in range(100):
        link.inject(1, spoofed_syn(1024 + i, 8080, rng.getrandbits(32)))
    link.advance(0.1)
    assert listener.syn_received == 100
    assert listener.half_open == 16
    assert listener.syn_evicted == 84
    assert link.b.counters()["drops"]["syn_backlog"] == 84
    # a real client, with the flood still going while its handshake is in flight
    c = link.a.connect(A_ADDR, 40000, B_ADDR, 8080, link.now)
    for i in range(10):
        link.inject(1, spoofed_syn(2000 + i, 8080, rng.getrandbits(32)), delay=0.0002 * i)
    link.run(lambda: listener.pending == 1, max_time=10)
    s = accept(listener)
    assert s.remote == (A_ADDR, 40000) and c.state_name == "ESTABLISHED"
    flow = Flow(c, s, payload(100_000, 16), shutdown=True)
    run_flows(link, [flow], max_time=30)
    assert flow.received == flow.data
    # the flood's half-open connections give up on their own
    link.run(lambda: listener.half_open == 0, max_time=300)
    assert [conn for conn in link.b.connections() if conn is not s] == []


def test_listener_close_resets_queued_and_half_open_connections() -> None:
    link = Link()
    listener = link.b.listen(8080, backlog=8)
    clients = client_conns(link, 3, 8080)
    link.run(lambda: listener.pending == 3, max_time=5)
    link.inject(1, spoofed_syn(5555, 8080, 12345))
    link.run(lambda: listener.half_open == 1, max_time=1)
    listener.close()
    assert listener.closed and link.b.listeners() == []
    assert listener.pending == 0 and listener.half_open == 0
    link.run(lambda: all(c.state_name == "CLOSED" for c in clients), max_time=5)
    for c in clients:
        assert c.error == errno.ECONNRESET
        assert link.events_of(c) & TEV_CLOSED
    assert link.b.connections() == []
    late = link.a.connect(A_ADDR, 39000, B_ADDR, 8080, link.now)
    link.run(lambda: late.state_name == "CLOSED", max_time=5)
    assert late.error == errno.ECONNREFUSED
    # the port can be listened on again
    again = link.b.listen(8080)
    c2 = link.a.connect(A_ADDR, 39001, B_ADDR, 8080, link.now)
    link.run(lambda: again.pending == 1 and c2.state_name == "ESTABLISHED", max_time=5)


def test_listener_bound_to_one_address() -> None:
    """A listener on B's IPv4 address takes connections to it only; the IPv6 address of the
    same port is refused; a wildcard listener on another port takes both families."""
    link = Link()
    only4 = link.b.listen(8080, address=B_ADDR)
    both = link.b.listen(8081)
    c4 = link.a.connect(A_ADDR, 40000, B_ADDR, 8080, link.now)
    c6 = link.a.connect(A_ADDR6, 40001, B_ADDR6, 8080, link.now)
    w4 = link.a.connect(A_ADDR, 40002, B_ADDR, 8081, link.now)
    w6 = link.a.connect(A_ADDR6, 40003, B_ADDR6, 8081, link.now)
    link.advance(1)
    assert c4.state_name == "ESTABLISHED" and only4.pending == 1
    assert c6.state_name == "CLOSED" and c6.error == errno.ECONNREFUSED
    assert w4.state_name == w6.state_name == "ESTABLISHED" and both.pending == 2
    assert {accept(both).local[0], accept(both).local[0]} == {B_ADDR, B_ADDR6}


def test_duplicate_four_tuple_is_refused_locally() -> None:
    link = Link()
    link.a.connect(A_ADDR, 40000, B_ADDR, 80, link.now)
    with pytest.raises(OSError) as info:
        link.a.connect(A_ADDR, 40000, B_ADDR, 80, link.now)
    assert info.value.errno == errno.EADDRINUSE
    link.b.listen(80)
    with pytest.raises(OSError):
        link.b.listen(80)


def test_rst_with_wrong_sequence_number_gets_challenge_ack() -> None:
    """RFC 5961 §3.2: an in-window RST that is not exactly RCV.NXT does not reset; it draws a
    challenge ACK. The exact one does."""
    link = Link()
    c, s = connect(link)
    last: dict[int, Seg] = {}
    link.taps.append(lambda side, p: last.__setitem__(side, parse_tcp(p)))
    c.send(b"hello")
    link.run(lambda: s.read() == b"hello", max_time=5)
    link.advance(1)
    nxt = last[0].seq + len(last[0].payload)          # the server's RCV.NXT
    sent_before = link.b.counters()["segments_out"]
    link.inject(1, tcp_packet(A_ADDR, B_ADDR, c.local[1], 80, seq=nxt + 100, flags=RST))
    link.advance(1)
    assert s.state_name == "ESTABLISHED"
    assert link.b.counters()["segments_out"] == sent_before + 1      # the challenge ACK
    assert last[1].flags == ACK and last[1].ack == nxt
    link.inject(1, tcp_packet(A_ADDR, B_ADDR, c.local[1], 80, seq=nxt, flags=RST))
    link.advance(1)
    assert s.state_name == "CLOSED" and s.error == errno.ECONNRESET
