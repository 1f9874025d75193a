"""Reconnecting-PTY echo latency: a keystroke through AgentConn → tunnel → agent PTY and its
echo back, next to the same keystroke on a local PTY (no network), in one run.

Both sides run ``cat`` on a PTY in canonical mode with echo on, so each typed byte comes back as
the line discipline's echo. ``BENCH_PTY_KEYS`` (default 500) keystrokes one at a time; p50/p99.
Run: ``PYTHONPATH=src python -m pytest benchmarks/bench_pty.py -q -p no:cacheprovider``.
"""
from __future__ import annotations

import asyncio
import os
import pty as ptymod
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "tests" / "agent"))

from agent_pair import agent_pair
from bench_tcp import _run_async

KEYS = int(os.environ.get("BENCH_PTY_KEYS", "500"))
GROUP = "Reconnecting PTY keystroke echo: over the tunnel vs a local PTY"

pytestmark = pytest.mark.timeout(300)


async def _ours() -> list[float]:
    with tempfile.TemporaryDirectory(prefix="bench-pty-") as tmp:
        async with agent_pair(Path(tmp), services=("pty",)) as p:
            session = await p.conn.reconnecting_pty(uuid.uuid4(), 24, 80, "cat")
            await session.write("warm\r")
            seen = b""
            while b"warm" not in seen:
                seen += await asyncio.wait_for(session.read(65536), 20)
            await asyncio.sleep(0.2)
            lat = []
            for i in range(KEYS):
                key = "abcdefghij"[i % 10]
                t0 = time.perf_counter()
                await session.write(key)
                got = b""
                while key.encode() not in got:
                    got += await asyncio.wait_for(session.read(65536), 10)
                lat.append(time.perf_counter() - t0)
            session.close()
            return lat


async def _local() -> list[float]:
    loop = asyncio.get_running_loop()
    pid, fd = ptymod.fork()
    if pid == 0:  # child
        os.execvp("cat", ["cat"])
    try:
        os.set_blocking(fd, False)
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        def readable() -> None:
            try:
                queue.put_nowait(os.read(fd, 65536))
            except OSError:
                loop.remove_reader(fd)
        loop.add_reader(fd, readable)
        lat = []
        for i in range(KEYS):
            key = "abcdefghij"[i % 10].encode()
            t0 = time.perf_counter()
            os.write(fd, key)
            got = b""
            while key not in got:
                got += await asyncio.wait_for(queue.get(), 10)
            lat.append(time.perf_counter() - t0)
        loop.remove_reader(fd)
        return lat
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)


def _row(record: Any, benchmark: Any, name: str, lat: list[float]) -> dict[str, Any]:
    s = sorted(lat)
    return record.add(benchmark, group=GROUP, name=name, seconds=statistics.mean(s),
                      kind="api", p50=s[len(s) // 2], p99=s[min(len(s) - 1, int(len(s) * .99))],
                      calls_per_s=len(s) / sum(s), connections=1)


def test_pty_echo_latency(benchmark: Any, record: Any) -> None:
    box: dict[str, list[float]] = {}

    def run() -> None:
        box["local"] = _run_async(_local)
        box["ours"] = _run_async(_ours)

    benchmark.group = GROUP
    benchmark.pedantic(run, rounds=1, iterations=1)
    _row(record, benchmark, "keystroke echo, local PTY", box["local"])
    _row(record, benchmark, "keystroke echo, ours over the tunnel", box["ours"])
