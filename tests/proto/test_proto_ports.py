"""Tailnet addressing and well-known ports (tailnet.md §1-§2, agent-api.md §2.1-§2.2)."""

from __future__ import annotations

import ipaddress
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentconn.proto import ports

VECTORS = [
    # (uuid, tailscale-prefix address, coder-prefix address, tailnet.NodeID)
    (
        "aaaaaaaa-aaaa-aaaa-aaaa-123456789abc",
        "fd7a:115c:a1e0:aaaa:aaaa:1234:5678:9abc",
        "fd60:627a:a42b:aaaa:aaaa:1234:5678:9abc",
        6149082325222647108,
    ),
    (
        "00112233-4455-6677-8899-aabbccddeeff",
        "fd7a:115c:a1e0:6677:8899:aabb:ccdd:eeff",
        "fd60:627a:a42b:6677:8899:aabb:ccdd:eeff",
        8603657889541918977,
    ),
    (
        "12345678-9abc-def0-1234-56789abcdef0",
        "fd7a:115c:a1e0:def0:1234:5678:9abc:def0",
        "fd60:627a:a42b:def0:1234:5678:9abc:def0",
        1311768467463790320,
    ),
    # agent-api.md §2.1 example
    (
        "12345678-1234-1234-1234-123456789abc",
        "fd7a:115c:a1e0:1234:1234:1234:5678:9abc",
        "fd60:627a:a42b:1234:1234:1234:5678:9abc",
        None,
    ),
]


@pytest.mark.parametrize(("uid", "ts", "coder", "node_id"), VECTORS)
def test_address_vectors(uid: str, ts: str, coder: str, node_id: int | None) -> None:
    assert ports.agent_addr(uid) == ipaddress.IPv6Address(ts)
    assert ports.agent_addr(uuid.UUID(uid)) == ipaddress.IPv6Address(ts)
    assert ports.agent_addresses(uid) == (
        ipaddress.IPv6Address(ts),
        ipaddress.IPv6Address(coder),
    )
    assert ports.addr_from_uuid(ports.CODER_SERVICE_PREFIX, uid) == ipaddress.IPv6Address(coder)
    if node_id is not None:
        assert ports.node_id_from_uuid(uid) == node_id


@settings(max_examples=50)
@given(st.uuids())
def test_address_is_prefix_then_last_ten_bytes(u: uuid.UUID) -> None:
    ts, coder = ports.agent_addresses(u)
    assert ts in ports.TAILSCALE_SERVICE_NETWORK and coder in ports.CODER_SERVICE_NETWORK
    assert ts.packed == ports.TAILSCALE_SERVICE_PREFIX + u.bytes[6:]
    assert coder.packed[6:] == u.bytes[6:]
    assert 0 <= ports.node_id_from_uuid(u) < 2**63 or ports.node_id_from_uuid(u) == -(2**63)


def test_prefixes_and_networks_agree() -> None:
    assert ports.TAILSCALE_SERVICE_PREFIX == bytes.fromhex("fd7a115ca1e0")
    assert ports.CODER_SERVICE_PREFIX == bytes.fromhex("fd60627aa42b")
    for prefix, net in (
        (ports.TAILSCALE_SERVICE_PREFIX, ports.TAILSCALE_SERVICE_NETWORK),
        (ports.CODER_SERVICE_PREFIX, ports.CODER_SERVICE_NETWORK),
    ):
        assert net.prefixlen == 48 and net.network_address.packed[:6] == prefix
    assert ports.LEGACY_AGENT_IP in ports.TAILSCALE_SERVICE_NETWORK
    with pytest.raises(ValueError):
        ports.addr_from_uuid(b"\xfd\x7a", uuid.uuid4())


def test_node_id_min_int64_like_go() -> None:
    u = uuid.UUID(bytes=bytes(8) + b"\x80" + bytes(7))
    assert ports.node_id_from_uuid(u) == -(2**63)


def test_ports() -> None:
    assert ports.AGENT_SSH_PORT == 1
    assert ports.AGENT_RECONNECTING_PTY_PORT == 2
    assert ports.AGENT_SPEEDTEST_PORT == 3
    assert ports.AGENT_HTTP_API_PORT == 4
    assert ports.AGENT_STANDARD_SSH_PORT == 22
    assert ports.SSH_PORTS == (1, 22)
    assert list(ports.AGENT_RESERVED_PORTS) == [5, 6, 7, 8]
    assert ports.AGENT_MINIMUM_LISTENING_PORT == 9
