"""A live speedtest under a handshake flood (hardening issue, item 3), side by side in one run.

An agent with its speedtest server runs in its own interpreter; this process downloads from it
for ``--seconds`` (our speedtest client, the tunnel over loopback UDP). A third process floods
the agent's UDP port from its own socket while the speedtest runs:

``none``           no flood: the reference.
``mac1``           ``--mac1-rate`` (default 10,000/s) forged handshake initiations with a valid
                   mac1 (what anyone who knows the agent's public key can make); each has fresh
                   random ephemeral/static/timestamp fields, so without cookies every one would
                   cost the agent a Diffie-Hellman.
``garbage``        ``--garbage-rate`` (default 100,000/s) random datagrams of 1-200 bytes, half
                   of them with a WireGuard message type in the first byte.

The flooder counts the cookie replies it receives (proof that the cookie path was taken).
To measure the design and not the two-core machine, the agent and this process share CPU 0
and the flooder gets CPU 1 in every case, the reference included (``--no-pin`` to turn off).

Run: ``PYTHONPATH=src python benchmarks/bench_flood.py [--seconds 4] [--rounds 2]``.
Prints Gbit/s per case and the ratio to ``none``. Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent / "tests" / "agent"))
sys.path.insert(0, str(_HERE.parent / "src"))

FLOODER = r"""
import json, os, random, socket, sys, time
from agentconn.wg.cookie import CookieGenerator

host, port, key, mode, rate, seconds = (sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]),
                                        sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
rng = random.Random(1)
messages = []
if mode == "mac1":
    gen = CookieGenerator(key)
    for _ in range(4096):
        m = bytearray(148)
        m[0] = 1
        m[4:116] = rng.randbytes(112)
        gen.add_macs(m, time.monotonic())
        messages.append(bytes(m))
else:
    for _ in range(4096):
        m = bytearray(rng.randbytes(rng.randint(1, 200)))
        if rng.random() < 0.5:
            m[0] = rng.randint(1, 4)
            for i in range(1, min(4, len(m))):
                m[i] = 0
        messages.append(bytes(m))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
print("ready", flush=True)
sys.stdin.readline()
dest = (host, port)
sent = replies = dropped = 0
per_tick = max(1, rate // 1000)
start = time.monotonic()
next_tick = start
i = 0
while True:
    now = time.monotonic()
    if now - start >= seconds:
        break
    if now < next_tick:
        time.sleep(next_tick - now)
    next_tick += 0.001
    for _ in range(per_tick):
        try:
            s.sendto(messages[i & 4095], dest)
            sent += 1
        except BlockingIOError:
            dropped += 1
        i += 1
    while True:
        try:
            d = s.recv(2048)
        except BlockingIOError:
            break
        if len(d) == 64 and d[0] == 3:
            replies += 1
elapsed = time.monotonic() - start
print(json.dumps({"sent": sent, "rate": round(sent / elapsed), "cookie_replies": replies,
                  "send_buffer_full": dropped}), flush=True)
"""


class Flooder:
    def __init__(self, port: int, key_hex: str, mode: str, rate: int, seconds: float,
                 cpu: int | None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(_HERE.parent / "src"),
                                             env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FLOODER, "127.0.0.1", str(port), key_hex, mode, str(rate),
             str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("flooder did not start")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.readline()
        self.proc.wait(30)
        return dict(json.loads(out))


async def one_case(child: Any, client_conf: str, agent_id: Any, mode: str, rate: int,
                   seconds: float, pin: bool) -> dict[str, Any]:
    from agentconn import Tunnel
    from agentconn.client.conn import AgentConn
    from agentconn.client.speedtest import speedtest

    tunnel = Tunnel.from_config(client_conf, listen_host="127.0.0.1")
    await tunnel.start()
    tunnel.set_peer_endpoint(child.hello["key"], "127.0.0.1", child.hello["port"])
    conn = AgentConn(tunnel, agent_id, owns_tunnel=True)
    flooder = None
    try:
        if not await conn.await_reachable(20):
            raise RuntimeError("agent not reachable")
        if mode != "none":
            key_hex = base64.b64decode(child.hello["key"]).hex()
            flooder = await asyncio.to_thread(
                Flooder, child.hello["port"], key_hex, mode, rate, seconds + 1.0,
                1 if pin else None)
            flooder.go()
            await asyncio.sleep(0.5)        # the flood is in full swing before the test starts
        result = await speedtest(conn, "down", seconds, min_duration=0.1)
        total = result.total
        assert total is not None
        gbits = total.bytes * 8 / total.seconds / 1e9
        flood = await asyncio.to_thread(flooder.result) if flooder else {}
        return {"case": mode, "gbit_s": round(gbits, 3), **flood}
    finally:
        if flooder is not None and flooder.proc.poll() is None:
            flooder.proc.kill()
            flooder.proc.wait()
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mac1-rate", type=int, default=10_000)
    ap.add_argument("--garbage-rate", type=int, default=100_000)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--cases", default="none,mac1,garbage",
                    help="comma-separated subset of none,mac1,garbage")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import uvloop
    from agent_pair import AGENT_ID, pair_configs
    from bench_speedtest import AgentChild

    pin = not args.no_pin
    agent_conf, client_conf, _ = pair_configs()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        child = AgentChild(agent_conf, Path(work))
        try:
            if pin:
                os.sched_setaffinity(child.proc.pid, {0})
                os.sched_setaffinity(0, {0})
            for rnd in range(args.rounds):
                for mode, rate in (("none", 0), ("mac1", args.mac1_rate),
                                   ("garbage", args.garbage_rate)):
                    if mode not in args.cases.split(","):
                        continue
                    row = uvloop.run(one_case(child, client_conf, AGENT_ID, mode, rate,
                                              args.seconds, pin))
                    row["round"] = rnd + 1
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            child.close()
    print(f"\nlive speedtest (download, {args.seconds:g} s) under a handshake flood"
          f"{'; agent+client on CPU 0, flooder on CPU 1' if pin else ''}")
    print("case      flood rate/s   Gbit/s (per round)        ratio to none   cookie replies")
    for mode in ("none", "mac1", "garbage"):
        mine = [r for r in rows if r["case"] == mode]
        base = [r["gbit_s"] for r in rows if r["case"] == "none"]
        ratios = [m["gbit_s"] / b for m, b in zip(mine, base) if b]
        print(f"{mode:9} {max((r.get('rate', 0) for r in mine), default=0):12d}   "
              f"{' '.join('%.2f' % r['gbit_s'] for r in mine):24}  "
              f"{' '.join('%.2f' % x for x in ratios):14}  "
              f"{sum(r.get('cookie_replies', 0) for r in mine)}")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
