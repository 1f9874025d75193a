"""Containers (agent-api.md §9) through a real tunnel: clients in a wireguard-go namespace.

Topology as in test_agent_curl.py: wireguard-go and the kernel's TCP in a namespace, our Agent
(``devcontainers=True``, Docker from tests/agent/docker_env) as the userspace peer. From the
namespace, curl lists, recreates and deletes, and a websocket on a kernel TCP socket watches
(permessage-deflate negotiated, as the Go client does), all crossing wireguard-go → our
WireGuard → our TCP stack → the agent, which drives the real engine.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import sys
import uuid
from pathlib import Path

from netns import Namespace, ns_curl, wg_pair

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from docker_env import IMAGE, DockerDaemon, docker_daemon  # noqa: F401 - the fixture

from agentconn.agent.agent import Agent
from agentconn.agent.options import AgentOptions
from agentconn.proto.containers import DevcontainerStatus, ListContainersResponse
from agentconn.proto.ports import agent_addresses
from agentconn.web.websocket import websocket_connect

AGENT_ID = uuid.UUID("12345678-1234-1234-1234-123456789abc")
AGENT_TS, AGENT_CODER = (str(a) for a in agent_addresses(AGENT_ID))
BASE = f"http://[{AGENT_TS}]:4"
WAIT = 120.0


_curl = functools.partial(ns_curl, max_time=120.0)


async def test_containers_through_wireguard_go(netns: Namespace, tmp_path: Path,
                                               docker_daemon: DockerDaemon  # noqa: F811
                                               ) -> None:
    ids = docker_daemon.docker("ps", "-aq").stdout.split()
    if ids:
        docker_daemon.docker("rm", "-f", *ids)
    work = tmp_path / "work"
    (work / "proj" / ".devcontainer").mkdir(parents=True)
    (work / "proj" / ".devcontainer" / "devcontainer.json").write_text(
        '{"image": "%s", "runArgs": ["--network", "none"]}' % IMAGE)
    pair = wg_pair(netns, mtu=1280)
    try:
        pair.wg.set_peer(pair.our_public_key, allowed_ips=[
            f"{pair.our_addresses[0]}/32", f"{pair.our_addresses[1]}/128",
            f"{AGENT_TS}/128", f"{AGENT_CODER}/128"])
        pair.wg.add_route(f"{AGENT_TS}/128")
        pair.wg.add_route(f"{AGENT_CODER}/128")
        logs = tmp_path / "logs"
        logs.mkdir()
        environ = docker_daemon.env({"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                     "HOME": str(tmp_path)})
        options = AgentOptions(home=str(tmp_path), directory=str(work), log_dir=str(logs),
                               environ=environ, devcontainers=True)
        with pair.ns.enter():
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        agent = Agent(pair.wg_quick_config(), AGENT_ID, options=options, sock=udp,
                      services=())
        await agent.start()
        try:
            await agent.tunnel.ping(pair.their_addresses[0], timeout=10)
            ns = pair.ns
            status, body = await _curl(ns, f"{BASE}/api/v0/containers")
            assert status == 200, body
            listing = ListContainersResponse.from_json(body)
            (dc,) = listing.devcontainers
            assert dc.workspace_folder == str(work / "proj")
            assert dc.status is DevcontainerStatus.STOPPED

            loop = asyncio.get_running_loop()
            sock = ns.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setblocking(False)
            await loop.sock_connect(sock, (AGENT_TS, 4))
            reader, writer = await asyncio.open_connection(sock=sock)
            ws = await websocket_connect(reader, writer, f"[{AGENT_TS}]:4",
                                         "/api/v0/containers/watch", compression=True,
                                         max_message_size=4 << 20)
            assert ws.compressed
            first = ListContainersResponse.from_json(await ws.receive())
            assert first.devcontainers[0].id == dc.id

            status, body = await _curl(ns, "-X", "POST",
                                       f"{BASE}/api/v0/containers/devcontainers/{dc.id}/recreate")
            assert (status, json.loads(body)["message"]) == (202,
                                                             "Devcontainer recreation initiated")
            status, body = await _curl(ns, "-X", "POST",
                                       f"{BASE}/api/v0/containers/devcontainers/{dc.id}/recreate")
            assert (status, json.loads(body)["message"]) == (
                409, "Unable to recreate transitioning devcontainer")
            while True:
                text = await asyncio.wait_for(ws.receive(), WAIT)
                assert isinstance(text, str) and text.endswith("\n")  # one JSON value + \n
                now = ListContainersResponse.from_json(text).devcontainers[0]
                if now.status is not DevcontainerStatus.STARTING:
                    break
            assert now.status is DevcontainerStatus.RUNNING and now.container is not None
            await ws.close()

            status, body = await _curl(ns, "-X", "DELETE",
                                       f"{BASE}/api/v0/containers/devcontainers/{dc.id}")
            assert (status, body) == (204, b"")
            assert now.container.id not in docker_daemon.docker("ps", "-aq",
                                                                "--no-trunc").stdout
            status, body = await _curl(ns, "-X", "DELETE",
                                       f"{BASE}/api/v0/containers/devcontainers/{dc.id}")
            assert (status, json.loads(body)) == (404, {
                "message": "Devcontainer not found.",
                "detail": f'Could not find devcontainer with ID: "{dc.id}"'})
        finally:
            await agent.close()
    finally:
        pair.wg.stop()
