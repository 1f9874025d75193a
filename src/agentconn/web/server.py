"""An HTTP/1.1 server loop for one connection at a time, over any asyncio stream pair.

Theory of operation: :meth:`HttpServer.serve_connection` owns one (reader, writer) pair and
one ``h11.Connection``. Per cycle it

1. waits for the request head: the first byte within ``keep_alive_timeout`` (idle), then
   the whole head within ``header_timeout`` of that byte, as an absolute deadline so a
   slow-loris peer cannot stretch it; on expiry the connection is closed without a reply.
   Heads over ``max_header_size`` get 431, malformed ones 400, and the connection closes;
2. calls ``handler(request)``. The body streams lazily through :class:`Request`; reading it
   first answers ``Expect: 100-continue``. A handler exception becomes a 500 with
   ``{"message", "detail"}`` JSON (or, if the response already started, a closed connection);
3. sends the response (Content-Length for bytes, chunked for an async iterator);
4. drains a small unread request body, and starts the next cycle if h11 says both sides are
   ``DONE``; otherwise closes. Pipelined requests wait in h11's buffer, so they are handled
   strictly in order.

A websocket upgrade (:meth:`Request.accept_websocket`) hands the stream to a
:class:`~agentconn.web.websocket.WebSocket`, and any other upgrade (:meth:`Request.accept_upgrade`,
e.g. DERP's ``Upgrade: DERP``) hands over the raw stream pair after a 101; either way the
connection ends when the handler returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import orjson
from h11._state import MIGHT_SWITCH_PROTOCOL  # not in h11.__all__

from ._stream import READ_SIZE, H11Stream
from .errors import ConnectionClosed, HttpTimeoutError, LocalProtocolError, RemoteProtocolError
from .headers import Headers

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = [
    "Handler", "HttpServer", "Request", "ResponseLike", "ServerResponse", "is_client_fault",
    "json_response",
]

_log = logging.getLogger(__name__)

# Unread request body a finished response may still drain to keep the connection alive.
_DRAIN_LIMIT = 256 * 1024


def _phrase(status: int, default: str) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return default


@dataclass
class ServerResponse:
    """What a handler returns: a status, headers and a body.

    ``body`` as bytes is sent with Content-Length; as an async iterator of bytes it is sent
    chunked, one item at a time.
    """

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | AsyncIterable[bytes] = b""


ResponseLike = (
    ServerResponse | bytes | str | dict[str, Any] | list[Any] | AsyncIterable[bytes] | None
)
"""bytes → octet-stream, str → text/plain, dict/list → JSON, async iterator → chunked,
``None`` → 204 (or nothing after a websocket upgrade)."""

Handler = Callable[["Request"], Awaitable[ResponseLike]]


def json_response(
    obj: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()
) -> ServerResponse:
    """A JSON response (orjson) with ``Content-Type: application/json``."""
    return ServerResponse(
        status, [("Content-Type", "application/json"), *headers], orjson.dumps(obj)
    )


def is_client_fault(request: Request, exc: BaseException) -> bool:
    """True when a handler's exception only means the client went away or broke the protocol
    (a websocket closed or dropped, a reset mid-session): normal operation, not a bug."""
    if isinstance(exc, ConnectionClosed):
        return True
    return isinstance(exc, (ConnectionError, RemoteProtocolError)) and (
        request.websocket is not None or request.upgraded or request.client_gone
    )


def _to_response(result: ResponseLike) -> ServerResponse:
    if isinstance(result, ServerResponse):
        return result
    if result is None:
        return ServerResponse(204)
    if isinstance(result, (bytes, bytearray, memoryview)):
        return ServerResponse(200, [("Content-Type", "application/octet-stream")], bytes(result))
    if isinstance(result, str):
        return ServerResponse(200, [("Content-Type", "text/plain; charset=utf-8")], result.encode())
    if isinstance(result, (dict, list)):
        return json_response(result)
    if isinstance(result, AsyncIterable):
        return ServerResponse(200, [("Content-Type", "application/octet-stream")], result)
    raise LocalProtocolError(f"handler returned {type(result).__name__}, not a response")


class Request:
    """One request as seen by a handler.

    ``method`` (upper-case str), ``target`` (raw request target), ``path`` (URL-decoded path),
    ``query`` (first value per name, URL-decoded), ``query_list`` (every pair in order),
    ``headers`` (:class:`Headers`) and ``http_version``. Read the body once with
    :meth:`iter_body`, :meth:`body` or :meth:`json`.
    """

    def __init__(self, server: HttpServer, stream: H11Stream, head: h11.Request) -> None:
        self.method: str = head.method.decode("ascii")
        self.target: str = head.target.decode("latin-1")
        parts = urlsplit(self.target)
        self.path: str = unquote(parts.path)
        self.query_list: list[tuple[str, str]] = parse_qsl(parts.query, keep_blank_values=True)
        self.query: dict[str, str] = {}
        for name, value in self.query_list:
            self.query.setdefault(name, value)
        self.headers = Headers(head.headers)
        self.http_version: str = head.http_version.decode("ascii")
        self._head = head
        self._server = server
        self._stream = stream
        self._body_started = False
        self._body_done = False
        self.websocket: WebSocket | None = None
        """The websocket after :meth:`accept_websocket`, else ``None``."""
        self.upgraded = False
        """True after :meth:`accept_upgrade` handed the raw stream to the handler."""

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Yield the request body as it arrives; sends ``100 Continue`` first if asked.

        Can be iterated once. Raises :class:`RemoteProtocolError` on bad framing or an early
        hang-up, :class:`~agentconn.web.errors.HttpTimeoutError` after ``body_timeout``.
        """
        if self._body_started:
            raise LocalProtocolError("the request body can only be read once")
        self._body_started = True
        stream = self._stream
        if stream.conn.they_are_waiting_for_100_continue:
            # RFC 9110 §10.1.1: tell the client to go ahead only when we want the body.
            await stream.send(
                h11.InformationalResponse(status_code=100, headers=[]), self._server.body_timeout
            )
        while True:
            event = await stream.next_event(self._server.body_timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._body_done = True
                return
            else:
                raise RemoteProtocolError(f"peer {stream.peer()} ended the request body early")

    async def body(self, max_size: int | None = None) -> bytes:
        """Read the whole body into memory; over ``max_size`` bytes raises 413-hinted error."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.iter_body():
            size += len(chunk)
            if max_size is not None and size > max_size:
                raise RemoteProtocolError(
                    f"request body larger than {max_size} bytes", status_hint=413
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def json(self, max_size: int | None = 16 * 1024 * 1024) -> Any:
        """Read the body and parse it as JSON (orjson); bad JSON raises a 400-hinted error."""
        raw = await self.body(max_size)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RemoteProtocolError(f"request body is not JSON: {exc}") from exc

    @property
    def peer(self) -> str:
        """The client's address as text (for logs)."""
        return self._stream.peer()

    @property
    def client_gone(self) -> bool:
        """True once the client hung up (its half of the connection ended or the connection is
        closing): a long-running handler can stop waiting, as Go's request context ends."""
        writer, reader = self._stream.writer, self._stream.reader
        return writer.is_closing() or reader.at_eof()

    async def wait_client_gone(self, poll: float = 0.25) -> None:
        """Return once :attr:`client_gone` is true (checked every ``poll`` seconds)."""
        while not self.client_gone:
            await asyncio.sleep(poll)

    @property
    def is_websocket(self) -> bool:
        """True when this is a websocket upgrade request (``Upgrade: websocket``)."""
        return "websocket" in self.headers.get("upgrade", "").lower()

    async def accept_websocket(
        self,
        *,
        compression: bool = True,
        max_message_size: int = 16 * 1024 * 1024,
        subprotocol: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> WebSocket:
        """Answer the upgrade with 101 and return the :class:`WebSocket`.

        ``compression`` accepts permessage-deflate, without context takeover, if offered.
        The websocket lives until the handler returns. Raises :class:`RemoteProtocolError`
        (400-hinted) when the request is not a valid websocket upgrade.
        """
        from .websocket import accept_websocket

        if not self.is_websocket:
            raise RemoteProtocolError(f"{self.method} {self.target} is not a websocket upgrade")
        trailing, _ = self._stream.conn.trailing_data
        ws = await accept_websocket(
            self._stream.reader,
            self._stream.writer,
            self._head.headers,
            self._head.target,
            trailing,
            compression=compression,
            max_message_size=max_message_size,
            subprotocol=subprotocol,
            extra_headers=list(extra_headers),
        )
        self.websocket = ws
        return ws

    async def accept_upgrade(
        self, protocol: str, extra_headers: Iterable[tuple[str, str]] = ()
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """Answer an ``Upgrade``/``Connection: upgrade`` request with ``101 Switching
        Protocols`` (``Upgrade: <protocol>``, ``Connection: Upgrade``, then ``extra_headers``)
        and hand over the raw streams: (reader, writer, bytes already read past the request).

        The connection belongs to the handler until it returns, then it is closed. Raises
        :class:`RemoteProtocolError` (400-hinted) when the request did not ask to upgrade.
        """
        stream = self._stream
        conn = stream.conn
        while conn.their_state is h11.SEND_BODY:  # a GET has an empty body: just its end
            event = await stream.next_event(self._server.body_timeout)
            if not isinstance(event, (h11.Data, h11.EndOfMessage)):
                break
        if conn.their_state is not MIGHT_SWITCH_PROTOCOL:
            raise RemoteProtocolError(f"{self.method} {self.target} did not ask to upgrade")
        headers = [("Upgrade", protocol), ("Connection", "Upgrade"), *extra_headers]
        await stream.send(
            h11.InformationalResponse(
                status_code=101, reason=b"Switching Protocols", headers=headers
            ),
            self._server.write_timeout,
        )
        self.upgraded = True
        trailing, _ = conn.trailing_data
        return stream.reader, stream.writer, bytes(trailing)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target}>"


class HttpServer:
    """Serves HTTP/1.1 on stream pairs handed to :meth:`serve_connection`.

    Timeouts are seconds: ``keep_alive_timeout`` for an idle connection's next request,
    ``header_timeout`` for a whole request head once it started, ``body_timeout`` per read
    of a request body, ``write_timeout`` per write. ``max_header_size`` caps the head (431).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_header_size: int = 64 * 1024,
        header_timeout: float = 10.0,
        keep_alive_timeout: float = 60.0,
        body_timeout: float = 60.0,
        write_timeout: float = 60.0,
        read_size: int = READ_SIZE,
    ) -> None:
        self.handler = handler
        self.max_header_size = max_header_size
        self.header_timeout = header_timeout
        self.keep_alive_timeout = keep_alive_timeout
        self.body_timeout = body_timeout
        self.write_timeout = write_timeout
        self.read_size = read_size
        self.connections_served = 0
        """How many connections :meth:`serve_connection` has taken (for tests and stats)."""
        self.bad_requests = 0
        """Requests refused as malformed before reaching the handler (for tests and stats)."""
        self.connections_aborted = 0
        """Connections ended by the client's going away or breaking the protocol mid-request,
        or cancelled by a shutdown (normal operation: logged at debug level only)."""

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve requests on one connection until it closes; never raises (errors are logged).

        Use as the ``client_connected_cb`` of ``asyncio.start_server`` or the tunnel's
        ``start_server``.
        """
        self.connections_served += 1
        stream = H11Stream(
            reader,
            writer,
            h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_size),
            read_size=self.read_size,
        )
        cancelled = False
        try:
            while await self._serve_one(stream):
                stream.conn.start_next_cycle()
        except (ConnectionError, HttpTimeoutError, RemoteProtocolError) as exc:
            _log.debug("connection %s ended: %s", stream.peer(), exc)
        except asyncio.CancelledError:
            # A shutdown with this client mid-request (e.g. an upload whose sender vanished).
            # The task ends either way; re-raising would only make asyncio.start_server's
            # callback log "Exception in callback … CancelledError" (Python 3.11).
            cancelled = True
        except Exception:  # noqa: BLE001 - one bad connection must not stop the server
            _log.exception("HTTP connection %s failed", stream.peer())
        if not cancelled and stream.conn.their_state not in (h11.DONE, h11.CLOSED):
            # Input may be left unread (e.g. after a 431): linger so the answer survives.
            try:
                await stream.close_lingering()
            except asyncio.CancelledError:
                cancelled = True
        stream.close()
        if cancelled:
            self.connections_aborted += 1
            _log.debug("connection %s cancelled", stream.peer())

    async def _read_head(self, stream: H11Stream) -> h11.Request | None:
        loop = asyncio.get_running_loop()
        conn = stream.conn
        # Idle keep-alive wait for the first byte (unless pipelined bytes are already buffered).
        if conn.trailing_data[0] == b"" and not conn.trailing_data[1]:
            try:
                async with asyncio.timeout(self.keep_alive_timeout):
                    first = await stream.reader.read(self.read_size)
            except TimeoutError:
                return None
            except ConnectionError:
                first = b""
            conn.receive_data(first)
        deadline = loop.time() + self.header_timeout
        event = await stream.next_event(deadline=deadline)
        if isinstance(event, h11.Request):
            # h11 bounds only an *incomplete* head; one that arrived whole in a single read
            # can be larger, so measure it too (RFC 6585 §5: 431).
            size = (
                len(event.method)
                + len(event.target)
                + 12
                + sum(len(name) + len(value) + 4 for name, value in event.headers.raw_items())
            )
            if size > self.max_header_size:
                raise RemoteProtocolError(
                    f"request head of {size} bytes exceeds {self.max_header_size}",
                    status_hint=431,
                )
            return event
        return None  # ConnectionClosed: the client went away between requests

    async def _serve_one(self, stream: H11Stream) -> bool:
        """Handle one request/response cycle; True when the connection can be reused."""
        try:
            head = await self._read_head(stream)
        except HttpTimeoutError:
            _log.debug("request head from %s too slow; closing", stream.peer())
            return False
        except RemoteProtocolError as exc:
            self.bad_requests += 1
            await self._send_error(stream, exc.status_hint, "bad request", str(exc))
            return False
        if head is None:
            return False
        try:
            request = Request(self, stream, head)
        except ValueError as exc:  # urlsplit: "//[x", "http://[::1/" (Invalid IPv6 URL)
            self.bad_requests += 1
            _log.debug("bad request target from %s: %s", stream.peer(), exc)
            await self._send_error(stream, 400, "bad request", f"invalid request target: {exc}")
            return False
        try:
            response = _to_response(await self.handler(request))
        except RemoteProtocolError as exc:  # the handler found the request malformed
            if request.websocket is not None or request.upgraded:
                return False
            await self._send_error(stream, exc.status_hint, "bad request", str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - any handler bug becomes a 500
            if is_client_fault(request, exc):
                self.connections_aborted += 1
                _log.debug("client of %r went away or broke the protocol: %r", request, exc)
                return False
            _log.exception("handler failed on %r", request)
            if (
                request.websocket is not None
                or request.upgraded
                or stream.conn.our_state is not h11.SEND_RESPONSE
            ):
                return False
            await self._send_error(
                stream, 500, "internal server error", f"{type(exc).__name__}: {exc}"
            )
            return False
        if request.websocket is not None:
            await request.websocket.close_transport()
            return False
        if request.upgraded:
            stream.close()
            return False
        await self._send_response(stream, request, response)
        return await self._finish_request(stream, request)

    async def _send_response(
        self, stream: H11Stream, request: Request, response: ServerResponse
    ) -> None:
        headers = list(response.headers)
        names = {k.lower() for k, _ in headers}
        body = response.body
        if isinstance(body, (bytes, bytearray, memoryview)):
            if "content-length" not in names:
                headers.append(("Content-Length", str(len(body))))
        elif "transfer-encoding" not in names and "content-length" not in names:
            headers.append(("Transfer-Encoding", "chunked"))
        if stream.conn.they_are_waiting_for_100_continue and not request._body_started:
            # RFC 9110 §10.1.1: we answer without the body; don't keep the connection.
            headers.append(("Connection", "close"))
        await stream.send(
            h11.Response(status_code=response.status, headers=headers), self.write_timeout
        )
        if request.method != "HEAD":
            if isinstance(body, (bytes, bytearray, memoryview)):
                if body:
                    await stream.send(h11.Data(data=body), self.write_timeout)
            else:
                async for chunk in body:
                    if chunk:
                        await stream.send(h11.Data(data=chunk), self.write_timeout)
        await stream.send(h11.EndOfMessage(), self.write_timeout)

    async def _finish_request(self, stream: H11Stream, request: Request) -> bool:
        conn = stream.conn
        if conn.our_state is not h11.DONE:
            return False
        drained = 0
        while conn.their_state is h11.SEND_BODY and not conn.client_is_waiting_for_100_continue:
            event = await stream.next_event(self.body_timeout)
            if isinstance(event, h11.Data):
                drained += len(event.data)
                if drained > _DRAIN_LIMIT:
                    return False
            elif not isinstance(event, h11.EndOfMessage):
                return False
        return conn.their_state is h11.DONE

    async def _send_error(self, stream: H11Stream, status: int, message: str, detail: str) -> None:
        message = _phrase(status, message)
        if stream.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = orjson.dumps({"message": message, "detail": detail})
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        try:
            await stream.send(h11.Response(status_code=status, headers=headers), self.write_timeout)
            await stream.send(h11.Data(data=body), self.write_timeout)
            await stream.send(h11.EndOfMessage(), self.write_timeout)
        except (ConnectionError, HttpTimeoutError, LocalProtocolError) as exc:
            _log.debug("could not send %d to %s: %s", status, stream.peer(), exc)
