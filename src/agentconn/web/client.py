"""An HTTP/1.1 client with a keep-alive connection pool, over injected asyncio streams.

Theory of operation: every request borrows an idle :class:`H11Stream` for its (host, port)
from the pool, or opens one with the injected ``opener`` (``asyncio.open_connection`` or the
tunnel's). It sends the head and body, reads the response head, and hands the connection to
the :class:`Response`. When the response body has been read to its end and h11 says both
sides are ``DONE``, the connection starts its next cycle and goes back to the pool; in any
other case (body left unread, ``Connection: close``, an error) it is closed. A connection
sits in at most one place: the pool, or one live response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import h11
import orjson

from ._stream import READ_SIZE, H11Stream, wait_for
from .errors import LocalProtocolError, RemoteProtocolError
from .headers import Headers

__all__ = ["Body", "HttpClient", "Opener", "Response"]

Opener = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
"""``await opener(host, port) -> (reader, writer)``, e.g. ``asyncio.open_connection``."""

Body = bytes | bytearray | memoryview | AsyncIterable[bytes] | None
HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]] | None


def _header_pairs(headers: HeadersArg) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


class Response:
    """A response whose head has arrived; the body streams from the connection.

    Read the body with :meth:`iter_bytes`, :meth:`read` or :meth:`json`, then call
    :meth:`release` (or use ``async with``). The connection returns to the pool only when the
    body was read to its end; otherwise it is closed.
    """

    def __init__(
        self,
        client: HttpClient,
        key: tuple[str, int],
        stream: H11Stream,
        head: h11.Response,
        timeout: float | None,
    ) -> None:
        self.status: int = head.status_code
        self.reason: str = head.reason.decode("latin-1")
        self.http_version: str = head.http_version.decode("ascii")
        self.headers = Headers(head.headers)
        self._client = client
        self._key = key
        self._stream: H11Stream | None = stream
        self._timeout = timeout
        self._consumed = False
        self._started = False

    @property
    def consumed(self) -> bool:
        """True once the whole body has been read."""
        return self._consumed

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives (Content-Length, chunked or close-delimited).

        Can be iterated once. The connection is released when the end is reached. Raises
        :class:`RemoteProtocolError` if the peer breaks framing or hangs up early, and
        :class:`~agentconn.web.errors.HttpTimeoutError` when a read stalls past ``timeout``.
        """
        if self._started:
            raise LocalProtocolError("the response body can only be iterated once")
        self._started = True
        stream = self._stream
        if stream is None:
            raise LocalProtocolError("the response was released before its body was read")
        try:
            while True:
                event = await stream.next_event(self._timeout)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._consumed = True
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise RemoteProtocolError(f"peer {self._key} closed mid-response")
                else:
                    raise RemoteProtocolError(f"unexpected {event!r} in response body")
        except BaseException:
            self._discard()
            raise
        self.release()

    async def read(self) -> bytes:
        """Read and return the whole body (it is held in memory)."""
        return b"".join([chunk async for chunk in self.iter_bytes()])

    async def json(self) -> Any:
        """Read the body and parse it as JSON (orjson). Raises ``orjson.JSONDecodeError``."""
        return orjson.loads(await self.read())

    def release(self) -> None:
        """Give the connection back to the pool if the body was fully read, else close it.

        Idempotent; safe to call at any time.
        """
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._client._return(self._key, stream, reusable=self._consumed)

    def _discard(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


class HttpClient:
    """HTTP/1.1 client over streams from ``opener``, with keep-alive pooling per (host, port).

    ``max_idle_per_host`` bounds how many idle connections are kept for each key; extra ones
    are closed. Redirects are not followed. Use :meth:`close` (or ``async with``) when done.
    """

    def __init__(
        self,
        opener: Opener,
        *,
        max_idle_per_host: int = 8,
        read_size: int = READ_SIZE,
        user_agent: str | None = "agentconn",
    ) -> None:
        self._opener = opener
        self._max_idle = max_idle_per_host
        self._read_size = read_size
        self._user_agent = user_agent
        self._idle: dict[tuple[str, int], list[H11Stream]] = {}
        self._closed = False
        self.connections_opened = 0
        """How many connections ``opener`` has been asked for (for tests and stats)."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        host: str,
        port: int,
        headers: HeadersArg = None,
        body: Body = None,
        timeout: float | None = 30.0,
    ) -> Response:
        """Send one request and return the :class:`Response` once its head has arrived.

        ``body`` may be bytes (sent with Content-Length) or an async iterator of bytes (sent
        chunked, one chunk at a time, never buffered whole). ``timeout`` (seconds, ``None``
        for no limit) bounds the connect and each read or write, not the whole exchange.
        A pooled connection that turns out to be dead before any response byte is replaced
        once, when the body can be resent (bytes or none). Raises
        :class:`~agentconn.web.errors.HttpTimeoutError`, :class:`RemoteProtocolError`,
        :class:`LocalProtocolError`, or the opener's ``OSError``.
        """
        if self._closed:
            raise LocalProtocolError("HttpClient is closed")
        key = (host, port)
        replayable = body is None or isinstance(body, (bytes, bytearray, memoryview))
        stream, reused = await self._acquire(key, timeout)
        try:
            return await self._exchange(key, stream, method, path, headers, body, timeout)
        except (RemoteProtocolError, ConnectionError) as exc:
            stream.close()
            # A pooled connection the server closed while idle: retry once on a fresh one.
            if not (reused and replayable):
                raise
            del exc
        except BaseException:
            stream.close()
            raise
        stream = await self._open(key, timeout)
        try:
            return await self._exchange(key, stream, method, path, headers, body, timeout)
        except BaseException:
            stream.close()
            raise

    async def _exchange(
        self,
        key: tuple[str, int],
        stream: H11Stream,
        method: str,
        path: str,
        headers: HeadersArg,
        body: Body,
        timeout: float | None,
    ) -> Response:
        host, port = key
        pairs = _header_pairs(headers)
        names = {k.lower() for k, _ in pairs}
        if "host" not in names:
            pairs.insert(0, ("Host", host if port in (80, 443) else f"{host}:{port}"))
        if self._user_agent and "user-agent" not in names:
            pairs.append(("User-Agent", self._user_agent))
        chunks: AsyncIterable[bytes] | None = None
        data: bytes | bytearray | memoryview | None = None
        if isinstance(body, (bytes, bytearray, memoryview)):
            data = body
            if "content-length" not in names:
                pairs.append(("Content-Length", str(len(body))))
        elif body is not None:
            chunks = body
            if "transfer-encoding" not in names and "content-length" not in names:
                pairs.append(("Transfer-Encoding", "chunked"))
        elif method.upper() in ("POST", "PUT", "PATCH") and "content-length" not in names:
            pairs.append(("Content-Length", "0"))
        await stream.send(h11.Request(method=method, target=path, headers=pairs), timeout)
        if data:
            await stream.send(
                h11.Data(data=data if isinstance(data, bytes) else bytes(data)), timeout
            )
        elif chunks is not None:
            async for chunk in chunks:
                if chunk:
                    await stream.send(h11.Data(data=chunk), timeout)
        await stream.send(h11.EndOfMessage(), timeout)
        while True:
            event = await stream.next_event(timeout)
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and friends: the final response follows
            if isinstance(event, h11.Response):
                return Response(self, key, stream, event, timeout)
            if isinstance(event, h11.ConnectionClosed):
                raise RemoteProtocolError(f"peer {key} closed the connection before responding")
            raise RemoteProtocolError(f"unexpected {event!r} before the response head")

    async def _acquire(self, key: tuple[str, int], timeout: float | None) -> tuple[H11Stream, bool]:
        idle = self._idle.get(key)
        while idle:
            stream = idle.pop()
            if stream.reader.at_eof() or stream.writer.is_closing():
                stream.close()
                continue
            return stream, True
        return await self._open(key, timeout), False

    async def _open(self, key: tuple[str, int], timeout: float | None) -> H11Stream:
        self.connections_opened += 1
        reader, writer = await wait_for(self._opener(*key), timeout, f"connect to {key}")
        return H11Stream(reader, writer, h11.Connection(h11.CLIENT), read_size=self._read_size)

    def _return(self, key: tuple[str, int], stream: H11Stream, *, reusable: bool) -> None:
        conn = stream.conn
        if (
            reusable
            and not self._closed
            and conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
        ):
            conn.start_next_cycle()
            idle = self._idle.setdefault(key, [])
            if len(idle) < self._max_idle:
                idle.append(stream)
                return
        stream.close()

    def idle_connections(self, host: str, port: int) -> int:
        """How many idle pooled connections are kept for (host, port)."""
        return len(self._idle.get((host, port), ()))

    async def close(self) -> None:
        """Close every idle connection; later requests raise :class:`LocalProtocolError`.

        Responses still being read keep their connection until released (then it closes).
        """
        self._closed = True
        idle, self._idle = self._idle, {}
        for streams in idle.values():
            for stream in streams:
                stream.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
