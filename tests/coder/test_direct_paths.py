"""Direct UDP paths negotiated by disco, end to end: our client (``agentconn.coder.dial``) and
our agent (``Agent.join_tailnet``) through the Python test coderd on loopback. Traffic starts
on DERP and moves to a direct UDP path; a userspace UDP relay between the two sockets stands
for the route, so the test can break it (fall back to DERP) and mend it (direct again) while
bulk transfers go on."""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import agentconn.coder
import agentconn.coder.tailnet as tailnet_mod
from agentconn.coder.deployment import _deployments
from agentconn.coder.disco import MAGIC, Ping, seal_packet
from agentconn.coder.keys import DiscoPrivate
from controlplane import TOKEN
from test_e2e_tailnet import plane_with_agents

pytestmark = pytest.mark.timeout(180)


class UdpRelay:
    """Forwards datagrams that reach ``front`` to ``target`` (from its own ``back`` socket)
    and what comes back to the last sender: a route between two UDP sockets that the test
    can cut (``blocked``: everything is dropped)."""

    def __init__(self, target: tuple[str, int]) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.target = target
        self.blocked = False
        self.forwarded = 0
        self.dropped = 0
        self.client: tuple[str, int] | None = None
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for sock in (self.front, self.back):
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        loop.add_reader(self.front.fileno(), self._pump, self.front, True)
        loop.add_reader(self.back.fileno(), self._pump, self.back, False)

    @property
    def address(self) -> tuple[ipaddress.IPv4Address, int]:
        return ipaddress.IPv4Address("127.0.0.1"), self.front.getsockname()[1]

    def _pump(self, sock: socket.socket, inbound: bool) -> None:
        while True:
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            if inbound:
                self.client = addr
            dest = self.target if inbound else self.client
            if self.blocked or dest is None:
                self.dropped += 1
                continue
            try:
                (self.back if inbound else self.front).sendto(data, dest)
                self.forwarded += 1
            except OSError:
                self.dropped += 1

    def close(self) -> None:
        for sock in (self.front, self.back):
            if not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()


@pytest.fixture
def relays(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every tailnet node advertises a UDP relay in front of its socket instead of the socket
    itself, so each direct path runs through a relay of this fixture."""
    made: dict[int, UdpRelay] = {}

    def endpoints(host: str, port: int, *, include_loopback: bool = False) -> list[Any]:
        relay = made.get(port)
        if relay is None:
            relay = made[port] = UdpRelay(("127.0.0.1", port))
            relay.blocked = state["blocked"]
        return [relay.address]

    state = {"blocked": False}
    monkeypatch.setattr(tailnet_mod, "local_endpoints", endpoints)

    class Relays:
        def block(self, value: bool) -> None:
            state["blocked"] = value
            for relay in made.values():
                relay.blocked = value

        def for_port(self, port: int) -> UdpRelay:
            return made[port]

        def forwarded(self) -> int:
            return sum(r.forwarded for r in made.values())

    yield Relays()
    for relay in made.values():
        relay.close()


async def until(check: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Poll ``check`` (the bound only stops a hung test; no timing is asserted)."""
    try:
        async with asyncio.timeout(limit):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None



def peer_endpoint(tunnel: Any) -> str:
    peers = tunnel.stats()["peers"]
    assert len(peers) == 1, peers
    return str(peers[0]["endpoint"])


def derp_forwarded(plane: Any) -> int:
    return int(plane.derp.stats().get("packets_forwarded", 0))


async def round_trip(conn: Any, path: Path, size: int, seed: bytes) -> None:
    data = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
                    for i in range(size // 32))
    await conn.write_file(str(path), data)
    back = await conn.read_file_bytes(str(path))
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()


async def test_derp_then_direct_then_fallback_and_back(tmp_path: Path, relays: Any) -> None:
    relays.block(True)                     # no route yet: the session starts on DERP
    async with plane_with_agents(tmp_path, "dev") as (plane, (agent,)):
        async with await agentconn.coder.dial("dev", url=plane.url, token=TOKEN) as conn:
            client = conn._tunnel
            node = next(iter(_deployments.values())).node
            agent_relay = relays.for_port(agent.tunnel.listen_port)
            direct = f"127.0.0.1:{agent_relay.address[1]}"
            assert peer_endpoint(client).startswith("relay:")
            target = tmp_path / "agent0" / "bulk.bin"
            await round_trip(conn, target, 1 << 20, b"derp")
            assert peer_endpoint(client).startswith("relay:")

            # the route appears: a bulk transfer goes on while the path switches to direct
            transfer = asyncio.create_task(round_trip(conn, target, 4 << 20, b"switch"))
            relays.block(False)
            await until(lambda: peer_endpoint(client) == direct, "direct path")
            await transfer
            assert peer_endpoint(agent.tunnel).startswith("127.0.0.1:")
            stats = node.stats()
            peer = next(iter(stats["peers"].values()))
            assert peer["path"] == "direct" and peer["endpoint"] == direct
            assert stats["disco"]["pings_sent"] > 0 and stats["disco"]["pongs_received"] > 0
            assert stats["disco"]["to_direct"] >= 1
            assert client.stats()["peers"][0]["disco"]["path"] == "direct"

            # on the direct path the DERP server stops carrying their data
            before, udp_before = derp_forwarded(plane), agent_relay.forwarded
            await round_trip(conn, target, 4 << 20, b"direct")
            assert agent_relay.forwarded - udp_before > 1000        # it went through the route
            assert derp_forwarded(plane) - before < 50              # (disco, not data)
            rtt, is_direct, result = await conn.ping()
            assert is_direct and result["Endpoint"] == direct

            # the route breaks: back to DERP, the transfer carries on
            transfer = asyncio.create_task(round_trip(conn, target, 4 << 20, b"fallback"))
            relays.block(True)
            await until(lambda: peer_endpoint(client).startswith("relay:"), "DERP fallback")
            await transfer
            assert node.magicsock.counters["to_derp"] >= 1
            before = derp_forwarded(plane)
            await round_trip(conn, target, 1 << 20, b"on-derp")
            assert derp_forwarded(plane) - before > 100
            assert not (await conn.ping())[1]

            # the route comes back: direct again
            relays.block(False)
            await until(lambda: peer_endpoint(client) == direct, "direct again")
            await round_trip(conn, target, 1 << 20, b"again")
            assert node.magicsock.counters["to_direct"] >= 2


async def test_peer_without_endpoints_stays_on_derp(tmp_path: Path) -> None:
    async with plane_with_agents(tmp_path) as (plane, _):
        ws = plane.add_workspace("dev", "main")
        from test_e2e_tailnet import start_agent
        agent = await start_agent(tmp_path / "agent0", ws.agents[0].id)
        try:
            await agent.join_tailnet(plane.url, ws.agents[0].token, block_endpoints=True)
            async with await agentconn.coder.dial("dev", url=plane.url, token=TOKEN) as conn:
                node = next(iter(_deployments.values())).node
                for i in range(3):
                    await round_trip(conn, tmp_path / "agent0" / "x.bin", 256 << 10,
                                     bytes([i]))
                ms = node.magicsock
                await until(lambda: ms.counters["heartbeats"] >= 3
                            and agent.tailnet.magicsock.counters["heartbeats"] >= 3,
                            "heartbeats")
                assert agent.tailnet.node().endpoints == ()
                assert peer_endpoint(conn._tunnel).startswith("relay:")
                assert peer_endpoint(agent.tunnel).startswith("relay:")
                assert ms.counters["to_direct"] == 0
                assert agent.tailnet.magicsock.counters["call_me_maybe_sent"] == 0
                assert int(conn._tunnel.stats()["udp"]["tx_datagrams"]) == 0  # no WireGuard
                assert (await conn.ping())[1] is False
        finally:
            await agent.close()


async def test_stun_endpoint_and_direct_path(tmp_path: Path) -> None:
    async with plane_with_agents(tmp_path, "dev", stun=True) as (plane, (agent,)):
        async with await agentconn.coder.dial("dev", url=plane.url, token=TOKEN) as conn:
            node = next(iter(_deployments.values())).node
            await until(lambda: node.stun_endpoint is not None
                        and agent.tailnet.stun_endpoint is not None, "STUN answers")
            assert plane.stun is not None and plane.stun.requests >= 2
            host, port = conn._tunnel.local_address
            assert node.stun_endpoint == (ipaddress.ip_address(host), port)
            assert node.counters["stun_responses"] >= 1
            # the coordinator has our endpoints (UpdateSelf), and the agent's
            announced = {info.kind: tuple(info.node.endpoints)
                         for info in plane.coordinator_peers().values() if info.node}
            assert announced["client"] == (f"{host}:{port}",)
            assert announced["agent"] == (f"127.0.0.1:{agent.tunnel.listen_port}",)
            direct = f"127.0.0.1:{agent.tunnel.listen_port}"
            await until(lambda: peer_endpoint(conn._tunnel) == direct, "direct path")
            await round_trip(conn, tmp_path / "agent0" / "s.bin", 1 << 20, b"stun")


async def test_bad_disco_on_the_udp_socket_is_dropped_and_counted(tmp_path: Path) -> None:
    async with plane_with_agents(tmp_path, "dev") as (plane, (agent,)):
        async with await agentconn.coder.dial("dev", url=plane.url, token=TOKEN) as conn:
            node = next(iter(_deployments.values())).node
            tunnel = conn._tunnel
            await until(lambda: peer_endpoint(tunnel).startswith("127.0.0.1:"), "direct")
            port = tunnel.listen_port
            stranger = DiscoPrivate.generate()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                # disco from a key we do not know
                sock.sendto(seal_packet(stranger, node.disco_key.public,
                                        Ping(b"\x01" * 12)), ("127.0.0.1", port))
                # disco-looking from the agent's disco key, but the box does not open
                sock.sendto(MAGIC + bytes(agent.tailnet.disco_key.public) + os.urandom(200),
                            ("127.0.0.1", port))
                # too short to be disco (WireGuard drops it as short)
                sock.sendto(MAGIC + b"short", ("127.0.0.1", port))
                # a STUN response nobody asked for
                from agentconn.coder import stun
                sock.sendto(stun.binding_response(b"\x00" * 12,
                                                  (ipaddress.ip_address("1.2.3.4"), 5)),
                            ("127.0.0.1", port))
            ms = node.magicsock
            await until(lambda: ms.drops["unknown_peer"] >= 1 and ms.drops["bad_box"] >= 1
                        and node.counters["udp_unknown"] >= 1
                        and tunnel.stats()["drops"].get("short", 0) >= 1,
                        "drops", 10)
            assert await conn.list_processes() is not None      # still fine
            assert peer_endpoint(tunnel).startswith("127.0.0.1:")


async def test_ping_and_speedtest_cli_report_the_direct_path(tmp_path: Path) -> None:
    import agentconn as pkg

    src = str(Path(pkg.__file__).resolve().parents[1])
    async with plane_with_agents(tmp_path, "dev") as (plane, _):
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
               "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
               "CODER_URL": plane.url, "CODER_SESSION_TOKEN": TOKEN,
               "AGENTCONN_TAILNET_LISTEN": "127.0.0.1"}
        async def run(*args: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agentconn.cli", *args, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 90)
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

        code, out, err = await run("ping", "dev", "-n", "4")
        assert code == 0, err
        assert "p2p connection established in" in out, out
        assert "pong from dev p2p via 127.0.0.1:" in out, out
        assert "Traceback" not in err
        # speedtest --direct waits for the direct path (coder's "<ms>ms via direct")
        code, out, err = await run("speedtest", "dev", "-d", "--time", "1s", "--direction", "up")
        assert code == 0 and "ms via direct" in err and "Mbits/sec" in out + err, (out, err)
