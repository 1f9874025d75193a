"""Byte pipes: the ordered byte transport a yamux session runs over.

A :class:`BytePipe` is any object with ``async read() -> bytes`` (``b""`` at EOF),
``async write(data)`` and ``async close()``. Coder runs yamux over a binary websocket
(``websocket.NetConn(…, MessageBinary)``, coder-control-plane.md §2.1): every write is one
binary message, reads concatenate messages and their boundaries mean nothing.
:class:`WebSocketPipe` does exactly that over :class:`agentconn.web.websocket.WebSocket`;
:class:`StreamPipe` wraps a plain asyncio ``StreamReader``/``StreamWriter`` (TCP in tests).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..web.errors import ConnectionClosed, LocalProtocolError
from ..web.websocket import WebSocket
from .errors import YamuxProtocolError

__all__ = ["BytePipe", "StreamPipe", "WebSocketPipe"]

READ_SIZE = 256 * 1024
# A websocket message we send carries at most this much; Go reads any size (NetConn lifts the
# read limit), the cap only keeps single messages well below our own receive limit of 16 MiB.
MAX_WS_MESSAGE = 1024 * 1024


class BytePipe(Protocol):
    """An ordered, reliable byte transport."""

    async def read(self) -> bytes:
        """Some bytes, or ``b""`` once the peer closed."""
        ...

    async def write(self, data: bytes) -> None:
        """Write all of ``data`` (waits for transport backpressure)."""
        ...

    async def close(self) -> None:
        """Close the transport; idempotent."""
        ...


class StreamPipe:
    """A :class:`BytePipe` over an asyncio stream pair (a connection reset reads as EOF)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read_size: int = READ_SIZE
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._read_size = read_size

    async def read(self) -> bytes:
        try:
            return await self.reader.read(self._read_size)
        except ConnectionError:
            return b""

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        if self.writer.is_closing():
            return
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class WebSocketPipe:
    """A :class:`BytePipe` over binary messages of an open :class:`WebSocket` (Go's
    ``websocket.NetConn(ctx, conn, websocket.MessageBinary)``).

    A close from the peer (any code) reads as EOF. A text message is a protocol error (Go
    closes with 1003, "unexpected frame type"): we close the same way and raise
    :class:`YamuxProtocolError`. Empty binary messages are skipped (they are not EOF).
    """

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def read(self) -> bytes:
        while True:
            try:
                message = await self.ws.receive()
            except ConnectionClosed:
                return b""
            if isinstance(message, str):
                await self.ws.close(1003, "unexpected frame type")
                raise YamuxProtocolError("text websocket message on the yamux byte pipe")
            if message:
                return message

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            for start in range(0, len(view), MAX_WS_MESSAGE):
                await self.ws.send(bytes(view[start : start + MAX_WS_MESSAGE]))
        except LocalProtocolError as exc:  # the websocket is closing: same as a dropped pipe
            raise ConnectionResetError(str(exc)) from exc

    async def close(self) -> None:
        await self.ws.close()
