"""UDP sockets on the userspace stack (Tunnel.create_datagram_endpoint), two tunnels over
loopback: echo both ways, IPv4 and IPv6, connected and unconnected endpoints, errors."""
from __future__ import annotations

import asyncio
import errno

import pytest

from agentconn import NoRouteError
from agentconn.net.udp import EPHEMERAL_PORTS
from test_tunnel_loopback import LOOPS, run, started_pair


class Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.errors: list[Exception] = []
        self.lost = asyncio.get_running_loop().create_future()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Echo(Collect):
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data[::-1], addr)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_echo_over_ipv4_and_ipv6(loop_name: str) -> None:
    async def main() -> None:
        a, b = await started_pair()
        try:
            server, _ = await b.create_datagram_endpoint(Echo, local_addr=(None, 7))
            assert server.get_extra_info("sockname") == ("", 7)
            client, proto = await a.create_datagram_endpoint(Collect)
            port = client.get_extra_info("sockname")[1]
            assert port in EPHEMERAL_PORTS   # the one range TCP and UDP share
            for dst in ("10.55.0.2", "fd55::2"):
                for size in (0, 1, 700, 1420 - 20 - 8 - (20 if ":" in dst else 0)):
                    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
                    client.sendto(payload, (dst, 7))
                    data, addr = await asyncio.wait_for(proto.queue.get(), 5)
                    assert data == payload[::-1] and addr == (dst, 7)
            assert b.stats()["ip"]["udp_received"] == 8
            client.close()
            assert await asyncio.wait_for(proto.lost, 5) is None
        finally:
            await a.close()
            await b.close()
    run(loop_name, main())


def test_connected_endpoint_and_errors() -> None:
    async def main() -> None:
        a, b = await started_pair()
        try:
            server_proto: Collect
            server, server_proto = await b.create_datagram_endpoint(
                Collect, local_addr=("10.55.0.2", 5353))
            client, proto = await a.create_datagram_endpoint(
                Collect, remote_addr=("10.55.0.2", 5353))
            assert client.get_extra_info("peername") == ("10.55.0.2", 5353)
            assert client.get_extra_info("sockname")[0] == "10.55.0.1"
            client.sendto(b"hello")
            data, (host, port) = await asyncio.wait_for(server_proto.queue.get(), 5)
            assert data == b"hello" and host == "10.55.0.1"
            server.sendto(b"reply", (host, port))
            assert (await asyncio.wait_for(proto.queue.get(), 5))[0] == b"reply"
            # a connected socket ignores other senders
            stranger, _ = await b.create_datagram_endpoint(Collect, local_addr=(None, 5354))
            stranger.sendto(b"noise", (host, port))
            server.sendto(b"second", (host, port))
            assert (await asyncio.wait_for(proto.queue.get(), 5))[0] == b"second"
            assert proto.queue.empty()
            # too big for the MTU: EMSGSIZE through error_received, like the kernel
            client.sendto(b"x" * 1500)
            assert proto.errors and proto.errors[0].errno == errno.EMSGSIZE
            # port in use, foreign local address, no route, unbound destination
            with pytest.raises(OSError) as info:
                await b.create_datagram_endpoint(Collect, local_addr=(None, 5353))
            assert info.value.errno == errno.EADDRINUSE
            with pytest.raises(ValueError, match="not an address of this tunnel"):
                await b.create_datagram_endpoint(Collect, local_addr=("10.99.0.1", 1))
            with pytest.raises(NoRouteError):
                await a.create_datagram_endpoint(Collect, remote_addr=("10.99.0.1", 1))
            before = b.stats()["ip"]["udp_no_socket"]
            client2, _ = await a.create_datagram_endpoint(Collect)
            client2.sendto(b"?", ("10.55.0.2", 9))
            await a.ping("10.55.0.2")            # same path: by now the datagram arrived
            assert b.stats()["ip"]["udp_no_socket"] == before + 1
            with pytest.raises(ValueError, match="needs an address"):
                client2.sendto(b"?")
        finally:
            await a.close()
            await b.close()
    run("asyncio", main())
