"""Two TcpStacks back to back over an in-memory link with a fake clock (STYLE §12).

The link carries inner IP packets from one stack's ``output`` to the other's ``input_packet``,
with seeded loss, duplication, reordering (extra random delay) and a fixed one-way delay. Time
only moves when :meth:`Link.run` advances it to the next event (packet arrival or stack timer),
so a transfer that takes minutes of simulated retransmission timeouts runs in milliseconds.

Besides the link itself: taps see every packet a stack emits (before the faults), `drop` and
`extra_delay` hooks lose or delay chosen packets (scripted loss patterns), `inject`
delivers hand-made packets, `watch` records each connection's state changes step by step,
events raised by connections and listeners are collected (`events_of`), `Flow` pumps bytes
from one connection to another, and `tcp_packet`/`parse_tcp` build and read raw segments.
"""
from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from _wgcore.datapath import RESULT, PacketBatch
from _wgcore.tcpip import TcpConn, TcpListener, TcpStack

PENDING = RESULT["PENDING"]
A_ADDR = bytes([10, 0, 0, 1])
B_ADDR = bytes([10, 0, 0, 2])
A_ADDR6 = bytes.fromhex("fd7a115ca1e000000000000000000001")
B_ADDR6 = bytes.fromhex("fd7a115ca1e000000000000000000002")


@dataclass
class Faults:
    loss: float = 0.0          # probability a packet is dropped
    duplicate: float = 0.0     # probability a packet is delivered twice
    reorder: float = 0.0       # probability a packet gets `reorder_delay` extra delay
    reorder_delay: float = 0.003
    delay: float = 0.001       # one-way delay, seconds
    corrupt: float = 0.0       # probability one byte is flipped (checksums must catch it)


@dataclass(order=True)
class _Arrival:
    at: float
    seq: int
    to: int = field(compare=False)
    packet: bytes = field(compare=False)


class Link:
    """stacks[0] <-> stacks[1]; `faults` apply to both directions unless `faults_ab`/`faults_ba`."""

    def __init__(self, faults: Faults | None = None, seed: int = 1, mtu: int = 1280,
                 faults_ba: Faults | None = None, **stack_kwargs: Any) -> None:
        self.rng = random.Random(seed)
        self.faults = [faults or Faults(), faults_ba or faults or Faults()]
        self.stacks = [TcpStack(mtu=mtu, **stack_kwargs), TcpStack(mtu=mtu, **stack_kwargs)]
        self.stacks[0].set_addresses([A_ADDR, A_ADDR6])
        self.stacks[1].set_addresses([B_ADDR, B_ADDR6])
        self.now = 1000.0
        self.queue: list[_Arrival] = []
        self._seq = 0
        self.tx = [PacketBatch(64, 2048), PacketBatch(64, 2048)]
        self.delivered = [0, 0]
        self.dropped = [0, 0]
        self.on_events: Callable[[int, list[TcpConn | TcpListener]], None] | None = None
        # every packet a stack emits, before faults: tap(sending side, packet)
        self.taps: list[Callable[[int, bytes], None]] = []
        # drop(sending side, packet) -> True: lose this packet (before the seeded faults)
        self.drop: Callable[[int, bytes], bool] | None = None
        # delay(sending side, packet) -> extra one-way delay for this packet (seconds)
        self.extra_delay: Callable[[int, bytes], float] | None = None
        self.trace: dict[TcpConn, list[tuple[float, str]]] = {}
        self._events: dict[TcpConn | TcpListener, int] = {}

    @property
    def a(self) -> TcpStack:
        return self.stacks[0]

    @property
    def b(self) -> TcpStack:
        return self.stacks[1]

    def _drain(self, side: int) -> None:
        stack, tx = self.stacks[side], self.tx[side]
        while True:
            tx.clear()
            more = stack.output(tx, self.now)
            for _, packet, _, _ in tx.collect(PENDING):
                self._send(side, packet)
            if not more:
                break

    def _send(self, side: int, packet: bytes) -> None:
        for tap in self.taps:
            tap(side, packet)
        f = self.faults[side]
        rng = self.rng
        if self.drop is not None and self.drop(side, packet):
            self.dropped[side] += 1
            return
        extra = self.extra_delay(side, packet) if self.extra_delay is not None else 0.0
        if rng.random() < f.loss:
            self.dropped[side] += 1
            return
        copies = 2 if rng.random() < f.duplicate else 1
        for _ in range(copies):
            data = packet
            if f.corrupt and rng.random() < f.corrupt:
                b = bytearray(packet)
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                data = bytes(b)
            delay = f.delay + extra + \
                (f.reorder_delay * rng.random() if rng.random() < f.reorder else 0.0)
            self._seq += 1
            heapq.heappush(self.queue, _Arrival(self.now + delay, self._seq, 1 - side, data))

    def _next_time(self) -> float | None:
        times = [self.queue[0].at] if self.queue else []
        for stack in self.stacks:
            t = stack.get_timer()
            if t is not None:
                times.append(t)
        return min(times) if times else None

    def step(self) -> bool:
        """Advance to the next event and process it. False when nothing is left to happen."""
        for side in (0, 1):
            self._drain(side)
        t = self._next_time()
        if t is None:
            return False
        self.now = max(self.now, t)
        touched: list[set[int]] = [set(), set()]
        while self.queue and self.queue[0].at <= self.now:
            arrival = heapq.heappop(self.queue)
            stack, tx = self.stacks[arrival.to], self.tx[arrival.to]
            tx.clear()
            stack.input_packet(arrival.packet, tx, self.now)
            for _, packet, _, _ in tx.collect(PENDING):
                self._send(arrival.to, packet)
            self.delivered[arrival.to] += 1
            touched[arrival.to].add(1)
        for side in (0, 1):
            self.stacks[side].handle_timer(self.now)
        self.collect_events()
        self._record_states()
        return True

    def collect_events(self) -> None:
        """Take every touched object's events into the log (`events_of`) and `on_events`."""
        for side in (0, 1):
            objs = self.stacks[side].take_touched()
            for obj in objs:
                self._events[obj] = self._events.get(obj, 0) | obj.take_events()
            if objs and self.on_events is not None:
                self.on_events(side, objs)

    def events_of(self, obj: TcpConn | TcpListener) -> int:
        """Every event flag `obj` raised so far (OR of its take_events)."""
        self.collect_events()
        return self._events.get(obj, 0)

    def watch(self, *conns: TcpConn) -> None:
        """Record each state change of `conns` after every step in ``trace[conn]``."""
        for c in conns:
            self.trace[c] = [(self.now, c.state_name)]

    def states(self, conn: TcpConn) -> list[str]:
        self._record_states()
        return [name for _, name in self.trace[conn]]

    def _record_states(self) -> None:
        for c, seen in self.trace.items():
            if seen[-1][1] != c.state_name:
                seen.append((self.now, c.state_name))

    def inject(self, to: int, packet: bytes, delay: float = 0.0) -> None:
        """Deliver a hand-made packet to stacks[to] (no faults applied)."""
        self._seq += 1
        heapq.heappush(self.queue, _Arrival(self.now + delay, self._seq, to, bytes(packet)))

    def advance(self, seconds: float, pump: Callable[[], object] | None = None) -> None:
        """Process every event of the next `seconds` simulated seconds (calling `pump` before
        each step, like a run condition), then leave the clock at their end."""
        end = self.now + seconds
        while True:
            if pump is not None:
                pump()
            for side in (0, 1):
                self._drain(side)
            t = self._next_time()
            if t is None or t > end:
                break
            self.step()
        self.now = max(self.now, end)

    def run(self, until: Callable[[], bool], max_time: float = 600.0,
            max_steps: int = 5_000_000) -> None:
        """Step until `until()` holds; raises AssertionError if simulated time or steps run out."""
        start = self.now
        for _ in range(max_steps):
            if until():
                return
            if not self.step():
                if until():
                    return
                raise AssertionError("the link went idle before the condition held")
            if self.now - start > max_time:
                raise AssertionError(f"condition not met after {max_time} simulated seconds")
        raise AssertionError("step limit reached")


class Flow:
    """Pumps `data` from `src` to `dst`: writes as the send ring allows, reads everything
    readable; shuts `src` down after the last byte when `shutdown`. Call :meth:`pump` from a
    run condition (it returns True once `dst` has all the bytes, and the EOF if shut down)."""

    def __init__(self, src: TcpConn, dst: TcpConn, data: bytes, shutdown: bool = False,
                 chunk: int = 1 << 20, read: bool = True) -> None:
        self.src, self.dst, self.data = src, dst, data
        self.shutdown, self.chunk, self.read = shutdown, chunk, read
        self.sent = 0
        self.received = bytearray()
        self._shut = False

    def pump(self) -> bool:
        view = memoryview(self.data)
        while self.sent < len(self.data) and self.src.send_space:
            n = self.src.send(view[self.sent:self.sent + self.chunk])
            if n == 0:
                break
            self.sent += n
        if self.shutdown and not self._shut and self.sent == len(self.data):
            self.src.shutdown()
            self._shut = True
        if self.read:
            self.received += self.dst.read()
        return self.done

    @property
    def done(self) -> bool:
        if len(self.received) < len(self.data):
            return False
        return not self.shutdown or self.dst.at_eof


def run_flows(link: Link, flows: Iterable[Flow], max_time: float = 600.0) -> None:
    flows = list(flows)

    def pump_all() -> bool:
        done = [f.pump() for f in flows]      # every flow, every step (no short-circuit)
        return all(done)

    link.run(pump_all, max_time=max_time)


# -- raw segments -------------------------------------------------------------------------------

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int = 0, ack: int = 0,
               flags: int = ACK, window: int = 65535, options: bytes = b"",
               payload: bytes = b"", ttl: int = 64) -> bytes:
    """An IPv4 or IPv6 packet (by address length) with one TCP segment, checksums right."""
    options += b"\0" * (-len(options) % 4)
    header = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                         (20 + len(options)) // 4 << 4, flags, window, 0, 0)
    segment = header + options + payload
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(segment))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(segment), 6)
    segment = segment[:16] + struct.pack("!H", _csum(pseudo + segment)) + segment[18:]
    if len(src) == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 0, 0x4000, ttl, 6, 0,
                         src, dst)
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(segment), 6, ttl, src, dst)
    return ip + segment


@dataclass
class Seg:
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    options: bytes
    payload: bytes

    def tsval(self) -> int | None:
        """The timestamp option's TSval, if the segment carries one."""
        o, i = self.options, 0
        while i < len(o):
            if o[i] == 0:
                break
            if o[i] == 1:
                i += 1
                continue
            if i + 1 >= len(o) or o[i + 1] < 2:
                break
            if o[i] == 8 and o[i + 1] == 10:
                return int.from_bytes(o[i + 2:i + 6], "big")
            i += o[i + 1]
        return None


def parse_tcp(packet: bytes) -> Seg:
    """The TCP segment of an IPv4/IPv6 packet our stacks emit (no validation)."""
    if packet[0] >> 4 == 4:
        src, dst, t = packet[12:16], packet[16:20], packet[20:]
    else:
        src, dst, t = packet[8:24], packet[24:40], packet[40:]
    sport, dport, seq, ack, off, flags, window = struct.unpack("!HHIIBBH", t[:16])
    doff = (off >> 4) * 4
    return Seg(src, dst, sport, dport, seq, ack, flags & 0x3F, window, t[20:doff], t[doff:])


def accept(listener: TcpListener) -> TcpConn:
    """The next connection of the accept queue, which must not be empty."""
    conn = listener.accept()
    assert conn is not None, "nothing to accept"
    return conn


def connect(link: Link, port: int = 80, v6: bool = False) -> tuple[TcpConn, TcpConn]:
    """An established connection a→b; returns (client conn on a, server conn on b)."""
    listener = link.b.listen(port) if not any(l.port == port for l in link.b.listeners()) else \
        next(l for l in link.b.listeners() if l.port == port)
    src, dst = (A_ADDR6, B_ADDR6) if v6 else (A_ADDR, B_ADDR)
    lport = 40000 + link.rng.randrange(20000)
    client = link.a.connect(src, lport, dst, port, link.now)
    accepted: list[TcpConn] = []

    def done() -> bool:
        if not accepted:
            c = listener.accept()
            if c is not None:
                accepted.append(c)
        return bool(accepted) and client.state_name == "ESTABLISHED"

    link.run(done, max_time=120)
    return client, accepted[0]
