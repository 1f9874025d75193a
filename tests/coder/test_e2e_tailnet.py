"""The whole system with no static keys: our Agent joins the test control plane as the agent
peer, ``agentconn.coder.dial("dev")`` reaches it by name, and everything travels through the
DERP relay (with direct connections disabled, the UDP sockets carry nothing). Also: the websocket DERP fallback, a dropped
coordinator with a live TCP connection, a DERP restart, an agent restart with a new key, and
many dials sharing one deployment."""
from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import agentconn.coder
from agentconn.agent import Agent, AgentOptions
from agentconn.coder.deployment import _deployments, close_all
from agentconn.coder.keys import NodePrivate
from agentconn.wg.config import InterfaceConfig
from controlplane import TOKEN, ControlPlane

pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def plane_with_agents(tmp_path: Path, *names: str, **plane_kwargs: Any
                            ) -> AsyncIterator[tuple[ControlPlane, list[Agent]]]:
    plane = ControlPlane(**plane_kwargs)
    await plane.start()
    agents: list[Agent] = []
    try:
        for i, name in enumerate(names):
            ws = plane.add_workspace(name, "main")
            fake = ws.agents[0]
            agent = await start_agent(tmp_path / f"agent{i}", fake.id)
            agents.append(agent)
            await agent.join_tailnet(plane.url, fake.token)
        yield plane, agents
    finally:
        await close_all()
        for agent in agents:
            await agent.close()
        await plane.close()


async def start_agent(directory: Path, agent_id: uuid.UUID) -> Agent:
    directory.mkdir(parents=True, exist_ok=True)
    options = AgentOptions(directory=str(directory), log_dir=str(directory / "log"))
    agent = Agent(InterfaceConfig(private_key=NodePrivate.generate().raw), agent_id,
                  options=options, log_to_file=False, listen_host="127.0.0.1")
    await agent.start()
    return agent


def udp_sent(tunnel: Any) -> int:
    return int(tunnel.stats()["udp"]["tx_datagrams"])


async def test_dial_by_name_everything_over_derp(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # DERP only: coder's --disable-direct-connections (direct paths: test_direct_paths.py)
    monkeypatch.setenv("CODER_DISABLE_DIRECT_CONNECTIONS", "true")
    async with plane_with_agents(tmp_path, "dev") as (plane, (agent,)):
        (tmp_path / "agent0" / "hello.txt").write_text("hello over DERP\n")
        async with await agentconn.coder.dial("dev", url=plane.url, token=TOKEN) as conn:
            listing = await conn.ls(str(tmp_path / "agent0"))
            assert "hello.txt" in [e.name for e in listing.contents]
            assert await conn.read_file_bytes(str(tmp_path / "agent0" / "hello.txt")) == \
                b"hello over DERP\n"
            proc = await conn.start_process("echo via-derp; uname -s")
            out = await conn.process_output(proc.id, wait=True)
            assert out.exit_code == 0 and "via-derp" in out.output
            result = await conn.speedtest("up", 1.0)
            assert result.bytes > 0
            ssh = await conn.ssh_client()
            try:
                run = await ssh.run("echo ssh-over-derp", check=True)
                assert str(run.stdout).strip() == "ssh-over-derp"
            finally:
                ssh.close()
                await ssh.wait_closed()
            tunnel = conn._tunnel
            assert udp_sent(tunnel) == 0 and udp_sent(agent.tunnel) == 0
            peers = tunnel.stats()["peers"]
            assert peers and all(p["endpoint"].startswith("relay:") for p in peers), peers
        deployment = next(iter(_deployments.values()))
        assert deployment.node.counters["derp_out"] > 0
        assert deployment.leases == 0 and not deployment.tunnel.closed


async def test_websocket_fallback_when_upgrade_fails(tmp_path: Path) -> None:
    async with plane_with_agents(tmp_path, "dev") as (plane, _):
        plane.fail_derp_upgrade = True
        async with await agentconn.coder.dial("dev", url=plane.url, token=TOKEN) as conn:
            assert await conn.list_processes() is not None
            deployment = next(iter(_deployments.values()))
            home = deployment.node.pool.clients[deployment.node.home_region]
            assert home.forced_websocket


async def test_coordinator_drop_keeps_live_tcp_and_reconnects(tmp_path: Path) -> None:
    async with plane_with_agents(tmp_path, "dev") as (plane, _):
        async with await agentconn.coder.dial("dev", url=plane.url, token=TOKEN) as conn:
            reader, writer = await conn.dial("tcp", ":4")        # a live TCP connection
            deployment = next(iter(_deployments.values()))
            before = deployment.node.counters["coordinator_connects"]
            await plane.drop_coordinators()
            for _ in range(100):
                if deployment.node.counters["coordinator_connects"] > before:
                    break
                await asyncio.sleep(0.1)
            assert deployment.node.counters["coordinator_connects"] > before
            writer.write(b"GET /api/v0/listening-ports HTTP/1.0\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 200")
            writer.close()
            assert await conn.list_processes() is not None


async def test_derp_restart_reconnects(tmp_path: Path) -> None:
    async with plane_with_agents(tmp_path, "dev") as (plane, _):
        async with await agentconn.coder.dial("dev", url=plane.url, token=TOKEN) as conn:
            await plane.restart_derp()
            for _ in range(100):
                try:
                    async with asyncio.timeout(2):
                        await conn.list_processes()
                    break
                except (TimeoutError, OSError):
                    await asyncio.sleep(0.1)
            data = hashlib.sha256(b"after restart").digest()
            await conn.write_file(str(tmp_path / "agent0" / "r.bin"), data)
            assert await conn.read_file_bytes(str(tmp_path / "agent0" / "r.bin")) == data


async def test_agent_restart_with_a_new_key_is_followed(tmp_path: Path) -> None:
    async with plane_with_agents(tmp_path, "dev") as (plane, agents):
        async with await agentconn.coder.dial("dev", url=plane.url, token=TOKEN) as conn:
            assert await conn.list_processes() is not None
            old = agents.pop()
            await old.close()
            fake = plane.workspaces[0].agents[0]
            new = await start_agent(tmp_path / "agent0b", fake.id)
            agents.append(new)
            await new.join_tailnet(plane.url, fake.token)
            assert new.tunnel.public_key != old.tunnel.public_key
            for _ in range(150):
                try:
                    async with asyncio.timeout(2):
                        await conn.list_processes()
                    break
                except (TimeoutError, OSError):
                    await asyncio.sleep(0.1)
            assert await conn.list_processes() is not None


async def test_many_dials_share_one_deployment(tmp_path: Path) -> None:
    names = [f"ws{i}" for i in range(50)]
    async with plane_with_agents(tmp_path, *names) as (plane, agents):
        conns = await asyncio.gather(*(agentconn.coder.dial(n, url=plane.url, token=TOKEN)
                                       for n in names))
        try:
            results = await asyncio.gather(*(c.list_processes() for c in conns))
            assert len(results) == len(names)
            assert len(_deployments) == 1
            deployment = next(iter(_deployments.values()))
            # one tunnel and one DERP connection for all; one coordinator session per agent,
            # because coderd authorizes a client's session for the agent in its URL
            assert deployment.node.counters["coordinator_connects"] == len(names)
            assert list(deployment.node.pool.clients) == [deployment.node.home_region]
            assert all(c._tunnel is deployment.tunnel for c in conns)
            assert deployment.leases == len(names)
        finally:
            for c in conns:
                await c.close()
        assert deployment.leases == 0


async def test_cli_by_workspace_name(tmp_path: Path) -> None:
    """`agentconn ssh dev …`, `agentconn ping dev` and `agentconn speedtest dev` with only
    CODER_URL and CODER_SESSION_TOKEN set: coder's shapes, over DERP."""
    import os
    import sys

    import agentconn as pkg

    src = str(Path(pkg.__file__).resolve().parents[1])
    async with plane_with_agents(tmp_path, "dev") as (plane, _):
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
               "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
               "CODER_URL": plane.url, "CODER_SESSION_TOKEN": TOKEN,
               "AGENTCONN_TAILNET_LISTEN": "127.0.0.1",
               "CODER_DISABLE_DIRECT_CONNECTIONS": "true"}

        async def run(*args: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agentconn.cli", *args, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 90)
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

        code, out, err = await run("ssh", "dev", "echo", "hello-from-ssh")
        assert (code, out.strip()) == (0, "hello-from-ssh"), err
        assert "Traceback" not in err
        code, out, err = await run("ping", "dev", "-n", "2")
        assert code == 0, err
        assert "pong from dev proxied via DERP(test server) in" in out, out
        code, out, err = await run("speedtest", "dev", "--time", "1s", "--direction", "up")
        assert code == 0 and "Mbits/sec" in out + err, (out, err)
        code, out, err = await run("ssh", "nope", "true")
        assert code == 1 and 'workspace "me/nope" not found' in err and "Traceback" not in err
