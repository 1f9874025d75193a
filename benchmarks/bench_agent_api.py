"""Agent API through AgentConn over a real userspace WireGuard tunnel: our keep-alive client
against one TCP connection per call (the Go client's ``DisableKeepAlives`` behaviour), same run.

Agent and client live in this process (two Tunnels over loopback UDP, inner MTU 1280 like
Coder's tailnet): WireGuard, our TCP stack, HTTP/1.1 on port 4, the agent's real handlers.

1. small call: ``list_processes()`` (GET, ~20-byte JSON answer) ``BENCH_API_CALLS`` times
   (default 1000) sequentially; calls/s, p50 and p99 latency.
2. ``write_file`` of 100 MB (streamed from an async iterator, atomic replace on the agent's
   disk, tmpfs or not) and ``read_file`` of the same 100 MB (streamed, sha256 on both sides),
   MB/s; the file is written/read ``BENCH_API_BULK_ROUNDS`` times (default 2) per client.

Run: ``PYTHONPATH=src python -m pytest benchmarks/bench_agent_api.py -q -p no:cacheprovider``.
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "tests" / "agent"))
if importlib.util.find_spec("agentconn") is None:  # not installed: use the source tree
    sys.path.insert(0, str(_ROOT / "src"))

import uvloop
from agent_pair import AGENT_ID, agent_pair

from agentconn.client.conn import AgentConn

CALLS = int(os.environ.get("BENCH_API_CALLS", "1000"))
BULK_MB = int(os.environ.get("BENCH_API_BULK_MB", "100"))
BULK_ROUNDS = int(os.environ.get("BENCH_API_BULK_ROUNDS", "2"))
GROUP = "Agent API over the tunnel: keep-alive pool vs one connection per call (Go client)"

pytestmark = pytest.mark.timeout(900)


async def _small_calls(conn: AgentConn, n: int) -> list[float]:
    await conn.list_processes()  # warm: handshake, first connection
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await conn.list_processes()
        lat.append(time.perf_counter() - t0)
    return lat


async def _bulk(conn: AgentConn, path: str, size: int) -> tuple[float, float]:
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()

    async def body() -> Any:
        for _ in range(size >> 20):
            digest.update(block)
            yield block

    t0 = time.perf_counter()
    await conn.write_file(path, body())
    t_write = time.perf_counter() - t0
    got = hashlib.sha256()
    t0 = time.perf_counter()
    async with await conn.read_file(path) as f:
        async for chunk in f:
            got.update(chunk)
    t_read = time.perf_counter() - t0
    assert got.hexdigest() == digest.hexdigest()
    return t_write, t_read


def _scenario() -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
            async with agent_pair(Path(tmp)) as p:
                go_style = AgentConn(p.client_tunnel, AGENT_ID, keep_alive=False)
                try:
                    for label, conn in (("keep-alive", p.conn), ("per-call", go_style)):
                        before = conn.connections_opened
                        lat = await _small_calls(conn, CALLS)
                        out[f"small {label}"] = {"lat": lat,
                                                 "conns": conn.connections_opened - before}
                    target = str(p.work / "bulk.bin")
                    for label, conn in (("keep-alive", p.conn), ("per-call", go_style)):
                        writes, reads = [], []
                        for _ in range(BULK_ROUNDS):
                            w, r = await _bulk(conn, target, BULK_MB << 20)
                            writes.append(w)
                            reads.append(r)
                        out[f"bulk {label}"] = {"write": statistics.median(writes),
                                                "read": statistics.median(reads)}
                finally:
                    await go_style.close()
        return out

    return uvloop.run(main())


def test_agent_api(benchmark: Any, record: Any) -> None:
    result = benchmark.pedantic(_scenario, rounds=1, iterations=1)
    rows = []
    for label in ("keep-alive", "per-call"):
        small = result[f"small {label}"]
        lat = sorted(small["lat"])
        p50 = lat[len(lat) // 2]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        rows.append(record.add(benchmark, group=GROUP, name=f"list_processes, {label}",
                               seconds=statistics.mean(lat), kind="api", p50=p50, p99=p99,
                               calls_per_s=len(lat) / sum(lat), connections=small["conns"]))
        bulk = result[f"bulk {label}"]
        size = BULK_MB << 20
        for op in ("write", "read"):
            rows.append(record.add(benchmark, group=GROUP,
                                   name=f"{op}_file {BULK_MB} MiB, {label}",
                                   seconds=bulk[op], kind="api",
                                   mb_per_s=size / bulk[op] / 1e6))
    assert all(r["seconds"] > 0 for r in rows)
