"""Speedtest (tailnet.md §6, agent-api.md §7): our client against our agent's server on port 3.

Client and agent talk through two userspace WireGuard tunnels over loopback UDP; bad configs
are written raw on a tunnel TCP connection and must get the spec's error line, then EOF. The
CLI runs as a real subprocess against an Agent in this process. Durations here go below the
library's 5 s minimum through the ``min_duration`` parameters; nothing asserts on speed.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import sys
from pathlib import Path

import pytest
from agent_pair import AGENT_ID, agent_pair, make_options, pair_configs

import _wgcore
from agentconn.agent.agent import Agent
from agentconn.agent.services.speedtest import SpeedtestServer
from agentconn.cli.speedtest import format_table, parse_duration
from agentconn.client.speedtest import clamp_duration, run_client, speedtest
from agentconn.proto.ports import AGENT_SPEEDTEST_PORT
from agentconn.proto.speedtest import (
    BLOCK_SIZE,
    MIN_INTERVAL,
    Direction,
    IntervalMeter,
    SpeedtestConfig,
    SpeedtestError,
    SpeedtestInterval,
    SpeedtestResult,
    parse_config_prefix,
)

FAST = 0.2      # the lower clamp the tests use instead of 5 s


def check_result(result: SpeedtestResult, direction: Direction, duration: float) -> None:
    """The shape Go's doTest produces (§6.3)."""
    assert result.direction is direction and result.duration == duration
    total = result.total
    assert total is not None and total.total and total.start == 0.0
    assert total.bytes == result.bytes > 0
    assert result.results == [*result.intervals, total]
    ivs = result.intervals
    assert ivs and ivs[0].start == 0.0
    for a, b in itertools.pairwise(ivs):
        assert a.end == b.start and not a.total
        assert a.seconds >= 1.0                  # only the trailing one may be shorter
    assert ivs[-1].seconds > MIN_INTERVAL
    interval_sum = sum(i.bytes for i in ivs)
    if ivs[-1].end == total.end:
        assert interval_sum == total.bytes
    else:   # Go drops a trailing interval of <= 10 ms but counts its bytes in the total
        assert total.end - ivs[-1].end <= MIN_INTERVAL and interval_sum <= total.bytes
    for r in result.results:
        assert r.mbits_per_second() == pytest.approx(r.bytes * 8 / 1e6 / r.seconds)
        assert r.throughput == pytest.approx(r.bytes * 8 / r.seconds)


@pytest.mark.parametrize("direction", ["down", "up"])
async def test_both_directions_counts_agree(tmp_path: Path, direction: str) -> None:
    async with agent_pair(tmp_path) as p:
        server = SpeedtestServer(p.agent.options, min_duration=FAST)
        await server.start(p.agent.tunnel)
        try:
            seen: list[SpeedtestInterval] = []
            result = await speedtest(p.conn, direction, 2.2, min_duration=FAST,
                                     on_interval=seen.append)
            await asyncio.wait_for(server.wait_idle(), 30)
        finally:
            await server.close()
    way = Direction.from_name(direction)
    check_result(result, way, 2.2)
    assert seen == [i for i in result.intervals if i.seconds >= 1.0]
    assert len(seen) >= 2
    assert result.bytes % BLOCK_SIZE == 0          # the sender writes whole blocks
    [session] = server.sessions
    assert session.error is None and session.direction is way and session.duration == 2.2
    assert session.bytes == result.bytes
    assert session.result is not None
    check_result(session.result, way, 2.2)
    assert session.result.bytes == result.bytes
    if way is Direction.DOWNLOAD:
        assert (server.bytes_sent, server.bytes_received) == (result.bytes, 0)
    else:
        assert (server.bytes_sent, server.bytes_received) == (0, result.bytes)


async def _raw_exchange(p: object, payload: bytes, *, eof: bool = False) -> bytes:
    """Write ``payload`` to port 3 and return everything the server sends until it closes."""
    tunnel = p.client_tunnel  # type: ignore[attr-defined]
    conn = p.conn  # type: ignore[attr-defined]
    assert await conn.await_reachable(10)
    reader, writer = await tunnel.open_connection(str(conn.agent_address),
                                                  AGENT_SPEEDTEST_PORT)
    writer.write(payload)
    if eof:
        writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


MISMATCH = "version mismatch! Server is version 2, client is version {}"
BAD_CONFIGS = [
    (b'{"version":1,"time":5000000000,"direction":0}\n', MISMATCH.format(1)),
    (b'{"version":3,"time":5000000000,"direction":1}\n', MISMATCH.format(3)),
    (b'{"time":5000000000,"direction":0}\n', MISMATCH.format(0)),     # missing key is zero
    (b"null\n", MISMATCH.format(0)),
    (b"no\n", "invalid character 'o' in literal null (expecting 'u')"),
    (b"hello world\n", "invalid character 'h' looking for beginning of value"),
    (b'{"version":2 "time":1}\n', "invalid character '\"' after object key:value pair"),
    (b"[2,5000000000,0]\n", "json: cannot unmarshal array into Go value of type speedtest.config"),
    (b'"version"\n', "json: cannot unmarshal string into Go value of type speedtest.config"),
    (b"2\n", "json: cannot unmarshal number into Go value of type speedtest.config"),
    (b'{"version":"2"}\n',
     "json: cannot unmarshal string into Go struct field config.version of type int"),
    (b'{"version":2,"time":1.5}\n',
     "json: cannot unmarshal number 1.5 into Go struct field config.time of type time.Duration"),
    (b'{"version":2,"time":1000000000,"direction":2}\n',
     "invalid direction 2: expected 0 (download) or 1 (upload)"),
    # hostile nesting (6 kB): a clean error line, not a RecursionError out of the handler
    (b"[" * 3000 + b"]" * 3000 + b"\n", "exceeded max depth"),
    (b'{"version":' + b"[" * 3000 + b"]" * 3000 + b"}\n", "exceeded max depth"),
]


async def test_bad_configs_get_the_error_line_then_close(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    async with agent_pair(tmp_path) as p:
        server = SpeedtestServer(p.agent.options, min_duration=FAST)
        await server.start(p.agent.tunnel)
        try:
            for payload, message in BAD_CONFIGS:
                reply = await _raw_exchange(p, payload)
                assert reply == b'{"error":' + json.dumps(message).encode() + b"}\n", payload
            # nothing at all, then EOF: Go's decoder reports io.EOF
            assert await _raw_exchange(p, b"", eof=True) == b'{"error":"EOF"}\n'
            # a config split over several writes, without the newline, is still read
            reader, writer = await p.client_tunnel.open_connection(
                str(p.conn.agent_address), AGENT_SPEEDTEST_PORT)
            for part in (b'{"vers', b'ion":1,', b'"time":1}'):
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.05)
            assert await asyncio.wait_for(reader.read(), 30) == (
                b'{"error":"' + MISMATCH.format(1).encode() + b'"}\n')
            writer.close()
            await asyncio.wait_for(server.wait_idle(), 30)
        finally:
            await server.close()
    assert len(server.sessions) == len(BAD_CONFIGS) + 2
    assert all(s.error and s.direction is None and s.bytes == 0 for s in server.sessions)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= 40 or r.exc_info]


async def test_upload_that_never_ends_hits_the_deadline(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        server = SpeedtestServer(p.agent.options, min_duration=FAST)
        await server.start(p.agent.tunnel)
        try:
            reader, writer = await p.client_tunnel.open_connection(
                str(p.conn.agent_address), AGENT_SPEEDTEST_PORT)
            writer.write(SpeedtestConfig.for_test(Direction.UPLOAD, FAST).emit())
            assert await asyncio.wait_for(reader.readline(), 30) == b"{}\n"
            writer.write(b"x" * 1000)           # some data, then silence without EOF
            # the server gives up after 4 x duration and closes
            assert await asyncio.wait_for(reader.read(), 30) == b""
            writer.close()
            await asyncio.wait_for(server.wait_idle(), 30)
        finally:
            await server.close()
    [session] = server.sessions
    assert session.direction is Direction.UPLOAD and session.result is None
    assert session.error is not None and "deadline" in session.error


async def test_close_ends_a_running_session(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        server = SpeedtestServer(p.agent.options, min_duration=FAST)
        await server.start(p.agent.tunnel)
        reader, writer = await p.client_tunnel.open_connection(
            str(p.conn.agent_address), AGENT_SPEEDTEST_PORT)
        writer.write(SpeedtestConfig.for_test(Direction.DOWNLOAD, 30).emit())
        assert await asyncio.wait_for(reader.readline(), 30) == b"{}\n"
        assert len(await asyncio.wait_for(reader.read(1 << 16), 30)) > 0
        await asyncio.wait_for(server.close(), 30)
        with pytest.raises(ConnectionError):
            while await asyncio.wait_for(reader.read(1 << 20), 30):
                pass
        writer.close()
    [session] = server.sessions
    assert session.error == "server closed"


async def test_run_client_over_kernel_tcp(tmp_path: Path) -> None:
    """run_client works over any stream pair: here our server's handler on a kernel socket,
    then servers that refuse or hang up."""
    server = SpeedtestServer(make_options(tmp_path), min_duration=FAST)
    kernel = await asyncio.start_server(server.serve_connection, "127.0.0.1", 0)
    port = kernel.sockets[0].getsockname()[1]
    try:
        for direction in (Direction.DOWNLOAD, Direction.UPLOAD):
            result = await run_client(*await asyncio.open_connection("127.0.0.1", port),
                                      direction, 1.1)
            await asyncio.wait_for(server.wait_idle(), 30)
            check_result(result, direction, 1.1)
            assert server.sessions[-1].bytes == result.bytes
    finally:
        kernel.close()
        await kernel.wait_closed()

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b'{"error":"' + MISMATCH.format(2).encode() + b'"}\n')
        writer.close()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()     # read first: closing with unread data would send RST
        writer.close()

    for handler, text in ((refuse, MISMATCH.format(2)), (hang_up, "without answering")):
        other = await asyncio.start_server(handler, "127.0.0.1", 0)
        try:
            with pytest.raises(SpeedtestError, match=re.escape(text)):
                await run_client(*await asyncio.open_connection(
                    "127.0.0.1", other.sockets[0].getsockname()[1]), "down", 1.0)
        finally:
            other.close()
            await other.wait_closed()


# --- sans-IO parts --------------------------------------------------------------------------


def test_config_bytes_match_the_go_client() -> None:
    # tailnet.md §6.4: the Go client's config for a 5 s download
    assert SpeedtestConfig.for_test(Direction.DOWNLOAD, 5.0).emit() == bytes.fromhex(
        "7b2276657273696f6e223a322c2274696d65223a353030303030303030302c22646972656374696f"
        "6e223a307d0a")
    data = SpeedtestConfig.for_test(Direction.UPLOAD, 2.5).emit()
    parsed = parse_config_prefix(data, eof=False)
    assert parsed == (SpeedtestConfig(2, 2_500_000_000, 1), len(data) - 1)
    assert parse_config_prefix(data[:10], eof=False) is None
    assert parse_config_prefix(b'{"Version":2,"TIME":7,"x":[1]}', eof=False) == (
        SpeedtestConfig(2, 7, 0), 30)


def test_interval_meter_follows_go() -> None:
    m = IntervalMeter(0.0)                    # binary-exact times keep the floats exact
    assert m.add(10, 0.5) is None
    first = m.add(10, 1.0)                    # >= 1 s since the start closes an interval
    assert first == SpeedtestInterval(0.0, 1.0, 20)
    assert m.add(5, 1.875) is None
    second = m.add(5, 2.25)
    assert second == SpeedtestInterval(1.0, 2.25, 10)
    m.add(7, 2.25 + 2 ** -8)                  # a 4 ms tail: dropped, but in the total
    r = m.finish(Direction.UPLOAD, 2.0)
    assert r.intervals == (first, second)
    assert r.total == SpeedtestInterval(0.0, 2.25 + 2 ** -8, 37, total=True)
    m2 = IntervalMeter(0.0)
    m2.add(3, 0.5)
    r2 = m2.finish(Direction.DOWNLOAD, 1.0)
    assert r2.intervals == (SpeedtestInterval(0.0, 0.5, 3),)
    assert r2.total == SpeedtestInterval(0.0, 0.5, 3, total=True)
    assert IntervalMeter(0.0).finish(Direction.DOWNLOAD, 1.0).results == []   # nothing moved


def test_table_matches_coder_speedtest() -> None:
    result = SpeedtestResult(Direction.DOWNLOAD, 2.0, (
        SpeedtestInterval(0.0, 1.0, 125_000_000),
        SpeedtestInterval(1.0, 2.0, 12_500_000)),
        SpeedtestInterval(0.0, 2.0, 137_500_000, total=True))
    assert format_table(result).splitlines() == [
        "INTERVAL       THROUGHPUT           ",
        "0.00-1.00 sec  1000.0000 Mbits/sec  ",
        "1.00-2.00 sec  100.0000 Mbits/sec   ",
        "------------------------------------",
        "0.00-2.00 sec  550.0000 Mbits/sec   ",
    ]


def test_duration_parsing_and_clamp() -> None:
    assert parse_duration("5s") == 5.0 and parse_duration("1m30s") == 90.0
    assert parse_duration("500ms") == 0.5 and parse_duration("7") == 7.0
    assert parse_duration("1.5s") == 1.5
    with pytest.raises(Exception, match="invalid duration"):
        parse_duration("5 parsecs")
    assert clamp_duration(1.0) == 5.0 and clamp_duration(99.0) == 30.0
    assert clamp_duration(12.0) == 12.0 and clamp_duration(0.1, 0.2) == 0.2


# --- the CLI as a subprocess ----------------------------------------------------------------


async def test_cli_table_and_json(tmp_path: Path) -> None:
    agent_conf, client_conf, _ = pair_configs()
    agent = Agent(agent_conf, AGENT_ID, options=make_options(tmp_path),
                  listen_host="127.0.0.1", services=())
    await agent.start()
    server = SpeedtestServer(agent.options, min_duration=FAST)
    await server.start(agent.tunnel)
    config = tmp_path / "client.conf"
    config.write_text(client_conf + f"Endpoint = 127.0.0.1:{agent.tunnel.listen_port}\n")
    env = dict(os.environ)
    # the child must import the same _wgcore/agentconn as this process (installed wheel in CI)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(_wgcore.__file__)), env.get("PYTHONPATH", "")])

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentconn.cli.speedtest", "--config", str(config),
            "--agent-id", str(AGENT_ID), "--min-time", "200ms", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        await asyncio.wait_for(server.wait_idle(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    try:
        code, out, err = await cli("--time", "2.1s")
        assert code == 0, err
        assert err.splitlines()[0] == "Starting a 2s download test..."   # stderr, as coder
        lines = out.splitlines()
        assert re.fullmatch(r"INTERVAL +THROUGHPUT +", lines[0]), lines
        row = r"\d+\.\d\d-\d+\.\d\d sec  +\d+\.\d{4} Mbits/sec +"
        assert all(re.fullmatch(row, line) for line in lines[1:-2]), lines
        assert len(lines) >= 5 and set(lines[-2]) == {"-"} and len(lines[-2]) == len(lines[0])
        total = re.fullmatch(r"0\.00-(\d+\.\d\d) sec  +\d+\.\d{4} Mbits/sec +", lines[-1])
        assert total and float(total.group(1)) >= 2.0, lines
        assert "download:" in err and "Mbits/sec" in err       # the progress line
        assert server.sessions[-1].direction is Direction.DOWNLOAD

        code, out, err = await cli("--direction", "up", "--time", "1.2s", "--output", "json")
        assert code == 0, err
        report = json.loads(out)     # coder's shape: {"overall": {...}, "intervals": [...]}
        keys = {"start_time_seconds", "end_time_seconds", "throughput_mbits"}
        assert set(report) == {"overall", "intervals"}
        assert set(report["overall"]) == keys and report["overall"]["start_time_seconds"] == 0
        assert report["overall"]["end_time_seconds"] >= 1.2
        assert report["intervals"] and all(set(i) == keys for i in report["intervals"])
        assert report["intervals"][0]["start_time_seconds"] == 0.0
        assert "Starting a 1s upload test..." in err
        session = server.sessions[-1]
        assert session.direction is Direction.UPLOAD and session.error is None
        assert session.bytes > 0
    finally:
        await server.close()
        await agent.close()


def test_config_prefix_counts_invalid_utf8_as_one_byte_each() -> None:
    """Fuzz finding (fuzz/targets.py speedtest_config): an invalid UTF-8 byte in the config
    was decoded as U+FFFD (3 bytes) and the consumed count overshot the input, so the bytes
    after the config line would have been cut short."""
    from agentconn.proto.speedtest import parse_config_prefix
    data = b'{"er\xabor":"bad direction"}\n'
    config, used = parse_config_prefix(data, True)
    assert used == len(data) - 1        # everything but the newline
    data = b'{"version":1,"x\xff\xfe":"\xc3"}' + b"payload"
    config, used = parse_config_prefix(data, False)
    assert config.version == 1 and data[used:] == b"payload"
