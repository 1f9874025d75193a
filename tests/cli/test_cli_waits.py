"""Issue 16, waiting for an agent: progress on stderr while an agent reached with ``--config``
does not answer, and a final error naming what was tried and what to check; keys made for
another agent id; ``ping``'s coder flags; ``speedtest --direct``. The real entry point in a
subprocess, with ``AGENTCONN_CONNECT_TIMEOUT`` shortening the wait (no timed assertions)."""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

import pytest
from cli_run import Cli
from test_cli_polish import RunningAgent, _free_port, agent  # noqa: F401  (the fixture)

SHORT = {"AGENTCONN_CONNECT_TIMEOUT": "2"}


def _pair(cli: Cli, out: Path, agent_id: str) -> int:
    port = _free_port(socket.SOCK_DGRAM)
    result = cli("pair", "--agent-id", agent_id, "--out", str(out), "--port", str(port))
    assert result.code == 0, result
    return port


@pytest.mark.parametrize("command", [["speedtest"], ["ping", "-n", "1"], ["pty"], ["ssh"],
                                     ["port-forward", "-p", "{port}:22"]])
def test_an_agent_that_is_not_running(cli: Cli, tmp_path: Path, command: list[str]) -> None:
    agent_id = str(uuid.uuid4())
    port = _pair(cli, tmp_path, agent_id)
    result = cli(command[0], "--config", str(tmp_path / "client.conf"), "--agent-id",
                 agent_id, *(arg.format(port=_free_port()) for arg in command[1:]), env=SHORT)
    assert result.code == 1, result
    lines = result.err_lines
    assert lines[0].startswith(f"Waiting for agent {agent_id} through "), result
    last = lines[-1]
    assert last.startswith(f"agentconn {command[0]}: agent {agent_id} ("), result
    assert "not reachable within 2 s: sent WireGuard handshakes to " in last
    assert f":{port}, no answer came back (rx 0 B)" in last
    assert "is `agentconn agent` running there?" in last
    assert f"is UDP port {port} reachable" in last and "do the keys match" in last
    assert "Traceback" not in result.err


def test_keys_for_another_agent_id(cli: Cli, tmp_path: Path) -> None:
    _pair(cli, tmp_path, str(uuid.uuid4()))
    other = str(uuid.uuid4())
    result = cli("speedtest", "--config", str(tmp_path / "client.conf"), "--agent-id", other,
                 env=SHORT)
    assert result.code == 1, result
    last = result.err_lines[-1]
    assert re.fullmatch(
        rf"agentconn speedtest: the config's peer does not route to agent {other} \(its "
        r"address fd7a:[0-9a-f:]+ is not in AllowedIPs [^)]+\): was the config made for "
        r"another agent id\?", last), result


def test_handshake_but_no_answer_names_the_agent_id(cli: Cli, tmp_path: Path,
                                                    agent: RunningAgent) -> None:  # noqa: F811
    """The config routes every Coder address to the agent's peer, the agent runs under
    another id: the handshake works, the pings go unanswered."""
    conf = tmp_path / "wide.conf"
    conf.write_text(re.sub(r"(?m)^AllowedIPs = .*$", "AllowedIPs = fd7a:115c:a1e0::/48",
                           agent.client_conf.read_text()))
    other = str(uuid.uuid4())
    result = cli("ping", "--config", str(conf), "--agent-id", other, "-n", "1", env=SHORT)
    assert result.code == 1, result
    last = result.err_lines[-1]
    assert last.startswith(f"agentconn ping: agent {other}: WireGuard handshake OK with "), result
    assert last.endswith("within 2 s: the agent may run under another --agent-id"), result


def test_ping_takes_coders_flags(cli: Cli, agent: RunningAgent) -> None:  # noqa: F811
    result = cli("ping", *agent.target(), "--num", "2", "-t", "2s", "--wait", "100ms")
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert re.fullmatch(r"p2p connection established in (\d+ms|0s|[\d.]+s)", lines[0]), lines
    pongs = [line for line in lines if line.startswith("pong from ")]
    assert len(pongs) == 2, lines
    # Go's Duration.Round(time.Millisecond).String(): 0s under half a millisecond
    assert all(re.search(r" p2p via \S+ in (0s|\d+ms|[\d.]+s)$", p) for p in pongs), pongs
    assert "2/2 pongs" in result.out


def test_ping_defaults_are_coders(cli: Cli) -> None:
    help_text = cli("ping", "--help").out
    for flag in ("--num", "--wait", "--timeout", "-t DURATION", "default 10", "default 5s",
                 "default 1s"):
        assert flag in help_text, help_text


def test_speedtest_direct_on_a_static_tunnel(cli: Cli, agent: RunningAgent) -> None:  # noqa: F811
    result = cli("speedtest", *agent.target(), "-d", "--time", "1s")
    assert result.code == 0, result
    assert re.fullmatch(r"\d+ms via direct", result.err_lines[0]), result
    assert "Starting a 1s" in result.err
