"""Issue 14 items 3 and 5: the cost of get_timer/handle_timer and of add_peer must not grow with the
number of peers. The timer heap is checked against a linear scan over every peer (the
slow-reference idea of wireguard-go's allowed-IPs tests), and route changes against a linear
longest-prefix scan over the configured networks.
"""
from __future__ import annotations

import ipaddress
import random
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from agentconn.wg.allowedips import Network
from agentconn.wg.config import PeerConfig
from agentconn.wg.device import Device
from agentconn.wg.endpoint import (
    parse_sockaddr,
    relay_sockaddr,
    sockaddr,
    source_bytes,
    source_ip,
)
from agentconn.wg.peer import Peer


def make_device(seed: int = 1) -> Device:
    rnd = random.Random(seed)
    return Device(rnd.randbytes(32), rng=random.Random(seed),
                  random_bytes=lambda n: rnd.randbytes(n))


def peer_config(rnd: random.Random, networks: list[Network], keepalive: int = 0) -> PeerConfig:
    return PeerConfig(public_key=rnd.randbytes(32), preshared_key=None, endpoint=None,
                      allowed_ips=networks, persistent_keepalive=keepalive)


def linear_earliest(device: Device) -> float | None:
    return min((d for p in device.peers.values()
                if (d := p.timers.next_deadline()) is not None), default=None)


# -- the timer heap ------------------------------------------------------------------------------

def _hook(peer: Peer, op: int, now: float) -> None:
    timers = peer.timers
    if op == 0:
        timers.on_data_sent(now)
    elif op == 1:
        timers.on_data_received(now)
    elif op == 2:
        timers.on_any_authenticated_packet_sent(now)
    elif op == 3:
        timers.on_any_authenticated_packet_received(now)
    elif op == 4:
        timers.on_any_authenticated_packet_traversal(now)
    elif op == 5:
        timers.on_handshake_initiated(now)
    elif op == 6:
        timers.on_handshake_complete(now)
    elif op == 7:
        timers.on_session_derived(now)
    elif op == 8:
        timers.on_gave_up(now)
    elif op == 9:
        timers.cancel_all()


OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["hook", "advance", "fire", "remove", "add"]),
              st.integers(0, 9), st.integers(0, 7), st.floats(0.0, 30.0)),
    max_size=60)


@settings(max_examples=150, deadline=None)
@given(OPERATIONS, st.integers(0, 2**16))
def test_heap_earliest_deadline_equals_a_linear_scan(operations: list[tuple[str, int, int, float]],
                                                     seed: int) -> None:
    rnd = random.Random(seed)
    device = make_device(seed)
    for i in range(6):
        device.add_peer(peer_config(rnd, [ipaddress.ip_network(f"10.1.{i}.0/24")],
                                    keepalive=25 * (i % 2)))
    now, wall = 100.0, 1_700_000_000.0
    for action, op, which, seconds in operations:
        peers = list(device.peers.values())
        if action == "hook" and peers:
            _hook(peers[which % len(peers)], op, now)
        elif action == "advance":
            now += seconds
            wall += seconds
        elif action == "fire":
            device.handle_timer(now, wall)
        elif action == "remove" and peers:
            device.remove_peer(peers[which % len(peers)].public_key)
        elif action == "add":
            device.add_peer(peer_config(rnd, [ipaddress.ip_network(f"10.2.{which}.{op}/32")],
                                        keepalive=op % 3 * 7))
        assert device.get_timer() == linear_earliest(device)
    # handle_timer fires exactly what is due: afterwards nothing is left at or before `now`.
    device.handle_timer(now, wall)
    assert all(d > now for p in device.peers.values() for d in p.timers.deadlines.values())
    assert device.get_timer() == linear_earliest(device)


def test_heap_matches_a_linear_scan_over_a_long_random_run() -> None:
    """The same law as above over 20,000 seeded operations on 40 peers (hypothesis keeps its
    examples short; interleavings of many peers need a long run)."""
    rnd = random.Random(11)
    device = make_device(11)
    for i in range(40):
        device.add_peer(peer_config(rnd, [], keepalive=rnd.choice([0, 0, 5, 25])))
    now, wall = 100.0, 1_700_000_000.0
    for step in range(20_000):
        peers = list(device.peers.values())
        roll = rnd.random()
        if roll < 0.75:
            _hook(rnd.choice(peers), rnd.randrange(9 if rnd.random() < 0.98 else 10), now)
        elif roll < 0.90:
            now += rnd.expovariate(1.0)
            wall += 1.0
        elif roll < 0.98:
            device.handle_timer(now, wall)
        elif roll < 0.99 and len(peers) > 10:
            device.remove_peer(rnd.choice(peers).public_key)
        else:
            device.add_peer(peer_config(rnd, [], keepalive=rnd.choice([0, 7])))
        assert device.get_timer() == linear_earliest(device), step


def test_handle_timer_touches_only_due_peers() -> None:
    rnd = random.Random(2)
    device = make_device()
    peers = [device.add_peer(peer_config(rnd, [ipaddress.ip_network(f"10.3.{i // 256}.{i % 256}"
                                                                     "/32")]))
             for i in range(1000)]
    for i, peer in enumerate(peers):
        peer.timers.on_data_received(100.0 + i)          # SEND_KEEPALIVE at 110 + i
    calls: list[Peer] = []

    def spy(peer: Peer) -> None:
        real = peer.handle_timer

        def handle_timer(now: float, wall: float) -> None:
            calls.append(peer)
            real(now, wall)

        peer.handle_timer = handle_timer  # type: ignore[method-assign]

    for peer in peers:
        spy(peer)
    device.handle_timer(112.5, 0.0)
    assert calls == peers[:3]
    assert device.get_timer() == 113.0 == linear_earliest(device)


def test_heap_stays_bounded_under_constant_rearming() -> None:
    rnd = random.Random(4)
    device = make_device()
    peers = [device.add_peer(peer_config(rnd, [], keepalive=25)) for _ in range(10)]
    now = 0.0
    for _ in range(5000):
        now += 0.001
        for peer in peers:
            peer.timers.on_any_authenticated_packet_traversal(now)
            peer.timers.on_data_sent(now)
            peer.timers.on_any_authenticated_packet_received(now)
        assert device.get_timer() == linear_earliest(device)
    assert len(device._timer_heap) <= 4 * len(peers) + 64


# -- routes --------------------------------------------------------------------------------------

def linear_route(configs: list[PeerConfig], address: ipaddress.IPv4Address | ipaddress.IPv6Address
                 ) -> bytes | None:
    best: tuple[int, bytes] | None = None
    for config in configs:
        for network in config.allowed_ips:
            if address.version == network.version and address in network and (
                    best is None or network.prefixlen > best[0]):
                best = (network.prefixlen, config.public_key)
    return None if best is None else best[1]


def test_adding_1000_peers_rebuilds_the_route_table_once_and_routes_match() -> None:
    rnd = random.Random(5)
    device = make_device()
    configs: list[PeerConfig] = []
    for i in range(1000):
        networks: list[Network] = [ipaddress.ip_network(f"100.64.{i // 256}.{i % 256}/32"),
                                   ipaddress.ip_network(f"fd7a:115c:a1e0::{i:x}/128")]
        if i % 100 == 0:
            networks.append(ipaddress.ip_network(f"10.{i // 100}.0.0/16"))
        configs.append(peer_config(rnd, networks))
        device.add_peer(configs[-1])
    assert device.route_rebuilds == 0                      # nothing has used the data path yet
    slot_owner = {p.slot: p.public_key for p in device.peers.values()}

    def check(samples: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
        for address in samples:
            slot = device.datapath.route(address.packed)
            got = None if slot is None else slot_owner[slot]
            assert got == linear_route(configs, address), address
            peer = device.allowed_ips.lookup(address)
            assert (None if peer is None else peer.public_key) == got

    samples: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for _ in range(300):
        i = rnd.randrange(1100)
        samples.append(ipaddress.ip_address(f"100.64.{i // 256}.{i % 256}"))
        samples.append(ipaddress.ip_address(f"fd7a:115c:a1e0::{i:x}"))
        samples.append(ipaddress.ip_address(f"10.{rnd.randrange(12)}.{rnd.randrange(256)}.1"))
    check(samples)
    assert device.route_rebuilds == 1

    # Remove 100 peers one by one: still one rebuild, at the next use.
    for config in rnd.sample(configs, 100):
        device.remove_peer(config.public_key)
        configs.remove(config)
    assert device.route_rebuilds == 1
    check(samples)
    assert device.route_rebuilds == 2


def test_removing_a_peer_keeps_a_network_another_peer_took_over() -> None:
    rnd = random.Random(6)
    device = make_device()
    shared = ipaddress.ip_network("10.9.0.0/16")
    first = device.add_peer(peer_config(rnd, [shared]))
    second = device.add_peer(peer_config(rnd, [shared]))  # moves the network, as `wg set` does
    device.remove_peer(first.public_key)
    assert device.allowed_ips.lookup(ipaddress.ip_address("10.9.1.1")) is second
    assert device.datapath.route(ipaddress.ip_address("10.9.1.1").packed) is second.slot


# -- the cookie's source key, computed per handshake message under load --------------------------

@settings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses(v=4).map(lambda a: (a, socket.AF_INET)),
                 st.ip_addresses(v=4).map(lambda a: (a, socket.AF_INET6)),
                 st.ip_addresses(v=6).map(lambda a: (a, socket.AF_INET6))),
       st.integers(0, 65535))
def test_source_key_matches_the_parsed_address(
        address: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], port: int) -> None:
    """source_bytes/source_ip read the sockaddr bytes directly; they must equal the address
    as parse_sockaddr shows it (IPv4-mapped IPv6 as IPv4), packed, then the port LE."""
    ip, family = address
    raw = sockaddr(str(ip), port, family)
    host, parsed_port = parse_sockaddr(raw)
    packed = ipaddress.ip_address(host).packed
    assert source_ip(raw) == packed
    assert source_bytes(raw) == packed + struct.pack("<H", parsed_port)
    assert parsed_port == port


def test_source_key_of_a_relay_or_empty_endpoint_is_the_raw_bytes() -> None:
    for raw in (relay_sockaddr(7), b"", b"\x02\x00"):
        assert source_bytes(raw) == raw and source_ip(raw) == raw
