"""agentconn: reach a Coder-style workspace agent over a userspace WireGuard tunnel.

Public API (see the README): :func:`connect` / :class:`AgentConn` (the client),
:class:`Agent` (the agent server), :class:`Tunnel`, and the exception tree in
:mod:`agentconn.errors`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    AgentConnError,
    ConfigError,
    HandshakeError,
    InvalidKeyError,
    NoRouteError,
    PingTimeoutError,
    TunnelClosedError,
    TunnelError,
)

if TYPE_CHECKING:
    from .agent.agent import Agent
    from .agent.options import AgentOptions
    from .aio.tunnel import Tunnel
    from .client.conn import AgentApiError, AgentConn, connect

__all__ = [
    "Agent",
    "AgentApiError",
    "AgentConn",
    "AgentOptions",
    "Tunnel",
    "connect",
    "AgentConnError",
    "ConfigError",
    "HandshakeError",
    "InvalidKeyError",
    "NoRouteError",
    "PingTimeoutError",
    "TunnelClosedError",
    "TunnelError",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Import the tunnel (and the compiled _wgcore) only when it is used.
    if name == "Tunnel":
        from .aio.tunnel import Tunnel

        return Tunnel
    if name in ("AgentConn", "AgentApiError", "connect"):
        from .client import conn

        return getattr(conn, name)
    if name == "Agent":
        from .agent.agent import Agent

        return Agent
    if name == "AgentOptions":
        from .agent.options import AgentOptions

        return AgentOptions
    raise AttributeError(f"module 'agentconn' has no attribute {name!r}")
