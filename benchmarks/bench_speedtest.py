"""Speedtest (tailnet port 3) throughput: our client against our agent, next to bench_tcp.py's
raw-TCP and wireguard-go baselines, in the same summary group so the table prints the ratios.

Every case runs ``BENCH_TCP_SECONDS`` (default 5) per direction, inner MTU 1280, and reports
Gbit/s at the *receiver* (download: our client's total row; upload: the agent's session
result), computed the way Go's ``speedtest`` computes its total row.

1. ours speedtest, one process: ``agent_pair`` (Agent + AgentConn, two Tunnels over loopback
   UDP), ``SpeedtestServer`` on the agent's tunnel, ``client.speedtest.speedtest``.
2. ours speedtest, agent in a child process: the same over loopback UDP, but the agent (its
   tunnel, TCP stack and speedtest server) gets its own interpreter and core, as in real use.
3. references from bench_tcp.py (its own test functions, called here, not copied):
   ours <-> ours raw TCP over loopback (always), and, as root with wireguard-go and iperf3,
   wireguard-go <-> wireguard-go with iperf3 and with plain Python peers. A Go speedtest server
   on the kernel side is not available, so iperf3 over wireguard-go is the kernel yardstick.

Run: ``PYTHONPATH=src python -m pytest benchmarks/bench_speedtest.py -q -p no:cacheprovider``
(as root for the wireguard-go rows). "ours" rows show ``/iperf3`` and ``/py-base`` ratios.
"""
from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent / "tests" / "agent"))

import bench_tcp
from agent_pair import AGENT_ID, agent_pair, pair_configs
from bench_tcp import (
    DIRECTIONS,
    SECONDS,
    TIMEOUT,
    Transfer,
    _cpu_of,
    _cpu_self,
    _measure,
    _record,
    _run_async,
    go_pair,  # noqa: F401  (module-scoped fixture used by the baselines below)
    kernel_side,  # noqa: F401  (module-scoped fixture of the ours -> kernel case)
)

from agentconn.agent.services.speedtest import SpeedtestServer
from agentconn.client.speedtest import speedtest
from agentconn.proto.speedtest import SpeedtestResult

pytestmark = pytest.mark.timeout(int(120 + 10 * SECONDS))

WAYS = {"upload": "up", "download": "down"}


def _receiver_transfer(client: SpeedtestResult, server_bytes: int, server_seconds: float,
                       direction: str) -> Transfer:
    """Bytes and seconds at the receiving end (client for download, agent for upload)."""
    assert client.total is not None
    if direction == "download":
        assert client.bytes == server_bytes, (client.bytes, server_bytes)
        return Transfer(client.bytes, client.total.seconds)
    assert server_bytes == client.bytes, (server_bytes, client.bytes)
    return Transfer(server_bytes, server_seconds)


def _note(client: SpeedtestResult) -> str:
    rates = [i.mbits_per_second() / 1e3 for i in client.intervals if i.seconds >= 1.0]
    spread = f"1 s intervals {min(rates):.2f}-{max(rates):.2f} Gbit/s" if rates else ""
    return f"speedtest, 2 MiB blocks; {spread}"


# ---------------------------------------------------------------------------------------------
# (1) one process


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_speedtest_one_process(benchmark: Any, record: Any, direction: str,
                               tmp_path: Path) -> None:
    async def main() -> Transfer:
        async with agent_pair(tmp_path) as p:
            server = SpeedtestServer(p.agent.options, min_duration=0.1)
            await server.start(p.agent.tunnel)
            try:
                assert await p.conn.await_reachable(10)     # handshake before the clock
                c0 = _cpu_self()
                result = await speedtest(p.conn, WAYS[direction], SECONDS, min_duration=0.1)
                await server.wait_idle()
                cpu = _cpu_self() - c0
            finally:
                await server.close()
        session = server.sessions[-1]
        assert session.error is None and session.result is not None
        assert session.result.total is not None
        t = _receiver_transfer(result, session.bytes, session.result.total.seconds, direction)
        t.cpu = cpu
        t.note = _note(result) + "; cpu: both ends"
        return t

    t = _measure(benchmark, lambda: _run_async(main))
    _record(record, benchmark, t, case="speedtest: ours <-> ours agent, 1 process",
            role="ours", direction=direction)


# ---------------------------------------------------------------------------------------------
# (2) the agent in a child process

AGENT_CHILD = r"""
import asyncio, json, sys, tempfile, uuid
from pathlib import Path
import uvloop
from agent_pair import make_options
from agentconn.agent.agent import Agent
from agentconn.agent.services.speedtest import SpeedtestServer

async def main():
    conf, agent_id = sys.argv[1], uuid.UUID(sys.argv[2])
    agent = Agent(Path(conf).read_text(), agent_id, options=make_options(Path(tempfile.mkdtemp())),
                  listen_host="127.0.0.1", services=("ssh", "pty", "forward"))
    await agent.start()
    server = SpeedtestServer(agent.options, min_duration=0.1)
    await server.start(agent.tunnel)
    print(json.dumps({"port": agent.tunnel.listen_port, "key": agent.tunnel.public_key}),
          flush=True)
    loop = asyncio.get_running_loop()
    reported = 0
    while await loop.run_in_executor(None, sys.stdin.readline):   # one line per test
        await asyncio.sleep(0.05)
        await server.wait_idle()
        for s in server.sessions[reported:]:
            total = s.result.total if s.result else None
            print(json.dumps({"bytes": s.bytes, "error": s.error,
                              "seconds": total.seconds if total else 0.0}), flush=True)
        reported = len(server.sessions)
    await server.close()
    await agent.close()

uvloop.run(main())
"""


class AgentChild:
    """An Agent with a SpeedtestServer in its own interpreter."""

    def __init__(self, agent_conf: str, work: Path) -> None:
        conf = work / "agent.conf"
        conf.write_text(agent_conf)
        env = dict(os.environ)
        src = _HERE.parent / "src"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_HERE.parent / "tests" / "agent"), str(src), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", AGENT_CHILD, str(conf), str(AGENT_ID)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env)
        self.hello = self._line(30)

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise RuntimeError(f"agent child: no answer; stderr: {self.proc.communicate()[1]}")
        return dict(json.loads(line))

    def session(self) -> dict[str, Any]:
        """Ask for the sessions finished since the last call; returns the last one."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        return self._line(TIMEOUT)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_speedtest_agent_process(benchmark: Any, record: Any, direction: str) -> None:
    from agentconn import Tunnel
    from agentconn.client.conn import AgentConn

    agent_conf, client_conf, _ = pair_configs()
    with tempfile.TemporaryDirectory() as work:
        child = AgentChild(agent_conf, Path(work))
        try:
            async def main() -> Transfer:
                tunnel = Tunnel.from_config(client_conf, listen_host="127.0.0.1")
                await tunnel.start()
                tunnel.set_peer_endpoint(child.hello["key"], "127.0.0.1", child.hello["port"])
                conn = AgentConn(tunnel, AGENT_ID, owns_tunnel=True)
                try:
                    assert await conn.await_reachable(10)
                    pids = [child.proc.pid]
                    c0, a0 = _cpu_self(), _cpu_of(pids)
                    result = await speedtest(conn, WAYS[direction], SECONDS, min_duration=0.1)
                    cpu, agent_cpu = _cpu_self() - c0, _cpu_of(pids) - a0
                finally:
                    await conn.close()
                s = await bench_tcp._in_thread(child.session)
                assert s["error"] is None, s
                t = _receiver_transfer(result, s["bytes"], s["seconds"], direction)
                t.cpu = cpu
                t.note = (_note(result) + f"; agent process cpu {agent_cpu / t.seconds:.0%}, "
                          f"client {cpu / t.seconds:.0%} of a core")
                return t

            t = _measure(benchmark, lambda: _run_async(main))
        finally:
            child.close()
    _record(record, benchmark, t, case="speedtest: ours <-> ours agent, 2 processes",
            role="ours", direction=direction)


# ---------------------------------------------------------------------------------------------
# (3) references, measured by bench_tcp.py's own code in this run


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_tcp_ours_to_ours_loopback(benchmark: Any, record: Any, direction: str) -> None:
    """Raw TCP through two of our tunnels (bench_tcp case 3): the speedtest's upper bound."""
    bench_tcp.test_ours_to_ours_loopback(benchmark, record, direction)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_baseline_iperf3(benchmark: Any, record: Any, go_pair: bench_tcp.GoPair,  # noqa: F811
                         direction: str) -> None:
    """wireguard-go <-> wireguard-go with iperf3 (root; skipped with the reason otherwise)."""
    bench_tcp.test_baseline_iperf3(benchmark, record, go_pair, direction)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_baseline_python(benchmark: Any, record: Any, go_pair: bench_tcp.GoPair,  # noqa: F811
                         direction: str) -> None:
    """wireguard-go <-> wireguard-go with plain Python peers (root)."""
    bench_tcp.test_baseline_python(benchmark, record, go_pair, direction)


# ---------------------------------------------------------------------------------------------
# (4) our speedtest client through our Tunnel -> wireguard-go -> kernel TCP -> our speedtest
#     server code on a kernel socket, in a separate process in wireguard-go's namespace
#     (bench_tcp's `kernel_side` topology: veth between our UDP socket and wireguard-go).

KERNEL_SERVER = r"""
import asyncio, json, sys
from agentconn.agent.options import AgentOptions
from agentconn.agent.services.speedtest import SpeedtestServer

async def main():
    server = SpeedtestServer(AgentOptions(), min_duration=0.1)
    done = asyncio.Event()
    async def serve(reader, writer):
        await server.serve_connection(reader, writer)
        done.set()
    srv = await asyncio.start_server(serve, sys.argv[1], int(sys.argv[2]))
    print("READY", flush=True)
    await done.wait()
    s = server.sessions[-1]
    total = s.result.total if s.result is not None else None
    print(json.dumps({"bytes": s.bytes, "seconds": total.seconds if total else 0,
                      "error": s.error}), flush=True)
    srv.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_speedtest_ours_to_kernel(benchmark: Any, record: Any,
                                  kernel_side: bench_tcp.KernelSide, direction: str) -> None:
    from agentconn import Tunnel
    from agentconn.client.speedtest import run_client

    ks = kernel_side
    port = 3

    async def main() -> Transfer:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        proc = subprocess.Popen([*ks.ns_k.exec_prefix(), sys.executable, "-c", KERNEL_SERVER,
                                 ks.their_addr, str(port)], stdout=subprocess.PIPE, text=True,
                                env=env)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
            tunnel = Tunnel.from_config(ks.config(), sock=ks.socket())
            await tunnel.start()
            try:
                await tunnel.ping(ks.their_addr, timeout=10)
                pids = ks.wg.pids()
                wg0, c0 = _cpu_of(pids), _cpu_self()
                reader, writer = await tunnel.open_connection(ks.their_addr, port,
                                                              limit=1 << 16)
                result = await run_client(reader, writer, WAYS[direction], SECONDS)
                cpu, wg_cpu = _cpu_self() - c0, _cpu_of(pids) - wg0
            finally:
                await tunnel.close()
            line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
            server = json.loads(line)
            assert server["error"] is None, server
            t = _receiver_transfer(result, server["bytes"], server["seconds"], direction)
            t.cpu, t.wg_cpu = cpu, wg_cpu
            t.note = _note(result) + "; server: our speedtest code on kernel TCP"
            return t
        finally:
            proc.kill()
            proc.wait()

    t = _measure(benchmark, lambda: _run_async(main))
    _record(record, benchmark, t, case="speedtest: ours -> wireguard-go + kernel TCP",
            role="ours", direction=direction, wg_processes=1)
