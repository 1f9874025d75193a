"""The test coderd's coordinator side (controlplane.py; coder-control-plane.md §1.6, §4.4, §4.8,
§8.2), driven through the wire modules' client side exactly as a Coder client talks to coderd:
websocket (no compression) → yamux client → DRPC ``coder.tailnet.v2.Tailnet``."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import pytest
from controlplane import (
    AGENT_NOT_AUTHORIZED,
    AGENT_NOT_AUTHORIZED_DETAIL,
    AGENT_TOKEN_INVALID,
    AGENT_TOKEN_MISSING,
    INVALID_RESUME_TOKEN,
    NOT_FOUND,
    SIGNED_OUT,
    TOKEN,
    UNSUPPORTED_VERSION,
    ControlPlane,
    FakeAgent,
    derp_map_to_proto,
)

from agentconn.coder.api import CoderApi, Credentials
from agentconn.coder.derp import DerpClient, DerpMap
from agentconn.coder.errors import DrpcClosedError, DrpcError
from agentconn.coder.keys import DiscoPrivate, NodePrivate, random_client_address, random_node_id
from agentconn.coder.tailnet_pb import (
    CoordinateRequest,
    CoordinateResponse,
    Disconnect,
    Node,
    PeerUpdate,
    PeerUpdateKind,
    ReadyForHandshake,
    Timestamp,
    Tunnel,
    UpdateSelf,
)
from agentconn.coder.tailnet_rpc import CoordinateCall, TailnetClient
from agentconn.coder.yamux import Role
from agentconn.coder.yamux_aio import YamuxSession, yamux_over_websocket
from agentconn.proto.ports import agent_addresses
from agentconn.web.errors import WebSocketRejected
from agentconn.web.websocket import WebSocket, websocket_connect

NODE = PeerUpdateKind.NODE
DISCONNECTED = PeerUpdateKind.DISCONNECTED
LOST = PeerUpdateKind.LOST
RFH = PeerUpdateKind.READY_FOR_HANDSHAKE
TIMEOUT = 5.0


# ----- helpers -------------------------------------------------------------------------------

def make_node(addresses: list[str], *, derp: int = 1, endpoints: tuple[str, ...] = ()) -> Node:
    return Node(id=random_node_id(), as_of=Timestamp.from_time(time.time()),
                key=NodePrivate.generate().public.to_binary(),
                disco=str(DiscoPrivate.generate().public), preferred_derp=derp,
                addresses=tuple(addresses), allowed_ips=tuple(addresses), endpoints=endpoints)


def client_node(**kwargs: Any) -> Node:
    return make_node([f"{random_client_address()}/128"], **kwargs)


def agent_node(agent: FakeAgent, **kwargs: Any) -> Node:
    return make_node([f"{a}/128" for a in agent_addresses(agent.id)], **kwargs)


async def open_ws(plane: ControlPlane, path: str, headers: dict[str, str]) -> WebSocket:
    reader, writer = await asyncio.open_connection("127.0.0.1", plane.port)
    try:
        return await websocket_connect(reader, writer, f"127.0.0.1:{plane.port}", path,
                                       headers=headers, compression=False)
    except BaseException:
        writer.close()
        raise


class Coordinatee:
    """One coordinate connection: websocket → yamux client → ``Coordinate`` (stream 1)."""

    def __init__(self, ws: WebSocket, session: YamuxSession, tailnet: TailnetClient,
                 coord: CoordinateCall) -> None:
        self.ws = ws
        self.session = session
        self.tailnet = tailnet
        self.coord = coord
        self.pending: deque[PeerUpdate] = deque()

    @classmethod
    async def connect(cls, plane: ControlPlane, path: str, token: str) -> Coordinatee:
        ws = await open_ws(plane, path, {"Coder-Session-Token": token})
        session = yamux_over_websocket(ws, Role.CLIENT)
        tailnet = TailnetClient(session)
        return cls(ws, session, tailnet, await tailnet.coordinate())

    @classmethod
    async def client(cls, plane: ControlPlane, agent: FakeAgent) -> Coordinatee:
        async with CoderApi(Credentials(plane.url, TOKEN)) as api:
            _, _, path, headers = api.coordinate_target(agent.id)
        return await cls.connect(plane, path, headers["Coder-Session-Token"])

    @classmethod
    async def agent(cls, plane: ControlPlane, agent: FakeAgent) -> Coordinatee:
        return await cls.connect(plane, "/api/v2/workspaceagents/me/coordinate?version=2.0",
                                 agent.token)

    async def send(self, **fields: Any) -> None:
        await self.coord.send(CoordinateRequest(**fields))

    async def response(self, timeout: float = TIMEOUT) -> CoordinateResponse | None:
        async with asyncio.timeout(timeout):
            return await self.coord.recv()

    async def update(self, timeout: float = TIMEOUT) -> PeerUpdate:
        """The next peer update (an error response fails the test)."""
        while not self.pending:
            response = await self.response(timeout)
            assert response is not None, "the coordinator closed the stream"
            assert not response.error, response.error
            self.pending.extend(response.peer_updates)
        return self.pending.popleft()

    async def expect(self, kind: PeerUpdateKind, peer: uuid.UUID,
                     reason: str | None = None) -> PeerUpdate:
        update = await self.update()
        assert (PeerUpdateKind(update.kind), update.uuid) == (kind, peer), update
        if reason is not None:
            assert update.reason == reason, update
        return update

    async def expect_nothing(self, delay: float = 0.2) -> None:
        assert not self.pending
        with pytest.raises(TimeoutError):
            response = await self.response(delay)
            pytest.fail(f"unexpected response {response}")

    async def expect_closed(self) -> None:
        """The coordinator ended the stream (DRPC Close, no error text)."""
        assert not self.pending
        assert await self.response() is None

    async def close(self) -> None:
        await self.session.close()


async def wait_for(predicate: Any, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    cp = ControlPlane()
    await cp.start()
    try:
        yield cp
    finally:
        await cp.close()


async def client_peer_id(plane: ControlPlane) -> uuid.UUID:
    """The id the coordinator gave the (one) client peer, once it is registered."""
    def clients() -> list[uuid.UUID]:
        return [p.id for p in plane.coordinator_peers().values() if p.kind == "client"]

    await wait_for(clients)
    (peer,) = clients()
    return peer


async def tunnel_pair(plane: ControlPlane) -> tuple[FakeAgent, Coordinatee, Coordinatee,
                                                    uuid.UUID]:
    """An agent and a client that exchanged nodes: (agent, agent conn, client conn, client id)."""
    agent = plane.add_workspace("dev", "main").agents[0]
    a = await Coordinatee.agent(plane, agent)
    await a.send(update_self=UpdateSelf(agent_node(agent)))
    c = await Coordinatee.client(plane, agent)
    await c.send(update_self=UpdateSelf(client_node()))
    await c.send(add_tunnel=Tunnel.to(agent.id))
    await c.expect(NODE, agent.id, "add tunnel")
    client_id = await client_peer_id(plane)
    await a.expect(NODE, client_id, "add tunnel")
    return agent, a, c, client_id


# ----- the endpoint: errors before the websocket -----------------------------------------------

async def rejected(plane: ControlPlane, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {} if token is None else {"Coder-Session-Token": token}
    with pytest.raises(WebSocketRejected) as err:
        ws = await open_ws(plane, path, headers)
        await ws.close()
    body = err.value.body
    assert body.endswith(b"\n")
    assert err.value.headers["content-type"] == "application/json; charset=utf-8"
    return err.value.status, json.loads(body)


async def test_coordinate_endpoint_errors(plane: ControlPlane) -> None:
    agent = plane.add_workspace("dev", "main").agents[0]
    path = f"/api/v2/workspaceagents/{agent.id}/coordinate"
    assert await rejected(plane, path + "?version=2.0", None) == (401, {
        "message": SIGNED_OUT,
        "detail": 'Cookie "coder_session_token" or query parameter must be provided.'})
    assert await rejected(plane, path + "?version=2.0", "abcdefghij-wrong") == (401, {
        "message": SIGNED_OUT, "detail": "API key secret is invalid."})
    status, body = await rejected(plane, "/api/v2/workspaceagents/nope/coordinate?version=2.0")
    assert (status, body["message"]) == (400, 'Invalid UUID "nope".')
    assert await rejected(plane, f"/api/v2/workspaceagents/{uuid.uuid4()}/coordinate"
                                 "?version=2.0") == (404, {"message": NOT_FOUND})

    def unsupported(detail: str) -> tuple[int, Any]:
        return 400, {"message": UNSUPPORTED_VERSION,
                     "validations": [{"field": "version", "detail": detail}]}

    assert await rejected(plane, path) == unsupported("version 1.0 is no longer supported")
    assert await rejected(plane, path + "?version=") == unsupported(
        "version 1.0 is no longer supported")
    for version, detail in [
        ("2", "invalid version string: 2"),
        ("2.0.1", "invalid version string: 2.0.1"),
        ("x.0", "invalid major version: x.0"),
        ("2.y", "invalid minor version: 2.y"),
        ("3.0", "server is at version 2.5, behind requested major version 3.0"),
        ("2.6", "server is at version 2.5, behind requested minor version 2.6"),
        ("1.9", "version 1.9 is no longer supported"),
        ("<1>.0", "invalid major version: <1>.0"),       # the body escapes < > as Go does
    ]:
        assert await rejected(plane, f"{path}?version={version}") == unsupported(detail)
    assert await rejected(plane, path + "?version=2.0&resume_token=abc") == (401, {
        "message": INVALID_RESUME_TOKEN,
        "detail": "parse resume token: token is not signed by this server",
        "validations": [{"field": "resume_token", "detail": INVALID_RESUME_TOKEN}]})
    for version in ("2.0", "2.3", "2.5"):
        ws = await open_ws(plane, f"{path}?version={version}", {"Coder-Session-Token": TOKEN})
        assert ws.subprotocol is None and not ws.compressed
        await ws.close()
    # not a websocket handshake: coder/websocket's 426, then coderd's JSON
    reader, writer = await asyncio.open_connection("127.0.0.1", plane.port)
    writer.write(f"GET {path}?version=2.0 HTTP/1.1\r\nHost: x\r\nCoder-Session-Token: {TOKEN}"
                 "\r\nConnection: close\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, text = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 426 ")
    first, second, _ = text.split(b"\n")
    assert first == (b'WebSocket protocol violation: Connection header "close" does not '
                     b"contain Upgrade")
    assert json.loads(second)["message"] == "Failed to accept websocket."


async def test_agent_endpoint_errors(plane: ControlPlane) -> None:
    agent = plane.add_workspace("dev", "main").agents[0]
    path = "/api/v2/workspaceagents/me/coordinate?version=2.0"
    assert await rejected(plane, path, None) == (401, {"message": AGENT_TOKEN_MISSING})
    assert await rejected(plane, path, TOKEN) == (401, {
        "message": AGENT_TOKEN_INVALID,
        "detail": f"An agent token must be a valid UUIDv4. (len {len(TOKEN)})"})
    assert await rejected(plane, path, str(uuid.uuid4())) == (401, {
        "message": AGENT_NOT_AUTHORIZED, "detail": AGENT_NOT_AUTHORIZED_DETAIL})
    status, body = await rejected(plane, "/api/v2/workspaceagents/me/coordinate", agent.token)
    assert (status, body["validations"][0]["detail"]) == (
        400, "version 1.0 is no longer supported")


# ----- the coordinator -------------------------------------------------------------------------

async def test_nodes_and_ready_for_handshake(plane: ControlPlane) -> None:
    agent = plane.add_workspace("dev", "main").agents[0]
    agent.status = "connecting"
    a = await Coordinatee.agent(plane, agent)
    c = await Coordinatee.client(plane, agent)
    try:
        await wait_for(lambda: agent.status == "connected")
        await c.send(add_tunnel=Tunnel.to(agent.id))
        mine = client_node()
        await c.send(update_self=UpdateSelf(mine))
        client_id = await client_peer_id(plane)
        got = await a.expect(NODE, client_id, "node update")
        assert got.node == mine
        theirs = agent_node(agent)
        await a.send(update_self=UpdateSelf(theirs))
        assert (await c.expect(NODE, agent.id, "node update")).node == theirs
        peers = plane.coordinator_peers()
        assert (peers[client_id].name, peers[client_id].tunnels, peers[client_id].node) == (
            "client", frozenset({agent.id}), mine)
        assert (peers[agent.id].name, peers[agent.id].kind, peers[agent.id].tunnels) == (
            "main", "agent", frozenset())
        # the agent acks the client's node: the client may start the handshake
        await a.send(ready_for_handshake=(ReadyForHandshake(client_id.bytes),))
        update = await c.expect(RFH, agent.id)
        assert update.node is None and update.reason == ""
        # an RFH for a stranger is answered, the stream stays open
        stranger = uuid.uuid4()
        await a.send(ready_for_handshake=(ReadyForHandshake(stranger.bytes),))
        response = await a.response()
        assert response == CoordinateResponse(
            error=f'you do not share a tunnel with "{stranger}"')
        # the same node again is not forwarded, a changed one is
        await a.send(update_self=UpdateSelf(theirs))
        await c.expect_nothing()
        newer = agent_node(agent, endpoints=("192.0.2.1:41641",))
        await a.send(update_self=UpdateSelf(newer))
        assert (await c.expect(NODE, agent.id, "node update")).node == newer
    finally:
        await c.close()
        await a.close()


async def test_add_tunnel_and_init_reasons(plane: ControlPlane) -> None:
    agent, a, c, client_id = await tunnel_pair(plane)  # both NODEs with "add tunnel"
    try:
        # the agent reconnects: the client sees it LOST, the new agent stream gets the client
        # node at once ("init"); the client's tunnel survives
        await a.close()
        await c.expect(LOST, agent.id, "lost")
        await wait_for(lambda: agent.status == "disconnected")
        a = await Coordinatee.agent(plane, agent)
        await a.expect(NODE, client_id, "init")
        assert agent.status == "connected"
        await a.send(update_self=UpdateSelf(agent_node(agent)))
        await c.expect(NODE, agent.id, "node update")
    finally:
        await c.close()
        await a.close()


async def test_replaced_agent_connection(plane: ControlPlane) -> None:
    agent, a, c, client_id = await tunnel_pair(plane)
    second = await Coordinatee.agent(plane, agent)
    try:
        await second.expect(NODE, client_id, "init")
        await a.expect_closed()           # the old stream is closed, no LOST to the client
        await c.expect_nothing()
        assert plane.coordinator_peers()[agent.id].overwrites == 1
        assert agent.status == "connected"
    finally:
        await second.close()
        await a.close()
        await c.close()


async def test_remove_tunnel(plane: ControlPlane) -> None:
    agent, a, c, client_id = await tunnel_pair(plane)
    try:
        await c.send(remove_tunnel=Tunnel.to(agent.id))
        await c.expect(DISCONNECTED, agent.id, "remove tunnel")
        await a.expect(DISCONNECTED, client_id, "remove tunnel")
        assert plane.coordinator_peers()[client_id].tunnels == frozenset()
        await a.send(update_self=UpdateSelf(agent_node(agent)))
        await c.expect_nothing()
        await a.send(ready_for_handshake=(ReadyForHandshake(client_id.bytes),))
        assert await a.response() == CoordinateResponse(
            error=f'you do not share a tunnel with "{client_id}"')
    finally:
        await c.close()
        await a.close()


async def test_graceful_disconnect(plane: ControlPlane) -> None:
    _, a, c, client_id = await tunnel_pair(plane)
    try:
        await c.send(disconnect=Disconnect())
        await a.expect(DISCONNECTED, client_id, "graceful disconnect")
        await c.expect_closed()
        assert client_id not in plane.coordinator_peers()
        with pytest.raises(DrpcClosedError, match="remote closed the stream"):
            await c.send(update_self=UpdateSelf(client_node()))
    finally:
        await c.close()
        await a.close()


@pytest.mark.parametrize("how", ["websocket", "close_send"])
async def test_lost_client(plane: ControlPlane, how: str) -> None:
    agent, a, c, client_id = await tunnel_pair(plane)
    try:
        if how == "websocket":
            c.ws.abort()                   # the connection drops, no close handshake
        else:
            await c.coord.close_send()     # the stream ends without Disconnect
        await a.expect(LOST, client_id, "lost")
        if how == "close_send":
            await c.expect_closed()
        await wait_for(lambda: client_id not in plane.coordinator_peers())
        # its tunnel is gone with it
        await a.send(update_self=UpdateSelf(agent_node(agent)))
        await a.expect_nothing()
    finally:
        await c.close()
        await a.close()


@pytest.mark.parametrize("request_, error", [
    (lambda agent: CoordinateRequest(add_tunnel=Tunnel.to(uuid.UUID(int=7))),
     lambda agent: f"invalid agent id, expected {agent.id}, got {uuid.UUID(int=7)}"),
    (lambda agent: CoordinateRequest(add_tunnel=Tunnel(b"x" * 15)),
     lambda agent: "parse add tunnel id: invalid UUID (got 15 bytes)"),
    (lambda agent: CoordinateRequest(update_self=UpdateSelf(make_node(["fd7a:115c:a1e0::/64"]))),
     lambda agent: "invalid address bits, expected 128, got 64"),
    (lambda agent: CoordinateRequest(update_self=UpdateSelf(make_node(["fd7a:115c:a1e0::1"]))),
     lambda agent: 'parse node address: netip.ParsePrefix("fd7a:115c:a1e0::1"): no \'/\''),
    (lambda agent: CoordinateRequest(ready_for_handshake=(ReadyForHandshake(agent.id.bytes),)),
     lambda agent: "clients may not send ready_for_handshake"),
], ids=["other-agent", "bad-uuid", "slash64", "no-prefix", "rfh"])
async def test_client_authorization(plane: ControlPlane, request_: Any, error: Any) -> None:
    agent, a, c, client_id = await tunnel_pair(plane)
    try:
        await c.coord.send(request_(agent))
        await c.expect_closed()                 # DRPC Close, no error text
        await a.expect(LOST, client_id, "lost")
        assert plane.coordinator.errors == [(client_id, f"authorize request: {error(agent)}")]
        assert client_id not in plane.coordinator_peers()
    finally:
        await c.close()
        await a.close()


@pytest.mark.parametrize("request_, error", [
    (lambda agent, client: CoordinateRequest(add_tunnel=Tunnel.to(client)),
     lambda agent: "agents cannot open tunnels"),
    (lambda agent, client: CoordinateRequest(update_self=UpdateSelf(client_node())),
     None),
    (lambda agent, client: CoordinateRequest(
        update_self=UpdateSelf(make_node([f"{agent_addresses(agent.id)[0]}/64"]))),
     lambda agent: "invalid address bits, expected 128, got 64"),
], ids=["add-tunnel", "foreign-address", "slash64"])
async def test_agent_authorization(plane: ControlPlane, request_: Any, error: Any) -> None:
    agent, a, c, client_id = await tunnel_pair(plane)
    try:
        req = request_(agent, client_id)
        await a.coord.send(req)
        await a.expect_closed()
        await c.expect(LOST, agent.id, "lost")
        expected = (error(agent) if error is not None else
                    f"invalid node address, got {req.update_self.node.addresses[0][:-4]}")
        assert plane.coordinator.errors == [(agent.id, f"authorize request: {expected}")]
        await wait_for(lambda: agent.status == "disconnected")
    finally:
        await c.close()
        await a.close()


async def test_legacy_agent_address_is_accepted(plane: ControlPlane) -> None:
    agent, a, c, _ = await tunnel_pair(plane)
    try:
        node = make_node(["fd7a:115c:a1e0:49d6:b259:b7ac:b1b2:48f4/128"])
        await a.send(update_self=UpdateSelf(node))
        assert (await c.expect(NODE, agent.id, "node update")).node == node
    finally:
        await c.close()
        await a.close()


async def test_full_response_buffer_is_a_failed_update() -> None:
    plane = ControlPlane(response_buffer=64)
    await plane.start()
    try:
        agent, a, c, client_id = await tunnel_pair(plane)
        try:
            # the client stops reading: its stream's window and the server's write buffer fill
            # (~512 KiB), then its 64 buffered responses; the next update drops it
            endpoints = tuple(f"[2001:db8::{i:x}]:41641" for i in range(100))  # 2.5 KB nodes
            sent = 0
            async with asyncio.timeout(20):
                while client_id in plane.coordinator_peers():
                    await a.send(update_self=UpdateSelf(agent_node(agent, endpoints=endpoints)))
                    sent += 1
                    await asyncio.sleep(0.001)  # let the coordinator forward it meanwhile
            assert sent > 200
            await a.expect(DISCONNECTED, client_id, "failed update")
            assert plane.coordinator.errors == [
                (client_id, "failed to update mapping: would block")]
            delivered = 0
            while (response := await c.response()) is not None:  # what was queued, then Close
                assert [u.kind for u in response.peer_updates] == [NODE]
                delivered += 1
            assert delivered == sent - 1   # all but the update that found the buffer full
        finally:
            await c.close()
            await a.close()
    finally:
        await plane.close()


async def test_websocket_heartbeat_is_answered() -> None:
    plane = ControlPlane(heartbeat=0.02)     # coderd pings every 15 s
    await plane.start()
    try:
        agent, a, c, _ = await tunnel_pair(plane)
        try:
            await asyncio.sleep(0.2)             # ~10 pings, answered by the clients' readers
            await a.send(update_self=UpdateSelf(agent_node(agent)))
            await c.expect(NODE, agent.id, "node update")
        finally:
            await c.close()
            await a.close()
    finally:
        await plane.close()


# ----- DERP maps, other RPCs, switches ---------------------------------------------------------

async def test_stream_derp_maps(plane: ControlPlane) -> None:
    agent = plane.add_workspace("dev", "main").agents[0]
    c = await Coordinatee.client(plane, agent)
    try:
        maps = await c.tailnet.stream_derp_maps()
        first = await maps.recv()
        assert first is not None
        assert first == derp_map_to_proto(plane.default_derp_map())
        node = first.regions[1].nodes[0]
        assert (node.name, node.host_name, node.derp_port, node.stun_port, node.force_http,
                node.ipv6) == ("test0", "127.0.0.1", plane.port, -1, True, "none")
        assert first.home_params is not None
        changed = DerpMap.from_json(plane.default_derp_map()).to_json()
        changed["Regions"]["2"] = dict(changed["Regions"]["1"], RegionID=2, RegionCode="two")
        plane.set_derp_map(changed)
        second = await maps.recv()
        assert second is not None
        assert sorted(second.regions) == [1, 2] and second.regions[2].region_code == "two"
        async with CoderApi(Credentials(plane.url, TOKEN)) as api:  # REST serves it too
            assert "2" in (await api.connection_info(agent.id)).derp_map["Regions"]
        plane.set_derp_map(changed)                # unchanged: nothing sent
        plane.set_derp_map(None)                   # nil map: the stream ends
        assert await maps.recv() is None
        # the coordinate stream is not affected
        await c.send(add_tunnel=Tunnel.to(agent.id))
        await maps.close()
    finally:
        await c.close()


async def test_unknown_rpc_and_telemetry(plane: ControlPlane) -> None:
    agent = plane.add_workspace("dev", "main").agents[0]
    c = await Coordinatee.client(plane, agent)
    try:
        with pytest.raises(DrpcError) as err:
            await c.tailnet.drpc.unary("/coder.tailnet.v2.Tailnet/RefreshResumeToken", b"")
        assert err.value.message == ('protocol error: unknown rpc: '
                                     '"/coder.tailnet.v2.Tailnet/RefreshResumeToken"')
        assert err.value.unimplemented
        assert await c.tailnet.drpc.unary("/coder.tailnet.v2.Tailnet/PostTelemetry",
                                          b"") == b""
    finally:
        await c.close()


async def test_drop_coordinators_and_agent_status(plane: ControlPlane) -> None:
    agent, a, c, _ = await tunnel_pair(plane)
    try:
        async with CoderApi(Credentials(plane.url, TOKEN)) as api:
            assert (await api.get(f"/api/v2/workspaceagents/{agent.id}"))["status"] == \
                "connected"
            await plane.drop_coordinators()
            assert plane.coordinator_peers() == {}
            assert (await api.get(f"/api/v2/workspaceagents/{agent.id}"))["status"] == \
                "disconnected"
        for peer in (a, c):
            with pytest.raises(DrpcClosedError):
                while await peer.response() is not None:
                    pass
        # a client reconnects; the agent too: the client must add its tunnel again
        a2 = await Coordinatee.agent(plane, agent)
        c2 = await Coordinatee.client(plane, agent)
        try:
            await a2.send(update_self=UpdateSelf(agent_node(agent)))
            await c2.send(add_tunnel=Tunnel.to(agent.id))
            await c2.expect(NODE, agent.id, "add tunnel")
        finally:
            await c2.close()
            await a2.close()
    finally:
        await c.close()
        await a.close()


async def test_close_is_coordinator_close_and_leaves_no_task() -> None:
    before = asyncio.all_tasks()
    plane = ControlPlane()
    await plane.start()
    agent, a, c, _ = await tunnel_pair(plane)
    maps = await c.tailnet.stream_derp_maps()
    assert await maps.recv() is not None
    region = DerpMap.from_json(plane.default_derp_map()).regions[1]
    derp = DerpClient(NodePrivate.generate(), region)
    await derp.connect()
    await plane.close()
    # peers are removed one by one, each as LOST to those still there (the agent went first)
    await a.expect_closed()
    await c.expect(LOST, agent.id, "coordinator close")
    await c.expect_closed()
    await derp.close()
    await c.close()
    await a.close()
    await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert left == set(), left


async def test_derp_switches(plane: ControlPlane) -> None:
    region = DerpMap.from_json(plane.default_derp_map()).regions[1]
    plane.fail_derp_upgrade = True
    one = DerpClient(NodePrivate.generate(), region)
    await one.connect()
    try:
        assert one.forced_websocket and one.transport_kind == "websocket"
        assert plane.derp.stats()["accepts_websocket"] == 1
        plane.fail_derp_upgrade = False
        two = DerpClient(NodePrivate.generate(), region)
        await two.connect()
        try:
            assert two.transport_kind == "upgrade"
            old_key = plane.derp.public_key
            await plane.restart_derp()
            assert plane.derp.public_key != old_key
            await wait_for(lambda: two.connected and two.server_key == plane.derp.public_key,
                           10)
            assert plane.derp.stats()["accepts_upgrade"] == 1
        finally:
            await two.close()
    finally:
        await one.close()
