"""Every AgentConn method against our Agent over a real userspace WireGuard tunnel.

Agent and client run in one process and talk through two Tunnels over loopback UDP: WireGuard,
our TCP stack, HTTP/1.1 on port 4 and the agent's real handlers (real files, real processes).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from agent_pair import AGENT_ID, agent_pair, pair_configs

import agentconn
from agentconn import AgentApiError, AgentConn
from agentconn.errors import TunnelError
from agentconn.proto.files import FileEdit, FileEdits


async def test_addresses_greeting_and_debug(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        assert p.conn.agent_address == ipaddress.IPv6Address(
            "fd7a:115c:a1e0:1234:1234:1234:5678:9abc")
        assert ipaddress.IPv6Address("fd60:627a:a42b:1234:1234:1234:5678:9abc") in p.agent.addresses
        rtt, direct, _ = await p.conn.ping()
        assert rtt > 0 and direct
        manifest = orjson.loads(await p.conn.debug_manifest())
        assert manifest["agent_id"] == str(AGENT_ID)
        page = await p.conn.debug_magicsock()
        assert b"<html>" in page and p.client_tunnel.public_key.encode() in page
        report = await p.conn.netcheck()
        assert report.net_info is not None and report.net_info["WorkingUDP"] == "true"
        assert any(i.name == "lo" for i in report.interfaces.interfaces)
        metrics = (await p.conn.prometheus_metrics()).decode()
        assert "# TYPE agentconn_api_requests_total counter" in metrics
        assert "agentconn_wireguard_rx_packets_total" in metrics
        logs = await p.conn.debug_logs()
        assert b"listening on" in logs
        since = await p.conn.debug_logs(after=datetime.now(UTC) - timedelta(hours=1))
        assert since.startswith(b"=== coder-agent.log (mtime ")
        diag = p.conn.get_peer_diagnostics()
        assert diag["peer"]["public_key"] == p.agent.tunnel.public_key


async def test_files_round_trip(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        c = p.conn
        (p.home / "repos" / "coder").mkdir(parents=True)
        (p.home / ".hidden").write_text("x")
        listing = await c.ls(components=["repos"], relativity="home")
        assert listing.absolute_path_string == str(p.home / "repos")
        assert [e.name for e in listing.contents] == ["coder"]
        listing = await c.ls(str(p.home))
        assert [(e.name, e.is_dir) for e in listing.contents] == [("repos", True), (".hidden", False)]

        weird = p.work / "dir with space" / "a&b?c#d%e f.txt"
        await c.write_file(str(weird), b"hello\nworld\n")
        assert weird.read_bytes() == b"hello\nworld\n"
        async with await c.read_file(str(weird)) as f:
            assert f.mime_type == "text/plain; charset=utf-8" and f.size == 12
            assert b"".join([chunk async for chunk in f]) == b"hello\nworld\n"
        assert await c.read_file_bytes(str(weird), offset=6, limit=3) == b"wor"
        lines = await c.read_file_lines(str(weird))
        assert lines.success and lines.content == "1\thello\n2\tworld\n3\t" and lines.total_lines == 3

        await c.write_file(str(p.work / "from_file.bin"), io.BytesIO(b"\x00\x01" * 1000))
        assert (p.work / "from_file.bin").read_bytes() == b"\x00\x01" * 1000

        async def gen():  # type: ignore[no-untyped-def]
            for i in range(10):
                yield bytes([i]) * 100_000
        await c.write_file(str(p.work / "gen.bin"), gen())
        assert (p.work / "gen.bin").stat().st_size == 1_000_000

        (p.work / "link").symlink_to(p.work / "dir with space")
        assert await c.resolve_path(str(p.work / "link" / "NEW.md")) == str(
            p.work / "dir with space" / "NEW.md")

        res = await c.edit_files({str(weird): [("world", "there")]}, include_diff=True)
        assert weird.read_bytes() == b"hello\nthere\n"
        assert res.files[0].path == str(weird)
        assert "-world\n+there\n" in res.files[0].diff
        res = await c.edit_files([FileEdits(path=str(weird), edits=[FileEdit.for_client("hello", "HI")])])
        assert res.files == [] and weird.read_bytes() == b"HI\nthere\n"


async def test_typed_errors(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        c = p.conn
        with pytest.raises(AgentApiError) as ei:
            await c.read_file_bytes(str(p.work / "missing"))
        assert ei.value.status == 404 and "missing" in ei.value.message
        with pytest.raises(AgentApiError) as ei:
            await c.read_file_bytes("relative/path")
        assert ei.value.status == 400 and ei.value.message == 'file path must be absolute: "relative/path"'
        with pytest.raises(AgentApiError) as ei:
            await c.edit_files({str(p.work / "nope.txt"): [("a", "b")]})
        assert ei.value.status == 404
        (p.work / "f.txt").write_text("aaa")
        with pytest.raises(AgentApiError) as ei:
            await c.edit_files({str(p.work / "f.txt"): [("a", "b")]})
        assert ei.value.status == 400 and "3 occurrences" in ei.value.message
        with pytest.raises(AgentApiError) as ei:
            await c.signal_process("no-such-id", "kill")
        assert ei.value.status == 404 and ei.value.message == 'Process "no-such-id" not found.'
        with pytest.raises(AgentApiError) as ei:
            await c.start_process("")
        assert ei.value.status == 400 and ei.value.message == "Command is required."
        # The connection pool survives error answers: still one TCP connection.
        assert c.connections_opened == 1


async def test_processes(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        c = p.conn
        started = await c.start_process("echo out; echo err >&2; pwd; exit 3", env={"X": "1"})
        assert started.started
        out = await c.process_output(started.id, wait=True)
        assert not out.running and out.exit_code == 3
        assert out.output == f"out\nerr\n{p.work}\n"
        long = await c.start_process("sleep 30", background=True)
        listed = await c.list_processes()
        assert listed.processes[0].id == long.id and listed.processes[0].running
        await c.signal_process(long.id, "terminate")
        out = await c.process_output(long.id, wait=True)
        assert out.exit_code == -1
        with pytest.raises(AgentApiError) as ei:
            await c.signal_process(long.id, "kill")
        assert ei.value.status == 409


async def test_chat_headers_isolate_and_track(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        c = p.conn
        chat, other, parent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        c.set_extra_headers({"Coder-Chat-Id": str(chat),
                             "Coder-Ancestor-Chat-Ids": orjson.dumps([str(parent)]).decode()})
        proc = await c.start_process("echo $CODER_CHAT_ID")
        out = await c.process_output(proc.id, wait=True)
        assert out.output.strip() == str(chat)
        await c.write_file(str(p.work / "tracked.txt"), b"x")
        assert p.agent.touched_paths[chat] == [str(p.work / "tracked.txt")]
        assert p.agent.touched_paths[parent] == [str(p.work / "tracked.txt")]
        c.set_extra_headers({"Coder-Chat-Id": str(other)})
        with pytest.raises(AgentApiError) as ei:
            await c.process_output(proc.id)
        assert ei.value.status == 404
        c.set_extra_headers({})
        assert (await c.process_output(proc.id)).exit_code == 0


async def test_listening_ports_and_context_config(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            ports = await p.conn.listening_ports()
            assert any(x.port == port and x.network == "tcp" for x in ports.ports)
        (p.work / "AGENTS.md").write_text("Be nice.\r\n<!-- hidden -->\n")
        cfg = await p.conn.context_config()
        part = cfg.parts[0]
        assert part.type == "context-file" and part.context_file_content == "Be nice."
        assert part.context_file_path == str(p.work / "AGENTS.md")


async def test_keep_alive_reuses_one_connection(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        for _ in range(20):
            await p.conn.list_processes()
        assert p.conn.connections_opened == 1
        go_style = AgentConn(p.client_tunnel, AGENT_ID, keep_alive=False)
        try:
            for _ in range(5):
                await go_style.list_processes()
            assert go_style.connections_opened == 5
        finally:
            await go_style.close()


async def test_lease_and_pinned_dialer(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        closed = []
        lease = p.conn.lease(close_hook=lambda: closed.append(1))
        assert (await lease.list_processes()).processes == []
        await lease.close()
        assert closed == [1]
        assert (await p.conn.list_processes()).processes == []  # tunnel still up
        with pytest.raises(TunnelError):
            await p.conn._http.request("GET", "/", host="127.0.0.1", port=4)
        with pytest.raises(TunnelError):
            await p.conn._http.request("GET", "/", host=str(p.conn.agent_address), port=80)


async def test_big_write_and_read_stream(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        block = os.urandom(1 << 20)
        digest = hashlib.sha256()

        async def body():  # type: ignore[no-untyped-def]
            for _ in range(32):
                digest.update(block)
                yield block
        target = p.work / "big.bin"
        await p.conn.write_file(str(target), body())
        assert hashlib.sha256(target.read_bytes()).hexdigest() == digest.hexdigest()
        got = hashlib.sha256()
        n = 0
        async with await p.conn.read_file(str(target)) as f:
            assert f.size == 32 << 20 and f.mime_type == "application/octet-stream"
            async for chunk in f:
                got.update(chunk)
                n += len(chunk)
        assert n == 32 << 20 and got.hexdigest() == digest.hexdigest()


async def test_connect_owns_tunnel(tmp_path: Path) -> None:
    from agent_pair import make_options

    from agentconn.agent.agent import Agent
    agent_conf, client_conf, _ = pair_configs()
    agent = Agent(agent_conf, AGENT_ID, options=make_options(tmp_path), listen_host="127.0.0.1")
    await agent.start()
    try:
        client_conf = client_conf.replace(
            "AllowedIPs = fd7a", f"Endpoint = 127.0.0.1:{agent.tunnel.listen_port}\nAllowedIPs = fd7a")
        conn = await agentconn.connect(client_conf, AGENT_ID, reachable_timeout=10)
        assert (await conn.ls(str(tmp_path))).absolute_path_string == str(tmp_path)
        tunnel = conn.tunnel
        await conn.close()
        with pytest.raises(agentconn.TunnelClosedError):
            await tunnel.ping(str(conn.agent_address))
    finally:
        await agent.close()
    _ = asyncio


async def test_mcp_tools_through_the_tunnel(tmp_path: Path) -> None:
    """A real MCP server (the SDK, over stdio) configured in the workspace's .mcp.json."""
    import sys

    server = Path(__file__).parent / "tools" / "mcp_test_server.py"
    work = tmp_path / "work"
    work.mkdir()
    (work / ".mcp.json").write_text(orjson.dumps({"mcpServers": {
        "py": {"command": sys.executable, "args": [str(server)], "env": {"GREETING": "hej"}},
    }}).decode())
    async with agent_pair(tmp_path) as p:
        tools: list[str] = []
        for _ in range(300):  # the agent connects MCP servers in the background
            tools = [t.name for t in (await p.conn.list_mcp_tools()).tools]
            if tools:
                break
            await asyncio.sleep(0.1)
        assert "py__echo" in tools and tools == sorted(tools)
        echo = next(t for t in (await p.conn.list_mcp_tools()).tools if t.name == "py__echo")
        assert echo.server_name == "py" and "message" in echo.schema and echo.required == ["message"]
        res = await p.conn.call_mcp_tool("py__echo", {"message": "hi", "count": 2})
        assert not res.is_error and res.content[0].text == "hihi"
        res = await p.conn.call_mcp_tool("py__env", {"name": "GREETING"})
        assert res.content[0].text == "hej"
        res = await p.conn.call_mcp_tool("py__fail")
        assert res.is_error
        with pytest.raises(AgentApiError) as ei:
            await p.conn.call_mcp_tool("nosuch__tool")
        assert ei.value.status == 404 and ei.value.message == "MCP tool call failed."
        with pytest.raises(AgentApiError) as ei:
            await p.conn.call_mcp_tool("notool")
        assert ei.value.status == 400
        resource = await p.conn.read_mcp_resource("py", "test://greeting")
        assert resource.uri == "test://greeting" and resource.text


async def test_agent_runs_ssh_and_speedtest(tmp_path: Path) -> None:
    """The services Agent starts by default, reached through AgentConn's methods."""
    async with agent_pair(tmp_path, services=("ssh", "speedtest")) as p:
        async with await p.conn.ssh_client() as client:
            result = await client.run("echo $((6 * 7)); exit 4")
            assert result.stdout == "42\n" and result.exit_status == 4
        async with await p.conn.ssh_client(port=22) as client:
            assert (await client.run("true")).exit_status == 0
        reader, writer = await p.conn.ssh()
        assert (await reader.readline()).startswith(b"SSH-2.0-")
        writer.close()
        res = await p.conn.speedtest("down", 5.0)
        assert res.bytes > 0 and len(res.intervals) >= 4


async def test_agent_runs_reconnecting_pty(tmp_path: Path) -> None:
    async with agent_pair(tmp_path, services=("pty",)) as p:
        sid = uuid.uuid4()
        pty = await p.conn.reconnecting_pty(sid, 24, 80, "sh")
        await pty.write("echo pty-$((40 + 2))\r")
        seen = b""
        while b"pty-42" not in seen:
            seen += await asyncio.wait_for(pty.read(65536), 20)
        pty.close()
        await pty.wait_closed()
        again = await p.conn.reconnecting_pty(sid, 24, 80, "sh")
        replay = await asyncio.wait_for(again.read(65536), 20)
        assert b"pty-42" in replay
        again.close()


async def test_dial_forwards_other_ports_to_the_workspace_loopback(tmp_path: Path) -> None:
    """A real kernel TCP server on 127.0.0.1 reached through the agent's catch-all forwarder."""
    got = hashlib.sha256()

    async def echo_upper(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            got.update(data)
            w.write(data.upper())
            await w.drain()
        w.close()

    server = await asyncio.start_server(echo_upper, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with agent_pair(tmp_path, services=("forward",)) as p:
            reader, writer = await p.conn.dial("tcp", f"ignored-host:{port}")
            payload = os.urandom(3 << 20).hex().lower().encode()[: 3 << 20]
            writer.write(payload)
            writer.write_eof()
            back = await asyncio.wait_for(reader.read(), 30)
            assert back == payload.upper()
            assert got.hexdigest() == hashlib.sha256(payload).hexdigest()
            writer.close()
            # Port 4 still reaches the API, not the forwarder.
            assert (await p.conn.list_processes()).processes == []
            # Nothing listening on the loopback port: the tunnel connection is reset.
            free = socket.socket()
            free.bind(("127.0.0.1", 0))
            dead = free.getsockname()[1]
            free.close()
            reader, writer = await p.conn.dial("tcp", dead)
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                data = await asyncio.wait_for(reader.read(), 10)
                if not data:
                    raise ConnectionResetError("closed")
            writer.close()
            with pytest.raises(ValueError):
                await p.conn.dial("sctp", ":80")
    finally:
        server.close()
        await server.wait_closed()


async def test_netcheck_opt_bools_are_json_booleans_or_null(tmp_path: Path) -> None:
    """tailscale's opt.Bool accepts only JSON true/false/null (a string fails Go's decode of
    the whole report): the raw answer must carry no string in those fields, and our client
    reads them as Go holds them ("true"/"false"/"")."""
    from agentconn.proto.debug import NET_INFO_OPT_BOOLS, normalize_net_info

    async with agent_pair(tmp_path) as p:
        await p.conn.ping()
        reader, writer = await p.client_tunnel.open_connection(str(p.conn.agent_address), 4)
        writer.write(b"GET /api/v0/netcheck HTTP/1.0\r\n\r\n")
        answer = await reader.read()
        writer.close()
        raw = orjson.loads(answer.partition(b"\r\n\r\n")[2])
        net_info = raw["net_info"]
        for name in NET_INFO_OPT_BOOLS:
            assert name in net_info and net_info[name] in (True, False, None), (name, net_info)
        assert net_info["WorkingUDP"] is True
        assert normalize_net_info({"WorkingUDP": True, "UPnP": None, "PMP": False,
                                   "PCP": "true"}) == {"WorkingUDP": "true", "UPnP": "",
                                                       "PMP": "false", "PCP": "true"}
