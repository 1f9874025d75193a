"""Single-stream TCP throughput through WireGuard, side by side in one run (DATAPATH.md checks).

Every case moves one TCP stream for ~``BENCH_TCP_SECONDS`` (default 5) seconds in each
direction, inner MTU 1280 everywhere, and reports payload Gbit/s at the receiver. "upload" is
client -> server, "download" is server -> client (like ``iperf3 -c`` and ``iperf3 -c -R``).

1. baseline (root): two wireguard-go peers, each in its own network namespace, joined by a veth
   pair (addresses only inside those namespaces), kernel TCP at both ends:
   (a) iperf3 -J, receiver-side bits_per_second;
   (b) a plain Python client and server (``sendall`` of 1 MiB / ``recv_into``), each a separate
       process in its namespace, measured like (2): bytes / time until the sink confirms the
       count, so we know whether a Python endpoint itself limits. The peers' own CPU use is kept
       (``peer cpu`` in the table: fraction of one core).
2. ours -> kernel (root): our ``agentconn.Tunnel`` in this process as one WireGuard peer, its
   UDP socket created inside a namespace that a veth pair joins to wireguard-go's namespace;
   the kernel's TCP behind wireguard-go runs the Python sink (upload) or source (download) of
   (1b) in a separate process. Our side does ``open_connection`` and measures.
3. ours <-> ours: two Tunnels in this process over loopback UDP, ``start_server`` on one and
   ``open_connection`` on the other (no root needed).

CPU per GB: our whole process (``resource.getrusage``, user + system, so the kernel's UDP and
veth/loopback work done on our syscalls counts too) and the wireguard-go processes (from
``/proc/<pid>/stat``; both of them in (1), the one in (2)).

Run: ``cd benchmarks && python -m pytest bench_tcp.py -q`` (as root for (1) and (2); they are
skipped with the reason otherwise). The summary table at the end prints Gbit/s per case and
direction and the ratios ours / wireguard-go. Every namespace created here is deleted.
"""
from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "tests" / "interop"))
if importlib.util.find_spec("agentconn") is None:   # not installed: use the source tree
    sys.path.insert(0, str(_ROOT / "src"))

import netns
from netns import Namespace, WireGuardGo, genkey, pubkey, veth_pair

SECONDS = float(os.environ.get("BENCH_TCP_SECONDS", "5"))
MTU = 1280
CHUNK = 1 << 20
GROUP = f"TCP, one stream through WireGuard, inner MTU {MTU}"
IPERF_PORT = 5201
PY_PORT = 5301
TIMEOUT = 60 + 4 * SECONDS

pytestmark = pytest.mark.timeout(int(120 + 10 * SECONDS))

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# the kernel-side Python peer: run as `python -c PEER <mode> <host> <port> [seconds]` in a
# namespace. Servers print READY once listening and accept one connection. Every mode prints one
# JSON line at the end: bytes moved, seconds (from connect/accept to the end), cpu seconds.

PEER = r"""
import json, resource, socket, sys, time
CHUNK = 1 << 20
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def drain(conn):
    # receive until EOF; returns (count, the first 64 bytes)
    view = memoryview(bytearray(CHUNK))
    n, head = 0, b""
    while True:
        k = conn.recv_into(view)
        if not k:
            return n, head
        if n < 64:
            head += bytes(view[:min(k, 64 - n)])
        n += k

def pump(conn):
    # send 1 MiB buffers for `seconds`, then FIN
    data = bytes(CHUNK)
    n, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        conn.sendall(data)
        n += CHUNK
    conn.shutdown(socket.SHUT_WR)
    return n

result = {}
if mode.startswith("serve-"):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1)
    srv.settimeout(120)
    print("READY", flush=True)
    conn, _ = srv.accept()
    srv.close()
    conn.settimeout(120)
    c0, t0 = cpu(), time.perf_counter()
    if mode == "serve-sink":      # count until EOF, then reply with the count
        n, _ = drain(conn)
        t1 = time.perf_counter()
        conn.sendall(b"%d\n" % n)
    else:                         # serve-source: send, then wait for the client's EOF
        n = pump(conn)
        t1 = time.perf_counter()
        drain(conn)
    conn.close()
else:
    conn = socket.create_connection((host, port), timeout=120)
    c0, t0 = cpu(), time.perf_counter()
    if mode == "send":            # send, FIN, then wait for the sink's count
        n = pump(conn)
        _, reply = drain(conn)
        result["confirmed"] = int(reply)
    else:                         # recv until EOF
        n, _ = drain(conn)
    t1 = time.perf_counter()
    conn.close()
result.update(bytes=n, seconds=t1 - t0, cpu=cpu() - c0)
print(json.dumps(result), flush=True)
"""


class Peer:
    """One PEER process in a namespace (killed with the namespace if it is still running)."""

    def __init__(self, ns: Namespace, mode: str, host: str, port: int,
                 seconds: float | None = None) -> None:
        args = [mode, host, str(port)] + ([str(seconds)] if seconds is not None else [])
        self.proc = ns.popen([sys.executable, "-c", PEER, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        if mode.startswith("serve-"):
            self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "READY":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"python peer did not start: {line!r} {err}")

    def result(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"python peer exited with {self.proc.returncode}: {err}")
        return dict(json.loads(out.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------------------------
# measurement helpers


@dataclasses.dataclass
class Transfer:
    nbytes: int
    seconds: float
    cpu: float = 0.0          # our process, user + system seconds, during the transfer
    wg_cpu: float = 0.0       # wireguard-go process(es), during the transfer
    note: str = ""


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK   # utime, stime
    return total


def _require_root(*tools: str) -> None:
    missing = netns.prerequisites(tools)
    if missing:
        pytest.skip("needs root, network namespaces, wireguard-go and wg: " + "; ".join(missing))


def _run_async(make: Callable[[], Coroutine[Any, Any, T]], timeout: float = TIMEOUT) -> T:
    """Run a coroutine on a fresh uvloop loop (stdlib asyncio if uvloop is missing)."""
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(make(), timeout))
    finally:
        loop.close()


def _measure(benchmark: Any, fn: Callable[[], Transfer]) -> Transfer:
    """Run one transfer under pytest-benchmark (one round) and return our own measurement."""
    box: list[Transfer] = []
    benchmark.group = GROUP
    benchmark.pedantic(lambda: box.append(fn()), rounds=1, iterations=1, warmup_rounds=0)
    return box[0]


def _record(record: Any, benchmark: Any, t: Transfer, *, case: str, role: str,
            direction: str, wg_processes: int = 0) -> None:
    assert t.nbytes > 0 and t.seconds > 0, t
    record.add_transfer(benchmark, group=GROUP, case=case, role=role, direction=direction,
                        nbytes=t.nbytes, seconds=t.seconds,
                        cpu_seconds=t.cpu if role == "ours" else None,
                        wg_cpu_seconds=t.wg_cpu if wg_processes else None,
                        note=t.note)


# ---------------------------------------------------------------------------------------------
# topology (1): wireguard-go <-> wireguard-go over veth, each in its own namespace


@dataclasses.dataclass
class GoPair:
    ns_a: Namespace
    ns_b: Namespace
    wg_a: WireGuardGo
    wg_b: WireGuardGo
    addr_a: str = "10.91.0.1"
    addr_b: str = "10.91.0.2"

    def wg_pids(self) -> list[int]:
        return [*self.wg_a.pids(), *self.wg_b.pids()]


def _wireguard_go(ns: Namespace, address: str) -> WireGuardGo:
    wg = WireGuardGo(ns, log_level="error").start()
    wg.add_address(address)
    wg.up(MTU)
    return wg


@pytest.fixture(scope="module")
def go_pair() -> Iterator[GoPair]:
    _require_root("iperf3")
    netns.reap_stale_namespaces()
    with Namespace("ga") as ns_a, Namespace("gb") as ns_b:
        veth_pair(ns_a, ns_b, "172.31.91.1/24", "172.31.91.2/24")
        wg_a = _wireguard_go(ns_a, "10.91.0.1/24")
        wg_b = _wireguard_go(ns_b, "10.91.0.2/24")
        wg_a.set_peer(wg_b.public_key, allowed_ips=["10.91.0.2/32"],
                      endpoint=f"172.31.91.2:{wg_b.listen_port}")
        wg_b.set_peer(wg_a.public_key, allowed_ips=["10.91.0.1/32"],
                      endpoint=f"172.31.91.1:{wg_a.listen_port}")
        ns_a.run(["ping", "-n", "-c", "1", "-W", "5", "10.91.0.2"])   # handshake, route check
        ns_b.popen(["iperf3", "-s", "-B", "10.91.0.2", "-p", str(IPERF_PORT)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(ns_b, IPERF_PORT)
        yield GoPair(ns_a, ns_b, wg_a, wg_b)
    _assert_gone(ns_a, ns_b)


def _assert_gone(*namespaces: Namespace) -> None:
    """The namespaces (and so their veths, wireguard-go and peers) are deleted."""
    left = [ns.name for ns in namespaces if ns.path.exists()]
    assert not left, f"namespaces left behind: {left}"


def _wait_listening(ns: Namespace, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} in {ns.name}")


DIRECTIONS = ["upload", "download"]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_baseline_iperf3(benchmark: Any, record: Any, go_pair: GoPair, direction: str) -> None:
    def run() -> Transfer:
        pids = go_pair.wg_pids()
        wg0 = _cpu_of(pids)
        r = go_pair.ns_a.run(
            ["iperf3", "-c", go_pair.addr_b, "-p", str(IPERF_PORT), "-t", f"{SECONDS:g}", "-J",
             *(["-R"] if direction == "download" else [])], timeout=TIMEOUT, check=False)
        wg_cpu = _cpu_of(pids) - wg0
        report = json.loads(r.stdout)
        assert r.returncode == 0 and "error" not in report, r.stdout[-2000:] + r.stderr
        received = report["end"]["sum_received"]
        cpu = report["end"].get("cpu_utilization_percent", {})
        note = (f"iperf3 cpu: host {cpu.get('host_total', 0):.0f}% "
                f"remote {cpu.get('remote_total', 0):.0f}%; "
                f"retransmits {report['end'].get('sum_sent', {}).get('retransmits', '?')}")
        assert received["bytes"] * 8 / received["seconds"] == pytest.approx(
            received["bits_per_second"], rel=0.01)
        return Transfer(int(received["bytes"]), float(received["seconds"]), wg_cpu=wg_cpu,
                        note=note)

    t = _measure(benchmark, run)
    _record(record, benchmark, t, case="wireguard-go <-> wireguard-go, iperf3",
            role="baseline-iperf3", direction=direction, wg_processes=2)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_baseline_python(benchmark: Any, record: Any, go_pair: GoPair, direction: str) -> None:
    port = PY_PORT + DIRECTIONS.index(direction)

    def run() -> Transfer:
        pids = go_pair.wg_pids()
        if direction == "upload":
            server = Peer(go_pair.ns_b, "serve-sink", go_pair.addr_b, port)
            client_mode = "send"
        else:
            server = Peer(go_pair.ns_b, "serve-source", go_pair.addr_b, port, SECONDS)
            client_mode = "recv"
        wg0 = _cpu_of(pids)
        client = Peer(go_pair.ns_a, client_mode, go_pair.addr_b, port, SECONDS)
        c, s = client.result(), server.result()
        wg_cpu = _cpu_of(pids) - wg0
        if direction == "upload":
            assert c["confirmed"] == c["bytes"] == s["bytes"], (c, s)
        else:
            assert c["bytes"] == s["bytes"], (c, s)
        note = (f"peer cpu: client {c['cpu'] / c['seconds']:.0%} "
                f"server {s['cpu'] / s['seconds']:.0%} of a core")
        return Transfer(c["bytes"], c["seconds"], wg_cpu=wg_cpu, note=note)

    t = _measure(benchmark, run)
    _record(record, benchmark, t, case="wireguard-go <-> wireguard-go, python",
            role="baseline-python", direction=direction, wg_processes=2)


# ---------------------------------------------------------------------------------------------
# our side: client code shared by (2) and (3)


async def _upload(tunnel: Any, host: str, port: int) -> Transfer:
    """Write 1 MiB buffers for SECONDS, FIN, and wait for the sink's byte count."""
    reader, writer = await tunnel.open_connection(host, port)
    data = bytes(CHUNK)
    sent = 0
    c0, t0 = _cpu_self(), time.perf_counter()
    deadline = t0 + SECONDS
    while time.perf_counter() < deadline:
        writer.write(data)
        sent += CHUNK
        await writer.drain()
    writer.write_eof()
    reply = b""
    while chunk := await reader.read(64):
        reply += chunk
    t1, c1 = time.perf_counter(), _cpu_self()
    writer.close()
    await writer.wait_closed()
    assert int(reply) == sent, (reply, sent)
    return Transfer(sent, t1 - t0, cpu=c1 - c0)


async def _download(tunnel: Any, host: str, port: int) -> Transfer:
    """Read until EOF from a source that sends for SECONDS."""
    reader, writer = await tunnel.open_connection(host, port)
    received = 0
    c0, t0 = _cpu_self(), time.perf_counter()
    while chunk := await reader.read(CHUNK):
        received += len(chunk)
    t1, c1 = time.perf_counter(), _cpu_self()
    writer.close()
    await writer.wait_closed()
    return Transfer(received, t1 - t0, cpu=c1 - c0)


async def _in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


# ---------------------------------------------------------------------------------------------
# topology (2): our Tunnel (socket in ns_u) <-veth-> wireguard-go + kernel TCP (ns_k)


@dataclasses.dataclass
class KernelSide:
    ns_u: Namespace            # holds only our UDP socket's end of the veth
    ns_k: Namespace            # wireguard-go and the kernel TCP stack behind it
    wg: WireGuardGo
    our_private_key: str
    our_udp_host: str = "172.31.92.2"
    their_udp_host: str = "172.31.92.1"
    their_addr: str = "10.92.0.1"
    our_addr: str = "10.92.0.2"

    def config(self) -> str:
        return (f"[Interface]\nPrivateKey = {self.our_private_key}\nMTU = {MTU}\n"
                f"Address = {self.our_addr}/32\n\n"
                f"[Peer]\nPublicKey = {self.wg.public_key}\n"
                f"Endpoint = {self.their_udp_host}:{self.wg.listen_port}\n"
                f"AllowedIPs = {self.their_addr}/32\n")

    def socket(self) -> socket.socket:
        with self.ns_u.enter():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.our_udp_host, 0))
        return sock


@pytest.fixture(scope="module")
def kernel_side() -> Iterator[KernelSide]:
    _require_root()
    netns.reap_stale_namespaces()
    with Namespace("ou") as ns_u, Namespace("ok") as ns_k:
        veth_pair(ns_u, ns_k, "172.31.92.2/24", "172.31.92.1/24")
        wg = _wireguard_go(ns_k, "10.92.0.1/24")
        our_key = genkey()
        # No endpoint for us: we always initiate and wireguard-go learns ours from it.
        wg.set_peer(pubkey(our_key), allowed_ips=["10.92.0.2/32"])
        yield KernelSide(ns_u, ns_k, wg, our_key)
    _assert_gone(ns_u, ns_k)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ours_to_kernel(benchmark: Any, record: Any, kernel_side: KernelSide,
                        direction: str) -> None:
    from agentconn import Tunnel

    ks = kernel_side
    port = PY_PORT + 10 + DIRECTIONS.index(direction)

    async def main() -> Transfer:
        tunnel = Tunnel.from_config(ks.config(), sock=ks.socket())
        await tunnel.start()
        try:
            await tunnel.ping(ks.their_addr, timeout=10)      # handshake before the clock runs
            if direction == "upload":
                server = Peer(ks.ns_k, "serve-sink", ks.their_addr, port)
            else:
                server = Peer(ks.ns_k, "serve-source", ks.their_addr, port, SECONDS)
            pids = ks.wg.pids()
            wg0 = _cpu_of(pids)
            if direction == "upload":
                t = await _upload(tunnel, ks.their_addr, port)
            else:
                t = await _download(tunnel, ks.their_addr, port)
            t.wg_cpu = _cpu_of(pids) - wg0
            s = await _in_thread(server.result)
            assert s["bytes"] == t.nbytes, (s, t)
            drops = {k: v for k, v in tunnel.stats()["drops"].items() if v}
            t.note = (f"kernel peer cpu {s['cpu'] / s['seconds']:.0%}"
                      + (f"; drops {drops}" if drops else ""))
            return t
        finally:
            await tunnel.close()

    t = _measure(benchmark, lambda: _run_async(main))
    _record(record, benchmark, t, case="ours -> wireguard-go + kernel TCP, python",
            role="ours", direction=direction, wg_processes=1)


# ---------------------------------------------------------------------------------------------
# topology (3): two of our Tunnels in this process over loopback UDP


def _loopback_configs(net: str = "10.93.0") -> tuple[str, str]:
    """Two peers' configs (fresh keys) on ``net``.1 and ``net``.2, no endpoints."""
    from agentconn.wg.crypto import dh_generate, public_key
    from agentconn.wg.keys import encode_key

    ka, kb = dh_generate(), dh_generate()

    def conf(own: bytes, peer: bytes, me: int, them: int) -> str:
        return (f"[Interface]\nPrivateKey = {encode_key(own)}\nMTU = {MTU}\n"
                f"Address = {net}.{me}/32\n"
                f"[Peer]\nPublicKey = {encode_key(public_key(peer))}\n"
                f"AllowedIPs = {net}.{them}/32\n")
    return conf(ka, kb, 1, 2), conf(kb, ka, 2, 1)


async def _serve_sink(reader: Any, writer: Any) -> None:
    n = 0
    while chunk := await reader.read(CHUNK):
        n += len(chunk)
    writer.write(b"%d\n" % n)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def _serve_source(reader: Any, writer: Any) -> None:
    data = bytes(CHUNK)
    deadline = time.perf_counter() + SECONDS
    while time.perf_counter() < deadline:
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    while await reader.read(CHUNK):      # until the client's EOF
        pass
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ours_to_ours_loopback(benchmark: Any, record: Any, direction: str) -> None:
    from agentconn import Tunnel

    port = 5401

    async def main() -> Transfer:
        ca, cb = _loopback_configs()
        a = Tunnel.from_config(ca, listen_host="127.0.0.1")
        b = Tunnel.from_config(cb, listen_host="127.0.0.1")
        await a.start()
        await b.start()
        server = None
        try:
            a.set_peer_endpoint(b.public_key, "127.0.0.1", b.listen_port)
            await a.ping("10.93.0.2", timeout=10)             # handshake before the clock runs
            handler = _serve_sink if direction == "upload" else _serve_source
            server = await b.start_server(handler, port)
            if direction == "upload":
                t = await _upload(a, "10.93.0.2", port)
            else:
                t = await _download(a, "10.93.0.2", port)
            drops = {k: v for side in (a, b) for k, v in side.stats()["drops"].items() if v}
            t.note = "cpu: both ends" + (f"; drops {drops}" if drops else "")
            return t
        finally:
            if server is not None:
                server.close()
                await server.wait_closed()
            await a.close()
            await b.close()

    t = _measure(benchmark, lambda: _run_async(main))
    _record(record, benchmark, t, case="ours <-> ours, loopback UDP, one process",
            role="ours", direction=direction)

