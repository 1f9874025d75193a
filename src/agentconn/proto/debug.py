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
    severity: str = key("severity", default=Severity.OK, enum=Severity)
    warnings: list[HealthMessage] = key("warnings", default_factory=list)
    dismissed: bool = key("dismissed", default=False)
    interfaces: list[InterfaceInfo] = key("interfaces", default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class NetcheckReport(Model):
    """``GET /api/v0/netcheck`` body (``AgentNetcheckReport``).

    ``net_info`` is tailscale's ``tailcfg.NetInfo`` (PascalCase keys) kept as an opaque JSON
    object, or ``None`` (emitted as ``null``) when not yet known. Its tri-state fields
    (:data:`NET_INFO_OPT_BOOLS`) are tailscale ``opt.Bool``s: on the wire only ``true``,
    ``false`` or ``null`` decode in Go (:func:`opt_bool_json`); in Python they read as Go holds
    them, the strings ``"true"``, ``"false"`` and ``""`` (:func:`normalize_net_info`)."""

    error: str | None = key("error", omit=Omit.NONE, default=None)
    severity: str = key("severity", default=Severity.OK, enum=Severity)
    warnings: list[HealthMessage] = key("warnings", default_factory=list)
    dismissed: bool = key("dismissed", default=False)
    net_info: dict[str, JSON] | None = key("net_info", default=None)
    interfaces: InterfacesReport = key("interfaces", default_factory=InterfacesReport)


#: The ``tailcfg.NetInfo`` fields of type ``opt.Bool``.
NET_INFO_OPT_BOOLS = ("MappingVariesByDestIP", "HairPinning", "WorkingIPv6", "OSHasIPv6",
                      "WorkingUDP", "WorkingICMPv4", "UPnP", "PMP", "PCP")


def opt_bool_json(value: bool | None) -> bool | None:
    """The JSON form of a tailscale ``opt.Bool``: ``true``/``false``, ``null`` when unknown
    (``opt.Bool`` rejects a JSON string)."""
    return None if value is None else bool(value)


def normalize_net_info(net_info: dict[str, JSON] | None) -> dict[str, JSON] | None:
    """``net_info`` with every ``opt.Bool`` field as Go holds it: ``"true"``, ``"false"`` or
    ``""`` (unknown), whether the agent sent JSON booleans/null (Go) or strings (older ours)."""
    if net_info is None:
        return None
    out = dict(net_info)
    for name in NET_INFO_OPT_BOOLS:
        value = out.get(name)
        if value is True:
            out[name] = "true"
        elif value is False:
            out[name] = "false"
        elif value is None and name in out:
            out[name] = ""
    return out
