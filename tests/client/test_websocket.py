"""Websockets and blocking HTTP to web apps in the workspace, through the tunnel (issue 17).

The server side is a real, independent implementation: the `websockets` library's echo server on
the agent's loopback. The client side is ``AgentConn.websocket`` (wsproto), httpx-ws on
``AgentConn.http_client``, and the blocking ``SyncWebSocket``/``httpx.Client`` of agentconn.sync
against an `agentconn agent` in another process (with a real http.server for the HTTP part).
"""
from __future__ import annotations

import hashlib
import http.server
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx_ws
import pytest
import websockets.asyncio.server
import websockets.sync.server
from websockets.datastructures import Headers
from websockets.http11 import Response

from agentconn.web.errors import ConnectionClosed, WebSocketRejected

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from agent_pair import agent_pair  # noqa: E402
from cli_run import agent_process  # noqa: E402
from test_http import Handler  # noqa: E402

AGENT_ID = uuid.UUID("12345678-1234-1234-1234-123456789abc")
BIG = bytes(range(256)) * 4096                          # 1 MiB: many TCP segments each way


def _only_echo(connection: object, request: object) -> Response | None:
    if getattr(request, "path", "") != "/echo":
        return Response(404, "Not Found", Headers([("Content-Length", "9")]), b"not here\n")
    return None


async def _aecho(ws: websockets.asyncio.server.ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def _echo(ws: websockets.sync.server.ServerConnection) -> None:
    for message in ws:
        ws.send(message)


async def test_websocket_echo_through_the_tunnel(tmp_path: Path) -> None:
    async with websockets.asyncio.server.serve(_aecho, "127.0.0.1", 0,
                                               process_request=_only_echo,
                                               max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with agent_pair(tmp_path, services=("forward",)) as p:
            ws = await p.conn.websocket(port, "/echo")
            assert ws.compressed                             # permessage-deflate negotiated
            await ws.send("hello")
            assert await ws.receive() == "hello"
            await ws.send(BIG)
            assert await ws.receive() == BIG
            for i in range(20):
                await ws.send(f"m{i}")
            assert [await ws.receive() for _ in range(20)] == [f"m{i}" for i in range(20)]
            await ws.close()
            assert ws.close_code == 1000
            with pytest.raises(ConnectionClosed):
                await ws.receive()

            with pytest.raises(WebSocketRejected) as refused:
                await p.conn.websocket(port, "/elsewhere")
            assert refused.value.status == 404 and refused.value.body == b"not here\n"

            # httpx-ws over the pooled httpx client: the upgrade goes through the same transport.
            async with p.conn.http_client(port) as client:
                async with httpx_ws.aconnect_ws("/echo", client) as hws:
                    await hws.send_text("via httpx-ws")
                    assert await hws.receive_text() == "via httpx-ws"
                    await hws.send_bytes(BIG)
                    assert await hws.receive_bytes() == BIG


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    with agent_process(tmp_path_factory.mktemp("ws"), AGENT_ID) as paths:
        yield paths


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    with websockets.sync.server.serve(_echo, "127.0.0.1", 0, max_size=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server.socket.getsockname()[1]
        server.shutdown()
    thread.join(10)


@pytest.fixture(scope="module")
def web_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_blocking_websocket(agent: tuple[Path, Path], echo_port: int) -> None:
    from agentconn import sync

    config, _ = agent
    with sync.connect(str(config), AGENT_ID) as conn:
        with conn.websocket(echo_port, "/") as ws:
            assert isinstance(ws, sync.SyncWebSocket)
            ws.send("hello")
            assert ws.receive() == "hello"
            ws.send(BIG)
            assert ws.receive() == BIG
            ws.ping(b"p")
            ws.send(b"after ping")
            assert ws.receive() == b"after ping"
        assert ws.closed and ws.close_code == 1000

        # From several threads at once, each with its own websocket.
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                with conn.websocket(echo_port) as w:
                    for j in range(5):
                        w.send(f"{i}.{j}")
                        assert w.receive() == f"{i}.{j}"
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors


def test_blocking_http_client_reuses_connections(agent: tuple[Path, Path],
                                                 web_port: int) -> None:
    from agentconn import sync

    config, _ = agent
    with sync.connect(str(config), AGENT_ID) as conn:
        with conn.http_client(web_port) as client:
            assert isinstance(client, httpx.Client)
            r = client.get("/api/health")
            assert (r.status_code, r.text) == (200, "hello from /api/health")
            # A body from a plain generator (sent chunked) and one given as bytes.
            r = client.post("/upload", content=(BIG[i:i + 65536]
                                                for i in range(0, len(BIG), 65536)))
            assert r.text == hashlib.sha256(BIG).hexdigest()
            r = client.post("/upload", content=BIG)
            assert r.text == hashlib.sha256(BIG).hexdigest()
            with client.stream("GET", "/streamed") as streamed:
                assert b"".join(streamed.iter_bytes()) == b"hello from /streamed"
            for i in range(5):
                assert client.get(f"/n/{i}").text == f"hello from /n/{i}"
            backend = client._transport.backend  # type: ignore[attr-defined]
            assert backend.connections_opened == 1                # keep-alive reuse
        with conn.http_client(1) as client, pytest.raises(httpx.HTTPError):
            client.get("/")
