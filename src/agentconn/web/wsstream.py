"""A websocket carrying a byte stream, as an asyncio transport (Go's ``websocket.NetConn``).

Theory of operation: some routes use a websocket only as a pipe for another protocol's bytes
(the agent's VNC route carries raw RFB in binary messages whose boundaries mean nothing,
agent-api.md §11.1). :class:`WebSocketTransport` turns an open :class:`WebSocket` into an
:class:`asyncio.Transport`, so any asyncio protocol, or a (StreamReader, StreamWriter) pair from
:func:`open_websocket_stream`, runs over it unchanged.

* Writing: ``write(data)`` sends ``data`` as one binary message at once (no task, no queue).
  The websocket's own transport buffers it; when that buffer passes its high-water mark this
  transport pauses its protocol, and a helper task resumes it once the buffer has drained below
  the low-water mark, so ``StreamWriter.drain()`` gives real backpressure.
* Reading: one task receives message pieces as they arrive (never joined into whole messages,
  so a message of any size costs one read of memory) and hands them to ``data_received``.
  ``pause_reading()`` stops that task between pieces; TCP's window then stops the peer.
* Ending: the peer's close frame or a dropped connection reaches the protocol as
  ``eof_received()`` then ``connection_lost(None)``; a text message is a protocol error
  (close 1003, ``connection_lost(RemoteProtocolError)``). ``close()`` sends a close frame (1000)
  and waits briefly for the peer's; ``abort()`` hangs up. A websocket cannot half-close, so
  ``can_write_eof()`` is false.

:func:`connect_websocket_stream` is the fast client path for the same use (the desktop's
``connect_desktop_vnc``): no :class:`WebSocket` and no task in between. Its protocol sits
directly on the TCP connection, runs wsproto's handshake, then parses the server's frames as
they arrive with :class:`~agentconn.web.wsframes.ServerFrameReader` and hands each payload piece
to the consumer as a view of the received chunk: the bytes are copied once, into the consumer's
``StreamReader``, as on a plain TCP stream. The client's own frames (masked data, pong, close)
are built by wsproto's ``FrameProtocol``. Reading pauses between pieces when the consumer
pauses, so a slow consumer holds at most what its ``StreamReader`` allows (twice its limit)
plus one received chunk.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.frame_protocol import FrameProtocol
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from ._stream import wait_for
from .errors import ConnectionClosed, RemoteProtocolError
from .websocket import _REJECT_BODY_LIMIT, WebSocket, _header_list, _rejected
from .wsframes import Close, Data, Failure, Ping, Pong, ServerFrameReader

__all__ = ["WebSocketStreamTransport", "WebSocketTransport", "connect_websocket_stream",
           "open_websocket_stream"]

_log = logging.getLogger(__name__)

#: RFC 6455 §7.4.1: "received a type of data it cannot accept" (a text message here).
CLOSE_UNSUPPORTED_DATA = 1003


class WebSocketTransport(asyncio.Transport):
    """The byte stream in ``ws``'s binary messages as a transport for ``protocol``."""

    def __init__(self, ws: WebSocket, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._ws = ws
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._reading = asyncio.Event()
        self._reading.set()
        self._protocol_paused = False
        self._closing = False
        self._lost = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop.call_soon(protocol.connection_made, self)
        self._receiver = self._spawn(self._receive_loop())

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- asyncio.BaseTransport ------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "websocket":
            return self._ws
        return self._ws.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Send a close frame (1000), wait briefly for the peer's, then hang up."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._spawn(self._close())

    async def _close(self) -> None:
        # Only one task may read the websocket: stop the receiver before the close handshake.
        self._receiver.cancel()
        await asyncio.gather(self._receiver, return_exceptions=True)
        try:
            await self._ws.close()
        finally:
            self._connection_lost(None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # -- reading --------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return self._reading.is_set() and not self._lost

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    async def _receive_loop(self) -> None:
        exc: Exception | None = None
        try:
            while True:
                await self._reading.wait()
                piece = await self._ws.receive_chunk()
                if isinstance(piece, str):
                    exc = RemoteProtocolError("text message on a binary byte-stream websocket")
                    await self._ws.close(CLOSE_UNSUPPORTED_DATA, "binary messages only")
                    break
                self._protocol.data_received(piece)
        except ConnectionClosed:
            if not self._closing:
                try:
                    self._protocol.eof_received()
                except Exception as e:  # noqa: BLE001 - the protocol's failure ends the stream
                    exc = e
        except (ConnectionError, OSError) as e:
            exc = e
        self._connection_lost(exc)

    # -- writing --------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as one binary message (nothing is sent for empty data)."""
        if self._closing or self._lost or not data:
            return
        try:
            self._ws.write_message(data)
        except ConnectionClosed as e:
            self._connection_lost(ConnectionResetError(str(e)))
            return
        if not self._protocol_paused and self._ws.transport.get_write_buffer_size() > \
                self._ws.transport.get_write_buffer_limits()[1]:
            self._protocol_paused = True
            self._protocol.pause_writing()
            self._spawn(self._resume_when_drained())

    async def _resume_when_drained(self) -> None:
        try:
            await self._ws.drain()
        except ConnectionClosed:
            return
        if self._protocol_paused and not self._lost:
            self._protocol_paused = False
            self._protocol.resume_writing()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a websocket cannot half-close; close() it instead")

    def get_write_buffer_size(self) -> int:
        return self._ws.transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._ws.transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._ws.transport.set_write_buffer_limits(high, low)

    def abort(self) -> None:
        """Hang up at once, without a close handshake."""
        if self._lost:
            return
        self._ws.transport.abort()
        self._connection_lost(None)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if not self._ws.closed:
            self._ws.transport.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)


async def open_websocket_stream(
    ws: WebSocket, *, limit: int = 2**16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The byte stream in ``ws``'s binary messages as an asyncio (StreamReader, StreamWriter).

    ``limit`` is the StreamReader's buffer limit (reading pauses above twice that).
    ``writer.close()`` closes the websocket with 1000.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = WebSocketTransport(ws, protocol)
    await asyncio.sleep(0)  # connection_made runs
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


# -- the fast client path ---------------------------------------------------------------------

#: RFC 6455 §7.4.1 status codes used by the fast path.
_CLOSE_NORMAL = 1000
_CLOSE_NO_STATUS = 1005
_CLOSE_ABNORMAL = 1006
#: The longest response head accepted during the handshake.
_MAX_RESPONSE_HEAD = 64 * 1024

CreateConnection = Callable[[Callable[[], asyncio.Protocol]],
                            Awaitable[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]]


class _State(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"  # our close frame is sent, the server's awaited
    CLOSED = "closed"


class _StreamProtocol(asyncio.Protocol):
    """The TCP connection's protocol: the client handshake, then the server's frames to the
    consumer's protocol through :class:`WebSocketStreamTransport` (see the module doc)."""

    def __init__(self, handshake: H11Handshake, request: bytes, app: asyncio.Protocol,
                 close_timeout: float, where: tuple[str, str]) -> None:
        self._where = where  # (host, path) for error messages
        self._loop = asyncio.get_running_loop()
        self._handshake = handshake
        self._request = request
        self._app = app
        self._views = isinstance(app, asyncio.StreamReaderProtocol)  # takes memoryviews
        self.close_timeout = close_timeout
        self.opened: asyncio.Future[None] = self._loop.create_future()
        self.app_transport = WebSocketStreamTransport(self)
        self._tcp: asyncio.Transport | None = None
        self._state = _State.HANDSHAKE
        self._head = bytearray()
        self._rejected: RejectConnection | None = None
        self._body = bytearray()
        self._frames = FrameProtocol(client=True, extensions=[])  # wsproto builds our frames
        self._reader = ServerFrameReader()
        self._paused = False          # the consumer paused reading
        self._eof = False             # eof_received() given to the consumer
        self._error: Exception | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        #: Pongs received (a heartbeat may compare it across its ping interval).
        self.pongs = 0

    # -- asyncio.Protocol (the TCP side) -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = transport  # type: ignore[assignment]
        self._tcp.write(self._request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self._state is _State.HANDSHAKE:
            self._handshake_data(data)
        elif self._state is not _State.CLOSED:
            self._reader.receive_data(data if type(data) is bytes else bytes(data))
            self._drain()

    def eof_received(self) -> bool:
        if self._state is _State.HANDSHAKE:
            self._feed_handshake(b"")
        elif self._state is _State.OPEN:  # the peer hung up without a close frame (1006)
            self._state = _State.CLOSED
            self._set_close(_CLOSE_ABNORMAL, "")
            self._app_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self.opened.done():
            if self._rejected is not None:  # a close-delimited refusal body ended
                self._handshake_failed(self._rejection())
            else:
                self._handshake_failed(RemoteProtocolError(
                    "connection closed during the websocket handshake"))
            return
        if self._state is _State.OPEN:  # dropped (a reset): the stream just ends, as a 1006
            self._set_close(_CLOSE_ABNORMAL, "")
            self._app_eof()
        self._state = _State.CLOSED
        self._app.connection_lost(self._error)

    def pause_writing(self) -> None:
        if self.opened.done():
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self.opened.done():
            self._app.resume_writing()

    # -- the handshake (wsproto) ---------------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        if self._rejected is not None:  # the refusal's body
            self._feed_handshake(data)
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _MAX_RESPONSE_HEAD:
                self._handshake_failed(RemoteProtocolError("websocket response head too large"))
            return
        # Only the head goes to wsproto: after a 101 the rest is frames, which we read.
        head, rest = bytes(self._head[:end + 4]), bytes(self._head[end + 4:])
        self._head = bytearray()
        self._feed_handshake(head, rest)

    def _feed_handshake(self, data: bytes, rest: bytes = b"") -> None:
        try:
            self._handshake.receive_data(data or None)
            for event in self._handshake.events():
                if isinstance(event, AcceptConnection):
                    self._open(rest)
                    return
                if isinstance(event, RejectConnection):
                    self._rejected = event
                    if not event.has_body:
                        self._handshake_failed(self._rejection())
                        return
                elif isinstance(event, RejectData) and self._rejected is not None:
                    room = _REJECT_BODY_LIMIT - len(self._body)
                    self._body += event.data[:max(room, 0)]
                    if event.body_finished:
                        self._handshake_failed(self._rejection())
                        return
        except WsRemoteProtocolError as exc:
            self._handshake_failed(RemoteProtocolError(
                f"websocket handshake with {self._where[0]}: {exc}"))
            return
        if rest:
            self._handshake_data(rest)
        elif not data and not self.opened.done():
            self._handshake_failed(self._rejection() if self._rejected is not None else
                                   RemoteProtocolError("closed during the websocket handshake"))

    def _rejection(self) -> Exception:
        assert self._rejected is not None
        return _rejected(*self._where, self._rejected, bytes(self._body))

    def _handshake_failed(self, exc: Exception) -> None:
        self._state = _State.CLOSED
        if not self.opened.done():
            self.opened.set_exception(exc)
            self.opened.exception()  # retrieved: connect_websocket_stream re-raises it
        if self._tcp is not None:
            self._tcp.abort()

    def _open(self, rest: bytes) -> None:
        self._state = _State.OPEN
        self._app.connection_made(self.app_transport)
        self.opened.set_result(None)
        if rest:
            self._reader.receive_data(rest)
            self._drain()

    # -- frames --------------------------------------------------------------------------

    def _drain(self) -> None:
        """Hand the parsed events on until more data is needed or the consumer paused."""
        reader, app = self._reader, self._app
        while not self._paused:
            event = reader.next_event()
            if event is None:
                return
            if type(event) is Data:
                if event.text:
                    self._fail(CLOSE_UNSUPPORTED_DATA, "binary messages only", RemoteProtocolError(
                        "text message on a binary byte-stream websocket"))
                    return
                if event.payload and self._state is _State.OPEN:
                    # A view of an immutable chunk: StreamReader.feed_data copies it once.
                    app.data_received(event.payload if self._views  # type: ignore[arg-type]
                                      else bytes(event.payload))
            elif type(event) is Ping:
                if self._state is _State.OPEN:
                    self._write(self._frames.pong(event.payload))
            elif type(event) is Pong:
                self.pongs += 1
            elif type(event) is Close:
                self._on_close(event)
                return
            elif type(event) is Failure:
                self._fail(event.code, event.reason,
                           RemoteProtocolError(f"websocket: {event.reason}"))
                return

    def _write(self, frame: bytes | bytearray) -> None:
        assert self._tcp is not None
        self._tcp.write(frame)

    def _set_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason

    def _app_eof(self) -> None:
        if not self._eof:
            self._eof = True
            try:
                self._app.eof_received()
            except Exception as exc:  # noqa: BLE001 - the consumer's failure ends the stream
                self._error = exc

    def _on_close(self, event: Close) -> None:
        self._set_close(event.code, event.reason)
        if self._state is _State.OPEN:
            # RFC 6455 §5.5.1: answer with the same code (none if it sent none).
            code = None if event.code == _CLOSE_NO_STATUS else event.code
            self._write(self._frames.close(code, event.reason if code else None))
            self._app_eof()
        self._state = _State.CLOSED
        assert self._tcp is not None
        self._tcp.close()

    def _fail(self, code: int, reason: str, exc: Exception) -> None:
        """The server broke the protocol: close with ``code``, the consumer gets ``exc``."""
        self._error = exc
        self._set_close(code, reason)
        if self._state is _State.OPEN:
            self._write(self._frames.close(code, reason))
        self._state = _State.CLOSED
        assert self._tcp is not None
        self._tcp.close()

    # -- the consumer's calls (through WebSocketStreamTransport) -------------------------

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if self._state is _State.OPEN and data:
            self._write(self._frames.send_data(bytes(data), fin=True))

    def close(self) -> None:
        if self._state is not _State.OPEN:
            return
        self._set_close(_CLOSE_NORMAL, "")
        self._write(self._frames.close(_CLOSE_NORMAL, ""))
        self._state = _State.CLOSING
        assert self._tcp is not None
        self._close_timer = self._loop.call_later(self.close_timeout, self._tcp.close)

    def abort(self) -> None:
        self._set_close(_CLOSE_ABNORMAL, "")
        self._state = _State.CLOSED
        if self._tcp is not None:
            self._tcp.abort()

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self._tcp is not None:
                self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        if self._paused or self._tcp is None:
            return
        self._drain()  # what the last chunk still holds, then more from TCP
        if not self._paused and self._state is not _State.CLOSED:
            self._tcp.resume_reading()

    @property
    def tcp(self) -> asyncio.Transport:
        assert self._tcp is not None
        return self._tcp

    @property
    def state_open(self) -> bool:
        return self._state is _State.OPEN


class WebSocketStreamTransport(asyncio.Transport):
    """The consumer's side of :func:`connect_websocket_stream`: writes become masked binary
    frames; the consumer's protocol receives the payload bytes (as ``memoryview`` slices
    when it is a ``StreamReaderProtocol``). ``close()`` sends a close frame (1000) and hangs
    up once the server answers (or after ``close_timeout``); a websocket cannot half-close."""

    def __init__(self, stream: _StreamProtocol) -> None:
        super().__init__()
        self._stream = stream

    @property
    def close_code(self) -> int | None:
        """The close code (the peer's, ours, or 1006 for a drop) once closed."""
        return self._stream.close_code

    @property
    def close_reason(self) -> str:
        return self._stream.close_reason

    @property
    def pongs(self) -> int:
        return self._stream.pongs

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._stream.tcp.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return not self._stream.state_open

    def close(self) -> None:
        self._stream.close()

    def abort(self) -> None:
        self._stream.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._stream._app = protocol  # type: ignore[assignment]
        self._stream._views = isinstance(protocol, asyncio.StreamReaderProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._stream._app

    def is_reading(self) -> bool:
        return not self._stream._paused and self._stream.state_open

    def pause_reading(self) -> None:
        self._stream.pause_reading()

    def resume_reading(self) -> None:
        self._stream.resume_reading()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as one binary message (nothing for empty data or once closing)."""
        self._stream.send(data)

    def writelines(self, list_of_data: Any) -> None:
        self._stream.send(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a websocket cannot half-close; close() it instead")

    def get_write_buffer_size(self) -> int:
        return self._stream.tcp.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._stream.tcp.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._stream.tcp.set_write_buffer_limits(high, low)


async def connect_websocket_stream(
    create_connection: CreateConnection,
    host: str,
    path: str,
    *,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    subprotocols: Iterable[str] = (),
    timeout: float | None = 30.0,
    limit: int = 2**16,
    close_timeout: float = 5.0,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a websocket whose binary messages carry a byte stream, as a (StreamReader,
    StreamWriter) pair, on the fast path (see the module doc). No compression is offered.

    ``create_connection(protocol_factory)`` opens the TCP connection (``loop.create_connection``
    or a tunnel's, with the address bound); ``host`` is the Host header; ``timeout`` bounds the
    handshake; ``limit`` is the StreamReader's buffer limit (reading pauses above twice that).
    Raises :class:`~agentconn.web.errors.WebSocketRejected` with the response when the server
    refuses, :class:`RemoteProtocolError` when it answers badly, ``HttpTimeoutError`` on
    timeout. Later, a protocol error by the server reaches the reader as
    :class:`RemoteProtocolError`; its close frame or hang-up as EOF.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    app = asyncio.StreamReaderProtocol(reader, loop=loop)
    handshake = H11Handshake(ConnectionType.CLIENT)
    request = handshake.send(Request(host=host, target=path, extensions=[],
                                     extra_headers=_header_list(headers),
                                     subprotocols=list(subprotocols)))
    stream = _StreamProtocol(handshake, request, app, close_timeout, (host, path))
    transport, _ = await create_connection(lambda: stream)
    try:
        await wait_for(asyncio.shield(stream.opened), timeout, "websocket handshake")
    except BaseException:
        transport.abort()  # type: ignore[attr-defined]
        raise
    writer = asyncio.StreamWriter(stream.app_transport, app, reader, loop)
    return reader, writer
