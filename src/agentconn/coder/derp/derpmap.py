"""The DERP map as coderd serves it in JSON (``tailcfg.DERPMap``, Go field names), and what a
client derives from it: which node to dial, over which scheme, and the home region.

Spec: coder-control-plane.md §1.5 (JSON, embedded relay, ``RewriteDERPMapDefaultRelay``),
§5.1 (URL), §5.9 and §8.1 step 4 (home region); Go: ``tailcfg/derpmap.go``,
``derp/derphttp/derphttp_client.go`` (``urlString``, ``dialNode``, ``useHTTPS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

__all__ = ["DerpMap", "DerpNode", "DerpRegion", "home_region_id", "rewrite_default_relay"]


def _int(obj: Mapping[str, Any], name: str, default: int = 0) -> int:
    v = obj.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"DERP map field {name!r} must be an integer, got {v!r}")
    return v


def _str(obj: Mapping[str, Any], name: str) -> str:
    v = obj.get(name, "")
    if v is None:
        return ""
    if not isinstance(v, str):
        raise TypeError(f"DERP map field {name!r} must be a string, got {v!r}")
    return v


@dataclass(frozen=True, slots=True)
class DerpNode:
    """``tailcfg.DERPNode``. ``ipv4``/``ipv6``: empty = use DNS on ``host_name``,
    ``"none"`` = never that family. ``derp_port`` 0 means 443. ``stun_port`` −1 = no STUN."""

    name: str
    region_id: int
    host_name: str
    cert_name: str = ""
    ipv4: str = ""
    ipv6: str = ""
    stun_port: int = 0
    stun_only: bool = False
    derp_port: int = 0
    insecure_for_tests: bool = False
    force_http: bool = False
    stun_test_ip: str = ""
    can_port80: bool = False

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DerpNode:
        """Parse a node object (Go field names); raises :class:`TypeError` on bad types."""
        return cls(
            name=_str(obj, "Name"),
            region_id=_int(obj, "RegionID"),
            host_name=_str(obj, "HostName"),
            cert_name=_str(obj, "CertName"),
            ipv4=_str(obj, "IPv4"),
            ipv6=_str(obj, "IPv6"),
            stun_port=_int(obj, "STUNPort"),
            stun_only=bool(obj.get("STUNOnly", False)),
            derp_port=_int(obj, "DERPPort"),
            insecure_for_tests=bool(obj.get("InsecureForTests", False)),
            force_http=bool(obj.get("ForceHTTP", False)),
            stun_test_ip=_str(obj, "STUNTestIP"),
            can_port80=bool(obj.get("CanPort80", False)),
        )

    def to_json(self) -> dict[str, Any]:
        """Go's JSON: ``Name``, ``RegionID``, ``HostName`` always, the rest omitempty."""
        out: dict[str, Any] = {
            "Name": self.name, "RegionID": self.region_id, "HostName": self.host_name,
        }
        for key, value in (
            ("CertName", self.cert_name), ("IPv4", self.ipv4), ("IPv6", self.ipv6),
            ("STUNPort", self.stun_port), ("STUNOnly", self.stun_only),
            ("DERPPort", self.derp_port), ("InsecureForTests", self.insecure_for_tests),
            ("ForceHTTP", self.force_http), ("STUNTestIP", self.stun_test_ip),
            ("CanPort80", self.can_port80),
        ):
            if value:
                out[key] = value
        return out

    @property
    def use_tls(self) -> bool:
        """HTTPS unless ``ForceHTTP`` (``useHTTPS``)."""
        return not self.force_http

    @property
    def port(self) -> int:
        """The TCP port to dial: ``DERPPort``, or 443 when 0 (``dialNode``)."""
        return self.derp_port or 443

    def dial_hosts(self) -> list[str]:
        """Addresses to try, in order: ``IPv4`` and ``IPv6`` when given, then ``HostName``
        (DNS) when a family has no explicit IP; ``"none"`` disables a family
        (``shouldDialProto``; Go races the two families, we try them in turn)."""
        hosts = [ip for ip in (self.ipv4, self.ipv6) if ip and ip != "none"]
        if self.host_name and "" in (self.ipv4, self.ipv6):
            hosts.append(self.host_name)  # a family without an explicit IP uses DNS
        return hosts

    @property
    def host_header(self) -> str:
        """The URL authority: ``HostName`` (or ``IPv4`` without one), with the port when it
        is not the scheme's default."""
        host = self.host_name or self.ipv4
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        default = 443 if self.use_tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    def url(self, path: str = "/derp") -> str:
        """``http(s)://<host>[:port]/derp`` (§5.1)."""
        return f"{'https' if self.use_tls else 'http'}://{self.host_header}{path}"

    @property
    def tls_server_name(self) -> str:
        """The TLS SNI/verification name: ``CertName`` if set, else ``HostName``."""
        return self.cert_name or self.host_name


@dataclass(frozen=True, slots=True)
class DerpRegion:
    """``tailcfg.DERPRegion``: a set of equivalent nodes, tried in order."""

    region_id: int
    region_code: str = ""
    region_name: str = ""
    nodes: tuple[DerpNode, ...] = ()
    embedded_relay: bool = False
    avoid: bool = False

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DerpRegion:
        """Parse a region object (Go field names)."""
        nodes = obj.get("Nodes") or []
        if not isinstance(nodes, list):
            raise TypeError("DERP region field 'Nodes' must be a list")
        return cls(
            region_id=_int(obj, "RegionID"),
            region_code=_str(obj, "RegionCode"),
            region_name=_str(obj, "RegionName"),
            nodes=tuple(DerpNode.from_json(n) for n in nodes),
            embedded_relay=bool(obj.get("EmbeddedRelay", False)),
            avoid=bool(obj.get("Avoid", False)),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "EmbeddedRelay": self.embedded_relay,
            "RegionID": self.region_id,
            "RegionCode": self.region_code,
            "RegionName": self.region_name,
        }
        if self.avoid:
            out["Avoid"] = True
        out["Nodes"] = [n.to_json() for n in self.nodes]
        return out

    @property
    def derp_nodes(self) -> tuple[DerpNode, ...]:
        """The nodes that relay DERP (not ``STUNOnly``)."""
        return tuple(n for n in self.nodes if not n.stun_only)


@dataclass(frozen=True, slots=True)
class DerpMap:
    """``tailcfg.DERPMap``: regions by ID (``HomeParams`` is kept as raw JSON)."""

    regions: Mapping[int, DerpRegion] = field(default_factory=dict)
    home_params: Mapping[str, Any] | None = None
    omit_default_regions: bool = False

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DerpMap:
        """Parse the ``derp_map`` object of ``AgentConnectionInfo`` (region keys are decimal
        strings). Raises :class:`TypeError` on bad shapes."""
        regions_obj = obj.get("Regions") or {}
        if not isinstance(regions_obj, Mapping):
            raise TypeError("DERP map field 'Regions' must be an object")
        regions = {}
        for key, value in regions_obj.items():
            region = DerpRegion.from_json(value)
            regions[int(key) if region.region_id == 0 else region.region_id] = region
        home = obj.get("HomeParams")
        return cls(regions, home if isinstance(home, Mapping) else None,
                   bool(obj.get("omitDefaultRegions", False)))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.home_params is not None:
            out["HomeParams"] = dict(self.home_params)
        out["Regions"] = {str(k): r.to_json() for k, r in sorted(self.regions.items())}
        if self.omit_default_regions:
            out["omitDefaultRegions"] = True
        return out


def rewrite_default_relay(derp_map: DerpMap, access_url: str) -> DerpMap:
    """``RewriteDERPMapDefaultRelay``: point every non-STUN node of every ``EmbeddedRelay``
    region at the client's own deployment URL (host, port 80/443 by scheme unless explicit,
    ``ForceHTTP`` for ``http``)."""
    parts = urlsplit(access_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"access URL must be http(s)://host[:port], got {access_url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    force_http = parts.scheme == "http"
    regions = {}
    for rid, region in derp_map.regions.items():
        if region.embedded_relay:
            region = replace(region, nodes=tuple(
                n if n.stun_only else replace(
                    n, host_name=parts.hostname, derp_port=port, force_http=force_http)
                for n in region.nodes
            ))
        regions[rid] = region
    return replace(derp_map, regions=regions)


def home_region_id(derp_map: DerpMap) -> int:
    """§8.1 step 4: the first (lowest-ID) embedded-relay region with a DERP node, else the
    lowest region ID with one. Raises :class:`ValueError` when no region relays DERP."""
    usable = sorted(rid for rid, r in derp_map.regions.items() if r.derp_nodes and not r.avoid)
    if not usable:
        usable = sorted(rid for rid, r in derp_map.regions.items() if r.derp_nodes)
    if not usable:
        raise ValueError("the DERP map has no region with a DERP (non-STUN-only) node")
    for rid in usable:
        if derp_map.regions[rid].embedded_relay:
            return rid
    return usable[0]
