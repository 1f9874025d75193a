"""Two Devices back to back in memory with a controllable clock (STYLE §12).

The "link" moves sealed datagrams between the two devices' batches with no socket, so a test can
run minutes of protocol time in milliseconds and can drop, duplicate or reorder datagrams.
"""
from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from _wgcore.datapath import RESULT, PacketBatch

from agentconn.wg.config import PeerConfig
from agentconn.wg.crypto import dh_generate
from agentconn.wg.device import Device
from agentconn.wg.endpoint import sockaddr

RES_SEALED = RESULT["SEALED"]
RES_RAW = RESULT["RAW"]
RES_DATA = RESULT["DATA"]

ADDR_A = sockaddr("127.0.0.1", 10001, socket.AF_INET)
ADDR_B = sockaddr("127.0.0.1", 10002, socket.AF_INET)
IP_A = ipaddress.ip_address("10.0.0.1")
IP_B = ipaddress.ip_address("10.0.0.2")


def ipv4_packet(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, payload: bytes,
                protocol: int = 253) -> bytes:
    from agentconn.net.wire.ipv4 import Ipv4Repr
    return Ipv4Repr(src=src, dst=dst, protocol=protocol, payload_len=len(payload)).emit(payload)


@dataclass
class Side:
    device: Device
    addr: bytes
    received: list[bytes] = field(default_factory=list)
    outbox: list[bytes] = field(default_factory=list)


class DevicePair:
    """Devices A (10.0.0.1) and B (10.0.0.2), each with the other as its only peer."""

    def __init__(self, *, seed: int = 1, a_endpoint: bool = True, b_endpoint: bool = True,
                 psk: bytes | None = None, keepalive: int = 0, mtu: int = 1420) -> None:
        rnd = random.Random(seed)
        self.now = 1000.0
        self.wall = 1_700_000_000.0
        key_a = dh_generate(lambda n: rnd.randbytes(n))
        key_b = dh_generate(lambda n: rnd.randbytes(n))
        self.a = Side(Device(key_a, mtu=mtu, rng=random.Random(seed + 1),
                             random_bytes=lambda n: rnd.randbytes(n)), ADDR_A)
        self.b = Side(Device(key_b, mtu=mtu, rng=random.Random(seed + 2),
                             random_bytes=lambda n: rnd.randbytes(n)), ADDR_B)
        self.peer_of_a = self.a.device.add_peer(
            PeerConfig(public_key=self.b.device.public_key, preshared_key=psk, endpoint=None,
                       allowed_ips=[ipaddress.ip_network("10.0.0.2/32")],
                       persistent_keepalive=keepalive),
            ADDR_B if a_endpoint else b"")
        self.peer_of_b = self.b.device.add_peer(
            PeerConfig(public_key=self.a.device.public_key, preshared_key=psk, endpoint=None,
                       allowed_ips=[ipaddress.ip_network("10.0.0.1/32")],
                       persistent_keepalive=keepalive),
            ADDR_A if b_endpoint else b"")
        # link behaviour: a filter may drop (return []) or duplicate datagrams
        self.link: Callable[[bytes, Side, Side], list[bytes]] = lambda d, s, r: [d]
        self.wire_log: list[tuple[str, bytes]] = []

    def other(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    def send(self, side: Side, *packets: bytes) -> None:
        """Inner IP packets from `side`'s IP layer; they leave at the next flush."""
        side.outbox.extend(packets)

    def flush(self, side: Side) -> list[bytes]:
        """Run one flush of `side`: fill, encrypt, hooks; return the datagrams on the wire."""
        out: list[bytes] = []
        for _ in range(4):
            if not (side.outbox or side.device.has_pending()):
                break
            tx = PacketBatch(256, 2048)
            side.device.fill(tx)
            while side.outbox and tx.count < tx.slots:
                tx.add_packet(side.outbox.pop(0))
            side.device.datapath.encrypt(tx, self.now)
            side.device.after_encrypt(tx, self.now, self.wall)
            for i in range(tx.count):
                if tx.result(i) in (RES_SEALED, RES_RAW):
                    out.append(tx.datagram(i))
        return out

    def deliver(self, side: Side, datagrams: list[bytes], source: bytes) -> None:
        rx = PacketBatch(max(1, len(datagrams)), 2048)
        for d in datagrams:
            rx.add_datagram(d, source)
        side.device.datapath.decrypt(rx, self.now)
        for i in range(rx.count):
            if rx.result(i) == RES_DATA:
                side.received.append(rx.inner(i))
        side.device.after_decrypt(rx, self.now, self.wall)

    def step(self) -> int:
        """Flush both sides and deliver what crossed the link. Returns datagrams moved."""
        moved = 0
        for src in (self.a, self.b):
            dst = self.other(src)
            wire = []
            for d in self.flush(src):
                self.wire_log.append(("a->b" if src is self.a else "b->a", d))
                wire.extend(self.link(d, src, dst))
            if wire:
                self.deliver(dst, wire, src.addr)
            moved += len(wire)
        return moved

    def run(self, max_steps: int = 50) -> None:
        """Step until nothing moves."""
        for _ in range(max_steps):
            if self.step() == 0 and not (self.a.device.has_pending() or self.b.device.has_pending()):
                return

    def advance(self, seconds: float, *, tick: float | None = None) -> None:
        """Move the clock forward, firing timers in deadline order and exchanging traffic."""
        end = self.now + seconds
        while True:
            deadlines = [d for d in (self.a.device.get_timer(), self.b.device.get_timer())
                         if d is not None and d <= end]
            if tick is not None:
                deadlines.append(min(end, self.now + tick))
            if not deadlines:
                break
            at = max(self.now, min(deadlines))
            self.wall += at - self.now
            self.now = at
            for side in (self.a, self.b):
                side.device.handle_timer(self.now, self.wall)
            self.run()
            if self.now >= end:
                break
        self.wall += end - self.now
        self.now = end
