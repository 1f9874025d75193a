"""MCP servers from ``.mcp.json``: list tools, call tools, read resources (agent-api.md §12.2-§12.5).

Theory of operation: :class:`McpManager` reads the configured ``.mcp.json`` files (§12.2;
a missing file is fine, a malformed one is ignored whole, bad entries are skipped one by
one, the first file naming a server wins) and connects every server concurrently, each
bounded by ``connect_timeout``. A connection that fails is logged and skipped; ``start()``
never raises for a server.

Each connected server is one :class:`_ServerSession` and one long-lived asyncio task that
owns everything with an anyio lifetime: it enters the transport (stdio child process,
streamable HTTP or SSE), a small task group and the SDK's ``ClientSession``, runs
``initialize`` (client info ``coder-agent``), publishes the session, then waits. Stopping
sets its wake event and the *same* task exits the contexts in reverse order, so anyio's
cancel scopes are never left from a foreign task and the stdio child is shut down by the
SDK (stdin closed, then SIGTERM/SIGKILL of its process group). A pump task inside the group
forwards the transport's read stream to the session and notices end-of-stream: when a stdio
server exits the pump marks the server dead and wakes the owner, which tears the session
down; calls to it fail with 502 while other servers keep working. ``refresh=true`` re-reads
the config files and reconnects dead, new and changed servers (and drops removed ones)
before re-listing tools.

Requests run in the HTTP handler's task: they use the published session and race the
request against the server's death and the per-request timeout (``call_timeout`` for tool
calls and resource reads, ``connect_timeout`` for tool listings). Results are read from the
SDK models' wire form (``model_dump(by_alias=True)``), so the mapping to the agent's JSON is
written against MCP's own field names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import anyio
import orjson

from agentconn._version import __version__
from agentconn.agent.api.contextconfig import read_context_settings, resolve_paths
from agentconn.agent.api.fsutil import go_quote
from agentconn.agent.api.router import ApiError, RequestContext, Router, decode_body, json_ok
from agentconn.agent.options import AgentOptions
from agentconn.proto.mcp import (
    TOOL_NAME_SEP,
    CallMCPToolRequest,
    CallMCPToolResponse,
    ListMCPToolsResponse,
    MCPContent,
    MCPContentType,
    MCPResourceContents,
    MCPTool,
    ReadMCPResourceRequest,
)
from agentconn.web.server import Request, ResponseLike

if TYPE_CHECKING:
    from mcp import ClientSession

# The SDK (pydantic models, httpx, ...) takes about a second to import: it is imported only
# when a server is actually connected, so an agent without MCP servers starts fast.

__all__ = [
    "CALL_TIMEOUT",
    "CLIENT_NAME",
    "CONNECT_TIMEOUT",
    "McpConfigError",
    "McpManager",
    "ServerConfig",
    "expand_env",
    "parse_config",
]

_log = logging.getLogger("agentconn.agent.mcp")

#: §12.2: connect + initialize bound per server (also used for each tool listing).
CONNECT_TIMEOUT = 30.0
#: §12.4: tool call bound.
CALL_TIMEOUT = 60.0
#: §12.2: ``clientInfo.name`` in ``initialize``.
CLIENT_NAME = "coder-agent"

CALL_FAILED_MESSAGE = "MCP tool call failed."
READ_FAILED_MESSAGE = "MCP resource read failed."

# How long close() lets one server shut down (the SDK bounds stdio shutdown to ~6 s).
_CLOSE_TIMEOUT = 10.0
# Guard against a server that never stops paginating its tool list.
_MAX_TOOL_PAGES = 1000

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# configuration (§12.2)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One ``mcpServers`` entry after validation.

    ``transport`` is ``stdio``, ``http`` (streamable HTTP) or ``sse`` — or whatever explicit
    ``type`` the file gave, which fails at connect time. ``env`` is already expanded.
    """

    name: str
    transport: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()


class McpConfigError(ValueError):
    """A ``.mcp.json`` file or entry does not have the §12.2 shape."""


def _is_shell_special(c: str) -> bool:
    return c in "*#$@!?-0123456789"


def _is_alnum(c: str) -> bool:
    return c == "_" or ("0" <= c <= "9") or ("a" <= c <= "z") or ("A" <= c <= "Z")


def _shell_name(s: str) -> tuple[str, int]:
    """Go's ``os.getShellName``: the variable name after ``$`` and the bytes it used."""
    if s[0] == "{":
        if len(s) > 2 and _is_shell_special(s[1]) and s[2] == "}":
            return s[1:2], 3
        for i in range(1, len(s)):
            if s[i] == "}":
                if i == 1:
                    return "", 2  # bad syntax: eat "${}"
                return s[1:i], i + 1
        return "", 1  # bad syntax: eat "${"
    if _is_shell_special(s[0]):
        return s[0:1], 1
    i = 0
    while i < len(s) and _is_alnum(s[i]):
        i += 1
    return s[:i], i


def expand_env(value: str, environ: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` and ``$VAR`` from ``environ`` exactly like Go's ``os.Expand``.

    Unset variables expand to ``""``; a ``$`` not followed by a name is kept.
    """
    out: list[str] = []
    i = 0
    j = 0
    n = len(value)
    while j < n:
        if value[j] == "$" and j + 1 < n:
            out.append(value[i:j])
            name, w = _shell_name(value[j + 1 :])
            if name == "" and w > 0:
                pass  # invalid syntax: the characters are eaten
            elif name == "":
                out.append("$")  # "$" followed by no name stays
            else:
                out.append(environ.get(name, ""))
            j += w
            i = j + 1
        j += 1
    out.append(value[i:])
    return "".join(out)


def _valid_name(name: str) -> bool:
    """§12.2: names with ``__`` or a leading/trailing ``_`` could not be split back."""
    return bool(name) and TOOL_NAME_SEP not in name and not name.startswith("_") and (
        not name.endswith("_")
    )


def _str_map(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise McpConfigError(f"{what} must be an object of strings")
    return dict(value)


def _entry(name: str, raw: object, environ: Mapping[str, str]) -> ServerConfig:
    """Validate one ``mcpServers`` entry; raises ``ValueError`` naming the problem."""
    if not _valid_name(name):
        raise McpConfigError(
            f"server name {name!r} contains reserved separator {TOOL_NAME_SEP!r} "
            "or leading/trailing underscore"
        )
    if not isinstance(raw, dict):
        raise McpConfigError(f"server {name!r} must be an object")
    fields: dict[str, str] = {}
    for key in ("command", "type", "url"):
        v = raw.get(key)
        if v is None:
            v = ""
        if not isinstance(v, str):
            raise McpConfigError(f"server {name!r}: {key} must be a string")
        fields[key] = v
    args = raw.get("args")
    if args is None:
        args = []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise McpConfigError(f"server {name!r}: args must be an array of strings")
    env = _str_map(raw.get("env"), f"server {name!r}: env")
    headers = _str_map(raw.get("headers"), f"server {name!r}: headers")
    # §12.2: explicit type wins; else command → stdio; else url → streamable HTTP.
    transport = fields["type"] or (
        "stdio" if fields["command"] else "http" if fields["url"] else ""
    )
    if not transport:
        raise McpConfigError(f"server {name!r} has no command or url")
    return ServerConfig(
        name=name,
        transport=transport,
        command=fields["command"],
        args=tuple(args),
        env=tuple((k, expand_env(v, environ)) for k, v in env.items()),
        url=fields["url"],
        headers=tuple(headers.items()),
    )


def parse_config(path: str, environ: Mapping[str, str]) -> list[ServerConfig]:
    """Parse one ``.mcp.json`` into valid server configs sorted by name (§12.2).

    Raises ``OSError`` (``FileNotFoundError`` for a missing file) or ``ValueError`` for a file
    that is not a JSON object with an object ``mcpServers``; invalid entries are logged and
    skipped individually. ``env`` values are expanded from ``environ``.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise McpConfigError(f"parse mcp config {path!r}: {e}") from e
    if not isinstance(doc, dict):
        raise McpConfigError(f"parse mcp config {path!r}: top level must be an object")
    servers = doc.get("mcpServers")
    if servers is None:
        return []
    if not isinstance(servers, dict):
        raise McpConfigError(f"parse mcp config {path!r}: mcpServers must be an object")
    out: list[ServerConfig] = []
    for name in sorted(servers):
        try:
            out.append(_entry(name, servers[name], environ))
        except ValueError as e:
            _log.warning("skipping MCP server in %s: %s", path, e)
    return out


def _load_configs(paths: list[str], environ: Mapping[str, str]) -> list[ServerConfig]:
    """All servers of all files, first occurrence of a name winning, sorted by name."""
    seen: dict[str, ServerConfig] = {}
    for path in paths:
        try:
            configs = parse_config(path, environ)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            _log.warning("failed to parse MCP config %s: %s", path, e)
            continue
        for cfg in configs:
            seen.setdefault(cfg.name, cfg)
    return [seen[name] for name in sorted(seen)]


# ---------------------------------------------------------------------------------------------
# one server


def _describe(exc: BaseException) -> str:
    """A one-line error text; anyio exception groups are unwrapped to their first leaf."""
    while True:
        inner = getattr(exc, "exceptions", None)
        if not inner:
            break
        exc = inner[0]
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "context deadline exceeded"  # what Go's context timeout says
    text = str(exc)
    if not text:
        return type(exc).__name__
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {text}"
    return text


class _ServerGone(Exception):
    """The server's session ended (its process exited or the transport closed)."""


def _dump(model: Any) -> dict[str, Any]:
    """An SDK result model in MCP wire form (camelCase keys, ``None`` dropped)."""
    dumped = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dumped if isinstance(dumped, dict) else {}


class _ServerSession:
    """One connected MCP server, owned by one long-lived task (see the module docstring)."""

    def __init__(
        self, config: ServerConfig, options: AgentOptions, connect_timeout: float,
        errlog: TextIO,
    ) -> None:
        self.config = config
        self.tools: list[MCPTool] = []
        self.session: ClientSession | None = None
        self._options = options
        self._connect_timeout = connect_timeout
        self._errlog = errlog
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wake = asyncio.Event()  # stop requested or session gone: the owner task exits
        self._gone = asyncio.Event()  # session unusable: in-flight requests fail
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        """Whether requests can be sent now."""
        return self.session is not None and not self._gone.is_set()

    async def open(self) -> None:
        """Start the owner task and wait until ``initialize`` succeeded; raises on failure."""
        self._task = asyncio.create_task(self._run(), name=f"mcp-server:{self.config.name}")
        try:
            await asyncio.shield(self._ready)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the owner task; it exits the session and transport contexts itself."""
        self._stopping = True
        self._gone.set()
        self._wake.set()
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=_CLOSE_TIMEOUT)
        if not done:
            _log.warning("MCP server %r did not shut down in time; cancelling", self.config.name)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def request(
        self, call: Callable[[ClientSession], Awaitable[T]], timeout: float
    ) -> T:
        """Run ``call(session)``, failing on timeout (``TimeoutError``) or session death."""
        session = self.session
        if session is None or self._gone.is_set():
            raise _ServerGone(f"MCP server {self.config.name!r} is not connected")
        work = asyncio.ensure_future(call(session))
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            done, _ = await asyncio.wait(
                {work, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if work in done:
                return work.result()
            if gone in done:
                raise _ServerGone(f"MCP server {self.config.name!r} connection closed")
            raise TimeoutError("context deadline exceeded")
        finally:
            for fut in (work, gone):
                if not fut.done():
                    fut.cancel()
            await asyncio.gather(work, gone, return_exceptions=True)

    async def _run(self) -> None:
        try:
            await self._serve()
        except Exception as e:  # noqa: BLE001 - any transport failure ends this server only
            if not self._ready.done():
                self._ready.set_exception(ConnectionError(_describe(e)))
            elif not self._stopping:
                _log.warning("MCP server %r failed: %s", self.config.name, _describe(e))
        finally:
            self.session = None
            self._gone.set()
            if not self._ready.done():
                self._ready.set_exception(ConnectionError("MCP server task ended"))

    async def _open_transport(self, stack: contextlib.AsyncExitStack) -> tuple[Any, Any]:
        from mcp import StdioServerParameters, stdio_client
        from mcp.client.sse import sse_client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        cfg = self.config
        if cfg.transport == "stdio":
            params = StdioServerParameters(
                command=cfg.command,
                args=list(cfg.args),
                # §12.2: the agent environment plus the entry's env (entries override).
                env={**self._options.environ, **dict(cfg.env)},
                cwd=self._options.working_directory(),
            )
            streams: Any = await stack.enter_async_context(stdio_client(params, self._errlog))
        elif cfg.transport == "http":
            client = create_mcp_http_client(headers=dict(cfg.headers) or None)
            await stack.enter_async_context(client)
            streams = await stack.enter_async_context(
                streamable_http_client(cfg.url, http_client=client)
            )
        elif cfg.transport == "sse":
            streams = await stack.enter_async_context(
                sse_client(cfg.url, headers=dict(cfg.headers) or None)
            )
        else:
            raise ValueError(f"unsupported transport {cfg.transport!r}")
        return streams[0], streams[1]

    async def _pump(self, read: Any, send: Any) -> None:
        """Forward transport messages to the session; end-of-stream means the server is gone."""
        try:
            async with send:
                while True:
                    item = await read.receive()
                    await send.send(item)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            if not self._stopping and self.session is not None:
                _log.warning("MCP server %r closed its connection", self.config.name)
            self._gone.set()
            self._wake.set()

    async def _serve(self) -> None:
        from mcp import ClientSession
        from mcp import types as mcp_types

        with anyio.CancelScope(deadline=anyio.current_time() + self._connect_timeout) as scope:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await self._open_transport(stack)
                send, receive = anyio.create_memory_object_stream[Any](0)
                stack.callback(send.close)
                stack.callback(receive.close)
                group = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(group.cancel_scope.cancel)  # runs before the group is exited
                group.start_soon(self._pump, read, send)
                session = await stack.enter_async_context(
                    ClientSession(
                        receive,
                        write,
                        client_info=mcp_types.Implementation(name=CLIENT_NAME, version=__version__),
                    )
                )
                await session.initialize()
                scope.deadline = math.inf  # connected: only the wake event ends us now
                if self._gone.is_set():
                    raise ConnectionError("connection closed during initialize")
                self.session = session
                self._ready.set_result(None)
                await self._wake.wait()
                self.session = None
                self._gone.set()
        if not self._ready.done():
            raise TimeoutError(f"connect timed out after {self._connect_timeout:g}s")


# ---------------------------------------------------------------------------------------------
# result mapping (§12.3-§12.5)


def _tool_info(server: str, tool: dict[str, Any]) -> MCPTool | None:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        return None
    schema = tool.get("inputSchema")
    schema = schema if isinstance(schema, dict) else {}
    props = schema.get("properties")
    required = schema.get("required")
    description = tool.get("description")
    ui_uri = ""
    meta = tool.get("_meta")
    if isinstance(meta, dict):
        ui = meta.get("ui")
        if isinstance(ui, dict) and isinstance(ui.get("resourceUri"), str):
            ui_uri = ui["resourceUri"]
        elif isinstance(meta.get("ui/resourceUri"), str):
            ui_uri = meta["ui/resourceUri"]
    return MCPTool(
        server_name=server,
        name=server + TOOL_NAME_SEP + name,
        description=description if isinstance(description, str) else "",
        schema=props if isinstance(props, dict) else {},
        required=[r for r in required if isinstance(r, str)] if isinstance(required, list) else [],
        ui_resource_uri=ui_uri,
    )


def _str(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    return value if isinstance(value, str) else ""


def _resource_contents(item: Mapping[str, Any], fallback_uri: str = "") -> MCPResourceContents:
    """A resource-contents object (``resources/read`` item or embedded resource) → §12.5."""
    meta = item.get("_meta")
    return MCPResourceContents(
        uri=_str(item, "uri") or fallback_uri,
        mime_type=_str(item, "mimeType"),
        text=_str(item, "text"),
        blob=_str(item, "blob"),
        meta=meta if isinstance(meta, dict) else {},
    )


def _content(item: Mapping[str, Any]) -> MCPContent:
    """One tool-result content block → the agent's shape (§12.4)."""
    kind = item.get("type")
    if kind == "text":
        return MCPContent(type=MCPContentType.TEXT, text=_str(item, "text"))
    if kind in ("image", "audio"):
        return MCPContent(
            type=MCPContentType(kind), data=_str(item, "data"), media_type=_str(item, "mimeType")
        )
    if kind == "resource":
        res = item.get("resource")
        contents = _resource_contents(res if isinstance(res, dict) else {})
        return MCPContent(type=MCPContentType.RESOURCE, uri=contents.uri, resource=contents)
    if kind == "resource_link":
        uri = _str(item, "uri")
        link = MCPResourceContents(uri=uri, mime_type=_str(item, "mimeType"))
        return MCPContent(type=MCPContentType.RESOURCE, uri=uri, resource=link)
    return MCPContent(type=MCPContentType.TEXT, text=f"[unsupported content type: {kind}]")


def _call_response(result: dict[str, Any]) -> CallMCPToolResponse:
    content = result.get("content")
    items = content if isinstance(content, list) else []
    return CallMCPToolResponse(
        content=[_content(c) for c in items if isinstance(c, dict)],
        is_error=result.get("isError") is True,
        structured_content=result.get("structuredContent"),
    )


def _server_stderr() -> TextIO:
    """Where stdio servers' stderr goes: the agent's own stderr when it has a descriptor."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return open(os.devnull, "w")
    return sys.stderr


# ---------------------------------------------------------------------------------------------
# manager + HTTP API


class McpManager:
    """Connects the ``.mcp.json`` servers and serves ``/api/v0/mcp/*`` (§12.2-§12.5).

    ``config_files`` are resolved ``.mcp.json`` paths; ``None`` resolves
    ``CODER_AGENT_EXP_MCP_CONFIG_FILES`` (read from ``options.environ`` now, default
    ``.mcp.json``) against the working directory each time configs are loaded. When the
    agent also builds a :class:`~agentconn.agent.api.contextconfig.ContextConfigApi` (which
    removes that variable), pass its ``mcp_config_files()`` here instead.
    ``connect_timeout`` and ``call_timeout`` are seconds.
    """

    def __init__(
        self,
        options: AgentOptions,
        config_files: list[str] | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        call_timeout: float = CALL_TIMEOUT,
    ) -> None:
        self._options = options
        self._config_files = list(config_files) if config_files is not None else None
        self._config_setting = read_context_settings(options.environ).mcp_config_files
        self._connect_timeout = connect_timeout
        self._call_timeout = call_timeout
        self._servers: dict[str, _ServerSession] = {}
        self._sync_lock = asyncio.Lock()
        self._closed = False
        self._errlog: TextIO | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def config_files(self) -> list[str]:
        """The ``.mcp.json`` paths configs are loaded from (resolved now)."""
        if self._config_files is not None:
            return list(self._config_files)
        return resolve_paths(
            self._config_setting, self._options.working_directory(), self._options.home
        )

    async def start(self) -> None:
        """Load the configs and connect every server concurrently; never raises for a server."""
        try:
            await self._sync()
            await self._refresh_tools()
        except Exception:  # noqa: BLE001 - §12.2: start() logs, never raises
            _log.exception("starting MCP servers failed")

    async def close(self) -> None:
        """Shut every server session down (stdio children terminated) and forget the tools."""
        self._closed = True
        async with self._sync_lock:
            servers = list(self._servers.values())
            self._servers.clear()
        await asyncio.gather(*(s.close() for s in servers))
        if self._errlog is not None and self._errlog is not sys.stderr:
            self._errlog.close()
        self._errlog = None

    async def _sync(self) -> None:
        """Bring connections in line with the config files.

        New, changed and dead servers are (re)connected, removed ones closed, healthy
        unchanged ones kept.
        """
        async with self._sync_lock:
            if self._closed:
                return
            configs = await asyncio.to_thread(
                _load_configs, self.config_files(), dict(self._options.environ)
            )
            wanted = {c.name: c for c in configs}
            stale = [
                s for name, s in self._servers.items()
                if wanted.get(name) != s.config or not s.alive
            ]
            for s in stale:
                del self._servers[s.config.name]
            await asyncio.gather(*(s.close() for s in stale))
            todo = [c for c in configs if c.name not in self._servers]
            connected = await asyncio.gather(*(self._connect(c) for c in todo))
            for new in connected:
                if new is None:
                    continue
                if self._closed:
                    await new.close()
                else:
                    self._servers[new.config.name] = new

    async def _connect(self, config: ServerConfig) -> _ServerSession | None:
        if self._errlog is None:
            self._errlog = _server_stderr()
        server = _ServerSession(config, self._options, self._connect_timeout, self._errlog)
        try:
            await server.open()
        except Exception as e:  # noqa: BLE001 - §12.2: failures are logged and skipped
            _log.warning(
                "skipping MCP server %r (transport %s): %s", config.name, config.transport, e
            )
            return None
        return server

    # -- operations -------------------------------------------------------------------------

    async def _refresh_tools(self) -> None:
        """Re-list tools of every live server; a server that fails keeps its previous tools."""
        servers = [s for s in self._servers.values() if s.alive]
        results = await asyncio.gather(*(self._list_server(s) for s in servers))
        for server, tools in zip(servers, results, strict=True):
            if tools is not None:
                server.tools = tools

    async def _list_server(self, server: _ServerSession) -> list[MCPTool] | None:
        async def list_all(session: ClientSession) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            result = _dump(await session.list_tools())
            for _ in range(_MAX_TOOL_PAGES):
                out.extend(t for t in result.get("tools", []) if isinstance(t, dict))
                cursor = result.get("nextCursor")
                if not isinstance(cursor, str) or not cursor:
                    break
                from mcp import types as mcp_types

                params = mcp_types.PaginatedRequestParams(cursor=cursor)
                result = _dump(await session.list_tools(params=params))
            return out

        name = server.config.name
        try:
            raw = await server.request(list_all, self._connect_timeout)
        except Exception as e:  # noqa: BLE001 - §12.3: listing errors are logged, never returned
            _log.warning("failed to list tools from MCP server %r: %s", name, _describe(e))
            return None
        return [t for t in (_tool_info(name, r) for r in raw) if t is not None]

    def tools(self) -> list[MCPTool]:
        """The cached tool list, sorted by exposed name."""
        tools = [t for s in self._servers.values() for t in s.tools]
        tools.sort(key=lambda t: t.name)
        return tools

    async def call_tool(self, request: CallMCPToolRequest) -> CallMCPToolResponse:
        """Proxy one tool call (§12.4); raises :class:`ApiError` 400/404/502."""
        split = request.split()
        if split is None:
            raise ApiError(
                400,
                CALL_FAILED_MESSAGE,
                f"invalid tool name format: expected format \"server{TOOL_NAME_SEP}tool\", "
                f"got {go_quote(request.tool_name)}",
            )
        server_name, tool = split
        server = self._servers.get(server_name)
        if server is None:
            raise ApiError(404, CALL_FAILED_MESSAGE, f"unknown MCP server: {go_quote(server_name)}")
        arguments = request.arguments or None
        try:
            result = await server.request(
                lambda s: s.call_tool(tool, arguments), self._call_timeout
            )
        except Exception as e:
            raise ApiError(
                502,
                CALL_FAILED_MESSAGE,
                f"call tool {go_quote(tool)} on {go_quote(server_name)}: {_describe(e)}",
            ) from e
        return _call_response(_dump(result))

    async def read_resource(self, server_name: str, uri: str) -> MCPResourceContents:
        """Read one resource and return its first content item (§12.5); raises ApiError."""
        if not server_name or not uri:
            raise ApiError(400, READ_FAILED_MESSAGE, "server_name and uri are required")
        server = self._servers.get(server_name)
        if server is None:
            raise ApiError(404, READ_FAILED_MESSAGE, f"unknown MCP server: {go_quote(server_name)}")
        try:
            result = await server.request(lambda s: s.read_resource(uri), self._call_timeout)
        except Exception as e:
            raise ApiError(
                502,
                READ_FAILED_MESSAGE,
                f"read resource {go_quote(uri)} on {go_quote(server_name)}: {_describe(e)}",
            ) from e
        contents = _dump(result).get("contents")
        if not isinstance(contents, list) or not contents or not isinstance(contents[0], dict):
            raise ApiError(
                502, READ_FAILED_MESSAGE, f"resource {go_quote(uri)} returned no contents"
            )
        return _resource_contents(contents[0], uri)

    # -- HTTP -------------------------------------------------------------------------------

    def register(self, router: Router) -> None:
        """Serve the three MCP routes."""
        router.add_routes({
            "ListMCPTools": self._list_tools,
            "CallMCPTool": self._call_tool,
            "ReadMCPResource": self._read_resource,
        })

    async def _list_tools(self, request: Request, ctx: RequestContext) -> ResponseLike:
        # §12.3: always 200; only the exact value "true" refreshes (Go compares strings).
        if request.query.get("refresh") == "true":
            try:
                await self._sync()
                await self._refresh_tools()
            except Exception:  # noqa: BLE001 - §12.3: always 200, errors only logged
                _log.exception("failed to refresh MCP tools")
        return json_ok(ListMCPToolsResponse(tools=self.tools()))

    async def _call_tool(self, request: Request, ctx: RequestContext) -> ResponseLike:
        body = await decode_body(request, CallMCPToolRequest)
        return json_ok(await self.call_tool(body))

    async def _read_resource(self, request: Request, ctx: RequestContext) -> ResponseLike:
        body = await decode_body(request, ReadMCPResourceRequest)
        return json_ok(await self.read_resource(body.server_name, body.uri))
