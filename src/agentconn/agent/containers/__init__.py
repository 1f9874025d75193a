"""Containers and dev containers (agent-api.md §9), through the ``docker`` CLI.

Modules: :mod:`.docker` (running the CLI: listing, stop/rm, ``docker events``),
:mod:`.jsonc` (devcontainer.json's JSON with comments), :mod:`.devcontainer` (finding and
reading configurations, bringing a dev container up), :mod:`.state` (the table of known dev
containers and their statuses, without I/O) and :mod:`.api` (the HTTP and websocket routes).
"""

from __future__ import annotations

from agentconn.agent.containers.api import ContainersApi

__all__ = ["ContainersApi"]
