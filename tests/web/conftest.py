"""Fixtures for agentconn.web: a real loopback server around HttpServer.serve_connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from agentconn.web import HttpClient, HttpServer
from agentconn.web.server import Handler


@dataclass
class Served:
    """A running loopback server: where it listens and how many connections it accepted."""

    server: HttpServer
    host: str
    port: int
    accepted: list[int]


StartServer = Callable[..., Awaitable[Served]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start an HttpServer(handler, **kw) on 127.0.0.1 and count accepted connections."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler, **kw: object) -> Served:
        http = HttpServer(handler, **kw)  # type: ignore[arg-type]
        accepted = [0]

        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            accepted[0] += 1
            await http.serve_connection(r, w)

        srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(srv)
        port = srv.sockets[0].getsockname()[1]
        return Served(http, "127.0.0.1", port, accepted)

    yield start
    for srv in servers:
        srv.close()
    for srv in servers:
        await srv.wait_closed()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    """An HttpClient over asyncio.open_connection."""
    c = HttpClient(asyncio.open_connection)
    yield c
    await c.close()
