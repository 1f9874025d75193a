"""Real OpenSSH against our SSH code, across real WireGuard (wireguard-go in a namespace).

1. OpenSSH's ``ssh``/``sftp`` inside the namespace log into our agent's SshServer (port 1 and
   22): kernel TCP → wireguard-go → our WireGuard → our TCP stack → asyncssh server. Commands,
   a PTY, SFTP with sha256 checks and ``ssh -W`` (direct-tcpip) to a loopback echo server.
2. Our ``ssh_client`` logs into a real ``sshd`` running inside the namespace, reached at the
   agent's tailnet address which we put on wireguard-go's interface: a command and an SFTP
   round trip with sha256 checks. OpenSSH has no "none" authentication, so a key generated
   here is put in a temporary authorized_keys.
3. ``ssh -o ProxyCommand="agentconn ssh --stdio ..."`` in the namespace: our CLI brings up its
   own userspace tunnel to the agent and pipes the raw SSH stream.

Topology as in test_agent_curl.py: our Agent is wireguard-go's userspace peer, its UDP socket
inside the namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
from netns import Namespace, WgPair, genkey, pubkey, require_interop, wg_pair

import _wgcore
from agentconn.agent.agent import Agent
from agentconn.agent.children import Child
from agentconn.agent.options import AgentOptions
from agentconn.agent.services.ssh import SshServer
from agentconn.aio.tunnel import Tunnel
from agentconn.client.conn import AgentConn
from agentconn.client.ssh import ssh_client
from agentconn.proto.ports import CODER_SERVICE_PREFIX, addr_from_uuid, agent_addresses
from agentconn.wg.config import load_config

AGENT_ID = uuid.UUID("12345678-1234-1234-1234-123456789abc")
AGENT_TS, AGENT_CODER = (str(a) for a in agent_addresses(AGENT_ID))
MTU = 1280
SSH_OPTIONS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=60"]


def pattern(size: int, seed: str) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def _bound_socket(ns: Namespace) -> socket.socket:
    with ns.enter():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # the child must import the same _wgcore/agentconn as this process (installed wheel in CI)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(_wgcore.__file__)), env.get("PYTHONPATH", "")])
    return env


@dataclass
class Served:
    pair: WgPair
    agent: Agent
    server: SshServer
    home: Path
    work: Path

    async def run(self, *cmd: str, stdin: bytes = b"", timeout: float = 180
                  ) -> tuple[int, bytes, str]:
        """A program in the namespace: (exit code, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            *self.pair.ns.exec_prefix(), *cmd, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_child_env())
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        assert proc.returncode is not None
        return proc.returncode, out, err.decode(errors="replace")

    async def ssh(self, *args: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
        return await self.run("ssh", *SSH_OPTIONS, *args, stdin=stdin)


@contextlib.asynccontextmanager
async def _served(netns: Namespace, tmp_path: Path, extra_peers: str = ""
                  ) -> AsyncIterator[Served]:
    pair = wg_pair(netns, mtu=MTU)
    try:
        pair.wg.set_peer(pair.our_public_key, allowed_ips=[
            f"{pair.our_addresses[0]}/32", f"{pair.our_addresses[1]}/128",
            f"{AGENT_TS}/128", f"{AGENT_CODER}/128"])
        pair.wg.add_route(f"{AGENT_TS}/128")
        pair.wg.add_route(f"{AGENT_CODER}/128")
        work, home, logs = tmp_path / "work", tmp_path / "home", tmp_path / "logs"
        for d in (work, home, logs):
            d.mkdir()
        options = AgentOptions(home=str(home), directory=str(work), log_dir=str(logs),
                               environ={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                        "HOME": str(home)})
        agent = Agent(pair.wg_quick_config() + extra_peers, AGENT_ID, options=options,
                      sock=_bound_socket(pair.ns), services=())
        await agent.start()
        server = SshServer(options)
        try:
            await server.start(agent.tunnel)
            await agent.tunnel.ping(pair.their_addresses[0], timeout=10)  # handshake first
            yield Served(pair, agent, server, home, work)
        finally:
            await server.close()
            await agent.close()
    finally:
        pair.wg.stop()


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A loopback TCP server (root namespace, where the agent's process lives) that echoes."""
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


# --- 1. OpenSSH clients → our agent ---------------------------------------------------------


async def test_openssh_client_runs_commands_on_agent(netns: Namespace, tmp_path: Path) -> None:
    require_interop("ssh")
    async with _served(netns, tmp_path) as s:
        code, out, err = await s.ssh("-p", "1", f"root@{AGENT_TS}",
                                     "echo hello from $USER in $(pwd); echo err >&2; exit 3")
        assert code == 3, err
        assert out.decode() == f"hello from {_user()} in {s.work}\n"
        assert "err" in err

        # port 22 is the same server; stdin is piped to the command
        data = pattern(2 << 20, "openssh-stdin")
        code, out, err = await s.ssh("-p", "22", f"anyone@{AGENT_CODER}", "sha256sum",
                                     stdin=data)
        assert code == 0, err
        assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()

        # -tt: a PTY even without a terminal here; the remote command sees a tty
        code, out, err = await s.ssh("-tt", "-p", "1", f"root@{AGENT_TS}", "tty; exit 5")
        assert code == 5, err
        assert out.startswith(b"/dev/pts/"), out

        # SendEnv / SetEnv reach the session
        code, out, err = await s.ssh("-o", "SetEnv=GREETING=hi-there", "-p", "1",
                                     f"root@{AGENT_TS}", "echo $GREETING")
        assert (code, out) == (0, b"hi-there\n"), err


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_openssh_exec_of_a_child_that_exits_first(netns: Namespace, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  loop: str) -> None:
    """Issue 14 item 2: ``ssh host 'echo ssh-42'`` with an empty stdin (EOF right after the
    exec request) when the child exits, and the loop sees its stdin close, before the agent
    has connected the pipes: the window a busy machine opens. On uvloop this used to leave
    the client with no output and no exit status."""
    require_interop("ssh")
    original = Child.open_streams

    async def late(self: Child) -> tuple[asyncio.StreamWriter | None,
                                         asyncio.StreamReader | None,
                                         asyncio.StreamReader | None]:
        await self.wait()
        streams = await original(self)
        assert streams[0] is not None
        async with asyncio.timeout(5):
            while not streams[0].transport.is_closing():
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # the client's EOF is in
        return streams

    monkeypatch.setattr(Child, "open_streams", late)

    async def scenario() -> None:
        async with _served(netns, tmp_path) as s:
            for _ in range(3):
                code, out, err = await asyncio.wait_for(
                    s.ssh("-p", "1", f"root@{AGENT_TS}", "echo ssh-42"), 30)
                assert (code, out) == (0, b"ssh-42\n"), err

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


async def test_openssh_sftp_and_stdio_forward(netns: Namespace, tmp_path: Path) -> None:
    require_interop("ssh", "sftp")
    async with _served(netns, tmp_path) as s:
        data = pattern(8 << 20 | 17, "openssh-sftp")
        local = tmp_path / "local.bin"
        local.write_bytes(data)
        batch = tmp_path / "batch"
        batch.write_text(f"put {local} uploaded.bin\nget uploaded.bin {tmp_path}/back.bin\n"
                         "ls -1\n")
        code, out, err = await s.run("sftp", *SSH_OPTIONS, "-P", "1", "-b", str(batch),
                                     f"root@[{AGENT_TS}]")
        assert code == 0, err
        digest = hashlib.sha256(data).hexdigest()
        assert hashlib.sha256((s.home / "uploaded.bin").read_bytes()).hexdigest() == digest
        assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).hexdigest() == digest
        assert b"uploaded.bin" in out

        # ssh -W: a direct-tcpip channel to the agent's loopback, stdin/stdout as the stream
        async with echo_server() as port:
            payload = pattern(1 << 20, "openssh-forward")
            code, out, err = await s.ssh("-W", f"127.0.0.1:{port}", "-p", "1",
                                         f"root@{AGENT_TS}", stdin=payload)
            assert code == 0, err
            assert hashlib.sha256(out).digest() == hashlib.sha256(payload).digest()


def _user() -> str:
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


# --- 2. our client → a real sshd ------------------------------------------------------------


@contextlib.asynccontextmanager
async def _sshd(ns: Namespace, tmp_path: Path, client_key: asyncssh.SSHKey
                ) -> AsyncIterator[None]:
    """sshd -D in `ns` on port 22 with a temporary host key and authorized_keys, from when it
    says it is listening until the block ends."""
    d = tmp_path / "sshd"
    d.mkdir()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    (d / "host_key").write_bytes(host_key.export_private_key())
    os.chmod(d / "host_key", 0o600)
    (d / "authorized_keys").write_bytes(client_key.export_public_key())
    config = d / "sshd_config"
    config.write_text(
        "Port 22\nListenAddress ::\nListenAddress 0.0.0.0\n"
        f"HostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PermitRootLogin yes\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\nLogLevel INFO\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege-separation directory
    sshd = "/usr/sbin/sshd"
    ns.run([sshd, "-t", "-f", str(config)])
    proc = await asyncio.create_subprocess_exec(
        *ns.exec_prefix(), sshd, "-D", "-e", "-f", str(config),
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    stderr = proc.stderr
    log: list[bytes] = []
    listening = asyncio.Event()

    async def read_log() -> None:
        while line := await stderr.readline():
            log.append(line)
            if b"Server listening on :: port 22" in line:
                listening.set()

    reader = asyncio.ensure_future(read_log())
    try:
        ready = asyncio.ensure_future(listening.wait())
        await asyncio.wait([reader, ready], timeout=60, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        assert listening.is_set(), f"sshd is not listening: {b''.join(log)!r}"
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        await asyncio.wait_for(reader, 30)


async def test_our_client_logs_into_real_sshd(netns: Namespace, tmp_path: Path) -> None:
    require_interop("sshd")
    pair = wg_pair(netns, mtu=MTU)
    try:
        # wireguard-go's side plays the agent: the agent's tailnet address is on its interface
        pair.wg.add_address(f"{AGENT_TS}/128")
        key = asyncssh.generate_private_key("ssh-ed25519")
        config = pair.wg_quick_config().replace(
            f"AllowedIPs = {pair.their_addresses[0]}/32, {pair.their_addresses[1]}/128",
            f"AllowedIPs = {pair.their_addresses[0]}/32, {pair.their_addresses[1]}/128, "
            f"{AGENT_TS}/128")
        tunnel = Tunnel(load_config(config), sock=_bound_socket(pair.ns))
        await tunnel.start()
        conn = AgentConn(tunnel, AGENT_ID, owns_tunnel=True)
        try:
            # a kernel does not answer TSMP pings, so no AwaitReachable here
            async with _sshd(pair.ns, tmp_path, key), \
                    await ssh_client(conn, 22, await_reachable=False, username="root",
                                     client_keys=[key]) as client:
                result = await client.run("echo hello from sshd; exit 4")
                assert (result.exit_status, result.stdout) == (4, "hello from sshd\n")

                data = pattern(6 << 20 | 5, "sshd-sftp")
                local = tmp_path / "up.bin"
                local.write_bytes(data)
                remote = tmp_path / "remote.bin"
                async with client.start_sftp_client() as sftp:
                    await sftp.put(str(local), str(remote))
                    await sftp.get(str(remote), str(tmp_path / "down.bin"))
                digest = hashlib.sha256(data).hexdigest()
                assert hashlib.sha256(remote.read_bytes()).hexdigest() == digest
                assert hashlib.sha256((tmp_path / "down.bin").read_bytes()).hexdigest() == digest
                result = await client.run(f"sha256sum {remote}")
                assert result.stdout.split()[0] == digest
        finally:
            await conn.close()
    finally:
        pair.wg.stop()


# --- 3. OpenSSH with our CLI as ProxyCommand ------------------------------------------------


async def test_openssh_proxy_command_through_cli(netns: Namespace, tmp_path: Path) -> None:
    require_interop("ssh")
    # a second client of the agent: the CLI's own userspace tunnel, inside the namespace
    cli_private = genkey()
    cli_ip = addr_from_uuid(CODER_SERVICE_PREFIX, uuid.uuid4())
    extra_peer = f"\n[Peer]\nPublicKey = {pubkey(cli_private)}\nAllowedIPs = {cli_ip}/128\n"
    async with _served(netns, tmp_path, extra_peer) as s:
        config = tmp_path / "client.conf"
        config.write_text(
            f"[Interface]\nPrivateKey = {cli_private}\nAddress = {cli_ip}/128\nMTU = {MTU}\n\n"
            f"[Peer]\nPublicKey = {s.pair.our_public_key}\n"
            f"Endpoint = 127.0.0.1:{s.agent.tunnel.listen_port}\n"
            f"AllowedIPs = {AGENT_TS}/128, {AGENT_CODER}/128\n")
        proxy = (f"{sys.executable} -m agentconn.cli.ssh --stdio --config {config} "
                 f"--agent-id {AGENT_ID}")
        code, out, err = await s.ssh("-o", f"ProxyCommand={proxy}", "root@workspace",
                                     "echo via proxy command; exit 6")
        assert code == 6, err
        assert out == b"via proxy command\n"
