"""Issue 14 item 2: SSH sessions and reconnecting PTYs whose child is faster (or slower) than
the agent's plumbing, on asyncio and uvloop, under artificial CPU load.

The race: OpenSSH sends EOF for an empty stdin right after its exec request, so the session
has recorded it before the child's pipes are connected. A fast child (``echo ssh-42``) exits
meanwhile and closes the read end of its stdin; uvloop notices and closes our write
transport, and ``write_eof`` on a closed uvloop transport raised RuntimeError (asyncio's
ignores the call). That escaped the session task: no output relayed, no exit status, the
client waited forever. The first tests make the window deterministic (the child has exited
and the loop has seen its stdin close before the streams are handed over); the others run
fast and slow commands many times while two processes spin on the CPUs.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from test_pty import read_to_eof
from test_pty import served as pty_served
from test_ssh import served

from agentconn.agent.children import Child
from agentconn.client.pty import reconnecting_pty
from agentconn.client.ssh import ssh_client

LOOPS = ["asyncio", "uvloop"]
COMMAND_TIMEOUT = 20.0   # per command; a hang fails the run instead of blocking the suite
ROUNDS = 8               # runs of each kind of command per test under load


def run_on(loop: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


@contextlib.contextmanager
def cpu_load(processes: int = 2) -> Iterator[None]:
    """``processes`` busy loops (both cores of a small CI machine), killed on the way out."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(processes)]
    # and the agent shares one CPU with them, so it is preempted in the middle of things
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    try:
        for b in burners:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(b.pid, {min(affinity)})
        yield
    finally:
        os.sched_setaffinity(0, affinity)
        for b in burners:
            b.kill()
        for b in burners:
            b.wait()


@pytest.fixture
def child_exits_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Child.open_streams hands over the pipes only once the child has exited and the loop
    has seen its stdin's read end close (the window a loaded machine opens by chance)."""
    original = Child.open_streams

    async def late(self: Child) -> tuple[asyncio.StreamWriter | None,
                                         asyncio.StreamReader | None,
                                         asyncio.StreamReader | None]:
        await self.wait()
        streams = await original(self)
        stdin = streams[0]
        assert stdin is not None
        async with asyncio.timeout(5):
            while not stdin.transport.is_closing():
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # and the client's EOF has certainly arrived
        return streams

    monkeypatch.setattr(Child, "open_streams", late)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.usefixtures("child_exits_first")
def test_exec_child_exits_before_its_pipes_are_connected(tmp_path: Path, loop: str) -> None:
    async def scenario() -> None:
        async with served(tmp_path) as (p, _), await ssh_client(p.conn) as client:
            # EOF right after the exec request, as OpenSSH sends it for an empty stdin
            for command, output, status in [("echo ssh-42", "ssh-42\n", 0), ("exit 7", "", 7),
                                            ("echo out; echo err >&2; exit 3", "out\n", 3)]:
                proc = await client.create_process(command)
                proc.stdin.write_eof()
                result = await asyncio.wait_for(proc.wait(), COMMAND_TIMEOUT)
                assert (result.exit_status, result.stdout) == (status, output), result
            # EOF only once the streams are connected (and the stdin transport is closed)
            result = await asyncio.wait_for(client.run("echo late-eof", input="x"),
                                            COMMAND_TIMEOUT)
            assert (result.exit_status, result.stdout) == (0, "late-eof\n")

    run_on(loop, scenario)


async def _run_with_eof(client: asyncssh.SSHClientConnection, command: str | None,
                        stdin: str = "") -> asyncssh.SSHCompletedProcess:
    """``command`` (a shell for None) with ``stdin`` and EOF sent right after the request,
    without waiting for anything, as OpenSSH does with a piped or empty stdin."""
    proc = await client.create_process(command)
    proc.stdin.write(stdin)
    proc.stdin.write_eof()
    return await proc.wait()


async def _ssh_rounds(client: asyncssh.SSHClientConnection, rounds: int) -> None:
    """Fast and slow exec, a shell with its commands piped in, exec on a PTY; every run must
    bring back its output and exit status within COMMAND_TIMEOUT."""
    for i in range(rounds):
        cases: list[tuple[Awaitable[asyncssh.SSHCompletedProcess], str, int]] = [
            (_run_with_eof(client, f"echo fast-{i}"), f"fast-{i}\n", 0),
            (_run_with_eof(client, "true"), "", 0),
            (client.run(f"echo fast-{i}"), f"fast-{i}\n", 0),
            (_run_with_eof(client, f"sleep 0.2; echo slow-{i}; exit 4"), f"slow-{i}\n", 4),
            (_run_with_eof(client, None, f"echo shell-{i}\nexit 5\n"), f"shell-{i}\n", 5),
            (client.run(f"echo pty-{i}", term_type="dumb"), f"pty-{i}\r\n", 0),
            (client.run(f"sleep 0.2; echo pty-slow-{i}; exit 6", term_type="dumb"),
             f"pty-slow-{i}\r\n", 6),
        ]
        for run, expected, status in cases:
            result = await asyncio.wait_for(run, COMMAND_TIMEOUT)
            assert (result.exit_status, result.stdout) == (status, expected), result


@pytest.mark.parametrize("loop", LOOPS)
def test_ssh_fast_and_slow_commands_under_cpu_load(tmp_path: Path, loop: str) -> None:
    async def scenario() -> None:
        async with served(tmp_path) as (p, _), await ssh_client(p.conn) as client:
            with cpu_load():
                # one after another, then four sessions at a time on one connection
                await _ssh_rounds(client, ROUNDS)
                await asyncio.gather(*(_ssh_rounds(client, ROUNDS // 2) for _ in range(4)))

    run_on(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_reconnecting_pty_fast_and_slow_commands_under_cpu_load(tmp_path: Path,
                                                                 loop: str) -> None:
    async def scenario() -> None:
        async with pty_served(tmp_path) as (p, _):
            with cpu_load():
                for i in range(ROUNDS):
                    for command, marker in [(f"echo rpty-{i}", f"rpty-{i}"),
                                            (f"sleep 0.2; echo rpty-slow-{i}",
                                             f"rpty-slow-{i}")]:
                        async with asyncio.timeout(COMMAND_TIMEOUT):
                            pty = await reconnecting_pty(p.conn, uuid.uuid4(), 24, 80, command)
                            async with pty:
                                output = await read_to_eof(pty)
                        assert marker.encode() in output, (command, output)

    run_on(loop, scenario)
