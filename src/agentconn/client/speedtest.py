"""Speedtest client: Go ``AgentConn.Speedtest`` / ``speedtest.RunClientWithConn``
(tailnet.md §6, agent-api.md §7).

:func:`speedtest` dials the agent's port 3 through the AgentConn's tunnel; :func:`run_client`
runs the protocol over any asyncio stream pair (a kernel TCP connection to a Tailscale
``speedtest`` server works too). Results are computed locally, exactly as Go's ``doTest`` does.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TYPE_CHECKING

from agentconn.aio.relay import receive_until_eof, send_repeatedly
from agentconn.errors import TunnelError
from agentconn.proto.ports import AGENT_SPEEDTEST_PORT
from agentconn.proto.speedtest import (
    BLOCK_SIZE,
    MAX_DURATION,
    MIN_DURATION,
    READ_SIZE,
    RECEIVE_DEADLINE_FACTOR,
    WRITE_SLICE,
    Direction,
    IntervalMeter,
    SpeedtestConfig,
    SpeedtestError,
    SpeedtestResult,
    parse_response,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentconn.client.conn import AgentConn
    from agentconn.proto.speedtest import OnInterval

__all__ = ["SpeedtestError", "SpeedtestResult", "run_client", "speedtest"]

STREAM_LIMIT = 1 << 16      #: StreamReader limit (pauses at 2x); larger is slower (cache)
RESPONSE_TIMEOUT = 30.0     #: seconds to wait for the server's ``{}``


def clamp_duration(duration: float, min_duration: float = MIN_DURATION,
                   max_duration: float = MAX_DURATION) -> float:
    """The duration a caller should request: ``duration`` within the library's limits
    (5-30 s by default, as Tailscale's CLI enforces)."""
    return min(max(duration, min_duration), max_duration)


async def speedtest(conn: AgentConn, direction: str | Direction = "down",
                    duration: float = 5.0, *, on_interval: OnInterval | None = None,
                    min_duration: float = MIN_DURATION,
                    max_duration: float = MAX_DURATION) -> SpeedtestResult:
    """Run one speedtest against the agent of ``conn`` and return this side's results.

    ``direction``: "down" (the agent sends) or "up" (we send). ``duration`` (seconds) is
    clamped to ``[min_duration, max_duration]`` (5-30 s). ``on_interval`` is called with each
    ~1 s :class:`~agentconn.proto.speedtest.SpeedtestInterval` as it closes. Like Go, waits
    until the agent answers a TSMP ping first. Raises :class:`TunnelError` when it does not,
    :class:`SpeedtestError` when the agent refuses or the test breaks, and ValueError for a
    bad direction.
    """
    way = direction if isinstance(direction, Direction) else Direction.from_name(direction)
    seconds = clamp_duration(duration, min_duration, max_duration)
    if not await conn.await_reachable(conn.timeout):
        raise TunnelError(f"workspace agent {conn.agent_address} not reachable within "
                          f"{conn.timeout:g} s")
    try:
        reader, writer = await conn.tunnel.open_connection(
            str(conn.agent_address), AGENT_SPEEDTEST_PORT, limit=STREAM_LIMIT)
    except OSError as exc:
        raise SpeedtestError(f"cannot connect to the speedtest server at "
                             f"[{conn.agent_address}]:{AGENT_SPEEDTEST_PORT}: {exc}") from exc
    return await run_client(reader, writer, way, seconds, on_interval=on_interval)


async def run_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     direction: str | Direction = "down", duration: float = 5.0, *,
                     on_interval: OnInterval | None = None) -> SpeedtestResult:
    """Go ``RunClientWithConn`` over an open stream pair; always closes ``writer``.

    Sends the config for ``duration`` seconds (not clamped here; Go's client does not
    either), checks the answer, then receives to EOF (download; deadline 4 × duration) or
    sends random 2 MiB blocks for ``duration`` (upload). After an upload it half-closes and
    waits (up to 3 × duration) for the server to finish reading and close, so the bytes it
    counted have arrived before the caller tears the tunnel down. Raises SpeedtestError.
    """
    way = direction if isinstance(direction, Direction) else Direction.from_name(direction)
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration!r}")
    try:
        writer.write(SpeedtestConfig.for_test(way, duration).emit())
        await writer.drain()
        try:
            async with asyncio.timeout(RESPONSE_TIMEOUT):
                line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise SpeedtestError(f"speedtest server closed the connection without answering "
                                 f"the config (got {exc.partial[:200]!r})") from None
        except asyncio.LimitOverrunError:
            raise SpeedtestError("speedtest server answered with an over-long line") from None
        except TimeoutError:
            raise SpeedtestError(f"speedtest server did not answer the config within "
                                 f"{RESPONSE_TIMEOUT:g} s") from None
        error = parse_response(line)
        if error:
            raise SpeedtestError(error, server_error=error)
        # Anything after the response line is already download data and is counted (§6.2.4).
        if way is Direction.DOWNLOAD:
            meter = IntervalMeter(time.monotonic())
            try:
                async with asyncio.timeout(RECEIVE_DEADLINE_FACTOR * duration):
                    await receive_until_eof(reader, _counter(meter, duration, on_interval),
                                            read_size=READ_SIZE)
            except TimeoutError:
                raise SpeedtestError(f"download did not end within "
                                     f"{RECEIVE_DEADLINE_FACTOR * duration:g} s") from None
        else:
            block = os.urandom(BLOCK_SIZE)
            meter = IntervalMeter(time.monotonic())
            try:
                await send_repeatedly(writer, block, slice_size=WRITE_SLICE,
                                      more=_counter(meter, duration, on_interval))
            except OSError as exc:
                raise SpeedtestError(f"upload failed: {exc}") from exc
            await _finish_upload(reader, writer, (RECEIVE_DEADLINE_FACTOR - 1) * duration)
        return meter.finish(way, duration)
    except OSError as exc:
        raise SpeedtestError(f"speedtest connection failed: {exc}") from exc
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _counter(meter: IntervalMeter, duration: float, on_interval: OnInterval | None
             ) -> Callable[[int], bool]:
    """Count moved bytes into ``meter`` (reporting each closed interval to ``on_interval``);
    True while the test has run for at most ``duration`` seconds."""
    def count(nbytes: int) -> bool:
        interval = meter.add(nbytes, time.monotonic())
        if interval is not None and on_interval is not None:
            on_interval(interval)
        return meter.elapsed <= duration

    return count


async def _finish_upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         timeout: float) -> None:
    """Half-close and wait for the server's close: it reads to EOF, then closes."""
    if not writer.can_write_eof():
        return
    writer.write_eof()
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(timeout):
            while await reader.read(1 << 16):
                pass
