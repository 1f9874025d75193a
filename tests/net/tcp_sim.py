"""Two TcpStacks back to back over an in-memory link with a fake clock (STYLE §12).

The link carries inner IP packets from one stack's ``output`` to the other's ``input_packet``,
with seeded loss, duplication, reordering (extra random delay) and a fixed one-way delay. Time
only moves when :meth:`Link.run` advances it to the next event (packet arrival or stack timer),
so a transfer that takes minutes of simulated retransmission timeouts runs in milliseconds.
"""
from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from _wgcore.datapath import RESULT, PacketBatch
from _wgcore.tcp import TcpConn, TcpStack

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
                 faults_ba: Faults | None = None, **stack_kwargs: object) -> None:
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
        self.on_events: Callable[[int, list[object]], None] | None = None

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
        f = self.faults[side]
        rng = self.rng
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
            delay = f.delay + (f.reorder_delay * rng.random() if rng.random() < f.reorder else 0.0)
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
        for side in (0, 1):
            objs = self.stacks[side].take_touched()
            if objs and self.on_events is not None:
                self.on_events(side, objs)
        return True

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
