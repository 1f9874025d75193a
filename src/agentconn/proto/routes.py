"""The agent HTTP API route table (agent-api.md §1, §3-§13) as data.

Each :class:`Route` records the ``AgentConn`` method name, HTTP method, path template
(``{id}``-style parameters), query parameters with their types, request and response body kind
and model, and the success status. :func:`build_target` makes the request target the reference
client sends (Go ``url.Values.Encode``: keys sorted, ``+`` for space, everything but
``A-Za-z0-9-_.~`` percent-encoded); :func:`parse_query` is the agent-side counterpart that
produces the spec's 400 validation errors.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, quote_plus

from agentconn.proto._codec import Model, format_time, parse_time
from agentconn.proto.common import Response, Validation
from agentconn.proto.containers import ListContainersResponse
from agentconn.proto.context import ContextConfigResponse
from agentconn.proto.debug import NetcheckReport
from agentconn.proto.desktop import (
    DesktopActionRequest,
    DesktopActionResponse,
    DesktopRecordingRequest,
)
from agentconn.proto.errors import ProtocolError
from agentconn.proto.files import (
    BundleFilesRequest,
    FileEditRequest,
    FileEditResponse,
    LSRequest,
    LSResponse,
    ReadFileLinesResponse,
    ResolvePathResponse,
)
from agentconn.proto.git import GitClientMessage, GitServerMessage
from agentconn.proto.listening import ListeningPortsResponse
from agentconn.proto.mcp import (
    CallMCPToolRequest,
    CallMCPToolResponse,
    ListMCPToolsResponse,
    ReadMCPResourceRequest,
    ReadMCPResourceResponse,
)
from agentconn.proto.processes import (
    ListProcessesResponse,
    ProcessOutputResponse,
    SignalProcessRequest,
    StartProcessRequest,
    StartProcessResponse,
)

__all__ = [
    "QUERY_INVALID_MESSAGE",
    "READ_FILE_LINES_DEFAULTS",
    "ROUTES",
    "ROUTES_BY_NAME",
    "Body",
    "QueryError",
    "QueryParam",
    "Route",
    "build_target",
    "parse_query",
    "route",
]

_INT_RE = re.compile(r"^[+-]?[0-9]+$")

QueryValue = str | int | bool | datetime | uuid.UUID

#: ``message`` of the 400 for query-parameter validation failures (§2.5).
QUERY_INVALID_MESSAGE = "Query parameters have invalid values."

#: ``workspacesdk.DefaultReadFileLinesLimits`` plus the default offset/limit (§3.4).
READ_FILE_LINES_DEFAULTS: dict[str, int] = {
    "offset": 1,
    "limit": 0,
    "max_file_size": 1048576,
    "max_line_bytes": 1024,
    "max_response_lines": 2000,
    "max_response_bytes": 32768,
}


class Body(str, enum.Enum):
    """What a request or response body carries."""

    NONE = "none"
    JSON = "json"  #: a proto model (``model`` says which)
    RAW = "raw"  #: arbitrary bytes (write-file body, read-file response)
    TEXT = "text"  #: plain text (debug routes)
    HTML = "html"
    TAR = "tar"  #: ``application/x-tar`` (bundle-files)
    MULTIPART = "multipart"  #: ``multipart/mixed`` (recording stop)
    WS_JSON = "ws-json"  #: WebSocket, one JSON value per text message
    WS_BINARY = "ws-binary"  #: WebSocket, binary messages (VNC)


@dataclass(frozen=True, slots=True)
class QueryParam:
    """A query parameter: name, Python type, whether required, default when absent."""

    name: str
    type: type[str | int | bool | datetime | uuid.UUID]
    required: bool = False
    default: QueryValue | None = None
    non_negative: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint of the agent API."""

    name: str  #: the ``AgentConn`` method (or a descriptive name for non-client routes)
    method: str
    path: str  #: template, e.g. ``/api/v0/processes/{id}/output``
    query: tuple[QueryParam, ...] = ()
    request: Body = Body.NONE
    request_model: type[Model] | None = None
    response: Body = Body.JSON
    response_model: type[Model] | None = None
    status: int = 200
    strict_query: bool = False  #: unknown query parameters are rejected with 400
    client: bool = True  #: reached through ``AgentConn``

    @property
    def path_params(self) -> tuple[str, ...]:
        """Names of the ``{…}`` parameters of :attr:`path`, in order."""
        out = []
        rest = self.path
        while "{" in rest:
            _, _, rest = rest.partition("{")
            name, _, rest = rest.partition("}")
            out.append(name)
        return tuple(out)


_PATH = QueryParam("path", str, required=True)

ROUTES: tuple[Route, ...] = (
    Route("Greeting", "GET", "/", response_model=Response, client=False),
    Route(
        "ListeningPorts", "GET", "/api/v0/listening-ports", response_model=ListeningPortsResponse
    ),
    Route("Netcheck", "GET", "/api/v0/netcheck", response_model=NetcheckReport),
    Route("DebugMagicsock", "GET", "/debug/magicsock", response=Body.HTML),
    Route(
        "DebugMagicsockLogging",
        "GET",
        "/debug/magicsock/debug-logging/{state}",
        response=Body.TEXT,
        client=False,
    ),
    Route("DebugManifest", "GET", "/debug/manifest", response=Body.JSON),
    Route(
        "DebugLogs",
        "GET",
        "/debug/logs",
        query=(QueryParam("after", datetime),),
        response=Body.TEXT,
    ),
    Route("PrometheusMetrics", "GET", "/debug/prometheus", response=Body.TEXT),
    Route("ListContainers", "GET", "/api/v0/containers", response_model=ListContainersResponse),
    Route(
        "WatchContainers",
        "GET",
        "/api/v0/containers/watch",
        response=Body.WS_JSON,
        response_model=ListContainersResponse,
        status=101,
    ),
    Route(
        "DeleteDevcontainer",
        "DELETE",
        "/api/v0/containers/devcontainers/{id}",
        response=Body.NONE,
        status=204,
    ),
    Route(
        "RecreateDevcontainer",
        "POST",
        "/api/v0/containers/devcontainers/{id}/recreate",
        response_model=Response,
        status=202,
    ),
    Route(
        "WatchGit",
        "GET",
        "/api/v0/git/watch",
        query=(QueryParam("chat_id", uuid.UUID),),
        request=Body.WS_JSON,
        request_model=GitClientMessage,
        response=Body.WS_JSON,
        response_model=GitServerMessage,
        status=101,
    ),
    Route(
        "ConnectDesktopVNC",
        "GET",
        "/api/v0/desktop/vnc",
        request=Body.WS_BINARY,
        response=Body.WS_BINARY,
        status=101,
    ),
    Route(
        "ExecuteDesktopAction",
        "POST",
        "/api/v0/desktop/action",
        request=Body.JSON,
        request_model=DesktopActionRequest,
        response_model=DesktopActionResponse,
    ),
    Route(
        "StartDesktopRecording",
        "POST",
        "/api/v0/desktop/recording/start",
        request=Body.JSON,
        request_model=DesktopRecordingRequest,
        response_model=Response,
    ),
    Route(
        "StopDesktopRecording",
        "POST",
        "/api/v0/desktop/recording/stop",
        request=Body.JSON,
        request_model=DesktopRecordingRequest,
        response=Body.MULTIPART,
    ),
    Route(
        "StartProcess",
        "POST",
        "/api/v0/processes/start",
        request=Body.JSON,
        request_model=StartProcessRequest,
        response_model=StartProcessResponse,
    ),
    Route("ListProcesses", "GET", "/api/v0/processes/list", response_model=ListProcessesResponse),
    Route(
        "ProcessOutput",
        "GET",
        "/api/v0/processes/{id}/output",
        query=(QueryParam("wait", bool, default=False),),
        response_model=ProcessOutputResponse,
    ),
    Route(
        "SignalProcess",
        "POST",
        "/api/v0/processes/{id}/signal",
        request=Body.JSON,
        request_model=SignalProcessRequest,
        response_model=Response,
    ),
    Route(
        "LS",
        "POST",
        "/api/v0/list-directory",
        query=(QueryParam("path", str),),
        request=Body.JSON,
        request_model=LSRequest,
        response_model=LSResponse,
        strict_query=True,
    ),
    Route(
        "ResolvePath",
        "GET",
        "/api/v0/resolve-path",
        query=(_PATH,),
        response_model=ResolvePathResponse,
        strict_query=True,
    ),
    Route(
        "ReadFile",
        "GET",
        "/api/v0/read-file",
        query=(
            _PATH,
            QueryParam("offset", int, default=0, non_negative=True),
            QueryParam("limit", int, default=0, non_negative=True),
        ),
        response=Body.RAW,
        strict_query=True,
    ),
    Route(
        "ReadFileLines",
        "GET",
        "/api/v0/read-file-lines",
        query=(_PATH,)
        + tuple(
            QueryParam(n, int, default=d, non_negative=n != "offset")
            for n, d in READ_FILE_LINES_DEFAULTS.items()
        ),
        response_model=ReadFileLinesResponse,
        strict_query=True,
    ),
    Route(
        "WriteFile",
        "POST",
        "/api/v0/write-file",
        query=(_PATH,),
        request=Body.RAW,
        response_model=Response,
        strict_query=True,
    ),
    Route(
        "EditFiles",
        "POST",
        "/api/v0/edit-files",
        request=Body.JSON,
        request_model=FileEditRequest,
        response_model=FileEditResponse,
    ),
    Route(
        "BundleFiles",
        "POST",
        "/api/v0/bundle-files",
        request=Body.JSON,
        request_model=BundleFilesRequest,
        response=Body.TAR,
    ),
    Route("ContextConfig", "GET", "/api/v0/context-config", response_model=ContextConfigResponse),
    Route(
        "ListMCPTools",
        "GET",
        "/api/v0/mcp/tools",
        query=(QueryParam("refresh", bool, default=False),),
        response_model=ListMCPToolsResponse,
    ),
    Route(
        "CallMCPTool",
        "POST",
        "/api/v0/mcp/call-tool",
        request=Body.JSON,
        request_model=CallMCPToolRequest,
        response_model=CallMCPToolResponse,
    ),
    Route(
        "ReadMCPResource",
        "POST",
        "/api/v0/mcp/read-resource",
        request=Body.JSON,
        request_model=ReadMCPResourceRequest,
        response_model=ReadMCPResourceResponse,
    ),
)

ROUTES_BY_NAME: dict[str, Route] = {r.name: r for r in ROUTES}


def route(name: str) -> Route:
    """The route for ``AgentConn`` method ``name`` (``KeyError`` if unknown)."""
    return ROUTES_BY_NAME[name]


def _encode_value(param: QueryParam, value: QueryValue) -> str | None:
    if param.type is bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"query parameter {param.name!r} must be a bool")
        return "true" if value else None  # the client only ever sends "true"
    if param.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"query parameter {param.name!r} must be an int")
        return str(value)
    if param.type is datetime:
        if not isinstance(value, datetime):
            raise ProtocolError(f"query parameter {param.name!r} must be a datetime")
        return format_time(value.astimezone(UTC))  # the client sends UTC
    if param.type is uuid.UUID:
        if not isinstance(value, uuid.UUID):
            raise ProtocolError(f"query parameter {param.name!r} must be a UUID")
        return str(value)
    if not isinstance(value, str):
        raise ProtocolError(f"query parameter {param.name!r} must be a str")
    return value if value else None


def build_target(
    r: Route,
    path_params: Mapping[str, str | uuid.UUID] | None = None,
    query: Mapping[str, QueryValue | None] | None = None,
) -> str:
    """The request target (path + ``?query``) for calling ``r``.

    Path parameters are percent-encoded as one segment. Query values of ``None``, empty
    strings and ``False`` are left out; the rest are encoded like Go's ``url.Values.Encode``.
    """
    params = dict(path_params or {})
    if set(params) != set(r.path_params):
        raise ProtocolError(f"{r.name}: path parameters {sorted(r.path_params)} required")
    path = r.path
    for name, value in params.items():
        path = path.replace("{" + name + "}", quote(str(value), safe=""))
    known = {p.name: p for p in r.query}
    pairs: list[tuple[str, str]] = []
    for qname, qvalue in (query or {}).items():
        param = known.get(qname)
        if param is None:
            raise ProtocolError(f"{r.name}: unknown query parameter {qname!r}")
        text = None if qvalue is None else _encode_value(param, qvalue)
        if text is not None:
            pairs.append((qname, text))
    for p in r.query:
        if p.required and p.name not in dict(pairs):
            raise ProtocolError(f"{r.name}: query parameter {p.name!r} is required")
    if not pairs:
        return path
    pairs.sort()
    return (
        path
        + "?"
        + "&".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}" for k, v in pairs)
    )


class QueryError(ProtocolError):
    """The query string failed validation; :attr:`response` is the spec's 400 body."""

    def __init__(self, validations: list[Validation]) -> None:
        self.validations = validations
        self.response = Response(message=QUERY_INVALID_MESSAGE, validations=validations)
        super().__init__("; ".join(v.detail for v in validations))


def parse_query(r: Route, raw_query: str) -> dict[str, QueryValue | None]:
    """Agent side: decode and validate ``raw_query`` (the part after ``?``) for route ``r``.

    Returns every declared parameter (absent ones at their default). Errors are collected into
    one :class:`QueryError`: missing required (``Query param "path" is required``), invalid
    integers, negative values (``value is negative``), unparsable timestamps/UUIDs, and — on
    ``strict_query`` routes — unknown parameters. A bool is true only for the exact text
    ``true``. The first occurrence of a repeated parameter wins.
    """
    values: dict[str, str] = {}
    for k, v in parse_qsl(raw_query, keep_blank_values=True):
        values.setdefault(k, v)
    bad: list[Validation] = []
    out: dict[str, QueryValue | None] = {}
    for p in r.query:
        text = values.pop(p.name, None)
        if text is None or (text == "" and p.type is not bool):
            if p.required:
                bad.append(Validation(field=p.name, detail=f'Query param "{p.name}" is required'))
            out[p.name] = p.default
            continue
        try:
            out[p.name] = _parse_value(p, text)
        except ValueError as e:
            bad.append(
                Validation(field=p.name, detail=f'Query param "{p.name}" has invalid value: {e}')
            )
    if r.strict_query:
        for name in values:
            bad.append(
                Validation(field=name, detail=f'Query param "{name}" is not a valid query param')
            )
    if bad:
        raise QueryError(bad)
    return out


def _parse_value(p: QueryParam, text: str) -> QueryValue:
    if p.type is bool:
        return text == "true"
    if p.type is int:
        if not _INT_RE.match(text):
            raise ValueError(f"must be a valid integer, got {text!r}")
        n = int(text)
        if p.non_negative and n < 0:
            raise ValueError("value is negative")
        return n
    if p.type is datetime:
        return parse_time(text)
    if p.type is uuid.UUID:
        return uuid.UUID(text)
    return text
