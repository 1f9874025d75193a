"""Tailnet addressing and the agent's well-known ports (tailnet.md §1-§2, agent-api.md §2).

Every node address is ``prefix(6 bytes) || uuid.bytes[6:16]``. Clients always dial the agent at
its Tailscale-prefix address; the agent announces both the Tailscale- and Coder-prefix /128s.
"""

from __future__ import annotations

import ipaddress
import uuid

__all__ = [
    "AGENT_HTTP_API_PORT",
    "AGENT_MINIMUM_LISTENING_PORT",
    "AGENT_RECONNECTING_PTY_PORT",
    "AGENT_RESERVED_PORTS",
    "AGENT_SPEEDTEST_PORT",
    "AGENT_SSH_PORT",
    "AGENT_STANDARD_SSH_PORT",
    "CODER_SERVICE_NETWORK",
    "CODER_SERVICE_PREFIX",
    "LEGACY_AGENT_IP",
    "SSH_PORTS",
    "TAILSCALE_SERVICE_NETWORK",
    "TAILSCALE_SERVICE_PREFIX",
    "addr_from_uuid",
    "agent_addr",
    "agent_addresses",
    "node_id_from_uuid",
]

#: ``TailscaleServicePrefix``: fd7a:115c:a1e0::/48 (the address clients dial).
TAILSCALE_SERVICE_PREFIX = bytes.fromhex("fd7a115ca1e0")
#: ``CoderServicePrefix``: fd60:627a:a42b::/48 (the agent's second address; CoderVPN).
CODER_SERVICE_PREFIX = bytes.fromhex("fd60627aa42b")
TAILSCALE_SERVICE_NETWORK = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")
CODER_SERVICE_NETWORK = ipaddress.IPv6Network("fd60:627a:a42b::/48")
#: The deprecated fixed agent address (``WorkspaceAgentIP``); current agents do not use it.
LEGACY_AGENT_IP = ipaddress.IPv6Address("fd7a:115c:a1e0:49d6:b259:b7ac:b1b2:48f4")

AGENT_SSH_PORT = 1  #: built-in SSH server (``WorkspaceAgentSSHPort``)
AGENT_RECONNECTING_PTY_PORT = 2  #: reconnecting PTY (``WorkspaceAgentReconnectingPTYPort``)
AGENT_SPEEDTEST_PORT = 3  #: tailscale speedtest v2 (``WorkspaceAgentSpeedtestPort``)
AGENT_HTTP_API_PORT = 4  #: HTTP/1.1 API (``WorkspaceAgentHTTPAPIServerPort``)
AGENT_STANDARD_SSH_PORT = 22  #: the same SSH server (``WorkspaceAgentStandardSSHPort``)
AGENT_RESERVED_PORTS = range(5, 9)  #: 5-8 reserved by Coder
AGENT_MINIMUM_LISTENING_PORT = 9  #: user services start here (``AgentMinimumListeningPort``)
SSH_PORTS = (AGENT_SSH_PORT, AGENT_STANDARD_SSH_PORT)


def addr_from_uuid(prefix: bytes, node: uuid.UUID | str) -> ipaddress.IPv6Address:
    """``ServicePrefix.AddrFromUUID``: the 6-byte ``prefix`` followed by the UUID's last 10 bytes."""
    if len(prefix) != 6:
        raise ValueError("a service prefix is 6 bytes")
    u = node if isinstance(node, uuid.UUID) else uuid.UUID(node)
    return ipaddress.IPv6Address(prefix + u.bytes[6:])


def agent_addr(agent_id: uuid.UUID | str) -> ipaddress.IPv6Address:
    """The address a client dials: the agent UUID under the Tailscale service prefix."""
    return addr_from_uuid(TAILSCALE_SERVICE_PREFIX, agent_id)


def agent_addresses(
    agent_id: uuid.UUID | str,
) -> tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]:
    """The two /128s an agent announces: (Tailscale-prefix, Coder-prefix)."""
    return agent_addr(agent_id), addr_from_uuid(CODER_SERVICE_PREFIX, agent_id)


def node_id_from_uuid(node: uuid.UUID | str) -> int:
    """``tailnet.NodeID``: last 8 UUID bytes as a big-endian int64, then its absolute value."""
    u = node if isinstance(node, uuid.UUID) else uuid.UUID(node)
    v = int.from_bytes(u.bytes[8:], "big", signed=True)
    return v if v == -(1 << 63) else abs(v)  # Go's two's-complement abs leaves MinInt64 as is
