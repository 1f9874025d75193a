"""Two Tunnels in one process over loopback UDP, on stdlib asyncio and on uvloop.

Exercises the real socket path: recvmmsg/sendmmsg, GSO coalescing of equal-size datagrams and
GRO splitting, the handshake, ICMP/TSMP echo, and bulk one-way traffic with exact delivery.
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from agentconn import ConfigError, NoRouteError, PingTimeoutError, Tunnel, TunnelClosedError
from agentconn.net.wire.ipv4 import Ipv4Repr
from agentconn.wg.crypto import dh_generate, public_key
from agentconn.wg.keys import encode_key

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run(loop_name: str, coro: Awaitable[None]) -> None:
    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(asyncio.wait_for(coro, 60))
    finally:
        loop.close()


def configs(mtu: int = 1420) -> tuple[str, str]:
    ka, kb = dh_generate(), dh_generate()

    def conf(own: bytes, peer: bytes, me: int, them: int) -> str:
        return (f"[Interface]\nPrivateKey = {encode_key(own)}\nMTU = {mtu}\n"
                f"Address = 10.55.0.{me}/24, fd55::{me}/64\n"
                f"[Peer]\nPublicKey = {encode_key(public_key(peer))}\n"
                f"AllowedIPs = 10.55.0.{them}/32, fd55::{them}/128\n")
    return conf(ka, kb, 1, 2), conf(kb, ka, 2, 1)


async def started_pair(**kwargs: bool) -> tuple[Tunnel, Tunnel]:
    ca, cb = configs()
    a = Tunnel.from_config(ca, listen_host="127.0.0.1", **kwargs)
    b = Tunnel.from_config(cb, listen_host="127.0.0.1", **kwargs)
    await a.start()
    await b.start()
    a.set_peer_endpoint(b.public_key, "127.0.0.1", b.listen_port)
    return a, b


@pytest.mark.parametrize("loop_name", LOOPS)
def test_ping_both_ways_all_kinds(loop_name: str) -> None:
    async def main() -> None:
        a, b = await started_pair()
        try:
            for address, kind in (("10.55.0.2", "icmp"), ("fd55::2", "icmp"),
                                  ("fd55::2", "tsmp"), ("10.55.0.2", "tsmp")):
                rtt = await a.ping(address, timeout=5, kind=kind)  # type: ignore[arg-type]
                assert 0 < rtt < 5
            # B learned A's endpoint from the handshake (roaming) and can ping back
            assert await b.ping("10.55.0.1", timeout=5) > 0
            sa, sb = a.stats(), b.stats()
            assert sa["handshakes"]["completed"] == 1 and sb["handshakes"]["completed"] == 1
            assert sum(sa["drops"].values()) == 0 and sum(sb["drops"].values()) == 0
            assert sb["ip"]["echo_answered"] == 4
        finally:
            await a.close()
            await b.close()
    run(loop_name, main())


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("offload", [True, False], ids=["gso-gro", "plain"])
def test_bulk_one_way_exact_delivery(loop_name: str, offload: bool) -> None:
    """3000 full-size packets A -> B in bursts: every one arrives once, bytes intact."""
    async def main() -> None:
        a, b = await started_pair(gro=offload, gso=offload)
        received: list[bytes] = []
        receive_packet = b.iface.receive_packet

        def capture(packet: bytes, now: float) -> None:   # protocol 253 (RFC 3692 experiments)
            if packet[9] == 253:
                received.append(packet)
            else:
                receive_packet(packet, now)

        b.iface.receive_packet = capture  # type: ignore[method-assign]
        try:
            await a.ping("10.55.0.2", timeout=5)          # handshake first
            src, dst = ipaddress.IPv4Address("10.55.0.1"), ipaddress.IPv4Address("10.55.0.2")
            sent = hashlib.sha256()
            total = 3000
            for burst in range(total // 150):
                for i in range(150):
                    n = burst * 150 + i
                    payload = n.to_bytes(4, "big") * 345        # 1380 bytes: full-MTU packets
                    packet = Ipv4Repr(src, dst, 253, len(payload)).emit(payload)
                    sent.update(packet)
                    a.send_packet(packet)
                for _ in range(50):
                    await asyncio.sleep(0.001)
                    if len(received) == (burst + 1) * 150:
                        break
            got = hashlib.sha256(b"".join(received)).hexdigest()
            assert len(received) == total
            assert got == sent.hexdigest()
            udp_a, udp_b = a.stats()["udp"], b.stats()["udp"]
            if offload and udp_a["gso"]:
                assert udp_a["gso_messages"] > 0
                assert udp_a["send_calls"] < total / 10
            if offload and udp_a["gso"] and udp_b["gro"]:
                assert udp_b["gro_buffers"] > 0            # super-buffers split by segment size
                assert udp_b["recv_calls"] < total / 10
            if not offload:
                assert udp_a["gso_messages"] == 0 and udp_b["gro_buffers"] == 0
            assert a.stats()["tx_packets"] >= total
        finally:
            await a.close()
            await b.close()
    run(loop_name, main())


def test_api_misuse_raises_typed_errors() -> None:
    async def main() -> None:
        a, b = await started_pair()
        try:
            with pytest.raises(NoRouteError, match="10.66.0.9"):
                await a.ping("10.66.0.9")
            with pytest.raises(ConfigError):
                a.set_peer_endpoint("not-a-key", "127.0.0.1", 1)
            await b.close()
            with pytest.raises(PingTimeoutError, match="within 0.3 s"):
                await a.ping("10.55.0.2", timeout=0.3)
        finally:
            await a.close()
        with pytest.raises(TunnelClosedError):
            await a.ping("10.55.0.2")
    run("asyncio", main())


def test_bad_config_names_the_line() -> None:
    with pytest.raises(ConfigError, match=r"line 3.*ListenPort"):
        Tunnel.from_config("[Interface]\nPrivateKey = "
                           + encode_key(dh_generate()) + "\nListenPort = abc\n")


@pytest.mark.parametrize("loop_name", LOOPS)
def test_connections_closed_first_leave_nothing_after_time_wait(loop_name: str) -> None:
    """Issue 14 item 4: 300 short connections to an echo server that closes first (its side
    goes through TIME_WAIT). In TIME_WAIT they hold no ring; once it ends, both stacks'
    tables, both tunnels' watcher dicts and the server's transport set are empty and no
    TcpConn is alive. TIME_WAIT is shortened to 0.3 s; every wait is a condition poll."""
    import gc

    from _wgcore.tcpip import TcpConn

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():                 # bounded by run()'s 60 s
            await asyncio.sleep(0.02)

    async def main() -> None:
        a, b = await started_pair()
        a.tcp.time_wait = b.tcp.time_wait = 0.3

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.readexactly(3000)
            writer.write(data * 3)
            writer.close()                     # the server closes first
            await writer.wait_closed()

        server = await b.start_server(echo, 7)

        async def one() -> None:
            reader, writer = await a.open_connection("10.55.0.2", 7)
            writer.write(b"x" * 3000)
            assert await reader.read() == b"x" * 9000      # everything, then EOF
            writer.close()
            await writer.wait_closed()

        try:
            for _ in range(6):
                await asyncio.gather(*(one() for _ in range(50)))
            # b's side of every connection reaches TIME_WAIT (or already left it)
            await until(lambda: all(c.state_name == "TIME_WAIT" for c in b.tcp.connections()))
            assert b.tcp.buffer_bytes == 0     # rings are freed on entering TIME_WAIT
            await until(lambda: not b.tcp.connections() and not a.tcp.connections())
            await until(lambda: not server._transports)
            assert a.tcp.buffer_bytes == 0 and b.tcp.buffer_bytes == 0
            assert a._watchers == {}
            assert list(b._watchers) == [server._listener]
            assert a.tcp.counters()["connections_opened"] == 300
            server.close()
            await server.wait_closed()
            assert b._watchers == {}
            gc.collect()
            assert not [o for o in gc.get_objects() if isinstance(o, TcpConn)]
        finally:
            await a.close()
            await b.close()
    run(loop_name, main())
