"""Two sans-IO Nodes back to back in memory with a fake clock (STYLE §12).

Mirrors what ``aio.tunnel.Tunnel`` does with a socket and the loop: received datagrams go to
``Node.receive_batch`` (ACKs owed land in the node's tx batch), the interface's events are
drained, then ``fill``/``seal`` run until there is nothing more, and ``handle_timer`` runs when
``get_timer()`` is due. The "link" carries sealed datagrams from one node's tx batch to the
other's rx batch after a fixed one-way ``delay``, and may drop or duplicate them by a seeded
rule. Time only moves in :meth:`NodePair.run`: to the next arrival or deadline.
"""
from __future__ import annotations

import heapq
import random
import socket
from collections.abc import Callable

from _wgcore.datapath import RESULT, PacketBatch

from agentconn.net.events import Event
from agentconn.node import Node
from agentconn.wg.config import load_config
from agentconn.wg.crypto import dh_generate, public_key
from agentconn.wg.endpoint import sockaddr
from agentconn.wg.keys import encode_key

RES_SEALED = RESULT["SEALED"]
RES_RAW = RESULT["RAW"]
ADDR_A = sockaddr("127.0.0.1", 10001, socket.AF_INET)
ADDR_B = sockaddr("127.0.0.1", 10002, socket.AF_INET)
RX_SLOTS = 64
TX_SLOTS = 256
SLOT_SIZE = 2048


def node_configs(mtu: int = 1420) -> tuple[str, str]:
    """wg-quick texts for A (10.44.0.1, fd44::1) and B (10.44.0.2, fd44::2), peers of each
    other."""
    ka, kb = dh_generate(), dh_generate()

    def conf(own: bytes, peer: bytes, me: int, them: int) -> str:
        return (f"[Interface]\nPrivateKey = {encode_key(own)}\nMTU = {mtu}\n"
                f"Address = 10.44.0.{me}/24, fd44::{me}/64\n"
                f"[Peer]\nPublicKey = {encode_key(public_key(peer))}\n"
                f"AllowedIPs = 10.44.0.{them}/32, fd44::{them}/128\n")
    return conf(ka, kb, 1, 2), conf(kb, ka, 2, 1)


class NodePair:
    """Nodes A and B linked in memory. ``events[node]`` collects ``(now, event)``;
    ``handlers[node]``, when set, is called with each event as it is drained (like the
    tunnel's watchers), so a test can read and write sockets while the clock runs."""

    def __init__(self, *, delay: float = 0.125, drop: float = 0.0, duplicate: float = 0.0,
                 seed: int = 1, mtu: int = 1420) -> None:
        ca, cb = node_configs(mtu)
        self.a, self.b = Node(load_config(ca)), Node(load_config(cb))
        self.a.add_peer(self.a.config.peers[0], ADDR_B)
        self.b.add_peer(self.b.config.peers[0], ADDR_A)
        self.addr = {self.a: ADDR_A, self.b: ADDR_B}
        self.tx = {n: PacketBatch(TX_SLOTS, SLOT_SIZE) for n in (self.a, self.b)}
        self.events: dict[Node, list[tuple[float, Event]]] = {self.a: [], self.b: []}
        self.handlers: dict[Node, Callable[[Event], None] | None] = {self.a: None, self.b: None}
        self.start_time = self.now = 1000.0
        self.wall = 1_700_000_000.0
        self.delay = delay
        self.drop, self.duplicate = drop, duplicate
        self.rng = random.Random(seed)
        self.sent = self.delivered = self.dropped = 0
        self._inflight: list[tuple[float, int, Node, bytes, bytes]] = []   # heap
        self._seq = 0
        self.a.start()
        self.b.start()

    def other(self, node: Node) -> Node:
        return self.b if node is self.a else self.a

    # -- the link -----------------------------------------------------------------------------

    def _send(self, node: Node) -> None:
        """Seal `node`'s tx batch and put its datagrams on the link."""
        tx = self.tx[node]
        node.seal(tx, self.now, self.wall)
        dst = self.other(node)
        for result in (RES_RAW, RES_SEALED):
            for _, datagram, address, _ in tx.collect(result):
                assert address == self.addr[dst]
                self.sent += 1
                copies = 1
                if self.drop and self.rng.random() < self.drop:
                    copies = 0
                elif self.duplicate and self.rng.random() < self.duplicate:
                    copies = 2
                self.dropped += copies == 0
                for _ in range(copies):
                    self._seq += 1
                    heapq.heappush(self._inflight, (self.now + self.delay, self._seq, dst,
                                                    datagram, self.addr[node]))
        tx.clear()

    def _flush(self, node: Node) -> bool:
        """fill + seal until the node has nothing more (Tunnel._flush). Returns whether
        anything was sent."""
        sent = False
        for _ in range(10_000):
            tx = self.tx[node]
            more = node.fill(tx, self.now)
            if tx.count:
                self._send(node)
                sent = True
            if not (more or node.has_output):
                return sent
        raise AssertionError("fill never ran dry")

    def _receive(self, node: Node, datagrams: list[tuple[bytes, bytes]]) -> None:
        tx = self.tx[node]
        for i in range(0, len(datagrams), RX_SLOTS):
            rx = PacketBatch(RX_SLOTS, SLOT_SIZE)
            for datagram, source in datagrams[i:i + RX_SLOTS]:
                rx.add_datagram(datagram, source)
            node.receive_batch(rx, tx, self.now, self.wall, self.now)
            self.delivered += rx.count
            if tx.count * 2 >= tx.slots:
                self._send(node)          # ACKs owed mid-burst go out now
            self._dispatch(node)

    def _dispatch(self, node: Node) -> None:
        while (event := node.iface.next_event()) is not None:
            self.events[node].append((self.now, event))
            handler = self.handlers[node]
            if handler is not None:
                handler(event)

    # -- the clock ----------------------------------------------------------------------------

    def next_time(self) -> float | None:
        """The earliest arrival on the link or deadline of either node."""
        times = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
        if self._inflight:
            times.append(self._inflight[0][0])
        return min(times, default=None)

    def settle(self) -> None:
        """Do everything due at ``now``: arrivals, timers, events, flushes."""
        for _ in range(100_000):
            busy = False
            due: dict[Node, list[tuple[bytes, bytes]]] = {self.a: [], self.b: []}
            while self._inflight and self._inflight[0][0] <= self.now:
                _, _, dst, datagram, source = heapq.heappop(self._inflight)
                due[dst].append((datagram, source))
            for node in (self.a, self.b):
                if due[node]:
                    busy = True
                    self._receive(node, due[node])
                deadline = node.get_timer()
                if deadline is not None and deadline <= self.now:
                    busy = True
                    node.handle_timer(self.now, self.wall)
                self._dispatch(node)
                busy |= self._flush(node)
            if not busy:
                return
        raise AssertionError(f"nothing settles at t={self.now - self.start_time}")

    def _set_time(self, t: float) -> None:
        if t > self.now:
            self.wall += t - self.now
            self.now = t

    def run(self, until: Callable[[], bool], max_time: float = 60.0) -> None:
        """Settle, then jump to the next arrival/deadline, until `until()` holds. Fails if it
        does not within `max_time` seconds of fake time."""
        end = self.now + max_time
        for _ in range(1_000_000):
            self.settle()
            if until():
                return
            t = self.next_time()
            if t is None or t > end:
                raise AssertionError(f"condition not reached within {max_time} s of fake "
                                     f"time (next event: {t and t - self.now})")
            self._set_time(t)
        raise AssertionError("too many steps")

    def advance(self, seconds: float) -> None:
        """Let `seconds` of fake time pass, handling everything due on the way."""
        end = self.now + seconds
        while True:
            self.settle()
            t = self.next_time()
            if t is None or t > end:
                break
            self._set_time(t)
        self._set_time(end)
        self.settle()

    def last_event(self, node: Node, kind: type) -> tuple[float, Event]:
        """The (time, event) of `node`'s latest event of type `kind`."""
        found = [(t, e) for t, e in self.events[node] if isinstance(e, kind)]
        assert found, f"no {kind.__name__} event"
        return found[-1]
