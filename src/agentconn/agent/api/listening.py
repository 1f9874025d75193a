"""Listening-ports API: which TCP ports in the workspace are listening (agent-api.md §8).

Theory of operation: a scan reads the kernel's socket tables ``<proc>/net/tcp`` (required) and
``<proc>/net/tcp6`` (skipped if unavailable), keeps the sockets in ``LISTEN`` state (``st`` =
``0A``) in table order, drops ports below :data:`MINIMUM_LISTENING_PORT` and the agent's own
``ignore_ports``, and de-duplicates by port (first wins, so an IPv4 entry shadows the IPv6 one
for the same port). Owners are found by walking ``<proc>/<pid>/fd``: a descriptor whose link
reads ``socket:[<inode>]`` belongs to the process whose ``comm`` names it (lowest pid first;
``""`` when no readable process holds the socket). The walk stops once every inode has an owner.

The scan is blocking file I/O, so it runs in a worker thread; one scan at a time, and its
result is reused for :data:`CACHE_DURATION` seconds. A failed scan is not cached and answers
``500 Could not scan for listening ports.``
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable

from agentconn.agent.api.router import ApiError, RequestContext, Router, json_ok
from agentconn.agent.options import AgentOptions
from agentconn.proto.listening import ListeningPort, ListeningPortsResponse
from agentconn.web.server import Request, ResponseLike

__all__ = ["CACHE_DURATION", "MINIMUM_LISTENING_PORT", "ListeningPortsApi", "scan_listening_ports"]

#: §2.2/§8: ports below this are the agent's own services (``AgentMinimumListeningPort``).
MINIMUM_LISTENING_PORT = 9
#: §8: how long a scan result is reused [unconfirmed in the spec: ~1 s].
CACHE_DURATION = 1.0

#: ``st`` column value of a socket in the TCP ``LISTEN`` state (include/net/tcp_states.h).
_TCP_LISTEN = "0A"
_SOCKET_LINK_PREFIX = "socket:["


def _listening_sockets(table: str) -> list[tuple[int, int]]:
    """``(port, inode)`` of each LISTEN row of a ``/proc/net/tcp{,6}`` file, in file order.

    Raises ``OSError`` if the file cannot be read.
    """
    with open(table, encoding="ascii", errors="replace") as f:
        lines = f.read().splitlines()
    out: list[tuple[int, int]] = []
    for line in lines[1:]:  # the first line is the column header
        fields = line.split()
        # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
        if len(fields) < 10 or fields[3] != _TCP_LISTEN:
            continue
        _, _, port_hex = fields[1].rpartition(":")
        try:
            out.append((int(port_hex, 16), int(fields[9])))
        except ValueError:
            continue
    return out


def _socket_owners(proc_root: str, inodes: Iterable[int]) -> dict[int, str]:
    """Map socket inodes to the ``comm`` of a process holding them (lowest pid first)."""
    wanted = set(inodes)
    wanted.discard(0)
    owners: dict[int, str] = {}
    if not wanted:
        return owners
    try:
        pids = sorted(int(e.name) for e in os.scandir(proc_root) if e.name.isdigit())
    except OSError:
        return owners
    for pid in pids:
        fd_dir = os.path.join(proc_root, str(pid), "fd")
        try:
            entries = list(os.scandir(fd_dir))
        except OSError:
            continue  # gone, or not ours to look at
        found: list[int] = []
        for entry in entries:
            try:
                target = os.readlink(entry.path)
            except OSError:
                continue
            if not (target.startswith(_SOCKET_LINK_PREFIX) and target.endswith("]")):
                continue
            try:
                inode = int(target[len(_SOCKET_LINK_PREFIX):-1])
            except ValueError:
                continue
            if inode in wanted and inode not in owners:
                found.append(inode)
        if not found:
            continue
        name = _comm(proc_root, pid)
        for inode in found:
            owners[inode] = name
        if len(owners) == len(wanted):
            break
    return owners


def _comm(proc_root: str, pid: int) -> str:
    try:
        with open(os.path.join(proc_root, str(pid), "comm"), "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    return raw.rstrip(b"\n").decode("utf-8", "replace")


def scan_listening_ports(proc_root: str = "/proc",
                         ignore_ports: Iterable[int] = ()) -> list[ListeningPort]:
    """One blocking scan (see the module doc). Raises ``OSError`` if ``net/tcp`` is unreadable."""
    sockets = _listening_sockets(os.path.join(proc_root, "net", "tcp"))
    try:
        sockets += _listening_sockets(os.path.join(proc_root, "net", "tcp6"))
    except OSError:
        pass  # §8: no IPv6 table → IPv4 only
    ignored = frozenset(ignore_ports)
    kept: list[tuple[int, int]] = []
    seen: set[int] = set()
    for port, inode in sockets:
        if port < MINIMUM_LISTENING_PORT or port in ignored or port in seen:
            continue
        seen.add(port)
        kept.append((port, inode))
    owners = _socket_owners(proc_root, (inode for _, inode in kept))
    return [ListeningPort(process_name=owners.get(inode, ""), network="tcp", port=port)
            for port, inode in kept]


class ListeningPortsApi:
    """``GET /api/v0/listening-ports``.

    ``cache_duration`` is in seconds; ``proc_root`` is where procfs is mounted.
    """

    def __init__(self, options: AgentOptions, *, cache_duration: float = CACHE_DURATION,
                 proc_root: str = "/proc") -> None:
        self._options = options
        self._cache_duration = cache_duration
        self._proc_root = proc_root
        self._lock = asyncio.Lock()
        self._ports: list[ListeningPort] = []
        self._scanned_at: float | None = None

    def register(self, router: Router) -> None:
        """Serve the ``ListeningPorts`` route."""
        router.add_routes({"ListeningPorts": self._listening_ports})

    async def _listening_ports(self, request: Request, ctx: RequestContext) -> ResponseLike:
        async with self._lock:
            now = time.monotonic()
            if self._scanned_at is None or now - self._scanned_at >= self._cache_duration:
                try:
                    self._ports = await asyncio.to_thread(
                        scan_listening_ports, self._proc_root, self._options.ignore_ports)
                except OSError as e:
                    raise ApiError(500, "Could not scan for listening ports.",
                                   f"scan listening ports: {e}") from e
                self._scanned_at = time.monotonic()
            ports = list(self._ports)
        return json_ok(ListeningPortsResponse(ports=ports))
