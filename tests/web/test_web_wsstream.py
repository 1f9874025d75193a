"""A websocket as a byte stream: the server's copy-free binary frames, pieces received unjoined,
refusal bodies kept, and the WebSocketTransport / open_websocket_stream adapter (backpressure
both ways, text refused, close)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from agentconn.web import ConnectionClosed, Request, WebSocket, websocket_connect
from agentconn.web.errors import RemoteProtocolError, WebSocketRejected
from agentconn.web.server import ServerResponse
from agentconn.web.wsstream import open_websocket_stream


async def _connect(port: int, **kw: object) -> WebSocket:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return await websocket_connect(reader, writer, f"127.0.0.1:{port}", "/", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("compression", [False, True])
async def test_write_message_frames_every_length_class(start_server, compression: bool) -> None:
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 1 << 20]
    payloads = [os.urandom(n) for n in sizes]

    async def handler(request: Request) -> None:
        ws = await request.accept_websocket(compression=compression)
        for p in payloads:
            ws.write_message(p)  # header + payload, no copy (uncompressed server)
        ws.write_message(memoryview(b"view"))
        await ws.drain()
        await ws.close()

    s = await start_server(handler)
    ws = await _connect(s.port, compression=compression, max_message_size=2 << 20)
    for p in payloads:
        assert await ws.receive() == p
    assert await ws.receive() == b"view"
    with pytest.raises(ConnectionClosed):
        await ws.receive()


async def test_receive_chunk_does_not_join_or_limit(start_server) -> None:
    got: asyncio.Queue[bytes | str] = asyncio.Queue()

    async def handler(request: Request) -> None:
        ws = await request.accept_websocket(compression=False, max_message_size=1024)
        total = 0
        while total < 3 * 1024 * 1024:  # 3 MiB in one message, far past max_message_size
            piece = await ws.receive_chunk()
            assert isinstance(piece, bytes)
            total += len(piece)
        await got.put(total)
        await got.put(await ws.receive_chunk())

    s = await start_server(handler)
    ws = await _connect(s.port, compression=False)
    await ws.send(b"x" * (3 * 1024 * 1024))
    await ws.send("text piece")
    assert await asyncio.wait_for(got.get(), 10) == 3 * 1024 * 1024
    assert await asyncio.wait_for(got.get(), 10) == "text piece"
    await ws.close()


async def test_refusal_body_is_kept(start_server) -> None:
    async def handler(request: Request) -> ServerResponse:
        return ServerResponse(500, [("Content-Type", "application/json")],
                              b'{"message":"Failed to connect to VNC server."}')

    s = await start_server(handler)
    with pytest.raises(WebSocketRejected) as info:
        await _connect(s.port)
    e = info.value
    assert isinstance(e, RemoteProtocolError) and e.status_hint == 500
    assert (e.status, e.headers["content-type"]) == (500, "application/json")
    assert e.body == b'{"message":"Failed to connect to VNC server."}'


async def test_stream_pair_copies_bytes_with_backpressure(start_server) -> None:
    """Echo through open_websocket_stream on both sides: 32 MiB each way, bounded buffers."""
    peak = [0]

    async def handler(request: Request) -> None:
        ws = await request.accept_websocket(compression=False)
        reader, writer = await open_websocket_stream(ws)
        while data := await reader.read(1 << 16):
            writer.write(data)
            peak[0] = max(peak[0], writer.transport.get_write_buffer_size())
            await writer.drain()
        writer.close()

    s = await start_server(handler)
    reader, writer = await open_websocket_stream(await _connect(s.port, compression=False))
    blob = os.urandom(1 << 20)
    total = 32 << 20

    async def send() -> None:
        for _ in range(total >> 20):
            writer.write(blob)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    expected, got = hashlib.sha256(), hashlib.sha256()
    for _ in range(total >> 20):
        expected.update(blob)
    received = 0
    while received < total:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
        assert chunk
        got.update(chunk)
        received += len(chunk)
    await sender
    assert received == total and got.digest() == expected.digest()
    # the server's writes waited for the client instead of piling up
    assert peak[0] <= 2 << 20
    writer.close()
    assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_stream_text_message_is_an_error_and_close_ends_it(start_server) -> None:
    async def handler(request: Request) -> None:
        ws = await request.accept_websocket(compression=False)
        await ws.send(b"bytes first")
        await ws.send("then text")
        try:
            await ws.receive()
        except ConnectionClosed as e:
            assert e.code == 1003

    s = await start_server(handler)
    reader, writer = await open_websocket_stream(await _connect(s.port, compression=False))
    assert await reader.readexactly(11) == b"bytes first"
    with pytest.raises(RemoteProtocolError, match="text message"):
        await asyncio.wait_for(reader.read(100), 5)
    assert writer.transport.is_closing()
    assert not writer.can_write_eof()
