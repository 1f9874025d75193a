"""``Request.accept_upgrade``: a non-websocket ``Upgrade`` (DERP's) hands over the raw stream."""
from __future__ import annotations

import asyncio
from typing import Any

from agentconn.web import Request
from agentconn.web.errors import RemoteProtocolError


async def test_accept_upgrade_hands_over_the_stream(start_server: Any) -> None:
    async def handler(request: Request) -> None:
        reader, writer, trailing = await request.accept_upgrade("ECHO", [("X-Extra", "1")])
        data = trailing + await reader.readexactly(5 - len(trailing))
        writer.write(data.upper())
        await writer.drain()

    served = await start_server(handler)
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: ECHO\r\nConnection: Upgrade\r\n\r\nhel")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head == (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ECHO\r\n"
                    b"Connection: Upgrade\r\nX-Extra: 1\r\n\r\n")
    writer.write(b"lo")
    assert await reader.readexactly(5) == b"HELLO"
    assert await reader.read() == b""  # closed when the handler returns
    writer.close()


async def test_accept_upgrade_refuses_a_plain_request(start_server: Any) -> None:
    errors: list[Exception] = []

    async def handler(request: Request) -> None:
        try:
            await request.accept_upgrade("ECHO")
        except RemoteProtocolError as exc:
            errors.append(exc)
            raise

    served = await start_server(handler)
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 400")
    assert "did not ask to upgrade" in str(errors[0])
    writer.close()
