"""The process API with real processes (agent-api.md §4), plus the head/tail buffer (§4.2).

Buffer expectations are ported from coder/coder ``agent/agentproc/headtail_test.go``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agentconn.agent.api.processes import (
    MAX_LINE_LENGTH,
    HeadTailBuffer,
    ProcessManager,
    go_string,
)
from agentconn.agent.api.router import Router
from agentconn.agent.options import AgentOptions

MARKER = "\n\n... [omitted {} bytes] ...\n\n"


# -- helpers ---------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (orphans may linger unreaped as zombies)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


async def _until(cond: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


class Harness:
    def __init__(self, api: Any, manager: ProcessManager) -> None:
        self.api = api
        self.manager = manager

    async def start(self, command: str, *, chat: uuid.UUID | None = None, **extra: Any) -> str:
        r = await self.api.call("POST", "/api/v0/processes/start",
                                body={"command": command, **extra}, headers=_chat(chat))
        assert r.status == 200, r.body
        body = r.json()
        assert body["started"] is True
        return str(body["id"])

    async def output(self, pid: str, *, wait: bool = False, chat: uuid.UUID | None = None) -> Any:
        target = f"/api/v0/processes/{pid}/output" + ("?wait=true" if wait else "")
        return await self.api.call("GET", target, headers=_chat(chat))

    async def finished(self, pid: str) -> dict[str, Any]:
        r = await self.output(pid, wait=True)
        assert r.status == 200, r.body
        body: dict[str, Any] = r.json()
        assert body["running"] is False, body
        return body

    async def signal(self, pid: str, sig: Any, *, chat: uuid.UUID | None = None) -> Any:
        return await self.api.call("POST", f"/api/v0/processes/{pid}/signal",
                                   body={"signal": sig}, headers=_chat(chat))

    async def list(self, *, chat: uuid.UUID | None = None) -> list[dict[str, Any]]:
        r = await self.api.call("GET", "/api/v0/processes/list", headers=_chat(chat))
        assert r.status == 200
        procs: list[dict[str, Any]] = r.json()["processes"]
        return procs

    async def first_line_int(self, pid: str, index: int = 0) -> int:
        """Poll the output until line ``index`` is complete; return it as an int."""
        value: list[int] = []

        async def ready() -> bool:
            lines = (await self.output(pid)).json()["output"].split("\n")
            if len(lines) > index + 1:
                value.append(int(lines[index]))
                return True
            return False

        await _until(ready)
        return value[0]


def _chat(chat: uuid.UUID | None) -> dict[str, str]:
    return {"Coder-Chat-Id": str(chat)} if chat else {}


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_procs(make_api: Any, tmp_path: Path) -> AsyncIterator[MakeHarness]:
    managers: list[ProcessManager] = []

    async def make(options: AgentOptions | None = None, **kwargs: Any) -> Harness:
        if options is None:
            home = tmp_path / "home"
            home.mkdir(exist_ok=True)
            options = AgentOptions(home=str(home), environ={"PATH": os.environ["PATH"]})
        manager = ProcessManager(options, **kwargs)
        managers.append(manager)
        router = Router()
        manager.register(router)
        return Harness(await make_api(router), manager)

    yield make
    for m in managers:
        await m.close()


# -- head/tail buffer (ported expectations) --------------------------------------------------


def test_buffer_small_and_empty() -> None:
    buf = HeadTailBuffer()
    assert buf.output() == (b"", None)
    for ch in b"hello world":
        buf.write(bytes([ch]))
    assert buf.output() == (b"hello world", None)
    assert (len(buf), buf.total_bytes) == (11, 11)


def test_buffer_exactly_head_size_is_not_truncated() -> None:
    line = b"x" * 79 + b"\n"
    data = line * (16384 // 80) + b"y" * (16384 % 80)
    assert len(data) == 16384
    buf = HeadTailBuffer()
    buf.write(data)
    assert buf.output() == (data, None)


def test_buffer_head_plus_tail_without_omission() -> None:
    buf = HeadTailBuffer(10, 10)
    buf.write(b"0123456789abcdefghij")
    out, info = buf.output()
    assert out == b"0123456789\nabcdefghij"
    assert info is not None
    assert (info.original_bytes, info.retained_bytes, info.omitted_bytes, info.strategy) == (
        20, 21, 0, "head_tail")


def test_buffer_omission_and_ring_wraparound() -> None:
    buf = HeadTailBuffer(10, 10)
    buf.write(b"A" * 50 + b"Z" * 50)
    out, info = buf.output()
    assert out == b"A" * 10 + MARKER.format(80).encode() + b"Z" * 10
    assert info is not None and (info.original_bytes, info.omitted_bytes) == (100, 80)
    assert info.retained_bytes == len(out)
    assert (len(buf), buf.total_bytes) == (20, 100)

    buf = HeadTailBuffer(5, 10)
    for chunk in (b"HEADD", b"0123456789", b"abcdefghij", b"ABCDE"):
        buf.write(chunk)
    out, info = buf.output()
    assert out == b"HEADD" + MARKER.format(15).encode() + b"fghijABCDE"


def test_buffer_long_lines_cut_per_segment() -> None:
    buf = HeadTailBuffer()
    buf.write(b"short line\n" + b"L" * (MAX_LINE_LENGTH + 100) + b"\nshort line\n")
    out, info = buf.output()
    assert info is None
    assert out == b"short line\n" + b"L" * 2032 + b" ... [truncated]\nshort line\n"
    # A 2048-byte line is kept; a segment of <= 2048 bytes is never cut.
    buf = HeadTailBuffer()
    buf.write(b"m" * 2048 + b"\n")
    assert buf.output()[0] == b"m" * 2048 + b"\n"
    # Long line in the tail only.
    buf = HeadTailBuffer(20, 5000)
    buf.write(b"head data goes here\n")
    buf.write(b"T" * (MAX_LINE_LENGTH + 100) + b"\n")
    out, info = buf.output()
    assert out == b"head data goes here\n" + b"\n" + b"T" * 2032 + b" ... [truncated]\n"
    assert info is not None and info.omitted_bytes == 0 and info.retained_bytes == len(out)


def test_buffer_stays_bounded() -> None:
    buf = HeadTailBuffer()
    chunk = b"x" * 4096 + b"\n"
    total = 0
    while total < 5 << 20:
        buf.write(chunk)
        total += len(chunk)
    assert len(buf) == 32768
    _, info = buf.output()
    assert info is not None
    assert (info.original_bytes, info.omitted_bytes) == (total, total - 32768)


def test_go_string_replaces_each_invalid_byte() -> None:
    # Go: every byte outside a valid sequence is its own U+FFFD; Python's "replace" would
    # merge the truncated 3-byte sequence \xe2\x82 into one.
    assert go_string(b"\xe2\x82x\xff\xe2\x82\xac") == "\ufffd\ufffdx\ufffd\u20ac"
    assert go_string(b"\xed\xa0\x80") == "\ufffd" * 3  # encoded surrogate


# -- start and output ------------------------------------------------------------------------


async def test_output_interleaves_stdout_and_stderr(make_procs: MakeHarness) -> None:
    h = await make_procs()
    pid = await h.start("echo one; echo two >&2; printf three; printf ' four\\n' >&2")
    body = await h.finished(pid)
    assert body == {"output": "one\ntwo\nthree four\n", "running": False, "exit_code": 0}


async def test_exit_codes(make_procs: MakeHarness) -> None:
    h = await make_procs()
    assert (await h.finished(await h.start("exit 3")))["exit_code"] == 3
    # A process ended by a signal reports -1.
    assert (await h.finished(await h.start("kill -9 $$")))["exit_code"] == -1


async def test_invalid_utf8_output(make_procs: MakeHarness) -> None:
    h = await make_procs()
    body = await h.finished(await h.start(r"printf '\342\202x\377<&>'"))
    assert body["output"] == "\ufffd\ufffdx\ufffd<&>"
    r = await h.output(await h.start(r"printf '<&>'"), wait=True)
    assert b"\\u003c\\u0026\\u003e" in r.body  # HTML-escaped like Go's encoder


async def test_one_megabyte_is_head_tail_truncated(make_procs: MakeHarness) -> None:
    h = await make_procs()
    line = b"0123456789abcdef\n"
    total = 1 << 20
    data = (line * (total // len(line) + 1))[:total]
    body = await h.finished(await h.start(f"yes 0123456789abcdef | head -c {total}"))
    marker = MARKER.format(total - 32768).encode()
    expected = data[:16384] + marker + data[-16384:]
    assert body["output"] == expected.decode()
    assert body["truncated"] == {"original_bytes": total, "retained_bytes": len(expected),
                                 "omitted_bytes": total - 32768, "strategy": "head_tail"}
    assert body["exit_code"] == 0


async def test_long_lines_are_cut_in_head_and_tail(make_procs: MakeHarness) -> None:
    h = await make_procs()
    # Untruncated output: one 5000-byte line.
    cmd = "head -c 5000 /dev/zero | tr '\\0' m; echo; echo short"
    body = await h.finished(await h.start(cmd))
    assert body["output"] == "m" * 2032 + " ... [truncated]\nshort\n"
    assert "truncated" not in body
    # 40800 bytes of short lines, then a 3000-byte line that lands in the tail.
    cmd = "yes 0123456789abcdef | head -c 40800; head -c 3000 /dev/zero | tr '\\0' T; echo"
    body = await h.finished(await h.start(cmd))
    data = b"0123456789abcdef\n" * 2400 + b"T" * 3000 + b"\n"
    tail = data[-16384:]
    assert tail.endswith(b"\n" + b"T" * 3000 + b"\n")
    cut_tail = tail[:-3001] + b"T" * 2032 + b" ... [truncated]\n"
    omitted = len(data) - 32768
    expected = data[:16384] + MARKER.format(omitted).encode() + cut_tail
    assert body["output"] == expected.decode()
    assert body["truncated"]["retained_bytes"] == len(expected)
    assert body["truncated"]["original_bytes"] == len(data)


async def test_wait_blocks_until_exit_and_is_capped(make_procs: MakeHarness) -> None:
    h = await make_procs(max_wait=0.3)
    pid = await h.start("sleep 1; echo done; exit 7")
    # Each wait returns after the exit or after the 0.3 s cap, whichever comes first; while
    # the process runs the snapshot has no exit code.
    snapshots = [(await h.output(pid, wait=True)).json()]
    while snapshots[-1]["running"]:
        assert snapshots[-1] == {"output": "", "running": True}
        snapshots.append((await h.output(pid, wait=True)).json())
    assert len(snapshots) > 1
    assert snapshots[-1] == {"output": "done\n", "running": False, "exit_code": 7}

    long = await h.start("sleep 100")
    body = (await h.output(long, wait=True)).json()
    assert body == {"output": "", "running": True}
    assert (await h.signal(long, "kill")).status == 200


async def test_stray_child_holding_the_pipe(make_procs: MakeHarness) -> None:
    h = await make_procs(pipe_drain_timeout=0.3)
    pid = await h.start("sleep 30 & echo $!")
    body = await h.finished(pid)
    child = int(body["output"])
    try:
        assert _alive(child)
        # Go's Wait reports ErrWaitDelay (→ -1) when the pipe had to be abandoned after a
        # successful exit; a failing exit status is kept.
        assert body["exit_code"] == -1
        body = await h.finished(await h.start("sleep 30 & echo $!; exit 4"))
        assert body["exit_code"] == 4
        os.kill(int(body["output"]), signal.SIGKILL)
    finally:
        os.kill(child, signal.SIGKILL)


# -- environment and working directory ----------------------------------------------------


async def test_environment_precedence_and_chat_id(make_procs: MakeHarness, tmp_path: Path) -> None:
    options = AgentOptions(home=str(tmp_path), environ={
        "PATH": os.environ["PATH"], "A": "base-a", "B": "base-b"})
    h = await make_procs(options)
    chat = uuid.uuid4()
    cmd = 'echo "$A $B ${HOME-nohome} ${CODER_CHAT_ID-nochat}"'
    body = await h.finished(await h.start(cmd, env={"B": "req-b"}, chat=chat))
    assert body["output"] == f"base-a req-b nohome {chat}\n"
    body = await h.finished(await h.start(cmd))
    assert body["output"] == "base-a base-b nohome nochat\n"
    # The request cannot override the chat id the agent sets.
    body = await h.finished(await h.start(cmd, env={"CODER_CHAT_ID": "forged"}, chat=chat))
    assert body["output"].endswith(f" {chat}\n")


async def test_working_directory(make_procs: MakeHarness, tmp_path: Path) -> None:
    home, project, other = tmp_path / "home", tmp_path / "project", tmp_path / "other"
    for d in (home, other):
        d.mkdir()
    options = AgentOptions(home=str(home), directory=str(project),
                           environ={"PATH": os.environ["PATH"]})
    h = await make_procs(options)
    # Configured directory missing → home.
    pid = await h.start("pwd")
    assert (await h.finished(pid))["output"] == f"{home}\n"
    assert [p["workdir"] for p in await h.list() if p["id"] == pid] == [str(home)]
    # Configured directory present → it.
    project.mkdir()
    assert (await h.finished(await h.start("pwd")))["output"] == f"{project}\n"
    # Explicit workdir wins.
    pid = await h.start("pwd", workdir=str(other))
    assert (await h.finished(pid))["output"] == f"{other}\n"
    assert [p["workdir"] for p in await h.list() if p["id"] == pid] == [str(other)]
    # A bad workdir makes the spawn fail.
    missing = tmp_path / "missing"
    r = await h.api.call("POST", "/api/v0/processes/start",
                         body={"command": "pwd", "workdir": str(missing)})
    assert r.status == 500
    assert r.json() == {"message": "Failed to start process.",
                        "detail": f"start process: chdir {missing}: no such file or directory"}


async def test_start_errors(make_procs: MakeHarness) -> None:
    h = await make_procs()
    r = await h.api.call("POST", "/api/v0/processes/start", body={"command": ""})
    assert (r.status, r.json()) == (400, {"message": "Command is required."})
    r = await h.api.call("POST", "/api/v0/processes/start", body={"workdir": "/"})
    assert (r.status, r.json()) == (400, {"message": "Command is required."})
    r = await h.api.call("POST", "/api/v0/processes/start", body=b"{invalid json")
    assert r.status == 400 and r.json()["message"] == "Request body must be valid JSON."
    assert r.json()["detail"]
    assert await h.list() == []


# -- signals ---------------------------------------------------------------------------------


async def test_kill_reports_minus_one(make_procs: MakeHarness) -> None:
    h = await make_procs()
    pid = await h.start("sleep 100")
    r = await h.signal(pid, "kill")
    assert (r.status, r.json()) == (200, {"message": f'Signal "kill" sent to process "{pid}".'})
    body = await h.finished(pid)
    assert body["exit_code"] == -1
    r = await h.signal(pid, "kill")
    assert (r.status, r.json()) == (409, {"message": f'Process "{pid}" is not running.'})


async def test_terminate_reaches_the_process_group(make_procs: MakeHarness) -> None:
    # The long pipe grace period means the test would stall if the child survived.
    h = await make_procs(pipe_drain_timeout=60)
    pid = await h.start("sleep 100 & echo $!; wait")
    child = await h.first_line_int(pid)
    assert _alive(child)
    r = await h.signal(pid, "terminate")
    assert r.json() == {"message": f'Signal "terminate" sent to process "{pid}".'}
    body = await h.finished(pid)
    assert body["exit_code"] == -1
    assert not _alive(child)


async def test_signal_request_errors(make_procs: MakeHarness) -> None:
    h = await make_procs()
    pid = await h.start("sleep 100")
    r = await h.signal(pid, "")
    assert (r.status, r.json()) == (400, {"message": "Signal is required."})
    r = await h.api.call("POST", f"/api/v0/processes/{pid}/signal", body={})
    assert (r.status, r.json()) == (400, {"message": "Signal is required."})
    r = await h.signal(pid, 'hup"')
    assert (r.status, r.json()) == (
        400, {"message": 'Unsupported signal "hup\\"". Use "kill" or "terminate".'})
    r = await h.api.call("POST", f"/api/v0/processes/{pid}/signal", body=b"nope")
    assert r.status == 400 and r.json()["message"] == "Request body must be valid JSON."
    unknown = str(uuid.uuid4())
    r = await h.signal(unknown, "kill")
    assert (r.status, r.json()) == (404, {"message": f'Process "{unknown}" not found.'})
    r = await h.output(unknown)
    assert (r.status, r.json()) == (404, {"message": f'Process "{unknown}" not found.'})
    assert (await h.output(pid)).json()["running"] is True


# -- chats, listing, reaping, exit hook ------------------------------------------------------


async def test_chat_isolation(make_procs: MakeHarness) -> None:
    h = await make_procs()
    chat_a, chat_b = uuid.uuid4(), uuid.uuid4()
    pa = await h.start("sleep 100", chat=chat_a)
    free = await h.start("echo free")
    # Another chat cannot see, read or signal it — even with a bad body.
    r = await h.output(pa, chat=chat_b)
    assert (r.status, r.json()) == (404, {"message": f'Process "{pa}" not found.'})
    r = await h.api.call("POST", f"/api/v0/processes/{pa}/signal", body=b"junk",
                         headers=_chat(chat_b))
    assert r.status == 404
    assert [p["id"] for p in await h.list(chat=chat_b)] == []
    # Its own chat and chat-less requests can.
    assert (await h.output(pa, chat=chat_a)).status == 200
    assert (await h.output(pa)).status == 200
    assert [p["id"] for p in await h.list(chat=chat_a)] == [pa]
    assert {p["id"] for p in await h.list()} == {pa, free}
    # A process started without a chat is readable from any chat but listed only without one.
    await h.finished(free)
    assert (await h.output(free, chat=chat_b)).status == 200
    r = await h.signal(pa, "kill", chat=chat_a)
    assert r.status == 200


async def test_list_order_fields_and_cap(make_procs: MakeHarness) -> None:
    h = await make_procs()
    assert await h.list() == []
    before = int(time.time())
    quick = [await h.start("true", background=True) for _ in range(9)]
    for pid in quick:
        await h.finished(pid)
    slow = [await h.start("sleep 100") for _ in range(3)]
    procs = await h.list()
    assert [p["id"] for p in procs] == slow[::-1] + quick[::-1][:7]
    running, exited = procs[0], procs[-1]
    assert set(running) == {"id", "command", "workdir", "background", "running",
                            "started_at_unix"}
    assert running["running"] is True and running["background"] is False
    assert running["command"] == "sleep 100"
    assert exited["exit_code"] == 0 and exited["background"] is True
    assert before <= exited["started_at_unix"] <= exited["exited_at_unix"] <= time.time()


async def test_exited_processes_are_reaped(make_procs: MakeHarness) -> None:
    h = await make_procs(exited_retention=0.2)
    pid = await h.start("true")
    await h.finished(pid)
    assert [p["id"] for p in await h.list()] == [pid]
    await asyncio.sleep(0.3)
    # Output still answers until a list reaps it.
    assert (await h.output(pid)).status == 200
    assert await h.list() == []
    assert (await h.output(pid)).status == 404


async def test_exit_hook_for_chat_processes(make_procs: MakeHarness, tmp_path: Path) -> None:
    calls: list[tuple[tuple[uuid.UUID, ...], str]] = []
    h = await make_procs(on_process_exit=lambda chat, workdir: calls.append((chat, workdir)))
    chat = uuid.uuid4()
    await h.finished(await h.start("true", chat=chat, workdir=str(tmp_path)))
    await h.finished(await h.start("true", chat=chat))
    await h.finished(await h.start("true"))
    assert calls == [((chat,), str(tmp_path)), ((chat,), "")]


async def test_close_kills_everything(make_procs: MakeHarness) -> None:
    h = await make_procs()
    a = await h.start("echo $$; sleep 100 & echo $!; wait")
    b = await h.start("echo $$; exec sleep 100")
    pids = [await h.first_line_int(a), await h.first_line_int(a, 1), await h.first_line_int(b)]
    assert all(_alive(p) for p in pids)
    await h.manager.close()

    async def all_dead() -> bool:
        # A SIGKILLed process can release its pipe a moment before /proc shows it dead.
        return not any(_alive(p) for p in pids)

    await _until(all_dead, timeout=10)
    body = await h.finished(a)
    assert body["exit_code"] == -1
    r = await h.api.call("POST", "/api/v0/processes/start", body={"command": "true"})
    assert (r.status, r.json()) == (500, {"message": "Failed to start process.",
                                          "detail": "manager is closed"})


async def test_waitpid_thread_fallback() -> None:
    # Where pidfds are unavailable the exit is collected by a dedicated waitpid thread.
    import subprocess

    from agentconn.agent import children

    popen = subprocess.Popen(["sh", "-c", "exit 5"], cwd="/",  # noqa: ASYNC220 - reaped below
                             env={"PATH": os.environ["PATH"]}, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    status = await children._wait_exit_thread(popen.pid)
    popen.returncode = -1  # reaped by us; keep Popen from waiting again
    assert status is not None and os.waitstatus_to_exitcode(status) == 5


async def test_wait_ends_when_the_client_goes_away(make_procs: MakeHarness) -> None:
    """§4.3: ``wait=true`` blocks until exit, the cap, or the client leaving — the last one
    must free the handler (and its connection) at once, not after 5 minutes."""
    h = await make_procs()
    pid = await h.start("sleep 60")
    finished: list[int] = []
    original = h.manager._output

    async def spy(*args: Any, **kwargs: Any) -> Any:
        try:
            return await original(*args, **kwargs)
        finally:
            finished.append(1)

    h.manager._output = spy  # type: ignore[method-assign]
    router = Router()
    h.manager.register(router)
    from agentconn.web import HttpServer

    server = await asyncio.start_server(HttpServer(router).serve_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /api/v0/processes/{pid}/output?wait=true HTTP/1.1\r\n"
                     "Host: agent\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.5)
        assert finished == []          # still waiting for the process
        writer.close()
        await _until(lambda: _ready(finished), timeout=10)
        assert (await h.output(pid)).json()["running"] is True
    finally:
        server.close()
        await server.wait_closed()


async def _ready(flag: list[int]) -> bool:
    return bool(flag)


async def test_start_nul_byte_is_400_without_traceback(
        make_procs: MakeHarness, caplog: pytest.LogCaptureFixture) -> None:
    """A NUL in the command, workdir or env is a bad request (the OS refuses it), not a 500."""
    h = await make_procs()
    for body, field in (({"command": "echo a\x00b"}, "command"),
                        ({"command": "true", "workdir": "/tmp\x00"}, "workdir"),
                        ({"command": "true", "env": {"A": "b\x00"}}, "env")):
        r = await h.api.call("POST", "/api/v0/processes/start", body=body)
        assert (r.status, r.json()) == (400, {"message": f"{field} must not contain a NUL byte"})
    assert await h.list() == []
    assert not [r.getMessage() for r in caplog.records if r.levelno >= 30 and r.exc_info]


async def test_start_deeply_nested_body_is_invalid_json(make_procs: MakeHarness) -> None:
    h = await make_procs()
    for body in (b"[" * 3000 + b"]" * 3000, b'{"command":' + b"[" * 3000 + b"]" * 3000 + b"}"):
        r = await h.api.call("POST", "/api/v0/processes/start", body=body)
        assert (r.status, r.json()["message"]) == (400, "Request body must be valid JSON.")
    assert await h.list() == []
