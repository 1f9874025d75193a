"""The magicsock path state machine (sans-IO, fake clock): two of our cores on a simulated
network of UDP endpoints and one DERP region; no sockets, no sleeping."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentconn.coder.disco import MAGIC, CallMeMaybe, Ping, seal_packet
from agentconn.coder.keys import DiscoPrivate, NodePrivate
from agentconn.coder.magicsock import (
    DISCO_PING_INTERVAL,
    HEARTBEAT_INTERVAL,
    SESSION_ACTIVE_TIMEOUT,
    TRUST_UDP_ADDR_DURATION,
    Magicsock,
    PathChanged,
    better_addr,
    parse_endpoint,
)

LO = ipaddress.ip_address("127.0.0.1")
REGION = 1


def ep(port: int, ip: str = "127.0.0.1") -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    return ipaddress.ip_address(ip), port


@dataclass
class Side:
    ms: Magicsock
    addr: tuple
    node: NodePrivate
    disco: DiscoPrivate
    last_send: float | None = 0.0
    paths: list = field(default_factory=list)


class Net:
    """Delivers queued packets: UDP to the side bound at the endpoint (unless blocked), DERP
    to the side with that node key. Each hop takes `delay` seconds of fake time."""

    def __init__(self, delay: float = 0.001) -> None:
        self.now = 0.0
        self.delay = delay
        self.sides: list[Side] = []
        self.blocked = False
        self.udp_sent = 0
        self.derp_sent = 0

    def side(self, port: int, **kw: object) -> Side:
        node, disco = NodePrivate.generate(), DiscoPrivate.generate()
        holder: dict[str, Side] = {}
        ms = Magicsock(disco, node.public, last_send=lambda _k: holder["s"].last_send, **kw)
        s = holder["s"] = Side(ms, ep(port), node, disco)
        ms.set_local_endpoints([ep(port)])
        self.sides.append(s)
        return s

    def introduce(self, a: Side, b: Side, *, a_eps: list | None = None,
                  b_eps: list | None = None) -> None:
        a.ms.add_peer(b.disco.public, b.node.public, REGION,
                      [b.addr] if b_eps is None else b_eps, self.now)
        b.ms.add_peer(a.disco.public, a.node.public, REGION,
                      [a.addr] if a_eps is None else a_eps, self.now)

    def run(self, until: float) -> None:
        """Deliver packets and fire timers until fake time `until`."""
        while True:
            moved = self.deliver()
            deadlines = [t for s in self.sides if (t := s.ms.get_timer()) is not None]
            nxt = min(deadlines) if deadlines else None
            if moved:
                continue
            if nxt is None or nxt > until:
                self.now = until
                self.collect()
                return
            self.now = max(self.now, nxt)
            for s in self.sides:
                s.ms.handle_timer(self.now)

    def collect(self) -> None:
        for s in self.sides:
            while (ev := s.ms.next_event()) is not None:
                if isinstance(ev, PathChanged):
                    s.paths.append(ev.endpoint)

    def deliver(self) -> bool:
        moved = False
        for s in self.sides:
            for via, packet in s.ms.packets_to_send():
                moved = True
                self.now += self.delay
                if via.udp is not None:
                    self.udp_sent += 1
                    if self.blocked:
                        continue
                    for d in self.sides:
                        if d.addr == via.udp:
                            d.ms.receive_udp(packet, s.addr, self.now)
                else:
                    self.derp_sent += 1
                    for d in self.sides:
                        if d.node.public == via.node_key:
                            assert d.ms.receive_derp(s.node.public, packet, via.region, self.now)
        self.collect()
        return moved


def test_upgrade_to_direct_then_fall_back_and_recover() -> None:
    net = Net()
    a, b = net.side(1000), net.side(2000)
    net.introduce(a, b)
    net.run(0.5)
    assert a.ms.path(b.node.public) == b.addr and b.ms.path(a.node.public) == a.addr
    assert a.paths == [b.addr] and b.paths == [a.addr]
    # heartbeats every 3 s keep it trusted
    for t in range(1, 10):
        a.last_send = b.last_send = net.now
        net.run(t * HEARTBEAT_INTERVAL)
        assert a.ms.path(b.node.public) == b.addr
    # the direct path stops answering: trust lapses 6.5 s after the last pong → DERP
    net.blocked = True
    start = net.now
    while a.ms.path(b.node.public) is not None:
        a.last_send = b.last_send = net.now
        net.run(net.now + 0.5)
    assert start < net.now <= start + HEARTBEAT_INTERVAL + TRUST_UDP_ADDR_DURATION + 0.6
    assert a.paths[-1] is None and a.ms.counters["to_derp"] == 1
    net.run(net.now + 1)
    assert b.ms.path(a.node.public) is None
    # it comes back: pinged again (full pings while untrusted) → direct again
    net.blocked = False
    a.last_send = b.last_send = net.now
    net.run(net.now + HEARTBEAT_INTERVAL + DISCO_PING_INTERVAL)
    assert a.ms.path(b.node.public) == b.addr and b.ms.path(a.node.public) == a.addr
    assert a.ms.counters["path_switches"] == 3


def test_pongs_over_derp_never_make_a_path() -> None:
    net = Net()
    a, b = net.side(1000), net.side(2000)
    net.blocked = True
    net.introduce(a, b)
    a.ms.ping_derp(b.disco.public, net.now)
    net.run(1.0)
    assert a.ms.counters["pongs_received"] == 1
    assert a.ms.path(b.node.public) is None and a.paths == []


def test_peer_without_endpoints_stays_on_derp() -> None:
    net = Net()
    a = net.side(1000)
    b = net.side(2000, block_endpoints=True)
    net.introduce(a, b, b_eps=[])                # b advertises nothing
    assert b.ms.local_endpoints == ()
    for t in range(1, 6):
        a.last_send = b.last_send = net.now
        net.run(t * HEARTBEAT_INTERVAL)
    assert a.ms.path(b.node.public) is None and b.ms.path(a.node.public) is None
    assert b.ms.counters["call_me_maybe_sent"] == 0
    assert a.paths == [] and b.paths == []
    # b still answers a's pings (a knows no endpoint of b, so only DERP pings happen)
    a.ms.ping_derp(b.disco.public, net.now)
    net.run(net.now + 1)
    assert b.ms.counters["pongs_sent"] >= 1


def test_call_me_maybe_adds_candidates_and_pings_them() -> None:
    net = Net()
    a, b = net.side(1000), net.side(2000)
    net.introduce(a, b, b_eps=[], a_eps=[])       # nodes carry no endpoints
    net.run(0.5)
    # the CallMeMaybe each sent on learning of the other gave the endpoints
    assert a.ms.counters["call_me_maybe_received"] >= 1
    assert a.ms.path(b.node.public) == b.addr


def test_idle_session_sends_no_heartbeats() -> None:
    net = Net()
    a, b = net.side(1000), net.side(2000)
    net.introduce(a, b)
    net.run(0.5)
    a.last_send = b.last_send = None
    net.run(SESSION_ACTIVE_TIMEOUT + 1)
    sent = net.udp_sent
    net.run(net.now + 10 * HEARTBEAT_INTERVAL)
    assert net.udp_sent == sent
    assert a.ms.path(b.node.public) is None          # trust lapsed while idle


def test_one_ping_per_endpoint_per_interval() -> None:
    net = Net()
    a = net.side(1000)
    b = net.side(2000, block_endpoints=True)     # sends no CallMeMaybe (which re-arms pings)
    net.blocked = True
    net.introduce(a, b, b_eps=[b.addr])
    pings = []
    for t in range(40):
        a.last_send = b.last_send = net.now
        net.run(t * 0.5)
        pings.append(a.ms.counters["pings_sent"])
    # 20 s, heartbeats every 3 s, but each endpoint at most once per 5 s
    assert pings[-1] <= 20 / DISCO_PING_INTERVAL + 1


def test_unknown_key_and_malformed_disco_are_dropped_and_counted() -> None:
    net = Net()
    a, b = net.side(1000), net.side(2000)
    net.introduce(a, b)
    stranger = DiscoPrivate.generate()
    packet = seal_packet(stranger, a.disco.public, Ping(b"\x01" * 12))
    a.ms.receive_udp(packet, ep(3000), 0.0)
    assert a.ms.drops["unknown_peer"] == 1
    forged = MAGIC + bytes(b.disco.public) + b"\x00" * 24 + b"\x00" * 40
    a.ms.receive_udp(forged, ep(2000), 0.0)
    assert a.ms.drops["bad_box"] == 1
    a.ms.receive_udp(b"not disco", ep(2000), 0.0)
    assert a.ms.drops["not_disco"] == 1
    # CallMeMaybe is only valid over DERP
    cmm = seal_packet(b.disco, a.disco.public, CallMeMaybe((ep(4000),)))
    a.ms.receive_udp(cmm, ep(2000), 0.0)
    assert a.ms.drops["call_me_maybe_over_udp"] == 1
    # a ping naming another node key
    other = NodePrivate.generate().public
    a.ms.receive_udp(seal_packet(b.disco, a.disco.public, Ping(b"\x02" * 12, other)),
                     ep(2000), 0.0)
    assert a.ms.drops["node_key_mismatch"] == 1


@given(st.binary(min_size=0, max_size=1400))
def test_fuzzed_datagrams_never_raise(data: bytes) -> None:
    ms = Magicsock(DiscoPrivate.generate(), NodePrivate.generate().public)
    ms.receive_udp(MAGIC + data, ep(1), 0.0)
    ms.receive_udp(data, ep(1), 0.0)
    ms.receive_derp(NodePrivate.generate().public, MAGIC + data, 1, 0.0)


def test_duplicate_ping_is_not_answered_twice() -> None:
    net = Net()
    a, b = net.side(1000), net.side(2000)
    net.introduce(a, b)
    net.run(0.5)
    packet = seal_packet(b.disco, a.disco.public, Ping(b"\x07" * 12, b.node.public))
    a.ms.packets_to_send()
    a.ms.receive_udp(packet, ep(2000), net.now)
    a.ms.receive_udp(packet, ep(2000), net.now)
    assert len(a.ms.packets_to_send()) == 1
    assert a.ms.counters["duplicate_pings"] == 1


@pytest.mark.parametrize(("a", "b", "better"), [
    (((LO, 1), 0.010), None, True),
    (((ipaddress.ip_address("8.8.8.8"), 1), 0.010), ((ipaddress.ip_address("8.8.4.4"), 1), 0.020), True),
    (((ipaddress.ip_address("8.8.8.8"), 1), 0.0100), ((ipaddress.ip_address("8.8.4.4"), 1), 0.0101), False),
    (((ipaddress.ip_address("8.8.8.8"), 1), 0.001), ((LO, 1), 0.0015), False),
    (((ipaddress.ip_address("10.0.0.1"), 1), 0.010), ((ipaddress.ip_address("8.8.8.8"), 1), 0.010), True),
    (((ipaddress.ip_address("2001:db8::1"), 1), 0.010), ((ipaddress.ip_address("8.8.8.8"), 1), 0.010), True),
])
def test_better_addr(a, b, better) -> None:  # type: ignore[no-untyped-def]
    assert better_addr(a, b) is better


def test_parse_endpoint() -> None:
    assert parse_endpoint("127.0.0.1:41641") == (LO, 41641)
    assert parse_endpoint("[::1]:5") == (ipaddress.ip_address("::1"), 5)
    assert parse_endpoint("[::ffff:1.2.3.4]:5") == (ipaddress.ip_address("1.2.3.4"), 5)
    for bad in ("", "x", "1.2.3.4", "1.2.3.4:0", "host:1", "1.2.3.4:99999"):
        assert parse_endpoint(bad) is None


def test_new_local_endpoints_are_offered_to_every_peer() -> None:
    net = Net()
    a, b, c = net.side(1000), net.side(2000), net.side(3000)
    net.introduce(a, b)
    net.introduce(a, c)
    net.run(0.5)
    sent = a.ms.counters["call_me_maybe_sent"]
    assert a.ms.set_local_endpoints([a.addr]) is False          # unchanged: nothing sent
    assert a.ms.set_local_endpoints([a.addr, ep(1001)]) is True
    assert a.ms.counters["call_me_maybe_sent"] == sent + 2
    net.run(1.0)
    assert all(s.ms.counters["call_me_maybe_received"] >= 1 for s in (b, c))
