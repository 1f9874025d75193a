"""Tests for agentconn.wg.allowedips, including wireguard-go's slow-reference comparison."""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentconn.wg.allowedips import AllowedIPs, Network


def net(text: str) -> Network:
    return ip_network(text)


def test_longest_prefix_wins() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net("0.0.0.0/0"), "default")
    table.insert(net("10.0.0.0/8"), "a")
    table.insert(net("10.1.0.0/16"), "b")
    table.insert(net("10.1.2.3/32"), "c")
    assert table.lookup(ip_address("10.1.2.3")) == "c"
    assert table.lookup(ip_address("10.1.2.4")) == "b"
    assert table.lookup(ip_address("10.2.0.0")) == "a"
    assert table.lookup(ip_address("192.168.1.1")) == "default"
    assert table.lookup(bytes([10, 1, 2, 3])) == "c"
    assert table.lookup(bytearray([10, 9, 9, 9])) == "a"


def test_families_are_separate() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net("::/0"), "v6")
    assert table.lookup(ip_address("1.2.3.4")) is None
    assert table.lookup(bytes(4)) is None
    assert table.lookup(ip_address("::ffff:1.2.3.4")) == "v6"
    table.insert(net("0.0.0.0/0"), "v4")
    assert table.lookup(bytes(4)) == "v4"
    assert table.lookup(bytes(16)) == "v6"


def test_coder_style_host_routes() -> None:
    agent = ip_address("fd7a:115c:a1e0:aaaa:aaaa:1234:5678:9abc")
    assert isinstance(agent, IPv6Address)
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(ipaddress.IPv6Network((agent, 128)), "agent")
    table.insert(net("fd60:627a:a42b:aaaa:aaaa:1234:5678:9abc/128"), "agent")
    assert table.lookup(agent.packed) == "agent"
    assert table.lookup(IPv6Address(int(agent) + 1)) is None


def test_reinsert_moves_network_to_new_peer() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net("10.0.0.0/24"), "a")
    table.insert(net("10.0.0.0/24"), "b")
    assert table.lookup(ip_address("10.0.0.7")) == "b"
    assert table.entries() == [(net("10.0.0.0/24"), "b")]
    assert table.entries_for("a") == []
    assert len(table) == 1


def test_remove_by_peer_and_remove() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(net("10.0.0.0/8"), "a")
    table.insert(net("10.1.0.0/16"), "b")
    table.insert(net("fd00::/8"), "b")
    table.insert(net("fd00::1/128"), "a")
    assert table.remove_by_peer("b") == 2
    assert table.lookup(ip_address("10.1.0.1")) == "a"
    assert table.lookup(ip_address("fd00::2")) is None
    assert table.lookup(ip_address("fd00::1")) == "a"
    assert table.remove(net("fd00::1/128")) == "a"
    assert table.remove(net("fd00::1/128")) is None
    assert table.remove(net("10.0.0.0/9")) is None
    assert table.entries() == [(net("10.0.0.0/8"), "a")]
    table.clear()
    assert len(table) == 0 and table.lookup(ip_address("10.0.0.1")) is None


def test_entries_order_and_entries_for() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    for text, peer in [
        ("0.0.0.0/0", "x"),
        ("::/0", "x"),
        ("10.0.0.0/8", "y"),
        ("fd00::1/128", "y"),
        ("10.0.0.1/32", "x"),
        ("192.168.0.0/16", "y"),
    ]:
        table.insert(net(text), peer)
    assert [str(n) for n, _ in table.entries()] == [
        "fd00::1/128",
        "10.0.0.1/32",
        "192.168.0.0/16",
        "10.0.0.0/8",
        "0.0.0.0/0",
        "::/0",
    ]
    assert [str(n) for n in table.entries_for("x")] == ["10.0.0.1/32", "0.0.0.0/0", "::/0"]


def test_bad_inputs() -> None:
    table: AllowedIPs[object] = AllowedIPs()
    with pytest.raises(ValueError, match="4 or 16"):
        table.lookup(b"\x00" * 5)
    with pytest.raises(ValueError, match="None"):
        table.insert(net("10.0.0.0/8"), None)


# --- slow reference (wireguard-go allowedips_rand_test.go) -------------------------------


class LinearTable:
    """A list of (network, peer) scanned in full for each lookup."""

    def __init__(self) -> None:
        self.routes: dict[Network, int] = {}

    def insert(self, network: Network, peer: int) -> None:
        self.routes[network] = peer

    def remove_by_peer(self, peer: int) -> None:
        self.routes = {n: p for n, p in self.routes.items() if p != peer}

    def lookup(self, address: IPv4Address | IPv6Address) -> int | None:
        best: tuple[int, int] | None = None
        for network, peer in self.routes.items():
            if network.version != address.version or address not in network:
                continue
            if best is None or network.prefixlen > best[0]:
                best = (network.prefixlen, peer)
        return None if best is None else best[1]


def _network(version: int, bits: int, prefixlen: int) -> Network:
    if version == 4:
        return ipaddress.IPv4Network((bits >> 96, min(prefixlen, 32)), strict=False)
    return ipaddress.IPv6Network((bits, prefixlen), strict=False)


# Networks are drawn below a few shared roots so that they nest and overlap often.
_ROOTS = [0, 0x0A << 120, 0xFD7A115CA1E0 << 80, (2**128 - 1) ^ (1 << 100)]


@st.composite
def addresses_near_roots(draw: st.DrawFn) -> int:
    root = draw(st.sampled_from(_ROOTS))
    noise_bits = draw(st.sampled_from([0, 8, 24, 40, 100, 128]))
    return root ^ draw(st.integers(0, 2**noise_bits - 1))


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("insert"),
            st.sampled_from([4, 6]),
            addresses_near_roots(),
            st.integers(0, 128),
            st.integers(0, 7),
        ),
        st.tuples(st.just("remove_by_peer"), st.integers(0, 7)),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(
    operations, st.lists(st.tuples(st.sampled_from([4, 6]), addresses_near_roots()), max_size=40)
)
def test_matches_linear_scan(ops: list[tuple[object, ...]], probes: list[tuple[int, int]]) -> None:
    table: AllowedIPs[int] = AllowedIPs()
    reference = LinearTable()
    for op in ops:
        if op[0] == "insert":
            _, version, bits, prefixlen, peer = op
            assert isinstance(version, int) and isinstance(bits, int)
            assert isinstance(prefixlen, int) and isinstance(peer, int)
            network = _network(version, bits, prefixlen)
            table.insert(network, peer)
            reference.insert(network, peer)
        else:
            peer = op[1]
            assert isinstance(peer, int)
            table.remove_by_peer(peer)
            reference.remove_by_peer(peer)
    # Probe every network's own address and its last address, plus the random probes.
    candidates: list[IPv4Address | IPv6Address] = []
    for network in reference.routes:
        candidates += [network.network_address, network.broadcast_address]
    for version, bits in probes:
        candidates.append(IPv4Address(bits >> 96) if version == 4 else IPv6Address(bits))
    for address in candidates:
        expected = reference.lookup(address)
        assert table.lookup(address) == expected
        assert table.lookup(address.packed) == expected
        # The entries() list, scanned first-match, is what the C table does.
        first = next(
            (p for n, p in table.entries() if n.version == address.version and address in n), None
        )
        assert first == expected
    assert sorted(table.entries(), key=str) == sorted(reference.routes.items(), key=str)
    assert len(table) == len(reference.routes)
    for peer in range(8):
        assert sorted(table.entries_for(peer), key=str) == sorted(
            (n for n, p in reference.routes.items() if p == peer), key=str
        )
