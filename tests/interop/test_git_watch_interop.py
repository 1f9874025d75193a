"""Git watch (agent-api.md §10) through a real tunnel: clients in a wireguard-go namespace.

Topology as in test_agent_curl.py: wireguard-go and the kernel's TCP in a namespace, our Agent
as the userspace peer. From the namespace, a git-watch websocket (our client on a kernel TCP
socket) watches the chat while curl writes a file with the chat headers and starts a process
in another repository; every byte crosses wireguard-go → our WireGuard → our TCP stack.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import uuid
from pathlib import Path

from netns import Namespace, ns_curl, wg_pair

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from gitrepo import apply_check, git_env, make_repo, require_git

from agentconn.agent.agent import Agent
from agentconn.agent.options import AgentOptions
from agentconn.client.git import GitWatch
from agentconn.proto.git import GitServerMessage, GitServerMessageType
from agentconn.proto.ports import agent_addresses
from agentconn.web.websocket import websocket_connect

AGENT_ID = uuid.UUID("12345678-1234-1234-1234-123456789abc")
AGENT_TS, AGENT_CODER = (str(a) for a in agent_addresses(AGENT_ID))
BASE = f"http://[{AGENT_TS}]:4"
HANG_GUARD = 120.0




async def _next(w: GitWatch) -> GitServerMessage:
    async with asyncio.timeout(HANG_GUARD):
        msg = await w.receive()
    assert msg is not None
    return msg


async def test_git_watch_through_wireguard_go(netns: Namespace, tmp_path: Path) -> None:
    require_git()
    pair = wg_pair(netns, mtu=1280)
    try:
        pair.wg.set_peer(pair.our_public_key, allowed_ips=[
            f"{pair.our_addresses[0]}/32", f"{pair.our_addresses[1]}/128",
            f"{AGENT_TS}/128", f"{AGENT_CODER}/128"])
        pair.wg.add_route(f"{AGENT_TS}/128")
        pair.wg.add_route(f"{AGENT_CODER}/128")
        home, logs = tmp_path / "home", tmp_path / "logs"
        home.mkdir()
        logs.mkdir()
        app = make_repo(tmp_path / "app", home, origin="https://example.invalid/app.git",
                        files={"src/app.py": "x = 1\n"}).resolve()
        tool = make_repo(tmp_path / "tool", home, branch="dev").resolve()
        options = AgentOptions(home=str(home), directory=str(tmp_path), log_dir=str(logs),
                               environ=git_env(home))
        with pair.ns.enter():
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        agent = Agent(pair.wg_quick_config(), AGENT_ID, options=options, sock=udp,
                      services=())
        await agent.start()
        try:
            await agent.tunnel.ping(pair.their_addresses[0], timeout=10)
            ns = pair.ns
            chat, other = uuid.uuid4(), uuid.uuid4()

            async def watch(c: uuid.UUID) -> GitWatch:
                loop = asyncio.get_running_loop()
                sock = ns.socket(socket.AF_INET6, socket.SOCK_STREAM)
                sock.setblocking(False)
                await loop.sock_connect(sock, (AGENT_TS, 4))
                reader, writer = await asyncio.open_connection(sock=sock)
                ws = await websocket_connect(reader, writer, f"[{AGENT_TS}]:4",
                                             f"/api/v0/git/watch?chat_id={c}",
                                             max_message_size=4 << 20)
                return GitWatch.over(ws)

            async with await watch(chat) as w, await watch(other) as wo:
                assert w.websocket.compressed
                status, body = await ns_curl(
                    ns, "-X", "POST", "-H", f"Coder-Chat-Id: {chat}", "--data-binary",
                    "x = 2\n", f"{BASE}/api/v0/write-file?path={app}/src/app.py")
                assert status == 200, body
                msg = await _next(w)
                assert msg.type is GitServerMessageType.CHANGES
                (entry,) = msg.repositories or []
                assert (entry.repo_root, entry.branch, entry.remote_origin) == (
                    str(app), "main", "https://example.invalid/app.git")
                assert "-x = 1\n+x = 2\n" in entry.unified_diff
                apply_check(app, entry.unified_diff, tmp_path / "scratch", home)

                status, body = await ns_curl(
                    ns, "-X", "POST", "-H", f"Coder-Chat-Id: {chat}", "--data",
                    json.dumps({"command": "printf 'built\\n' > out.txt",
                                "workdir": str(tool)}),
                    f"{BASE}/api/v0/processes/start")
                assert status == 200, body
                (entry,) = (await _next(w)).repositories or []
                assert (entry.repo_root, entry.branch) == (str(tool), "dev")
                assert "+++ b/out.txt\n@@ -0,0 +1 @@\n+built\n" in entry.unified_diff

                await w.send("nope")
                assert (await _next(w)).message == "unknown message type"
                # the other chat's socket heard nothing of this chat's repositories
                await wo.send("nope")
                assert (await _next(wo)).type is GitServerMessageType.ERROR
                assert wo.received == 1 and wo.repositories == {}
        finally:
            await agent.close()
    finally:
        pair.wg.stop()
