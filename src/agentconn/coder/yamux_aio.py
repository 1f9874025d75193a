"""The asyncio adapter of the yamux core: :class:`YamuxSession` and :class:`YamuxStream`.

One reader task feeds the core with what the pipe delivers, one writer task writes what the
core has to send (it is woken by an :class:`asyncio.Event`, so many writes coalesce into one
pipe write), and a single ``loop.call_at`` follows :meth:`Session.get_timer` for keepalive
pings. Streams buffer what they receive; the core's window is given back only as the reader
consumes it, so a slow reader stops the peer (receive backpressure by window). Writers are
held by :meth:`YamuxStream.drain` while more than ``write_buffer_limit`` bytes wait for the
peer's window or the pipe (send backpressure).

Open a session over the coordinate websocket::

    ws = await websocket_connect(reader, writer, host, path, compression=False)
    session = YamuxSession(WebSocketPipe(ws), Role.CLIENT)
    stream = await session.open_stream()
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from types import TracebackType
from typing import Self

from ..web.websocket import WebSocket
from .errors import (
    YamuxError,
    YamuxSessionClosed,
    YamuxStreamClosed,
    YamuxStreamReset,
)
from .pipe import BytePipe, StreamPipe, WebSocketPipe
from .yamux import (
    Config,
    ConnectionTerminated,
    DataReceived,
    GoAwayCode,
    PingAcknowledged,
    PingTimedOut,
    Role,
    Session,
    StreamEnded,
    StreamOpened,
    StreamReset,
)

__all__ = [
    "Config",
    "Role",
    "YamuxSession",
    "YamuxStream",
    "yamux_over_streams",
    "yamux_over_websocket",
]

log = logging.getLogger(__name__)

DEFAULT_WRITE_BUFFER_LIMIT = 256 * 1024
SHUTDOWN_FLUSH_TIMEOUT = 5.0


class YamuxStream:
    """One yamux stream: an ordered byte stream in each direction, half-closable.

    Reads raise :class:`YamuxStreamReset` after an RST and :class:`YamuxSessionClosed` when
    the session ended before the peer's FIN; ``b""`` means the peer's FIN (clean EOF).
    """

    def __init__(self, session: YamuxSession, stream_id: int) -> None:
        self._session = session
        self.stream_id = stream_id
        self._buffer = bytearray()
        self._eof = False  # peer FIN received
        self._reset = False
        self._read_closed = False  # our close(): discard what arrives
        self._write_closed = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<YamuxStream {self.stream_id}>"

    # --- reading ---------------------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes as soon as any are there (``n < 0``: everything until EOF);
        ``b""`` at EOF."""
        if n == 0:
            return b""
        if n < 0:
            chunks = []
            while chunk := await self.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        while not self._buffer:
            self._check_readable()
            if self._eof:
                return b""
            await self._wait_readable()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._session._consumed(self.stream_id, len(data))
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`asyncio.IncompleteReadError` if EOF comes first."""
        parts = bytearray()
        while len(parts) < n:
            chunk = await self.read(n - len(parts))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(parts), n)
            parts += chunk
        return bytes(parts)

    def at_eof(self) -> bool:
        """True when the peer's FIN arrived and everything was read."""
        return self._eof and not self._buffer

    def _check_readable(self) -> None:
        if self._reset:
            raise YamuxStreamReset(f"stream {self.stream_id}: connection reset")
        if not self._eof and self._session._core.terminated:
            raise self._session._closed_error(f"stream {self.stream_id}")

    async def _wait_readable(self) -> None:
        self._read_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._read_waiter
        finally:
            self._read_waiter = None

    # --- writing ---------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; call :meth:`drain` to wait for room. Raises
        :class:`YamuxStreamClosed` after :meth:`write_eof`, :class:`YamuxStreamReset` after a
        reset, :class:`YamuxSessionClosed` after the session ended."""
        if self._reset:
            raise YamuxStreamReset(f"stream {self.stream_id}: connection reset")
        if self._write_closed:
            raise YamuxStreamClosed(f"stream {self.stream_id}: write after write_eof/close")
        self._session._core.send_data(self.stream_id, data)
        self._session._wake_writer()

    async def drain(self) -> None:
        """Wait until at most ``write_buffer_limit`` bytes wait to be sent. Raises like
        :meth:`write` if the stream cannot send any more."""
        session = self._session
        while session._core.buffered_amount(self.stream_id) > session.write_buffer_limit:
            if self._reset:
                raise YamuxStreamReset(f"stream {self.stream_id}: connection reset")
            if session._core.terminated:
                raise session._closed_error(f"stream {self.stream_id}")
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self._reset:
            raise YamuxStreamReset(f"stream {self.stream_id}: connection reset")

    def write_eof(self) -> None:
        """Half-close: FIN after the queued data. Reading goes on. Idempotent."""
        if self._write_closed or self._reset or self._session._core.terminated:
            self._write_closed = True
            return
        self._write_closed = True
        self._session._core.send_eof(self.stream_id)
        self._session._wake_writer()

    def close(self) -> None:
        """Graceful close (Go's ``Stream.Close``): FIN after the queued data, and stop
        reading — whatever arrives later is discarded and its window given back."""
        self.write_eof()
        self._read_closed = True
        if self._buffer:
            self._session._consumed(self.stream_id, len(self._buffer))
            self._buffer.clear()

    def abort(self) -> None:
        """Reset the stream (RST): queued data is dropped; the peer's reads fail."""
        if not self._reset and not self._session._core.terminated:
            self._session._core.reset_stream(self.stream_id)
            self._session._wake_writer()
        self._on_reset()

    @property
    def closed(self) -> bool:
        """True when both directions are finished (or the stream/session is gone)."""
        return self._reset or (self._write_closed and self._eof) or self._session.closed

    # --- events from the session -----------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        if self._read_closed:
            self._session._consumed(self.stream_id, len(data))
            return
        self._buffer += data
        self._wake_reader()

    def _on_eof(self) -> None:
        self._eof = True
        self._wake_reader()

    def _on_reset(self) -> None:
        self._reset = True
        self._buffer.clear()
        self._wake_reader()
        self._wake_drain()

    def _wake_reader(self) -> None:
        if self._read_waiter is not None and not self._read_waiter.done():
            self._read_waiter.set_result(None)

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # --- for the DRPC layer and asyncio-style callers --------------------------------------

    async def wait_closed(self) -> None:
        """Kept for StreamWriter-like callers: nothing to wait for after :meth:`close`."""
        return


class YamuxSession:
    """A yamux session over a :class:`BytePipe`, in ``role`` (CLIENT: odd stream ids).

    Must be created inside a running event loop; it starts its reader and writer tasks at
    once. Close it with :meth:`close` (or ``async with``).
    """

    def __init__(
        self,
        pipe: BytePipe,
        role: Role = Role.CLIENT,
        config: Config | None = None,
        *,
        write_buffer_limit: int = DEFAULT_WRITE_BUFFER_LIMIT,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._pipe = pipe
        self.role = role
        self.write_buffer_limit = write_buffer_limit
        self._core = Session(role, config, now=self._loop.time())
        self._streams: dict[int, YamuxStream] = {}
        self._incoming: deque[YamuxStream] = deque()
        self._accept_waiter: asyncio.Future[None] | None = None
        self._pings: dict[int, tuple[asyncio.Future[float], float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._error: YamuxError | None = None
        self._closed = self._loop.create_future()
        self._write_event = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._reader = self._loop.create_task(self._read_loop(), name=f"yamux-{role.value}-read")
        self._writer = self._loop.create_task(self._write_loop(), name=f"yamux-{role.value}-write")
        self._rearm_timer()  # the first keepalive

    # --- public API ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the session ended (for any reason)."""
        return self._core.terminated

    @property
    def error(self) -> YamuxError | None:
        """Why the session ended, None while open or after a local :meth:`close`."""
        return self._error

    @property
    def stats(self) -> object:
        """The core's :class:`~agentconn.coder.yamux.SessionStats`."""
        return self._core.stats

    async def open_stream(self) -> YamuxStream:
        """Open a stream; data may be written at once (the peer's ACK is not awaited).

        Raises :class:`YamuxSessionClosed` once the session ended, :class:`YamuxError` after
        the peer's GoAway.
        """
        if self._core.terminated:
            raise self._closed_error("open_stream")
        stream_id = self._core.open_stream()
        stream = YamuxStream(self, stream_id)
        self._streams[stream_id] = stream
        self._wake_writer()
        return stream

    async def accept_stream(self) -> YamuxStream:
        """Wait for the peer to open a stream; accepting it sends the ACK.

        Raises :class:`YamuxSessionClosed` once the session ended.
        """
        while True:
            while self._incoming:
                stream = self._incoming.popleft()
                if stream._reset:
                    continue  # the peer reset it before we got to it
                self._core.accept_stream(stream.stream_id)
                self._wake_writer()
                return stream
            if self._core.terminated:
                raise self._closed_error("accept_stream")
            self._accept_waiter = self._loop.create_future()
            try:
                await self._accept_waiter
            finally:
                self._accept_waiter = None

    async def ping(self) -> float:
        """Send a Ping and return the round-trip time in seconds. Raises
        :class:`YamuxError` on timeout (``Config.ping_timeout``) or session end."""
        if self._core.terminated:
            raise self._closed_error("ping")
        start = self._loop.time()
        ping_id = self._core.ping(start)
        future: asyncio.Future[float] = self._loop.create_future()
        self._pings[ping_id] = (future, start)
        self._wake_writer()
        return await future

    async def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        """Send GoAway(``code``): 0 refuses new streams from now on; others end the session."""
        self._core.go_away(code)
        self._after_core_change()

    async def close(self) -> None:
        """Close the session (no GoAway, as Go) and the pipe; every stream fails. Idempotent."""
        if not self._core.terminated:
            self._core.close()
            self._after_core_change()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the session ended and the pipe is closed."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- tasks -----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self._core.terminated:
            try:
                data = await self._pipe.read()
            except asyncio.CancelledError:
                raise
            except (YamuxError, ConnectionError, OSError) as exc:
                log.debug("yamux %s: pipe read failed: %r", self.role.value, exc)
                self._fatal(exc)
                return
            self._core.receive_data(data)
            self._after_core_change()

    async def _write_loop(self) -> None:
        while True:
            await self._write_event.wait()
            self._write_event.clear()
            data = self._core.data_to_send()
            self._wake_drains()
            if data:
                try:
                    await self._pipe.write(data)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - OSError, ConnectionClosed…: pipe gone
                    log.debug("yamux %s: pipe write failed: %r", self.role.value, exc)
                    self._fatal(exc)
                    return
            self._prune()
            if self._core.terminated:
                if self._write_event.is_set():
                    continue  # frames queued meanwhile (GoAway): one more pass
                return

    async def _shutdown(self) -> None:
        """After the core ended: flush what it queued (GoAway), stop the reader, close."""
        try:
            if asyncio.current_task() is not self._writer and not self._writer.done():
                self._wake_writer()
                done, _ = await asyncio.wait({self._writer}, timeout=SHUTDOWN_FLUSH_TIMEOUT)
                if not done:
                    self._writer.cancel()
            if not self._reader.done():
                self._reader.cancel()
            for task in (self._reader, self._writer):
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            try:
                await self._pipe.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken transport
                log.debug("yamux %s: pipe close: %r", self.role.value, exc)
        finally:
            if not self._closed.done():
                self._closed.set_result(None)

    # --- core plumbing ---------------------------------------------------------------------

    def _after_core_change(self) -> None:
        """Drain the core's events, wake the writer, re-arm the timer."""
        core = self._core
        while (event := core.next_event()) is not None:
            if isinstance(event, DataReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._on_data(event.data)
                else:
                    core.acknowledge_received_data(event.stream_id, len(event.data))
            elif isinstance(event, StreamOpened):
                stream = YamuxStream(self, event.stream_id)
                self._streams[event.stream_id] = stream
                self._incoming.append(stream)
                if self._accept_waiter is not None and not self._accept_waiter.done():
                    self._accept_waiter.set_result(None)
            elif isinstance(event, StreamEnded):
                if (stream := self._streams.get(event.stream_id)) is not None:
                    stream._on_eof()
            elif isinstance(event, StreamReset):
                if (stream := self._streams.get(event.stream_id)) is not None:
                    stream._on_reset()
            elif isinstance(event, PingAcknowledged):
                waiter, start = self._pings.pop(event.ping_id, (None, 0.0))
                if waiter is not None and not waiter.done():
                    waiter.set_result(self._loop.time() - start)
            elif isinstance(event, PingTimedOut):
                waiter, _ = self._pings.pop(event.ping_id, (None, 0.0))
                if waiter is not None and not waiter.done():
                    waiter.set_exception(YamuxError("ping timed out"))
            elif isinstance(event, ConnectionTerminated):
                self._on_terminated(event.error)
            # StreamEstablished, GoAwayReceived: the core keeps the state we need
        self._wake_writer()
        self._rearm_timer()

    def _on_terminated(self, error: YamuxError | None) -> None:
        if self._error is None:
            self._error = error
        if error is not None:
            log.debug("yamux %s session ended: %s", self.role.value, error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, None
        for stream in self._streams.values():
            stream._wake_reader()
            stream._wake_drain()
        if self._accept_waiter is not None and not self._accept_waiter.done():
            self._accept_waiter.set_result(None)
        for waiter, _ in self._pings.values():
            if not waiter.done():
                waiter.set_exception(self._closed_error("ping"))
        self._pings.clear()
        if self._shutdown_task is None:
            self._shutdown_task = self._loop.create_task(self._shutdown())

    def _fatal(self, exc: BaseException) -> None:
        """The pipe failed: end the session with that as the reason."""
        if self._core.terminated:
            return
        if isinstance(exc, YamuxError):
            self._error = exc
        else:
            err = YamuxSessionClosed(f"transport failed: {exc}")
            err.__cause__ = exc
            self._error = err
        self._core.close()
        self._after_core_change()

    def _closed_error(self, what: str) -> YamuxSessionClosed:
        reason = self._error
        err = YamuxSessionClosed(
            f"{what}: yamux session closed" + (f" ({reason})" if reason else "")
        )
        err.__cause__ = reason
        return err

    def _consumed(self, stream_id: int, amount: int) -> None:
        self._core.acknowledge_received_data(stream_id, amount)
        self._wake_writer()

    def _wake_writer(self) -> None:
        self._write_event.set()

    def _wake_drains(self) -> None:
        for stream in self._streams.values():
            if stream._drain_waiter is not None:
                stream._wake_drain()

    def _prune(self) -> None:
        """Forget streams the core no longer tracks once nothing is left to deliver."""
        core = self._core
        for stream_id in [
            sid
            for sid, stream in self._streams.items()
            if core.stream_state(sid) is None and stream._read_waiter is None
        ]:
            del self._streams[stream_id]

    def _rearm_timer(self) -> None:
        deadline = self._core.get_timer()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        self._core.handle_timer(self._loop.time())
        self._after_core_change()


def yamux_over_websocket(
    ws: WebSocket, role: Role = Role.CLIENT, config: Config | None = None
) -> YamuxSession:
    """A session over the binary messages of an open websocket (Coder's coordinate
    endpoint: ``Role.CLIENT`` for agentconn, ``Role.SERVER`` for the test coordinator)."""
    return YamuxSession(WebSocketPipe(ws), role, config)


def yamux_over_streams(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    role: Role = Role.CLIENT,
    config: Config | None = None,
) -> YamuxSession:
    """A session over an asyncio stream pair (TCP)."""
    return YamuxSession(StreamPipe(reader, writer), role, config)
