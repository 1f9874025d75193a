"""``GET /api/v0/listening-ports`` body (agent-api.md §8)."""

# ruff: noqa: RUF009  # key() is this package's dataclass field specifier, not a default
from __future__ import annotations

from dataclasses import dataclass

from agentconn.proto._codec import Model, key

__all__ = ["ListeningPort", "ListeningPortsResponse"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ListeningPort(Model):
    """A listening socket: ``{"process_name","network","port"}`` (``process_name`` may be "")."""

    process_name: str = key("process_name", default="")
    network: str = key("network", default="tcp")
    port: int = key("port")


@dataclass(frozen=True, slots=True, kw_only=True)
class ListeningPortsResponse(Model):
    """``{"ports": [...]}``; ``[]`` when none."""

    ports: list[ListeningPort] = key("ports", default_factory=list)
