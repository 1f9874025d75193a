"""The relayed path next to the direct one, same run: speedtest and small-call latency through
our DERP relay on loopback (the project's test control plane: coordinator + relay) against the
direct UDP path between the same kind of peers.

1. DERP: an ``Agent`` joins the test control plane (tests/coder/controlplane.py) and is
   reached with ``agentconn.coder.dial("dev")``: every WireGuard datagram goes client → relay
   → agent through DERP frames over TCP (plain HTTP ``Upgrade: DERP``), all in this process.
2. upgraded: the same deployment, client and agent, with direct connections allowed: disco
   finds the loopback UDP path and the WireGuard peers move off DERP (magicsock's rules);
   measured once the path is direct.
3. direct: the same Agent and client over loopback UDP with static keys (tests/agent).

Reported per path: speedtest up/down Mbit/s (``BENCH_DERP_SECONDS``, default 3 s each), the
CPU our process spent per GB moved (both peers and, for DERP, the relay), and
``list_processes()`` latency p50/p99 over ``BENCH_DERP_CALLS`` calls (default 500); the summary
prints DERP/direct and upgraded/direct ratios.

Run: ``PYTHONPATH=src python -m pytest benchmarks/bench_derp.py -q -p no:cacheprovider``.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "tests" / "agent"))
sys.path.insert(0, str(_ROOT / "tests" / "coder"))
if importlib.util.find_spec("agentconn") is None:  # not installed: use the source tree
    sys.path.insert(0, str(_ROOT / "src"))

import uvloop
from agent_pair import agent_pair
from controlplane import TOKEN, ControlPlane

import agentconn.coder
from agentconn.agent import Agent, AgentOptions
from agentconn.coder.keys import NodePrivate
from agentconn.wg.config import InterfaceConfig

SECONDS = float(os.environ.get("BENCH_DERP_SECONDS", "3"))
CALLS = int(os.environ.get("BENCH_DERP_CALLS", "500"))
GROUP = "Relayed (DERP on loopback) vs direct UDP, one process"

pytestmark = pytest.mark.timeout(600)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(conn: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await conn.list_processes()
    lat = []
    for _ in range(CALLS):
        t0 = time.perf_counter()
        await conn.list_processes()
        lat.append(time.perf_counter() - t0)
    lat.sort()
    out["p50"], out["p99"] = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * .99))]
    for direction in ("up", "down"):
        cpu0 = _cpu()
        result = await conn.speedtest(direction, SECONDS)
        cpu = _cpu() - cpu0
        total = result.total
        assert total is not None and total.bytes > 0
        out[direction] = {"mbit": total.bytes * 8 / (total.end - total.start) / 1e6,
                          "cpu_s_per_gb": cpu / (result.bytes / 1e9)}
    return out


def _scenario() -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        results: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="bench-derp-") as tmp:
            plane = ControlPlane()
            await plane.start()
            fake = plane.add_workspace("dev", "main").agents[0]
            options = AgentOptions(directory=tmp, log_dir=os.path.join(tmp, "log"))
            agent = Agent(InterfaceConfig(private_key=NodePrivate.generate().raw), fake.id,
                          options=options, log_to_file=False, listen_host="127.0.0.1")
            try:
                await agent.start()
                await agent.join_tailnet(plane.url, fake.token)
                os.environ["AGENTCONN_TAILNET_LISTEN"] = "127.0.0.1"
                os.environ["CODER_DISABLE_DIRECT_CONNECTIONS"] = "true"
                conn = await agentconn.coder.dial("dev", url=plane.url, token=TOKEN)
                try:
                    results["derp"] = await _measure(conn)
                    assert conn._tunnel.stats()["udp"]["tx_datagrams"] == 0
                finally:
                    del os.environ["CODER_DISABLE_DIRECT_CONNECTIONS"]
                    await conn.close()
                    await agentconn.coder.close_all()
                conn = await agentconn.coder.dial("dev", url=plane.url, token=TOKEN)
                try:
                    t0 = time.perf_counter()
                    while True:
                        peer = conn.get_peer_diagnostics()["peer"] or {}
                        if not str(peer.get("endpoint", "relay:")).startswith("relay:"):
                            break
                        await asyncio.sleep(0.01)
                    results["upgrade_s"] = time.perf_counter() - t0
                    forwarded = plane.derp.stats().get("packets_forwarded", 0)
                    results["upgraded"] = await _measure(conn)
                    results["upgraded_derp_packets"] = (
                        plane.derp.stats().get("packets_forwarded", 0) - forwarded)
                    assert conn._tunnel.stats()["udp"]["tx_datagrams"] > 0
                finally:
                    del os.environ["AGENTCONN_TAILNET_LISTEN"]
                    await conn.close()
                    await agentconn.coder.close_all()
            finally:
                await agent.close()
                await plane.close()
            async with agent_pair(Path(tmp) / "direct", services=("speedtest",)) as p:
                results["direct"] = await _measure(p.conn)
        return results

    return uvloop.run(main())


def test_derp_vs_direct(benchmark: Any, record: Any) -> None:
    result = benchmark.pedantic(_scenario, rounds=1, iterations=1)
    for path in ("derp", "upgraded", "direct"):
        r = result[path]
        record.add(benchmark, group=GROUP, name=f"list_processes p50, {path}",
                   seconds=r["p50"], kind="relay", p50=r["p50"], p99=r["p99"])
        for direction in ("up", "down"):
            record.add(benchmark, group=GROUP, name=f"speedtest {direction}, {path}",
                       seconds=SECONDS, kind="relay", mbit_per_s=r[direction]["mbit"],
                       cpu_s_per_gb=r[direction]["cpu_s_per_gb"])
    d, g, u = result["derp"], result["upgraded"], result["direct"]
    print(f"\n{GROUP}")
    print(f"  {'':28} {'DERP':>10} {'upgraded':>10} {'direct':>10} {'D/dir':>7} {'U/dir':>7}")
    for direction in ("up", "down"):
        a, c, b = d[direction]["mbit"], g[direction]["mbit"], u[direction]["mbit"]
        print(f"  speedtest {direction:4} Mbit/s        {a:10.0f} {c:10.0f} {b:10.0f} "
              f"{a / b:7.2f} {c / b:7.2f}")
        a, c, b = (d[direction]["cpu_s_per_gb"], g[direction]["cpu_s_per_gb"],
                   u[direction]["cpu_s_per_gb"])
        print(f"  CPU s/GB ({direction})              {a:10.2f} {c:10.2f} {b:10.2f} "
              f"{a / b:7.2f} {c / b:7.2f}")
    for q in ("p50", "p99"):
        a, c, b = d[q] * 1e3, g[q] * 1e3, u[q] * 1e3
        print(f"  list_processes {q} ms        {a:10.3f} {c:10.3f} {b:10.3f} "
              f"{a / b:7.2f} {c / b:7.2f}")
    print(f"  DERP -> direct after dial: {result['upgrade_s'] * 1e3:.0f} ms; DERP packets "
          f"while upgraded: {result['upgraded_derp_packets']}")
    assert statistics.mean([d["up"]["mbit"], u["up"]["mbit"]]) > 0
