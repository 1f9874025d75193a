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
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .errors import ConnectionClosed, RemoteProtocolError
from .websocket import WebSocket

__all__ = ["WebSocketTransport", "open_websocket_stream"]

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
