"""AgentConn.http_client: httpx through the tunnel to a real http.server on the agent's
loopback (GET, POST with a streamed body, keep-alive reuse), in process and via agentconn.sync."""
from __future__ import annotations

import asyncio
import hashlib
import http.server
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from agent_pair import agent_pair  # noqa: E402


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        digest = hashlib.sha256()
        if self.headers.get("Transfer-Encoding") == "chunked":
            while (size := int(self.rfile.readline().strip(), 16)):
                digest.update(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
        else:
            digest.update(self.rfile.read(int(self.headers["Content-Length"])))
        body = digest.hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


async def test_httpx_through_the_tunnel(tmp_path: Path, web: int) -> None:
    async with agent_pair(tmp_path, services=("forward",)) as p:
        async with p.conn.http_client(web) as client:
            r = await client.get("/api/health")
            assert (r.status_code, r.text) == (200, "hello from /api/health")
            data = bytes(range(256)) * 4096                          # 1 MiB, streamed

            async def body() -> AsyncIterator[bytes]:
                for i in range(0, len(data), 65536):
                    yield data[i:i + 65536]
                    await asyncio.sleep(0)

            r = await client.post("/upload", content=body())
            assert r.text == hashlib.sha256(data).hexdigest()
            for i in range(5):
                assert (await client.get(f"/n/{i}")).text == f"hello from /n/{i}"
            backend = client._transport.backend  # type: ignore[attr-defined]
            assert backend.connections_opened == 1               # keep-alive reuse
        async with p.conn.http_client(1) as client:
            with pytest.raises(httpx.HTTPError):
                await client.get("/")
