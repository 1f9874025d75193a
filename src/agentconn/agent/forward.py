"""Forwarding of tunnel TCP ports the agent does not serve to the workspace loopback.

Theory of operation (agent-api.md §2.2): the agent listens with the TCP stack's catch-all
listener (port 0), which takes a SYN for every port that has no listener of its own (the API,
SSH, PTY and speedtest ports keep theirs). Each accepted connection is joined to a kernel TCP
connection to ``127.0.0.1:<the dialed port>``; bytes are copied both ways with backpressure
and half-closes passed on. If nothing listens on the loopback port, the tunnel connection is
reset (the dialer sees ECONNRESET; gVisor's forwarder, which dials before answering the SYN,
gives ECONNREFUSED instead). This is what ``AgentConn.dial`` and port-forwarding rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from agentconn.agent.options import AgentOptions

if TYPE_CHECKING:
    from agentconn.aio.tunnel import Tunnel

__all__ = ["LoopbackForwarder", "pipe"]

_log = logging.getLogger("agentconn.agent.forward")
_CHUNK = 256 * 1024


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy ``reader`` to ``writer`` until EOF, then half-close ``writer``; bytes copied."""
    total = 0
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            total += len(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()
    return total


async def join(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
               b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Copy both ways until both directions ended, then close both."""
    try:
        await asyncio.gather(pipe(a[0], b[1]), pipe(b[0], a[1]))
    finally:
        for w in (a[1], b[1]):
            w.close()
        for w in (a[1], b[1]):
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()


class LoopbackForwarder:
    """The catch-all TCP listener of an agent; ``host`` is the loopback address dialed."""

    def __init__(self, options: AgentOptions, *, host: str = "127.0.0.1") -> None:
        self.options = options
        self.host = host
        self.forwarded = 0
        self.refused = 0
        self._server: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, tunnel: Tunnel) -> None:
        self._server = await tunnel.start_server(self._accept, 0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        port = writer.get_extra_info("sockname")[1]
        try:
            try:
                local = await asyncio.wait_for(asyncio.open_connection(self.host, port), 10)
            except (OSError, asyncio.TimeoutError) as e:
                self.refused += 1
                _log.debug("forward to %s:%d failed: %s", self.host, port, e)
                writer.transport.abort()
                return
            self.forwarded += 1
            await join((reader, writer), local)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
