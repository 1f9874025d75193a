"""The agent's HTTP plumbing: routing, the error body, request context and body/query decoding.

Theory of operation: :class:`Router` maps ``(method, path template)`` to handlers the way chi
does for the agent (agent-api.md §2.4): an unknown path answers ``404`` with the text
``404 page not found``, a known path with another method ``405``. Methods and paths are written
once, in the :data:`~agentconn.proto.routes.ROUTES` table the client uses too: an API module
hands :meth:`Router.add_routes` a table of handlers keyed by route name (``"StartProcess"``)
or :class:`~agentconn.proto.routes.Route`, and the router takes method and path from the
route. (:meth:`Router.add` takes them literally, for routes outside the table.) Every handler
receives the :class:`~agentconn.web.server.Request`, a :class:`RequestContext` (chat identity
from the ``Coder-Chat-Id`` headers) and the path parameters as keyword arguments. Handlers signal
failures by raising :class:`ApiError`, which becomes the spec's ``codersdk.Response`` JSON
body; anything else a handler raises becomes a 500 with the same body shape.
JSON bodies are written like Go's ``json.Encoder`` with HTML escaping on (§2.4).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from agentconn.errors import AgentConnError
from agentconn.proto._codec import Model, go_json
from agentconn.proto.common import Response, Validation
from agentconn.proto.errors import INVALID_JSON_MESSAGE, BadRequest
from agentconn.proto.routes import QueryError, QueryValue, Route, parse_query, route
from agentconn.web.errors import HttpTimeoutError, RemoteProtocolError
from agentconn.web.server import Request, ResponseLike, ServerResponse, is_client_fault

__all__ = [
    "JSON_CONTENT_TYPE",
    "ApiError",
    "Handler",
    "RequestContext",
    "Router",
    "decode_body",
    "json_ok",
    "parse_chat_context",
    "query_params",
    "text_response",
]

_log = logging.getLogger("agentconn.agent.http")

#: What the agent sends for every JSON body (Go's ``httpapi.Write``).
JSON_CONTENT_TYPE = "application/json; charset=utf-8"

M = TypeVar("M", bound=Model)


class ApiError(AgentConnError):
    """Raised by a handler to answer with a ``codersdk.Response`` error body.

    ``status`` is the HTTP status; ``message``, ``detail`` and ``validations`` are the body's
    fields (agent-api.md §2.5).
    """

    def __init__(
        self,
        status: int,
        message: str,
        detail: str = "",
        validations: Iterable[Validation] = (),
    ) -> None:
        self.status = status
        self.message = message
        self.detail = detail
        self.validations = list(validations)
        super().__init__(f"{status} {message}" + (f": {detail}" if detail else ""))

    def to_response(self) -> ServerResponse:
        body = Response(message=self.message, detail=self.detail, validations=self.validations)
        return json_ok(body, self.status)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Per-request facts handlers need: the chat identity (§2.4) and when the request began.

    ``chat_id`` is ``None`` when the request carries no valid ``Coder-Chat-Id``;
    ``ancestor_chat_ids`` are the valid UUIDs of ``Coder-Ancestor-Chat-Ids`` (invalid entries
    dropped; empty without a chat).
    """

    chat_id: uuid.UUID | None = None
    ancestor_chat_ids: tuple[uuid.UUID, ...] = ()
    started: float = field(default_factory=time.monotonic)

    @property
    def chats(self) -> tuple[uuid.UUID, ...]:
        """The chat and its ancestors (the chats a touched path is recorded for, §3)."""
        if self.chat_id is None:
            return ()
        return (self.chat_id, *self.ancestor_chat_ids)


def parse_chat_context(request: Request) -> RequestContext:
    """Extract the chat identity: an unparsable chat id means "no chat", never an error."""
    raw = request.headers.get("coder-chat-id", "").strip()
    try:
        chat = uuid.UUID(raw) if raw else None
    except ValueError:
        chat = None
    if chat is None:
        return RequestContext()
    ancestors: list[uuid.UUID] = []
    header = request.headers.get("coder-ancestor-chat-ids", "").strip()
    if header:
        try:
            items = orjson.loads(header)
        except orjson.JSONDecodeError:
            items = []
        if isinstance(items, list):
            for item in items:
                if isinstance(item, str):
                    try:
                        ancestors.append(uuid.UUID(item))
                    except ValueError:
                        continue
    return RequestContext(chat_id=chat, ancestor_chat_ids=tuple(ancestors))


def json_ok(body: Model | dict[str, Any] | list[Any], status: int = 200) -> ServerResponse:
    """A JSON response as the agent writes it: HTML-escaped, trailing newline (§2.4)."""
    raw = body.to_json() if isinstance(body, Model) else orjson.dumps(body)
    return ServerResponse(status, [("Content-Type", JSON_CONTENT_TYPE)], go_json(raw))


def text_response(status: int, text: str | bytes,
                  content_type: str = "text/plain; charset=utf-8") -> ServerResponse:
    """A plain-text response (the debug routes and chi's 404/405 bodies)."""
    data = text.encode() if isinstance(text, str) else text
    return ServerResponse(status, [("Content-Type", content_type)], data)


async def decode_body(request: Request, model: type[M], *, max_size: int = 16 << 20) -> M:
    """Read and decode a JSON request body into ``model``.

    An undecodable or empty body, or one of the wrong shape, raises the spec's
    ``400 {"message":"Request body must be valid JSON.","detail":…}`` naming the bad field.
    """
    try:
        raw = await request.body(max_size)
    except RemoteProtocolError as e:
        raise ApiError(e.status_hint, INVALID_JSON_MESSAGE, str(e)) from e
    try:
        return model.from_json(raw)
    except BadRequest as e:
        r = e.to_response()
        raise ApiError(400, r.message, r.detail, r.validations) from e


def query_params(request: Request, route_name: str) -> dict[str, QueryValue | None]:
    """Validate the query string for the route of ``AgentConn`` method ``route_name``.

    Failures raise the spec's ``400 {"message":"Query parameters have invalid values.", …}``.
    """
    _, _, raw = request.target.partition("?")
    try:
        return parse_query(route(route_name), raw)
    except QueryError as e:
        raise ApiError(400, e.response.message, validations=e.validations) from e


Handler = Callable[..., Awaitable[ResponseLike]]
"""``await handler(request, ctx, **path_params)``."""


@dataclass(slots=True)
class _Entry:
    segments: tuple[str, ...]
    handlers: dict[str, Handler]


class Router:
    """chi-like routing on path templates with ``{name}`` segments."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self.requests = 0
        self.status_counts: dict[int, int] = {}
        self.handler_seconds = 0.0

    def add(self, method: str, template: str, handler: Handler) -> None:
        """Serve ``method`` on the path ``template`` (``{name}`` segments become keyword
        arguments of ``handler``). Raises ValueError when the pair is taken."""
        segments = tuple(template.strip("/").split("/")) if template != "/" else ()
        for entry in self._entries:
            if entry.segments == segments:
                if method in entry.handlers:
                    raise ValueError(f"duplicate route {method} {template}")
                entry.handlers[method] = handler
                return
        self._entries.append(_Entry(segments, {method: handler}))

    def add_route(self, r: Route | str, handler: Handler) -> None:
        """Serve the route ``r`` of :data:`~agentconn.proto.routes.ROUTES` (or the route of
        that name) with ``handler``. Raises KeyError for an unknown name."""
        if isinstance(r, str):
            r = route(r)
        self.add(r.method, r.path, handler)

    def add_routes(self, handlers: Mapping[Route | str, Handler]) -> None:
        """Serve every route of ``handlers``, a table of handlers keyed by route or route
        name, in the table's order."""
        for r, handler in handlers.items():
            self.add_route(r, handler)

    def _match(self, path: str) -> tuple[_Entry, dict[str, str]] | None:
        parts = tuple(path.strip("/").split("/")) if path.strip("/") else ()
        for entry in self._entries:
            if len(entry.segments) != len(parts):
                continue
            params: dict[str, str] = {}
            for seg, part in zip(entry.segments, parts, strict=True):
                if seg.startswith("{") and seg.endswith("}"):
                    if not part:
                        break
                    params[seg[1:-1]] = part
                elif seg != part:
                    break
            else:
                return entry, params
        return None

    async def __call__(self, request: Request) -> ResponseLike:
        """The :class:`~agentconn.web.server.HttpServer` handler."""
        self.requests += 1
        t0 = time.monotonic()
        response = await self._dispatch(request)
        self.handler_seconds += time.monotonic() - t0
        status = response.status if isinstance(response, ServerResponse) else 200
        if request.websocket is not None:
            status = 101
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        return response

    async def _dispatch(self, request: Request) -> ResponseLike:
        found = self._match(request.path)
        if found is None:
            return text_response(404, "404 page not found\n")
        entry, params = found
        handler = entry.handlers.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = entry.handlers.get("GET")
        if handler is None:
            allow = ", ".join(sorted(entry.handlers))
            resp = text_response(405, "")
            resp.headers.append(("Allow", allow))
            return resp
        ctx = parse_chat_context(request)
        try:
            return await handler(request, ctx, **params)
        except ApiError as e:
            return e.to_response()
        except BadRequest as e:
            r = e.to_response()
            return json_ok(r, 400)
        except HttpTimeoutError:
            raise
        except RemoteProtocolError as e:
            if e.status_hint >= 500:
                raise
            return ApiError(e.status_hint, "Bad request.", str(e)).to_response()
        except Exception as e:  # noqa: BLE001 - chi's recoverer: any failure is a 500
            if is_client_fault(request, e):
                raise  # the server ends the connection quietly (debug log, counted)
            _log.exception("handler for %s %s failed", request.method, request.target)
            return ApiError(500, "Internal error.", f"{type(e).__name__}: {e}").to_response()
