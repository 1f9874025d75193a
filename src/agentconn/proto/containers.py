"""Container / dev container bodies (agent-api.md §9)."""

# ruff: noqa: RUF009  # key() is this package's dataclass field specifier, not a default
from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from agentconn.proto._codec import Model, Omit, key

__all__ = [
    "Container",
    "ContainerPort",
    "Devcontainer",
    "DevcontainerAgent",
    "DevcontainerStatus",
    "ListContainersResponse",
]


class DevcontainerStatus(str, enum.Enum):
    """``Devcontainer.status``."""

    RUNNING = "running"
    STOPPED = "stopped"
    STARTING = "starting"
    STOPPING = "stopping"
    DELETING = "deleting"
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerPort(Model):
    """A published port of a container; host fields omitted when zero."""

    port: int = key("port")
    network: str = key("network", default="tcp")
    host_ip: str = key("host_ip", omit=Omit.EMPTY, default="")
    host_port: int = key("host_port", omit=Omit.EMPTY, default=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Container(Model):
    """A container as reported by ``docker ps``/``inspect``."""

    created_at: datetime = key("created_at")
    id: str = key("id")
    name: str = key("name", default="")
    image: str = key("image", default="")
    labels: dict[str, str] = key("labels", default_factory=dict)
    running: bool = key("running", default=False)
    ports: list[ContainerPort] = key("ports", default_factory=list)
    status: str = key("status", default="")
    volumes: dict[str, str] = key("volumes", default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class DevcontainerAgent(Model):
    """The sub-agent running inside a dev container."""

    id: uuid.UUID = key("id")
    name: str = key("name", default="")
    directory: str = key("directory", default="")


@dataclass(frozen=True, slots=True, kw_only=True)
class Devcontainer(Model):
    """A known dev container; ``container``/``agent``/``error`` absent when not set."""

    id: uuid.UUID = key("id")
    name: str = key("name", default="")
    workspace_folder: str = key("workspace_folder", default="")
    config_path: str = key("config_path", omit=Omit.EMPTY, default="")
    # An open enum (Go: a plain string): a status newer than DevcontainerStatus is kept as its
    # string instead of failing the whole list.
    status: str = key("status", enum=DevcontainerStatus)
    dirty: bool = key("dirty", default=False)
    container: Container | None = key("container", omit=Omit.NONE, default=None)
    agent: DevcontainerAgent | None = key("agent", omit=Omit.NONE, default=None)
    error: str = key("error", omit=Omit.EMPTY, default="")


@dataclass(frozen=True, slots=True, kw_only=True)
class ListContainersResponse(Model):
    """``GET /api/v0/containers`` body and each containers-watch message."""

    devcontainers: list[Devcontainer] = key("devcontainers", omit=Omit.EMPTY, default_factory=list)
    containers: list[Container] = key("containers", default_factory=list)
    warnings: list[str] = key("warnings", omit=Omit.EMPTY, default_factory=list)
