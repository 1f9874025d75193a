"""The shared asyncio adapter around one ``h11.Connection`` on a (reader, writer) pair.

h11 is the sans-IO core: bytes in through ``receive_data``, events out through
``next_event``. This wrapper only reads when h11 says ``NEED_DATA``, writes what ``send``
returns, and turns h11's exceptions and read deadlines into :mod:`agentconn.web.errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import h11

from .errors import HttpTimeoutError, LocalProtocolError, RemoteProtocolError

__all__ = ["READ_SIZE", "H11Stream", "wait_for"]

READ_SIZE = 65536

_T = TypeVar("_T")


async def wait_for(aw: Awaitable[_T], timeout: float | None, what: str) -> _T:
    """Await ``aw`` for at most ``timeout`` seconds (``None``: forever).

    Raises :class:`HttpTimeoutError` (a ``TimeoutError``) naming ``what`` when it expires.
    """
    if timeout is None:
        return await aw
    try:
        async with asyncio.timeout(timeout):
            return await aw
    except TimeoutError as exc:
        if isinstance(exc, HttpTimeoutError):
            raise
        raise HttpTimeoutError(f"{what}: no progress within {timeout} s") from exc


class H11Stream:
    """One h11 connection bound to an asyncio (StreamReader, StreamWriter) pair."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h11.Connection,
        *,
        read_size: int = READ_SIZE,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.read_size = read_size
        self.closed = False

    def peer(self) -> str:
        """The peer address as text, for error messages."""
        try:
            return str(self.writer.get_extra_info("peername"))
        except Exception:  # noqa: BLE001 - any transport may lack it
            return "?"

    async def next_event(
        self, timeout: float | None = None, *, deadline: float | None = None
    ) -> type[h11.PAUSED | h11.NEED_DATA] | h11.Event:
        """Return h11's next event, reading from the peer while h11 needs data.

        ``timeout`` bounds each read (an idle timeout); ``deadline`` (``loop.time()`` seconds)
        bounds the whole call, so a peer trickling bytes cannot extend it (slow-loris).
        Raises :class:`RemoteProtocolError` on bad input and :class:`HttpTimeoutError`.
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(
                    f"peer {self.peer()} broke HTTP/1.1: {exc}", status_hint=exc.error_status_hint
                ) from exc
            if event is not h11.NEED_DATA:
                return event
            limit = timeout
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise HttpTimeoutError(f"peer {self.peer()}: deadline passed")
                limit = remaining if limit is None else min(limit, remaining)
            data = await wait_for(self._read(), limit, "HTTP read")
            try:
                self.conn.receive_data(data)
            except h11.RemoteProtocolError as exc:  # data after the peer closed
                raise RemoteProtocolError(str(exc), status_hint=exc.error_status_hint) from exc

    async def _read(self) -> bytes:
        try:
            return await self.reader.read(self.read_size)
        except ConnectionError:  # a reset is an EOF to h11 (TimeoutError must pass through)
            return b""

    async def send(self, event: h11.Event, timeout: float | None = None) -> None:
        """Serialize ``event`` with h11, write it and wait for the writer to drain.

        Body ``Data`` goes out without an extra copy (h11's data passthrough). Raises
        :class:`LocalProtocolError` if h11 refuses the event and ``ConnectionError`` when the
        peer is gone.
        """
        try:
            pieces = self.conn.send_with_data_passthrough(event)
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(str(exc)) from exc
        if pieces:
            self.writer.writelines(pieces)
            await wait_for(self.writer.drain(), timeout, "HTTP write")

    async def close_lingering(self, linger: float = 0.5, limit: int = 256 * 1024) -> None:
        """Half-close, then discard what the peer still sends (up to ``linger`` seconds and
        ``limit`` bytes) before closing: closing with unread input makes TCP answer with a
        reset, which can destroy a final error response before the peer reads it (Go's
        ``closeWriteAndWait`` does the same)."""
        if self.closed:
            return
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + linger
            left = limit
            while left > 0:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                data = await asyncio.wait_for(self.reader.read(min(left, 65536)), remaining)
                if not data:
                    break
                left -= len(data)
        except (TimeoutError, OSError, RuntimeError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close the transport (idempotent); does not wait."""
        if not self.closed:
            self.closed = True
            self.writer.close()
