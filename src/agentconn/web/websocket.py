"""Websockets (RFC 6455) over an asyncio stream pair, on wsproto's sans-IO core.

Theory of operation: a :class:`WebSocket` owns one reader/writer and one wsproto
``Connection`` in the OPEN state. :meth:`WebSocket.receive` reads bytes into wsproto and
drains its events: message fragments are joined (up to ``max_message_size``, else we close
with 1009, RFC 6455 §7.4.1), pings are answered with pongs, and a close frame is answered
(RFC 6455 §5.5.1) and raised as :class:`ConnectionClosed`. :meth:`WebSocket.close` sends a
close frame and waits briefly for the peer's. One task should receive at a time; sends may
come from any task.

The handshake runs on wsproto's ``H11Handshake``: :func:`websocket_connect` as the client,
:func:`accept_websocket` (via ``Request.accept_websocket``) as the server. permessage-deflate
(RFC 7692) is negotiated with no context takeover in either direction, so each message is
compressed on its own and neither side keeps a 32 KiB window per connection between messages.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import Iterable, Mapping

from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError as WsLocalProtocolError
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from ._stream import READ_SIZE, wait_for
from .errors import ConnectionClosed, LocalProtocolError, RemoteProtocolError, WebSocketRejected

__all__ = ["WebSocket", "accept_websocket", "websocket_connect"]

# RFC 6455 §7.4.1 status codes used here.
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_ABNORMAL = 1006
CLOSE_MESSAGE_TOO_BIG = 1009

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: How much of a refused upgrade's response body :class:`WebSocketRejected` keeps.
_REJECT_BODY_LIMIT = 64 * 1024


class _BoundedDeflate(PerMessageDeflate):
    """permessage-deflate without context takeover that inflates at most ``max_inflated``.

    wsproto inflates each received chunk without a bound, so a few KiB of compressed zeros
    could expand to gigabytes before our message-size check runs. Here a message whose
    inflated size passes the bound fails with 1009 (RFC 6455 §7.4.1) instead.
    """

    def __init__(self, max_inflated: int) -> None:
        super().__init__(client_no_context_takeover=True, server_no_context_takeover=True)
        self.max_inflated = max_inflated
        self._inflated = 0

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        room = self.max_inflated - self._inflated + 1  # >= 1: 0 would mean "unbounded"
        try:
            out = self._decompressor.decompress(bytes(data), room)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._decompressor.unconsumed_tail or self._inflated > self.max_inflated:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        result = super().frame_inbound_complete(proto, fin)
        if fin:
            self._inflated = 0
        return result


def _deflate(max_message_size: int) -> PerMessageDeflate:
    return _BoundedDeflate(max_message_size)


class WebSocket:
    """An open websocket. Create it with :func:`websocket_connect` or ``accept_websocket``.

    ``compressed`` tells whether permessage-deflate was negotiated; ``close_code`` and
    ``close_reason`` are set once closed.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: Connection,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        extensions: Iterable[Extension] = (),
        subprotocol: str | None = None,
        close_timeout: float = 5.0,
        read_size: int = READ_SIZE,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._conn = conn
        self.max_message_size = max_message_size
        self.close_timeout = close_timeout
        self.subprotocol = subprotocol
        self.compressed = any(isinstance(e, PerMessageDeflate) and e.enabled() for e in extensions)
        self._read_size = read_size
        self._events: deque[Event] = deque()
        self._fragments: list[bytes | str] = []
        self._fragment_size = 0
        self.close_code: int | None = None
        self.close_reason: str = ""
        #: Pongs received so far (a heartbeat compares it across its ping interval).
        self.pongs = 0

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or received, or the transport dropped."""
        return self.close_code is not None or self._conn.state is not ConnectionState.OPEN

    async def _write(self, event: Event) -> None:
        try:
            data = self._conn.send(event)
        except WsLocalProtocolError as exc:
            raise LocalProtocolError(f"websocket: {exc}") from exc
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def send(self, message: bytes | str) -> None:
        """Send one message: ``str`` as a text frame, bytes as a binary frame.

        Raises :class:`ConnectionClosed` if the websocket is closing or closed.
        """
        if self.closed:
            raise ConnectionClosed(self.close_code or CLOSE_ABNORMAL, self.close_reason)
        event: Event
        if isinstance(message, str):
            event = TextMessage(data=message)
        else:
            event = BytesMessage(data=bytes(message))
        try:
            await self._write(event)
        except (ConnectionError, OSError) as exc:
            self._mark_closed(CLOSE_ABNORMAL, str(exc))
            raise ConnectionClosed(CLOSE_ABNORMAL, str(exc)) from exc

    async def ping(self, payload: bytes = b"") -> None:
        """Send a ping; the pong is consumed by :meth:`receive`."""
        await self._write(Ping(payload=payload))

    # -- byte-stream use (message boundaries carry no meaning, e.g. VNC's RFB stream) --------

    @property
    def transport(self) -> asyncio.WriteTransport:
        """The underlying transport: its write buffer size and water marks drive backpressure."""
        return self._writer.transport

    def write_message(self, data: bytes | bytearray | memoryview) -> None:
        """Queue one whole binary message without waiting; pair with :meth:`drain`.

        As the server, without compression, the frame header and ``data`` are handed to the
        transport as two writes, so the payload is never copied into a frame (RFC 6455 §5.2:
        server frames are unmasked). Otherwise wsproto frames it. Raises
        :class:`ConnectionClosed` once closing or closed.
        """
        if self.closed:
            raise ConnectionClosed(self.close_code or CLOSE_ABNORMAL, self.close_reason)
        if self._conn.client or self.compressed:
            self._writer.write(self._conn.send(BytesMessage(data=bytes(data))))
            return
        n = len(data)
        if n < 126:
            header = bytes((0x82, n))  # FIN + opcode 2 (binary); 7-bit length
        elif n < 1 << 16:
            header = bytes((0x82, 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((0x82, 127)) + n.to_bytes(8, "big")
        self._writer.writelines((header, data))

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark.

        Raises :class:`ConnectionClosed` if the connection dropped.
        """
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._mark_closed(CLOSE_ABNORMAL, str(exc))
            raise ConnectionClosed(CLOSE_ABNORMAL, str(exc)) from exc

    async def receive_chunk(self) -> bytes | str:
        """Wait for the next piece of a message as it arrives, without joining fragments.

        For byte streams carried in messages, where boundaries mean nothing: memory stays
        bounded by one read whatever the message size, so ``max_message_size`` does not apply.
        Pieces of a text message come as ``str``. Pings are answered; raises
        :class:`ConnectionClosed` as :meth:`receive` does.
        """
        while True:
            if self.close_code is not None:
                raise ConnectionClosed(self.close_code, self.close_reason)
            if not self._events:
                if self._conn.state is ConnectionState.CLOSED:
                    self._mark_closed(CLOSE_ABNORMAL, "")
                    continue
                await self._fill()
                continue
            event = self._events.popleft()
            if isinstance(event, BytesMessage):
                if event.data:
                    return event.data if isinstance(event.data, bytes) else bytes(event.data)
            elif isinstance(event, TextMessage):
                if event.data:
                    return event.data
            elif isinstance(event, Ping):
                await self._pong(event)
            elif isinstance(event, Pong):
                self.pongs += 1
            elif isinstance(event, CloseConnection):
                await self._on_close(event)

    async def _read(self) -> bytes:
        try:
            return await self._reader.read(self._read_size)
        except ConnectionError:  # a reset is a drop (1006); TimeoutError must pass through
            return b""

    async def _fill(self, timeout: float | None = None) -> None:
        """Read once from the transport into wsproto (EOF becomes close code 1006)."""
        data = await wait_for(self._read(), timeout, "websocket read")
        self._conn.receive_data(data or None)
        self._events.extend(self._conn.events())

    async def receive(self) -> bytes | str:
        """Wait for the next whole message: ``str`` for text, ``bytes`` for binary.

        Answers pings along the way. Raises :class:`ConnectionClosed` with the peer's code
        and reason when it closes (1006 if the transport dropped), or 1009 after we closed
        because a message exceeded ``max_message_size``.
        """
        while True:
            if self.close_code is not None:
                raise ConnectionClosed(self.close_code, self.close_reason)
            if not self._events:
                if self._conn.state is ConnectionState.CLOSED:
                    self._mark_closed(CLOSE_ABNORMAL, "")
                    continue
                await self._fill()
                continue
            event = self._events.popleft()
            if isinstance(event, (TextMessage, BytesMessage)):
                self._fragments.append(
                    event.data if isinstance(event.data, (bytes, str)) else bytes(event.data)
                )
                self._fragment_size += len(event.data)
                if self._fragment_size > self.max_message_size:
                    await self._fail(CLOSE_MESSAGE_TOO_BIG, "message too big")
                    continue
                if event.message_finished:
                    parts, self._fragments, self._fragment_size = self._fragments, [], 0
                    if isinstance(event, TextMessage):
                        return "".join(p for p in parts if isinstance(p, str))
                    return b"".join(p for p in parts if isinstance(p, bytes))
            elif isinstance(event, Ping):
                await self._pong(event)
            elif isinstance(event, Pong):
                self.pongs += 1
            elif isinstance(event, CloseConnection):
                await self._on_close(event)
            # Anything else: nothing to do.

    async def _pong(self, event: Ping) -> None:
        """Answer a ping, unless a close was already received or sent (a Ping and a Close in
        one read: wsproto is then REMOTE_CLOSING and refuses a pong; the close is answered)."""
        if self._conn.state is not ConnectionState.OPEN:
            return
        try:
            await self._write(event.response())
        except (ConnectionError, OSError):
            self._mark_closed(CLOSE_ABNORMAL, "")

    async def _on_close(self, event: CloseConnection) -> None:
        if self._conn.state is ConnectionState.OPEN:
            # wsproto found the peer's frames invalid (1002/1007) or a message too big to
            # inflate (1009): it is ours to fail the connection (RFC 6455 §7.1.7).
            await self._fail(event.code, event.reason or "")
            return
        if self._conn.state is ConnectionState.REMOTE_CLOSING:
            try:
                await self._write(event.response())  # RFC 6455 §5.5.1: echo the close
            except (ConnectionError, OSError, LocalProtocolError):
                pass
        self._mark_closed(event.code, event.reason or "")
        self._writer.close()

    async def _fail(self, code: int, reason: str) -> None:
        """Close with ``code`` after a local check failed; the peer's reply is not awaited."""
        try:
            await self._write(CloseConnection(code=code, reason=reason))
        except (ConnectionError, OSError, LocalProtocolError):
            pass
        self._mark_closed(code, reason)
        self._writer.close()

    def _transport_closed(self) -> bool:
        return self._conn.state is ConnectionState.CLOSED

    def _mark_closed(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame and wait up to ``close_timeout`` s for the peer's, then hang up.

        Idempotent. Messages that arrive meanwhile are discarded.
        """
        if self._conn.state is ConnectionState.OPEN:
            try:
                await self._write(CloseConnection(code=code, reason=reason))
                self._mark_closed(code, reason)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.close_timeout
                while not self._transport_closed():
                    if not self._events:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        await self._fill(remaining)
                    else:
                        self._events.popleft()
            except (ConnectionError, OSError, TimeoutError, LocalProtocolError):
                pass
        self._mark_closed(code, reason)
        await self.close_transport()

    def abort(self) -> None:
        """Drop the transport now, without a close handshake (``close_code`` 1006)."""
        self._mark_closed(CLOSE_ABNORMAL, "")
        self._writer.transport.abort()

    async def close_transport(self) -> None:
        """Hang up the transport without a close handshake (used when the handler returns)."""
        self._mark_closed(CLOSE_ABNORMAL, "")
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def _header_list(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> list[tuple[bytes, bytes]]:
    if headers is None:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


def _rejected(host: str, path: str, event: RejectConnection, body: bytes) -> WebSocketRejected:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
    return WebSocketRejected(
        f"websocket upgrade to {host}{path} refused: {event.status_code}",
        status=event.status_code, headers=headers, body=body)


async def websocket_connect(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    path: str,
    *,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    subprotocols: Iterable[str] = (),
    compression: bool = True,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    timeout: float | None = 30.0,
) -> WebSocket:
    """Run the client handshake on an open stream pair and return the :class:`WebSocket`.

    ``host`` is the Host header (``"host:port"`` when not 80). ``compression`` offers
    permessage-deflate without context takeover. ``timeout`` (seconds) bounds the handshake.
    Raises :class:`~agentconn.web.errors.WebSocketRejected` (a :class:`RemoteProtocolError`
    whose ``status_hint`` is the status) with the response if the server refuses, and
    :class:`RemoteProtocolError` if it answers badly,
    :class:`~agentconn.web.errors.HttpTimeoutError` on timeout.
    """
    handshake = H11Handshake(ConnectionType.CLIENT)
    offered: list[Extension] = [_deflate(max_message_size)] if compression else []
    request = Request(
        host=host,
        target=path,
        extensions=offered,
        extra_headers=_header_list(headers),
        subprotocols=list(subprotocols),
    )
    writer.write(handshake.send(request))
    await wait_for(writer.drain(), timeout, "websocket handshake write")

    rejected: RejectConnection | None = None
    body = bytearray()

    async def answer() -> AcceptConnection:
        nonlocal rejected
        while True:
            data = await reader.read(READ_SIZE)
            try:
                handshake.receive_data(data or None)
                for event in handshake.events():
                    if isinstance(event, AcceptConnection):
                        return event
                    if isinstance(event, RejectConnection):
                        rejected = event
                        if not event.has_body:
                            raise _rejected(host, path, rejected, b"")
                    elif isinstance(event, RejectData) and rejected is not None:
                        if len(body) < _REJECT_BODY_LIMIT:
                            body.extend(event.data[: _REJECT_BODY_LIMIT - len(body)])
                        if event.body_finished:
                            raise _rejected(host, path, rejected, bytes(body))
            except WsRemoteProtocolError as exc:
                raise RemoteProtocolError(f"websocket handshake with {host}: {exc}") from exc
            if not data:
                if rejected is not None:  # a close-delimited refusal body ended
                    raise _rejected(host, path, rejected, bytes(body))
                raise RemoteProtocolError(f"{host} closed during the websocket handshake")

    try:
        accepted = await wait_for(answer(), timeout, "websocket handshake")
    except BaseException:
        writer.close()
        raise
    conn = handshake.connection
    assert conn is not None  # wsproto sets it with AcceptConnection
    ws = WebSocket(
        reader,
        writer,
        conn,
        max_message_size=max_message_size,
        extensions=accepted.extensions,
        subprotocol=accepted.subprotocol,
    )
    ws._events.extend(conn.events())  # frames that arrived with the 101
    return ws


async def accept_websocket(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request_headers: Iterable[tuple[bytes, bytes]],
    target: bytes,
    trailing_data: bytes,
    *,
    compression: bool = True,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    subprotocol: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> WebSocket:
    """Server side: answer an already-parsed upgrade request with 101, return the websocket.

    Normally reached through ``Request.accept_websocket``. ``trailing_data`` are bytes read
    after the request head. Raises :class:`RemoteProtocolError` when the request is not a
    valid websocket upgrade (nothing is written then).
    """
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.initiate_upgrade_connection(list(request_headers), target)
        events = list(handshake.events())
    except WsRemoteProtocolError as exc:
        raise RemoteProtocolError(f"bad websocket upgrade: {exc}") from exc
    if not any(isinstance(e, Request) for e in events):
        raise RemoteProtocolError("bad websocket upgrade")
    supported: list[Extension] = [_deflate(max_message_size)] if compression else []
    data = handshake.send(
        AcceptConnection(
            subprotocol=subprotocol,
            extensions=supported,
            extra_headers=_header_list(extra_headers),
        )
    )
    conn = handshake.connection
    assert conn is not None
    writer.write(data)
    await writer.drain()
    ws = WebSocket(
        reader,
        writer,
        conn,
        max_message_size=max_message_size,
        extensions=supported,
        subprotocol=subprotocol,
    )
    if trailing_data:
        conn.receive_data(trailing_data)
        ws._events.extend(conn.events())
    return ws
