"""Our yamux against hashicorp/yamux (Debian's source tree) over TCP loopback, both roles.

Every test runs twice: our client ↔ Go server, and Go client ↔ our server. The Go side is
``yamux_peer/main.go`` with ``yamux.DefaultConfig()`` (Coder's configuration, §2.7).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from peer import GoPeer, pattern, sha

from agentconn.coder.errors import YamuxError, YamuxSessionClosed, YamuxStreamReset
from agentconn.coder.yamux import Config, Role
from agentconn.coder.yamux_aio import YamuxStream

pytestmark = pytest.mark.timeout(60)

ROLES = [pytest.param(Role.CLIENT, id="our-client"), pytest.param(Role.SERVER, id="our-server")]
MiB = 1 << 20


async def _write_all(stream: YamuxStream, data: bytes, eof: bool = True) -> None:
    view = memoryview(data)
    for start in range(0, len(view), 200_000):
        stream.write(view[start : start + 200_000])
        await stream.drain()
    if eof:
        stream.write_eof()


async def _echo_back(stream: YamuxStream) -> None:
    while chunk := await stream.read(100_000):
        stream.write(chunk)
        await stream.drain()
    stream.write_eof()


@pytest.mark.parametrize("role", ROLES)
async def test_concurrent_transfers_with_sha256(yamux_peer_binary: Path, role: Role) -> None:
    """echo 3 MiB, sink 8 MiB, source 8 MiB, and a 1 MiB stream the Go side opens, at once.

    Each is larger than the 256 KiB window, so both directions wait for WindowUpdates."""
    async with GoPeer(yamux_peer_binary, role) as peer:
        session = peer.session
        assert session is not None

        async def echo() -> None:
            data = pattern(3 * MiB)
            stream = await peer.command("echo")
            writer = asyncio.create_task(_write_all(stream, data))
            got = await stream.read()
            await writer
            assert sha(got) == sha(data)

        async def sink() -> None:
            data = pattern(8 * MiB)
            stream = await peer.command("sink")
            await _write_all(stream, data)
            assert (await stream.read()).decode().strip() == sha(data)

        async def source() -> None:
            stream = await peer.command(f"source {8 * MiB}")
            got = await stream.read()
            stream.write_eof()
            assert sha(got) == sha(pattern(8 * MiB))

        async def go_opens() -> None:
            serve = asyncio.create_task(_serve_echo(session_accept=session.accept_stream))
            answer = await peer.ask(f"open {MiB}")
            assert answer == f"ok {sha(pattern(MiB))}\n"
            await serve

        await asyncio.wait_for(asyncio.gather(echo(), sink(), source(), go_opens()), 40)
        assert session.stats.protocol_errors == 0  # type: ignore[attr-defined]
        assert not session.closed


async def _serve_echo(session_accept: object) -> None:
    stream = await session_accept()  # type: ignore[operator]
    await _echo_back(stream)


@pytest.mark.parametrize("role", ROLES)
async def test_half_close_both_ways(yamux_peer_binary: Path, role: Role) -> None:
    async with GoPeer(yamux_peer_binary, role) as peer:
        # we FIN first and keep reading: Go echoes everything and FINs after us
        stream = await peer.command("echo")
        stream.write(b"abc" * 1000)
        stream.write_eof()
        assert await asyncio.wait_for(stream.read(), 10) == b"abc" * 1000
        assert stream.at_eof()

        # Go FINs first (source) and keeps reading: we write after its FIN, then FIN
        stream = await peer.command(f"source {300_000}")
        assert await asyncio.wait_for(stream.read(), 10) == pattern(300_000)
        stream.write(b"x" * 100_000)
        await stream.drain()
        stream.write_eof()
        with pytest.raises(YamuxError):
            stream.write(b"late")


@pytest.mark.parametrize("role", ROLES)
async def test_rst_from_us_reaches_go(yamux_peer_binary: Path, role: Role) -> None:
    async with GoPeer(yamux_peer_binary, role) as peer:
        session = peer.session
        assert session is not None
        # a stream we opened: Go's Read fails with "connection reset" and reports it
        stream = await peer.command("wait")
        stream.write(b"some data")
        await stream.drain()
        await asyncio.sleep(0.05)
        stream.abort()
        report = await asyncio.wait_for(session.accept_stream(), 10)
        assert (await asyncio.wait_for(report.read(), 10)) == b"report err connection reset\n"

        # a stream Go opened: we read its first byte, then reset it
        async def reset_incoming() -> None:
            incoming = await session.accept_stream()
            assert await incoming.read(1) == b"x"
            incoming.abort()
            with pytest.raises(YamuxStreamReset):
                incoming.write(b"y")

        task = asyncio.create_task(reset_incoming())
        assert await peer.ask("openwait") == "err connection reset\n"
        await task


@pytest.mark.parametrize("role", ROLES)
async def test_rst_from_go_when_backlog_overflows(yamux_peer_binary: Path, role: Role) -> None:
    """Go RSTs new streams beyond its accept backlog of 256 (``incomingStream``)."""
    async with GoPeer(yamux_peer_binary, role) as peer:
        assert await peer.ask("hold 1500") == "ok\n"
        streams = []
        for _ in range(300):
            stream = await peer.command("echo")
            stream.write_eof()
            streams.append(stream)

        async def outcome(stream: YamuxStream) -> str:
            try:
                await stream.read()
            except YamuxStreamReset:
                return "reset"
            return "eof"

        results = await asyncio.wait_for(asyncio.gather(*map(outcome, streams)), 30)
        resets = results.count("reset")
        assert 300 - 258 <= resets <= 300 - 256, resets
        # the refused ones are the last opened
        assert set(results[-resets:]) == {"reset"}


@pytest.mark.parametrize("role", ROLES)
async def test_ping_both_ways_and_keepalive(yamux_peer_binary: Path, role: Role) -> None:
    config = Config(keepalive_interval=0.1)
    async with GoPeer(yamux_peer_binary, role, keepalive="100ms", config=config) as peer:
        session = peer.session
        assert session is not None
        rtt = await asyncio.wait_for(session.ping(), 10)
        assert rtt >= 0
        assert await peer.ask("ping") == "ok\n"
        # Go's keepalive pings us every 100 ms and we answer; ours every 100 ms get answers
        stats = session.stats
        for _ in range(200):
            if stats.pings_received >= 3:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        assert stats.pings_received >= 3  # type: ignore[attr-defined]
        await asyncio.sleep(0.35)  # a few of our keepalives round-trip
        assert not session.closed
        assert await peer.ask("ping") == "ok\n"


@pytest.mark.parametrize("role", ROLES)
async def test_go_away_both_ways(yamux_peer_binary: Path, role: Role) -> None:
    async with GoPeer(yamux_peer_binary, role) as peer:
        session = peer.session
        assert session is not None
        # ours: Go may no longer open streams to us
        await session.go_away()
        assert await peer.ask("open 10") == "err remote end is not accepting connections\n"
        # Go's: we may no longer open streams to Go
        assert await peer.ask("goaway") == "ok\n"
        with pytest.raises(YamuxError, match="not accepting"):
            await session.open_stream()
        assert not session.closed


@pytest.mark.parametrize("role", ROLES)
async def test_go_closes_the_session(yamux_peer_binary: Path, role: Role) -> None:
    async with GoPeer(yamux_peer_binary, role) as peer:
        session = peer.session
        assert session is not None
        pending = await peer.command("echo")
        await peer.command("close")
        await asyncio.wait_for(session.wait_closed(), 10)
        assert isinstance(session.error, YamuxSessionClosed)
        with pytest.raises(YamuxSessionClosed):
            await pending.read()
        with pytest.raises(YamuxSessionClosed):
            await session.accept_stream()
