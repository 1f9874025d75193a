"""The workspace agent: a userspace WireGuard peer serving the agent API (agent-api.md).

Layout: :mod:`~agentconn.agent.agent` (the :class:`Agent` that owns the tunnel and runs
everything), :mod:`~agentconn.agent.options` (what the agent knows about its workspace),
``api/`` (the HTTP API on port 4: the router fed from :mod:`agentconn.proto.routes` and one
module per feature), ``services/`` (the stream services on their own ports: SSH, reconnecting
PTY, speedtest, port forwarding) and :mod:`~agentconn.agent.children` (how every child process
is spawned, signalled and reaped).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentconn.agent.agent import Agent
    from agentconn.agent.options import AgentOptions

__all__ = ["Agent", "AgentOptions"]


def __getattr__(name: str) -> Any:
    # Import the agent (and with it the tunnel and the compiled _wgcore) only when it is used.
    if name == "Agent":
        from agentconn.agent.agent import Agent

        return Agent
    if name == "AgentOptions":
        from agentconn.agent.options import AgentOptions

        return AgentOptions
    raise AttributeError(f"module 'agentconn.agent' has no attribute {name!r}")
