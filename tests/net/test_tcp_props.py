"""Hypothesis properties of _wgcore.tcpip over tcp_sim's fake-clock link (STYLE §12 kinds 2, 3).

Law 1: a TCP transfer delivers exactly the sent bytes (then EOF) under any seeded loss,
reorder and duplication schedule, whatever the sizes of the application's writes, the MTU
and the buffer sizes.

Law 2 (fuzz invariant): `TcpStack.input_packet` given any bytes returns a bool and nothing
else; it never raises, and forged or mangled segments never wedge an established connection:
afterwards both ends are still ESTABLISHED and move new data both ways intact. The forgeries
are the ones a correct RFC 9293/5961/7323 receiver must shrug off: random bytes; real packets
of the connection with bits flipped (checksums left as they are); well-formed segments of the
connection with any flags, ack, window, options and payload but a sequence number outside the
receive window; pure ACKs at exactly RCV.NXT with an old or not-yet-sent ack, garbage SACK
blocks, unknown options and the peer's current timestamp (RFC 5961 §5.2 / RFC 9293 drop
them); and segments for other ports. Segments that a correct stack must act on (an exact
RST, an in-window FIN or data, an in-window future timestamp) are deliberately not generated.

Law 3 (stateful): with writes, partial reads, half-closes, idle periods and changes of the
link's faults interleaved at random, what each side has read is always a prefix of what the
other wrote, no connection fails, and once the link heals everything arrives.
"""
from __future__ import annotations

import random
import struct
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from tcp_sim import (
    ACK,
    FIN,
    PENDING,
    PSH,
    RST,
    SYN,
    URG,
    Faults,
    Flow,
    Link,
    Seg,
    connect,
    parse_tcp,
    run_flows,
    tcp_packet,
)

from _wgcore.datapath import PacketBatch
from _wgcore.tcpip import TcpConn

Recipe = tuple[str, int, dict[str, Any]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1),
       loss=st.floats(0.0, 0.1),
       duplicate=st.floats(0.0, 0.1),
       reorder=st.floats(0.0, 0.3),
       writes=st.lists(st.integers(1, 96 * 1024), min_size=1, max_size=12),
       back=st.integers(0, 200_000),
       v6=st.booleans(),
       mtu=st.integers(576, 1500),
       buffers=st.one_of(st.none(), st.tuples(st.integers(4096, 1 << 20),
                                              st.integers(4096, 4 << 20),
                                              st.integers(4096, 1 << 20))))
@example(seed=516, loss=0.09375, duplicate=0.0625, reorder=0.0, writes=[1, 4727], back=2096,
         v6=False, mtu=576, buffers=None)        # found by this test: FIN on a cut segment
def test_transfer_delivers_exactly_the_sent_bytes(seed: int, loss: float, duplicate: float,
                                                  reorder: float, writes: list[int], back: int,
                                                  v6: bool, mtu: int,
                                                  buffers: tuple[int, int, int] | None) -> None:
    sizes: dict[str, Any] = {} if buffers is None else dict(zip(
        ("send_buffer", "receive_buffer", "receive_buffer_initial"), buffers, strict=True))
    link = Link(Faults(loss=loss, duplicate=duplicate, reorder=reorder), seed=seed, mtu=mtu,
                **sizes)
    c, s = connect(link, v6=v6)
    rng = random.Random(seed)
    chunks = [rng.randbytes(n) for n in writes]
    reply = rng.randbytes(back)
    received = bytearray()
    pending = list(chunks)
    offset = 0
    down = Flow(s, c, reply, shutdown=True)

    def pump() -> bool:
        nonlocal offset
        while pending and c.send_space:
            n = c.send(pending[0][offset:])
            offset += n
            if offset == len(pending[0]):
                pending.pop(0)
                offset = 0
                if not pending:
                    c.shutdown()
        received.extend(s.read())
        down_done = down.pump()
        return not pending and s.at_eof and down_done

    link.run(pump, max_time=3600)
    assert bytes(received) == b"".join(chunks)
    assert bytes(down.received) == reply
    assert c.error == 0 and s.error == 0


# -- forged segments ------------------------------------------------------------------------

class Forger:
    """Knows an idle established connection's numbers from the packets it saw."""

    def __init__(self, link: Link, c: TcpConn, s: TcpConn) -> None:
        self.link, self.c, self.s = link, c, s
        self.captured: list[tuple[int, bytes]] = []
        link.taps.append(lambda side, p: self.captured.append((side, p)))

    def last_from(self, side: int) -> Seg:
        """The latest segment of the connection (not a reset for some forged tuple) that
        stacks[side] sent."""
        ports = (self.c.local[1], self.c.remote[1])[::(1 if side == 0 else -1)]
        for sd, p in reversed(self.captured):
            seg = parse_tcp(p)
            if sd == side and (seg.sport, seg.dport) == ports and not seg.flags & RST:
                return seg
        raise AssertionError("no segment captured")

    def peer_view(self, to: int) -> dict[str, Any]:
        """What the sender of a segment to stacks[to] would use: addresses, ports, its next
        sequence number (the receiver's RCV.NXT), the receiver's SND.NXT and TSval."""
        last = self.last_from(1 - to)
        nxt = last.seq + len(last.payload) + (1 if last.flags & (SYN | FIN) else 0)
        return {"src": last.src, "dst": last.dst, "sport": last.sport, "dport": last.dport,
                "rcv_nxt": nxt, "snd_nxt": last.ack, "tsval": last.tsval()}


option_item = st.one_of(
    st.just(b"\x01"),                                                     # NOP
    st.just(b"\x00"),                                                     # EOL
    st.builds(lambda v: b"\x02\x04" + struct.pack("!H", v), st.integers(0, 65535)),
    st.builds(lambda v: bytes([3, 3, v]), st.integers(0, 255)),           # window scale
    st.just(b"\x04\x02"),                                                 # SACK permitted
    st.builds(lambda a, b: b"\x08\x0a" + struct.pack("!II", a, b), st.integers(0, 2**32 - 1),
              st.integers(0, 2**32 - 1)),                                 # timestamps
    st.builds(lambda blocks: bytes([5, 2 + 8 * len(blocks)])
              + b"".join(struct.pack("!II", x, y) for x, y in blocks),
              st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
                       min_size=0, max_size=4)),                          # SACK, any blocks
    st.builds(lambda k, d: bytes([k, 2 + len(d)]) + d, st.integers(6, 254),
              st.binary(max_size=8)),                                     # unknown kinds
    st.binary(min_size=1, max_size=6),                                    # raw bytes
)
option_bytes = st.lists(option_item, max_size=8).map(lambda items: b"".join(items)[:40])
flag_bits = st.integers(0, 0x3F)
u32 = st.integers(0, 2**32 - 1)


@st.composite
def forgery(draw: st.DrawFn) -> Recipe:
    """A recipe: (kind, target side, parameters); built against the live numbers later."""
    kind = draw(st.sampled_from(["random", "ip_like", "flipped", "out_of_window",
                                 "in_window_ack", "other_port"]))
    to = draw(st.integers(0, 1))
    if kind == "random":
        return kind, to, {"data": draw(st.binary(max_size=120))}
    if kind == "ip_like":
        version = draw(st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x40]))
        return kind, to, {"head": version, "data": draw(st.binary(min_size=0, max_size=120)),
                          "proto6": draw(st.booleans())}
    if kind == "flipped":
        return kind, to, {"index": draw(st.integers(0, 10**6)),
                          "flips": draw(st.lists(st.tuples(st.integers(0, 10**6),
                                                           st.integers(1, 255)),
                                                 min_size=1, max_size=4)),
                          "truncate": draw(st.one_of(st.none(), st.integers(0, 200)))}
    if kind == "out_of_window":
        ahead = draw(st.booleans())
        return kind, to, {"ahead": ahead,
                          "distance": draw(st.integers(16 << 20, (1 << 31) - (16 << 20))),
                          "flags": draw(flag_bits), "ack": draw(u32),
                          "window": draw(st.integers(0, 65535)),
                          "options": draw(option_bytes),
                          "payload": draw(st.binary(max_size=200))}
    if kind == "in_window_ack":
        sacks = draw(st.lists(st.tuples(st.integers(-(1 << 31), (1 << 31) - 1),
                                        st.integers(0, 1 << 20)), max_size=4))
        return kind, to, {"ack_delta": draw(st.one_of(st.integers(-(1 << 30), -1),
                                                      st.integers(1, 1 << 30), st.just(0))),
                          "extra_flags": draw(st.sampled_from([0, PSH, URG, SYN, PSH | URG])),
                          "window": draw(st.integers(0, 65535)),
                          "sacks": sacks, "ts": draw(st.sampled_from(["same", "old", "none"])),
                          "junk_option": draw(st.binary(max_size=6))}
    return kind, to, {"port": draw(st.integers(1, 65535)), "flags": draw(flag_bits),
                      "seq": draw(u32), "ack": draw(u32)}


def build(recipe: Recipe, forger: Forger) -> bytes:
    kind, to, p = recipe
    if kind == "random":
        return bytes(p["data"])
    if kind == "ip_like":
        data = bytearray([p["head"]]) + bytearray(p["data"])
        if len(data) > 9:
            data[9] = 6
        if p["proto6"] and len(data) > 6 and data[0] >> 4 == 6:
            data[6] = 6
        return bytes(data)
    if kind == "flipped":
        own = [pk for sd, pk in forger.captured if sd == 1 - to]
        data = bytearray(own[p["index"] % len(own)])
        for pos, mask in p["flips"]:
            data[pos % len(data)] ^= mask
        if p["truncate"] is not None:
            data = data[:p["truncate"]]
        return bytes(data)
    v = forger.peer_view(to)
    if kind == "out_of_window":
        # beyond any window the receiver could have offered, or entirely before RCV.NXT
        payload = p["payload"]
        if p["ahead"]:
            seq = v["rcv_nxt"] + p["distance"]
        else:
            seq = v["rcv_nxt"] - p["distance"] - len(payload) - 2
        return tcp_packet(v["src"], v["dst"], v["sport"], v["dport"], seq=seq, ack=p["ack"],
                          flags=p["flags"], window=p["window"], options=p["options"],
                          payload=payload)
    if kind == "in_window_ack":
        options = b""
        if p["ts"] != "none" and v["tsval"] is not None:
            tsval = v["tsval"] - (1000 if p["ts"] == "old" else 0)
            options += bytes([1, 1, 8, 10]) + struct.pack("!II", tsval & 0xFFFFFFFF, 0)
        if p["sacks"]:
            blocks = p["sacks"][:3]
            options += bytes([1, 1, 5, 2 + 8 * len(blocks)])
            for start, length in blocks:
                left = (v["snd_nxt"] + start) & 0xFFFFFFFF
                options += struct.pack("!II", left, (left + length) & 0xFFFFFFFF)
        if p["junk_option"] and len(options) + 2 + len(p["junk_option"]) <= 40:
            junk = p["junk_option"]
            options += bytes([junk[0] % 20 + 9, 2 + len(junk) - 1]) + junk[1:]
        return tcp_packet(v["src"], v["dst"], v["sport"], v["dport"], seq=v["rcv_nxt"],
                          ack=v["snd_nxt"] + p["ack_delta"], flags=ACK | p["extra_flags"],
                          window=p["window"], options=options[:40])
    port = p["port"] if p["port"] != v["sport"] else v["sport"] ^ 1 or 1
    return tcp_packet(v["src"], v["dst"], port, v["dport"], seq=p["seq"], ack=p["ack"],
                      flags=p["flags"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), recipes=st.lists(forgery(), min_size=1, max_size=25))
def test_forged_segments_never_raise_nor_wedge(seed: int, recipes: list[Recipe]) -> None:
    link = Link(seed=seed)
    c, s = connect(link, v6=bool(seed & 1))
    forger = Forger(link, c, s)
    warmup = [Flow(c, s, b"ping" * 300), Flow(s, c, b"pong" * 200)]
    run_flows(link, warmup, max_time=10)
    link.advance(1)              # idle: every segment acknowledged, no delayed ACK owed
    tx = PacketBatch(64, 2048)
    for recipe in recipes:
        packet = build(recipe, forger)
        tx.clear()
        # straight into the stack: whatever it answers goes over the link
        result = link.stacks[recipe[1]].input_packet(packet, tx, link.now)
        assert result in (True, False)
        for _, out, _, _ in tx.collect(PENDING):
            link._send(recipe[1], out)
        link.step()
    link.advance(2)
    assert c.state_name == s.state_name == "ESTABLISHED", (c.counters(), s.counters())
    up, down = payload_for(seed, 64 * 1024), payload_for(seed + 1, 48 * 1024)
    flows = [Flow(c, s, up), Flow(s, c, down)]
    run_flows(link, flows, max_time=300)
    assert bytes(flows[0].received) == up and bytes(flows[1].received) == down
    assert c.error == s.error == 0


def payload_for(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_forged_segments_example_big_sack_and_old_ack() -> None:
    """A fixed example of the forgery law (runs without hypothesis' search)."""
    link = Link(seed=2)
    c, s = connect(link)
    forger = Forger(link, c, s)
    run_flows(link, [Flow(c, s, b"x" * 5000), Flow(s, c, b"y" * 3000)], max_time=10)
    link.run(lambda: not link.queue, max_time=5)
    v = forger.peer_view(1)
    tx = PacketBatch(64, 2048)
    sack = bytes([1, 1, 5, 10]) + struct.pack("!II", v["snd_nxt"] - 100, v["snd_nxt"] + 10**6)
    for packet in (
        tcp_packet(v["src"], v["dst"], v["sport"], v["dport"], seq=v["rcv_nxt"],
                   ack=v["snd_nxt"] - 5, window=0, options=sack),
        tcp_packet(v["src"], v["dst"], v["sport"], v["dport"], seq=v["rcv_nxt"],
                   ack=v["snd_nxt"] + 7, window=0),
        tcp_packet(v["src"], v["dst"], v["sport"], v["dport"], seq=v["rcv_nxt"] + (1 << 30),
                   ack=v["snd_nxt"], flags=RST | ACK),
        tcp_packet(v["src"], v["dst"], v["sport"], v["dport"], seq=v["rcv_nxt"] - 10**6,
                   ack=v["snd_nxt"], flags=FIN | ACK, payload=b"evil"),
    ):
        tx.clear()
        assert link.b.input_packet(packet, tx, link.now) is True
    assert s.state_name == "ESTABLISHED"
    flows = [Flow(c, s, b"a" * 70_000), Flow(s, c, b"b" * 70_000)]
    run_flows(link, flows, max_time=120)
    assert flows[0].received == b"a" * 70_000 and flows[1].received == b"b" * 70_000


# -- interleaved application calls --------------------------------------------------------

class TcpPair(RuleBasedStateMachine):
    """Law 1 where the application's timing matters: writes, partial reads, half-closes and
    changes of the link's faults interleave with simulated time. At every step what each side
    read is a prefix of what the other wrote; at the end (faults healed, time run on) it is
    all of it, followed by EOF where the writer shut down."""

    link: Link
    conns: list[TcpConn]

    def __init__(self) -> None:
        super().__init__()
        self.opened = False

    @initialize(seed=st.integers(0, 2**32 - 1), v6=st.booleans())
    def open(self, seed: int, v6: bool) -> None:
        self.link = Link(seed=seed)
        self.opened = True
        c, s = connect(self.link, v6=v6)
        self.conns = [c, s]
        self.rng = random.Random(seed)
        self.written = [bytearray(), bytearray()]
        self.read = [bytearray(), bytearray()]
        self.shut = [False, False]

    @rule(side=st.integers(0, 1), n=st.integers(1, 100_000))
    def write(self, side: int, n: int) -> None:
        conn = self.conns[side]
        if self.shut[side]:
            return
        data = self.rng.randbytes(n)
        taken = conn.send(data)
        assert 0 <= taken <= n
        self.written[side] += data[:taken]

    @rule(side=st.integers(0, 1), limit=st.one_of(st.just(-1), st.integers(0, 100_000)))
    def read_some(self, side: int, limit: int) -> None:
        got = self.conns[side].read(limit)
        assert limit < 0 or len(got) <= limit
        self.read[side] += got

    @rule(side=st.integers(0, 1))
    def shutdown(self, side: int) -> None:
        if not self.shut[side]:
            self.conns[side].shutdown()
            self.shut[side] = True

    @rule(seconds=st.one_of(st.floats(0.0005, 3.0), st.sampled_from([30.0, 61.0, 100.0])))
    def wait(self, seconds: float) -> None:
        self.link.advance(seconds)

    @rule(loss=st.floats(0.0, 0.2), duplicate=st.floats(0.0, 0.1), reorder=st.floats(0.0, 0.3),
          delay=st.floats(0.0001, 0.05))
    def weather(self, loss: float, duplicate: float, reorder: float, delay: float) -> None:
        self.link.faults = [Faults(loss=loss, duplicate=duplicate, reorder=reorder, delay=delay)] * 2

    @invariant()
    def reads_are_prefixes_and_nothing_failed(self) -> None:
        if not self.opened:
            return
        for side in (0, 1):
            got, sent = self.read[side], self.written[1 - side]
            assert got == sent[:len(got)]
            assert self.conns[side].error == 0

    def teardown(self) -> None:
        if not self.opened:
            return
        self.link.faults = [Faults(), Faults()]
        c, s = self.conns

        def drained() -> bool:
            for side in (0, 1):
                self.read[side] += self.conns[side].read()
            return all(len(self.read[side]) == len(self.written[1 - side])
                       and (not self.shut[1 - side] or self.conns[side].at_eof)
                       for side in (0, 1))

        self.link.run(drained, max_time=3600)
        for side in (0, 1):
            assert self.read[side] == self.written[1 - side]
        assert c.error == s.error == 0


TcpPair.TestCase.settings = settings(max_examples=100, stateful_step_count=25, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
test_interleaved_application_calls = TcpPair.TestCase
