"""What an agent knows about its workspace: directories, environment, identity and limits."""

from __future__ import annotations

import dataclasses
import os
import pwd
import uuid
from dataclasses import dataclass, field

__all__ = ["AgentOptions", "default_log_dir"]

#: The directory under the user's home that holds one subdirectory per agent id.
STATE_ROOT = ".agentconn"


def _home() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or os.path.expanduser("~")
    except KeyError:
        return os.path.expanduser("~")


def default_log_dir(agent_id: uuid.UUID | str) -> str:
    """``~/.agentconn/<agent-id>``: one agent's own log and state directory (its log, SSH
    host key and desktop files), so agents on one machine never share them."""
    return os.path.join(_home(), STATE_ROOT, str(uuid.UUID(str(agent_id))))


@dataclass(slots=True)
class AgentOptions:
    """Settings shared by the agent's API modules.

    ``home`` is the agent user's home (list-directory relativity ``home``, ``~`` expansion).
    ``directory`` is the agent's configured working directory (processes, context config,
    ``.mcp.json``); ``None`` means none is configured. ``environ`` is the session environment
    given to processes and MCP servers. ``log_dir`` holds ``coder-agent.log``, the SSH host
    key and the desktop's files; ``None`` (the default) means the agent's own
    :func:`default_log_dir` ``~/.agentconn/<agent-id>``, filled in by :meth:`for_agent`.
    ``ignore_ports`` are the agent's own listeners hidden from listening-ports.
    ``desktop`` enables the desktop routes (an Xvnc desktop of ``desktop_geometry`` (width,
    height) pixels, depth 24, started on first use; its files go under ``log_dir``).
    ``devcontainers`` enables the container routes (agent-api.md §9; Coder's
    ``CODER_AGENT_DEVCONTAINERS_ENABLE=true``): Docker through the ``docker`` CLI on the
    ``PATH`` of ``environ`` (its ``DOCKER_HOST``), dev container configurations found under
    ``directory``.
    """

    home: str = field(default_factory=_home)
    directory: str | None = None
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    log_dir: str | None = None
    ignore_ports: frozenset[int] = frozenset()
    desktop: bool = False
    desktop_geometry: tuple[int, int] = (1920, 1080)
    devcontainers: bool = False

    def for_agent(self, agent_id: uuid.UUID | str) -> AgentOptions:
        """These options as agent `agent_id` uses them: with no ``log_dir``, a copy whose
        ``log_dir`` is that agent's :func:`default_log_dir` (the caller's object is left
        alone, so one AgentOptions may serve several agents); else these options."""
        if self.log_dir is not None:
            return self
        return dataclasses.replace(self, log_dir=default_log_dir(agent_id))

    def data_dir(self) -> str:
        """``log_dir``. Raises ValueError while it is unset (an Agent sets it through
        :meth:`for_agent`; a service used on its own needs an explicit one)."""
        if self.log_dir is None:
            raise ValueError("AgentOptions.log_dir is not set (Agent fills it in per agent id)")
        return self.log_dir

    def working_directory(self) -> str | None:
        """The configured directory if it exists (evaluated per request), else ``None``."""
        if self.directory and os.path.isdir(self.directory):
            return self.directory
        return None
