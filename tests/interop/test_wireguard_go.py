"""Our Tunnel against real wireguard-go (Debian package) with the Linux kernel's IP stack behind it.

Topology (netns.wg_pair): one namespace the test creates; wireguard-go's TUN has 10.77.0.1 and
fd77::1; our userspace peer is 10.77.0.2 / fd77::2 and its UDP socket is created inside the
namespace, so the encrypted traffic crosses that namespace's loopback only.
"""
from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import sys
import time
from pathlib import Path

import pytest

from agentconn import Tunnel
from netns import Namespace, WgPair, wg_pair

pytestmark = pytest.mark.timeout(120)


def _bound_socket(ns: Namespace, port: int = 0) -> socket.socket:
    with ns.enter():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    return sock


async def _tunnel(pair: WgPair, sock: socket.socket | None = None,
                  keepalive: int | None = None) -> Tunnel:
    tunnel = Tunnel.from_config(pair.wg_quick_config(persistent_keepalive=keepalive),
                                sock=sock or _bound_socket(pair.ns))
    await tunnel.start()
    return tunnel


async def _run_in(ns: Namespace, *cmd: str, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *ns.exec_prefix(), *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(errors="replace")


def _their_handshake_age(pair: WgPair) -> float | None:
    """Seconds since wireguard-go's last handshake with us (None: never)."""
    out = pair.wg.wg("show", pair.wg.iface, "latest-handshakes").split()
    stamp = int(out[1]) if len(out) >= 2 else 0
    return None if stamp == 0 else time.time() - stamp


async def test_we_initiate_and_ping_kernel_over_ipv4_and_ipv6(wgpair: WgPair) -> None:
    tunnel = await _tunnel(wgpair)
    try:
        rtt4 = await tunnel.ping("10.77.0.1", timeout=10)
        rtt6 = await tunnel.ping("fd77::1", timeout=10)
        assert 0 < rtt4 < 10 and 0 < rtt6 < 10
        for _ in range(5):
            await tunnel.ping("10.77.0.1", timeout=5)
        stats = tunnel.stats()
        assert stats["handshakes"]["initiations_sent"] == 1
        assert stats["handshakes"]["completed"] == 1
        assert stats["rx_packets"] >= 7 and stats["tx_packets"] >= 7
        assert sum(stats["drops"].values()) == 0, stats["drops"]
        age = _their_handshake_age(wgpair)
        assert age is not None and age < 60
    finally:
        await tunnel.close()


async def test_wireguard_go_initiates_and_kernel_ping_reaches_us(netns: Namespace) -> None:
    sock = _bound_socket(netns)
    pair = wg_pair(netns, our_port=sock.getsockname()[1])
    tunnel = await _tunnel(pair, sock)
    try:
        code, out = await _run_in(netns, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "5",
                                  "10.77.0.2")
        assert code == 0, out
        code, out = await _run_in(netns, "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "5",
                                  "fd77::2")
        assert code == 0, out
        stats = tunnel.stats()
        assert stats["handshakes"]["responses_sent"] == 1
        assert stats["handshakes"]["initiations_sent"] == 0
        assert stats["handshakes"]["completed"] == 1      # confirmed by wireguard-go's first data
        assert stats["ip"]["echo_answered"] == 6
        # and the session works in our direction too, without a new handshake
        await tunnel.ping("10.77.0.1", timeout=5)
        assert tunnel.stats()["handshakes"]["completed"] == 1
    finally:
        await tunnel.close()
        pair.wg.stop()


async def test_rekey_keeps_the_session(wgpair: WgPair) -> None:
    tunnel = await _tunnel(wgpair)
    try:
        await tunnel.ping("10.77.0.1", timeout=10)
        first = tunnel.stats()["peers"][0]["keypairs"]["current"]["local_index"]
        lost: list[Exception] = []
        replies = 0

        async def keep_pinging(until: float) -> None:
            nonlocal replies
            while time.monotonic() < until:
                try:
                    await tunnel.ping("10.77.0.1", timeout=2)
                    replies += 1
                except Exception as exc:  # noqa: BLE001 - any failure is a lost ping here
                    lost.append(exc)
                await asyncio.sleep(0.05)

        pinger = asyncio.ensure_future(keep_pinging(time.monotonic() + 8.0))
        # A new initiation is allowed once REKEY_TIMEOUT (5 s) has passed since the last one.
        await asyncio.sleep(5.3)
        tunnel.rekey()
        await pinger
        stats = tunnel.stats()
        assert stats["handshakes"]["initiations_sent"] == 2
        assert stats["handshakes"]["completed"] == 2
        keypairs = stats["peers"][0]["keypairs"]
        assert keypairs["current"]["local_index"] != first
        assert keypairs["previous"]["local_index"] == first
        assert lost == [] and replies > 50
        assert sum(stats["drops"].values()) == 0, stats["drops"]
    finally:
        await tunnel.close()


async def test_our_responder_under_load_sends_cookies_wireguard_go_accepts(
        netns: Namespace) -> None:
    sock = _bound_socket(netns)
    pair = wg_pair(netns, our_port=sock.getsockname()[1])
    tunnel = await _tunnel(pair, sock)
    tunnel.device.force_under_load = True
    try:
        # wireguard-go's first initiation has no mac2 -> we answer with a cookie reply; its
        # retransmission 5 s later carries mac2 computed with our cookie -> we accept it.
        code, out = await _run_in(netns, "ping", "-n", "-c", "1", "-W", "20", "10.77.0.2")
        assert code == 0, out
        stats = tunnel.stats()
        assert stats["handshakes"]["cookie_replies_sent"] >= 1
        assert stats["handshakes"]["responses_sent"] == 1
        assert stats["handshakes"]["completed"] == 1
    finally:
        await tunnel.close()
        pair.wg.stop()


async def test_cli_ping_gets_replies_from_wireguard_go(wgpair: WgPair, tmp_path: Path) -> None:
    config = tmp_path / "ours.conf"
    config.write_text(wgpair.wg_quick_config())
    code, out = await _run_in(wgpair.ns, sys.executable, "-m", "agentconn.cli", "ping",
                              "--config", str(config), "--count", "3", "--interval", "0.2",
                              "10.77.0.1")
    assert code == 0, out
    assert out.count("icmp reply from 10.77.0.1") == 3, out
    assert "3 received, 0% loss" in out

    # no route: clear error, non-zero exit
    code, out = await _run_in(wgpair.ns, sys.executable, "-m", "agentconn.cli", "ping",
                              "--config", str(config), "--count", "1", "10.99.0.1")
    assert code != 0 and "no peer's AllowedIPs cover 10.99.0.1" in out


async def test_garbage_datagrams_are_counted_and_the_session_survives(wgpair: WgPair) -> None:
    tunnel = await _tunnel(wgpair)
    try:
        await tunnel.ping("10.77.0.1", timeout=10)
        before = tunnel.stats()
        current = before["peers"][0]["keypairs"]["current"]["local_index"]
        rnd = random.Random(7)
        garbage: list[bytes] = []
        for _ in range(200):
            garbage.append(rnd.randbytes(rnd.randrange(0, 200)))                 # random
            kind, size = rnd.choice([(1, 148), (2, 92), (3, 64), (4, 32), (4, 100)])
            body = rnd.randbytes(size - 4)
            garbage.append(struct.pack("<I", kind) + body)                         # typed
            garbage.append(struct.pack("<I", kind) + body[: rnd.randrange(0, size - 5)])  # short
            garbage.append(struct.pack("<II", 4, current) + rnd.randbytes(rnd.randrange(24, 300)))
        with wgpair.ns.enter():
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for datagram in garbage:
                sender.sendto(datagram, ("127.0.0.1", tunnel.listen_port))
                if len(garbage) % 50 == 0:
                    await asyncio.sleep(0)
        finally:
            sender.close()
        # the live session keeps working
        for _ in range(3):
            await tunnel.ping("10.77.0.1", timeout=5)
        await asyncio.sleep(0.2)
        after = tunnel.stats()
        dropped = sum(after["drops"].values()) - sum(before["drops"].values())
        assert dropped == len(garbage), (after["drops"], len(garbage))
        assert after["handshakes"]["completed"] == 1
        assert after["drops"]["auth_failed"] >= 200
    finally:
        await tunnel.close()


_UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print('ready', flush=True)
for _ in range(int(sys.argv[3])):
    data, addr = s.recvfrom(65535)
    s.sendto(data[::-1], addr)
"""


async def test_udp_sockets_against_the_kernel(wgpair: WgPair) -> None:
    """Our UDP client <-> a kernel UDP echo server in the namespace, and a kernel client <->
    our UDP server, over IPv4 and IPv6."""
    tunnel = await _tunnel(wgpair)
    try:
        queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

        class Collect(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                queue.put_nowait((data, addr))

        for server_ip in ("10.77.0.1", "fd77::1"):
            proc = await asyncio.create_subprocess_exec(
                *wgpair.ns.exec_prefix(), sys.executable, "-c", _UDP_ECHO, server_ip, "7007", "3",
                stdout=asyncio.subprocess.PIPE)
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), 10)).strip() == b"ready"
            client, _ = await tunnel.create_datagram_endpoint(Collect)
            for payload in (b"a", os.urandom(1000), b"x" * 1200):   # MTU 1280 by default
                client.sendto(payload, (server_ip, 7007))
                data, addr = await asyncio.wait_for(queue.get(), 10)
                assert data == payload[::-1] and addr == (server_ip, 7007)
            client.close()
            await asyncio.wait_for(proc.wait(), 10)

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(data.upper(), addr)  # type: ignore[attr-defined]

        server, _ = await tunnel.create_datagram_endpoint(Echo, local_addr=(None, 9000))
        for ours in ("10.77.0.2", "fd77::2"):
            family = "AF_INET6" if ":" in ours else "AF_INET"
            client_code = (f"import socket; s = socket.socket(socket.{family}, socket.SOCK_DGRAM); "
                           f"s.settimeout(10); s.sendto(b'kernel says hi', ('{ours}', 9000)); "
                           f"print(s.recvfrom(100)[0].decode())")
            code, out = await _run_in(wgpair.ns, sys.executable, "-c", client_code)
            assert code == 0 and out.strip() == "KERNEL SAYS HI", out
        server.close()
    finally:
        await tunnel.close()
