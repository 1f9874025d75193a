"""The whole coordinate stack over a real websocket: HttpServer upgrade → WebSocketPipe → yamux
→ DRPC → protobuf, with our client on the other end (coder-control-plane.md §1.6, §2.1)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from agentconn.coder.errors import YamuxProtocolError
from agentconn.coder.tailnet_pb import (
    CoordinateRequest,
    CoordinateResponse,
    DERPMap,
    HomeParams,
    PeerUpdate,
    PeerUpdateKind,
    Tunnel,
)
from agentconn.coder.tailnet_rpc import TailnetClient, tailnet_server
from agentconn.coder.yamux import Role
from agentconn.coder.yamux_aio import YamuxSession, yamux_over_websocket
from agentconn.web import HttpServer, Request
from agentconn.web.websocket import websocket_connect

pytestmark = pytest.mark.timeout(30)

AGENT = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")


async def _coordinate(call) -> None:  # type: ignore[no-untyped-def]
    async for request in call:
        if request.add_tunnel is not None:
            update = PeerUpdate(request.add_tunnel.id, kind=PeerUpdateKind.NODE, reason="init")
            await call.send(CoordinateResponse(peer_updates=(update,)))


async def _maps(request, call) -> None:  # type: ignore[no-untyped-def]
    await call.send(DERPMap(home_params=HomeParams({999: 1.5})))


@pytest.fixture
async def coordinator() -> AsyncIterator[int]:
    """A coordinate endpoint: websocket → yamux server → Tailnet DRPC server. Yields its port."""

    async def handler(request: Request) -> object:
        ws = await request.accept_websocket(compression=False)
        session = yamux_over_websocket(ws, Role.SERVER)
        await tailnet_server(coordinate=_coordinate, stream_derp_maps=_maps).serve(session)
        await session.close()
        return None

    http = HttpServer(handler)
    server = await asyncio.start_server(http.serve_connection, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def _dial(port: int) -> YamuxSession:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    path = f"/api/v2/workspaceagents/{AGENT}/coordinate?version=2.0"
    ws = await websocket_connect(reader, writer, f"127.0.0.1:{port}", path, compression=False)
    return yamux_over_websocket(ws, Role.CLIENT)


async def test_coordinate_and_derp_maps_over_websocket(coordinator: int) -> None:
    session = await _dial(coordinator)
    async with session:
        tailnet = TailnetClient(session)
        coord = await tailnet.coordinate()
        await coord.send(CoordinateRequest(add_tunnel=Tunnel.to(AGENT)))
        response = await asyncio.wait_for(coord.recv(), 10)
        assert response is not None
        assert response.peer_updates[0].uuid == AGENT
        assert response.peer_updates[0].kind is PeerUpdateKind.NODE
        maps = await tailnet.stream_derp_maps()
        assert await maps.recv() == DERPMap(home_params=HomeParams({999: 1.5}))
        assert await maps.recv() is None
        await maps.close()
        assert await asyncio.wait_for(session.ping(), 10) >= 0
        await coord.close()


async def test_text_message_is_a_protocol_error(coordinator: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", coordinator)
    ws = await websocket_connect(
        reader, writer, f"127.0.0.1:{coordinator}", "/coordinate", compression=False
    )
    # the server side of this websocket runs yamux; a peer that sends text breaks it
    await ws.send("not yamux")
    with pytest.raises(Exception):  # noqa: B017 - any close is fine for this side
        while True:
            await asyncio.wait_for(ws.receive(), 10)
    assert ws.close_code == 1003


async def test_websocket_pipe_reports_text_as_yamux_protocol_error(coordinator: int) -> None:
    from agentconn.coder.pipe import WebSocketPipe

    async def handler(request: Request) -> object:
        ws = await request.accept_websocket(compression=False)
        await ws.send("text")
        await asyncio.sleep(0.5)
        return None

    server = await asyncio.start_server(HttpServer(handler).serve_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ws = await websocket_connect(reader, writer, f"127.0.0.1:{port}", "/x", compression=False)
    with pytest.raises(YamuxProtocolError):
        await WebSocketPipe(ws).read()
    server.close()
    await server.wait_closed()
