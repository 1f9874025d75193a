"""Loss recovery of _wgcore.tcpip (RACK-TLP, PRR, DSACK, CUBIC) over tcp_sim's fake-clock link.

Scripted loss patterns that a dupthresh-only recovery repairs only with a retransmission
timeout: a lost retransmission, a lost tail, a burst, reordering deeper than three segments,
and lost ACKs. Each test asserts the mechanism through the connection's counters (no RTO,
RACK marks, TLP probes, DSACKs, undo) and bounds that cannot be flaky (one window reduction per
episode, CUBIC's beta of 0.7 within one MSS), and always the exact bytes delivered. The last
test is a hypothesis property over random loss, reordering and duplication in both directions:
exact delivery within bounded simulated time. Nothing depends on wall time.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tcp_sim import Faults, Flow, Link, connect, parse_tcp, run_flows

from _wgcore.tcpip import TcpConn

NO_SSTHRESH = 0x7FFFFFFF
DELAY = 0.005                     # one-way delay: a 10 ms RTT


def payload(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


class DataDrops:
    """Drops chosen transmissions of data segments from side 0: `plan` maps a segment's
    offset in the stream (bytes from the first data byte) to the transmission numbers to
    lose (1 = the first transmission, 2 = the first retransmission, ...)."""

    def __init__(self, plan: dict[int, set[int]]) -> None:
        self.plan = plan
        self.base: int | None = None
        self.seen: dict[int, int] = {}
        self.dropped: list[tuple[int, int]] = []

    def __call__(self, side: int, packet: bytes) -> bool:
        if side != 0:
            return False
        seg = parse_tcp(packet)
        if not seg.payload:
            return False
        if self.base is None:
            self.base = seg.seq
        off = (seg.seq - self.base) % 2**32
        n = self.seen[off] = self.seen.get(off, 0) + 1
        if n in self.plan.get(off, ()):
            self.dropped.append((off, n))
            return True
        return False


def transfer(link: Link, data: bytes, shutdown: bool = False,
             max_time: float = 60.0) -> tuple[TcpConn, TcpConn]:
    c, s = connect(link)
    flow = Flow(c, s, data, shutdown=shutdown)
    run_flows(link, [flow], max_time=max_time)
    assert hashlib.sha256(flow.received).digest() == hashlib.sha256(data).digest()
    return c, s


def new_link(**kwargs: object) -> Link:
    return Link(Faults(delay=DELAY), seed=3, **kwargs)   # type: ignore[arg-type]


def mss_of(link: Link) -> int:
    c, _ = connect(link)
    return int(c.counters()["mss"])


MSS = mss_of(new_link())


def test_lost_retransmission_is_repaired_without_rto() -> None:
    # Segment 40 is lost, and so is its first retransmission: RACK sees later segments
    # delivered after the retransmission was sent and marks it lost again.
    link = new_link()
    drops = DataDrops({40 * MSS: {1, 2}})
    link.drop = drops
    c, _ = transfer(link, payload(400 * MSS))
    k = c.counters()
    assert drops.dropped == [(40 * MSS, 1), (40 * MSS, 2)]
    assert k["timeouts"] == 0, k
    assert k["rack_marks"] >= 2 and k["retransmits"] >= 2, k
    assert k["recoveries"] == 1, k              # one congestion episode, one reduction


def test_lost_retransmission_without_sack_still_recovers() -> None:
    link = new_link()
    link.a.sack_enabled = link.b.sack_enabled = False
    drops = DataDrops({40 * MSS: {1, 2}})
    link.drop = drops
    c, _ = transfer(link, payload(300 * MSS))
    assert drops.dropped == [(40 * MSS, 1), (40 * MSS, 2)]
    assert c.counters()["sack"] is False


def test_tail_loss_is_repaired_by_the_probe_without_rto() -> None:
    # The last two segments of a transfer are lost: no later segment can reveal it, the
    # loss probe (a retransmission of the last segment) does, and RACK repairs the other.
    n = 30
    link = new_link()
    drops = DataDrops({(n - 2) * MSS: {1}, (n - 1) * MSS: {1}})
    link.drop = drops
    c, _ = transfer(link, payload(n * MSS))
    k = c.counters()
    assert len(drops.dropped) == 2
    assert k["timeouts"] == 0, k
    assert k["tlp_probes"] >= 1, k
    assert k["rack_marks"] >= 1, k


def test_single_tail_segment_loss_probe() -> None:
    n = 30
    link = new_link()
    link.drop = DataDrops({(n - 1) * MSS: {1}})
    c, _ = transfer(link, payload(n * MSS))
    k = c.counters()
    assert k["timeouts"] == 0 and k["tlp_probes"] >= 1, k


def test_burst_loss_one_episode_no_rto() -> None:
    link = new_link()
    burst = {(100 + i) * MSS: {1} for i in range(12)}
    drops = DataDrops(burst)
    link.drop = drops
    c, _ = transfer(link, payload(500 * MSS))
    k = c.counters()
    assert len(drops.dropped) == 12
    assert k["timeouts"] == 0, k
    assert k["recoveries"] == 1, k
    assert k["rack_marks"] >= 12, k


def test_burst_with_lost_retransmissions() -> None:
    link = new_link()
    plan = {(100 + i) * MSS: {1, 2} if i % 3 == 0 else {1} for i in range(9)}
    link.drop = DataDrops(plan)
    c, _ = transfer(link, payload(500 * MSS))
    k = c.counters()
    assert k["timeouts"] == 0, k
    assert k["recoveries"] == 1, k


def test_cubic_reduces_to_beta_once_per_episode() -> None:
    # RFC 9438 §4.6: ssthresh = 0.7 x the window at the loss; PRR brings cwnd down to it
    # (RFC 6937) and the episode's further losses (a lost retransmission) reduce nothing.
    link = new_link()
    link.drop = DataDrops({300 * MSS: {1, 2}, 310 * MSS: {1}})
    c, s = connect(link)
    flow = Flow(c, s, payload(2000 * MSS))
    before: dict[str, Any] = {}
    seen_recovery = False
    exit_cwnd = None
    while not flow.pump():
        k = c.counters()
        if not seen_recovery and k["in_recovery"]:
            seen_recovery = True
            reduced = k
        elif not seen_recovery:
            before = k
        elif exit_cwnd is None and not k["in_recovery"]:
            exit_cwnd = k["cwnd"]
            exit_ssthresh = k["ssthresh"]
        assert link.step()
    assert seen_recovery and exit_cwnd is not None
    assert reduced["in_flight"] >= before["cwnd"]     # the window was in use
    assert abs(reduced["ssthresh"] - 0.7 * before["cwnd"]) <= MSS, (before, reduced)
    assert exit_ssthresh == reduced["ssthresh"]             # one reduction for the episode
    assert abs(exit_cwnd - exit_ssthresh) <= MSS
    k = c.counters()
    assert k["recoveries"] == 1 and k["timeouts"] == 0, k


def test_reordering_adapts_and_costs_no_window() -> None:
    # Every 8th data segment arrives 3 ms late (RTT 10 ms): up to a whole burst overtakes it.
    # The first such event may look like a loss; its retransmission is reported as a
    # duplicate (DSACK), the reduction is undone and RACK widens its reordering window, so
    # from then on reordering costs neither retransmissions nor window.
    link = new_link()
    count = [0]

    def late(side: int, packet: bytes) -> float:
        if side == 0 and parse_tcp(packet).payload:
            count[0] += 1
            return 0.003 if count[0] % 40 == 0 else 0.0
        return 0.0

    link.extra_delay = late
    c, s = connect(link)
    data = payload(3000 * MSS)
    flow = Flow(c, s, data)
    half = len(data) // 3
    mid: dict[str, Any] = {}

    def until() -> bool:
        done = flow.pump()
        if not mid and len(flow.received) >= half:
            mid.update(c.counters())
        return done

    link.run(until, max_time=60)
    assert bytes(flow.received) == data
    k = c.counters()
    assert k["timeouts"] == 0, k
    assert k["reordering_seen"], k
    # every episode was shown spurious and undone
    assert k["undo_count"] == k["recoveries"], k
    assert k["spurious_retrans"] == k["retransmits"], k
    assert k["ssthresh"] == NO_SSTHRESH, k                 # no reduction is left
    # once adapted: no retransmission at all in the last two thirds
    assert k["retransmits"] == mid["retransmits"], (mid, k)


def test_reordering_within_window_from_the_start() -> None:
    # Shallow reordering (two segments overtake) is within RACK's initial window
    # (min_rtt / 4) or below three SACKed segments: never a retransmission.
    link = new_link()
    count = [0]

    def late(side: int, packet: bytes) -> float:
        if side == 0 and parse_tcp(packet).payload:
            count[0] += 1
            return 0.003 if count[0] % 40 == 0 else 0.0
        return 0.0

    link.extra_delay = late
    c, _ = transfer(link, payload(1000 * MSS))
    k = c.counters()
    assert k["retransmits"] == k["spurious_retrans"], k
    assert k["ssthresh"] == NO_SSTHRESH or k["undo_count"] == k["recoveries"], k


def test_network_duplicates_are_not_congestion() -> None:
    # Every data segment delivered twice: the receiver reports each duplicate (DSACK); the
    # sender counts them but, as none is a retransmission, changes nothing.
    link = Link(Faults(delay=DELAY), seed=3, faults_ba=Faults(delay=DELAY))
    link.faults[0] = Faults(delay=DELAY, duplicate=1.0)
    c, s = transfer(link, payload(200 * MSS))
    kc, ks = c.counters(), s.counters()
    assert ks["dsack_sent"] > 0 and kc["dsack_received"] > 0, (kc, ks)
    assert kc["retransmits"] == 0 and kc["recoveries"] == 0, kc
    assert kc["spurious_retrans"] == 0 and kc["ssthresh"] == NO_SSTHRESH, kc


def test_ack_path_loss_is_not_congestion() -> None:
    # Every third ACK is lost: cumulative ACKs cover for them; no data is lost, so no
    # retransmission timeout and no window reduction.
    link = new_link()
    n = [0]

    def drop_acks(side: int, packet: bytes) -> bool:
        if side == 1:
            n[0] += 1
            return n[0] % 3 == 0
        return False

    link.drop = drop_acks
    c, _ = transfer(link, payload(400 * MSS))
    k = c.counters()
    assert k["timeouts"] == 0, k
    assert k["recoveries"] == 0 or k["undo_count"] == k["recoveries"], k


def test_ack_loss_and_data_loss_together() -> None:
    link = Link(Faults(delay=DELAY, loss=0.02), seed=11, faults_ba=Faults(delay=DELAY, loss=0.1))
    c, _ = transfer(link, payload(1 << 20), shutdown=True, max_time=120)
    k = c.counters()
    assert k["rack_marks"] > 0, k


def test_spurious_retransmission_is_undone() -> None:
    # One segment held back 25 ms (2.5 RTTs): RACK declares it lost and retransmits; the
    # original then arrives, the retransmission is a duplicate (DSACK) and the window
    # reduction of that episode is undone.
    link = new_link()
    target: list[int] = []
    held = [False]

    def late(side: int, packet: bytes) -> float:
        seg = parse_tcp(packet)
        if side != 0 or not seg.payload:
            return 0.0
        if not target:
            target.append((seg.seq + 60 * MSS) % 2**32)
        if seg.seq == target[0] and not held[0]:
            held[0] = True               # the first transmission only
            return 0.025
        return 0.0

    link.extra_delay = late
    c, _ = transfer(link, payload(400 * MSS))
    k = c.counters()
    assert k["recoveries"] == 1 and k["spurious_retrans"] >= 1, k
    assert k["undo_count"] == 1 and k["ssthresh"] == NO_SSTHRESH, k
    assert k["timeouts"] == 0, k


def test_heavy_random_loss_moves_data_without_many_rtos() -> None:
    # 5 % loss, 5 % reordering, 2 % duplication each way (the relay case), 4 MiB:
    # the old recovery paid ~9 RTOs per MB here; bound it well below that.
    link = Link(Faults(delay=0.001, loss=0.05, reorder=0.05, duplicate=0.02), seed=5)
    data = payload(4 << 20)
    c, _ = transfer(link, data, max_time=600)
    k = c.counters()
    assert k["rack_marks"] > 50 and k["tlp_probes"] > 0 and k["dsack_received"] > 0, k
    assert k["timeouts"] <= 4 * 4, k          # ≤ 4 per MiB (seeded; typically ~1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1),
       loss=st.floats(0.0, 0.12),
       ack_loss=st.floats(0.0, 0.12),
       duplicate=st.floats(0.0, 0.1),
       reorder=st.floats(0.0, 0.4),
       reorder_delay=st.floats(0.0005, 0.02),
       size=st.integers(1, 300_000),
       sack=st.booleans())
def test_delivery_under_random_loss_reorder_duplication(
        seed: int, loss: float, ack_loss: float, duplicate: float, reorder: float,
        reorder_delay: float, size: int, sack: bool) -> None:
    fab = Faults(delay=0.002, loss=loss, duplicate=duplicate, reorder=reorder,
                 reorder_delay=reorder_delay)
    fba = Faults(delay=0.002, loss=ack_loss, duplicate=duplicate, reorder=reorder,
                 reorder_delay=reorder_delay)
    link = Link(fab, seed=seed, faults_ba=fba)
    link.a.sack_enabled = link.b.sack_enabled = sack
    data = payload(size, seed)
    back = payload(size // 3 + 1, seed + 1)
    c, s = connect(link)
    flows = [Flow(c, s, data, shutdown=True), Flow(s, c, back, shutdown=True)]
    run_flows(link, flows, max_time=900)    # bounded: raises if it hangs
    assert bytes(flows[0].received) == data and bytes(flows[1].received) == back


# -- sub-millisecond paths: the 1 ms timestamp clock must not stand in for the RTT ----------------

FAST = 0.0001                     # one-way delay: a 0.2 ms RTT, below one timestamp tick


def test_handshake_rtt_is_measured_in_microseconds_not_timestamp_ticks() -> None:
    # Both ends time their SYN / SYN-ACK themselves: on a 0.2 ms path the first sample is
    # 0.2 ms, not a whole 1 ms tick of the timestamp echo (nor the 0 ms echo clamped to 0.1 ms).
    link = Link(Faults(delay=FAST), seed=3)
    c, s = connect(link)
    for conn in (c, s):
        k = conn.counters()
        assert k["timestamps"]
        assert abs(k["srtt"] - 2 * FAST) < 1e-5, k["srtt"]
        assert abs(k["min_rtt"] - 2 * FAST) < 1e-5, k["min_rtt"]


def test_lone_segment_on_a_fast_path_is_acked_within_milliseconds() -> None:
    # A lone segment waits for a second one at most 2 x the receiver's RTT estimate (>= 1 ms).
    # The receiver's estimate comes from the timestamp echo, whole milliseconds: on a 0.2 ms
    # path that echo is 0 ms, which used to mean "no estimate", so the lone segment waited the
    # full 40 ms delayed-ACK timeout (a sender with a small window after a loss stalls on it).
    link = Link(Faults(delay=FAST), seed=3)
    c, s = connect(link)
    flow = Flow(c, s, payload(40 * MSS))
    run_flows(link, [flow], max_time=10)       # warm up: quick ACKs spent, RTTs measured
    link.advance(0.1)
    waits = []
    for i in range(5):
        c.send(b"x" * 100)
        t0 = link.now
        link.run(lambda: c.counters()["in_flight"] == 0, max_time=1.0)
        waits.append(link.now - t0)
        s.read()
        link.advance(0.1)
    assert max(waits) <= 0.002 + 4 * FAST + 1e-6, waits   # 2 x 1 ms tick, plus the path
    assert s.counters()["bytes_received"] == 40 * MSS + 500


def test_reordering_deeper_than_two_srtt_is_absorbed() -> None:
    # A path faster than its reordering (the benchmark's relay: 0.3 ms RTT, datagrams held up
    # to 1 ms): every 40th data segment arrives 3 ms late on a 1 ms RTT. RFC 8985 caps the
    # reordering window at SRTT (we used 2 SRTT), which makes every late segment a spurious
    # retransmission and a recovery episode; DSACKs widen it here up to 4 SRTT, so once
    # adapted nothing is resent.
    link = Link(Faults(delay=0.0005), seed=3)
    count = [0]

    def late(side: int, packet: bytes) -> float:
        if side == 0 and parse_tcp(packet).payload:
            count[0] += 1
            return 0.003 if count[0] % 40 == 0 else 0.0
        return 0.0

    link.extra_delay = late
    c, s = connect(link)
    data = payload(4000 * MSS)
    flow = Flow(c, s, data)
    mid: dict[str, Any] = {}

    def until() -> bool:
        done = flow.pump()
        if not mid and len(flow.received) >= len(data) // 3:
            mid.update(c.counters())
        return done

    link.run(until, max_time=60)
    assert bytes(flow.received) == data
    link.advance(0.05)                   # the last ACKs (and DSACKs) back at the sender
    k = c.counters()
    assert k["timeouts"] == 0 and k["in_flight"] == 0, k
    assert k["retransmits"] > 0 and k["spurious_retrans"] > 0, k   # it looked like loss at first
    assert k["reo_wnd"] > 0.003, k                                # wider than the lateness
    assert k["retransmits"] == mid["retransmits"], (mid, k)      # none once adapted


def test_limited_counters_say_what_held_the_sender_back() -> None:
    # limited_{cwnd,rwnd,app}_s (Linux's tcpi_busy / rwnd_limited / sndbuf_limited chrono):
    # with a large receive buffer a bulk transfer waits on its congestion window (slow start
    # from 10 segments on a 10 ms RTT) and then, its data all sent, on the last ACKs; with a
    # 16 KiB receive buffer it waits on the peer's window instead.
    data = payload(400 * MSS)
    c, _ = transfer(new_link(), data)
    k = c.counters()
    assert k["limited_cwnd_s"] > 0 and k["limited_rwnd_s"] == 0, k
    assert k["limited_app_s"] > 0, k                   # the tail: all sent, waiting for ACKs
    link = Link(Faults(delay=DELAY), seed=3, receive_buffer=16 << 10,
                receive_buffer_initial=16 << 10)
    c, _ = transfer(link, data)
    k = c.counters()
    assert k["limited_rwnd_s"] > k["limited_cwnd_s"], k
    # the accounted time never exceeds the simulated time
    assert k["limited_rwnd_s"] + k["limited_cwnd_s"] + k["limited_app_s"] <= link.now, k
