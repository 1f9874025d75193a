"""Git watch (agent-api.md §10) against real git repositories, over real loopback HTTP.

The agent side is the real route stack: FilesApi and ProcessManager record touched paths into
one PathStore, GitWatchApi serves ``/api/v0/git/watch``; the client side is
:class:`agentconn.client.git.GitWatch` on a loopback websocket. Repositories are made with
``git init`` and fixed-author commits in temp dirs; every diff the agent sends is checked with
``git apply --check`` (then applied) in a fresh clone at HEAD. Nothing waits on a clock: tests
wait for messages or for the watcher's scan counters.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from gitrepo import apply_check, git, git_env, make_repo, require_git

from agentconn.agent.api.files import FilesApi
from agentconn.agent.api.processes import ProcessManager
from agentconn.agent.api.router import Router
from agentconn.agent.git.paths import PathStore
from agentconn.agent.git.scan import (
    MAX_FILE_DIFF_SIZE,
    DiffSplitter,
    iec_size,
    quote_path,
    scan_repo,
)
from agentconn.agent.git.watch import (
    GIT_MISSING_MESSAGE,
    GitWatchApi,
    GitWatcher,
    encode_changes,
)
from agentconn.agent.options import AgentOptions
from agentconn.client.git import GitWatch, GitWatchError
from agentconn.proto._codec import go_json
from agentconn.proto.git import (
    GitClientMessage,
    GitRepoChanges,
    GitServerMessage,
    GitServerMessageType,
)
from agentconn.web.websocket import websocket_connect

HANG_GUARD = 120.0  # seconds: only to turn a hang into a failure, never a measured bound


@pytest.fixture(autouse=True)
def _git() -> None:
    require_git()


@dataclass
class Harness:
    api: Any  # conftest.ApiHarness
    paths: PathStore
    watch: GitWatchApi
    home: Path
    root: Path

    async def connect(self, chat: uuid.UUID | None = None, query: str | None = None,
                      headers: dict[str, str] | None = None) -> GitWatch:
        target = "/api/v0/git/watch"
        if query is not None:
            target += "?" + query
        elif chat is not None:
            target += f"?chat_id={chat}"
        reader, writer = await asyncio.open_connection(self.api.host, self.api.port)
        ws = await websocket_connect(reader, writer, f"{self.api.host}:{self.api.port}", target,
                                     headers=headers or {}, max_message_size=4 << 20)
        return GitWatch.over(ws)

    async def watcher(self, chat: uuid.UUID) -> GitWatcher:
        async def found() -> bool:
            return any(w.chat == chat for w in self.watch.watchers)

        await until(found)
        return next(w for w in self.watch.watchers if w.chat == chat)

    async def write(self, path: Path, data: bytes | str, chat: uuid.UUID,
                    ancestors: tuple[uuid.UUID, ...] = ()) -> None:
        headers = {"Coder-Chat-Id": str(chat)}
        if ancestors:
            headers["Coder-Ancestor-Chat-Ids"] = orjson.dumps([str(a) for a in ancestors]).decode()
        body = data.encode() if isinstance(data, str) else data
        r = await self.api.call("POST", f"/api/v0/write-file?path={path}", body=body,
                                headers=headers)
        assert r.status == 200, r.body

    def repo(self, name: str, **kw: object) -> Path:
        return make_repo(self.root / name, self.home, **kw)  # type: ignore[arg-type]


async def until(cond: Callable[[], object]) -> None:
    async with asyncio.timeout(HANG_GUARD):
        while True:
            result = cond()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)


async def next_msg(w: GitWatch) -> GitServerMessage:
    async with asyncio.timeout(HANG_GUARD):
        msg = await w.receive()
    assert msg is not None, "the watch ended"
    return msg


async def settled(h: Harness, w: GitWatch, chat: uuid.UUID) -> None:
    """Ask for a rescan and wait until the watcher finished it (whatever it sent)."""
    watcher = await h.watcher(chat)
    n = watcher.rounds
    await w.refresh()
    await until(lambda: watcher.rounds > n)


@pytest.fixture
async def h(make_api: Any, tmp_path: Path) -> AsyncIterator[Harness]:
    home, root, logs = tmp_path / "home", tmp_path / "repos", tmp_path / "logs"
    for d in (home, root, logs):
        d.mkdir()
    env = git_env(home)
    options = AgentOptions(home=str(home), directory=str(root), environ=env, log_dir=str(logs))
    paths = PathStore()
    router = Router()
    FilesApi(options, paths.add_paths).register(router)

    def exited(chats: tuple[uuid.UUID, ...], workdir: str) -> None:
        if workdir:
            paths.add_paths(chats, [workdir])
        else:
            paths.notify(chats)

    procs = ProcessManager(options, exited)
    procs.register(router)
    watch = GitWatchApi(options, paths, cooldown=0.05)
    watch.register(router)
    api = await make_api(router)
    yield Harness(api, paths, watch, home, root.resolve())
    await watch.close()
    await procs.close()


def only(msg: GitServerMessage) -> GitRepoChanges:
    assert msg.type is GitServerMessageType.CHANGES, msg
    assert msg.scanned_at is not None
    assert msg.repositories is not None and len(msg.repositories) == 1, msg.repositories
    return msg.repositories[0]


# -- the watch over HTTP ----------------------------------------------------------------------


async def test_write_file_watches_the_repo_and_sends_an_applicable_diff(
        h: Harness, tmp_path: Path) -> None:
    repo = h.repo("app", branch="feature/x", origin="git@example.invalid:team/app.git",
                  files={"a.txt": "one\ntwo\nthree\n", "lib/b.py": "print('b')\n",
                         "gone.txt": "bye\n"})
    chat = uuid.uuid4()
    w = await h.connect(chat)
    async with w:
        (repo / "gone.txt").unlink()
        (repo / "notes dir").mkdir()
        (repo / "notes dir" / "new <file>.md").write_text("# new & untracked\n")
        await h.write(repo / "a.txt", "one\nTWO\nthree\nfour\n", chat)
        entry = only(await next_msg(w))
        assert entry.repo_root == str(repo)
        assert entry.branch == "feature/x"
        assert entry.remote_origin == "git@example.invalid:team/app.git"
        assert not entry.removed
        diff = entry.unified_diff
        assert "diff --git a/a.txt b/a.txt\n" in diff and "-two\n+TWO\n" in diff
        assert "--- /dev/null\n" in diff and "+# new & untracked\n" in diff
        assert "deleted file mode 100644" in diff
        clone = apply_check(repo, diff, tmp_path / "scratch", h.home)
        assert (clone / "a.txt").read_text() == "one\nTWO\nthree\nfour\n"
        assert (clone / "notes dir" / "new <file>.md").read_text() == "# new & untracked\n"
        assert not (clone / "gone.txt").exists()
        assert w.repositories[str(repo)] == entry


async def test_identical_rescan_sends_nothing_then_a_change_sends_only_the_delta(
        h: Harness) -> None:
    repo1, repo2 = h.repo("one"), h.repo("two")
    chat = uuid.uuid4()
    async with await h.connect(chat) as w:
        await h.write(repo1 / "x.txt", "x\n", chat)
        assert only(await next_msg(w)).repo_root == str(repo1)
        await h.write(repo2 / "y.txt", "y\n", chat)
        # repo1 is unchanged, so only repo2 is in the delta
        assert only(await next_msg(w)).repo_root == str(repo2)
        await settled(h, w, chat)  # a full rescan of both: nothing changed, nothing sent
        await settled(h, w, chat)
        received = w.received
        await h.write(repo1 / "x.txt", "x2\n", chat)
        entry = only(await next_msg(w))
        assert w.received == received + 1  # nothing arrived in between
        assert entry.repo_root == str(repo1) and "+x2\n" in entry.unified_diff


async def test_removed_repo_is_reported_once(h: Harness) -> None:
    repo, other = h.repo("doomed"), h.repo("other")
    chat = uuid.uuid4()
    async with await h.connect(chat) as w:
        await h.write(repo / "f.txt", "f\n", chat)
        assert only(await next_msg(w)).repo_root == str(repo)
        shutil.rmtree(repo)
        await w.refresh()
        entry = only(await next_msg(w))
        assert (entry.repo_root, entry.removed) == (str(repo), True)
        assert entry.unified_diff == "" and entry.branch == ""
        assert str(repo) not in w.repositories
        await settled(h, w, chat)
        await h.write(other / "g.txt", "g\n", chat)
        assert only(await next_msg(w)).repo_root == str(other)  # no second removal


async def test_removed_dot_git_is_a_removal_not_the_enclosing_repo(h: Harness) -> None:
    outer = h.repo("outer")
    inner = make_repo(outer / "inner", h.home)
    chat = uuid.uuid4()
    async with await h.connect(chat) as w:
        await h.write(inner / "f.txt", "f\n", chat)
        assert only(await next_msg(w)).repo_root == str(inner)
        shutil.rmtree(inner / ".git")
        await w.refresh()
        entry = only(await next_msg(w))
        assert (entry.repo_root, entry.removed) == (str(inner), True)


async def test_other_chats_see_nothing_and_ancestors_see_descendants(h: Harness) -> None:
    repo_a, repo_b = h.repo("a"), h.repo("b")
    chat_a, chat_b, parent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with await h.connect(chat_a) as wa, await h.connect(chat_b) as wb, \
            await h.connect(parent) as wp:
        await h.write(repo_a / "a.txt", "a\n", chat_a, ancestors=(parent,))
        assert only(await next_msg(wa)).repo_root == str(repo_a)
        assert only(await next_msg(wp)).repo_root == str(repo_a)
        await settled(h, wb, chat_b)  # chat B scanned after A's write: saw nothing
        assert wb.received == 0
        assert (await h.watcher(chat_b)).roots == {}
        await h.write(repo_b / "b.txt", "b\n", chat_b)
        assert only(await next_msg(wb)).repo_root == str(repo_b)  # never repo A
        await settled(h, wa, chat_a)
        assert wa.received == 1


async def test_paths_tracked_before_connecting_are_scanned_at_once(h: Harness) -> None:
    repo = h.repo("early")
    chat = uuid.uuid4()
    await h.write(repo / "early.txt", "early\n", chat)
    async with await h.connect(chat) as w:
        entry = only(await next_msg(w))
        assert entry.repo_root == str(repo) and "+early\n" in entry.unified_diff


async def test_process_workdir_inside_a_repo_is_watched(h: Harness) -> None:
    repo = h.repo("proc", files={"src/main.c": "int main;\n"})
    chat = uuid.uuid4()
    async with await h.connect(chat) as w:
        r = await h.api.call("POST", "/api/v0/processes/start",
                             body={"command": "echo made > made.txt", "workdir": str(repo / "src")},
                             headers={"Coder-Chat-Id": str(chat)})
        assert r.status == 200, r.body
        entry = only(await next_msg(w))
        assert entry.repo_root == str(repo)
        assert "diff --git a/src/made.txt b/src/made.txt\nnew file mode 100644" in \
            entry.unified_diff
        # a process without a workdir still makes the chat's repositories rescan
        r = await h.api.call("POST", "/api/v0/processes/start",
                             body={"command": f"echo again >> {repo}/src/made.txt"},
                             headers={"Coder-Chat-Id": str(chat)})
        assert r.status == 200
        entry = only(await next_msg(w))
        assert "+made\n+again\n" in entry.unified_diff


async def test_size_guards(h: Harness, tmp_path: Path) -> None:
    repo = h.repo("big", files={"small.txt": "s\n", "grown.txt": "g\n"})
    chat = uuid.uuid4()
    async with await h.connect(chat) as w:
        (repo / "huge.bin").write_bytes(b"h" * (2 * 1024 * 1024 + 512 * 1024))  # 2.5 MiB
        (repo / "grown.txt").write_text("line of text\n" * 24_000)  # 328 KiB of diff
        await h.write(repo / "small.txt", "S\n", chat)
        diff = only(await next_msg(w)).unified_diff
        assert "+File too large to diff. Current size: 2.5 MiB\n" in diff
        assert "diff --git a/huge.bin b/huge.bin\nnew file mode 100644\n--- /dev/null\n" \
               "+++ b/huge.bin\n@@ -0,0 +1 @@\n" in diff
        assert "diff --git a/grown.txt b/grown.txt\n" in diff
        assert "+File diff too large to show. Diff size: 328 KiB\n" in diff
        assert "-s\n+S\n" in diff
        # git's own order: grown.txt, huge.bin, small.txt
        assert diff.index("a/grown.txt") < diff.index("a/huge.bin") < diff.index("a/small.txt")
        assert len(diff) < 4096
        for i in range(14):  # 14 files x ~250 KiB (each under the per-file limit): > 3 MiB
            (repo / f"part{i:02}.txt").write_text(f"{i} filler line\n" * 16_000)
        await w.refresh()
        entry = only(await next_msg(w))
        assert entry.unified_diff.startswith("Total diff too large to show. Size: ")
        assert entry.unified_diff.endswith(". Showing branch and remote only.")
        assert entry.branch == "main"


async def test_unknown_message_type_gets_an_error_and_the_socket_stays(h: Harness) -> None:
    repo = h.repo("r")
    chat = uuid.uuid4()
    async with await h.connect(chat) as w:
        await w.send("subscribe")
        msg = await next_msg(w)
        assert (msg.type, msg.message) == (GitServerMessageType.ERROR, "unknown message type")
        assert msg.to_json() == b'{"type":"error","message":"unknown message type"}'
        await w.send("")
        assert (await next_msg(w)).message == "unknown message type"
        await h.write(repo / "f", "f\n", chat)
        assert only(await next_msg(w)).repo_root == str(repo)


async def test_binary_frame_or_bad_json_closes_the_socket(h: Harness) -> None:
    for frame, code in ((b"\x00", 1003), ('{"type":', 1007)):
        w = await h.connect(uuid.uuid4())
        await w.websocket.send(frame)
        with pytest.raises(GitWatchError) as ei:
            await w.receive()
        assert ei.value.close_code == code
        await w.close()


async def test_without_a_chat_nothing_is_watched(h: Harness) -> None:
    repo = h.repo("r")
    chat = uuid.uuid4()
    for query in (None, "chat_id=not-a-uuid"):
        async with await h.connect(query=query, headers={"Coder-Chat-Id": str(chat)}) as w:
            await h.write(repo / "f", "f\n", chat)
            await w.send("ping?")  # the reply proves the socket is served
            assert (await next_msg(w)).type is GitServerMessageType.ERROR
            assert not h.watch.watchers


async def test_plain_get_is_refused_with_500(h: Harness) -> None:
    r = await h.api.call("GET", "/api/v0/git/watch")
    assert r.status == 500
    assert r.json()["message"] == "Failed to accept WebSocket."


async def test_without_git_on_path_the_socket_says_so(make_api: Any, tmp_path: Path) -> None:
    options = AgentOptions(home=str(tmp_path), environ={"PATH": str(tmp_path / "empty")},
                           log_dir=str(tmp_path))
    router = Router()
    watch = GitWatchApi(options, PathStore())
    watch.register(router)
    api = await make_api(router)
    reader, writer = await asyncio.open_connection(api.host, api.port)
    ws = await websocket_connect(reader, writer, "x", f"/api/v0/git/watch?chat_id={uuid.uuid4()}")
    async with GitWatch.over(ws) as w:
        msg = await next_msg(w)
        assert (msg.type, msg.message) == (GitServerMessageType.ERROR, GIT_MISSING_MESSAGE)
    await watch.close()


async def test_heartbeat_closes_a_client_that_never_answers(make_api: Any,
                                                            tmp_path: Path) -> None:
    options = AgentOptions(home=str(tmp_path), environ=git_env(tmp_path), log_dir=str(tmp_path))
    router = Router()
    watch = GitWatchApi(options, PathStore(), ping_interval=0.05)
    watch.register(router)
    api = await make_api(router)

    async def open_ws() -> GitWatch:
        reader, writer = await asyncio.open_connection(api.host, api.port)
        return GitWatch.over(await websocket_connect(reader, writer, "x", "/api/v0/git/watch"))

    silent = await open_ws()  # never reads, so never answers a ping
    await until(lambda: len(watch._sessions) == 1)
    await until(lambda: not watch._sessions)
    assert await silent.receive() is None  # the agent closed it (1001)
    await silent.close()
    # a reading client answers pings and stays: three answered pings later it is still served
    chat = uuid.uuid4()
    reader, writer = await asyncio.open_connection(api.host, api.port)
    lively = GitWatch.over(await websocket_connect(reader, writer, "x",
                                                   f"/api/v0/git/watch?chat_id={chat}"))
    receiving = asyncio.ensure_future(lively.receive())
    await until(lambda: any(w.chat == chat for w in watch.watchers))
    server_side = next(w for w in watch.watchers if w.chat == chat)
    await until(lambda: server_side.websocket is not None and server_side.websocket.pongs >= 3)
    assert len(watch._sessions) == 1 and not receiving.done()
    await lively.close()
    assert await receiving is None
    await watch.close()


# -- units ---------------------------------------------------------------------------------


def test_iec_size_matches_go_humanize() -> None:
    cases = {0: "0 B", 9: "9 B", 10: "10 B", 1023: "1023 B", 1024: "1.0 KiB",
             1536: "1.5 KiB", 300 * 1024: "300 KiB", 2_621_440: "2.5 MiB",
             82_854_982: "79 MiB", 3 * 1024 ** 3: "3.0 GiB"}
    assert {n: iec_size(n) for n in cases} == cases


def test_quote_path_matches_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "q", tmp_path)
    names = ["plain.txt", "sp ace.txt", "é.txt", 'quo"te', "back\\slash", "tab\there"]
    for n in names:
        (repo / n).write_text("x\n")
    git(repo, "add", "-N", ".", home=tmp_path)
    out = git(repo, "-c", "core.quotePath=true", "diff", home=tmp_path).stdout
    headers = {line + b"\n" for line in out.splitlines() if line.startswith(b"diff --git ")}
    assert headers == {b"diff --git " + quote_path(b"a/" + n.encode()) + b" "
                       + quote_path(b"b/" + n.encode()) + b"\n" for n in names}


def test_diff_splitter_bounds_each_file() -> None:
    big_line = b"+" + b"x" * (MAX_FILE_DIFF_SIZE + 10) + b"\n"
    stream = (b"diff --git a/a b/a\nindex 1..2 100644\n--- a/a\n+++ b/a\n@@ -1 +1 @@\n-a\n+b\n"
              b"diff --git a/big b/big\n--- a/big\n+++ b/big\n@@ -1 +1 @@\n" + big_line +
              b"diff --git a/c b/c\n--- a/c\n+++ b/c\n@@ -0,0 +1 @@\n+c")
    for step in (1, 7, 4096, len(stream)):
        s = DiffSplitter()
        out = []
        for i in range(0, len(stream), step):
            out += s.feed(stream[i:i + step])
        out += s.finish()
        assert [first for first, _ in out] == [b"diff --git a/a b/a\n", b"diff --git a/big b/big\n",
                                               b"diff --git a/c b/c\n"]
        assert out[0][1].endswith(b"-a\n+b\n")
        assert out[1][1] == (b"diff --git a/big b/big\n--- a/big\n+++ b/big\n@@ -0,0 +1 @@\n"
                             b"+File diff too large to show. Diff size: 256 KiB\n")
        assert out[2][1].endswith(b"+c")


def test_encode_changes_splits_under_the_budget() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 5, 18, 12, tzinfo=UTC)
    entries = [GitRepoChanges(repo_root=f"/r{i}", branch="main", unified_diff="+" * 1000)
               for i in range(10)]
    msgs = encode_changes(entries, now, budget=3500)
    assert len(msgs) == 4 and all(m.endswith(b"\n") for m in msgs)
    decoded = [GitServerMessage.from_json(m) for m in msgs]
    assert [r.repo_root for d in decoded for r in d.repositories or ()] == \
        [e.repo_root for e in entries]
    assert {d.scanned_at for d in decoded} == {now}
    one = encode_changes(entries[:1], now)[0]
    assert one == (b'{"type":"changes","scanned_at":"2026-05-18T12:00:00Z","repositories":'
                   b'[{"repo_root":"/r0","branch":"main","remote_origin":"","unified_diff":"'
                   + b"+" * 1000 + b'","removed":false}]}\n')


async def test_scan_before_the_first_commit_and_detached_head(tmp_path: Path) -> None:
    env = git_env(tmp_path)
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main", ".", home=tmp_path)
    (repo / "first.txt").write_text("first\n")
    state = await scan_repo(str(repo), env)
    assert state.branch == "" and state.remote_origin == ""
    assert "+++ b/first.txt\n@@ -0,0 +1 @@\n+first\n" in state.unified_diff
    git(repo, "add", "-A", home=tmp_path)
    git(repo, "commit", "-qm", "c", home=tmp_path)
    git(repo, "checkout", "-q", "--detach", home=tmp_path)
    (repo / "untracked.txt").write_text("u\n")
    index = (repo / ".git" / "index").read_bytes()
    state = await scan_repo(str(repo), env)
    assert state.branch == "" and "+++ b/untracked.txt" in state.unified_diff
    assert (repo / ".git" / "index").read_bytes() == index  # the real index is left alone
    assert git(repo, "status", "--porcelain", home=tmp_path).stdout == b"?? untracked.txt\n"


async def test_a_path_outside_any_repo_counts_once_git_init_ran(h: Harness) -> None:
    plain = h.root / "plain"
    plain.mkdir()
    chat = uuid.uuid4()
    async with await h.connect(chat) as w:
        await h.write(plain / "notes.txt", "n\n", chat)
        await settled(h, w, chat)
        assert w.received == 0
        # a process without a workdir inits the repository: the chat's next notification
        # looks at the old path again and finds it
        r = await h.api.call("POST", "/api/v0/processes/start",
                             body={"command": f"git init -q -b trunk {plain}"},
                             headers={"Coder-Chat-Id": str(chat)})
        assert r.status == 200
        entry = only(await next_msg(w))
        assert (entry.repo_root, entry.branch) == (str(plain), "")
        assert "+++ b/notes.txt" in entry.unified_diff


async def test_a_client_that_vanishes_leaves_no_traceback(h: Harness,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    repo = h.repo("r", files={"f": "f\n"})
    chat = uuid.uuid4()
    w = await h.connect(chat)
    (repo / "big.txt").write_text("y\n" * 400_000)  # a large message in flight
    await h.write(repo / "f", "g\n", chat)
    watcher = await h.watcher(chat)
    await until(lambda: watcher.scans >= 1)
    w.websocket.abort()  # no close frame: the TCP connection just goes away
    await until(lambda: not h.watch._sessions)
    problems = [r for r in caplog.records if r.levelno >= 30 or r.exc_info]
    assert problems == []


async def test_a_diff_that_html_escaping_grows_past_4_mib_is_sent_as_the_note(
        h: Harness) -> None:
    repo = h.repo("html", files={"keep.txt": "k\n"})
    chat = uuid.uuid4()
    async with await h.connect(chat) as w:
        # 13 files x 200 KiB of "<" lines: 2.7 MiB of diff (under every size guard), but
        # 6 bytes per "<" once JSON-escaped the way Go's encoder does
        for i in range(13):
            (repo / f"page{i:02}.html").write_text("<<<<<<<<<<<<<<<\n" * 12_800)
        await h.write(repo / "keep.txt", "K\n", chat)
        entry = only(await next_msg(w))
        assert entry.unified_diff.startswith("Total diff too large to show. Size: 2.7 MiB.")


async def test_a_repo_made_again_where_one_was_removed_is_watched_again(h: Harness) -> None:
    repo = h.repo("phoenix")
    chat = uuid.uuid4()
    async with await h.connect(chat) as w:
        await h.write(repo / "f.txt", "f\n", chat)
        assert only(await next_msg(w)).repo_root == str(repo)
        shutil.rmtree(repo)
        await w.refresh()
        assert only(await next_msg(w)).removed
        h.repo("phoenix", branch="reborn")
        await h.write(repo / "g.txt", "g\n", chat)
        entry = only(await next_msg(w))
        assert (entry.repo_root, entry.branch, entry.removed) == (str(repo), "reborn", False)


async def test_a_touched_but_unchanged_big_file_is_not_reported(tmp_path: Path) -> None:
    big = "b" * (3 * 1024 * 1024) + "\n"
    repo = make_repo(tmp_path / "t", tmp_path, files={"big.txt": big, "s.txt": "s\n"})
    os.utime(repo / "big.txt", (1, 1))  # stat data differs from the index, content does not:
    # `git diff` compares contents before listing it, so no stub for an unchanged file
    state = await scan_repo(str(repo), git_env(tmp_path))
    assert state.unified_diff == ""
    (repo / "big.txt").write_text(big.replace("b", "c"))  # same size, new content
    state = await scan_repo(str(repo), git_env(tmp_path))
    assert state.unified_diff == ("diff --git a/big.txt b/big.txt\n--- a/big.txt\n"
                                  "+++ b/big.txt\n@@ -0,0 +1 @@\n"
                                  "+File too large to diff. Current size: 3.0 MiB\n")


async def test_the_fallback_poll_sees_changes_nobody_reported(h: Harness) -> None:
    repo = h.repo("quiet")
    chat = uuid.uuid4()
    h.watch.poll_interval = 0.05  # the spec's 30 s, shortened
    async with await h.connect(chat) as w:
        await h.write(repo / "a.txt", "a\n", chat)
        assert only(await next_msg(w)).repo_root == str(repo)
        (repo / "b.txt").write_text("b\n")  # behind the agent's back: no write-file, no refresh
        entry = only(await next_msg(w))
        assert "+++ b/b.txt" in entry.unified_diff


# -- Go's encoding/json reads what the agent sends (tests/agent/go_decode) --------------------


@pytest.fixture(scope="module")
def go_decode(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("go not found (Debian package golang-go)", pytrace=False)
        pytest.skip("go not found (Debian package golang-go)")
    out = tmp_path_factory.mktemp("go_decode")
    env = dict(os.environ, GO111MODULE="off", GOFLAGS="", GOPATH=str(out / "gopath"),
               GOCACHE=str(out / "gocache"))
    r = subprocess.run([go, "build", "-o", str(out / "go_decode"), "main.go"],
                       cwd=Path(__file__).parent / "go_decode", env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    return out / "go_decode"


def _go_decodes(binary: Path, type_name: str, raw: bytes) -> dict[str, Any]:
    r = subprocess.run([str(binary), "decode", type_name], input=raw, capture_output=True,
                       timeout=60, check=False)
    assert r.returncode == 0, f"Go cannot decode {raw[:200]!r} as {type_name}: {r.stderr!r}"
    decoded: dict[str, Any] = orjson.loads(r.stdout)
    return decoded


async def test_every_git_watch_message_decodes_in_go(h: Harness, go_decode: Path) -> None:
    repo = h.repo("go", origin="git@example.invalid:go.git", files={"a.go": "package a\n"})
    chat = uuid.uuid4()
    reader, writer = await asyncio.open_connection(h.api.host, h.api.port)
    ws = await websocket_connect(reader, writer, "x", f"/api/v0/git/watch?chat_id={chat}")
    raws: list[bytes] = []

    async def receive() -> bytes:
        async with asyncio.timeout(HANG_GUARD):
            data = await ws.receive()
        assert isinstance(data, str)
        raws.append(data.encode())
        return data.encode()

    (repo / "<html> & é.txt").write_text("<b>\u2028 & \U0001f600</b>\n")
    await h.write(repo / "a.go", "package b\n", chat)
    changes = _go_decodes(go_decode, "WorkspaceAgentGitServerMessage", await receive())
    (entry,) = changes["repositories"]
    assert (entry["repo_root"], entry["branch"], entry["removed"]) == (str(repo), "main", False)
    assert "+<b>\u2028 & \U0001f600</b>\n" in entry["unified_diff"]  # escaped on the wire
    assert b"\\u003cb\\u003e" in raws[0] and b"\\u2028" in raws[0]
    await ws.send('{"type":"nope"}\n')
    err = _go_decodes(go_decode, "WorkspaceAgentGitServerMessage", await receive())
    assert err == {"type": "error", "message": "unknown message type"}
    shutil.rmtree(repo)
    await ws.send('{"type":"refresh"}\n')
    removed = _go_decodes(go_decode, "WorkspaceAgentGitServerMessage", await receive())
    assert removed["repositories"][0]["removed"] is True
    client = GitWatch.over(ws)
    await client.refresh()
    sent = go_json(GitClientMessage(type="refresh").to_json(), html_escape=False)  # as refresh()
    assert _go_decodes(go_decode, "WorkspaceAgentGitClientMessage", sent) == {"type": "refresh"}
    await client.close()
