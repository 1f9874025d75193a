"""What an agent knows about its workspace: directories, environment, identity and limits."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field

__all__ = ["AgentOptions"]


def _home() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or os.path.expanduser("~")
    except KeyError:
        return os.path.expanduser("~")


@dataclass(slots=True)
class AgentOptions:
    """Settings shared by the agent's API modules.

    ``home`` is the agent user's home (list-directory relativity ``home``, ``~`` expansion).
    ``directory`` is the agent's configured working directory (processes, context config,
    ``.mcp.json``); ``None`` means none is configured. ``environ`` is the session environment
    given to processes and MCP servers. ``log_dir`` holds ``coder-agent.log``.
    ``ignore_ports`` are the agent's own listeners hidden from listening-ports.
    ``desktop`` enables the desktop routes (an Xvnc desktop of ``desktop_geometry`` (width,
    height) pixels, depth 24, started on first use; its files go under ``log_dir``).
    """

    home: str = field(default_factory=_home)
    directory: str | None = None
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    log_dir: str = field(default_factory=lambda: os.path.join(_home(), ".agentconn"))
    ignore_ports: frozenset[int] = frozenset()
    desktop: bool = False
    desktop_geometry: tuple[int, int] = (1920, 1080)

    def working_directory(self) -> str | None:
        """The configured directory if it exists (evaluated per request), else ``None``."""
        if self.directory and os.path.isdir(self.directory):
            return self.directory
        return None
