"""agentconn: reach a Coder-style workspace agent over a userspace WireGuard tunnel.

Public API (see the README): :func:`connect` / :class:`AgentConn` (the client),
:class:`Agent` (the agent server), :class:`Tunnel`, and the exception tree in
:mod:`agentconn.errors`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__
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
    from .agent import Agent, AgentOptions
    from .aio.tunnel import Tunnel
    from .client.conn import AgentApiError, AgentConn, connect

__all__ = [
    "Agent",
    "AgentApiError",
    "AgentConn",
    "AgentConnError",
    "AgentOptions",
    "ConfigError",
    "HandshakeError",
    "InvalidKeyError",
    "NoRouteError",
    "PingTimeoutError",
    "Tunnel",
    "TunnelClosedError",
    "TunnelError",
    "connect",
]


def __getattr__(name: str) -> Any:
    # Import the tunnel (and the compiled _wgcore) only when it is used.
    if name == "Tunnel":
        from .aio.tunnel import Tunnel

        return Tunnel
    if name in ("AgentConn", "AgentApiError", "connect"):
        from .client import conn

        return getattr(conn, name)
    if name in ("Agent", "AgentOptions"):
        from . import agent

        return getattr(agent, name)
    raise AttributeError(f"module 'agentconn' has no attribute {name!r}")
