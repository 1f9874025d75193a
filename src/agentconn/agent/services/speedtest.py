"""The agent's speedtest server on tailnet TCP port 3 (tailnet.md §6.5, agent-api.md §7).

Every accepted connection is its own session: read one JSON config, answer ``{}`` or
``{"error": ...}`` (then close), and do the opposite of the client: send random 2 MiB blocks
for the requested time and close (client download), or read to EOF within 4 × the time
(client upload). The requested time is clamped to ``[min_duration, max_duration]`` so a zero
or huge value can neither expire the read deadline at once nor keep the agent sending.
Each finished session is kept in :attr:`SpeedtestServer.sessions` with what this side counted.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentconn.agent.options import AgentOptions
from agentconn.aio.relay import receive_until_eof, send_repeatedly
from agentconn.proto.ports import AGENT_SPEEDTEST_PORT
from agentconn.proto.speedtest import (
    BLOCK_SIZE,
    MAX_DURATION,
    READ_SIZE,
    RECEIVE_DEADLINE_FACTOR,
    WRITE_SLICE,
    Direction,
    IntervalMeter,
    SpeedtestConfigError,
    SpeedtestResult,
    emit_response,
    parse_config_prefix,
)

if TYPE_CHECKING:
    from agentconn.aio.streams import TunnelServer
    from agentconn.aio.tunnel import Tunnel

__all__ = ["SpeedtestServer", "SpeedtestSession"]

_log = logging.getLogger("agentconn.agent.speedtest")

SERVER_MIN_DURATION = 1.0   #: shortest test the server runs (Go's server has no minimum)
CONFIG_TIMEOUT = 30.0       #: seconds a client may take to send its config line
STREAM_LIMIT = 1 << 16      #: StreamReader limit (pauses at 2x); larger is slower (cache)


@dataclass(slots=True)
class SpeedtestSession:
    """One connection as the server saw it.

    ``direction`` is the client's (None when the config was refused), ``duration`` the
    seconds this server used after clamping, ``bytes`` what it sent or received (received:
    every byte up to EOF), ``result`` its own Go-style interval results, ``error`` the text
    sent to the client or the reason the data phase ended badly.
    """

    peer: Any
    direction: Direction | None = None
    duration: float = 0.0
    bytes: int = 0
    result: SpeedtestResult | None = None
    error: str | None = None


class SpeedtestServer:
    """Tailscale ``net/speedtest`` v2 server for the agent.

    ``SpeedtestServer(options).start(tunnel)`` listens on ``port`` (3) of every tunnel address;
    :meth:`close` stops listening and ends live sessions. ``min_duration``/``max_duration``
    clamp the client's requested time (seconds).
    """

    def __init__(self, options: AgentOptions, *, port: int = AGENT_SPEEDTEST_PORT,
                 min_duration: float = SERVER_MIN_DURATION,
                 max_duration: float = MAX_DURATION,
                 config_timeout: float = CONFIG_TIMEOUT) -> None:
        if not 0 < min_duration <= max_duration:
            raise ValueError(f"need 0 < min_duration <= max_duration, got {min_duration} "
                             f"and {max_duration}")
        self.options = options
        self.port = port
        self.min_duration = min_duration
        self.max_duration = max_duration
        self.config_timeout = config_timeout
        self.sessions: list[SpeedtestSession] = []
        self.bytes_sent = 0
        self.bytes_received = 0
        self._server: TunnelServer | None = None
        self._live: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, tunnel: Tunnel) -> None:
        """Listen on TCP ``port`` of the tunnel. Raises OSError if it is taken."""
        if self._server is not None:
            raise RuntimeError("speedtest server already started")
        self._server = await tunnel.start_server(self.serve_connection, self.port,
                                                 limit=STREAM_LIMIT)

    async def close(self) -> None:
        """Stop listening, reset every live session and wait for their handlers."""
        if self._server is not None:
            self._server.close()
        for task, writer in list(self._live.items()):
            writer.transport.abort()
            task.cancel()
        if self._live:
            await asyncio.gather(*self._live, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def wait_idle(self) -> None:
        """Wait until no session is running (for tests and benchmarks)."""
        await self._idle.wait()

    def clamp(self, duration: float) -> float:
        """The seconds the server will use for a requested ``duration``."""
        return min(max(duration, self.min_duration), self.max_duration)

    async def serve_connection(self, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        """Run one session on an accepted stream pair and close it (any asyncio stream works,
        e.g. ``asyncio.start_server(server.serve_connection, ...)`` on a kernel socket)."""
        task = asyncio.current_task()
        assert task is not None
        self._live[task] = writer
        self._idle.clear()
        session = SpeedtestSession(peer=writer.get_extra_info("peername"))
        try:
            await self._run(session, reader, writer)
        except asyncio.CancelledError:
            session.error = session.error or "server closed"
            raise
        except (OSError, asyncio.IncompleteReadError) as exc:
            session.error = f"connection failed: {exc!r}"
            _log.info("speedtest from %s: %s", session.peer, session.error)
        finally:
            del self._live[task]
            self.sessions.append(session)
            if not self._live:
                self._idle.set()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _run(self, session: SpeedtestSession, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.config_timeout):
                direction, requested = await _read_config(reader)
        except SpeedtestConfigError as exc:
            session.error = str(exc)
            _log.info("speedtest from %s refused: %s", session.peer, exc)
            writer.write(emit_response(str(exc)))
            await writer.drain()
            return
        except TimeoutError:
            session.error = f"no config within {self.config_timeout:g} s"
            return
        session.direction = direction
        session.duration = self.clamp(requested)
        writer.write(emit_response())
        await writer.drain()
        _log.info("speedtest from %s: client %s, %.3g s", session.peer, direction.label,
                  session.duration)
        if direction is Direction.DOWNLOAD:          # the server does the opposite: send
            block = os.urandom(BLOCK_SIZE)
            meter = IntervalMeter(time.monotonic())

            def sent(nbytes: int) -> bool:
                meter.add(nbytes, time.monotonic())
                return meter.elapsed <= session.duration

            await send_repeatedly(writer, block, slice_size=WRITE_SLICE, more=sent)
            self.bytes_sent += meter.bytes
        else:                                        # client uploads: read to EOF
            meter = IntervalMeter(time.monotonic())
            try:
                async with asyncio.timeout(RECEIVE_DEADLINE_FACTOR * session.duration):
                    await receive_until_eof(reader, lambda n: meter.add(n, time.monotonic()),
                                            read_size=READ_SIZE)
            except TimeoutError:
                session.error = (f"receive deadline of "
                                 f"{RECEIVE_DEADLINE_FACTOR * session.duration:g} s passed")
                _log.info("speedtest from %s: %s", session.peer, session.error)
                return
            self.bytes_received += meter.bytes
        session.result = meter.finish(direction, session.duration)
        session.bytes = meter.bytes


async def _read_config(reader: asyncio.StreamReader) -> tuple[Direction, float]:
    """The client's direction and requested seconds; SpeedtestConfigError with the reply
    text otherwise. Bytes after the config are ignored, as Go's buffered decoder does."""
    data = b""
    while True:
        chunk = await reader.read(4096)
        parsed = parse_config_prefix(data + chunk, eof=not chunk)
        data += chunk
        if parsed is not None:
            config = parsed[0]
            return config.check(), config.duration
