"""``agentconn ping`` to an agent prints what `coder ping` prints (coder ``cli/ping.go``).

Facts of the Go command, pinned here: each pong's RTT is ``dur.Round(time.Millisecond)``
printed by ``time.Duration.String`` (``0s`` under half a millisecond, ``1.5s``, ``1m0s``); a
timeout prints ``ping to "<name>" timed out `` (with a trailing space) on stdout; the command
exits 0 once its ``-n`` pings are done, answered or not; ``-n 0`` pings until interrupted.
Kept deviations, both opt-in: ``--precise`` (unrounded RTTs) and ``--require-pong`` (exit 1
when nothing answered). The peer diagnostics are printed after the last ping whatever its
outcome (coder prints its own only after a final pong).

The CLI runs as a subprocess (the real entry point) with ``open_conn`` replaced by a scripted
connection, so RTTs and timeouts are exact and nothing depends on timing.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
from cli_run import PYTHONPATH, Cli

from agentconn.cli.commands import (
    format_rtt,
    go_duration,
    go_duration_string,
    go_quote,
    go_round,
)

# -- Go's time.Duration, ported --------------------------------------------------------------

#: (nanoseconds, d.String(), d.Round(time.Millisecond).String()), printed by Go 1.19.
GO_DURATIONS = [
    (0, "0s", "0s"),
    (1, "1ns", "0s"),
    (999, "999ns", "0s"),
    (1000, "1µs", "0s"),
    (1500, "1.5µs", "0s"),
    (412345, "412.345µs", "0s"),
    (499999, "499.999µs", "0s"),
    (500000, "500µs", "1ms"),
    (999999, "999.999µs", "1ms"),
    (1000000, "1ms", "1ms"),
    (1499999, "1.499999ms", "1ms"),
    (1500000, "1.5ms", "2ms"),
    (2000000, "2ms", "2ms"),
    (42123456, "42.123456ms", "42ms"),
    (999500000, "999.5ms", "1s"),
    (999499999, "999.499999ms", "999ms"),
    (1000000000, "1s", "1s"),
    (1500000000, "1.5s", "1.5s"),
    (60000000000, "1m0s", "1m0s"),
    (61003000000, "1m1.003s", "1m1.003s"),
    (3600000000000, "1h0m0s", "1h0m0s"),
    (3723004000000, "1h2m3.004s", "1h2m3.004s"),
    (90061001000000, "25h1m1.001s", "25h1m1.001s"),
    (-1500000, "-1.5ms", "-2ms"),
    (-2500000, "-2.5ms", "-3ms"),
    (9223372036854775807, "2562047h47m16.854775807s", "2562047h47m16.854775807s"),
]


@pytest.mark.parametrize(("ns", "string", "rounded"), GO_DURATIONS)
def test_go_duration_string_and_round(ns: int, string: str, rounded: str) -> None:
    assert go_duration_string(ns) == string
    assert go_duration_string(go_round(ns, 1_000_000)) == rounded


def test_rtt_formats() -> None:
    assert format_rtt(0.0421) == go_duration(0.0421) == "42ms"
    assert format_rtt(1.5) == "1.5s"
    assert format_rtt(0.000412) == "0s"  # what coder prints for a loopback pong
    assert format_rtt(0.000412345, precise=True) == "412.345µs"
    assert format_rtt(0.0015) == "2ms"  # halves away from zero, as Go's Round


#: (text, Go's fmt.Sprintf("%q", text)), printed by Go 1.19; "x\udcff" is argv's byte 0xff.
GO_QUOTES = [
    ("dev", '"dev"'), ('a"b\\c', '"a\\"b\\\\c"'), ("tab\there", '"tab\\there"'),
    ("\x01\x7f", '"\\x01\\x7f"'), ("é☃", '"é☃"'), ("\u200b", '"\\u200b"'),
    ("\U0001F600", '"\U0001F600"'), ("x\udcff", '"x\\xff"'), ("me/ws.main", '"me/ws.main"'),
    ("\u00a0", '"\\u00a0"'), ("\a\b\f\n\r\v", '"\\a\\b\\f\\n\\r\\v"'),
]


@pytest.mark.parametrize(("text", "quoted"), GO_QUOTES)
def test_go_quote(text: str, quoted: str) -> None:
    assert go_quote(text) == quoted


# -- the command ------------------------------------------------------------------------------

_SCRIPTED = '''
import os
import sys
import agentconn.cli.__main__ as cli
from agentconn.errors import HandshakeError, NoRouteError, PingTimeoutError

SCRIPT = os.environ["PING_SCRIPT"].split(",")  # RTT seconds, or "timeout"; then repeats


class Scripted:
    agent_address = "fd7a:115c:a1e0::1"
    n = 0

    async def ping(self, timeout):
        step = SCRIPT[min(self.n, len(SCRIPT) - 1)]
        self.n += 1
        if step == "timeout":
            raise PingTimeoutError("no reply")
        if step == "noroute":
            raise NoRouteError("no route to the agent")
        if step == "nohandshake":
            raise HandshakeError("no WireGuard handshake")
        return float(step), True, {}

    def get_peer_diagnostics(self):
        return {"peer": {"public_key": "KEY=", "endpoint": "192.0.2.1:51820",
                         "last_handshake_unix": 1, "rx_bytes": 1, "tx_bytes": 2}}

    async def close(self):
        pass


async def open_conn(args):
    conn = Scripted()
    conn.agent_id = args.agent_id
    return conn


cli.open_conn = open_conn
sys.exit(cli.main())
'''


@pytest.fixture
def scripted(cli: Cli, tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "scripted_ping.py").write_text(_SCRIPTED)
    agent_id = str(uuid.uuid4())

    def run(script: str, *args: str):  # type: ignore[no-untyped-def]
        return cli("ping", "--config", "client.conf", "--agent-id", agent_id, "--wait", "0s",
                   *args, module="scripted_ping",
                   env={"PING_SCRIPT": script,
                        "PYTHONPATH": os.pathsep.join([str(tmp_path), PYTHONPATH])})

    run.agent_id = agent_id  # type: ignore[attr-defined]
    return run


def test_pongs_are_printed_as_coder_prints_them(scripted) -> None:  # type: ignore[no-untyped-def]
    result = scripted("0.000412,0.0421,1.5", "-n", "3")
    assert (result.code, result.err) == (0, ""), result
    lines = result.out.splitlines()
    assert re.fullmatch(r"p2p connection established in (0s|\d+ms|[\d.]+s)", lines[0]), lines
    name = f"agent {scripted.agent_id}"
    assert lines[1:4] == [f"pong from {name} p2p via 192.0.2.1:51820 in 0s",
                          f"pong from {name} p2p via 192.0.2.1:51820 in 42ms",
                          f"pong from {name} p2p via 192.0.2.1:51820 in 1.5s"]
    assert lines[-1].endswith("; 3/3 pongs"), lines


def test_precise_is_opt_in(scripted) -> None:  # type: ignore[no-untyped-def]
    result = scripted("0.000412345", "-n", "1", "--precise")
    assert result.code == 0, result
    assert result.out.splitlines()[1].endswith(" in 412.345µs"), result.out


def test_timeouts_exit_zero_as_coder(scripted) -> None:  # type: ignore[no-untyped-def]
    result = scripted("timeout", "-n", "2", "-t", "10ms")
    assert (result.code, result.err) == (0, ""), result
    lines = result.out.splitlines()
    assert lines[:2] == [f"ping to agent {scripted.agent_id} timed out "] * 2, lines
    assert lines[-1].endswith("; 0/2 pongs"), lines


def test_other_failures_are_printed_and_pinging_goes_on(  # type: ignore[no-untyped-def]
        scripted) -> None:
    result = scripted("nohandshake,0.003", "-n", "2")
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0] == f"ping to agent {scripted.agent_id} failed no WireGuard handshake", lines
    assert lines[2].endswith(" in 3ms"), lines


def test_require_pong_makes_silence_an_error(scripted) -> None:  # type: ignore[no-untyped-def]
    assert scripted("timeout", "-n", "2", "--require-pong").code == 1
    # one answer is enough
    result = scripted("timeout,0.002", "-n", "2", "--require-pong")
    assert result.code == 0, result
    assert result.out.splitlines()[-1].endswith("; 1/2 pongs"), result.out


def test_num_zero_pings_until_stopped(scripted) -> None:  # type: ignore[no-untyped-def]
    """``-n 0``: no end of its own (as coder's loop, which only stops at n == num); the
    scripted connection ends it by failing with no route after 5 pongs."""
    result = scripted("0.001,0.001,0.001,0.001,0.001,noroute", "-n", "0")
    pongs = [line for line in result.out.splitlines() if line.startswith("pong from ")]
    assert len(pongs) == 5, result
    assert result.code == 2 and "no route" in result.err, result
