"""Our SSH client against our SshServer over a real userspace WireGuard tunnel (agent_pair).

Every session runs a real shell as this OS user; port forwarding reaches real loopback TCP
servers. The server is started on the agent's tunnel by each test (it is not wired into
Agent yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import pwd
import stat
import struct
import sys
import termios
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
from agent_pair import AGENT_ID, Pair, agent_pair, make_options, pair_configs

import _wgcore
from agentconn.agent.agent import Agent
from agentconn.agent.options import AgentOptions
from agentconn.agent.services.ssh import HOST_KEY_FILENAME, SshServer
from agentconn.client.ssh import ssh, ssh_client


@contextlib.asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[Pair, SshServer]]:
    async with agent_pair(tmp_path) as p:
        server = SshServer(p.agent.options)
        await server.start(p.agent.tunnel)
        try:
            yield p, server
        finally:
            await server.close()


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A loopback TCP server that echoes every byte back; yields its port."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def pattern(size: int, seed: str) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


async def test_exec_output_stderr_and_exit_status(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, _), await ssh_client(p.conn) as client:
        result = await client.run("echo out; echo err >&2; pwd; exit 3")
        assert result.exit_status == 3
        assert result.stdout == f"out\n{p.work}\n"
        assert result.stderr == "err\n"
        # the session runs as the agent's OS user whatever name the client gives
        result = await client.run("id -u")
        assert result.stdout == f"{os.getuid()}\n"


async def test_any_user_name_and_port_22(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, server), \
            await ssh_client(p.conn, 22, username="somebody-else") as client:
        result = await client.run("echo $USER")
        assert result.exit_status == 0
        assert result.stdout == f"{pwd.getpwuid(os.getuid()).pw_name}\n"
        assert client.get_server_host_key() == server.host_key.convert_to_public()


async def test_environment_variables(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, _), await ssh_client(p.conn) as client:
        result = await client.run('printf "%s|%s|%s" "$GREETING" "$HOME" "$SSH_CONNECTION"',
                                  env={"GREETING": "hello world"})
        greeting, home, connection = result.stdout.split("|")
        assert (greeting, home) == ("hello world", str(p.home))
        # SSH_CONNECTION: client address, client port, agent address, port 1
        assert connection.split()[2:] == [str(p.conn.agent_address), "1"]


async def test_stdin_is_piped_with_eof(tmp_path: Path) -> None:
    data = pattern(3 << 20, "stdin")
    async with served(tmp_path) as (p, _), await ssh_client(p.conn) as client:
        result = await client.run("sha256sum", input=data, encoding=None)
        assert result.exit_status == 0
        assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
        result = await client.run("wc -c >&2", input=data, encoding=None)
        assert (result.stdout, result.stderr.strip()) == (b"", str(len(data)).encode())
        # and output larger than the SSH window comes back whole
        result = await client.run("cat", input=data, encoding=None)
        assert result.stdout == data


async def test_exit_signal_is_reported(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, _), await ssh_client(p.conn) as client:
        result = await client.run("kill -TERM $$")
        assert result.exit_status == -1
        assert result.exit_signal is not None and result.exit_signal[0] == "TERM"


async def test_pty_terminal_size_and_window_change(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, _), await ssh_client(p.conn) as client:
        result = await client.run("tty; echo $TERM; stty size", term_type="xterm-256color",
                                  term_size=(100, 40))
        assert result.exit_status == 0
        tty, term, size = result.stdout.splitlines()
        assert tty.startswith("/dev/pts/") and term == "xterm-256color" and size == "40 100"

        proc = await client.create_process("stty size; read line; stty size; echo got $line",
                                           term_type="xterm", term_size=(80, 24))
        assert (await proc.stdout.readline()).strip() == "24 80"
        proc.change_terminal_size(132, 50)
        proc.stdin.write("ok\n")
        lines = []
        async for line in proc.stdout:
            lines.append(line.strip())
        await proc.wait()
        assert proc.exit_status == 0
        assert "50 132" in lines and "got ok" in lines, lines


def test_pty_and_pipes_under_uvloop(tmp_path: Path) -> None:
    """The agent's CLI runs on uvloop, whose subprocess support differs (preexec_fn order)."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async with served(tmp_path) as (p, _), await ssh_client(p.conn) as client:
            result = await client.run("tty; stty size", term_type="dumb", term_size=(70, 20))
            assert result.exit_status == 0, result.stdout
            tty, size = result.stdout.splitlines()
            assert tty.startswith("/dev/pts/") and size == "20 70"
            result = await client.run("cat; exit 2", input="piped")
            assert (result.exit_status, result.stdout) == (2, "piped")

    uvloop.run(scenario())


async def test_interactive_shell_on_pty(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, _), await ssh_client(p.conn) as client:
        proc = await client.create_process(term_type="dumb", term_size=(80, 24))
        proc.stdin.write("echo marker-$((6 * 7)); exit 5\n")
        output = await proc.stdout.read()
        await proc.wait()
        assert "marker-42" in output
        assert proc.exit_status == 5


async def test_sftp_put_get_with_sha256(tmp_path: Path) -> None:
    data = pattern(5 << 20 | 123, "sftp")
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    async with served(tmp_path) as (p, _), await ssh_client(p.conn) as client, \
            client.start_sftp_client() as sftp:
        # relative paths are relative to the agent's home
        assert await sftp.realpath(".") == str(p.home)
        await sftp.put(str(local), "uploaded.bin")
        assert hashlib.sha256((p.home / "uploaded.bin").read_bytes()).digest() == \
            hashlib.sha256(data).digest()
        back = tmp_path / "back.bin"
        await sftp.get(str(p.home / "uploaded.bin"), str(back))
        assert hashlib.sha256(back.read_bytes()).hexdigest() == \
            hashlib.sha256(data).hexdigest()
        assert sorted(await sftp.listdir(str(p.home))) == [".", "..", "uploaded.bin"]
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await sftp.stat("does-not-exist")


async def test_direct_tcpip_to_loopback(tmp_path: Path) -> None:
    data = pattern(1 << 20, "forward")
    async with served(tmp_path) as (p, _), await ssh_client(p.conn) as client, \
            echo_server() as port:
        reader, writer = await client.open_connection("127.0.0.1", port, encoding=None)
        writer.write(data)
        writer.write_eof()
        echoed = await reader.read()
        writer.close()
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()

        # a port where nothing listens: the channel open is refused
        listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        dead_port = listener.sockets[0].getsockname()[1]
        listener.close()
        await listener.wait_closed()
        with pytest.raises(asyncssh.ChannelOpenError):
            await client.open_connection("127.0.0.1", dead_port)


async def test_remote_forward_back_to_client(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, _), await ssh_client(p.conn) as client, \
            echo_server() as port:
        # the agent listens on its loopback and forwards each connection back to us
        listener = await client.forward_remote_port("127.0.0.1", 0, "127.0.0.1", port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.get_port())
            writer.write(b"through the agent and back")
            writer.write_eof()
            assert await reader.read() == b"through the agent and back"
            writer.close()
        finally:
            listener.close()
            await listener.wait_closed()


async def test_raw_stream_speaks_ssh(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, _):
        reader, writer = await ssh(p.conn)
        try:
            banner = await reader.readline()
            assert banner.startswith(b"SSH-2.0-")
        finally:
            writer.close()


async def test_host_key_is_persisted_and_stable(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        keys = []
        for _ in range(2):
            server = SshServer(p.agent.options)
            await server.start(p.agent.tunnel)
            try:
                async with await ssh_client(p.conn) as client:
                    keys.append(client.get_server_host_key())
                    assert (await client.run("true")).exit_status == 0
            finally:
                await server.close()
        assert keys[0] is not None and keys[0] == keys[1]
        path = Path(p.agent.options.log_dir) / HOST_KEY_FILENAME
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert asyncssh.read_private_key(str(path)).convert_to_public() == keys[0]
        assert keys[0].get_algorithm() == "ssh-ed25519"

        # an explicit path is used as given
        other = tmp_path / "keys" / "host"
        server = SshServer(p.agent.options, host_key_path=str(other))
        await server.start(p.agent.tunnel)
        try:
            async with await ssh_client(p.conn) as client:
                assert client.get_server_host_key() != keys[0]
        finally:
            await server.close()
        assert other.exists()


async def test_close_ends_sessions_and_children(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        server = SshServer(p.agent.options)
        await server.start(p.agent.tunnel)
        client = await ssh_client(p.conn)
        piped = await client.create_process("echo $$; exec sleep 600")
        tty = await client.create_process("echo $$; exec sleep 600", term_type="dumb")
        pids = [int((await piped.stdout.readline()).strip()),
                int((await tty.stdout.readline()).strip())]
        assert server.session_count == 2
        await server.close()
        for pid in pids:  # close() returns once the children are reaped
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert server.session_count == 0
        await client.wait_closed()
        # nothing listens any more
        with pytest.raises(ConnectionRefusedError):
            await ssh(p.conn)


# --- the CLI as a subprocess ----------------------------------------------------------------


@dataclass
class CliAgent:
    argv: list[str]        # python -m agentconn.cli.ssh --config ... --agent-id ...
    env: dict[str, str]
    options: AgentOptions

    async def run(self, *args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *self.argv, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self.env)
        out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
        assert proc.returncode is not None
        return proc.returncode, out, err


@contextlib.asynccontextmanager
async def cli_agent(tmp_path: Path) -> AsyncIterator[CliAgent]:
    """An Agent with an SshServer on loopback UDP, and the CLI command line that reaches it."""
    agent_conf, client_conf, _ = pair_configs()
    agent = Agent(agent_conf, AGENT_ID, options=make_options(tmp_path), listen_host="127.0.0.1",
                  services=())
    await agent.start()
    server = SshServer(agent.options)
    try:
        await server.start(agent.tunnel)
        config = tmp_path / "client.conf"
        config.write_text(client_conf + f"Endpoint = 127.0.0.1:{agent.tunnel.listen_port}\n")
        env = dict(os.environ)
        # the child must import the same _wgcore/agentconn as this process (installed wheel in CI)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(os.path.dirname(_wgcore.__file__)), env.get("PYTHONPATH", "")])
        yield CliAgent([sys.executable, "-m", "agentconn.cli.ssh", "--config", str(config),
                        "--agent-id", str(AGENT_ID)], env, agent.options)
    finally:
        await server.close()
        await agent.close()


async def test_cli_command_output_stdin_and_exit_status(tmp_path: Path) -> None:
    async with cli_agent(tmp_path) as cli:
        code, out, err = await cli.run("--", "echo out; echo err >&2; exit 7")
        assert (code, out, err) == (7, b"out\n", b"err\n")
        data = pattern(300_000, "cli")
        code, out, err = await cli.run("--port", "22", "--", "sha256sum", stdin=data)
        assert code == 0, err
        assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()
        code, out, err = await cli.run("--", "kill -KILL $$")
        assert code == 255  # an exit signal, as OpenSSH's ssh reports it


async def test_cli_stdio_as_proxy_command(tmp_path: Path) -> None:
    async with cli_agent(tmp_path) as cli:
        # asyncssh runs the command as its transport, as OpenSSH's ProxyCommand does
        async with asyncssh.connect("workspace", proxy_command=[*cli.argv, "--stdio"],
                                    known_hosts=None, config=None, client_keys=None,
                                    agent_path=None) as client:
            result = await client.run("echo through stdio; exit 4")
            assert (result.exit_status, result.stdout) == (4, "through stdio\n")
        code, _, err = await cli.run("--stdio", "--", "true")
        assert code == 2 and b"takes no command" in err


async def test_cli_interactive_pty_resize_and_exit_status(tmp_path: Path) -> None:
    async with cli_agent(tmp_path) as cli:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
        env = dict(cli.env, TERM="dumb")
        proc = await asyncio.create_subprocess_exec(
            *cli.argv, stdin=slave, stdout=slave, stderr=slave, env=env,
            start_new_session=True, preexec_fn=_controlling_tty)
        os.close(slave)
        screen = bytearray()

        async def until(marker: bytes) -> None:
            loop = asyncio.get_running_loop()
            while marker not in screen or not screen:
                try:
                    chunk = await asyncio.wait_for(loop.run_in_executor(None, os.read, master,
                                                                        65536), 60)
                except OSError:  # EIO: the CLI exited
                    raise AssertionError(f"{marker!r} never came: {bytes(screen)!r}") from None
                screen.extend(chunk)

        try:
            await until(b"")  # the first output (a prompt): the session is up, raw mode on
            os.write(master, b"stty size; echo M1-$((6 * 7))\r")
            await until(b"M1-42")
            assert b"30 90" in screen
            # resizing our terminal sends SIGWINCH to the CLI, which tells the server
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 44, 120, 0, 0))
            # The window change travels CLI -> agent while the next command may already run:
            # ask again (bounded) until the shell sees the new size.
            for attempt in range(20):
                screen.clear()
                os.write(master, f"stty size; echo M2-$((6 * 8))-{attempt}\r".encode())
                await until(f"M2-48-{attempt}".encode())
                if b"44 120" in screen:
                    break
                await asyncio.sleep(0.1)
            assert b"44 120" in screen
            os.write(master, b"exit 6\r")
            assert await asyncio.wait_for(proc.wait(), 60) == 6
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            os.close(master)


def _controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (an orphan's is reaped by init, in its own time)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def test_disconnect_ends_background_jobs_left_holding_output(tmp_path: Path) -> None:
    async with served(tmp_path) as (p, server):
        client = await ssh_client(p.conn)
        # the shell exits at once, but its background job keeps stdout open, so the session
        # (like sshd's) waits for EOF before it reports the exit status
        proc = await client.create_process("sleep 600 & echo $$ $!; exit 0")
        shell, pid = map(int, (await proc.stdout.readline()).split())
        assert not _gone(pid)
        await _until_gone(shell)  # the session's own child has exited (and been reaped)
        client.close()
        await client.wait_closed()
        await server.close()  # returns once the session's task is done
        assert server.session_count == 0
        await _until_gone(pid)  # it got SIGHUP; init reaps the orphan when it gets to it


async def _until_gone(pid: int) -> None:
    for _ in range(1200):
        if _gone(pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} still there: {Path(f'/proc/{pid}/stat').read_text()}")
