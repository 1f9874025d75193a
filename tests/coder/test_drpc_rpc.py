"""DRPC calls: the sans-IO connection pair, the §3.7 bytes through yamux, and asyncio RPCs
between our client and our server over our yamux over a loopback socket pair."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from peer import SessionPair

from agentconn.coder import yamux
from agentconn.coder.drpc import (
    CloseReceived,
    CloseSendReceived,
    Connection,
    ConnectionTerminated,
    ErrorReceived,
    Event,
    Frame,
    InvokeReceived,
    Kind,
    MessageReceived,
    Role,
)
from agentconn.coder.drpc_aio import Call, DrpcClient, DrpcServer
from agentconn.coder.errors import DrpcClosedError, DrpcError, DrpcProtocolError
from agentconn.coder.tailnet_pb import (
    CoordinateRequest,
    CoordinateResponse,
    DERPMap,
    DERPNode,
    DERPRegion,
    HomeParams,
    PeerUpdate,
    PeerUpdateKind,
    StreamDERPMapsRequest,
    Tunnel,
)
from agentconn.coder.tailnet_rpc import (
    RPC_COORDINATE,
    RPC_STREAM_DERP_MAPS,
    TailnetClient,
    tailnet_server,
)

pytestmark = pytest.mark.timeout(30)

AGENT = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
CLIENT = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
EMBEDDED = DERPMap(
    home_params=HomeParams(),
    regions={
        999: DERPRegion(
            999, True, "coder", "Coder Embedded Relay",
            nodes=(DERPNode("999b", 999, "coder.example.com", stun_port=-1, derp_port=443),),
        )
    },
)  # fmt: skip


def events(conn: Connection) -> list[Event]:
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


# --- sans-IO ---------------------------------------------------------------------------------


def test_connection_pair_bidi_shape() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    sid = client.invoke(RPC_COORDINATE, {"k": "v"})
    assert sid == 1
    client.send_message(sid, b"req1")
    server.receive_data(client.data_to_send())
    assert events(server) == [
        InvokeReceived(1, RPC_COORDINATE, {"k": "v"}),
        MessageReceived(1, b"req1"),
    ]
    server.send_message(1, b"resp1")
    client.receive_data(server.data_to_send())
    assert events(client) == [MessageReceived(1, b"resp1")]
    client.close_send(sid)
    server.receive_data(client.data_to_send())
    assert events(server) == [CloseSendReceived(1)]
    server.close(1)
    raw = server.data_to_send()
    assert raw.hex() == "0b010200"  # server's own packet numbering: Message(1), Close(2)
    client.receive_data(raw)
    assert events(client) == [CloseReceived(1)]
    assert client.stream_finished() and server.stream_finished()
    # the next invoke on the same transport gets stream id 2
    assert client.invoke("/x/Y") == 2


def test_both_close_sends_terminate_and_errors_are_events() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    client.invoke("/svc/Unary")
    client.send_message(1, b"")
    client.close_send(1)
    server.receive_data(client.data_to_send())
    events(server)
    server.send_error(1, "boom", 12)
    client.receive_data(server.data_to_send())
    assert events(client) == [ErrorReceived(1, 12, "boom")]
    with pytest.raises(DrpcClosedError):
        client.send_message(1, b"late")

    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    client.invoke("/svc/M")
    client.close_send(1)
    server.receive_data(client.data_to_send())
    server.close_send(1)
    assert server.stream_finished()  # both CloseSends


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (Frame(Kind.INVOKE, 1, 3, b"/again").emit(), "invoke on existing stream"),
        (Frame(40, 1, 3).emit(), "unknown packet kind"),
        (b"\x05\x01" + b"\xff" * 10, "varint too long"),
    ],
)
def test_connection_protocol_errors_are_events(raw: bytes, message: str) -> None:
    server = Connection(Role.SERVER)
    server.receive_data(Frame(Kind.INVOKE, 1, 1, b"/svc/M").emit() + raw)
    got = events(server)
    assert isinstance(got[0], InvokeReceived)
    assert isinstance(got[-1], ConnectionTerminated)
    assert isinstance(got[-1].error, DrpcProtocolError)
    assert message in str(got[-1].error)
    server.receive_data(b"anything")  # ignored from now on
    assert events(server) == []


def test_unknown_kind_with_control_bit_and_old_streams_are_ignored() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(
        Frame(Kind.INVOKE, 2, 1, b"/svc/M").emit()
        + Frame(41, 2, 2, control=True).emit()
        + Frame(Kind.MESSAGE, 2, 3, b"ok").emit()
    )
    assert [type(e) for e in events(server)] == [InvokeReceived, MessageReceived]
    server.receive_data(Frame(Kind.MESSAGE, 2, 4, b"x").emit())
    assert events(server) == [MessageReceived(2, b"x")]


def test_stream_derp_maps_bytes_through_yamux_spec_3_7() -> None:
    """§3.7: StreamDERPMaps as the first RPC of a fresh yamux session, byte for byte."""
    session = yamux.Session(yamux.Role.CLIENT)
    sid = session.open_stream()
    assert session.data_to_send().hex() == "000100010000000100000000"
    conn = Connection(Role.CLIENT)
    conn.invoke(RPC_STREAM_DERP_MAPS)
    conn.send_message(1, StreamDERPMapsRequest().encode())
    session.send_data(sid, conn.data_to_send())  # MsgSend flushes Invoke + Message
    assert session.data_to_send().hex() == (
        "00000000000000010000003003010128" + RPC_STREAM_DERP_MAPS.encode().hex() + "05010200"
    )
    conn.close_send(1)
    session.send_data(sid, conn.data_to_send())
    assert session.data_to_send().hex() == "000000000000000100000004" + "0d010300"
    # the server's map: 05 01 01 57 <87 bytes>
    server = Connection(Role.SERVER)
    server.receive_data(
        Frame(Kind.INVOKE, 1, 1, RPC_STREAM_DERP_MAPS.encode()).emit()
        + Frame(Kind.MESSAGE, 1, 2).emit()
    )
    events(server)
    server.send_message(1, EMBEDDED.encode())
    assert server.data_to_send()[:4].hex() == "05010157"


# --- asyncio over our yamux --------------------------------------------------------------------


async def test_unary_and_errors(session_pair: SessionPair) -> None:
    async def echo(call: Call) -> None:
        request = await call.recv()
        assert request is not None
        await call.send(request[::-1])

    async def unimplemented(call: Call) -> None:
        raise DrpcError("Unimplemented", code=12)

    async def crash(call: Call) -> None:
        raise RuntimeError("handler blew up")

    server = DrpcServer({"/t/Echo": echo, "/t/Unimpl": unimplemented, "/t/Crash": crash})
    serving = asyncio.create_task(server.serve(session_pair.server))
    client = DrpcClient(session_pair.client)
    assert await client.unary("/t/Echo", b"hello") == b"olleh"
    assert await client.unary("/t/Echo", b"x" * 200_000) == b"x" * 200_000  # split frames

    with pytest.raises(DrpcError) as info:
        await client.unary("/t/Unimpl", b"")
    assert (info.value.code, info.value.message, info.value.unimplemented) == (
        12,
        "Unimplemented",
        True,
    )
    with pytest.raises(DrpcError) as info:
        await client.unary("/t/Missing", b"")
    assert info.value.message == 'protocol error: unknown rpc: "/t/Missing"'
    assert info.value.code == 0 and info.value.unimplemented
    with pytest.raises(DrpcError, match="handler blew up"):
        await client.unary("/t/Crash", b"")
    serving.cancel()


async def test_coordinate_bidi_and_stream_derp_maps(session_pair: SessionPair) -> None:
    seen: list[CoordinateRequest] = []

    async def coordinate(call) -> None:  # type: ignore[no-untyped-def]
        async for request in call:
            seen.append(request)
            if request.add_tunnel is not None:
                await call.send(
                    CoordinateResponse(
                        peer_updates=(
                            PeerUpdate(AGENT.bytes, kind=PeerUpdateKind.READY_FOR_HANDSHAKE),
                        )
                    )
                )
            if request.disconnect is not None:
                await call.call.close()  # the coordinator hangs up after Disconnect
                return

    async def stream_derp_maps(request, call) -> None:  # type: ignore[no-untyped-def]
        assert request == StreamDERPMapsRequest()
        await call.send(EMBEDDED)
        await call.send(DERPMap(home_params=HomeParams()))

    server = tailnet_server(coordinate=coordinate, stream_derp_maps=stream_derp_maps)
    serving = asyncio.create_task(server.serve(session_pair.server))
    tailnet = TailnetClient(session_pair.client)

    coord = await tailnet.coordinate()
    maps = await tailnet.stream_derp_maps()
    assert (coord.call.stream_id, maps.call.stream_id) == (1, 1)  # one DRPC stream per yamux
    assert await maps.recv() == EMBEDDED
    assert await maps.recv() == DERPMap(home_params=HomeParams())
    assert await maps.recv() is None  # handler returned: CloseSend
    await maps.close()

    await coord.send(CoordinateRequest(add_tunnel=Tunnel.to(AGENT)))
    response = await coord.recv()
    assert response is not None
    assert response.peer_updates[0].uuid == AGENT
    await coord.disconnect()
    assert seen[-1] == CoordinateRequest(disconnect=seen[-1].disconnect)
    assert len(seen) == 2
    serving.cancel()


async def test_server_sees_client_going_away(session_pair: SessionPair) -> None:
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    started = asyncio.Event()

    async def coordinate(call: Call) -> None:
        try:
            while await call.recv() is not None:
                started.set()
            ended.set_result("closesend")
        except DrpcClosedError as exc:
            ended.set_result(f"closed: {exc.message}")
        except asyncio.CancelledError:
            ended.set_result("cancelled")
            raise

    serving = asyncio.create_task(
        DrpcServer({RPC_COORDINATE: coordinate}).serve(session_pair.server)
    )
    call = await DrpcClient(session_pair.client).invoke(RPC_COORDINATE)
    await call.send(CoordinateRequest(add_tunnel=Tunnel.to(AGENT)).encode())
    await asyncio.wait_for(started.wait(), 10)
    await session_pair.client.close()  # the websocket drops: no CloseSend, no Close
    outcome = await asyncio.wait_for(ended, 10)
    assert outcome == "cancelled" or outcome.startswith("closed: transport"), outcome
    with pytest.raises(DrpcClosedError):
        await call.recv()
    serving.cancel()


async def test_malformed_message_surfaces_as_protobuf_error(session_pair: SessionPair) -> None:
    from agentconn.coder.errors import ProtobufError

    async def coordinate(call: Call) -> None:
        await call.send(b"\x0a\x05\x01")  # truncated peer_updates
        await call.recv()

    serving = asyncio.create_task(
        DrpcServer({RPC_COORDINATE: coordinate}).serve(session_pair.server)
    )
    coord = await TailnetClient(session_pair.client).coordinate()
    with pytest.raises(ProtobufError):
        await coord.recv()
    await coord.close()
    serving.cancel()
