"""Git-watch WebSocket messages (agent-api.md §10), one JSON value per text message."""

# ruff: noqa: RUF009  # key() is this package's dataclass field specifier, not a default
from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from agentconn.proto._codec import Model, Omit, key

__all__ = [
    "GIT_CLIENT_REFRESH",
    "GIT_UNKNOWN_TYPE_MESSAGE",
    "GitClientMessage",
    "GitProgress",
    "GitRepoChanges",
    "GitServerMessage",
    "GitServerMessageType",
]

#: The only client → agent message type.
GIT_CLIENT_REFRESH = "refresh"
#: ``message`` of the agent's error reply to any other client type.
GIT_UNKNOWN_TYPE_MESSAGE = "unknown message type"


class GitServerMessageType(str, enum.Enum):
    """``GitServerMessage.type``."""

    CHANGES = "changes"
    ERROR = "error"
    PROGRESS = "progress"


@dataclass(frozen=True, slots=True, kw_only=True)
class GitClientMessage(Model):
    """Client → agent: ``{"type":"refresh"}``. ``type`` is a plain string: unknown types are not
    a decode error but get ``{"type":"error","message":"unknown message type"}``."""

    type: str = key("type", default="")


@dataclass(frozen=True, slots=True, kw_only=True)
class GitRepoChanges(Model):
    """One repository in a ``changes`` message (``diff_truncated`` [version], omitted if false)."""

    repo_root: str = key("repo_root")
    branch: str = key("branch", default="")
    remote_origin: str = key("remote_origin", default="")
    unified_diff: str = key("unified_diff", default="")
    removed: bool = key("removed", default=False)
    diff_truncated: bool = key("diff_truncated", omit=Omit.EMPTY, default=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class GitProgress(Model):
    """The ``progress`` object of newest agents [version, key spellings unconfirmed]."""

    repo_root: str = key("repo_root")
    branch: str = key("branch", omit=Omit.EMPTY, default="")
    remote_origin: str = key("remote_origin", omit=Omit.EMPTY, default="")
    reset: bool = key("reset", omit=Omit.EMPTY, default=False)
    unified_diff_chunk: str = key("unified_diff_chunk", omit=Omit.EMPTY, default="")
    processed_files: int = key("processed_files", omit=Omit.EMPTY, default=0)
    total_files: int = key("total_files", omit=Omit.EMPTY, default=0)
    complete: bool = key("complete", omit=Omit.EMPTY, default=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class GitServerMessage(Model):
    """Agent → client (``WorkspaceAgentGitServerMessage``); unset parts are omitted.

    ``repositories`` is ``None`` (absent) vs ``[]`` (a heartbeat of the newest agents)."""

    type: GitServerMessageType = key("type")
    message: str = key("message", omit=Omit.EMPTY, default="")
    scanned_at: datetime | None = key("scanned_at", omit=Omit.NONE, default=None)
    repositories: list[GitRepoChanges] | None = key("repositories", omit=Omit.NONE, default=None)
    progress: GitProgress | None = key("progress", omit=Omit.NONE, default=None)
