"""Real clients against our Agent: curl (and raw kernel sockets) from a wireguard-go namespace.

Topology: wireguard-go in a namespace we create (10.77.0.1 / fd77::1, MTU 1280) with the
kernel's TCP behind it; our Agent is the userspace peer, its UDP socket inside the namespace,
its addresses derived from the agent UUID (fd7a:115c:a1e0:1234:1234:1234:5678:9abc …).
wireguard-go routes the agent's /128s to us, so `curl http://[agent]:4/...` in the namespace
goes kernel TCP → wireguard-go → our WireGuard → our TCP stack → the agent's HTTP server.
Every subprocess is asynchronous: the agent runs on this test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from netns import Namespace, WgPair, wg_pair

from agentconn.agent.agent import Agent
from agentconn.agent.options import AgentOptions
from agentconn.proto.ports import agent_addresses

AGENT_ID = uuid.UUID("12345678-1234-1234-1234-123456789abc")
AGENT_TS, AGENT_CODER = (str(a) for a in agent_addresses(AGENT_ID))
BASE = f"http://[{AGENT_TS}]:4"
MTU = 1280


@dataclass
class Served:
    pair: WgPair
    agent: Agent
    work: Path

    async def curl(self, *args: str, timeout: float = 180) -> tuple[int, bytes, str]:
        """curl in the namespace: (exit code, stdout, stderr). `-w` adds the status last."""
        proc = await asyncio.create_subprocess_exec(
            *self.pair.ns.exec_prefix(), "curl", "-sS", "-g", "--max-time", str(int(timeout)),
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout + 10)
        return proc.returncode or 0, out, err.decode(errors="replace")

    async def call(self, method: str, target: str, *args: str) -> tuple[int, bytes]:
        code, out, err = await self.curl("-X", method, "-w", "\n%{http_code}", *args,
                                         BASE + target)
        assert code == 0, err
        body, _, status = out.rpartition(b"\n")
        return int(status), body


def _bound_socket(ns: Namespace) -> socket.socket:
    with ns.enter():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def _served(netns: Namespace, tmp_path: Path) -> AsyncIterator[Served]:
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
        agent = Agent(pair.wg_quick_config(), AGENT_ID, options=options,
                      sock=_bound_socket(pair.ns))
        await agent.start()
        try:
            await agent.tunnel.ping(pair.their_addresses[0], timeout=10)  # handshake first
            yield Served(pair, agent, work)
        finally:
            await agent.close()
    finally:
        pair.wg.stop()


async def test_curl_reads_lists_edits_and_runs(netns: Namespace, tmp_path: Path) -> None:
    async with _served(netns, tmp_path) as s:
        status, body = await s.call("GET", "/")
        assert (status, json.loads(body)) == (200, {"message": "Hello from the agent!"})
        # The agent answers on its Coder-prefix address too.
        code, out, err = await s.curl(f"http://[{AGENT_CODER}]:4/")
        assert code == 0 and b"Hello from the agent!" in out, err

        weird = s.work / "sub dir" / "a&b?c#d%e.txt"
        weird.parent.mkdir()
        weird.write_bytes(b"one\ntwo\nthree\n")
        (s.work / "zdir").mkdir()
        status, body = await s.call("POST", "/api/v0/list-directory?path=" +
                                    urllib.parse.quote(str(s.work)), "--data", "{}")
        listing = json.loads(body)
        assert status == 200 and [e["name"] for e in listing["contents"]] == ["sub dir", "zdir"]

        # -G --data-urlencode: curl encodes the path's & ? # % and spaces itself.
        status, body = await s.call("GET", "/api/v0/read-file", "-G",
                                    "--data-urlencode", f"path={weird}", "--data", "offset=4",
                                    "--data", "limit=3")
        assert (status, body) == (200, b"two")
        status, body = await s.call("GET", "/api/v0/read-file-lines", "-G",
                                    "--data-urlencode", f"path={weird}")
        assert status == 200 and json.loads(body)["content"] == "1\tone\n2\ttwo\n3\tthree\n4\t"

        edit = {"files": [{"path": str(weird), "edits": [{"old_text": "two", "new_text": "2"}]}],
                "include_diff": True}
        status, body = await s.call("POST", "/api/v0/edit-files", "--data", json.dumps(edit))
        assert status == 200, body
        assert weird.read_bytes() == b"one\n2\nthree\n"
        assert "-two\n+2\n" in json.loads(body)["files"][0]["diff"]

        status, body = await s.call("POST", "/api/v0/processes/start", "--data",
                                    json.dumps({"command": "echo hi from $0; exit 7"}))
        assert status == 200, body
        pid = json.loads(body)["id"]
        status, body = await s.call("GET", f"/api/v0/processes/{pid}/output?wait=true")
        out = json.loads(body)
        assert status == 200 and out["exit_code"] == 7 and out["output"] == "hi from sh\n"
        status, body = await s.call("GET", "/api/v0/processes/list")
        assert [p["id"] for p in json.loads(body)["processes"]] == [pid]


async def test_curl_uploads_and_downloads_100mb(netns: Namespace, tmp_path: Path) -> None:
    async with _served(netns, tmp_path) as s:
        src = tmp_path / "upload.bin"
        digest = hashlib.sha256()
        with src.open("wb") as f:
            for i in range(100):
                block = hashlib.sha256(str(i).encode()).digest() * 32768  # 1 MiB
                digest.update(block)
                f.write(block)
        target = s.work / "uploaded file & more.bin"
        q = urllib.parse.urlencode({"path": str(target)})
        status, body = await s.call("POST", f"/api/v0/write-file?{q}",
                                    "--data-binary", f"@{src}")
        assert status == 200, body
        assert json.loads(body) == {"message": f'Successfully wrote to "{target}"'}
        with target.open("rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == digest.hexdigest()
        out = tmp_path / "downloaded.bin"
        code, _, err = await s.curl("-o", str(out), "-D", str(tmp_path / "headers"),
                                    f"{BASE}/api/v0/read-file?{q}")
        assert code == 0, err
        headers = (tmp_path / "headers").read_text().lower()
        assert "content-length: 104857600" in headers
        with out.open("rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == digest.hexdigest()
        assert not [p for p in s.work.iterdir() if ".tmp." in p.name]


async def test_bad_input_gets_clear_errors_and_agent_keeps_serving(
        netns: Namespace, tmp_path: Path) -> None:
    async with _served(netns, tmp_path) as s:
        s.agent.http.header_timeout = 2.0
        s.agent.http.keep_alive_timeout = 2.0
        cases = [
            ("POST", "/api/v0/edit-files", ["--data", "{not json"], 400,
             "Request body must be valid JSON."),
            ("POST", "/api/v0/edit-files", ["--data", '{"files": "x"}'], 400,
             "Request body must be valid JSON."),
            ("POST", "/api/v0/edit-files", ["--data", '{"files": []}'], 400,
             "must specify at least one file"),
            ("POST", "/api/v0/processes/start", ["--data", '{"command": 5}'], 400,
             "Request body must be valid JSON."),
            ("POST", "/api/v0/processes/start", ["--data", "{}"], 400, "Command is required."),
            ("GET", "/api/v0/read-file?path=/etc/hostname&offset=abc", [], 400,
             "Query parameters have invalid values."),
            ("GET", "/api/v0/read-file?offset=1", [], 400, "Query parameters have invalid values."),
            ("GET", "/api/v0/read-file?path=/x&what=1", [], 400,
             "Query parameters have invalid values."),
            ("POST", "/api/v0/list-directory", ["--data", ""], 400,
             "Request body must be valid JSON."),
        ]
        for method, target, extra, want_status, want_message in cases:
            status, body = await s.call(method, target, *extra)
            assert status == want_status, (target, extra, body)
            assert json.loads(body)["message"] == want_message, (target, body)
        status, body = await s.call("GET", "/no/such/route")
        assert (status, body) == (404, b"404 page not found\n")
        # 100 KB of headers → 431, connection closed, nothing else affected.
        status, _ = await s.call("GET", "/", "-H", "X-Big: " + "a" * 100_000)
        assert status == 431

        # Slow-loris from the kernel's TCP: trickle a request head byte by byte.
        loop = asyncio.get_running_loop()
        sock = s.pair.ns.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, (AGENT_TS, 4))
        try:
            closed = False
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ":
                try:
                    await loop.sock_sendall(sock, bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                # Meanwhile the agent serves others.
                status, _ = await s.call("GET", "/api/v0/processes/list")
                assert status == 200
                await asyncio.sleep(0.3)
            if not closed:
                data = await asyncio.wait_for(loop.sock_recv(sock, 100), 10)
                assert data == b""  # closed without a reply
        finally:
            sock.close()
        status, body = await s.call("GET", "/")
        assert status == 200
