"""Our DERP client against our DERP server over loopback, on both transports (Upgrade and
websocket): login, relaying, PeerGone, Ping/Pong, keepalives, fallback, reconnection, the
Restarting frame, slow clients and bad clients (coder-control-plane.md §5)."""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator

import pytest

from agentconn.coder.derp import (
    Connected,
    DerpClient,
    DerpClientConnection,
    DerpClosedError,
    DerpConnectError,
    DerpEvent,
    DerpMap,
    DerpPool,
    DerpSendError,
    DerpServer,
    Disconnected,
    KeepAlive,
    PacketReceived,
    PeerGone,
    Restarting,
)
from agentconn.coder.derp.frames import FrameType, emit_frame, emit_header
from agentconn.coder.keys import NodePrivate
from agentconn.web import HttpClient

TIMEOUT = 10.0


@pytest.fixture
async def server() -> AsyncIterator[DerpServer]:
    srv = DerpServer()
    await srv.start()
    yield srv
    await srv.close()


async def next_of(client: DerpClient, kind: type, timeout: float = TIMEOUT) -> DerpEvent:
    """The next event of type ``kind``, skipping others (keepalives, …)."""
    async with asyncio.timeout(timeout):
        while True:
            event = await client.next_event()
            if isinstance(event, kind):
                return event


async def started(srv: DerpServer, *, websocket: bool = False, **kw: object) -> DerpClient:
    client = DerpClient(NodePrivate.generate(), srv.derp_map().regions[1],
                        force_websockets=websocket, **kw)  # type: ignore[arg-type]
    await client.connect()
    assert isinstance(await next_of(client, Connected), Connected)
    return client


@pytest.mark.parametrize("websocket", [False, True], ids=["upgrade", "websocket"])
async def test_relay_between_two_clients(server: DerpServer, websocket: bool) -> None:
    a = await started(server, websocket=websocket)
    b = await started(server, websocket=websocket)
    assert a.transport_kind == ("websocket" if websocket else "upgrade")
    assert a.server_key == server.public_key
    assert await a.send_packet(b.public_key, b"to b")
    assert await next_of(b, PacketReceived) == PacketReceived(a.public_key, b"to b")
    big = bytes(range(256)) * 256  # 64 KiB, the largest packet
    assert await b.send_packet(a.public_key, big)
    assert await next_of(a, PacketReceived) == PacketReceived(b.public_key, big)
    assert await a.ping() >= 0.0
    # a leaves: b received from a, so b hears PeerGone(Disconnected).
    await a.close()
    assert await next_of(b, PeerGone) == PeerGone(a.public_key, 0)
    with pytest.raises(DerpClosedError):
        await a.send_packet(b.public_key, b"x")
    with pytest.raises(DerpSendError, match="packet too big"):
        await b.send_packet(a.public_key, bytes(65537))
    await b.close()
    assert server.stats()[f"accepts_{'websocket' if websocket else 'upgrade'}"] == 2


async def test_websocket_fallback_after_a_4xx() -> None:
    async with DerpServer(upgrade_status=400) as srv:
        client = DerpClient(NodePrivate.generate(), srv.derp_map().regions[1])
        await client.connect()
        assert client.forced_websocket and client.transport_kind == "websocket"
        assert "failed with status code 400 (a proxy could be disallowing the use of " \
               "'Upgrade: derp')" in client.forced_websocket_reason
        peer = await started(srv)
        await peer.send_packet(client.public_key, b"over ws")
        assert await next_of(client, PacketReceived) == PacketReceived(peer.public_key, b"over ws")
        assert srv.stats()["accepts_websocket"] == 2
        await client.close()
        await peer.close()


async def test_keepalives_reach_the_client() -> None:
    async with DerpServer(keepalive=0.1, keepalive_jitter=False) as srv:
        client = await started(srv)
        await next_of(client, KeepAlive)
        await next_of(client, KeepAlive)
        await client.close()


async def test_reconnects_after_a_server_restart() -> None:
    first = DerpServer()
    host, port = await first.start()
    region = first.derp_map().regions[1]
    client = DerpClient(NodePrivate.generate(), region, min_backoff=0.05, max_backoff=0.2)
    await client.connect()
    assert (await next_of(client, Connected)).generation == 1  # type: ignore[attr-defined]
    await first.close()
    disconnected = await next_of(client, Disconnected)
    assert disconnected.reconnect_in is not None  # type: ignore[attr-defined]
    second = DerpServer()  # a restarted coderd: same address, new server key
    await second.start(host, port)
    try:
        connected = await next_of(client, Connected)
        assert connected == Connected(second.public_key, 2)
        assert client.connected and client.generation == 2
        peer = await started(second)
        await peer.send_packet(client.public_key, b"after restart")
        assert (await next_of(client, PacketReceived)).data == b"after restart"  # type: ignore[attr-defined]
        await peer.close()
    finally:
        await client.close()
        await second.close()


async def test_restarting_frame() -> None:
    first = DerpServer()
    host, port = await first.start()
    client = DerpClient(NodePrivate.generate(), first.derp_map().regions[1], min_backoff=5.0)
    await client.connect()
    await first.close(restarting=(0.2, 5.0))
    assert await next_of(client, Restarting) == Restarting(0.2, 5.0)
    assert await next_of(client, Disconnected) == Disconnected(
        "server closed the connection", 0.2)
    second = DerpServer()
    await second.start(host, port)
    try:
        # Reconnects after reconnect_in, not after the 5 s backoff.
        connected = await next_of(client, Connected, timeout=3.0)
        assert connected.generation == 2  # type: ignore[attr-defined]
    finally:
        await client.close()
        await second.close()


async def test_connect_errors() -> None:
    srv = DerpServer()
    await srv.start()
    region = srv.derp_map().regions[1]
    await srv.close()
    client = DerpClient(NodePrivate.generate(), region, connect_timeout=2.0)
    with pytest.raises(DerpConnectError, match="DERP region 1: test0"):
        await client.connect()
    await client.close()


# ----- raw clients: slow and malformed ------------------------------------------------------


async def raw_login(srv: DerpServer, *, rcvbuf: int | None = None, private: NodePrivate | None
                    = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                     DerpClientConnection]:
    """Log in by hand over the Upgrade transport; returns the streams and the core."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (srv.host, srv.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert f"Derp-Public-Key: {srv.public_key.hex()}".encode() in head
    core = DerpClientConnection(private or NodePrivate.generate(), loop.time())
    return reader, writer, core


async def finish_login(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       core: DerpClientConnection) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not isinstance(core.next_event(), Connected):
            core.receive_data(await reader.read(4096), 0.0)
            writer.write(core.data_to_send())


async def test_slow_client_queue_is_bounded() -> None:
    async with DerpServer(queue_depth=8, write_timeout=30.0) as srv:
        reader, writer, slow = await raw_login(srv, rcvbuf=4096)
        await finish_login(reader, writer, slow)
        sender = await started(srv)
        for _ in range(300):  # ~18 MB at a client that reads nothing
            await sender.send_packet(slow.public_key, bytes(60000))
        async with asyncio.timeout(TIMEOUT):
            while srv.stats().get("packets_forwarded", 0) < 300:
                await asyncio.sleep(0.01)
        stats = srv.stats()
        assert 0 < stats["dropped_queue_head"] < 300
        [queue] = [c for c in srv.connections() if c.key == slow.public_key]
        assert queue.queued_packets <= 8
        # Others are not held up by the stalled one.
        a, b = await started(srv), await started(srv)
        await a.send_packet(b.public_key, b"still fine")
        assert (await next_of(b, PacketReceived)).data == b"still fine"  # type: ignore[attr-defined]
        for c in (a, b, sender):
            await c.close()
        writer.close()


@pytest.mark.parametrize(
    ("after_login", "data", "reason"),
    [
        (False, emit_frame(FrameType.SEND_PACKET, bytes(40)), "bad frame type 0x4, want 0x2"),
        (False, emit_frame(FrameType.CLIENT_INFO, bytes(32) + bytes(60)), "msgbox: cannot open"),
        (True, emit_header(FrameType.SEND_PACKET, 32 + 70000), "data packet longer (70000)"),
        (True, emit_frame(FrameType.PING, bytes(4)), "short ping: 4"),
    ],
    ids=["wrong-first-frame", "wrong-box", "oversize-packet", "short-ping"],
)
async def test_bad_clients_are_closed_logged_and_counted(
    server: DerpServer, caplog: pytest.LogCaptureFixture, after_login: bool, data: bytes,
    reason: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="agentconn.coder.derp.server")
    a, b = await started(server), await started(server)
    reader, writer, core = await raw_login(server)
    if after_login:
        await finish_login(reader, writer, core)
    else:
        await reader.readexactly(45)  # the ServerKey frame
    writer.write(data)
    async with asyncio.timeout(TIMEOUT):
        while await reader.read(65536):
            pass  # the server hangs up
    writer.close()
    assert any(reason in r.getMessage() for r in caplog.records), caplog.text
    assert server.stats()["closed_protocol_error"] == 1
    await a.send_packet(b.public_key, b"unaffected")
    assert (await next_of(b, PacketReceived)).data == b"unaffected"  # type: ignore[attr-defined]
    await a.close()
    await b.close()


async def test_http_endpoints(server: DerpServer) -> None:
    async with HttpClient(asyncio.open_connection) as http:
        for path in ("/derp/probe", "/derp/latency-check"):
            resp = await http.request("GET", path, host=server.host, port=server.port)  # type: ignore[arg-type]
            assert resp.status == 200 and resp.headers["access-control-allow-origin"] == "*"
            await resp.read()
        resp = await http.request("POST", "/derp/probe", host=server.host, port=server.port)  # type: ignore[arg-type]
        assert resp.status == 405 and await resp.read() == b"bogus probe method\n"
        resp = await http.request("GET", "/derp", host=server.host, port=server.port)  # type: ignore[arg-type]
        assert resp.status == 426 and await resp.read() == b"DERP requires connection upgrade\n"


async def test_pool_routes_by_region() -> None:
    async with DerpServer() as one, DerpServer() as two:
        derp_map = DerpMap({1: one.derp_map(1).regions[1], 2: two.derp_map(2).regions[2]})
        pool = DerpPool(NodePrivate.generate(), derp_map, home_region=1, idle_timeout=0.3,
                        min_backoff=0.05)
        await pool.start()
        agent = DerpClient(NodePrivate.generate(), derp_map.regions[2])
        await agent.connect()
        try:
            assert list(pool.clients) == [1]
            assert await pool.send(2, agent.public_key, b"via region 2")  # opened on demand
            assert (await next_of(agent, PacketReceived)).data == b"via region 2"  # type: ignore[attr-defined]
            await agent.send_packet(pool.private_key.public, b"reply")
            async with asyncio.timeout(TIMEOUT):
                while True:
                    region, event = await pool.next_event()
                    if isinstance(event, PacketReceived):
                        break
            assert (region, event.data) == (2, b"reply")
            assert one.relay.connections().__next__().preferred  # home noted as preferred
            async with asyncio.timeout(TIMEOUT):  # region 2 closes when idle, home stays
                while 2 in pool.clients:
                    await asyncio.sleep(0.05)
            assert list(pool.clients) == [1]
            await pool.send(2, agent.public_key, b"again")  # reopens on demand
            assert list(pool.clients) == [1, 2]
            pool.update_map(DerpMap({1: derp_map.regions[1]}))  # region 2 left the map
            async with asyncio.timeout(TIMEOUT):
                while 2 in pool.clients:
                    await asyncio.sleep(0.01)
            with pytest.raises(DerpConnectError, match="not in the DERP map"):
                await pool.send(2, agent.public_key, b"gone")
        finally:
            await agent.close()
            await pool.close()


async def test_disco_ping_over_derp_is_answered(server: DerpServer) -> None:
    # §6.4: the agent disco-pings us over DERP; our responder answers with a Pong that says
    # the ping came from 127.3.3.40:<region>.
    from agentconn.coder.disco import DiscoResponder, PongReceived
    from agentconn.coder.keys import DiscoPrivate

    ours, agent = await started(server), await started(server, websocket=True)
    ours_disco, agent_disco = DiscoPrivate.generate(), DiscoPrivate.generate()
    responder = DiscoResponder(ours_disco, ours.public_key)
    responder.add_peer(agent_disco.public, agent.public_key)
    agent_side = DiscoResponder(agent_disco, agent.public_key)
    agent_side.add_peer(ours_disco.public, ours.public_key)
    loop = asyncio.get_running_loop()
    tx = agent_side.ping(ours_disco.public, 1, loop.time())
    for _, dst, packet in agent_side.packets_to_send():
        await agent.send_packet(dst, packet)
    event = await next_of(ours, PacketReceived)
    assert responder.receive_derp_packet(event.src, event.data, 1, loop.time())  # type: ignore[attr-defined]
    for _, dst, packet in responder.packets_to_send():
        await ours.send_packet(dst, packet)
    event = await next_of(agent, PacketReceived)
    assert agent_side.receive_derp_packet(event.src, event.data, 1, loop.time())  # type: ignore[attr-defined]
    pong = agent_side.next_event()
    assert isinstance(pong, PongReceived) and pong.tx_id == tx
    assert str(pong.src[0]) == "127.3.3.40" and pong.src[1] == 1
    await ours.close()
    await agent.close()


async def test_text_message_on_the_websocket_is_a_protocol_error(
    server: DerpServer, caplog: pytest.LogCaptureFixture,
) -> None:
    from agentconn.web.websocket import websocket_connect

    reader, writer = await asyncio.open_connection(server.host, server.port)
    ws = await websocket_connect(reader, writer, f"{server.host}:{server.port}", "/derp",
                                 subprotocols=["derp"], compression=False)
    assert ws.subprotocol == "derp"
    assert len(await ws.receive()) == 45  # the ServerKey frame, in a binary message
    await ws.send("not binary")
    async with asyncio.timeout(TIMEOUT):
        while server.stats().get("closed_protocol_error", 0) == 0:
            await asyncio.sleep(0.01)
    assert "text message on a DERP websocket" in caplog.text
    await ws.close_transport()


def _self_signed(tmp_path: object) -> ssl.SSLContext:
    import datetime
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "derp.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    base = Path(str(tmp_path))
    (base / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (base / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(base / "cert.pem", base / "key.pem")
    return ctx


@pytest.mark.parametrize("websocket", [False, True], ids=["upgrade", "websocket"])
async def test_tls(tmp_path: object, websocket: bool) -> None:
    # A DERP map node without ForceHTTP is dialed over TLS (InsecureForTests: no verify).
    srv = DerpServer()
    await srv.start(ssl=_self_signed(tmp_path))
    try:
        assert srv.url.startswith("https://") and srv.derp_map().regions[1].nodes[0].use_tls
        a = await started(srv, websocket=websocket)
        b = await started(srv, websocket=websocket)
        await a.send_packet(b.public_key, b"over tls")
        assert (await next_of(b, PacketReceived)).data == b"over tls"  # type: ignore[attr-defined]
        await a.close()
        await b.close()
    finally:
        await srv.close()
