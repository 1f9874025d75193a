"""Reconnecting PTY client: Go ``AgentConn.ReconnectingPTY`` (agent-api.md §5).

:func:`reconnecting_pty` dials the agent's port 2 through the AgentConn's tunnel, sends the init
frame exactly as Go's client builds it (2-byte little-endian length + ``json.Marshal`` of
``AgentReconnectingPTYInit``) and returns a :class:`ReconnectingPty`. Connecting again with the
same ``id`` re-attaches to the same session: the agent first replays up to 64 KiB of recent
output, then sends live output. :func:`open_reconnecting_pty` does the same over any asyncio
stream pair.
"""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from types import TracebackType
from typing import TYPE_CHECKING

from agentconn.errors import TunnelError
from agentconn.proto.ports import AGENT_RECONNECTING_PTY_PORT
from agentconn.proto.rpty import ReconnectingPtyInit, ReconnectingPtyRequest

if TYPE_CHECKING:
    from typing import Self

    from agentconn.client.conn import AgentConn

__all__ = ["ReconnectingPty", "open_reconnecting_pty", "reconnecting_pty"]

STREAM_LIMIT = 1 << 20  #: StreamReader buffer before it pauses the transport
READ_SIZE = 65536


class ReconnectingPty:
    """One connection to a reconnecting-PTY session.

    :meth:`write` types text, :meth:`resize` sets the terminal size (rows, columns),
    :meth:`read` (or ``async for chunk in pty``) returns raw terminal output, ``b""`` /
    end of iteration once the agent closed the connection (the program exited, the session
    was killed, or the agent shut down). Closing this object detaches; the session lives on
    for the agent's timeout and can be re-attached with the same :attr:`id`.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 init: ReconnectingPtyInit) -> None:
        self.init = init
        self._reader = reader
        self._writer = writer

    @property
    def id(self) -> uuid.UUID:
        """The session ID (re-attach with it)."""
        return self.init.id

    async def write(self, data: str) -> None:
        """Type ``data`` into the PTY. Raises ConnectionError when the connection is gone."""
        if data:
            await self._send(ReconnectingPtyRequest(data=data))

    async def resize(self, height: int, width: int) -> None:
        """Resize the PTY to ``height`` rows × ``width`` columns (both 1-65535; the agent
        ignores a size with a zero in it). Raises ValueError outside 0-65535."""
        await self._send(ReconnectingPtyRequest(height=height, width=width))

    async def _send(self, request: ReconnectingPtyRequest) -> None:
        self._writer.write(request.emit())
        await self._writer.drain()

    async def read(self, n: int = READ_SIZE) -> bytes:
        """Up to ``n`` bytes of output; ``b""`` once the agent closed the connection. A
        dropped connection raises ConnectionError (e.g. ConnectionResetError) or TimeoutError."""
        return await self._reader.read(n)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read()
        if not data:
            raise StopAsyncIteration
        return data

    def close(self) -> None:
        """Detach: close the connection (FIN). The session keeps running on the agent."""
        self._writer.close()

    def abort(self) -> None:
        """Drop the connection at once (RST), as a network failure would."""
        self._writer.transport.abort()

    def is_closing(self) -> bool:
        """True once :meth:`close` or :meth:`abort` was called or the transport is closing."""
        return self._writer.is_closing()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed (after :meth:`close`)."""
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
        await self.wait_closed()


async def open_reconnecting_pty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                init: ReconnectingPtyInit) -> ReconnectingPty:
    """Send ``init``'s frame on an open stream pair and return the session connection.
    Closes ``writer`` and re-raises if the frame cannot be sent (ValueError when it is longer
    than 65535 bytes, ConnectionError)."""
    try:
        frame = init.emit()
        writer.write(frame)
        await writer.drain()
    except BaseException:
        writer.close()
        raise
    return ReconnectingPty(reader, writer, init)


async def reconnecting_pty(conn: AgentConn, id: uuid.UUID, height: int, width: int,
                           command: str = "", *, container: str = "", container_user: str = "",
                           backend_type: str = "") -> ReconnectingPty:
    """Attach to (creating if needed) the agent's PTY session ``id`` (Go ``ReconnectingPTY``).

    ``height``/``width`` (rows/columns, 0-65535) size the PTY on attach; ``command`` runs via
    the user's shell in a new session (empty: the login shell; ignored when attaching to an
    existing one); ``container``/``container_user``/``backend_type`` are passed on as Go's
    init options. Like Go, waits until the agent answers a TSMP ping first. Raises
    :class:`TunnelError` when it does not, ValueError for out-of-range sizes or a too-long
    init frame, and OSError when the agent refuses the connection.
    """
    init = ReconnectingPtyInit(id=id, height=height, width=width, command=command,
                               container=container, container_user=container_user,
                               backend_type=backend_type)
    init.emit()  # validate the frame length before dialing
    if not await conn.await_reachable(conn.timeout):
        raise TunnelError(f"workspace agent {conn.agent_address} not reachable within "
                          f"{conn.timeout:g} s")
    reader, writer = await conn.tunnel.open_connection(
        str(conn.agent_address), AGENT_RECONNECTING_PTY_PORT, limit=STREAM_LIMIT)
    return await open_reconnecting_pty(reader, writer, init)
