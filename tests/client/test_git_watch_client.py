"""``AgentConn.watch_git`` (agent-api.md §10) through real tunnels, and the client's tolerance
of the newest agent revision.

* in-process: an Agent and an AgentConn over our userspace WireGuard on loopback UDP;
* the blocking facade against ``agentconn agent`` running in another process;
* the newest (git-CLI) agent revision's extra messages — ``progress`` chunks, empty heartbeat
  ``changes``, ``diff_truncated`` and message types this client does not know — replayed by a
  loopback websocket server speaking exactly those JSON messages.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from agent_pair import agent_pair
from cli_run import agent_process
from gitrepo import apply_check, make_repo, require_git

from agentconn.client.conn import AgentApiError
from agentconn.client.git import GitWatch, GitWatchError
from agentconn.proto.git import GitServerMessageType
from agentconn.web import HttpServer
from agentconn.web.server import Request
from agentconn.web.websocket import websocket_connect

AGENT_ID = uuid.UUID("12345678-1234-1234-1234-123456789abc")
HANG_GUARD = 120.0


async def _next(w: GitWatch):  # type: ignore[no-untyped-def]
    async with asyncio.timeout(HANG_GUARD):
        return await anext(w)


async def test_watch_git_over_the_userspace_tunnel(tmp_path: Path) -> None:
    require_git()
    async with agent_pair(tmp_path) as p:
        repo = make_repo(p.work / "app", p.home, origin="https://example.invalid/app.git",
                         files={"main.py": "print(1)\n"})
        chat, parent = uuid.uuid4(), uuid.uuid4()
        conn = p.conn
        conn.set_extra_headers({"Coder-Chat-Id": str(chat),
                                "Coder-Ancestor-Chat-Ids": orjson.dumps([str(parent)]).decode()})
        async with conn.watch_git(chat_id=parent) as w, conn.watch_git(chat_id=chat) as wc:
            assert w.websocket.compressed  # permessage-deflate, §2.6
            await conn.write_file(str(repo / "main.py"), b"print(2)\n")
            for watch in (w, wc):  # the chat and its ancestor both see it
                msg = await _next(watch)
                assert msg.type is GitServerMessageType.CHANGES
                (entry,) = msg.repositories or []
                assert (entry.repo_root, entry.branch, entry.remote_origin) == (
                    str(repo.resolve()), "main", "https://example.invalid/app.git")
            apply_check(repo, entry.unified_diff, tmp_path / "scratch", p.home)
            await w.send("bogus")
            msg = await _next(w)
            assert (msg.type, msg.message) == (GitServerMessageType.ERROR, "unknown message type")
            await w.refresh()  # nothing changed: the next message is the next change
            await conn.write_file(str(repo / "new.txt"), b"new\n")
            (entry,) = (await _next(w)).repositories or []
            assert "+++ b/new.txt" in entry.unified_diff
        assert w.websocket.closed
        with pytest.raises(GitWatchError):
            await w.refresh()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    with agent_process(tmp_path_factory.mktemp("gitwatch"), AGENT_ID) as paths:
        yield paths


def test_blocking_facade_watch_git(agent: tuple[Path, Path], tmp_path: Path) -> None:
    require_git()
    from agentconn import sync

    config, work = agent
    repo = make_repo(work / "sync-repo", tmp_path)
    chat = uuid.uuid4()
    with sync.connect(str(config), AGENT_ID) as conn:
        conn.set_extra_headers({"Coder-Chat-Id": str(chat)})
        with conn.watch_git(chat_id=chat) as w:
            conn.write_file(str(repo / "README.md"), b"changed\n")
            msg = next(w)
            assert msg.type is GitServerMessageType.CHANGES
            assert "+changed" in (msg.repositories or [])[0].unified_diff
            assert list(w.repositories) == [str(repo.resolve())]
            w.refresh()


# -- the newest agent revision, replayed ----------------------------------------------------

NEWEST = [
    {"type": "progress", "progress": {"repo_root": "/r", "branch": "main",
                                      "remote_origin": "o", "reset": True, "total_files": 2}},
    {"type": "progress", "progress": {"repo_root": "/r",
                                      "unified_diff_chunk": "diff --git a/x b/x\n",
                                      "processed_files": 1, "total_files": 2}},
    {"type": "progress", "progress": {"repo_root": "/r", "unified_diff_chunk": "+more\n",
                                      "processed_files": 2, "total_files": 2, "complete": True}},
    {"type": "future-kind", "whatever": [1, 2]},
    {"type": "changes", "scanned_at": "2026-05-18T12:00:00.123456789Z",
     "repositories": [{"repo_root": "/r", "branch": "main", "remote_origin": "o",
                       "unified_diff": "diff --git a/x b/x\n+more\n", "diff_truncated": True}]},
    {"type": "changes", "scanned_at": "2026-05-18T12:00:05Z", "repositories": []},
    {"type": "changes", "scanned_at": "2026-05-18T12:00:06Z",
     "repositories": [{"repo_root": "/r", "removed": True}]},
]


async def test_client_tolerates_the_newest_agent_revision() -> None:
    received: list[str] = []

    async def handler(request: Request):  # type: ignore[no-untyped-def]
        ws = await request.accept_websocket()
        for m in NEWEST:
            await ws.send(orjson.dumps(m).decode() + "\n")
        received.append(await ws.receive())  # the refresh
        await ws.close()

    http = HttpServer(handler)
    server = await asyncio.start_server(http.serve_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        w = GitWatch.over(await websocket_connect(reader, writer, f"127.0.0.1:{port}",
                                                  "/api/v0/git/watch"))
        async with w:
            kinds = []
            for _ in range(3):
                msg = await _next(w)
                kinds.append(msg.type)
            assert kinds == [GitServerMessageType.PROGRESS] * 3
            partial = w.in_progress["/r"]
            assert (partial.unified_diff, partial.complete, partial.total_files) == (
                "diff --git a/x b/x\n+more\n", True, 2)
            snap = await _next(w)  # "future-kind" was skipped
            assert snap.type is GitServerMessageType.CHANGES
            assert snap.repositories is not None and snap.repositories[0].diff_truncated
            assert snap.scanned_at is not None and snap.scanned_at.microsecond == 123456
            assert w.repositories["/r"].unified_diff == partial.unified_diff
            assert w.in_progress == {}
            heartbeat = await _next(w)
            assert heartbeat.repositories == []
            await _next(w)
            assert w.repositories == {}
            await w.refresh()
            assert await w.receive() is None  # closed normally by the agent
        assert received == ['{"type":"refresh"}\n']
        assert w.received == len(NEWEST)
    finally:
        server.close()
        await server.wait_closed()


async def test_refused_upgrade_is_an_agent_api_error(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        p.agent.router._entries.clear()  # every path 404s: the upgrade is refused
        with pytest.raises(AgentApiError) as ei:
            async with p.conn.watch_git(chat_id=uuid.uuid4()):
                pass
        assert (ei.value.status, ei.value.message) == (404, "404 page not found")
