"""``AgentConn``: the agent HTTP API as an async client over a userspace WireGuard tunnel.

Theory of operation: every method maps to one route of :mod:`agentconn.proto.routes`.
Requests go through one :class:`~agentconn.web.client.HttpClient` whose opener only ever dials
the pinned agent address on port 4 through the tunnel (agent-api.md §2.3), so a redirect or a
bad URL can never reach another host. Unlike the Go client, connections are kept alive and
reused (``keep_alive=False`` restores the Go behaviour: ``Connection: close``, one TCP
connection per call). JSON bodies are sent as Go's encoder writes them (no HTML escaping,
trailing newline, no Content-Type); responses decode into the typed models of
:mod:`agentconn.proto`. Any status other than the route's success status raises
:class:`AgentApiError` carrying the decoded ``codersdk.Response`` (message, detail,
validations) or the raw text. Large bodies stream both ways: :meth:`AgentConn.read_file`
returns a :class:`FileStream`, :meth:`AgentConn.write_file` accepts bytes, a binary file object
or an async iterator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self, TypeVar

from agentconn.errors import AgentConnError, PingTimeoutError, TunnelError
from agentconn.proto._codec import Model, go_json
from agentconn.proto.common import Response as MessageResponse
from agentconn.proto.common import Validation
from agentconn.proto.containers import ListContainersResponse
from agentconn.proto.context import ContextConfigResponse
from agentconn.proto.debug import NetcheckReport, normalize_net_info
from agentconn.proto.desktop import DesktopActionRequest, DesktopActionResponse
from agentconn.proto.files import (
    FileEdit,
    FileEditRequest,
    FileEditResponse,
    FileEdits,
    LSRequest,
    LSResponse,
    ReadFileLinesResponse,
    ResolvePathResponse,
)
from agentconn.proto.listening import ListeningPortsResponse
from agentconn.proto.mcp import (
    CallMCPToolRequest,
    CallMCPToolResponse,
    ListMCPToolsResponse,
    ReadMCPResourceRequest,
    ReadMCPResourceResponse,
)
from agentconn.proto.ports import AGENT_HTTP_API_PORT, agent_addr
from agentconn.proto.processes import (
    ListProcessesResponse,
    ProcessOutputResponse,
    SignalProcessRequest,
    StartProcessRequest,
    StartProcessResponse,
)
from agentconn.proto.routes import READ_FILE_LINES_DEFAULTS, QueryValue, build_target, route
from agentconn.web.client import HttpClient
from agentconn.web.client import Response as HttpResponse

if TYPE_CHECKING:
    from agentconn.aio.tunnel import Tunnel
    from agentconn.client.containers import ContainersWatch
    from agentconn.client.git import GitWatch
    from agentconn.wg.config import InterfaceConfig

__all__ = [
    "AgentApiError",
    "AgentConn",
    "FileStream",
    "ReadFileLinesLimits",
    "SkipClose",
    "connect",
]

M = TypeVar("M", bound=Model)

_ERROR_BODY_LIMIT = 4 << 20
_WRITE_CHUNK = 1 << 20
#: A successful exchange this recent counts as proof of reachability (no ping before dialing).
_REACHABLE_FRESH = 10.0


class AgentApiError(AgentConnError):
    """The agent answered with an unexpected status (Go ``codersdk.Error``).

    ``status`` is the HTTP status; ``message``, ``detail`` and ``validations`` come from the
    JSON ``codersdk.Response`` body when there is one, else ``message`` is the raw body text.
    ``method`` and ``target`` say which call failed.
    """

    def __init__(self, status: int, message: str, detail: str = "",
                 validations: Sequence[Validation] = (), *, method: str = "",
                 target: str = "", body: bytes = b"") -> None:
        self.status = status
        self.message = message
        self.detail = detail
        self.validations = list(validations)
        self.method = method
        self.target = target
        self.body = body
        text = f"{method} {target}: unexpected status code {status}: {message}"
        if detail:
            text += f": {detail}"
        for v in self.validations:
            text += f"\n\tError: {v.field}: {v.detail}"
        super().__init__(text)


class SkipClose(Exception):
    """Raised (or returned) by a close hook to keep the shared tunnel open (``ErrSkipClose``)."""


@dataclass(frozen=True, slots=True)
class ReadFileLinesLimits:
    """``workspacesdk.ReadFileLinesLimits``; the defaults are ``DefaultReadFileLinesLimits``."""

    max_file_size: int = READ_FILE_LINES_DEFAULTS["max_file_size"]
    max_line_bytes: int = READ_FILE_LINES_DEFAULTS["max_line_bytes"]
    max_response_lines: int = READ_FILE_LINES_DEFAULTS["max_response_lines"]
    max_response_bytes: int = READ_FILE_LINES_DEFAULTS["max_response_bytes"]


class FileStream:
    """The body of a ``read_file`` call, streamed: iterate it, or :meth:`read` it whole.

    ``mime_type`` is the agent's Content-Type (``application/octet-stream`` when missing);
    ``size`` the Content-Length (``None`` if absent). Close it (or use ``async with``) if not
    read to the end.
    """

    def __init__(self, response: HttpResponse) -> None:
        self._response = response
        self.mime_type: str = response.headers.get("content-type") or "application/octet-stream"
        length = response.headers.get("content-length")
        self.size: int | None = int(length) if length and length.isdigit() else None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._response.iter_bytes()

    async def read(self) -> bytes:
        """The whole body (held in memory)."""
        return await self._response.read()

    async def aclose(self) -> None:
        self._response.release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


def _json_body(model: Model) -> bytes:
    # The Go client's encoder: SetEscapeHTML(false), trailing newline.
    return go_json(model.to_json(), html_escape=False)


async def _file_chunks(f: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(f.read, _WRITE_CHUNK):
        yield chunk


async def _iter_chunks(data: AsyncIterable[bytes | bytearray | memoryview]) -> AsyncIterator[bytes]:
    async for chunk in data:
        yield bytes(chunk)


class AgentConn:
    """A connection to one workspace agent, reached through ``tunnel``.

    Build it with :func:`connect` (which owns the tunnel) or directly around a running
    :class:`~agentconn.aio.tunnel.Tunnel`. ``close_hook`` runs on :meth:`close`; if it raises
    :class:`SkipClose` the tunnel stays open (Go ``CloseFunc``/``ErrSkipClose``); otherwise the
    tunnel is closed when ``owns_tunnel`` is true. ``timeout`` bounds each connect/read/write
    (seconds). ``keep_alive=False`` sends ``Connection: close`` and opens a new TCP connection
    for every call, like the Go client.
    """

    def __init__(self, tunnel: Tunnel, agent_id: uuid.UUID | str, *, owns_tunnel: bool = False,
                 close_hook: Callable[[], Awaitable[None] | None] | None = None,
                 timeout: float = 30.0, keep_alive: bool = True, max_idle: int = 8) -> None:
        self.agent_id = uuid.UUID(str(agent_id))
        self._tunnel = tunnel
        self._owns_tunnel = owns_tunnel
        self._close_hook = close_hook
        self.timeout = timeout
        self.keep_alive = keep_alive
        self._address = agent_addr(self.agent_id)
        self._host = str(self._address)
        self._http = HttpClient(self._open, max_idle_per_host=max_idle if keep_alive else 0)
        self._extra_headers: list[tuple[str, str]] = []
        self._last_ok = 0.0
        self._closed = False

    # -- local ---------------------------------------------------------------------------

    @property
    def tunnel(self) -> Tunnel:
        """The underlying tunnel (Go ``TailnetConn``)."""
        return self._tunnel

    @property
    def agent_address(self) -> ipaddress.IPv6Address:
        """The address dialed: Tailscale service prefix + the agent UUID's last 10 bytes."""
        return self._address

    @property
    def connections_opened(self) -> int:
        """TCP connections opened to the API so far (for tests and benchmarks)."""
        return self._http.connections_opened

    def set_extra_headers(self, headers: Mapping[str, str] | Sequence[tuple[str, str]]) -> None:
        """Replace the headers added to every later API request (e.g. ``Coder-Chat-Id``)."""
        items = headers.items() if isinstance(headers, Mapping) else headers
        self._extra_headers = [(str(k), str(v)) for k, v in items]

    async def await_reachable(self, timeout: float = 30.0) -> bool:
        """Wait until the agent answers a TSMP ping (Go ``AwaitReachable``); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await self._tunnel.ping(self._host, timeout=min(left, 1.0), kind="tsmp")
            except PingTimeoutError:
                continue
            self._last_ok = time.monotonic()
            return True

    async def ping(self, timeout: float = 5.0) -> tuple[float, bool, dict[str, Any]]:
        """One TSMP ping: (RTT seconds, direct path, result). Direct unless the agent peer's
        WireGuard endpoint is a relay path (DERP, until disco finds a direct UDP path);
        the result names the UDP ``Endpoint`` of a direct path (ipnstate.PingResult)."""
        rtt = await self._tunnel.ping(self._host, timeout=timeout, kind="tsmp")
        self._last_ok = time.monotonic()
        endpoint = str((self.get_peer_diagnostics().get("peer") or {}).get("endpoint") or "")
        direct = not endpoint.startswith("relay:")
        return rtt, direct, {"IP": self._host, "LatencySeconds": rtt,
                             "Endpoint": endpoint if direct else "",
                             "NodeIP": self._host, "PeerAPIPort": 0}

    def get_peer_diagnostics(self) -> dict[str, Any]:
        """Tunnel-level diagnostics for the agent peer (handshake, endpoint, counters)."""
        stats = self._tunnel.stats()
        peers = stats.get("peers", [])
        for p in peers:
            for net in p.get("allowed_ips", []):
                if self._address in ipaddress.ip_network(net):
                    return {"peer": p, "tcp": {k: v for k, v in stats.get("tcp", {}).items()
                                               if k != "connections"}}
        return {"peer": None}

    def lease(self, *, close_hook: Callable[[], Awaitable[None] | None] | None = None
              ) -> AgentConn:
        """Another :class:`AgentConn` to the same agent over the same tunnel whose
        :meth:`close` never closes the tunnel (coderd's cached, shared connections wrapped
        with ``ErrSkipClose``). It has its own connection pool and extra headers."""
        async def hook() -> None:
            if close_hook is not None:
                result = close_hook()
                if result is not None:
                    await result
            raise SkipClose

        conn = AgentConn(self._tunnel, self.agent_id, close_hook=hook, timeout=self.timeout,
                         keep_alive=self.keep_alive)
        conn._last_ok = self._last_ok
        return conn

    async def close(self) -> None:
        """Close pooled connections; run the close hook; close the tunnel if owned."""
        if self._closed:
            return
        self._closed = True
        await self._http.close()
        if self._close_hook is not None:
            try:
                result = self._close_hook()
                if result is not None:
                    await result
            except SkipClose:
                return
        if self._owns_tunnel:
            await self._tunnel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- transport ------------------------------------------------------------------------

    async def _open(self, host: str, port: int) -> tuple[asyncio.StreamReader,
                                                         asyncio.StreamWriter]:
        # The pinned dialer (§2.3): only the agent address, only port 4.
        if host != self._host or port != AGENT_HTTP_API_PORT:
            raise TunnelError(f"refusing to dial {host}:{port}: only the agent address "
                              f"[{self._host}]:{AGENT_HTTP_API_PORT} is allowed")
        stale = time.monotonic() - self._last_ok > _REACHABLE_FRESH
        if stale and not await self.await_reachable(self.timeout):
            raise TunnelError("workspace agent not reachable in time")
        return await self._tunnel.open_connection(self._host, AGENT_HTTP_API_PORT)

    async def _create_connection(self, protocol_factory: Callable[[], asyncio.Protocol]
                                 ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """:meth:`_open` for a protocol of one's own (the pinned dialer's checks included)."""
        if time.monotonic() - self._last_ok > _REACHABLE_FRESH and not await \
                self.await_reachable(self.timeout):
            raise TunnelError("workspace agent not reachable in time")
        return await self._tunnel.create_connection(protocol_factory, self._host,
                                                    AGENT_HTTP_API_PORT)

    async def _send(self, name: str, *, path: Mapping[str, str | uuid.UUID] | None = None,
                    query: Mapping[str, QueryValue | None] | None = None,
                    body: bytes | AsyncIterable[bytes] | None = None,
                    headers: Sequence[tuple[str, str]] = (),
                    timeout: float | None = None) -> HttpResponse:
        """Send a request for route ``name``; return the response if its status is the
        route's success status, else raise :class:`AgentApiError`."""
        if self._closed:
            raise AgentConnError("AgentConn is closed")
        r = route(name)
        target = build_target(r, path, query)
        hdrs = [*self._extra_headers, *headers]
        if not self.keep_alive:
            hdrs.append(("Connection", "close"))
        resp = await self._http.request(r.method, target, host=self._host,
                                        port=AGENT_HTTP_API_PORT, headers=hdrs, body=body,
                                        timeout=self.timeout if timeout is None else timeout)
        self._last_ok = time.monotonic()
        if resp.status != r.status:
            raise await self._error(resp, r.method, target)
        return resp

    @staticmethod
    async def _error(resp: HttpResponse, method: str, target: str) -> AgentApiError:
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > _ERROR_BODY_LIMIT:
                    break
                chunks.append(chunk)
        finally:
            resp.release()
        raw = b"".join(chunks)
        ctype = resp.headers.get("content-type", "")
        if "json" in ctype:
            try:
                parsed = MessageResponse.from_json(raw)
            except AgentConnError:
                pass
            else:
                return AgentApiError(resp.status, parsed.message, parsed.detail,
                                     parsed.validations, method=method, target=target, body=raw)
        text = raw.decode("utf-8", "replace").strip()
        return AgentApiError(resp.status, text or resp.reason, method=method, target=target,
                             body=raw)

    async def _call(self, name: str, model: type[M], **kw: Any) -> M:
        resp = await self._send(name, **kw)
        async with resp:
            return model.from_json(await resp.read())

    async def _bytes(self, name: str, **kw: Any) -> bytes:
        resp = await self._send(name, **kw)
        async with resp:
            return await resp.read()

    # -- stream services (ports 1-3) ----------------------------------------------------------

    async def speedtest(self, direction: str = "down", duration: float = 5.0, *,
                        on_interval: Any = None) -> Any:
        """Tailscale speedtest v2 against the agent (port 3): per-second intervals and a total
        (:class:`~agentconn.proto.speedtest.SpeedtestResult`). ``direction`` "down"/"up"."""
        from agentconn.client.speedtest import speedtest

        return await speedtest(self, direction, duration, on_interval=on_interval)

    async def dial(self, network: str, addr: str | int) -> Any:
        """Dial the agent (Go ``DialContext``): ``"tcp"`` → (StreamReader, StreamWriter);
        ``"udp"`` → (DatagramTransport, DatagramProtocol) connected to the agent. Only the port
        of ``addr`` ("host:port", ":port" or an int) is used; the host is always the agent."""
        port = addr if isinstance(addr, int) else int(str(addr).rpartition(":")[2])
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range 1-65535")
        if network not in ("tcp", "udp"):
            raise ValueError(f'unknown network "{network}"')
        if time.monotonic() - self._last_ok > _REACHABLE_FRESH and not await \
                self.await_reachable(self.timeout):
            raise TunnelError("workspace agent not reachable in time")
        if network == "tcp":
            return await self._tunnel.open_connection(self._host, port)
        return await self._tunnel.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(self._host, port))

    async def reconnecting_pty(self, id: uuid.UUID | str, height: int, width: int,
                               command: str = "", *, container: str = "",
                               container_user: str = "", backend_type: str = "") -> Any:
        """A reconnecting PTY session on the agent (port 2): ``write``/``resize``/``read`` on
        the returned :class:`~agentconn.client.pty.ReconnectingPty`. Reattach with the same
        ``id`` to get the last 64 KiB of screen replayed."""
        from agentconn.client.pty import reconnecting_pty

        return await reconnecting_pty(self, uuid.UUID(str(id)), height, width, command,
                                      container=container, container_user=container_user,
                                      backend_type=backend_type)

    async def ssh(self, port: int = 1) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw TCP stream to the agent's SSH server (port 1, or 22, or any port)."""
        from agentconn.client.ssh import ssh

        return await ssh(self, port)

    def http_client(self, port: int, **httpx_kwargs: Any) -> Any:
        """An ``httpx.AsyncClient`` whose connections go through the tunnel to the web app on
        the agent's ``port`` (base URL ``http://localhost:<port>``): keep-alive pooled,
        streaming both ways. Needs ``httpx`` (the ``http`` extra)."""
        from agentconn.client.http import http_client

        return http_client(self, port, **httpx_kwargs)

    async def websocket(self, port: int, path: str = "/", **kwargs: Any) -> Any:
        """An open :class:`~agentconn.web.websocket.WebSocket` to ``path`` on the agent's
        ``port`` through the tunnel (``send``/``receive``/``close``); keyword arguments as
        :func:`agentconn.client.websocket.websocket` (``headers``, ``subprotocols``, ...)."""
        from agentconn.client.websocket import websocket

        return await websocket(self, port, path, **kwargs)

    async def ssh_client(self, port: int = 1, **asyncssh_kwargs: Any) -> Any:
        """An ``asyncssh.SSHClientConnection`` to the agent, handshake done (host key not
        checked, "none" authentication), over the tunnel."""
        from agentconn.client.ssh import ssh_client

        return await ssh_client(self, port, **asyncssh_kwargs)

    # -- debug and health ---------------------------------------------------------------------

    async def listening_ports(self) -> ListeningPortsResponse:
        """Ports listening on the workspace (``GET /api/v0/listening-ports``)."""
        return await self._call("ListeningPorts", ListeningPortsResponse)

    async def netcheck(self) -> NetcheckReport:
        """The agent's network report (``GET /api/v0/netcheck``). ``net_info``'s ``opt.Bool``
        fields read as Go holds them (``"true"``, ``"false"``, ``""``), whichever JSON form the
        agent sent."""
        report = await self._call("Netcheck", NetcheckReport)
        return dataclasses.replace(report, net_info=normalize_net_info(report.net_info))

    async def debug_magicsock(self) -> bytes:
        """The agent's tunnel debug page (HTML)."""
        return await self._bytes("DebugMagicsock")

    async def debug_manifest(self) -> bytes:
        """The agent's manifest as JSON bytes."""
        return await self._bytes("DebugManifest")

    async def debug_logs(self, after: datetime | None = None) -> bytes:
        """The agent's log (first 10 MiB), or with ``after`` every log section since then."""
        return await self._bytes("DebugLogs", query={"after": after}, timeout=330.0)

    async def prometheus_metrics(self) -> bytes:
        """The agent's metrics in the Prometheus text format."""
        return await self._bytes("PrometheusMetrics")

    # -- files --------------------------------------------------------------------------------

    async def ls(self, path: str = "", request: LSRequest | None = None, *,
                 relativity: str | None = None, components: Sequence[str] | None = None
                 ) -> LSResponse:
        """List a directory: ``ls("/abs/dir")`` or ``ls(components=["repos"],
        relativity="home")`` (or a full :class:`LSRequest`)."""
        if request is None:
            request = LSRequest(path=list(components or []), relativity=relativity or
                                ("root" if path or not components else "home"))
        return await self._call("LS", LSResponse, query={"path": path or None},
                                body=_json_body(request))

    async def resolve_path(self, path: str) -> str:
        """The path with symlinks resolved (missing trailing components kept)."""
        resp = await self._call("ResolvePath", ResolvePathResponse, query={"path": path})
        return resp.resolved_path

    async def read_file(self, path: str, offset: int = 0, limit: int = 0) -> FileStream:
        """Stream ``limit`` bytes (0: to EOF) of ``path`` from ``offset``; see :class:`FileStream`."""
        resp = await self._send("ReadFile", query={"path": path, "offset": offset,
                                                   "limit": limit})
        return FileStream(resp)

    async def read_file_bytes(self, path: str, offset: int = 0, limit: int = 0) -> bytes:
        """:meth:`read_file` read whole."""
        async with await self.read_file(path, offset, limit) as f:
            return await f.read()

    async def read_file_lines(self, path: str, offset: int = 1, limit: int = 0,
                              limits: ReadFileLinesLimits | None = None) -> ReadFileLinesResponse:
        """Numbered lines of a text file; domain failures come back as ``success=False``."""
        lim = limits or ReadFileLinesLimits()
        return await self._call("ReadFileLines", ReadFileLinesResponse, query={
            "path": path, "offset": offset, "limit": limit,
            "max_file_size": lim.max_file_size, "max_line_bytes": lim.max_line_bytes,
            "max_response_lines": lim.max_response_lines,
            "max_response_bytes": lim.max_response_bytes})

    async def write_file(self, path: str,
                         data: bytes | bytearray | memoryview | IO[bytes]
                         | AsyncIterable[bytes | bytearray | memoryview]) -> None:
        """Atomically replace ``path`` with ``data`` (bytes, a binary file object or an async
        iterator of chunks; files and iterators are streamed, never held whole)."""
        body: bytes | AsyncIterable[bytes]
        if isinstance(data, (bytes, bytearray, memoryview)):
            body = bytes(data)
        elif isinstance(data, AsyncIterable):
            body = _iter_chunks(data)
        elif hasattr(data, "read"):
            body = _file_chunks(data)
        else:
            raise TypeError(f"write_file data must be bytes, a binary file or an async iterator, "
                            f"not {type(data).__name__}")
        resp = await self._send("WriteFile", query={"path": path}, body=body)
        async with resp:
            await resp.read()

    async def upload(self, local_path: str | os.PathLike[str], remote_path: str, *,
                     recursive: bool = False,
                     progress: Callable[[int, int, str], None] | None = None) -> Any:
        """Copy a local file (or with ``recursive`` a tree) to the agent, modes kept, sha256
        checked; ``progress(done_bytes, total_bytes, name)``. Returns a
        :class:`~agentconn.client.transfer.TransferResult`; see :mod:`agentconn.client.transfer`."""
        from agentconn.client.transfer import upload

        return await upload(self, local_path, remote_path, recursive=recursive,
                            progress=progress)

    async def download(self, remote_path: str, local_path: str | os.PathLike[str], *,
                       recursive: bool = False, resume: bool = True,
                       progress: Callable[[int, int, str], None] | None = None) -> Any:
        """Copy a file (or with ``recursive`` a tree) from the agent, modes kept, sha256
        checked, an interrupted download's ``.part`` resumed. Returns a
        :class:`~agentconn.client.transfer.TransferResult`; see :mod:`agentconn.client.transfer`."""
        from agentconn.client.transfer import download

        return await download(self, remote_path, local_path, recursive=recursive,
                              resume=resume, progress=progress)

    async def edit_files(self, files: FileEditRequest | Sequence[FileEdits]
                         | Mapping[str, Sequence[FileEdit | tuple[str, str]]],
                         *, include_diff: bool = False) -> FileEditResponse:
        """Apply search/replace edits to files atomically (all-or-nothing on validation).

        ``files`` is a :class:`FileEditRequest`, a list of :class:`FileEdits`, or a mapping
        ``{path: [(old, new), FileEdit, ...]}``.
        """
        if isinstance(files, FileEditRequest):
            request = files
        else:
            items: list[FileEdits] = []
            if isinstance(files, Mapping):
                for p, edits in files.items():
                    items.append(FileEdits(path=p, edits=[
                        e if isinstance(e, FileEdit) else FileEdit.for_client(e[0], e[1])
                        for e in edits]))
            else:
                items = list(files)
            request = FileEditRequest(files=items, include_diff=include_diff)
        return await self._call("EditFiles", FileEditResponse, body=_json_body(request))

    # -- processes ----------------------------------------------------------------------------

    async def start_process(self, command: str | StartProcessRequest, *, workdir: str = "",
                            env: Mapping[str, str] | None = None,
                            background: bool = False) -> StartProcessResponse:
        """Start ``sh -c command`` on the agent, detached from this request."""
        req = command if isinstance(command, StartProcessRequest) else StartProcessRequest(
            command=command, workdir=workdir, env=dict(env or {}), background=background)
        return await self._call("StartProcess", StartProcessResponse, body=_json_body(req))

    async def list_processes(self) -> ListProcessesResponse:
        """Up to 10 tracked processes, running first."""
        return await self._call("ListProcesses", ListProcessesResponse)

    async def process_output(self, process_id: str, *, wait: bool = False) -> ProcessOutputResponse:
        """The process's output so far; ``wait=True`` blocks until it exits (≤ 5 minutes)."""
        return await self._call("ProcessOutput", ProcessOutputResponse,
                                path={"id": process_id}, query={"wait": wait},
                                timeout=330.0 if wait else None)

    async def signal_process(self, process_id: str, signal: str) -> None:
        """Send ``"kill"`` or ``"terminate"`` to the process group."""
        body = _json_body(SignalProcessRequest(signal=signal))
        await self._call("SignalProcess", MessageResponse, path={"id": process_id}, body=body)

    # -- MCP and context ----------------------------------------------------------------------

    async def list_mcp_tools(self, *, refresh: bool = False) -> ListMCPToolsResponse:
        """Tools of the MCP servers configured on the agent (``server__tool`` names)."""
        return await self._call("ListMCPTools", ListMCPToolsResponse, query={"refresh": refresh})

    async def call_mcp_tool(self, tool_name: str, arguments: Mapping[str, Any] | None = None
                            ) -> CallMCPToolResponse:
        """Call ``server__tool`` with ``arguments``."""
        req = CallMCPToolRequest(tool_name=tool_name, arguments=dict(arguments or {}))
        return await self._call("CallMCPTool", CallMCPToolResponse, body=_json_body(req),
                                timeout=max(self.timeout, 90.0))

    async def read_mcp_resource(self, server_name: str, uri: str) -> ReadMCPResourceResponse:
        """Read one resource of an MCP server."""
        req = ReadMCPResourceRequest(server_name=server_name, uri=uri)
        return await self._call("ReadMCPResource", ReadMCPResourceResponse, body=_json_body(req))

    async def context_config(self) -> ContextConfigResponse:
        """Instruction files and skills found in the workspace."""
        return await self._call("ContextConfig", ContextConfigResponse,
                                timeout=max(self.timeout, 60.0))

    # -- containers and dev containers (agent-api.md §9) --------------------------------------

    async def list_containers(self) -> ListContainersResponse:
        """The agent's containers and dev containers (``GET /api/v0/containers``): a
        :class:`~agentconn.proto.containers.ListContainersResponse`. Raises
        :class:`~agentconn.client.containers.ContainersForbiddenError` (403) when the agent
        runs without dev container support, ``ContainersFailedError`` (500) when Docker could
        not be asked."""
        from agentconn.client.containers import list_containers

        return await list_containers(self)

    def watch_containers(self) -> ContainersWatch:
        """A :class:`~agentconn.client.containers.ContainersWatch`: the list now and again
        whenever a dev container changes. ``async with conn.watch_containers() as w: async
        for listing in w: …`` (or ``await`` it, then ``aclose()``)."""
        from agentconn.client.containers import ContainersWatch

        return ContainersWatch(self)

    async def recreate_devcontainer(self, devcontainer_id: uuid.UUID | str) -> MessageResponse:
        """Rebuild a dev container into a new container (202; the agent reports progress as
        its status: ``starting``, then ``running`` or ``error``). Raises
        ``DevcontainerNotFoundError`` (404), ``DevcontainerBusyError`` (409)."""
        from agentconn.client.containers import recreate_devcontainer

        return await recreate_devcontainer(self, devcontainer_id)

    async def delete_devcontainer(self, devcontainer_id: uuid.UUID | str) -> None:
        """Stop and remove a dev container's container and forget it (204). Raises
        ``DevcontainerNotFoundError`` (404), ``DevcontainerBusyError`` (409),
        ``ContainersFailedError`` (500)."""
        from agentconn.client.containers import delete_devcontainer

        await delete_devcontainer(self, devcontainer_id)

    # -- git watch (agent-api.md §10) ---------------------------------------------------------

    def watch_git(self, chat_id: uuid.UUID | str | None = None) -> GitWatch:
        """Watch the git repositories chat ``chat_id`` touched: ``async with
        conn.watch_git(chat_id=...) as w: async for msg in w: ...`` yields typed
        :class:`~agentconn.proto.git.GitServerMessage` messages (``changes``,
        ``error``, ``progress``); ``await w.refresh()`` asks for a rescan. The socket opens on entry
        (``AgentApiError`` if the agent refuses). Without a chat the agent watches nothing."""
        from agentconn.client.git import GitWatch

        return GitWatch(self, chat_id)

    # -- desktop (computer use, agent-api.md §11) ---------------------------------------------

    async def connect_desktop_vnc(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The agent's VNC server as an asyncio (StreamReader, StreamWriter) carrying raw RFB
        over the ``/api/v0/desktop/vnc`` websocket. ``writer.close()`` ends it. Raises
        :class:`AgentApiError` (500 ``Failed to start desktop session.`` or ``Failed to
        connect to VNC server.``) when the agent refuses."""
        from agentconn.client.desktop import connect_desktop_vnc

        return await connect_desktop_vnc(self)

    async def execute_desktop_action(self, action: str | DesktopActionRequest, *,
                                     coordinate: tuple[int, int] | None = None,
                                     start_coordinate: tuple[int, int] | None = None,
                                     text: str | None = None, duration: int | None = None,
                                     scroll_amount: int | None = None,
                                     scroll_direction: str | None = None,
                                     scaled_width: int | None = None,
                                     scaled_height: int | None = None
                                     ) -> DesktopActionResponse:
        """Perform a desktop action (``"left_click"``, ``"type"``, ``"screenshot"``, …; see
        agent-api.md §11.2): keyword arguments or a whole :class:`DesktopActionRequest`.
        Coordinates are in the declared space ``scaled_width``×``scaled_height`` (the native
        size when omitted); ``duration`` is in ms. A screenshot's PNG is
        ``response.screenshot``."""
        from agentconn.client.desktop import execute_desktop_action

        req = action if isinstance(action, DesktopActionRequest) else DesktopActionRequest(
            action=action, coordinate=coordinate, start_coordinate=start_coordinate, text=text,
            duration=duration, scroll_amount=scroll_amount, scroll_direction=scroll_direction,
            scaled_width=scaled_width, scaled_height=scaled_height)
        return await execute_desktop_action(self, req)

    async def start_desktop_recording(self, recording_id: uuid.UUID | str) -> None:
        """Start recording the desktop under ``recording_id`` (idempotent while recording)."""
        from agentconn.client.desktop import start_desktop_recording

        await start_desktop_recording(self, recording_id)

    async def stop_desktop_recording(self, recording_id: uuid.UUID | str) -> tuple[bytes, str]:
        """Finalise a recording: (body, Content-Type) as the agent sent them (multipart/mixed;
        take it apart with :func:`agentconn.proto.desktop.split_recording`)."""
        from agentconn.client.desktop import stop_desktop_recording

        return await stop_desktop_recording(self, recording_id)


async def connect(config: InterfaceConfig | str | os.PathLike[str], agent_id: uuid.UUID | str,
                  *, reachable_timeout: float = 30.0, tunnel_kwargs: dict[str, Any] | None = None,
                  **kwargs: Any) -> AgentConn:
    """Bring up a tunnel from ``config`` (wg-quick path, text or parsed) and return an
    :class:`AgentConn` to ``agent_id`` that owns it. Waits until the agent answers a ping;
    raises :class:`~agentconn.errors.TunnelError` if it does not within ``reachable_timeout``.
    ``tunnel_kwargs`` go to the :class:`~agentconn.aio.tunnel.Tunnel` (e.g. ``pcap=path``),
    the other keyword arguments to :class:`AgentConn`.
    """
    from agentconn.aio.tunnel import Tunnel
    from agentconn.wg.config import InterfaceConfig as _Config
    from agentconn.wg.config import load_config

    cfg = config if isinstance(config, _Config) else load_config(config)
    tunnel = Tunnel(cfg, **(tunnel_kwargs or {}))
    try:
        await tunnel.start()
    except BaseException:
        await tunnel.close()
        raise
    conn = AgentConn(tunnel, agent_id, owns_tunnel=True, **kwargs)
    try:
        no_route = route_problem(cfg, conn.agent_id, conn.agent_address)
        if no_route:
            raise TunnelError(no_route)
        if reachable_timeout and not await conn.await_reachable(reachable_timeout):
            raise TunnelError(unreachable_message(cfg, conn, reachable_timeout))
    except BaseException:
        await conn.close()
        raise
    return conn



def route_problem(cfg: Any, agent_id: uuid.UUID | str,
                  address: ipaddress.IPv6Address) -> str | None:
    """Why the wg-quick config ``cfg`` cannot reach agent ``agent_id`` at ``address`` (no
    peer's AllowedIPs cover it: the config was made for another agent id), or None."""
    for peer in cfg.peers:
        if any(address in net for net in peer.allowed_ips if net.version == 6):
            return None
    listed = ", ".join(str(net) for peer in cfg.peers for net in peer.allowed_ips) or "(none)"
    return (f"the config's peer does not route to agent {agent_id} (its address {address} "
            f"is not in AllowedIPs {listed}): was the config made for another agent id?")


def unreachable_message(cfg: Any, conn: AgentConn, timeout: float) -> str:
    """What was tried when agent ``conn`` did not answer within ``timeout`` seconds through
    the tunnel of ``cfg``, and what to check: the peer's endpoint, whether a WireGuard
    handshake answer came back, and the likely causes."""
    peer = conn.get_peer_diagnostics().get("peer") or {}
    cfg_peer = next((p for p in cfg.peers
                     if any(conn.agent_address in n for n in p.allowed_ips if n.version == 6)),
                    None)
    if cfg_peer is not None and cfg_peer.endpoint is not None:
        host, port = cfg_peer.endpoint
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    else:
        host, port, shown = "", 0, ""
    shown = shown or str(peer.get("endpoint") or "")
    if peer.get("last_handshake_unix"):
        return (f"agent {conn.agent_id}: WireGuard handshake OK with {shown or 'the peer'}, "
                f"but no answer from {conn.agent_address} within {timeout:g} s: the agent may "
                f"run under another --agent-id")
    if not shown:
        return (f"agent {conn.agent_id} ({conn.agent_address}) not reachable within "
                f"{timeout:g} s: the config's peer has no Endpoint, and the agent has not "
                f"connected to us (is `agentconn agent` running there, with this client's "
                f"key and our address as its peer's Endpoint?)")
    return (f"agent {conn.agent_id} ({conn.agent_address}) not reachable within {timeout:g} s: "
            f"sent WireGuard handshakes to {shown}, no answer came back (rx "
            f"{peer.get('rx_bytes', 0)} B). Check: is `agentconn agent` running there? is UDP "
            f"port {port} reachable on {host}? do the keys match (the config's peer PublicKey "
            f"is the agent's key, and the agent's peer is this config's key)?")
