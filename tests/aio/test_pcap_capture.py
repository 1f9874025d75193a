"""Packet capture of a running Tunnel, read back with the real ``tcpdump -r``.

Two Tunnels over loopback UDP (as test_tunnel_loopback): a TCP connection and pings through
them are captured on one side, in both directions; the size bound stops the file and counts
what it left out; ``agentconn speedtest --pcap-file`` (the CLI in a subprocess, against an
in-process agent) writes a file that shows the handshake to the speedtest port.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from test_tunnel_loopback import configs, run

from agentconn import Tunnel, TunnelClosedError, TunnelError
from agentconn.net.pcap import GLOBAL_HEADER_LEN, RECORD_HEADER_LEN

TCPDUMP = shutil.which("tcpdump") or shutil.which("tcpdump", path="/usr/sbin:/sbin")
needs_tcpdump = pytest.mark.skipif(TCPDUMP is None and os.environ.get("CI") != "true",
                                   reason="tcpdump not installed (apt-get install tcpdump)")


def tcpdump(path: Path) -> list[str]:
    """``tcpdump -r path -n`` (-tt: Unix timestamps), its packet lines."""
    assert TCPDUMP is not None, "tcpdump not installed"
    proc = subprocess.run([TCPDUMP, "-r", str(path), "-n", "-tt"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "LINUX_SLL" not in proc.stderr and "RAW" in proc.stderr, proc.stderr  # link type
    return proc.stdout.splitlines()


async def pair(**a_kwargs: object) -> tuple[Tunnel, Tunnel]:
    ca, cb = configs()
    a = Tunnel.from_config(ca, listen_host="127.0.0.1", **a_kwargs)
    b = Tunnel.from_config(cb, listen_host="127.0.0.1")
    await a.start()
    await b.start()
    a.set_peer_endpoint(b.public_key, "127.0.0.1", b.listen_port)
    return a, b


async def echo_once(a: Tunnel, b: Tunnel, port: int) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    server = await b.start_server(serve, port)
    try:
        reader, writer = await a.open_connection("10.55.0.2", port)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        writer.close()
    finally:
        server.close()


@needs_tcpdump
def test_capture_tcp_and_ping_both_directions(tmp_path: Path) -> None:
    path = tmp_path / "a.pcap"

    async def main() -> None:
        a, b = await pair(pcap=str(path))
        try:
            await echo_once(a, b, 8080)
            assert await a.ping("10.55.0.2", timeout=5) > 0
            assert await a.ping("fd55::2", timeout=5) > 0
            stats = a.capture_stats
            assert stats is not None and stats["path"] == str(path) and stats["dropped"] == 0
            assert a.stats()["capture"]["packets"] == stats["packets"] >= 8
            with pytest.raises(TunnelError, match="already capturing"):
                a.start_capture(tmp_path / "other.pcap")
        finally:
            await a.close()
            await b.close()
        assert a.capture_stats is None           # closed with the tunnel
        with pytest.raises(TunnelClosedError):
            a.start_capture(tmp_path / "late.pcap")
    run("uvloop", main())

    lines = tcpdump(path)
    text = "\n".join(lines)
    assert re.search(r"10\.55\.0\.1\.\d+ > 10\.55\.0\.2\.8080: Flags \[S\], seq", text), text
    assert re.search(r"10\.55\.0\.2\.8080 > 10\.55\.0\.1\.\d+: Flags \[S\.\], seq", text), text
    assert re.search(r"10\.55\.0\.2\.8080 > 10\.55\.0\.1\.\d+: Flags \[F?P\.\].* length 5", text), text
    assert re.search(r"10\.55\.0\.1 > 10\.55\.0\.2: ICMP echo request", text), text
    assert re.search(r"10\.55\.0\.2 > 10\.55\.0\.1: ICMP echo reply", text), text
    assert re.search(r"fd55::1 > fd55::2: ICMP6, echo request", text), text
    assert re.search(r"fd55::2 > fd55::1: ICMP6, echo reply", text), text
    # one record per packet: the SYN is not captured twice although it waited for the handshake
    assert len(re.findall(r"> 10\.55\.0\.2\.8080: Flags \[S\],", text)) == 1, text
    # wall-clock timestamps, in order
    stamps = [float(line.split()[0]) for line in lines]
    assert stamps == sorted(stamps)
    import time
    assert abs(stamps[0] - time.time()) < 60


@needs_tcpdump
def test_start_stop_capture_size_bound_stops_writing_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "bounded.pcap"
    bound = 1000

    async def main() -> None:
        a, b = await pair()
        try:
            assert a.stop_capture() is None
            await a.ping("10.55.0.2", timeout=5)          # handshake done before capturing
            a.start_capture(path, max_bytes=bound)
            for _ in range(20):
                await a.ping("10.55.0.2", timeout=5, payload_size=56)
            stats = a.stop_capture()
            assert stats is not None
            assert stats["full"] and stats["dropped"] > 0 and stats["packets"] > 0
            assert stats["packets"] + stats["dropped"] == 40   # 20 requests, 20 replies
            assert stats["bytes"] == path.stat().st_size <= bound
            assert len(tcpdump(path)) == stats["packets"]
            assert a.capture_stats is None and a.stop_capture() is None
            # the tunnel still works, and a new capture starts afresh
            a.start_capture(path)
            await a.ping("10.55.0.2", timeout=5)
        finally:
            await a.close()
            await b.close()
    run("asyncio", main())
    lines = tcpdump(path)                       # the capture after the restart
    assert len(lines) == 2, lines
    assert "echo request" in lines[0] and "echo reply" in lines[1]


@needs_tcpdump
def test_bounded_file_is_whole_records(tmp_path: Path) -> None:
    path = tmp_path / "b.pcap"
    size = 20 + 8 + 56                    # IPv4 + ICMP echo + 56 bytes
    bound = GLOBAL_HEADER_LEN + 3 * (RECORD_HEADER_LEN + size) + 10

    async def main() -> None:
        a, b = await pair(pcap=path, pcap_max_bytes=bound)
        try:
            for _ in range(4):
                await a.ping("10.55.0.2", timeout=5, payload_size=56)
            stats = a.capture_stats
            assert stats is not None and stats["packets"] == 3 and stats["dropped"] == 5
        finally:
            await a.close()
            await b.close()
    run("asyncio", main())
    assert path.stat().st_size == bound - 10
    lines = tcpdump(path)
    assert len(lines) == 3 and all("ICMP echo" in line for line in lines), lines


def test_unwritable_capture_file_is_a_tunnel_error(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = await pair()
        try:
            with pytest.raises(TunnelError, match="cannot write capture file"):
                a.start_capture(tmp_path / "no" / "such" / "dir.pcap")
            assert a.capture_stats is None
            assert await a.ping("10.55.0.2", timeout=5) > 0
        finally:
            await a.close()
            await b.close()
    run("asyncio", main())


# -- the CLI ----------------------------------------------------------------------------------

def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_tcpdump
def test_speedtest_cli_pcap_file(tmp_path: Path) -> None:
    from agentconn.agent.agent import Agent
    from agentconn.agent.options import AgentOptions
    from agentconn.cli.commands import pair_configs

    agent_id = uuid.uuid4()
    port = _free_udp_port()
    agent_conf, client_conf, client_ip = pair_configs(agent_id, listen_port=port,
                                                      endpoint=f"127.0.0.1:{port}")
    conf = tmp_path / "client.conf"
    conf.write_text(client_conf)
    pcap = tmp_path / "speedtest.pcap"
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()

    async def main() -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
        env["HOME"] = str(home)
        options = AgentOptions(home=str(home), directory=str(work), environ=env)
        agent = Agent(agent_conf, agent_id, options=options, listen_host="127.0.0.1",
                      services=("speedtest",))
        await agent.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agentconn.cli", "speedtest", "--config", str(conf),
                "--agent-id", str(agent_id), "--time", "1s", "--min-time", "1s",
                "--direction", "up", "--output", "json", "--pcap-file", str(pcap),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env)
            out, err = await asyncio.wait_for(proc.communicate(), 50)
        finally:
            await agent.close()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = asyncio.run(asyncio.wait_for(main(), 60))
    assert code == 0, err
    assert "throughput_mbits" in out
    assert pcap.stat().st_size > GLOBAL_HEADER_LEN
    text = "\n".join(tcpdump(pcap))
    client = re.escape(client_ip)
    # the SYN to the speedtest port 3 and the agent's SYN-ACK
    assert re.search(rf"{client}\.\d+ > [0-9a-f:]+\.3: Flags \[S\], seq", text), text[:3000]
    assert re.search(rf"[0-9a-f:]+\.3 > {client}\.\d+: Flags \[S\.\], seq", text), text[:3000]
    # the capture runs from the tunnel's start: connect()'s reachability ping (TSMP, IP
    # protocol 99) and its pong come before the SYN
    first_syn = text.index("Flags [S]")
    assert "ip-proto-99" in text[:first_syn], text[:first_syn]
    # 1 s of upload fills the default 64 MiB bound: the file stops there, whole records
    assert pcap.stat().st_size <= 64 * 1024 * 1024


def test_pcap_file_option_on_every_target_command() -> None:
    from agentconn.cli.__main__ import build_parser
    from agentconn.cli.target import target_of

    args = build_parser().parse_args(["speedtest", "ws", "--pcap-file", "x.pcap"])
    assert target_of(args).pcap_file == "x.pcap"
    args = build_parser().parse_args(["ping", "ws", "--pcap-file", "y.pcap"])
    assert args.pcap_file == "y.pcap"


@needs_tcpdump
def test_workspace_target_captures_on_the_dialed_tunnel(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--pcap-file`` with a workspace name: the capture starts on the tunnel of the
    connection ``coder.dial`` returned (faked here by a loopback pair), and a file that cannot
    be written is a TargetError that closes the connection."""
    from agentconn.cli import target as target_mod
    from agentconn.client.conn import AgentConn

    path = tmp_path / "ws.pcap"

    async def main() -> None:
        a, b = await pair()
        conns: list[AgentConn] = []

        async def fake_dial(workspace: str) -> AgentConn:
            conns.append(AgentConn(a, uuid.uuid4()))
            return conns[-1]

        monkeypatch.setattr(target_mod, "_dial", fake_dial)
        try:
            conn = await target_mod.connect_target(target_mod.Target(workspace="ws",
                                                                     pcap_file=str(path)))
            assert conn.tunnel.capture_stats is not None
            assert await a.ping("10.55.0.2", timeout=5) > 0
            await conn.close()                    # a lease: the shared tunnel stays up
            assert a.capture_stats is not None and a.capture_stats["packets"] == 2
            a.stop_capture()
            with pytest.raises(target_mod.TargetError, match="cannot write capture file"):
                await target_mod.connect_target(target_mod.Target(
                    workspace="ws", pcap_file=str(tmp_path / "missing" / "x.pcap")))
            assert conns[-1]._closed
        finally:
            await a.close()
            await b.close()
    run("asyncio", main())
    lines = tcpdump(path)
    assert len(lines) == 2 and "echo request" in lines[0] and "echo reply" in lines[1], lines


def test_config_target_with_unwritable_pcap_file_is_a_target_error(tmp_path: Path) -> None:
    from agentconn.cli import target as target_mod

    conf = tmp_path / "c.conf"
    conf.write_text(configs()[0])

    async def main() -> None:
        with pytest.raises(target_mod.TargetError, match="cannot write capture file"):
            await target_mod.connect_target(target_mod.Target(
                config=str(conf), agent_id=uuid.uuid4(),
                pcap_file=str(tmp_path / "missing" / "x.pcap")))
    run("asyncio", main())
