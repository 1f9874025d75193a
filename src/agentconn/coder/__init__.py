"""The Coder control plane: coderd REST, the tailnet coordinator (yamux, DRPC, protobuf), DERP, disco.

``await agentconn.coder.dial("workspace")`` gives an :class:`~agentconn.AgentConn` to a
workspace agent of the deployment in ``CODER_URL``/``CODER_SESSION_TOKEN`` (or ``coder login``'s
files), reached through the deployment's coordinator and DERP relays.
"""
from __future__ import annotations

from typing import Any

__all__ = ["close_all", "dial"]


async def dial(target: Any, **kwargs: Any) -> Any:
    """See :func:`agentconn.coder.deployment.dial`."""
    from .deployment import dial as _dial

    return await _dial(target, **kwargs)


async def close_all() -> None:
    """See :func:`agentconn.coder.deployment.close_all`."""
    from .deployment import close_all as _close_all

    await _close_all()
