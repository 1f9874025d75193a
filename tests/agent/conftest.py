"""Fixtures for the agent's API modules: a Router served over real loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from agentconn.agent.api.router import Router
from agentconn.web import HttpClient, HttpServer


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class ApiHarness:
    """Call the router as a client would: ``await api.call("GET", "/api/v0/...")``."""

    client: HttpClient
    host: str
    port: int

    async def call(self, method: str, target: str, *, body: bytes | Any = None,
                   headers: dict[str, str] | None = None, timeout: float = 30.0) -> Reply:
        if body is not None and not isinstance(body, (bytes, bytearray, memoryview)) and not hasattr(body, "__aiter__"):
            body = orjson.dumps(body) + b"\n"
        resp = await self.client.request(method, target, host=self.host, port=self.port,
                                         headers=headers, body=body, timeout=timeout)
        async with resp:
            data = await resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data)


MakeApi = Callable[[Router], Awaitable[ApiHarness]]


@pytest.fixture
async def make_api() -> AsyncIterator[MakeApi]:
    """``api = await make_api(router)``: serve ``router`` on 127.0.0.1 and return a harness."""
    servers: list[asyncio.Server] = []
    clients: list[HttpClient] = []
    serving: set[asyncio.Task[None]] = set()

    async def make(router: Router) -> ApiHarness:
        http = HttpServer(router)

        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            serving.add(task)
            try:
                await http.serve_connection(r, w)
            finally:
                serving.discard(task)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        client = HttpClient(asyncio.open_connection)
        clients.append(client)
        return ApiHarness(client, "127.0.0.1", port)

    yield make
    for c in clients:
        await c.close()
    # Let connection handlers see the clients' EOF and return, so none is cancelled at loop
    # teardown (Python 3.11's start_server callback logs a cancelled handler as an error).
    if serving:
        await asyncio.wait(set(serving), timeout=5)
    for s in servers:
        s.close()
        await s.wait_closed()
