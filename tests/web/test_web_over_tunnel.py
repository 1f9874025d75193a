"""The HTTP and websocket layer over our own userspace TCP (two Tunnels over loopback UDP)."""
from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "aio"))

from test_tunnel_loopback import started_pair  # noqa: E402

from agentconn.web.client import HttpClient  # noqa: E402
from agentconn.web.server import HttpServer, Request  # noqa: E402
from agentconn.web.websocket import websocket_connect  # noqa: E402


async def test_http_keep_alive_streaming_and_websocket_through_the_tunnel() -> None:
    a, b = await started_pair()
    try:
        async def handler(request: Request) -> object:
            if request.path == "/upload":
                digest = hashlib.sha256()
                async for chunk in request.iter_body():
                    digest.update(chunk)
                return {"sha256": digest.hexdigest()}
            if request.path == "/ws":
                ws = await request.accept_websocket()
                while True:
                    try:
                        message = await ws.receive()
                    except Exception:
                        return None
                    await ws.send(message)
            return {"path": request.path, "query": dict(request.query)}

        http = HttpServer(handler)
        server = await b.start_server(http.serve_connection, 4, "fd55::2")
        client = HttpClient(a.open_connection)
        try:
            for i in range(3):
                response = await client.request("GET", f"/files?path=a%20b%26c&n={i}",
                                                host="fd55::2", port=4)
                assert response.status == 200
                assert await response.json() == {"path": "/files",
                                                 "query": {"path": "a b&c", "n": str(i)}}
            assert client.connections_opened == 1 and http.connections_served == 1

            block = os.urandom(1 << 20)
            expected = hashlib.sha256(block * 20).hexdigest()

            async def body() -> AsyncIterator[bytes]:
                for _ in range(20):
                    yield block

            response = await client.request("POST", "/upload", host="fd55::2", port=4, body=body())
            assert (await response.json())["sha256"] == expected

            reader, writer = await a.open_connection("fd55::2", 4)
            ws = await websocket_connect(reader, writer, "[fd55::2]:4", "/ws")
            for message in ("text", b"\x00binary" * 1000):
                await ws.send(message)
                assert await ws.receive() == message
            await ws.close(1000, "done")
        finally:
            await client.close()
            server.close()
    finally:
        await a.close()
        await b.close()
