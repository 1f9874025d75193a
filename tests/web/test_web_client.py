"""HttpClient against HttpServer on loopback: pooling, streaming, errors, timeouts."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from agentconn.web import (
    HttpClient,
    HttpTimeoutError,
    RemoteProtocolError,
    Request,
    ServerResponse,
)

CHUNK = 64 * 1024
TOTAL = 50 * 1024 * 1024


def _block(i: int) -> bytes:
    return i.to_bytes(4, "big") * (CHUNK // 4)


async def _source(total: int) -> AsyncIterator[bytes]:
    for i in range(total // CHUNK):
        yield _block(i)


def _expected_sha(total: int) -> str:
    h = hashlib.sha256()
    for i in range(total // CHUNK):
        h.update(_block(i))
    return h.hexdigest()


async def test_keep_alive_reuses_connection(start_server, client: HttpClient) -> None:
    async def handler(request: Request) -> bytes:
        return request.path.encode()

    s = await start_server(handler)
    for i in range(3):
        resp = await client.request("GET", f"/{i}", host=s.host, port=s.port)
        assert await resp.read() == f"/{i}".encode()
    assert s.accepted[0] == 1
    assert client.connections_opened == 1
    assert client.idle_connections(s.host, s.port) == 1


async def test_unread_body_closes_connection(start_server, client: HttpClient) -> None:
    async def handler(request: Request) -> bytes:
        return b"x" * 1000

    s = await start_server(handler)
    async with await client.request("GET", "/", host=s.host, port=s.port) as resp:
        assert resp.status == 200  # body never read
    assert client.idle_connections(s.host, s.port) == 0
    resp = await client.request("GET", "/", host=s.host, port=s.port)
    assert len(await resp.read()) == 1000
    assert s.accepted[0] == 2


async def test_server_closed_idle_connection_is_replaced(start_server, client: HttpClient) -> None:
    async def handler(request: Request) -> bytes:
        return b"ok"

    s = await start_server(handler, keep_alive_timeout=0.1)
    assert await (await client.request("GET", "/", host=s.host, port=s.port)).read() == b"ok"
    await asyncio.sleep(0.3)
    assert await (await client.request("GET", "/", host=s.host, port=s.port)).read() == b"ok"
    assert s.accepted[0] == 2


async def test_redirect_not_followed(start_server, client: HttpClient) -> None:
    async def handler(request: Request) -> ServerResponse:
        return ServerResponse(302, [("Location", "/elsewhere")], b"")

    s = await start_server(handler)
    resp = await client.request("GET", "/", host=s.host, port=s.port)
    assert resp.status == 302 and resp.headers["location"] == "/elsewhere"
    await resp.read()


async def test_chunked_upload_50mb_streams_with_bounded_memory(
    start_server, client: HttpClient
) -> None:
    async def handler(request: Request) -> dict[str, object]:
        h = hashlib.sha256()
        n = 0
        async for chunk in request.iter_body():
            h.update(chunk)
            n += len(chunk)
        return {"sha": h.hexdigest(), "n": n, "te": request.headers.get("transfer-encoding")}

    s = await start_server(handler)
    tracemalloc.start()
    try:
        resp = await client.request(
            "POST", "/up", host=s.host, port=s.port, body=_source(TOTAL), timeout=60
        )
        info = await resp.json()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info == {"sha": _expected_sha(TOTAL), "n": TOTAL, "te": "chunked"}
    assert peak < 16 * 1024 * 1024


async def test_chunked_download_50mb_streams_with_bounded_memory(
    start_server, client: HttpClient
) -> None:
    async def handler(request: Request) -> ServerResponse:
        return ServerResponse(200, [], _source(TOTAL))

    s = await start_server(handler)
    tracemalloc.start()
    try:
        h = hashlib.sha256()
        n = 0
        async with await client.request("GET", "/", host=s.host, port=s.port) as resp:
            assert resp.headers["transfer-encoding"] == "chunked"
            async for chunk in resp.iter_bytes():
                h.update(chunk)
                n += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (n, h.hexdigest()) == (TOTAL, _expected_sha(TOTAL))
    assert peak < 16 * 1024 * 1024
    assert client.idle_connections(s.host, s.port) == 1


async def test_content_length_body_roundtrip(start_server, client: HttpClient) -> None:
    async def handler(request: Request) -> bytes:
        assert request.headers["content-length"] == str(300_000)
        return await request.body()

    s = await start_server(handler)
    payload = bytes(range(256)) * 1172 + b"1234"[: 300_000 - 256 * 1172]
    payload = payload[:300_000]
    resp = await client.request("PUT", "/", host=s.host, port=s.port, body=payload)
    assert resp.headers["content-length"] == str(len(payload))
    assert await resp.read() == payload


async def test_read_timeout_raises_timeout_error(start_server, client: HttpClient) -> None:
    async def handler(request: Request) -> bytes:
        await asyncio.sleep(5)
        return b""

    s = await start_server(handler)
    with pytest.raises(TimeoutError) as info:
        await client.request("GET", "/", host=s.host, port=s.port, timeout=0.2)
    assert isinstance(info.value, HttpTimeoutError)


async def test_peer_hangs_up_mid_body_is_remote_protocol_error(client: HttpClient) -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(bad, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        resp = await client.request("GET", "/", host="127.0.0.1", port=port)
        with pytest.raises(RemoteProtocolError):
            await resp.read()
        assert client.idle_connections("127.0.0.1", port) == 0


async def test_garbage_response_is_remote_protocol_error(client: HttpClient) -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(bad, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        with pytest.raises(RemoteProtocolError):
            await client.request("GET", "/", host="127.0.0.1", port=port)


async def test_closed_client_refuses() -> None:
    from agentconn.web import LocalProtocolError

    c = HttpClient(asyncio.open_connection)
    await c.close()
    with pytest.raises(LocalProtocolError):
        await c.request("GET", "/", host="127.0.0.1", port=1)
