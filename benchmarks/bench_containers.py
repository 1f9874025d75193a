"""Containers (agent-api.md §9): what a listing and a watch update cost, next to Docker itself.

A test engine (tests/agent/docker_env: ``dockerd`` on vfs, no network) holds
``BENCH_CONTAINERS`` containers (default 20, half of them running) and two dev containers;
an in-process Agent (``devcontainers=True``) and an AgentConn talk over a userspace WireGuard
tunnel on loopback. Side by side in one run:

(a) ``conn.list_containers()`` through the tunnel (the agent answers from its last listing);
(b) one agent refresh (``docker ps`` + ``docker inspect`` through the agent's child-process
    helper, parsing and the dev container table);
(c) the same two docker commands from ``subprocess.run``: the floor of (b);
(d) watch latency: from calling ``docker stop -t 0`` on a dev container to the watch message
    showing it ``stopped``, against
(e) the same stop seen by a plain ``docker events`` subprocess (the floor of (d)).

Run (root, docker.io, busybox-static):
``PYTHONPATH=src python -m pytest benchmarks/bench_containers.py -q -p no:cacheprovider``.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "tests" / "agent"))

from agent_pair import agent_pair
from docker_env import DAEMON_PARENT, IMAGE, DockerDaemon, missing_prerequisites

from agentconn.agent.containers import ContainersApi
from agentconn.proto.containers import DevcontainerStatus

N = int(os.environ.get("BENCH_CONTAINERS", "20"))
ROUNDS = int(os.environ.get("BENCH_CONTAINER_ROUNDS", "10"))
GROUP_LIST = f"Containers: list {N} containers + 2 dev containers"
GROUP_WATCH = "Containers: docker stop → watch message"

pytestmark = pytest.mark.timeout(900)


def _ms(values: list[float]) -> str:
    values = sorted(values)
    return (f"p50 {statistics.median(values) * 1e3:.1f} ms, "
            f"p90 {values[int(len(values) * 0.9) - 1] * 1e3:.1f} ms")


async def _events_latency(daemon: DockerDaemon, cid: str) -> float:
    proc = await asyncio.create_subprocess_exec(
        "docker", "events", "--format", "{{.Action}}", "--filter", f"container={cid}",
        env=daemon.env(), stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    await asyncio.sleep(0.3)  # let it subscribe
    t0 = time.perf_counter()
    stop = asyncio.create_task(asyncio.to_thread(daemon.docker, "stop", "-t", "0", cid))
    while (await proc.stdout.readline()).strip() != b"die":
        pass
    elapsed = time.perf_counter() - t0
    await stop
    proc.terminate()
    await proc.wait()
    return elapsed


def test_containers_list_and_watch(benchmark: Any, record: Any) -> None:
    missing = missing_prerequisites()
    if missing:
        pytest.skip("needs " + ", ".join(missing))
    daemon = DockerDaemon(Path(tempfile.mkdtemp(prefix="acdk-", dir=DAEMON_PARENT)))
    try:
        daemon.start()
        asyncio.run(_run(daemon, benchmark, record))
    finally:
        daemon.stop()


async def _run(daemon: DockerDaemon, benchmark: Any, record: Any) -> None:
    os.environ["DOCKER_HOST"] = daemon.host
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(N):
            args = ["-d"] if i % 2 == 0 else []
            daemon.docker("run", *args, "--network", "none", "--label", f"n={i}", IMAGE,
                          *(["sleep", "100000"] if i % 2 == 0 else ["true"]))
        work = root / "work"
        dev = []
        for name in ("one", "two"):
            folder = work / name
            dev.append(daemon.docker("run", "-d", "--network", "none", "--label",
                                     f"devcontainer.local_folder={folder}", IMAGE, "sleep",
                                     "100000").stdout.strip())
        async with agent_pair(root, agent_options={"devcontainers": True}) as p:
            api = next(m for m in p.agent._modules if isinstance(m, ContainersApi))
            await api.refresh()
            listing = await p.conn.list_containers()
            assert len(listing.containers) == N + 2 and len(listing.devcontainers) == 2

            a = []
            for _ in range(ROUNDS * 5):
                t0 = time.perf_counter()
                await p.conn.list_containers()
                a.append(time.perf_counter() - t0)
            b = []
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                await api.refresh()
                b.append(time.perf_counter() - t0)
            c = []
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                ids = daemon.docker("ps", "--all", "--quiet", "--no-trunc").stdout.split()
                daemon.docker("inspect", *ids)
                c.append(time.perf_counter() - t0)

            d = []
            async with p.conn.watch_containers() as watch:
                await anext(watch)
                cid = dev[0]  # running now
                for _ in range(ROUNDS):
                    t0 = time.perf_counter()
                    stop = asyncio.create_task(
                        asyncio.to_thread(daemon.docker, "stop", "-t", "0", cid))
                    async for listing in watch:
                        if listing.devcontainers[0].status is DevcontainerStatus.STOPPED:
                            break
                    d.append(time.perf_counter() - t0)
                    await stop
                    await asyncio.to_thread(daemon.docker, "start", cid)
                    async for listing in watch:
                        if listing.devcontainers[0].status is DevcontainerStatus.RUNNING:
                            break
            e = []
            for _ in range(ROUNDS):  # dev[1] is running at first
                e.append(await _events_latency(daemon, dev[1]))
                await asyncio.to_thread(daemon.docker, "start", dev[1])
    del os.environ["DOCKER_HOST"]

    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for group, name, values in (
            (GROUP_LIST, "(a) conn.list_containers() over the tunnel", a),
            (GROUP_LIST, "(b) agent refresh: docker ps + inspect + table", b),
            (GROUP_LIST, "(c) docker ps + inspect from subprocess.run", c),
            (GROUP_WATCH, "(d) docker stop -> watch message (stopped)", d),
            (GROUP_WATCH, "(e) docker stop -> docker events 'die'", e)):
        record.add(benchmark, group=group, name=name, seconds=statistics.median(values),
                   summary=_ms(values))
        print(f"{name}: {_ms(values)}")
    print(f"ratio (b)/(c) {statistics.median(b) / statistics.median(c):.2f}, "
          f"(d)/(e) {statistics.median(d) / statistics.median(e):.2f}")
