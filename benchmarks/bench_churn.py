"""Memory under connection churn (hardening issue, item 4): does resident memory come back?

An agent runs in its own interpreter (all stream services, the desktop enabled so there is a
websocket route); this process is the client. Each phase opens and closes many short-lived
things through the tunnel, one after another, and samples the agent's and the client's RSS
(``/proc/PID/status`` VmRSS) before, at the end, and again once TIME_WAIT (``--time-wait``
seconds on both stacks) has run out:

``api``        N TCP connections: connect to the HTTP API, ``GET /api/v0/listening-ports``
               with ``Connection: close``, read to EOF (the agent closes first, so every
               connection passes through TIME_WAIT on the agent's stack).
``ssh``        N SSH sessions (``exec true``) on one SSH connection (asyncssh client).
``pty``        N reconnecting-PTY sessions, each running ``true`` to its end.
``websocket``  N websocket connections to the desktop's VNC route: handshake, read the RFB
               version from Xvnc, close.

Run: ``PYTHONPATH=src python benchmarks/bench_churn.py [--api 100000] [--ssh 10000]
[--pty 10000] [--websocket 10000]``. Prints one line per sample and a summary table;
``--json`` adds a JSON document at the end. Not a test: nothing is asserted on the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "tests" / "agent"))
sys.path.insert(0, str(_HERE.parent / "src"))

AGENT_CHILD = r"""
import asyncio, json, os, sys, tempfile, uuid
from pathlib import Path
import uvloop
from agent_pair import make_options
from agentconn.agent.agent import Agent

async def main():
    conf, agent_id, time_wait = sys.argv[1], uuid.UUID(sys.argv[2]), float(sys.argv[3])
    options = make_options(Path(tempfile.mkdtemp()), desktop=True, desktop_geometry=(640, 480))
    agent = Agent(Path(conf).read_text(), agent_id, options=options, listen_host="127.0.0.1")
    await agent.start()
    agent.tunnel.tcp.time_wait = time_wait
    print(json.dumps({"port": agent.tunnel.listen_port, "key": agent.tunnel.public_key,
                      "pid": os.getpid()}), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        pass
    await agent.close()

uvloop.run(main())
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class AgentChild:
    def __init__(self, agent_conf: str, agent_id: uuid.UUID, work: Path, time_wait: float) -> None:
        conf = work / "agent.conf"
        conf.write_text(agent_conf)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_HERE.parent / "tests" / "agent"), str(_HERE.parent / "src"),
             env.get("PYTHONPATH", "")])
        self.stderr = open(work / "agent.stderr", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", AGENT_CHILD, str(conf), str(agent_id), str(time_wait)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env=env)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            self.stderr.seek(0)
            raise RuntimeError(f"agent child did not start: {self.stderr.read()[-2000:]}")
        self.hello = json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


class Sampler:
    def __init__(self, agent_pid: int) -> None:
        self.agent_pid = agent_pid
        self.rows: list[dict[str, Any]] = []

    def sample(self, phase: str, label: str, done: int) -> dict[str, Any]:
        row = {"phase": phase, "at": label, "done": done,
               "agent_rss_mib": round(rss_kib(self.agent_pid) / 1024, 1),
               "client_rss_mib": round(rss_kib(os.getpid()) / 1024, 1)}
        self.rows.append(row)
        print(f"  {phase:9} {label:14} {done:7d}  agent {row['agent_rss_mib']:7.1f} MiB  "
              f"client {row['client_rss_mib']:7.1f} MiB", flush=True)
        return row


async def churn(phase: str, n: int, one: Any, sampler: Sampler, time_wait: float,
                every: int) -> dict[str, Any]:
    import gc
    # Warm-up: first-use allocations (imports, caches, pools) are not churn.
    for _ in range(min(200, n)):
        await one()
    gc.collect()
    await asyncio.sleep(min(time_wait + 1.0, 5.0))
    before = sampler.sample(phase, "before", 0)
    t0 = time.monotonic()
    errors = 0
    for i in range(1, n + 1):
        try:
            await one()
        except Exception as e:  # noqa: BLE001  counted and reported: a failure is a finding
            errors += 1
            if errors <= 3:
                print(f"  {phase}: #{i}: {type(e).__name__}: {e}", flush=True)
        if i % every == 0 and i != n:
            sampler.sample(phase, "during", i)
    seconds = time.monotonic() - t0
    end = sampler.sample(phase, "end", n)
    await asyncio.sleep(time_wait + 2.0)
    gc.collect()
    after = sampler.sample(phase, "after wait", n)
    return {"phase": phase, "n": n, "errors": errors, "seconds": round(seconds, 1),
            "per_second": round(n / seconds, 1),
            "agent_before": before["agent_rss_mib"], "agent_end": end["agent_rss_mib"],
            "agent_after": after["agent_rss_mib"],
            "client_before": before["client_rss_mib"], "client_end": end["client_rss_mib"],
            "client_after": after["client_rss_mib"]}


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from agent_pair import pair_configs

    from agentconn import Tunnel
    from agentconn.client.conn import AgentConn
    from agentconn.client.desktop import desktop_vnc_websocket
    from agentconn.proto.ports import AGENT_HTTP_API_PORT

    agent_id = uuid.uuid4()
    agent_conf, client_conf, _ = pair_configs(agent_id)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        child = AgentChild(agent_conf, agent_id, Path(work), args.time_wait)
        try:
            tunnel = Tunnel.from_config(client_conf, listen_host="127.0.0.1")
            await tunnel.start()
            tunnel.tcp.time_wait = args.time_wait
            tunnel.set_peer_endpoint(child.hello["key"], "127.0.0.1", child.hello["port"])
            conn = AgentConn(tunnel, agent_id, owns_tunnel=True)
            sampler = Sampler(child.hello["pid"])
            try:
                if not await conn.await_reachable(20):
                    raise RuntimeError("agent not reachable")
                host = str(conn.agent_address)
                request = (f"GET /api/v0/listening-ports HTTP/1.1\r\nHost: [{host}]:"
                           f"{AGENT_HTTP_API_PORT}\r\nConnection: close\r\n\r\n").encode()

                async def api_once() -> None:
                    reader, writer = await tunnel.open_connection(host, AGENT_HTTP_API_PORT)
                    writer.write(request)
                    data = await reader.read()
                    writer.close()
                    if not data.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"unexpected answer {data[:40]!r}")

                if args.api:
                    results.append(await churn("api", args.api, api_once, sampler,
                                               args.time_wait, max(1, args.api // 5)))

                if args.ssh:
                    ssh = await conn.ssh_client()

                    async def ssh_once() -> None:
                        r = await ssh.run("true", check=True)
                        assert r.exit_status == 0

                    try:
                        results.append(await churn("ssh", args.ssh, ssh_once, sampler,
                                                   args.time_wait, max(1, args.ssh // 5)))
                    finally:
                        ssh.close()
                        await ssh.wait_closed()

                async def pty_once() -> None:
                    pty = await conn.reconnecting_pty(uuid.uuid4(), 24, 80, "true")
                    async with pty:
                        async for _ in pty:
                            pass

                if args.pty:
                    results.append(await churn("pty", args.pty, pty_once, sampler,
                                               args.time_wait, max(1, args.pty // 5)))

                async def ws_once() -> None:
                    ws = await desktop_vnc_websocket(conn)
                    try:
                        version = await ws.receive()
                        if not (isinstance(version, bytes) and version.startswith(b"RFB ")):
                            raise RuntimeError(f"unexpected first message {version!r:.40}")
                    finally:
                        await ws.close()

                if args.websocket:
                    results.append(await churn("websocket", args.websocket, ws_once, sampler,
                                               args.time_wait, max(1, args.websocket // 5)))
            finally:
                await conn.close()
        finally:
            child.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--api", type=int, default=100_000)
    ap.add_argument("--ssh", type=int, default=10_000)
    ap.add_argument("--pty", type=int, default=10_000)
    ap.add_argument("--websocket", type=int, default=10_000)
    ap.add_argument("--time-wait", type=float, default=5.0,
                    help="TIME_WAIT seconds on both stacks (default 5; the stack's own is 60)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import uvloop

    results = uvloop.run(run(args))
    print("\nphase       count  errors   per s   agent RSS MiB before/end/after   "
          "client RSS MiB before/end/after")
    for r in results:
        print(f"{r['phase']:9} {r['n']:8d} {r['errors']:6d} {r['per_second']:8.1f}   "
              f"{r['agent_before']:7.1f} {r['agent_end']:7.1f} {r['agent_after']:7.1f}        "
              f"     {r['client_before']:7.1f} {r['client_end']:7.1f} {r['client_after']:7.1f}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
