"""Byte pipes that carry a DERP connection, and dialing a DERP node (asyncio).

Two transports (§5.1, §5.2), one interface (:class:`Pipe`):

- :class:`StreamPipe`: the TCP/TLS stream after ``GET /derp`` answered ``101 Switching
  Protocols`` to ``Upgrade: DERP``; DERP frames are the raw bytes.
- :class:`WebSocketPipe`: a websocket with subprotocol ``derp``; each binary message carries
  some DERP bytes (message boundaries mean nothing). A text message is a protocol error.

:func:`dial_node` opens either to a :class:`~.derpmap.DerpNode`. The HTTP upgrade runs on
our h11 adapter (:class:`~agentconn.web._stream.H11Stream`), the websocket on
:func:`~agentconn.web.websocket.websocket_connect`, both without compression.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Protocol

import h11

from ...web._stream import H11Stream, wait_for
from ...web.errors import ConnectionClosed, HttpTimeoutError, RemoteProtocolError, WebError
from ...web.websocket import WebSocket, websocket_connect
from .derpmap import DerpNode
from .errors import DerpConnectError, DerpProtocolError

__all__ = [
    "DERP_SUBPROTOCOL",
    "Pipe",
    "StreamPipe",
    "WebSocketPipe",
    "dial_node",
    "open_node_stream",
]

DERP_SUBPROTOCOL = "derp"
READ_SIZE = 65536
_MAX_ERROR_BODY = 4096

HeaderPairs = Iterable[tuple[str, str]]


class Pipe(Protocol):
    """What a DERP session needs from its transport."""

    kind: str
    """``"upgrade"`` or ``"websocket"``."""
    peer: str
    """The remote address, for logs."""

    async def read(self) -> bytes:
        """The next bytes; ``b""`` at EOF or after a reset."""

    async def send(self, data: bytes) -> None:
        """Write and wait until the transport takes more (raises ``ConnectionError``)."""

    def abort(self) -> None:
        """Close now, without waiting (idempotent)."""


class StreamPipe:
    """A DERP byte stream on an asyncio stream pair (after the ``101``). ``initial`` holds
    bytes read past the HTTP head (the start of the first frame)."""

    kind = "upgrade"

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial: bytes = b""
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._initial = initial
        try:
            self.peer = str(writer.get_extra_info("peername"))
        except Exception:  # noqa: BLE001 - any transport may lack it
            self.peer = "?"

    async def read(self) -> bytes:
        if self._initial:
            data, self._initial = self._initial, b""
            return data
        try:
            return await self._reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    async def send(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionResetError("DERP transport is closed")
        self._writer.write(data)
        await self._writer.drain()

    def abort(self) -> None:
        transport = self._writer.transport
        if not transport.is_closing():
            transport.abort()


class WebSocketPipe:
    """A DERP byte stream over binary websocket messages."""

    kind = "websocket"

    def __init__(self, ws: WebSocket, peer: str = "?") -> None:
        self.ws = ws
        self.peer = peer

    async def read(self) -> bytes:
        try:
            message = await self.ws.receive()
        except ConnectionClosed:
            return b""
        except (ConnectionError, OSError, HttpTimeoutError):
            return b""
        if isinstance(message, str):
            # coder/websocket's NetConn: "unexpected frame type read" (close 1003). The
            # close frame goes out; the peer's answer is not awaited.
            self.ws.close_timeout = 0.0
            await self.ws.close(1003, "unexpected frame type read")
            raise DerpProtocolError("text message on a DERP websocket")
        return message

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send(data)
        except ConnectionClosed as exc:
            raise ConnectionResetError(str(exc)) from None

    def abort(self) -> None:
        self.ws.abort()


def _ssl_context(node: DerpNode, ssl_context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    if not node.use_tls:
        return None
    if node.insecure_for_tests:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl_context or ssl.create_default_context()
    ctx.set_alpn_protocols(["http/1.1"])  # DERP's Upgrade needs HTTP/1.1 (tlsConfig)
    return ctx


async def open_node_stream(
    node: DerpNode, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TCP (and TLS unless ``ForceHTTP``) to ``node``: each of :meth:`DerpNode.dial_hosts`
    in turn on :attr:`DerpNode.port`. Raises :class:`DerpConnectError` naming every failure."""
    hosts = node.dial_hosts()
    if not hosts:
        raise DerpConnectError(f"DERP node {node.name!r}: both IPv4 and IPv6 are disabled")
    ctx = _ssl_context(node, ssl_context)
    errors = []
    for host in hosts:
        try:
            return await wait_for(
                asyncio.open_connection(
                    host, node.port, ssl=ctx,
                    server_hostname=(node.tls_server_name or host) if ctx else None,
                    limit=READ_SIZE * 2,
                ),
                timeout,
                f"connect to DERP node {node.name} {host}:{node.port}",
            )
        except (OSError, HttpTimeoutError, ssl.SSLError) as exc:
            errors.append(f"{host}:{node.port}: {exc}")
    raise DerpConnectError(f"DERP node {node.name!r}: " + "; ".join(errors))


async def _dial_upgrade(
    node: DerpNode, headers: HeaderPairs, ssl_context: ssl.SSLContext | None, timeout: float
) -> StreamPipe:
    reader, writer = await open_node_stream(node, ssl_context=ssl_context, timeout=timeout)
    stream = H11Stream(reader, writer, h11.Connection(h11.CLIENT))
    pairs = [("Host", node.host_header), *headers, ("Upgrade", "DERP"), ("Connection", "Upgrade")]
    url = node.url()
    try:
        await stream.send(h11.Request(method="GET", target="/derp", headers=pairs), timeout)
        await stream.send(h11.EndOfMessage(), timeout)
        while True:
            event = await stream.next_event(timeout)
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                trailing, _ = stream.conn.trailing_data
                return StreamPipe(reader, writer, bytes(trailing))
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                body = await _read_error_body(stream, timeout)
                status = event.status_code
                if 400 <= status < 500:
                    # derphttp: a 4xx means a proxy may forbid 'Upgrade: derp' → websockets.
                    raise DerpConnectError(
                        f"GET {url} failed with status code {status} (a proxy could be "
                        f"disallowing the use of 'Upgrade: derp'): {body}",
                        status=status, forced_websocket=True,
                    )
                raise DerpConnectError(f"GET {url} failed: HTTP {status}: {body}", status=status)
            raise DerpConnectError(f"GET {url}: the server closed the connection")
    except (WebError, OSError) as exc:
        stream.close()
        raise DerpConnectError(f"GET {url}: {exc}") from exc
    except BaseException:
        stream.close()
        raise


async def _read_error_body(stream: H11Stream, timeout: float) -> str:
    chunks = []
    size = 0
    try:
        while size < _MAX_ERROR_BODY:
            event = await stream.next_event(timeout)
            if not isinstance(event, h11.Data):
                break
            chunks.append(bytes(event.data))
            size += len(event.data)
    except (WebError, OSError):
        pass
    return b"".join(chunks)[:_MAX_ERROR_BODY].decode("utf-8", "replace").strip()


async def _dial_websocket(
    node: DerpNode, headers: HeaderPairs, ssl_context: ssl.SSLContext | None, timeout: float
) -> WebSocketPipe:
    reader, writer = await open_node_stream(node, ssl_context=ssl_context, timeout=timeout)
    url = node.url()
    try:
        ws = await websocket_connect(
            reader, writer, node.host_header, "/derp", headers=list(headers),
            subprotocols=[DERP_SUBPROTOCOL], compression=False, timeout=timeout,
        )
    except RemoteProtocolError as exc:
        writer.close()
        raise DerpConnectError(f"websocket {url}: {exc}", status=exc.status_hint) from exc
    except (WebError, OSError) as exc:
        writer.close()
        raise DerpConnectError(f"websocket {url}: {exc}") from exc
    if ws.subprotocol != DERP_SUBPROTOCOL:
        await ws.close(1008, "client must speak the derp subprotocol")
        raise DerpConnectError(f"websocket {url}: server did not accept subprotocol 'derp'")
    return WebSocketPipe(ws, f"{node.host_header}")


async def dial_node(
    node: DerpNode,
    *,
    websocket: bool,
    headers: HeaderPairs = (),
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> StreamPipe | WebSocketPipe:
    """Open a DERP transport to ``node``: the websocket one when ``websocket``, else the
    ``Upgrade: DERP`` one. ``headers`` are extra request headers (Coder: the deployment's
    custom headers; no session token). Raises :class:`DerpConnectError`; after a 4xx on the
    upgrade it has ``forced_websocket=True`` (the caller should use websockets from then on)."""
    headers = list(headers)
    if websocket:
        return await _dial_websocket(node, headers, ssl_context, timeout)
    return await _dial_upgrade(node, headers, ssl_context, timeout)
