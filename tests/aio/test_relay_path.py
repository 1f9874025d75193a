"""Peers reached through a relay path instead of UDP (the hook DERP uses).

Two Tunnels whose peers have relay endpoints (``wg.endpoint.relay_sockaddr``) and an in-process
relay between them: the UDP sockets carry nothing, every WireGuard datagram goes through
``set_relay``'s callback and comes back in with ``receive_relayed``; the handshake, pings and a
TCP transfer work, and the answering side learns the relay endpoint by roaming.
"""
from __future__ import annotations

import asyncio
import hashlib

import pytest

from agentconn import Tunnel
from agentconn.wg.endpoint import format_sockaddr, relay_path, relay_sockaddr
from test_tunnel_loopback import LOOPS, configs, run

PATH_A_TO_B = 11     # A's path number for B
PATH_B_TO_A = 7      # B's path number for A


def test_relay_sockaddr_round_trip() -> None:
    for path in (0, 1, 7, 2**32 - 1):
        raw = relay_sockaddr(path)
        assert len(raw) == 8 and relay_path(raw) == path
        assert format_sockaddr(raw) == f"relay:{path}"
    with pytest.raises(ValueError):
        relay_sockaddr(2**32)
    assert relay_path(b"") is None


@pytest.mark.parametrize("loop_name", LOOPS)
def test_handshake_ping_and_tcp_over_a_relay(loop_name: str) -> None:
    async def main() -> None:
        ca, cb = configs(mtu=1280)
        a = Tunnel.from_config(ca, listen_host="127.0.0.1")
        b = Tunnel.from_config(cb, listen_host="127.0.0.1")
        await a.start()
        await b.start()
        relayed = {"a->b": 0, "b->a": 0}

        def a_sends(items: list[tuple[int, bytes]]) -> None:
            for path, datagram in items:
                assert path == PATH_A_TO_B
                relayed["a->b"] += 1
                b.receive_relayed(PATH_B_TO_A, datagram)

        def b_sends(items: list[tuple[int, bytes]]) -> None:
            for path, datagram in items:
                assert path == PATH_B_TO_A
                relayed["b->a"] += 1
                a.receive_relayed(PATH_A_TO_B, datagram)

        a.set_relay(a_sends)
        b.set_relay(b_sends)
        a.set_peer_relay(b.public_key, PATH_A_TO_B)   # B learns A's relay endpoint by roaming
        try:
            assert await a.ping("10.55.0.2", timeout=5) > 0
            assert await b.ping("fd55::1", kind="tsmp", timeout=5) > 0
            peer_a = next(iter(b.device.iter_peers()))
            assert relay_path(peer_a.slot.endpoint) == PATH_B_TO_A

            data = hashlib.sha256(b"relay").digest() * 32768          # 1 MiB
            got = asyncio.get_running_loop().create_future()

            async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                got.set_result(hashlib.sha256(await reader.read()).hexdigest())
                writer.close()

            server = await b.start_server(sink, 4)
            reader, writer = await a.open_connection("fd55::2", 4)
            writer.write(data)
            writer.write_eof()
            assert await asyncio.wait_for(got, 20) == hashlib.sha256(data).hexdigest()
            writer.close()
            server.close()
            assert relayed["a->b"] > len(data) // 1280 and relayed["b->a"] > 0
            for t in (a, b):                    # nothing went over the UDP sockets
                udp = t.stats()["udp"]
                assert udp["tx_datagrams"] == 0 and udp["send_errors"] == 0, udp
        finally:
            await a.close()
            await b.close()
    run(loop_name, main())


def test_relay_detached_drops_nothing_silently() -> None:
    """Without a relay, a peer with a relay endpoint is simply not reachable: the ping times
    out, the UDP sender does not try to send to the AF_UNSPEC address."""
    async def main() -> None:
        ca, cb = configs()
        a = Tunnel.from_config(ca, listen_host="127.0.0.1")
        await a.start()
        a.set_peer_relay(Tunnel.from_config(cb).public_key, 3)
        try:
            with pytest.raises(TimeoutError):
                await a.ping("10.55.0.2", timeout=0.5)
            assert a.stats()["udp"]["send_errors"] == 0
        finally:
            await a.close()
    run("asyncio", main())
