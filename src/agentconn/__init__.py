"""agentconn: reach a Coder-style workspace agent over a userspace WireGuard tunnel.

Public API (see the README): :class:`Tunnel` and the exception tree in :mod:`agentconn.errors`.
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
    from .aio.tunnel import Tunnel

__all__ = [
    "Tunnel",
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
    raise AttributeError(f"module 'agentconn' has no attribute {name!r}")
