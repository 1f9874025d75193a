"""The agent's greeting, debug and health routes (agent-api.md §2.4, §13).

Theory of operation: every value comes from live state. ``/debug/magicsock`` renders the
tunnel's peers (endpoint, handshake age, counters) as HTML; ``/debug/prometheus`` exposes the
tunnel, TCP stack and API counters in the Prometheus text format (0.0.4); ``/debug/logs``
serves ``coder-agent.log`` from the log directory (plus rotated logs newer than ``after``);
``/api/v0/netcheck`` reports the host's interfaces (up, with a non-link-local address; MTU
below 1378 warned) and a ``net_info`` whose tri-state fields say only what this agent knows.
"""

from __future__ import annotations

import array
import fcntl
import html
import ipaddress
import logging
import os
import re
import socket
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agentconn.agent.api.router import ApiError, RequestContext, Router, json_ok, text_response
from agentconn.proto._codec import format_time, parse_time
from agentconn.proto.common import GREETING
from agentconn.proto.debug import (
    MIN_HEALTHY_MTU,
    HealthMessage,
    InterfaceInfo,
    InterfacesReport,
    NetcheckReport,
    Severity,
    opt_bool_json,
)
from agentconn.web.server import Request, ResponseLike, ServerResponse

if TYPE_CHECKING:
    from agentconn.aio.tunnel import Tunnel

__all__ = ["LOG_FILE", "DebugApi", "interface_list"]

_log = logging.getLogger("agentconn.agent")

LOG_FILE = "coder-agent.log"
_ROTATED_RE = re.compile(r"^coder-agent-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{3}\.log$")
_LOG_CAP = 10 << 20
_LOGS_TOTAL_CAP = 100 << 20
_READ_CHUNK = 256 * 1024

# <linux/sockios.h>
_SIOCGIFCONF, _SIOCGIFFLAGS, _SIOCGIFMTU = 0x8912, 0x8913, 0x8921
_IFF_UP = 0x1


def _ioctl_ifreq(sock: socket.socket, request: int, name: str) -> bytes:
    ifreq = struct.pack("16s24x", name.encode()[:15])
    return fcntl.ioctl(sock.fileno(), request, ifreq)


def _ipv4_addresses(sock: socket.socket) -> dict[str, list[str]]:
    """name → ``a.b.c.d/len`` via SIOCGIFCONF (addresses) and SIOCGIFNETMASK (prefix)."""
    out: dict[str, list[str]] = {}
    size = 40 * 64
    buf = array.array("B", b"\0" * size)
    ifconf = struct.pack("iL", size, buf.buffer_info()[0])
    length = struct.unpack("iL", fcntl.ioctl(sock.fileno(), _SIOCGIFCONF, ifconf))[0]
    raw = buf.tobytes()[:length]
    for off in range(0, length, 40):
        name = raw[off:off + 16].split(b"\0", 1)[0].decode()
        addr = socket.inet_ntoa(raw[off + 20:off + 24])
        try:
            mask_raw = _ioctl_ifreq(sock, 0x891B, name)  # SIOCGIFNETMASK
            mask = socket.inet_ntoa(mask_raw[20:24])
            plen = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
        except OSError:
            plen = 32
        out.setdefault(name, []).append(f"{addr}/{plen}")
    return out


def _ipv6_addresses() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6:
                    continue
                addr = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
                out.setdefault(parts[5], []).append(f"{addr}/{int(parts[2], 16)}")
    except OSError:
        pass
    return out


def interface_list() -> list[InterfaceInfo]:
    """Interfaces that are up and have at least one non-link-local address (§13)."""
    result: list[InterfaceInfo] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        v4 = _ipv4_addresses(sock)
        v6 = _ipv6_addresses()
        for _, name in socket.if_nameindex():
            try:
                flags = struct.unpack("H", _ioctl_ifreq(sock, _SIOCGIFFLAGS, name)[16:18])[0]
                mtu = struct.unpack("i", _ioctl_ifreq(sock, _SIOCGIFMTU, name)[16:20])[0]
            except OSError:
                continue
            if not flags & _IFF_UP:
                continue
            addrs = [a for a in v4.get(name, []) + v6.get(name, [])
                     if not ipaddress.ip_interface(a).ip.is_link_local]
            if addrs:
                result.append(InterfaceInfo(name=name, mtu=mtu, addresses=addrs))
    return result


def _prom_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


def _prom_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Prom:
    """Collects samples in the Prometheus text exposition format, one HELP/TYPE per family."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._seen: set[str] = set()

    def add(self, name: str, kind: str, help_: str, value: float,
            labels: dict[str, str] | None = None) -> None:
        name = _prom_name(name)
        if name not in self._seen:
            self._seen.add(name)
            self.lines.append(f"# HELP {name} {help_}")
            self.lines.append(f"# TYPE {name} {kind}")
        lab = ""
        if labels:
            lab = "{" + ",".join(f'{k}="{_prom_label(v)}"' for k, v in sorted(labels.items())) + "}"
        self.lines.append(f"{name}{lab} {value:g}" if isinstance(value, float)
                          else f"{name}{lab} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class DebugApi:
    """``GET /``, ``/api/v0/netcheck`` and the ``/debug/*`` routes.

    ``tunnel`` supplies the magicsock page, netcheck's ``WorkingUDP`` and most metrics;
    ``router`` the API request metrics; ``manifest`` is served by ``/debug/manifest``
    (``None`` → 500 ``no manifest in-memory``); ``extra_metrics`` adds samples.
    """

    def __init__(self, log_dir: str, *, tunnel: Tunnel | None = None, router: Router | None = None,
                 manifest: dict[str, Any] | None = None,
                 extra_metrics: Callable[[], dict[str, float]] | None = None) -> None:
        self.log_dir = log_dir
        self.tunnel = tunnel
        self.router = router
        self.manifest = manifest
        self.extra_metrics = extra_metrics
        self.debug_logging = False

    def register(self, router: Router) -> None:
        """Serve the greeting, netcheck and ``/debug`` routes."""
        router.add_routes({
            "Greeting": self._greeting,
            "Netcheck": self._netcheck,
            "DebugMagicsock": self._magicsock,
            "DebugMagicsockLogging": self._debug_logging,
            "DebugManifest": self._manifest,
            "PrometheusMetrics": self._prometheus,
            "DebugLogs": self._logs,
        })

    async def _greeting(self, request: Request, ctx: RequestContext) -> ResponseLike:
        return json_ok(GREETING)

    # -- netcheck ---------------------------------------------------------------------------

    def netcheck_report(self) -> NetcheckReport:
        try:
            interfaces = interface_list()
        except OSError as e:
            raise ApiError(500, "Failed to run interfaces report", str(e)) from e
        warnings = [
            HealthMessage(code="EIF01", message=f"Network interface {i.name} has MTU {i.mtu} "
                          f"(less than {MIN_HEALTHY_MTU}), which may degrade the quality of "
                          "direct connections or render them unusable.")
            for i in interfaces if i.mtu < MIN_HEALTHY_MTU
        ]
        iface_report = InterfacesReport(
            severity=Severity.WARNING if warnings else Severity.OK, warnings=warnings,
            interfaces=interfaces)
        has_v6 = os.path.exists("/proc/net/if_inet6")
        working_v6 = any(not ipaddress.ip_interface(a).ip.is_loopback
                         and ipaddress.ip_interface(a).version == 6
                         and ipaddress.ip_interface(a).ip.is_global
                         for i in interfaces for a in i.addresses)
        working_udp: bool | None = None       # unknown until a handshake came over UDP
        if self.tunnel is not None:
            stats = self.tunnel.stats()
            peers = stats.get("peers", [])
            if any(p.get("last_handshake_unix") for p in peers):
                working_udp = True
        # opt.Bool fields go out as JSON true/false/null: Go's opt.Bool rejects strings.
        net_info: dict[str, Any] = {
            "MappingVariesByDestIP": None, "HairPinning": None,
            "WorkingIPv6": opt_bool_json(working_v6),
            "OSHasIPv6": opt_bool_json(has_v6),
            "WorkingUDP": opt_bool_json(working_udp), "WorkingICMPv4": None,
            "HavePortMap": False, "UPnP": None, "PMP": None, "PCP": None, "PreferredDERP": 0,
            "LinkType": "", "DERPLatency": None, "FirewallMode": "",
        }
        return NetcheckReport(severity=iface_report.severity, warnings=list(warnings),
                              net_info=net_info, interfaces=iface_report)

    async def _netcheck(self, request: Request, ctx: RequestContext) -> ResponseLike:
        return json_ok(self.netcheck_report())

    # -- magicsock --------------------------------------------------------------------------

    async def _magicsock(self, request: Request, ctx: RequestContext) -> ResponseLike:
        if self.tunnel is None:
            return text_response(500, "network is not ready yet\n")
        stats = self.tunnel.stats()
        rows = []
        for p in stats.get("peers", []):
            last = p.get("last_handshake_unix") or 0
            when = (datetime.fromtimestamp(last, UTC).isoformat() if last else "never")
            rows.append(
                "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                    p.get("public_key"), p.get("endpoint"), ", ".join(p.get("allowed_ips", [])),
                    when, p.get("rx_bytes", ""), p.get("tx_bytes", ""))) + "</tr>")
        addrs = ", ".join(map(str, self.tunnel.addresses))
        page = (
            "<!DOCTYPE html><html><head><title>magicsock</title></head><body>"
            "<h1>magicsock</h1>"
            f"<p>public key {html.escape(str(stats.get('public_key')))}, "
            f"UDP port {stats.get('listen_port')}, addresses {html.escape(addrs)}, "
            f"debug logging {'on' if self.debug_logging else 'off'}</p>"
            "<h2>Peers</h2><table border=1><tr><th>public key</th><th>endpoint</th>"
            "<th>allowed IPs</th><th>last handshake</th><th>rx bytes</th><th>tx bytes</th></tr>"
            + "".join(rows) + "</table>"
            f"<h2>Drops</h2><pre>{html.escape(repr(stats.get('drops', {})))}</pre>"
            "</body></html>\n")
        return text_response(200, page, "text/html; charset=utf-8")

    async def _debug_logging(self, request: Request, ctx: RequestContext,
                             state: str) -> ResponseLike:
        value = _parse_go_bool(state)
        if value is None:
            return text_response(400, f'invalid state "{state}", must be a boolean\n')
        self.debug_logging = value
        logging.getLogger("agentconn.wg").setLevel(logging.DEBUG if value else logging.NOTSET)
        logging.getLogger("agentconn.aio").setLevel(logging.DEBUG if value else logging.NOTSET)
        return text_response(200, f"updated magicsock debug logging to {str(value).lower()}\n")

    # -- manifest ---------------------------------------------------------------------------

    async def _manifest(self, request: Request, ctx: RequestContext) -> ResponseLike:
        if self.manifest is None:
            return text_response(500, "no manifest in-memory\n")
        return json_ok(self.manifest)

    # -- prometheus -------------------------------------------------------------------------

    def metrics_text(self) -> str:
        prom = _Prom()
        if self.tunnel is not None:
            s = self.tunnel.stats()
            for key in ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes"):
                if isinstance(s.get(key), int):
                    prom.add(f"agentconn_wireguard_{key}_total", "counter",
                             f"WireGuard data-plane {key.replace('_', ' ')}", s[key])
            for name, value in sorted(s.get("handshakes", {}).items()):
                prom.add("agentconn_wireguard_handshakes_total", "counter",
                         "WireGuard handshake events", value, {"event": name})
            for reason, value in sorted(s.get("drops", {}).items()):
                prom.add("agentconn_wireguard_drops_total", "counter",
                         "packets dropped by the WireGuard layer", value, {"reason": reason})
            prom.add("agentconn_wireguard_peers", "gauge", "configured peers",
                     len(s.get("peers", [])))
            for p in s.get("peers", []):
                prom.add("agentconn_wireguard_peer_last_handshake_seconds", "gauge",
                         "Unix time of the last completed handshake",
                         p.get("last_handshake_unix") or 0, {"peer": str(p.get("public_key"))})
            tcp = s.get("tcp", {})
            for name, value in sorted(tcp.items()):
                if isinstance(value, int):
                    prom.add(f"agentconn_tcp_{name}", "counter" if name != "active" else "gauge",
                             f"userspace TCP stack: {name.replace('_', ' ')}", value)
                elif isinstance(value, dict):
                    for label, v in sorted(value.items()):
                        if isinstance(v, int):
                            prom.add(f"agentconn_tcp_{name}_total", "counter",
                                     f"userspace TCP stack: {name}", v, {"reason": label})
            prom.add("agentconn_tcp_connections", "gauge", "open TCP connections",
                     len(tcp.get("connections", [])))
            for name, value in sorted(s.get("ip", {}).items()):
                prom.add("agentconn_ip_packets_total", "counter", "IP layer events", value,
                         {"event": name})
        if self.router is not None:
            prom.add("agentconn_api_requests_total", "counter", "HTTP API requests",
                     self.router.requests)
            for status, n in sorted(self.router.status_counts.items()):
                prom.add("agentconn_api_responses_total", "counter",
                         "HTTP API responses by status", n, {"code": str(status)})
            prom.add("agentconn_api_handler_seconds_total", "counter",
                     "time spent in API handlers", round(self.router.handler_seconds, 6))
        if self.extra_metrics is not None:
            for name, value in sorted(self.extra_metrics().items()):
                prom.add(name, "gauge", name.replace("_", " "), value)
        return prom.text()

    async def _prometheus(self, request: Request, ctx: RequestContext) -> ResponseLike:
        return text_response(200, self.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")

    # -- logs -------------------------------------------------------------------------------

    async def _logs(self, request: Request, ctx: RequestContext) -> ResponseLike:
        unknown = [k for k, _ in request.query_list if k != "after"]
        if unknown:
            return text_response(400, f"unknown query parameter {unknown[0]!r}\n")
        after_text = request.query.get("after")
        active = os.path.join(self.log_dir, LOG_FILE)
        if after_text is None:
            try:
                fd = os.open(active, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as e:
                return text_response(500, f"could not open log file: {e}\n")
            return ServerResponse(200, [("Content-Type", "text/plain; charset=utf-8")],
                                  _stream_fd(fd, _LOG_CAP))
        try:
            after = parse_time(after_text)
        except ValueError as e:
            return text_response(400, f"after must be an RFC3339 timestamp: {e}\n")
        return ServerResponse(200, [("Content-Type", "text/plain; charset=utf-8")],
                              self._sections(after))

    def _log_files(self, after: datetime) -> list[tuple[str, float]]:
        """The active log, then rotated logs not older than ``after``, newest first."""
        out: list[tuple[str, float]] = []
        rotated: list[tuple[str, float]] = []
        try:
            names = os.listdir(self.log_dir)
        except OSError:
            return out
        for name in names:
            path = os.path.join(self.log_dir, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            if name == LOG_FILE:
                out.insert(0, (name, st.st_mtime))
            elif _ROTATED_RE.match(name) and st.st_mtime >= after.timestamp():
                rotated.append((name, st.st_mtime))
        rotated.sort(key=lambda item: item[1], reverse=True)
        return out + rotated

    async def _sections(self, after: datetime) -> Any:
        total = 0
        first = True
        for name, mtime in self._log_files(after):
            if total >= _LOGS_TOTAL_CAP:
                break
            stamp = format_time(datetime.fromtimestamp(mtime, UTC))
            header = ("" if first else "\n") + f"=== {name} (mtime {stamp}) ===\n"
            first = False
            yield header.encode()
            total += len(header)
            try:
                fd = os.open(os.path.join(self.log_dir, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            cap = min(_LOG_CAP, _LOGS_TOTAL_CAP - total)
            async for chunk in _stream_fd(fd, cap):
                total += len(chunk)
                yield chunk


def _parse_go_bool(text: str) -> bool | None:
    """Go's ``strconv.ParseBool``."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


async def _stream_fd(fd: int, cap: int) -> Any:
    """Yield at most ``cap`` bytes from ``fd`` in chunks, closing it at the end."""
    import asyncio

    try:
        left = cap
        while left > 0:
            chunk = await asyncio.to_thread(os.read, fd, min(_READ_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        os.close(fd)

