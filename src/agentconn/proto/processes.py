"""Process API bodies: start, output, list, signal (agent-api.md §4)."""

# ruff: noqa: RUF009  # key() is this package's dataclass field specifier, not a default
from __future__ import annotations

import enum
from dataclasses import dataclass

from agentconn.proto._codec import Model, Omit, key

__all__ = [
    "ListProcessesResponse",
    "OutputTruncation",
    "ProcessInfo",
    "ProcessOutputResponse",
    "ProcessSignal",
    "SignalProcessRequest",
    "StartProcessRequest",
    "StartProcessResponse",
]


class ProcessSignal(str, enum.Enum):
    """``SignalProcessRequest.signal``: ``kill`` → SIGKILL, ``terminate`` → SIGTERM."""

    KILL = "kill"
    TERMINATE = "terminate"


@dataclass(frozen=True, slots=True, kw_only=True)
class StartProcessRequest(Model):
    """``POST /api/v0/processes/start`` body.

    ``command`` decodes to ``""`` when absent so the agent can answer ``Command is required.``.
    ``client_token`` is the newer idempotency key [version], omitted when empty.
    """

    command: str = key("command", default="")
    workdir: str = key("workdir", omit=Omit.EMPTY, default="")
    env: dict[str, str] = key("env", omit=Omit.EMPTY, default_factory=dict)
    background: bool = key("background", omit=Omit.EMPTY, default=False)
    client_token: str = key("client_token", omit=Omit.EMPTY, default="")


@dataclass(frozen=True, slots=True, kw_only=True)
class StartProcessResponse(Model):
    """start 200 body ``{"id","started"}`` (+ ``attached``/``client_token`` [version])."""

    id: str = key("id")
    started: bool = key("started")
    attached: bool = key("attached", omit=Omit.EMPTY, default=False)
    client_token: str = key("client_token", omit=Omit.EMPTY, default="")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputTruncation(Model):
    """``truncated`` of a process output: what head+tail buffering dropped."""

    original_bytes: int = key("original_bytes")
    retained_bytes: int = key("retained_bytes")
    omitted_bytes: int = key("omitted_bytes")
    strategy: str = key("strategy", default="head_tail")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessOutputResponse(Model):
    """``GET /api/v0/processes/{id}/output`` body; ``truncated``/``exit_code`` absent until set."""

    output: str = key("output", default="")
    truncated: OutputTruncation | None = key("truncated", omit=Omit.NONE, default=None)
    running: bool = key("running", default=False)
    exit_code: int | None = key("exit_code", omit=Omit.NONE, default=None)
    command: str = key("command", omit=Omit.EMPTY, default="")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessInfo(Model):
    """One entry of ``processes/list``; times are Unix seconds, exit fields absent while running."""

    id: str = key("id")
    command: str = key("command", default="")
    workdir: str = key("workdir", default="")
    background: bool = key("background", default=False)
    running: bool = key("running", default=False)
    exit_code: int | None = key("exit_code", omit=Omit.NONE, default=None)
    started_at_unix: int = key("started_at_unix", default=0)
    exited_at_unix: int | None = key("exited_at_unix", omit=Omit.NONE, default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListProcessesResponse(Model):
    """``GET /api/v0/processes/list`` body; ``processes`` is ``[]`` when empty."""

    processes: list[ProcessInfo] = key("processes", default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalProcessRequest(Model):
    """``POST /api/v0/processes/{id}/signal`` body. Open enum: an unknown signal is kept so the
    agent can answer ``Unsupported signal "<s>". Use "kill" or "terminate".``"""

    signal: str = key("signal", default="", enum=ProcessSignal)
