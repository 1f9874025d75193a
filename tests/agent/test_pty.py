"""Reconnecting PTY (agent-api.md §5): our client against our ReconnectingPtyServer on port 2.

Client and agent talk through two userspace WireGuard tunnels over loopback UDP (agent_pair);
every session runs a real shell on a real PTY as this OS user. Malformed init frames are
written raw on tunnel TCP connections. The CLI runs as a subprocess on a real pseudo-terminal
against an Agent in this process. The server is started by each test (not wired into Agent).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import struct
import sys
import termios
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_pair import AGENT_ID, Pair, agent_pair, make_options, pair_configs

import _wgcore
from agentconn.agent.agent import Agent
from agentconn.agent.services.pty import PtySession, ReconnectingPtyServer
from agentconn.client.pty import ReconnectingPty, reconnecting_pty
from agentconn.proto.errors import ProtocolError
from agentconn.proto.ports import AGENT_RECONNECTING_PTY_PORT
from agentconn.proto.rpty import (
    RING_BUFFER_SIZE,
    ReconnectingPtyInit,
    ReconnectingPtyRequest,
    RequestDecoder,
)

WAIT = 60.0  # generous upper bound for anything to arrive; never a timing assertion


@contextlib.asynccontextmanager
async def served(tmp_path: Path, **kwargs: float) -> AsyncIterator[tuple[Pair, ReconnectingPtyServer]]:
    async with agent_pair(tmp_path) as p:
        server = ReconnectingPtyServer(p.agent.options, **kwargs)  # type: ignore[arg-type]
        await server.start(p.agent.tunnel)
        try:
            yield p, server
        finally:
            await server.close()


async def read_until(pty: ReconnectingPty, pattern: bytes | re.Pattern[bytes],
                     seen: bytearray | None = None) -> bytes:
    """Read output until ``pattern`` shows up; returns everything read (plus ``seen``)."""
    buf = seen if seen is not None else bytearray()

    def found() -> bool:
        if isinstance(pattern, bytes):
            return pattern in buf
        return pattern.search(buf) is not None

    async with asyncio.timeout(WAIT):
        while not found():
            chunk = await pty.read()
            if not chunk:
                raise AssertionError(f"EOF before {pattern!r}: {bytes(buf)!r}")
            buf += chunk
    return bytes(buf)


async def read_to_eof(pty: ReconnectingPty) -> bytes:
    buf = bytearray()
    async with asyncio.timeout(WAIT):
        async for chunk in pty:
            buf += chunk
    return bytes(buf)


async def shell_pid(pty: ReconnectingPty, tag: str) -> int:
    """The PID of the shell on the PTY (computed output, so the echoed command never matches)."""
    await pty.write(f"echo {tag}-$((1000+1))-$$-end\r")
    out = await read_until(pty, re.compile(rb"%s-1001-(\d+)-end" % tag.encode()))
    match = re.search(rb"%s-1001-(\d+)-end" % tag.encode(), out)
    assert match is not None
    return int(match.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- wire format (sans-IO) --------------------------------------------------------------------


def test_init_frame_is_go_json_marshal() -> None:
    init = ReconnectingPtyInit(id=uuid.UUID("12345678-1234-1234-1234-123456789abc"), height=24,
                               width=80, command="echo <a> & 'b'\n\u2028é",
                               backend_type="buffered")
    body = (b'{"ID":"12345678-1234-1234-1234-123456789abc","Height":24,"Width":80,'
            b'"Command":"echo \\u003ca\\u003e \\u0026 \'b\'\\n\\u2028\xc3\xa9","Container":"",'
            b'"ContainerUser":"","BackendType":"buffered"}')
    assert init.emit() == len(body).to_bytes(2, "little") + body
    assert ReconnectingPtyInit.parse(body) == init
    with pytest.raises(ValueError):
        ReconnectingPtyInit(id=init.id, command="x" * 70000).emit()
    with pytest.raises(ValueError):
        ReconnectingPtyInit(id=init.id, height=65536)


def test_init_keys_are_case_insensitive_and_zero_when_absent() -> None:
    u = uuid.uuid4()
    got = ReconnectingPtyInit.parse(
        json.dumps({"id": f"{{{u}}}", "HEIGHT": 3, "wIdTh": 4, "containerUſer": "x",
                    "command": None, "Extra": [1]}).encode())
    assert got == ReconnectingPtyInit(id=u, height=3, width=4, container_user="x")
    assert ReconnectingPtyInit.parse(b"{}").id == uuid.UUID(int=0)
    for bad in (b"", b"{", b"[]", b'{"ID":"nope"}', b'{"Height":-1}', b'{"Width":1.5}',
                b'{"Command":5}', b'{"Height":true}'):
        with pytest.raises(ProtocolError):
            ReconnectingPtyInit.parse(bad)


def test_requests_stream_whole_or_byte_by_byte() -> None:
    requests = [ReconnectingPtyRequest(data="ls\r"), ReconnectingPtyRequest(height=5, width=7),
                ReconnectingPtyRequest(data='{"}\\ \u00e9 <&>'), ReconnectingPtyRequest()]
    assert requests[1].emit() == b'{"height":5,"width":7}'
    assert requests[3].emit() == b"{}"
    assert ReconnectingPtyRequest(height=5).resize is None
    stream = b"".join(r.emit() for r in requests) + b' \n{"DATA":"x","Height":0} null'
    expected = [*requests, ReconnectingPtyRequest(data="x"), ReconnectingPtyRequest()]

    whole = RequestDecoder()
    whole.receive_data(stream)
    got = []
    while (r := whole.next_request()) is not None:
        got.append(r)
    assert got == expected

    one = RequestDecoder()
    got = []
    for i in range(len(stream)):
        one.receive_data(stream[i:i + 1])
        while (r := one.next_request()) is not None:
            got.append(r)
    assert got == expected and one.buffered == 0


@pytest.mark.parametrize("bad", [b"[1]", b'"text"', b"nul!", b'{"data":5}', b'{"height":70000}',
                                 b'{"data":"x",}'])
def test_bad_request_values_raise(bad: bytes) -> None:
    decoder = RequestDecoder()
    decoder.receive_data(b'{"data":"ok"}' + bad + b" ")
    assert decoder.next_request() == ReconnectingPtyRequest(data="ok")
    with pytest.raises(ProtocolError):
        decoder.next_request()
    with pytest.raises(ProtocolError):  # the decoder stays failed, as Go's does
        decoder.receive_data(b"{}")


def test_request_size_cap() -> None:
    decoder = RequestDecoder(max_size=100)
    decoder.receive_data(b'{"data":"' + b"a" * 200)
    with pytest.raises(ProtocolError):
        decoder.next_request()


# -- sessions over the tunnel -----------------------------------------------------------------


async def test_type_and_read_output(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, server):
        sid = uuid.uuid4()
        # screen is not used (falls back to buffered); containers are not enabled
        async with await reconnecting_pty(p.conn, sid, 24, 80, backend_type="screen",
                                          container="none") as pty:
            await pty.write("echo hi-$((6 * 7)); echo \"$TERM $PWD\"\r")
            out = await read_until(pty, b"xterm-256color")
            assert b"hi-42" in out
            assert f"xterm-256color {p.work}".encode() in out
            assert list(server.sessions) == [sid]


async def test_init_size_and_resize_requests(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, _), \
            await reconnecting_pty(p.conn, uuid.uuid4(), 31, 97, "bash --norc -i") as pty:
        await pty.write("stty size; echo S1-$((1+1))\r")
        out = await read_until(pty, b"S1-2")
        assert b"31 97" in out
        await pty.resize(40, 120)
        await pty.resize(0, 50)  # ignored: only a size with both sides non-zero applies
        await pty.write("stty size; echo S2-$((2+2))\r")
        out = await read_until(pty, b"S2-4")
        assert b"40 120" in out


async def test_drop_and_reattach_replays_screen(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, server):
        sid = uuid.uuid4()
        first = await reconnecting_pty(p.conn, sid, 24, 80)
        pid = await shell_pid(first, "before")
        await first.write("echo marker-$((40 + 2))\r")
        await read_until(first, b"marker-42")
        first.abort()  # a network failure: RST, no goodbye
        session = server.sessions[sid]
        async with asyncio.timeout(WAIT):
            while session.connections:
                await asyncio.sleep(0.01)
        assert alive(pid)
        async with await reconnecting_pty(p.conn, sid, 30, 100) as second:
            replay = await read_until(second, b"marker-42")
            assert b"before-1001-" in replay  # the screen from before the drop comes back
            assert await shell_pid(second, "after") == pid  # the very same shell
            await second.write("stty size; echo S-$((3+3))\r")
            assert b"30 100" in await read_until(second, b"S-6")


async def test_replay_keeps_only_the_last_64_kib(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, _):
        sid = uuid.uuid4()
        async with await reconnecting_pty(p.conn, sid, 24, 80, "bash --norc -i") as pty:
            # about 170 KiB of numbered lines, then a marker
            await pty.write("for i in $(seq 1 3000); do printf 'line-%05d-%s\\n' $i "
                            "abcdefghijklmnopqrstuvwxyz0123456789abcdefghij; done; "
                            "echo DONE-$((5*5))\r")
            await read_until(pty, b"DONE-25")
        async with await reconnecting_pty(p.conn, sid, 24, 80) as again:
            replay = await read_until(again, b"DONE-25")
        assert len(replay) >= RING_BUFFER_SIZE - 100  # allow the PTY's chunking at the end
        assert b"line-03000-" in replay and b"line-00001-" not in replay


async def test_two_attaches_both_get_output(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, server):
        sid = uuid.uuid4()
        a = await reconnecting_pty(p.conn, sid, 24, 80)
        b = await reconnecting_pty(p.conn, sid, 24, 80)
        try:
            await b.write("echo both-$((7 * 6))\r")
            await asyncio.gather(read_until(a, b"both-42"), read_until(b, b"both-42"))
            assert len(server.sessions[sid].connections) == 2
        finally:
            a.close()
            b.close()


async def test_concurrent_first_connections_share_one_session(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, server):
        sid = uuid.uuid4()
        ptys = await asyncio.gather(*(reconnecting_pty(p.conn, sid, 24, 80) for _ in range(4)))
        try:
            pids = {await shell_pid(pty, f"c{i}") for i, pty in enumerate(ptys)}
            assert len(pids) == 1 and list(server.sessions) == [sid]
        finally:
            for pty in ptys:
                pty.close()


async def test_process_exit_closes_every_connection(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, server):
        sid = uuid.uuid4()
        a = await reconnecting_pty(p.conn, sid, 24, 80, "read line; echo got-$line; exit 3")
        b = await reconnecting_pty(p.conn, sid, 24, 80)
        await asyncio.sleep(0)
        await a.write("x7\r")
        out_a, out_b = await asyncio.gather(read_to_eof(a), read_to_eof(b))
        assert b"got-x7" in out_a and b"got-x7" in out_b
        assert sid not in server.sessions
        # the ID is free again: a new connection starts a new session
        async with await reconnecting_pty(p.conn, sid, 24, 80, "echo fresh-$((1+8))") as c:
            assert b"fresh-9" in await read_to_eof(c)


async def test_idle_timeout_kills_the_session(tmp_path: Path) -> None:
    async with served(tmp_path, timeout=0.3) as (p, server):
        sid = uuid.uuid4()
        pty = await reconnecting_pty(p.conn, sid, 24, 80)
        pid = await shell_pid(pty, "idle")
        session: PtySession = server.sessions[sid]
        pty.close()
        await asyncio.wait_for(session.wait_closed(), WAIT)
        assert sid not in server.sessions
        async with asyncio.timeout(WAIT):  # reaped; its process group got SIGHUP
            while alive(pid):
                await asyncio.sleep(0.02)


async def test_attached_session_outlives_the_timeout(tmp_path: Path) -> None:
    async with served(tmp_path, timeout=0.2) as (p, server):
        sid = uuid.uuid4()
        async with await reconnecting_pty(p.conn, sid, 24, 80) as pty:
            pid = await shell_pid(pty, "a1")
            await asyncio.sleep(0.6)  # three timeouts with a connection attached
            assert await shell_pid(pty, "a2") == pid
            assert sid in server.sessions


async def test_creation_failure_releases_the_id(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, server):
        good_env = dict(server.options.environ)
        server.options.environ = {**good_env, "BROKEN": "nul\0byte"}  # exec refuses this
        sid = uuid.uuid4()
        failed = await reconnecting_pty(p.conn, sid, 24, 80)
        assert await read_to_eof(failed) == b""
        assert sid not in server.sessions
        server.options.environ = good_env
        async with await reconnecting_pty(p.conn, sid, 24, 80) as pty:
            await shell_pid(pty, "ok")


async def test_bad_request_object_closes_only_that_connection(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, _):
        sid = uuid.uuid4()
        async with await reconnecting_pty(p.conn, sid, 24, 80) as keep:
            pid = await shell_pid(keep, "k1")
            bad = await reconnecting_pty(p.conn, sid, 24, 80)
            bad._writer.write(b'{"data":"echo bad-$((2+3))\\r"} [1]')
            assert b"k1-1001-" in await read_to_eof(bad)  # the replay, then EOF
            await read_until(keep, b"bad-5")  # the valid object before [1] was applied
            assert await shell_pid(keep, "k2") == pid


async def raw_attempt(p: Pair, payload: bytes, *, eof: bool = True) -> bytes:
    """Write ``payload`` on a raw connection to port 2 and return everything until EOF."""
    reader, writer = await p.conn.tunnel.open_connection(str(p.conn.agent_address),
                                                         AGENT_RECONNECTING_PTY_PORT)
    try:
        writer.write(payload)
        if eof:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()


async def test_bad_init_frames_are_closed_silently(tmp_path: Path) -> None:
    async with served(tmp_path, max_init_size=4096) as (p, server):
        sid = uuid.uuid4()
        async with await reconnecting_pty(p.conn, sid, 24, 80) as keep:
            pid = await shell_pid(keep, "k1")
            good = ReconnectingPtyInit(id=uuid.uuid4(), height=24, width=80).emit()
            attempts = [
                b"",                                  # EOF before the header
                b"\x05",                              # EOF inside the header
                (60000).to_bytes(2, "little") + b'{"ID":',   # EOF inside the body
                (5000).to_bytes(2, "little") + b"{" + b" " * 4998 + b"}",  # over the limit
                (9).to_bytes(2, "little") + b"not json!",
                (4).to_bytes(2, "little") + b"[42]",
                (0).to_bytes(2, "little"),
                good[:-1],                            # one byte short, then EOF
            ]
            for payload in attempts:
                assert await raw_attempt(p, payload) == b"", payload
            # a wrong length that leaves request bytes after the "frame" is bad JSON too
            assert await raw_attempt(p, good[:2] + b'{"data":"x"}' + good[2:]) == b""
            assert list(server.sessions) == [sid]
            assert await shell_pid(keep, "k2") == pid


async def test_frame_is_read_exactly(tmp_path: Path) -> None:
    """Requests sent in the same segment as the init frame are not lost."""
    async with served(tmp_path) as (p, _):
        init = ReconnectingPtyInit(id=uuid.uuid4(), height=24, width=80,
                                   command="bash --norc -i")
        payload = (init.emit() + ReconnectingPtyRequest(data="echo same-$((9*9))\r").emit()
                   + ReconnectingPtyRequest(data="exit\r").emit())
        out = await raw_attempt(p, payload, eof=False)
        assert b"same-81" in out


async def test_close_ends_sessions_and_children(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        server = ReconnectingPtyServer(p.agent.options)
        await server.start(p.agent.tunnel)
        try:
            pty = await reconnecting_pty(p.conn, uuid.uuid4(), 24, 80)
            pid = await shell_pid(pty, "c")
        finally:
            await server.close()
        assert not server.sessions
        with contextlib.suppress(ConnectionError):
            assert await read_to_eof(pty) is not None
        async with asyncio.timeout(WAIT):
            while alive(pid):
                await asyncio.sleep(0.02)


def test_sessions_under_uvloop(tmp_path: Path) -> None:
    """The agent's CLI runs on uvloop (different subprocess and fd-watching code)."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async with served(tmp_path) as (p, _):
            sid = uuid.uuid4()
            async with await reconnecting_pty(p.conn, sid, 22, 77) as pty:
                await pty.write("stty size; echo U-$((2*21))\r")
                assert b"22 77" in await read_until(pty, b"U-42")
            async with await reconnecting_pty(p.conn, sid, 22, 77) as pty:
                await read_until(pty, b"U-42")
                await pty.write("exit\r")
                await read_to_eof(pty)

    uvloop.run(scenario())


# -- the CLI on a real pseudo-terminal --------------------------------------------------------


def _controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def test_cli_interactive_resize_and_reattach(tmp_path: Path) -> None:
    agent_conf, client_conf, _ = pair_configs()
    agent = Agent(agent_conf, AGENT_ID, options=make_options(tmp_path), listen_host="127.0.0.1",
                  services=())
    await agent.start()
    server = ReconnectingPtyServer(agent.options)
    master = -1
    proc = None
    try:
        await server.start(agent.tunnel)
        config = tmp_path / "client.conf"
        config.write_text(client_conf + f"Endpoint = 127.0.0.1:{agent.tunnel.listen_port}\n")
        env = dict(os.environ, TERM="dumb")
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(os.path.dirname(_wgcore.__file__)), env.get("PYTHONPATH", "")])
        sid = uuid.uuid4()
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentconn.cli.pty", "--config", str(config),
            "--agent-id", str(AGENT_ID), "--id", str(sid), "--command", "bash --norc -i",
            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
            preexec_fn=_controlling_tty)
        os.close(slave)
        screen = bytearray()
        loop = asyncio.get_running_loop()

        async def until(marker: bytes) -> None:
            while marker not in screen:
                try:
                    chunk = await asyncio.wait_for(
                        loop.run_in_executor(None, os.read, master, 65536), WAIT)
                except OSError:  # EIO: the CLI exited
                    raise AssertionError(f"{marker!r} never came: {bytes(screen)!r}") from None
                screen.extend(chunk)

        os.write(master, b"stty size; echo M1-$((6 * 7))\r")
        await until(b"M1-42")
        assert b"30 90" in screen
        # resizing our terminal sends SIGWINCH to the CLI, which tells the agent
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 44, 120, 0, 0))
        screen.clear()
        os.write(master, b"stty size; echo M2-$((6 * 8))\r")
        await until(b"M2-48")
        assert b"44 120" in screen
        pid = server.sessions[sid].pid
        # drop the connection under the CLI: it re-attaches and the replay redraws the screen
        for writer in server.sessions[sid].connections:
            writer.transport.abort()
        screen.clear()
        await until(b"re-attaching")
        await until(b"M2-48")  # replayed
        os.write(master, b"echo M3-$((7 * 7)) $$\r")
        await until(b"M3-49")
        assert f"M3-49 {pid}".encode() in screen  # the same shell as before
        os.write(master, b"exit\r")
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        if master >= 0:
            os.close(master)
        await server.close()
        await agent.close()


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= 30 and (r.exc_info or r.levelno >= 40)]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("depth", [1000, 3000])
def test_deeply_nested_json_is_a_protocol_error(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    with pytest.raises(ProtocolError):
        ReconnectingPtyInit.parse(b'{"ID":' + nested + b"}")
    decoder = RequestDecoder()
    decoder.receive_data(b'{"data":' + nested + b"}")
    with pytest.raises(ProtocolError):
        decoder.next_request()


async def test_deeply_nested_init_and_request_are_refused_cleanly(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    nested = b"[" * 3000 + b"]" * 3000
    async with served(tmp_path) as (p, server):
        body = b'{"ID":' + nested + b"}"
        assert await raw_attempt(p, len(body).to_bytes(2, "little") + body) == b""
        assert server.bad_frames == 1
        init = ReconnectingPtyInit(id=uuid.uuid4(), height=24, width=80).emit()
        out = await raw_attempt(p, init + b'{"data":' + nested + b"}")
        assert server.bad_frames == 2, out
    _no_tracebacks(caplog)
