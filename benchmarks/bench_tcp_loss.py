"""One TCP stream through WireGuard on a lossy path, ours against the kernel, side by side.

A seeded userspace UDP relay sits between the two WireGuard peers and drops, reorders and
duplicates the encrypted datagrams (both directions alike): ``--loss`` percent lost (default
0, 1, 2 and 5), 5 % held back by a random 0..``--reorder-ms`` (default 1 ms), 1 % sent twice.
For each loss rate, three cases move ``--size`` MB one way (client -> server, "upload") and
report goodput at the sender (bytes / time until the sink confirms the count):

(a) ours <-> ours: two of our Tunnels in this process over loopback UDP, each peer's endpoint
    pointing at the relay (also on loopback);
(b) kernel <-> kernel: kernel TCP through wireguard-go <-> wireguard-go, each in its own network
    namespace, joined by veths to a third namespace that runs the relay; both kernel sockets
    use ``--kernel-cc`` (default cubic, Linux's default, set per socket: the namespaces
    inherit the host's default, which may be BBR);
(c) ours -> kernel: our Tunnel (its UDP socket in (b)'s first namespace) to the kernel TCP
    behind (b)'s second wireguard-go, through the same relay.

RTOs per MB: ours from the sending connection's ``counters()["timeouts"]``; the kernel's from
``TcpExt TCPTimeouts`` in /proc/net/netstat of the sending namespace. The table gives MB/s per
case and the ratio of (a) and (c) to (b). (b) and (c) need root, ``ip netns`` and
wireguard-go (skipped with the reason otherwise); every namespace made here is deleted.

Run: ``PYTHONPATH=src python benchmarks/bench_tcp_loss.py [--size 16] [--loss 0 1 2 5]
[--cases a b c] [--kernel-cc cubic|bbr] [-v]``; ``-v`` adds our sender's counters (including
``limited_cwnd_s`` etc.: what held it back), the kernel sender's ``ss -ti`` sampled during the
transfer and its TcpExt recovery / undo counters. The relay is one Python process: at 0 % loss it is the bottleneck of every
case alike (the ratio is what matters). On a shared machine the numbers are noisy.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "tests" / "interop"))
if importlib.util.find_spec("agentconn") is None:   # not installed: use the source tree
    sys.path.insert(0, str(_ROOT / "src"))

MTU = 1280
CHUNK = 1 << 20
PORT = 5501
TIMEOUT = 300.0

# -- the relay: `python -c RELAY h0 p0 a_host a_port h1 p1 b_host b_port loss reorder dup
#    reorder_s seed`. Datagrams from A arrive on (h0, p0) and leave (h1, p1) for B; from B on
#    (h1, p1) and leave (h0, p0) for A. Prints READY once bound; on SIGTERM prints counts.
RELAY = r"""
import heapq, random, select, signal, socket, sys, time
h0, p0, ah, ap, h1, p1, bh, bp = sys.argv[1:9]
loss, reorder, dup, hold, seed = map(float, sys.argv[9:14])
socks = []
for h, p in ((h0, p0), (h1, p1)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    s.bind((h, int(p)))
    s.setblocking(False)
    socks.append(s)
dst = [(bh, int(bp)), (ah, int(ap))]          # where datagrams read on socks[i] go
out = [socks[1], socks[0]]                    # ... and the socket they leave from
rngs = [random.Random(int(seed) * 2 + 1), random.Random(int(seed) * 2 + 2)]
count = {"in": [0, 0], "lost": [0, 0], "dup": [0, 0], "held": [0, 0], "err": [0, 0]}
held = []
n = 0
def stop(*_):
    print(count, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
poller = select.poll()
for s in socks:
    poller.register(s.fileno(), select.POLLIN)
fds = {s.fileno(): i for i, s in enumerate(socks)}
print("READY", flush=True)
def send(i, data):
    try:
        out[i].sendto(data, dst[i])
    except OSError:
        count["err"][i] += 1
while True:
    timeout = None
    if held:
        timeout = max(0.0, (held[0][0] - time.monotonic()) * 1000.0)
    for fd, _ in poller.poll(timeout):
        i = fds[fd]
        rng = rngs[i]
        for _ in range(256):
            try:
                data = socks[i].recv(65535)
            except BlockingIOError:
                break
            count["in"][i] += 1
            if rng.random() < loss:
                count["lost"][i] += 1
                continue
            copies = 2 if rng.random() < dup else 1
            count["dup"][i] += copies - 1
            for _ in range(copies):
                if rng.random() < reorder:
                    n += 1
                    count["held"][i] += 1
                    heapq.heappush(held, (time.monotonic() + hold * rng.random(), n, i, data))
                else:
                    send(i, data)
    now = time.monotonic()
    while held and held[0][0] <= now:
        _, _, i, data = heapq.heappop(held)
        send(i, data)
"""

# -- the kernel-side peer: `python -c PEER serve|send host port cc [nbytes]`
PEER = r"""
import socket, sys, time
mode, host, port, cc = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
if mode == "serve":
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(4)
    print("READY", flush=True)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc)
        view = memoryview(bytearray(1 << 20))
        n = 0
        while k := conn.recv_into(view):
            n += k
        conn.sendall(b"%d\n" % n)
        conn.close()
else:
    nbytes = int(sys.argv[5])
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc)   # before SYN: whole life
    conn.settimeout(600)
    conn.connect((host, port))
    data = bytes(1 << 20)
    t0 = time.perf_counter()
    left = nbytes
    while left:
        k = min(left, len(data))
        conn.sendall(data[:k])
        left -= k
    conn.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := conn.recv(64):
        reply += chunk
    t1 = time.perf_counter()
    assert int(reply) == nbytes, (reply, nbytes)
    print(f"{nbytes} {t1 - t0}", flush=True)
"""


def _wait_line(proc: subprocess.Popen[str], want: str, timeout: float = 30.0) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != want:
        proc.kill()
        raise RuntimeError(f"{want} expected, got {line!r}")


class Relay:
    """The relay process, on loopback (ns None) or inside a namespace."""

    def __init__(self, ns: Any, a0: tuple[str, int], peer_a: tuple[str, int],
                 a1: tuple[str, int], peer_b: tuple[str, int], loss: float, args: Any,
                 seed: int) -> None:
        argv = [sys.executable, "-c", RELAY, a0[0], str(a0[1]), peer_a[0], str(peer_a[1]),
                a1[0], str(a1[1]), peer_b[0], str(peer_b[1]), str(loss / 100),
                str(args.reorder / 100), str(args.duplicate / 100),
                str(args.reorder_ms / 1000), str(seed)]
        kw: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        self.proc = ns.popen(argv, **kw) if ns is not None else subprocess.Popen(argv, **kw)
        _wait_line(self.proc, "READY")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return str(out).strip()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_async(coro: Any) -> Any:
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))
    finally:
        loop.close()


async def _sink(reader: Any, writer: Any) -> None:
    n = 0
    while chunk := await reader.read(CHUNK):
        n += len(chunk)
    writer.write(b"%d\n" % n)
    await writer.drain()
    writer.close()


async def _upload(tunnel: Any, host: str, port: int, nbytes: int) -> dict[str, Any]:
    """Send `nbytes`, FIN, wait for the sink's count; goodput and our connection's counters."""
    reader, writer = await tunnel.open_connection(host, port)
    conn = writer.transport.get_extra_info("tcp_connection")
    data = bytes(CHUNK)
    t0 = time.perf_counter()
    left = nbytes
    while left:
        k = min(left, CHUNK)
        writer.write(data[:k])
        left -= k
        await writer.drain()
    writer.write_eof()
    reply = b""
    while chunk := await reader.read(64):
        reply += chunk
    seconds = time.perf_counter() - t0
    k = conn.counters()
    writer.close()
    assert int(reply) == nbytes, (reply, nbytes)
    return {"seconds": seconds, "rtos": k["timeouts"], "counters": k}


def _loopback_configs() -> tuple[str, str]:
    # bench_tcp's, on a subnet of our own (the same MTU, 1280)
    sys.path.insert(0, str(_ROOT / "benchmarks"))
    from bench_tcp import _loopback_configs as configs

    return configs("10.94.0")


def case_ours_ours(loss: float, nbytes: int, args: Any, seed: int) -> dict[str, Any]:
    from agentconn import Tunnel

    async def main() -> dict[str, Any]:
        ca, cb = _loopback_configs()
        a = Tunnel.from_config(ca, listen_host="127.0.0.1")
        b = Tunnel.from_config(cb, listen_host="127.0.0.1")
        await a.start()
        await b.start()
        r0, r1 = _free_udp_port(), _free_udp_port()
        relay = Relay(None, ("127.0.0.1", r0), ("127.0.0.1", a.listen_port),
                      ("127.0.0.1", r1), ("127.0.0.1", b.listen_port), loss, args, seed)
        server = None
        try:
            a.set_peer_endpoint(b.public_key, "127.0.0.1", r0)
            b.set_peer_endpoint(a.public_key, "127.0.0.1", r1)
            for _ in range(20):              # the handshake itself may be lost
                try:
                    await a.ping("10.94.0.2", timeout=2)
                    break
                except (TimeoutError, asyncio.TimeoutError, OSError):
                    continue
            server = await b.start_server(_sink, PORT)
            res = await _upload(a, "10.94.0.2", PORT, nbytes)
            res["relay"] = relay.stop()
            return res
        finally:
            if relay.proc.poll() is None:
                relay.stop()
            if server is not None:
                server.close()
            await a.close()
            await b.close()

    result: dict[str, Any] = _run_async(main())
    return result


def _tcp_ext(ns: Any) -> dict[str, int]:
    lines = ns.run(["cat", "/proc/net/netstat"]).stdout.splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            return {k: int(v) for k, v in zip(head.split()[1:], vals.split()[1:])}
    return {}


def _tcp_timeouts(ns: Any) -> int:
    return _tcp_ext(ns).get("TCPTimeouts", 0)


# the kernel's counterparts of our counters (recoveries, undos, RACK, TLP), shown with -v
KERNEL_COUNTERS = ("TCPSackRecovery", "TCPFullUndo", "TCPPartialUndo", "TCPDSACKUndo",
                   "TCPLossUndo", "TCPSackRecoveryFail", "TCPLostRetransmit", "TCPLossProbes",
                   "TCPLossProbeRecovery", "TCPDSACKRecv", "TCPSACKReorder", "TCPTSReorder",
                   "TCPRenoReorder", "TCPSpuriousRtxHostQueues", "TCPDelivered")


@contextmanager
def kernel_topology(cc: str = "cubic") -> Iterator[dict[str, Any]]:
    """nsA (wireguard-go A + kernel client, and our socket for (c)) -veth- nsR (relay) -veth-
    nsB (wireguard-go B + kernel sink)."""
    import netns  # type: ignore[import-not-found]
    from netns import Namespace, WireGuardGo, genkey, pubkey, veth_pair

    missing = netns.prerequisites(())
    if missing:
        raise RuntimeError("; ".join(missing))
    with ExitStack() as stack:
        ns_a = stack.enter_context(Namespace("tla"))
        ns_b = stack.enter_context(Namespace("tlb"))
        ns_r = stack.enter_context(Namespace("tlr"))
        veth_pair(ns_a, ns_r, "172.31.95.1/24", "172.31.95.2/24")
        veth_pair(ns_b, ns_r, "172.31.96.1/24", "172.31.96.2/24")

        def wg(ns: Any, addr: str) -> Any:
            w = WireGuardGo(ns, log_level="error").start()
            w.add_address(addr)
            w.up(MTU)
            return w

        wg_a = wg(ns_a, "10.95.0.1/24")
        wg_b = wg(ns_b, "10.95.0.2/24")
        relay_a, relay_b = ("172.31.95.2", 7001), ("172.31.96.2", 7002)
        our_key = genkey()
        wg_a.set_peer(wg_b.public_key, allowed_ips=["10.95.0.2/32"],
                      endpoint=f"{relay_a[0]}:{relay_a[1]}")
        wg_b.set_peer(wg_a.public_key, allowed_ips=["10.95.0.1/32"],
                      endpoint=f"{relay_b[0]}:{relay_b[1]}")
        wg_b.set_peer(pubkey(our_key), allowed_ips=["10.95.0.3/32"],
                      endpoint=f"{relay_b[0]}:{relay_b[1]}")
        # The kernel's congestion control, per socket (TCP_CONGESTION; root may pick any):
        # a namespace inherits the host's default, which may be BBR (it is on our CI machine),
        # a loss-agnostic model that keeps its window through 5 % loss and resends a third of
        # the data. The reference is Linux's default, CUBIC (with RACK and PRR);
        # --kernel-cc bbr shows BBR for scale.
        sink = ns_b.popen([sys.executable, "-c", PEER, "serve", "10.95.0.2", str(PORT), cc],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_line(sink, "READY")
        yield {"ns_a": ns_a, "ns_b": ns_b, "ns_r": ns_r, "wg_a": wg_a, "wg_b": wg_b,
               "relay_a": relay_a, "relay_b": relay_b, "our_key": our_key}
    left = [ns.name for ns in (ns_a, ns_b, ns_r) if ns.path.exists()]
    assert not left, f"namespaces left behind: {left}"


def _ss_summary(lines: list[str]) -> dict[str, Any]:
    """Means of cwnd / ssthresh / rtt over `ss -ti` samples, and the last sample's counters."""
    import re

    def num(line: str, key: str) -> float | None:
        m = re.search(rf"\b{key}:([0-9.]+)", line)
        return float(m.group(1)) if m else None

    out: dict[str, Any] = {"samples": len(lines)}
    for key in ("cwnd", "ssthresh", "rtt", "reordering"):
        vals = [v for v in (num(ln, key) for ln in lines) if v is not None]
        if vals:
            out[f"mean_{key}"] = round(sum(vals) / len(vals), 3)
    last = lines[-1]
    for key in ("busy", "rwnd_limited", "sndbuf_limited", "retrans", "dsack_dups",
                "reord_seen", "bytes_retrans", "minrtt"):
        m = re.search(rf"\b{key}:(\S+)", last)
        if m:
            out[key] = m.group(1)
    return out


def case_kernel_kernel(topo: dict[str, Any], loss: float, nbytes: int, args: Any,
                       seed: int) -> dict[str, Any]:
    relay = Relay(topo["ns_r"], topo["relay_a"], ("172.31.95.1", topo["wg_a"].listen_port),
                  topo["relay_b"], ("172.31.96.1", topo["wg_b"].listen_port), loss, args, seed)
    try:
        ns_a = topo["ns_a"]
        for _ in range(20):
            if ns_a.run(["ping", "-n", "-c", "1", "-W", "1", "10.95.0.2"],
                        check=False).returncode == 0:
                break
        rto0 = _tcp_timeouts(ns_a)
        ext0 = _tcp_ext(ns_a) if args.verbose else {}
        samples: list[str] = []
        stop = threading.Event()

        def sample() -> None:          # --verbose: the sender's `ss -ti` during the transfer
            while not stop.wait(0.01):
                out = ns_a.run(["ss", "-tin", "dst", "10.95.0.2"], check=False).stdout
                lines = [ln.strip() for ln in out.splitlines() if "cwnd:" in ln]
                samples.extend(lines)

        sampler = threading.Thread(target=sample, daemon=True)
        if args.verbose:
            sampler.start()
        r = ns_a.run([sys.executable, "-c", PEER, "send", "10.95.0.2", str(PORT),
                      args.kernel_cc, str(nbytes)],
                     timeout=TIMEOUT)
        stop.set()
        if args.verbose:
            sampler.join()
        n, seconds = r.stdout.split()
        assert int(n) == nbytes
        res = {"seconds": float(seconds), "rtos": _tcp_timeouts(ns_a) - rto0,
               "relay": relay.stop()}
        if samples:
            res["ss"] = _ss_summary(samples)
            if os.environ.get("BENCH_SS_RAW"):
                print("\n".join(samples[:: max(1, len(samples) // 8)]))
        if ext0:
            ext1 = _tcp_ext(ns_a)
            res["ss"] = {**res.get("ss", {}), **{k: ext1.get(k, 0) - ext0.get(k, 0)
                                                  for k in KERNEL_COUNTERS}}
        return res
    finally:
        if relay.proc.poll() is None:
            relay.stop()


def case_ours_kernel(topo: dict[str, Any], loss: float, nbytes: int, args: Any,
                     seed: int) -> dict[str, Any]:
    from agentconn import Tunnel

    with topo["ns_a"].enter():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("172.31.95.1", 0))
    relay = Relay(topo["ns_r"], topo["relay_a"], ("172.31.95.1", sock.getsockname()[1]),
                  topo["relay_b"], ("172.31.96.1", topo["wg_b"].listen_port), loss, args, seed)
    config = (f"[Interface]\nPrivateKey = {topo['our_key']}\nMTU = {MTU}\n"
              f"Address = 10.95.0.3/32\n\n[Peer]\nPublicKey = {topo['wg_b'].public_key}\n"
              f"Endpoint = {topo['relay_a'][0]}:{topo['relay_a'][1]}\n"
              f"AllowedIPs = 10.95.0.2/32\n")

    async def main() -> dict[str, Any]:
        tunnel = Tunnel.from_config(config, sock=sock)
        await tunnel.start()
        try:
            for _ in range(20):
                try:
                    await tunnel.ping("10.95.0.2", timeout=2)
                    break
                except (TimeoutError, asyncio.TimeoutError, OSError):
                    continue
            return await _upload(tunnel, "10.95.0.2", PORT, nbytes)
        finally:
            await tunnel.close()

    try:
        res: dict[str, Any] = _run_async(main())
        res["relay"] = relay.stop()
        return res
    finally:
        if relay.proc.poll() is None:
            relay.stop()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=float, default=16, help="MB per transfer (default 16)")
    p.add_argument("--loss", type=float, nargs="+", default=[0, 1, 2, 5], help="percent")
    p.add_argument("--reorder", type=float, default=5, help="percent held back (default 5)")
    p.add_argument("--reorder-ms", type=float, default=1.0, help="most a datagram is held")
    p.add_argument("--duplicate", type=float, default=1, help="percent sent twice (default 1)")
    p.add_argument("--cases", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kernel-cc", default="cubic",
                   help="the kernel's congestion control in (b) and (c) (default cubic, "
                        "Linux's default; the host's own default may differ)")
    p.add_argument("--verbose", "-v", action="store_true")
    args = p.parse_args(argv)
    nbytes = int(args.size * 1e6)
    names = {"a": "ours<->ours", "b": "kernel<->kernel", "c": "ours->kernel"}
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        topo = None
        if {"b", "c"} & set(args.cases):
            try:
                topo = stack.enter_context(kernel_topology(args.kernel_cc))
            except Exception as e:    # no root / no wireguard-go: (a) only
                print(f"skipping (b), (c): {e}", file=sys.stderr)
        for loss in args.loss:
            for case in args.cases:
                if case != "a" and topo is None:
                    continue
                if case == "a":
                    res = case_ours_ours(loss, nbytes, args, args.seed)
                elif topo is None:
                    continue
                elif case == "b":
                    res = case_kernel_kernel(topo, loss, nbytes, args, args.seed)
                else:
                    res = case_ours_kernel(topo, loss, nbytes, args, args.seed)
                row = {"loss": loss, "case": names[case], "mb_s": nbytes / 1e6 / res["seconds"],
                       "seconds": res["seconds"], "rtos_per_mb": res["rtos"] / (nbytes / 1e6)}
                if "counters" in res:
                    k = res["counters"]
                    row.update({key: k.get(key) for key in (
                        "retransmits", "rack_marks", "tlp_probes", "recoveries",
                        "spurious_retrans", "undo_count", "dsack_received")})
                rows.append(row)
                if args.verbose and "ss" in res:
                    print("    kernel sender (ss -ti):", res["ss"])
                print(f"loss {loss:g}% {row['case']:16s} {row['mb_s']:8.2f} MB/s "
                      f"{row['seconds']:7.2f} s  RTOs/MB {row['rtos_per_mb']:.2f}"
                      + (f"  {res['relay']}" if args.verbose else ""), flush=True)
                if args.verbose and "counters" in res:
                    print("   ", {key: res["counters"][key] for key in (
                        "srtt", "min_rtt", "rto", "cwnd", "limited_cwnd_s", "limited_rwnd_s",
                        "limited_app_s", "retransmits", "rack_marks",
                        "tlp_probes", "tlp_recoveries", "recoveries", "timeouts",
                        "spurious_retrans", "undo_count", "dsack_received", "reo_wnd")})
    print(f"\nTCP under loss: {args.size:g} MB upload per case, inner MTU {MTU}, "
          f"kernel congestion control {args.kernel_cc}, "
          f"reorder {args.reorder:g}% (<= {args.reorder_ms:g} ms), duplicate {args.duplicate:g}%")
    print(f"{'loss':>5} | {'case':16s} | {'MB/s':>8} | {'ratio to kernel':>15} | {'RTOs/MB':>7}")
    for row in rows:
        base = next((r for r in rows if r["loss"] == row["loss"]
                     and r["case"] == names["b"]), None)
        ratio = f"{row['mb_s'] / base['mb_s']:.2f}" if base and row is not base else ""
        print(f"{row['loss']:>4g}% | {row['case']:16s} | {row['mb_s']:8.2f} | {ratio:>15} | "
              f"{row['rtos_per_mb']:7.2f}")
    return rows


def test_tcp_loss_smoke() -> None:
    """pytest entry (benchmarks/ conventions): a small run of (a) at 2 % loss."""
    rows = main(["--size", "2", "--loss", "2", "--cases", "a"])
    assert rows and rows[0]["mb_s"] > 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
