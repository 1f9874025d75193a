"""Netcheck / health report bodies (agent-api.md §13)."""

# ruff: noqa: RUF009  # key() is this package's dataclass field specifier, not a default
from __future__ import annotations

import enum
from dataclasses import dataclass

from agentconn.proto._codec import JSON, Model, Omit, key

__all__ = [
    "MIN_HEALTHY_MTU",
    "HealthMessage",
    "InterfaceInfo",
    "InterfacesReport",
    "NetcheckReport",
    "Severity",
]

#: Interfaces with an MTU below this get a warning.
MIN_HEALTHY_MTU = 1378


class Severity(str, enum.Enum):
    """``severity`` of a health report."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthMessage(Model):
    """A warning: ``{"code","message"}``."""

    code: str = key("code")
    message: str = key("message")


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceInfo(Model):
    """An up interface with at least one non-link-local address."""

    name: str = key("name")
    mtu: int = key("mtu")
    addresses: list[str] = key("addresses", default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfacesReport(Model):
    """``BaseReport`` + ``interfaces``; ``error`` omitted unless set."""

    error: str | None = key("error", omit=Omit.NONE, default=None)
    severity: Severity = key("severity", default=Severity.OK)
    warnings: list[HealthMessage] = key("warnings", default_factory=list)
    dismissed: bool = key("dismissed", default=False)
    interfaces: list[InterfaceInfo] = key("interfaces", default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class NetcheckReport(Model):
    """``GET /api/v0/netcheck`` body (``AgentNetcheckReport``).

    ``net_info`` is tailscale's ``tailcfg.NetInfo`` (PascalCase keys, tri-state strings) kept as
    an opaque JSON object, or ``None`` (emitted as ``null``) when not yet known."""

    error: str | None = key("error", omit=Omit.NONE, default=None)
    severity: Severity = key("severity", default=Severity.OK)
    warnings: list[HealthMessage] = key("warnings", default_factory=list)
    dismissed: bool = key("dismissed", default=False)
    net_info: dict[str, JSON] | None = key("net_info", default=None)
    interfaces: InterfacesReport = key("interfaces", default_factory=InterfacesReport)
