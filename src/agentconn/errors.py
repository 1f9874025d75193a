"""The exception tree of agentconn.

Everything a caller can catch derives from :class:`AgentConnError`. Input from the network is
never raised: it is dropped and counted (see the ``drops`` counters in ``Tunnel.stats()``).
"""
from __future__ import annotations

__all__ = [
    "AgentConnError",
    "ConfigError",
    "HandshakeError",
    "InvalidKeyError",
    "KeyError_",
    "NoRouteError",
    "PingTimeoutError",
    "TunnelClosedError",
    "TunnelError",
]


class AgentConnError(Exception):
    """Root of every exception agentconn raises on purpose."""


class ConfigError(AgentConnError, ValueError):
    """A configuration (wg-quick file, key, address) is invalid.

    ``line`` is the 1-based line number in the configuration text when known.
    """

    def __init__(self, message: str, *, line: int | None = None, source: str | None = None):
        self.line = line
        self.source = source
        where = ""
        if source is not None and line is not None:
            where = f"{source}:{line}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)


class InvalidKeyError(ConfigError):
    """A Curve25519 key is malformed (wrong length, bad encoding) or unusable."""


KeyError_ = InvalidKeyError  # short alias kept out of the builtins' way


class TunnelError(AgentConnError):
    """The tunnel could not do what was asked."""


class TunnelClosedError(TunnelError):
    """The tunnel is closed (or was never started)."""


class NoRouteError(TunnelError):
    """No peer's AllowedIPs cover the destination address."""


class HandshakeError(TunnelError):
    """No WireGuard session could be established with the peer in time."""


class PingTimeoutError(TunnelError, TimeoutError):
    """No echo reply arrived before the timeout."""
