"""Websockets: HttpServer upgrade + websocket_connect over loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct

import pytest

from agentconn.web import (
    ConnectionClosed,
    RemoteProtocolError,
    Request,
    WebSocket,
    websocket_connect,
)


def make_echo(**accept_kw: object):  # type: ignore[no-untyped-def]
    """A handler that accepts websockets and echoes until the peer closes."""
    seen: list[WebSocket] = []

    async def handler(request: Request) -> object:
        if not request.is_websocket:
            return b"plain"
        ws = await request.accept_websocket(**accept_kw)  # type: ignore[arg-type]
        seen.append(ws)
        while True:
            try:
                msg = await ws.receive()
            except ConnectionClosed:
                return None
            if msg == "close-me":
                await ws.close(4001, "asked to")
                return None
            await ws.send(msg)

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


async def _connect(port: int, path: str = "/ws", **kw: object) -> WebSocket:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return await websocket_connect(reader, writer, f"127.0.0.1:{port}", path, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("compression", [True, False])
async def test_echo_text_and_binary(start_server, compression: bool) -> None:
    handler = make_echo()
    s = await start_server(handler)
    ws = await _connect(s.port, compression=compression)
    assert ws.compressed is compression
    assert handler.seen[0].compressed is compression
    await ws.send("héllo")
    assert await ws.receive() == "héllo"
    await ws.send(b"\x00\x01\x02")
    assert await ws.receive() == b"\x00\x01\x02"
    big = os.urandom(100_000) + b"z" * 1_000_000
    await ws.send(big)
    assert await ws.receive() == big
    await ws.send("x" * 200_000)
    assert await ws.receive() == "x" * 200_000
    await ws.close()
    assert ws.close_code == 1000
    with pytest.raises(ConnectionClosed):
        await ws.send("after close")


async def test_compression_negotiated_without_context_takeover(start_server) -> None:
    handler = make_echo()
    s = await start_server(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).lower()
    writer.close()
    assert head.startswith(b"http/1.1 101")
    assert b"s3pplmbitxaq9kygzzhzrbk+xoo=" in head  # RFC 6455 §1.3 sample accept
    ext = head.split(b"sec-websocket-extensions:")[1].split(b"\r\n")[0]
    assert b"permessage-deflate" in ext
    assert b"server_no_context_takeover" in ext and b"client_no_context_takeover" in ext


async def test_ping_answered(start_server) -> None:
    s = await start_server(make_echo())
    ws = await _connect(s.port)
    await ws.ping(b"abc")  # the pong is consumed silently by receive()
    await ws.send("after ping")
    assert await ws.receive() == "after ping"
    await ws.close()


async def test_max_message_size_closes_1009(start_server) -> None:
    handler = make_echo(max_message_size=1024)
    s = await start_server(handler)
    ws = await _connect(s.port)
    await ws.send(b"a" * 1024)  # exactly the limit is fine
    assert await ws.receive() == b"a" * 1024
    await ws.send(b"a" * 1025)
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert info.value.code == 1009
    assert handler.seen[0].close_code == 1009


async def test_client_side_max_message_size(start_server) -> None:
    s = await start_server(make_echo())
    ws = await _connect(s.port, max_message_size=10)
    await ws.send("0123456789ABC")  # the server echoes 13 bytes back
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert info.value.code == 1009


async def test_server_close_code_and_reason(start_server) -> None:
    s = await start_server(make_echo())
    ws = await _connect(s.port)
    await ws.send("close-me")
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert (info.value.code, info.value.reason) == (4001, "asked to")


async def test_client_close_code_seen_by_server(start_server) -> None:
    codes: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    async def handler(request: Request) -> None:
        ws = await request.accept_websocket()
        try:
            await ws.receive()
        except ConnectionClosed as exc:
            await codes.put((exc.code, exc.reason))

    s = await start_server(handler)
    ws = await _connect(s.port)
    await ws.close(4321, "bye")
    assert await asyncio.wait_for(codes.get(), 5) == (4321, "bye")


async def test_transport_drop_is_1006(start_server) -> None:
    async def handler(request: Request) -> None:
        await request.accept_websocket()
        # returning hangs up without a close frame

    s = await start_server(handler)
    ws = await _connect(s.port)
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.receive(), 5)
    assert info.value.code == 1006


async def test_upgrade_refused(start_server) -> None:
    async def handler(request: Request) -> bytes:
        return b"no websockets here"

    s = await start_server(handler)
    with pytest.raises(RemoteProtocolError) as info:
        await _connect(s.port)
    assert info.value.status_hint == 200


async def test_accept_on_plain_request_is_400(start_server, client) -> None:  # type: ignore[no-untyped-def]
    async def handler(request: Request) -> None:
        await request.accept_websocket()

    s = await start_server(handler)
    resp = await client.request("GET", "/", host=s.host, port=s.port)
    assert resp.status == 400
    assert (await resp.json())["message"] == "Bad Request"


async def test_server_message_sent_right_after_accept(start_server) -> None:
    async def handler(request: Request) -> None:
        ws = await request.accept_websocket()
        await ws.send("greeting")
        await ws.send(b"second")
        await ws.close(1001, "going away")

    s = await start_server(handler)
    ws = await _connect(s.port)
    assert await ws.receive() == "greeting"
    assert await ws.receive() == b"second"
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert (info.value.code, info.value.reason) == (1001, "going away")


async def test_compressed_bomb_is_refused_with_1009(start_server) -> None:
    handler = make_echo(max_message_size=1024 * 1024)
    s = await start_server(handler)
    ws = await _connect(s.port)
    assert ws.compressed
    await ws.send(b"\x00" * (20 * 1024 * 1024))  # ~20 KiB on the wire, 20 MiB inflated
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert info.value.code == 1009
    assert handler.seen[0].close_code == 1009
    # refused while inflating (wsproto's frame parser), not after a 20 MiB chunk existed
    assert handler.seen[0].close_reason != "message too big"


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Records that would alarm an operator: ERROR or worse, or anything with a traceback."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR or (r.levelno >= logging.WARNING and r.exc_info)]


async def _raw_upgrade(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


def _masked(opcode: int, payload: bytes) -> bytes:
    """A final client frame with an all-zero mask (so the payload is sent as is)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


async def test_ping_then_close_in_one_write(start_server, caplog) -> None:
    """wsproto refuses a pong once the peer's close is in: no LocalProtocolError, the close
    handshake completes (our close frame echoes the code) and the handler sees the close."""
    caplog.set_level(logging.DEBUG)
    codes: asyncio.Queue[int] = asyncio.Queue()

    async def handler(request: Request) -> None:
        ws = await request.accept_websocket()
        try:
            await ws.receive()
        except ConnectionClosed as exc:
            await codes.put(exc.code)

    s = await start_server(handler)
    reader, writer = await _raw_upgrade(s.port)
    writer.write(_masked(0x9, b"hi") + _masked(0x8, (1000).to_bytes(2, "big") + b"bye"))
    try:
        assert await asyncio.wait_for(codes.get(), 5) == 1000
        reply = await asyncio.wait_for(reader.read(), 5)  # then EOF
    finally:
        writer.close()
    assert reply.startswith(b"\x88") and reply[2:4] == (1000).to_bytes(2, "big"), reply
    assert b"\x8a" not in reply[:1]  # no pong after the close
    assert not _errors(caplog)


@pytest.mark.parametrize("how", ["reset", "bad-frame"])
async def test_client_breaking_a_session_is_not_an_error(start_server, caplog, how: str) -> None:
    """A client that drops mid-session or sends a frame the protocol forbids ends the session:
    handlers that let ConnectionClosed escape (through the agent's Router too) log no error."""
    from agentconn.agent.api.router import Router

    caplog.set_level(logging.DEBUG)
    started = asyncio.Event()

    async def sender(request: Request, ctx: object) -> None:
        ws = await request.accept_websocket()
        started.set()
        while True:  # until the client is gone: ConnectionClosed escapes the handler
            await ws.send(b"x" * 4096)
            await asyncio.sleep(0.001)

    async def receiver(request: Request, ctx: object) -> None:
        ws = await request.accept_websocket()
        started.set()
        while True:
            await ws.receive()

    router = Router()
    router.add("GET", "/ws", sender if how == "reset" else receiver)
    s = await start_server(router)
    reader, writer = await _raw_upgrade(s.port)
    await asyncio.wait_for(started.wait(), 5)
    if how == "reset":
        await reader.read(1000)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.write(b"\x82\x03abc")  # unmasked client frame: a protocol error (1002)
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
    for _ in range(500):
        if s.server.connections_aborted:
            break
        await asyncio.sleep(0.01)
    assert s.server.connections_aborted == 1
    assert not _errors(caplog)
