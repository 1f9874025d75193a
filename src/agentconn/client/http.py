"""httpx to a web app in the workspace, through the tunnel (``AgentConn.http_client``).

Theory of operation: httpx's default transport is a thin mapping onto httpcore's connection
pool, and httpcore takes a *network backend* that opens its TCP streams. :class:`TunnelBackend`
is such a backend: ``connect_tcp(host, port)`` dials the agent's ``port`` through the tunnel
(the host of the URL is only the ``Host`` header), so the pool — keep-alive reuse, HTTP/1.1
framing, streaming bodies — is httpcore's own, keyed by (agent address, port).
:class:`TunnelTransport` maps httpx requests and responses onto that pool as httpx's own
``AsyncHTTPTransport`` does, with httpcore's errors turned into httpx's.
:class:`SyncTunnelTransport` is the blocking ``httpx.Client``'s transport for
:mod:`agentconn.sync`: each request runs on the portal loop through a
:class:`TunnelTransport`, the request body is pulled from its iterator on a worker thread and
the response body is handed back chunk by chunk.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

if TYPE_CHECKING:
    from .conn import AgentConn

__all__ = ["SyncTunnelTransport", "TunnelBackend", "TunnelStream", "TunnelTransport",
           "http_client"]

_ERRORS: tuple[tuple[type[Exception], type[Exception]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextlib.contextmanager
def _mapped(request: httpx.Request | None = None) -> Any:
    try:
        yield
    except Exception as exc:
        for core, mapped in _ERRORS:
            if isinstance(exc, core):
                raise mapped(str(exc), request=request) from exc  # type: ignore[call-arg]
        raise


class TunnelStream(httpcore.AsyncNetworkStream):
    """One TCP connection through the tunnel as an httpcore stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no data within {timeout} s") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout(f"could not send within {timeout} s") from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("https through the tunnel is not supported; the "
                                           "tunnel already encrypts (use http://)")

    def get_extra_info(self, info: str) -> Any:
        return self._writer.get_extra_info(info)


class TunnelBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend for one agent: every connection goes to its ``port``."""

    def __init__(self, conn: AgentConn) -> None:
        self.conn = conn
        self.connections_opened = 0

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await self.conn.dial("tcp", port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"agent port {port}: no answer within "
                                          f"{timeout} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"agent port {port}: {exc}") from exc
        self.connections_opened += 1
        return TunnelStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()


class TunnelTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections go through ``conn``'s tunnel to the agent."""

    def __init__(self, conn: AgentConn, *, max_connections: int = 10,
                 keepalive_expiry: float = 60.0) -> None:
        self.backend = TunnelBackend(conn)
        self._pool = httpcore.AsyncConnectionPool(network_backend=self.backend,
                                                  max_connections=max_connections,
                                                  keepalive_expiry=keepalive_expiry)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream,
            extensions=request.extensions)
        with _mapped(request):
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()


def http_client(conn: AgentConn, port: int, **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for the web app on the agent's ``port`` (base URL
    ``http://localhost:<port>``; relative URLs work). Extra arguments go to httpx."""
    kwargs.setdefault("base_url", f"http://localhost:{port}")
    return httpx.AsyncClient(transport=TunnelTransport(conn), **kwargs)


class _SyncResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Any, run: Callable[[Awaitable[Any]], Any]) -> None:
        self._stream = stream
        self._run = run

    def __iter__(self) -> Iterator[bytes]:
        chunks = self._stream.__aiter__()
        while True:
            try:
                yield self._run(chunks.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        if hasattr(self._stream, "aclose"):
            self._run(self._stream.aclose())


class SyncTunnelTransport(httpx.BaseTransport):
    """A blocking httpx transport over :class:`TunnelTransport`: ``run`` runs a coroutine on
    the loop that owns ``conn`` and returns its result (``agentconn.sync.run``)."""

    def __init__(self, conn: AgentConn, run: Callable[[Awaitable[Any]], Any],
                 **pool_kwargs: Any) -> None:
        self._transport = TunnelTransport(conn, **pool_kwargs)
        self.backend = self._transport.backend
        self._run = run

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the tunnel on the portal loop; the body streams back."""
        try:
            content: Any = request.content               # a body given as bytes
        except httpx.RequestNotRead:
            chunks = iter(request.stream)                # type: ignore[arg-type]

            async def content_iter() -> AsyncIterator[bytes]:
                while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                    yield chunk

            content = content_iter()
        inner = httpx.Request(request.method, request.url, headers=request.headers,
                              content=content, extensions=request.extensions)
        response = self._run(self._transport.handle_async_request(inner))
        return httpx.Response(status_code=response.status_code, headers=response.headers,
                              stream=_SyncResponseStream(response.stream, self._run),
                              extensions=response.extensions)

    def close(self) -> None:
        self._run(self._transport.aclose())
