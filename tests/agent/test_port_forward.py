"""`agentconn port-forward` end to end: curl → local port → our CLI's tunnel → the agent's
catch-all forwarder → a real HTTP server on the workspace loopback (100 MB, sha256)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest
from agent_pair import AGENT_ID, make_options, pair_configs

import _wgcore
from agentconn.agent.agent import Agent
from agentconn.cli.portforward import Spec, parse_spec

MB = 1 << 20


def test_parse_spec() -> None:
    assert parse_spec("8080") == Spec("127.0.0.1", 8080, 8080)
    assert parse_spec("9000:80") == Spec("127.0.0.1", 9000, 80)
    assert parse_spec("0.0.0.0:9000:80") == Spec("0.0.0.0", 9000, 80)
    for bad in ("x", "70000", "1:0", "a:b"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_port(port: int, proc: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        if proc.returncode is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        w.close()
        return
    raise AssertionError(f"nothing listens on {port}")


async def test_curl_through_port_forward_100mb(tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is required under CI")
        pytest.skip("curl not installed")
    site = tmp_path / "site"
    site.mkdir()
    digest = hashlib.sha256()
    with (site / "blob.bin").open("wb") as f:
        for i in range(100):
            block = hashlib.sha256(str(i).encode()).digest() * (MB // 32)
            digest.update(block)
            f.write(block)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(_wgcore.__file__)), env.get("PYTHONPATH", "")])
    http_port, local_port = _free_port(), _free_port()
    http = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1",
        cwd=site, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    agent_conf, client_conf, _ = pair_configs()
    agent = Agent(agent_conf, AGENT_ID, options=make_options(tmp_path), listen_host="127.0.0.1",
                  services=("forward",))
    await agent.start()
    config = tmp_path / "client.conf"
    config.write_text(client_conf + f"Endpoint = 127.0.0.1:{agent.tunnel.listen_port}\n")
    fwd = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentconn.cli", "port-forward", "--config", str(config),
        "--agent-id", str(AGENT_ID), "-p", f"{local_port}:{http_port}", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await _wait_port(http_port, http)
        await _wait_port(local_port, fwd)
        out = tmp_path / "got.bin"
        proc = await asyncio.create_subprocess_exec(
            curl, "-sS", "--max-time", "120", "-o", str(out),
            f"http://127.0.0.1:{local_port}/blob.bin", stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 150)
        assert proc.returncode == 0, err
        with out.open("rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == digest.hexdigest()
        forwarder = agent._services[0]
        assert forwarder.tcp.forwarded >= 1
    finally:
        for p in (fwd, http):
            if p.returncode is None:
                p.terminate()
                await p.wait()
        await agent.close()
    assert fwd.returncode == 0


async def test_cli_ping_agent_prints_pongs_and_diagnostics(tmp_path: Path) -> None:
    agent_conf, client_conf, _ = pair_configs()
    agent = Agent(agent_conf, AGENT_ID, options=make_options(tmp_path), listen_host="127.0.0.1",
                  services=())
    await agent.start()
    config = tmp_path / "client.conf"
    config.write_text(client_conf + f"Endpoint = 127.0.0.1:{agent.tunnel.listen_port}\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(_wgcore.__file__)), env.get("PYTHONPATH", "")])
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentconn.cli", "ping", "--config", str(config),
            "--agent-id", str(AGENT_ID), "-n", "3", "-i", "0.1", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await agent.close()
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    pongs = [line for line in lines if line.startswith(f"pong from agent {AGENT_ID} p2p via ")]
    # coder's Duration.Round(time.Millisecond).String(): "0s" under half a millisecond
    assert len(pongs) == 3, lines
    assert all(re.search(r" in (0s|\d+ms|[\d.]+s)$", line) for line in pongs), lines
    assert any("last WireGuard handshake" in line for line in lines)
    assert any(agent.tunnel.public_key in line for line in lines)


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"echo:" + data, addr)  # type: ignore[attr-defined]


async def test_udp_echo_through_port_forward_and_dial(tmp_path: Path) -> None:
    """A kernel UDP echo server on the agent's loopback, reached (1) with AgentConn.dial("udp")
    and (2) through `agentconn port-forward --udp` from a local kernel UDP socket."""
    from agentconn.client.conn import AgentConn

    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    echo_port = echo.get_extra_info("sockname")[1]
    agent_conf, client_conf, _ = pair_configs()
    agent = Agent(agent_conf, AGENT_ID, options=make_options(tmp_path), listen_host="127.0.0.1",
                  services=("forward",))
    await agent.start()
    config = tmp_path / "client.conf"
    config.write_text(client_conf + f"Endpoint = 127.0.0.1:{agent.tunnel.listen_port}\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(_wgcore.__file__)), env.get("PYTHONPATH", "")])
    local_port = _free_port()
    fwd = None
    try:
        # (1) dial udp from an in-process client
        from agentconn.aio.tunnel import Tunnel

        async with Tunnel.from_config(config) as tunnel:
            conn = AgentConn(tunnel, AGENT_ID)
            got: asyncio.Queue[bytes] = asyncio.Queue()

            class Rx(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: object) -> None:
                    got.put_nowait(data)

            transport, _ = await tunnel.create_datagram_endpoint(
                Rx, remote_addr=(str(conn.agent_address), echo_port))
            for i in range(5):
                transport.sendto(f"ping {i}".encode())
                assert await asyncio.wait_for(got.get(), 10) == f"echo:ping {i}".encode()
            transport.close()
            dialed, _ = await conn.dial("udp", f":{echo_port}")
            assert dialed.get_extra_info("peername")[1] == echo_port
            dialed.close()
            await conn.close()

        # (2) the CLI with --udp
        fwd = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentconn.cli", "port-forward", "--config", str(config),
            "--agent-id", str(AGENT_ID), "--udp", f"{local_port}:{echo_port}", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert fwd.stdout is not None
        line = await asyncio.wait_for(fwd.stdout.readline(), 30)
        assert line.startswith(b"Forwarding udp 127.0.0.1:"), line
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                replies.put_nowait(data)

        client, _ = await loop.create_datagram_endpoint(
            Client, remote_addr=("127.0.0.1", local_port))
        try:
            for i in range(5):
                client.sendto(f"hello {i}".encode())
                assert await asyncio.wait_for(replies.get(), 10) == f"echo:hello {i}".encode()
        finally:
            client.close()
        assert agent._services[0].udp.forwarded >= 10
    finally:
        if fwd is not None and fwd.returncode is None:
            fwd.terminate()
            await fwd.wait()
        await agent.close()
        echo.close()
