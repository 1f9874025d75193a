"""connect_websocket_stream (the fast client path) against real loopback servers: our HttpServer
for the normal cases, and a scripted server that writes exact frames for the edge cases
(frames arriving with the 101, fragments with pings between, close handshakes, a 64-bit length,
a masked frame, a text message, a consumer that stops reading). What the client sends is
decoded by wsproto's server-side frame decoder."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

from agentconn.web import Request
from agentconn.web.errors import RemoteProtocolError, WebSocketRejected
from agentconn.web.server import ServerResponse
from agentconn.web.wsstream import connect_websocket_stream

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True,
          mask: bytes | None = None, form: int | None = None) -> bytes:
    n = len(payload)
    form = form or (7 if n < 126 else 16 if n < 1 << 16 else 64)
    head = bytes([(0x80 if fin else 0) | opcode])
    m = 0x80 if mask is not None else 0
    if form == 7:
        head += bytes([m | n])
    elif form == 16:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


@dataclass
class Scripted:
    """One accepted connection of the scripted server: write frames, read the client's."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: FrameProtocol = field(default_factory=lambda: FrameProtocol(False, []))
    frames: list[Frame] = field(default_factory=list)

    async def next_frame(self) -> Frame | None:
        """The client's next frame (unmasked by wsproto), or None at EOF."""
        while not self.frames:
            data = await self.reader.read(65536)
            if not data:
                return None
            self.decoder.receive_bytes(data)
            self.frames.extend(self.decoder.received_frames())
        return self.frames.pop(0)


ScriptedServer = Callable[..., Awaitable[tuple[int, "asyncio.Queue[Scripted]"]]]


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    """A server that answers the upgrade with a bare 101 (plus ``with_101`` in the same
    write) and hands each connection to the test."""
    servers: list[asyncio.Server] = []

    async def start(with_101: bytes = b"") -> tuple[int, asyncio.Queue[Scripted]]:
        conns: asyncio.Queue[Scripted] = asyncio.Queue()

        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            head = await r.readuntil(b"\r\n\r\n")
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                    + with_101)
            await conns.put(Scripted(r, w))

        srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(srv)
        return srv.sockets[0].getsockname()[1], conns

    yield start
    for srv in servers:
        srv.close()


async def _open(port: int, **kw: object) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    create = functools.partial(loop.create_connection, host="127.0.0.1", port=port)
    return await connect_websocket_stream(  # type: ignore[arg-type]
        create, f"127.0.0.1:{port}", "/vnc", **kw)


async def test_frames_with_the_101_fragments_and_interleaved_pings(scripted) -> None:
    port, conns = await scripted(with_101=frame(0x2, b"RFB 003.008\n"))
    reader, writer = await _open(port)
    server = await conns.get()
    assert await reader.readexactly(12) == b"RFB 003.008\n"
    server.writer.write(frame(0x2, b"frag1-", fin=False) + frame(0x9, b"are you there")
                        + frame(0x0, b"frag2-", fin=False) + frame(0xA, b"unsolicited")
                        + frame(0x0, b"frag3"))
    assert await reader.readexactly(17) == b"frag1-frag2-frag3"
    pong = await server.next_frame()
    assert pong is not None and (pong.opcode, pong.payload) == (Opcode.PONG, b"are you there")
    assert writer.transport.pongs == 1  # type: ignore[attr-defined]
    # the client's writes are masked binary frames (wsproto unmasks them)
    writer.write(b"\x03\x00\x00\x00\x00\x00\x02\x80\x01\xe0")
    got = await server.next_frame()
    assert got is not None and (got.opcode, got.payload) == (
        Opcode.BINARY, b"\x03\x00\x00\x00\x00\x00\x02\x80\x01\xe0")
    writer.transport.abort()


async def test_a_64_bit_length_frame(scripted) -> None:
    port, conns = await scripted()
    reader, writer = await _open(port)
    server = await conns.get()
    body = os.urandom(3 << 20)  # 3 MiB in one frame: the 64-bit length form
    server.writer.write(frame(0x2, body))
    assert await reader.readexactly(len(body)) == body
    writer.transport.abort()


async def test_server_close_is_echoed_and_ends_the_stream(scripted) -> None:
    port, conns = await scripted()
    reader, writer = await _open(port)
    server = await conns.get()
    server.writer.write(frame(0x2, b"last bytes") + frame(0x8, (1001).to_bytes(2, "big") + b"bye"))
    assert await reader.read() == b"last bytes"  # then EOF
    echo = await server.next_frame()
    assert echo is not None and echo.opcode is Opcode.CLOSE
    assert (echo.payload[0], echo.payload[1]) == (1001, "bye")  # RFC 6455 §5.5.1
    assert await server.next_frame() is None  # and the client hung up
    assert writer.transport.close_code == 1001  # type: ignore[attr-defined]
    await writer.wait_closed()


async def test_client_close_handshake(scripted) -> None:
    port, conns = await scripted()
    reader, writer = await _open(port)
    server = await conns.get()
    writer.close()
    got = await server.next_frame()
    assert got is not None and got.opcode is Opcode.CLOSE and got.payload[0] == 1000
    server.writer.write(frame(0x2, b"discarded") + frame(0x8, (1000).to_bytes(2, "big")))
    await writer.wait_closed()
    assert await reader.read() == b""
    assert await server.next_frame() is None


async def test_masked_frame_from_the_server_is_a_protocol_error(scripted) -> None:
    port, conns = await scripted()
    reader, writer = await _open(port)
    server = await conns.get()
    server.writer.write(frame(0x2, b"ok") + frame(0x2, b"masked", mask=b"\x01\x02\x03\x04"))
    assert await reader.readexactly(2) == b"ok"
    with pytest.raises(RemoteProtocolError, match="masked"):
        await reader.read(100)
    close = await server.next_frame()
    assert close is not None and close.opcode is Opcode.CLOSE and close.payload[0] == 1002
    assert writer.transport.is_closing()


async def test_text_message_is_refused_with_1003(scripted) -> None:
    port, conns = await scripted()
    reader, _ = await _open(port)
    server = await conns.get()
    server.writer.write(frame(0x1, b"text"))
    with pytest.raises(RemoteProtocolError, match="text message"):
        await reader.read(100)
    close = await server.next_frame()
    assert close is not None and close.opcode is Opcode.CLOSE and close.payload[0] == 1003


async def test_a_server_that_hangs_up_ends_the_stream(scripted) -> None:
    port, conns = await scripted()
    reader, writer = await _open(port)
    server = await conns.get()
    server.writer.write(frame(0x2, b"partial") + b"\x82\x7e")  # then half a header
    server.writer.close()
    assert await reader.read() == b"partial"
    assert writer.transport.close_code == 1006  # type: ignore[attr-defined]


async def test_a_slow_consumer_holds_bounded_memory(scripted) -> None:
    """The server pushes 48 MiB; the client reads nothing until the server is stuck. The
    client holds at most its reader's limit twice plus one received chunk; then everything
    arrives intact."""
    port, conns = await scripted()
    limit = 256 * 1024
    reader, writer = await _open(port, limit=limit)
    server = await conns.get()
    blob = os.urandom(1 << 20)
    total = 48

    async def push() -> None:
        for _ in range(total):
            server.writer.write(frame(0x2, blob[: 1 << 19]) + frame(0x2, blob[1 << 19:]))
            await server.writer.drain()

    pusher = asyncio.ensure_future(push())
    # Wait until the client has paused reading: the server's writes now pile up in kernel
    # buffers until drain() blocks; 48 MiB cannot all fit there.
    while writer.transport.is_reading():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    assert not pusher.done()
    held = len(reader._buffer)  # the StreamReader's buffer: the memory the client holds
    assert held <= 2 * limit + (1 << 20), held
    digest = hashlib.sha256()
    got = 0
    while got < total << 20:
        piece = await reader.read(1 << 20)
        assert piece
        digest.update(piece)
        got += len(piece)
    await pusher
    assert digest.digest() == hashlib.sha256(blob * total).digest()
    writer.transport.abort()


async def test_echo_through_our_server(start_server) -> None:
    """Against HttpServer's websocket: 16 MiB each way with backpressure."""

    async def handler(request: Request) -> None:
        ws = await request.accept_websocket(compression=False)
        while True:
            try:
                piece = await ws.receive_chunk()
            except Exception:  # noqa: BLE001 - the client closed
                return
            ws.write_message(piece)
            await ws.drain()

    s = await start_server(handler)
    reader, writer = await _open(s.port)
    blob = os.urandom(1 << 20)

    async def send() -> None:
        for _ in range(16):
            writer.write(blob)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    got = hashlib.sha256()
    n = 0
    while n < 16 << 20:
        piece = await reader.read(1 << 20)
        assert piece
        got.update(piece)
        n += len(piece)
    await sender
    assert got.digest() == hashlib.sha256(blob * 16).digest()
    writer.close()
    await writer.wait_closed()
    assert writer.transport.close_code == 1000  # type: ignore[attr-defined]


async def test_refusal_becomes_websocket_rejected_with_the_body(start_server) -> None:
    async def handler(request: Request) -> ServerResponse:
        return ServerResponse(500, [("Content-Type", "application/json")],
                              b'{"message":"Failed to connect to VNC server."}')

    s = await start_server(handler)
    with pytest.raises(WebSocketRejected) as info:
        await _open(s.port)
    assert info.value.status == 500
    assert info.value.body == b'{"message":"Failed to connect to VNC server."}'


async def test_a_bad_handshake_answer_is_a_protocol_error(scripted) -> None:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n")

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        with pytest.raises(RemoteProtocolError):
            await _open(srv.sockets[0].getsockname()[1])
    finally:
        srv.close()
