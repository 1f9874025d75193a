"""Moving bytes over asyncio streams, for any role: copy one stream into another, join two
connections, and the two loops of a throughput test.

Theory of operation: :func:`pipe` copies until EOF and passes the EOF on as a half-close, so
:func:`join` (two pipes, one each way) ends only when both directions have ended; a broken
side is aborted rather than closed, which resets the other end instead of pretending a clean
EOF. Backpressure is asyncio's own: every write is followed by ``drain()``, which suspends
only above the transport's high-water mark. :func:`send_repeatedly` and
:func:`receive_until_eof` are the data phase of a speedtest (the same in both roles, only the
direction differs); they know nothing about the test and leave counting and stopping to the
caller's callbacks.

Users: the agent's port forwarding and ``agentconn port-forward`` (:func:`join`), the client
and the agent speedtest (the other two).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["CHUNK", "join", "pipe", "receive_until_eof", "send_repeatedly"]

CHUNK = 256 * 1024   #: bytes :func:`pipe` reads at a time

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy ``reader`` to ``writer`` until EOF, then half-close ``writer``; bytes copied.

    When either side breaks, ``writer`` is aborted and the bytes copied so far are returned.
    """
    total = 0
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            total += len(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()
    return total


async def join(a: StreamPair, b: StreamPair) -> None:
    """Copy both ways until both directions ended, then close both."""
    try:
        await asyncio.gather(pipe(a[0], b[1]), pipe(b[0], a[1]))
    finally:
        for w in (a[1], b[1]):
            w.close()
        for w in (a[1], b[1]):
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()


async def send_repeatedly(writer: asyncio.StreamWriter, block: bytes, *, slice_size: int,
                          more: Callable[[int], bool]) -> None:
    """Write ``block`` again and again until ``more(len(block))``, asked after every whole
    block, returns False.

    The block goes to the transport in slices of ``slice_size`` bytes, each followed by
    ``drain()``: the transport takes a slice without copying when its buffer has room. Raises
    OSError/ConnectionError when the connection breaks; the caller closes it.
    """
    data = memoryview(block)
    size = len(data)
    slices = [data[i:i + slice_size] for i in range(0, size, slice_size)]
    while True:
        for piece in slices:
            writer.write(piece)
            await writer.drain()
        if not more(size):
            return


async def receive_until_eof(reader: asyncio.StreamReader, received: Callable[[int], object], *,
                            read_size: int) -> None:
    """Read until EOF, at most ``read_size`` bytes at a time, calling ``received(n)`` for every
    chunk of ``n`` bytes (the data itself is dropped). Raises OSError/ConnectionError when the
    connection breaks; wrap it in ``asyncio.timeout`` for a deadline."""
    while True:
        data = await reader.read(read_size)
        if not data:
            return
        received(len(data))
