"""A small coderd for tests (coder-control-plane.md §8.2): REST, coordinator and DERP on one port.

What it serves, over plain HTTP on 127.0.0.1:

- REST (§1.3–§1.5): the workspace lookup, an agent by id, the connection info with a DERP map
  pointing at this server (region 1, Coder's integration-harness shape), with coderd's auth
  checks and error bodies.
- ``GET /api/v2/workspaceagents/{agent_id}/coordinate`` (§1.6): the client endpoint. coderd's
  order: session token (401) → agent (400 bad UUID, 404) → ``version`` (absent = ``1.0``, 400
  ``Unknown or unsupported API version``) → ``resume_token`` (none are issued, so any is a 401)
  → websocket accept without compression or subprotocol (426/405/400 from coder/websocket for
  a request that is not a websocket handshake) → yamux server → DRPC ``coder.tailnet.v2.Tailnet``
  (``Coordinate``, ``StreamDERPMaps``, ``PostTelemetry``; anything else gets
  ``protocol error: unknown rpc: "<name>"``). The peer id is a fresh uuid4 per connection, the
  peer is named ``client`` and authorized by :func:`client_authorizer` (``ClientCoordinateeAuth``).
- ``GET /api/v2/workspaceagents/me/coordinate?version=2.0`` with ``Coder-Session-Token: <agent
  token>`` (:attr:`FakeAgent.token`, a uuid4 as coderd's agent tokens are): the same stack for
  an agent peer whose id is the agent's UUID, named after the agent, authorized by
  :func:`agent_authorizer` (``AgentCoordinateeAuth``). Real agents coordinate over the agent
  API's DRPC connection, which this server does not model; this endpoint lets agentconn's own
  agent join the tailnet. While such a peer is registered the agent's REST ``status`` is
  ``connected``, afterwards ``disconnected``.
- ``/derp``, ``/derp/probe``, ``/derp/latency-check``: a :class:`DerpServer` relay (§5.8).

The coordinator (:class:`Coordinator`) is a transcription of coderd's in-memory ``core``
(``tailnet/coordinator.go``, ``peer.go``, ``tunnel.go``; spec §4.8): peers by id (a new
connection with the same id replaces the old one, whose stream is closed), tunnels by source,
NODE updates per recipient with duplicates suppressed (``sent`` map, byte-equal nodes), LOST and
DISCONNECTED only for peers a NODE was sent for, ``init`` / ``add tunnel`` / ``node update`` /
``remove tunnel`` / ``graceful disconnect`` / ``lost`` / ``failed update`` / ``coordinator close``
reasons, READY_FOR_HANDSHAKE forwarding with the ``you do not share a tunnel with "<uuid>"`` error
response, a bounded response buffer (512; full ⇒ that peer is removed with ``failed update``).
A request that fails authorization ends the peer's request loop: the peer is removed as LOST
and its stream gets a DRPC Close — no error text reaches it (the AGPL coordinator's behaviour).
Such failures are logged and kept in :attr:`Coordinator.errors` for tests.

Test switches (as Coder's integration harness has them): :attr:`ControlPlane.fail_derp_upgrade`,
:attr:`ControlPlane.derp_force_websockets`, :meth:`ControlPlane.restart_derp`,
:meth:`ControlPlane.drop_coordinators`, :meth:`ControlPlane.set_derp_map`, and
:meth:`ControlPlane.coordinator_peers` for introspection.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Self

from agentconn.coder import stun
from agentconn.coder.derp import DerpMap, DerpServer
from agentconn.coder.drpc_aio import Call, TypedCall
from agentconn.coder.errors import DrpcError, ProtobufError
from agentconn.coder.tailnet_pb import (
    CoordinateRequest,
    CoordinateResponse,
    DERPMap,
    DERPNode,
    DERPRegion,
    HomeParams,
    Node,
    PeerUpdate,
    PeerUpdateKind,
    ReadyForHandshake,
    StreamDERPMapsRequest,
)
from agentconn.coder.tailnet_rpc import RPC_POST_TELEMETRY, tailnet_server
from agentconn.coder.yamux import Role
from agentconn.coder.yamux_aio import YamuxSession, yamux_over_websocket
from agentconn.proto.ports import LEGACY_AGENT_IP, agent_addresses
from agentconn.web.server import HttpServer, Request, ResponseLike, ServerResponse
from agentconn.web.websocket import WebSocket

_log = logging.getLogger(__name__)

TOKEN = "abcdefghij-0123456789abcdefghijkl"     # <id 10>-<secret 22> (SplitAPIToken)
SIGNED_OUT = ("You are signed out or your session has expired. Please sign in again to "
              "continue.")
NOT_FOUND = "Resource not found or you do not have access to this resource"
UNSUPPORTED_VERSION = "Unknown or unsupported API version"
INVALID_RESUME_TOKEN = "Invalid resume token"
AGENT_TOKEN_MISSING = 'Cookie "coder_session_token" must be provided.'
AGENT_TOKEN_INVALID = "Workspace agent token invalid."
AGENT_NOT_AUTHORIZED = "Workspace agent not authorized."
AGENT_NOT_AUTHORIZED_DETAIL = (
    "The agent cannot authenticate until the workspace provision job has been completed. If the "
    "job is no longer running, this agent is invalid.")

#: The tailnet API version this server speaks (``proto.CurrentVersion``; §4.7).
API_VERSION = (2, 5)
#: Responses buffered per peer before it is dropped (``ResponseBufferSize``).
RESPONSE_BUFFER_SIZE = 512
#: Peer updates per CoordinateResponse in a batch (``MaxPeerUpdatesPerMessage``).
MAX_PEER_UPDATES_PER_MESSAGE = 1024
#: Seconds between websocket pings on a coordinate connection (``httpapi.Heartbeat``).
HEARTBEAT_INTERVAL = 15.0

_NODE = PeerUpdateKind.NODE
_DISCONNECTED = PeerUpdateKind.DISCONNECTED
_LOST = PeerUpdateKind.LOST
_RFH = PeerUpdateKind.READY_FOR_HANDSHAKE


# ----- coderd's JSON error bodies ------------------------------------------------------------

def go_json(obj: Any) -> bytes:
    """JSON as Go's ``json.Encoder`` writes it: compact, HTML-escaped, trailing newline."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return (text + "\n").encode()


def coder_error(status: int, message: str, detail: str = "",
                validations: Iterable[tuple[str, str]] = ()) -> ServerResponse:
    """A ``codersdk.Response`` body as coderd sends it (detail, validations omitted when empty)."""
    body: dict[str, Any] = {"message": message}
    if detail:
        body["detail"] = detail
    checks = [{"field": name, "detail": text} for name, text in validations]
    if checks:
        body["validations"] = checks
    return ServerResponse(status, [("Content-Type", "application/json; charset=utf-8")],
                          go_json(body))


def validate_version(version: str, supported: tuple[int, int] = API_VERSION) -> str | None:
    """``apiversion.Validate`` for a server at ``supported`` with no older majors: None if the
    version is accepted, else the validation detail."""
    parts = version.split(".")
    if len(parts) != 2:
        return f"invalid version string: {version}"
    major, minor = (_go_atoi(p) for p in parts)
    if major is None:
        return f"invalid major version: {version}"
    if minor is None:
        return f"invalid minor version: {version}"
    smaj, smin = supported
    if major > smaj:
        return f"server is at version {smaj}.{smin}, behind requested major version {version}"
    if major == smaj:
        if minor > smin:
            return (f"server is at version {smaj}.{smin}, behind requested minor version "
                    f"{version}")
        return None
    return f"version {version} is no longer supported"


def _go_atoi(text: str) -> int | None:
    """``strconv.Atoi``: optional sign, ASCII digits, 64-bit range."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        return None
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 63) else None


def _websocket_refusal(request: Request) -> ServerResponse | None:
    """What ``websocket.Accept`` (coder/websocket) answers a request that is no websocket
    handshake, followed by the JSON coderd appends (``Failed to accept websocket.``)."""
    def tokens(name: str) -> list[str]:
        return [t.strip().lower() for v in request.headers.get_all(name) for t in v.split(",")]

    headers = [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")]
    upgrade_headers = [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    if request.http_version != "1.1":
        status, err = 426, ("WebSocket protocol violation: handshake request must be at least "
                            f'HTTP/1.1: "HTTP/{request.http_version}"')
    elif "upgrade" not in tokens("connection"):
        status, err = 426, ("WebSocket protocol violation: Connection header "
                            f'{json.dumps(request.headers.get("connection", ""))} does not '
                            "contain Upgrade")
        headers += upgrade_headers
    elif "websocket" not in tokens("upgrade"):
        status, err = 426, ("WebSocket protocol violation: Upgrade header "
                            f'{json.dumps(request.headers.get("upgrade", ""))} does not contain '
                            "websocket")
        headers += upgrade_headers
    elif request.method != "GET":
        status, err = 405, ("WebSocket protocol violation: handshake request method is not GET "
                            f"but {json.dumps(request.method)}")
    elif request.headers.get("sec-websocket-version", "") != "13":
        status, err = 400, ("unsupported WebSocket protocol version (only 13 is supported): "
                            f'{json.dumps(request.headers.get("sec-websocket-version", ""))}')
        headers.append(("Sec-WebSocket-Version", "13"))
    elif not request.headers.get("sec-websocket-key", ""):
        status, err = 400, "WebSocket protocol violation: missing Sec-WebSocket-Key"
    else:
        return None
    body = (err + "\n").encode() + go_json({
        "message": "Failed to accept websocket.",
        "detail": f"failed to accept WebSocket connection: {err}"})
    return ServerResponse(status, headers, body)


# ----- REST model ----------------------------------------------------------------------------

@dataclass
class FakeAgent:
    name: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    status: str = "connected"
    lifecycle_state: str = "ready"
    token: str = field(default_factory=lambda: str(uuid.uuid4()))
    """The agent token (coderd's are UUIDs): ``Coder-Session-Token`` on ``…/me/coordinate``."""

    def json(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": self.name, "status": self.status,
                "lifecycle_state": self.lifecycle_state, "api_version": "2.5",
                "operating_system": "linux", "architecture": "amd64"}


@dataclass
class FakeWorkspace:
    owner: str
    name: str
    agents: list[FakeAgent]
    status: str = "running"
    transition: str = "start"
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    def json(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": self.name, "owner_name": self.owner,
                "owner_id": str(uuid.UUID(int=1)),
                "latest_build": {"status": self.status, "transition": self.transition,
                                 "resources": [{"name": "main",
                                                "agents": [a.json() for a in self.agents]},
                                               {"name": "volume"}]}}


def derp_map_to_proto(derp_map: Mapping[str, Any]) -> DERPMap:
    """``tailnet.DERPMapToProto``: the JSON ``tailcfg.DERPMap`` (Go field names) as protobuf."""
    home = derp_map.get("HomeParams") or {}
    scores = {int(k): float(v) for k, v in (home.get("RegionScore") or {}).items()}
    regions: dict[int, DERPRegion] = {}
    for key, region in (derp_map.get("Regions") or {}).items():
        if region is None:
            continue
        nodes = tuple(
            DERPNode(name=n.get("Name", ""), region_id=n.get("RegionID", 0),
                     host_name=n.get("HostName", ""), cert_name=n.get("CertName", ""),
                     ipv4=n.get("IPv4", ""), ipv6=n.get("IPv6", ""),
                     stun_port=n.get("STUNPort", 0), stun_only=bool(n.get("STUNOnly")),
                     derp_port=n.get("DERPPort", 0),
                     insecure_for_tests=bool(n.get("InsecureForTests")),
                     force_http=bool(n.get("ForceHTTP")), stun_test_ip=n.get("STUNTestIP", ""),
                     can_port_80=bool(n.get("CanPort80")))
            for n in region.get("Nodes") or ())
        regions[int(key)] = DERPRegion(
            region_id=region.get("RegionID", 0), embedded_relay=bool(region.get("EmbeddedRelay")),
            region_code=region.get("RegionCode", ""), region_name=region.get("RegionName", ""),
            avoid=bool(region.get("Avoid")), nodes=nodes)
    return DERPMap(home_params=HomeParams(region_score=scores), regions=regions)


# ----- authorization of coordinate requests (tailnet/tunnel.go) -------------------------------

Authorizer = Callable[[CoordinateRequest], "str | None"]


def _uuid_from_bytes(raw: bytes) -> uuid.UUID | str:
    """``uuid.FromBytes``: the UUID, or Go's error text."""
    if len(raw) != 16:
        return f"invalid UUID (got {len(raw)} bytes)"
    return uuid.UUID(bytes=raw)


def _parse_prefix(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | str:
    """``netip.ParsePrefix`` (host bits kept, as Go does): the prefix, or an error text."""
    where = f"netip.ParsePrefix({json.dumps(text)})"
    addr, slash, bits = text.rpartition("/")
    if not slash:
        return f"{where}: no '/'"
    if "%" in addr:
        return f"{where}: IPv6 zones cannot be present in a prefix"
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return f"{where}: ParseAddr({json.dumps(addr)}): unable to parse IP"
    if not re.fullmatch(r"0|[1-9][0-9]{0,2}", bits):
        return f'{where}: bad bits after slash: {json.dumps(bits)}'
    if int(bits) > ip.max_prefixlen:
        return f"{where}: prefix length out of range"
    return ipaddress.ip_network(f"{addr}/{bits}", strict=False)


def _node_addresses(request: CoordinateRequest) -> list[ipaddress.IPv6Address] | str:
    """The /128 addresses of ``update_self`` (every one must be a /128), or the error text."""
    node = request.update_self.node if request.update_self is not None else None
    out: list[ipaddress.IPv6Address] = []
    for text in node.addresses if node is not None else ():
        prefix = _parse_prefix(text)
        if isinstance(prefix, str):
            return f"parse node address: {prefix}"
        if prefix.prefixlen != 128:
            return f"invalid address bits, expected 128, got {prefix.prefixlen}"
        out.append(prefix.network_address)  # type: ignore[arg-type]
    return out


def client_authorizer(agent_id: uuid.UUID) -> Authorizer:
    """``ClientCoordinateeAuth{AgentID}``: tunnels only to ``agent_id``, /128 addresses, no
    ready_for_handshake."""
    def authorize(request: CoordinateRequest) -> str | None:
        if request.add_tunnel is not None:
            dst = _uuid_from_bytes(request.add_tunnel.id)
            if isinstance(dst, str):
                return f"parse add tunnel id: {dst}"
            if dst != agent_id:
                return f"invalid agent id, expected {agent_id}, got {dst}"
        addresses = _node_addresses(request)
        if isinstance(addresses, str):
            return addresses
        if request.ready_for_handshake:
            return "clients may not send ready_for_handshake"
        return None
    return authorize


def agent_authorizer(agent_id: uuid.UUID) -> Authorizer:
    """``AgentCoordinateeAuth{ID}``: no tunnels; addresses must be the agent's own /128s."""
    allowed = {*agent_addresses(agent_id), LEGACY_AGENT_IP}

    def authorize(request: CoordinateRequest) -> str | None:
        if request.add_tunnel is not None:
            return "agents cannot open tunnels"
        addresses = _node_addresses(request)
        if isinstance(addresses, str):
            return addresses
        for addr in addresses:
            if addr not in allowed:
                return f"invalid node address, got {addr}"
        return None
    return authorize


# ----- the coordinator core (tailnet/coordinator.go, peer.go) ---------------------------------

class _TunnelStore:
    """Tunnels src → dst, indexed both ways (``tunnelStore``)."""

    def __init__(self) -> None:
        self.by_src: dict[uuid.UUID, set[uuid.UUID]] = {}
        self.by_dst: dict[uuid.UUID, set[uuid.UUID]] = {}

    def add(self, src: uuid.UUID, dst: uuid.UUID) -> None:
        self.by_src.setdefault(src, set()).add(dst)
        self.by_dst.setdefault(dst, set()).add(src)

    def remove(self, src: uuid.UUID, dst: uuid.UUID) -> None:
        for index, a, b in ((self.by_src, src, dst), (self.by_dst, dst, src)):
            peers = index.get(a)
            if peers is not None:
                peers.discard(b)
                if not peers:
                    del index[a]

    def remove_all(self, src: uuid.UUID) -> None:
        """Every tunnel whose source is ``src`` (tunnels *to* it stay)."""
        for dst in list(self.by_src.get(src, ())):
            self.remove(src, dst)

    def tunnel_peers(self, peer: uuid.UUID) -> list[uuid.UUID]:
        return list(self.by_src.get(peer, set()) | self.by_dst.get(peer, set()))

    def exists(self, a: uuid.UUID, b: uuid.UUID) -> bool:
        """A tunnel a → b or b → a."""
        return b in self.by_src.get(a, ()) or b in self.by_dst.get(a, ())


_MISSING: Any = object()


class CoordinatorPeer:
    """One registered coordinate stream (``peer``): its node, what it was sent, and its bounded
    response queue, drained into its DRPC stream by the stream's handler."""

    def __init__(self, peer_id: uuid.UUID, name: str, kind: str, authorize: Authorizer, *,
                 agent: FakeAgent | None = None, buffer: int = RESPONSE_BUFFER_SIZE) -> None:
        self.id = peer_id
        self.name = name
        self.kind = kind  # "client" or "agent"
        self.authorize = authorize
        self.agent = agent  # clients: the agent of the URL; agents: themselves
        self.node: Node | None = None
        self.sent: dict[uuid.UUID, Node | None] = {}
        self.responses: deque[CoordinateResponse] = deque()
        self.buffer = buffer
        self.closed = False
        self.removing = False
        self.wake = asyncio.Event()
        self.overwrites = 0
        self.start = self.last_write = time.time()

    def __repr__(self) -> str:
        return f"<CoordinatorPeer {self.kind} {self.name} {self.id}>"

    def enqueue(self, response: CoordinateResponse) -> bool:
        """False when the buffer is full (Go's ``ErrWouldBlock``). A closed peer drops it."""
        if self.closed:
            return True
        if len(self.responses) >= self.buffer:
            return False
        self.responses.append(response)
        self.last_write = time.time()
        self.wake.set()
        return True

    def close(self) -> None:
        """``close(resps)``: what is queued is still sent, then the stream is closed."""
        self.closed = True
        self.wake.set()

    def _store(self, other: uuid.UUID, node: Node | None, kind: PeerUpdateKind,
               reason: str) -> PeerUpdate | None:
        """``storeMappingLocked``: the update to send, or None when none is needed."""
        sent = self.sent.get(other, _MISSING)
        if sent is _MISSING:
            if kind in (_LOST, _DISCONNECTED):
                return None
            if kind == _NODE:
                self.sent[other] = node
        elif kind in (_LOST, _DISCONNECTED):
            del self.sent[other]
        elif kind == _NODE:
            if _node_bytes(sent) == _node_bytes(node):
                return None
            self.sent[other] = node
        return PeerUpdate(id=other.bytes, node=node, kind=kind, reason=reason)

    def update_mapping(self, other: uuid.UUID, node: Node | None, kind: PeerUpdateKind,
                       reason: str) -> bool:
        update = self._store(other, node, kind, reason)
        return update is None or self.enqueue(CoordinateResponse(peer_updates=(update,)))

    def batch_update_mapping(self, others: Iterable[CoordinatorPeer | None],
                             kind: PeerUpdateKind, reason: str) -> bool:
        updates = []
        for other in others:
            if other is None or other.node is None:
                continue
            update = self._store(other.id, other.node, kind, reason)
            if update is not None:
                updates.append(update)
        for start in range(0, len(updates), MAX_PEER_UPDATES_PER_MESSAGE):
            chunk = tuple(updates[start:start + MAX_PEER_UPDATES_PER_MESSAGE])
            if not self.enqueue(CoordinateResponse(peer_updates=chunk)):
                return False
        return True


def _node_bytes(node: Node | None) -> bytes:
    return b"" if node is None else node.encode()


class CoordinatorClosedError(Exception):
    """The coordinator is closed (Go's ``ErrClosed``)."""


class Coordinator:
    """The in-memory coordinator core. Synchronous: every method runs to completion on the
    event loop, which stands in for Go's core mutex. ``on_added(peer)`` / ``on_removed(peer)``
    are called when a peer is registered / removed (not when it is replaced)."""

    def __init__(self, *, on_added: Callable[[CoordinatorPeer], None] | None = None,
                 on_removed: Callable[[CoordinatorPeer], None] | None = None) -> None:
        self.peers: dict[uuid.UUID, CoordinatorPeer] = {}
        self.tunnels = _TunnelStore()
        self.closed = False
        self.errors: list[tuple[uuid.UUID, str]] = []
        """(peer id, text) of every request that ended a peer's request loop with an error."""
        self._on_added = on_added
        self._on_removed = on_removed

    def init_peer(self, peer: CoordinatorPeer) -> None:
        """Register ``peer`` (replacing one with the same id) and queue the NODEs of its tunnel
        peers (``init``). Raises :class:`CoordinatorClosedError` once closed."""
        if self.closed:
            raise CoordinatorClosedError("coordinator is closed")
        old = self.peers.get(peer.id)
        if old is not None:
            _log.info("coordinator: %r overwritten by a new connection", old)
            old.close()
            peer.overwrites = old.overwrites + 1
        self.peers[peer.id] = peer
        others = [self.peers.get(o) for o in self.tunnels.tunnel_peers(peer.id)]
        if not peer.batch_update_mapping(others, _NODE, "init"):
            self._error(peer, "would block")
        if self._on_added is not None:
            self._on_added(peer)

    def handle_request(self, peer: CoordinatorPeer, request: CoordinateRequest) -> str | None:
        """``handleRequest``: None to go on reading; a text to stop the peer's request loop
        (empty when silently: the peer was removed or the coordinator closed)."""
        if self.closed or self.peers.get(peer.id) is not peer:
            return ""
        denied = peer.authorize(request)
        if denied is not None:
            return f"authorize request: {denied}"
        if request.update_self is not None:
            peer.node = request.update_self.node
            self._update_tunnel_peers(peer.id, peer.node, _NODE, "node update")
        if request.add_tunnel is not None:
            dst = _uuid_from_bytes(request.add_tunnel.id)
            if isinstance(dst, str):
                return f"unable to convert bytes to UUID: {dst}"
            if not self._add_tunnel(peer, dst):
                return "add tunnel failed: would block"
        if request.remove_tunnel is not None:
            dst = _uuid_from_bytes(request.remove_tunnel.id)
            if isinstance(dst, str):
                return f"unable to convert bytes to UUID: {dst}"
            if not self._remove_tunnel(peer, dst):
                return "remove tunnel failed: would block"
        if request.disconnect is not None:
            self._remove_peer(peer.id, _DISCONNECTED, "graceful disconnect")
        if request.ready_for_handshake:
            error = self._ready_for_handshake(peer, request.ready_for_handshake)
            if error is not None:
                return f"handle ack: {error}"
        return None

    def lost_peer(self, peer: CoordinatorPeer) -> None:
        """The peer's request stream ended without Disconnect: LOST (``lost``) to its tunnel
        peers. No-op if it was removed or replaced meanwhile."""
        if not self.closed and self.peers.get(peer.id) is peer:
            self._remove_peer(peer.id, _LOST, "lost")

    def close(self) -> None:
        """Every peer removed as LOST (``coordinator close``); no new peers."""
        if self.closed:
            return
        self.closed = True
        for peer_id in list(self.peers):
            if peer_id in self.peers:
                self._remove_peer(peer_id, _LOST, "coordinator close")

    # ----- internals (the ``…Locked`` methods) ---------------------------------------------

    def _error(self, peer: CoordinatorPeer, text: str) -> None:
        _log.info("coordinator: %r: %s", peer, text)
        self.errors.append((peer.id, text))

    def _update_tunnel_peers(self, peer_id: uuid.UUID, node: Node | None,
                             kind: PeerUpdateKind, reason: str) -> None:
        for other_id in self.tunnels.tunnel_peers(peer_id):
            other = self.peers.get(other_id)
            if other is None:
                continue
            if not other.update_mapping(peer_id, node, kind, reason):
                self._error(other, "failed to update mapping: would block")
                self._remove_peer(other.id, _DISCONNECTED, "failed update")

    def _add_tunnel(self, src: CoordinatorPeer, dst_id: uuid.UUID) -> bool:
        self.tunnels.add(src.id, dst_id)
        dst = self.peers.get(dst_id)
        if dst is None:
            return True
        if dst.node is not None and not src.update_mapping(dst_id, dst.node, _NODE,
                                                           "add tunnel"):
            self._remove_peer(src.id, _DISCONNECTED, "failed update")
            return False
        if src.node is not None and not dst.update_mapping(src.id, src.node, _NODE,
                                                           "add tunnel"):
            self._error(dst, "failed update of tunnel dst: would block")
            self._remove_peer(dst.id, _DISCONNECTED, "failed update")
        return True

    def _remove_tunnel(self, src: CoordinatorPeer, dst_id: uuid.UUID) -> bool:
        if not src.update_mapping(dst_id, None, _DISCONNECTED, "remove tunnel"):
            self._remove_peer(src.id, _DISCONNECTED, "failed update")
            return False
        dst = self.peers.get(dst_id)
        if dst is not None and not dst.update_mapping(src.id, None, _DISCONNECTED,
                                                      "remove tunnel"):
            self._error(dst, "failed to update: would block")
            self._remove_peer(dst.id, _DISCONNECTED, "failed update")
        self.tunnels.remove(src.id, dst_id)
        return True

    def _ready_for_handshake(self, src: CoordinatorPeer,
                             rfhs: Iterable[ReadyForHandshake]) -> str | None:
        for rfh in rfhs:
            dst_id = _uuid_from_bytes(rfh.id)
            if isinstance(dst_id, str):
                return f"unable to convert bytes to UUID: {dst_id}"
            if not self.tunnels.exists(src.id, dst_id):
                # racy on purpose in coderd: an answer, not a hang-up
                notice = CoordinateResponse(error=f'you do not share a tunnel with "{dst_id}"')
                if not src.enqueue(notice):
                    return "would block"
                continue
            dst = self.peers.get(dst_id)
            if dst is not None and not dst.enqueue(CoordinateResponse(peer_updates=(
                    PeerUpdate(id=src.id.bytes, kind=_RFH),))):
                return "would block"
        return None

    def _remove_peer(self, peer_id: uuid.UUID, kind: PeerUpdateKind, reason: str) -> None:
        peer = self.peers.get(peer_id)
        if peer is None or peer.removing:
            return
        # re-entry (a tunnel peer's "failed update" removing this one again) stops here; Go
        # would close the channel twice
        peer.removing = True
        self._update_tunnel_peers(peer_id, None, kind, reason)
        self.tunnels.remove_all(peer_id)
        peer.close()
        if self.peers.get(peer_id) is peer:
            del self.peers[peer_id]
        if self._on_removed is not None:
            self._on_removed(peer)


@dataclass(frozen=True)
class PeerInfo:
    """A snapshot of one coordinator peer, for tests (:meth:`ControlPlane.coordinator_peers`)."""

    id: uuid.UUID
    name: str
    kind: str
    """``client`` or ``agent``."""
    agent_id: uuid.UUID | None
    """Clients: the agent of the coordinate URL; agents: their own id."""
    tunnels: frozenset[uuid.UUID]
    """Destinations of the tunnels this peer opened."""
    node: Node | None
    """Its last ``update_self`` node."""
    overwrites: int


# ----- the server ----------------------------------------------------------------------------

@dataclass(eq=False)
class _CoordinateConnection:
    """One coordinate websocket: its yamux session and the DRPC handlers running on it."""

    peer_id: uuid.UUID
    name: str
    kind: str
    authorize: Authorizer
    agent: FakeAgent
    ws: WebSocket
    session: YamuxSession | None = None
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)
    coordinating: set[asyncio.Task[Any]] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def _first(*aws: Awaitable[Any]) -> None:
    """Wait until the first of ``aws`` completes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class StunResponder(asyncio.DatagramProtocol):
    """A tiny STUN server on 127.0.0.1: answers each binding request with the address it came
    from (XOR-MAPPED-ADDRESS); anything else is counted and ignored."""

    def __init__(self) -> None:
        self.port = 0
        self.requests = 0
        self.ignored = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self,
                                                           local_addr=("127.0.0.1", 0))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        tx_id = stun.parse_request(data)
        if tx_id is None or self._transport is None:
            self.ignored += 1
            return
        self.requests += 1
        self._transport.sendto(
            stun.binding_response(tx_id, (ipaddress.ip_address(addr[0]), addr[1])), addr)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class ControlPlane:
    """A test coderd on 127.0.0.1 (see module doc).

    ``token``/``user``: the session token accepted on REST and the client coordinate endpoint,
    and the ``me`` user. ``api_version``: the tailnet API version served (``version`` query
    check). ``response_buffer``: responses queued per coordinator peer before it is dropped
    (``failed update``). ``heartbeat``: seconds between websocket pings on coordinate
    connections (None: none). The DERP relay is :attr:`derp`, made at construction (so its
    switches can be set before :meth:`start`).
    """

    def __init__(self, *, token: str = TOKEN, user: str = "alice",
                 api_version: tuple[int, int] = API_VERSION,
                 response_buffer: int = RESPONSE_BUFFER_SIZE,
                 heartbeat: float | None = HEARTBEAT_INTERVAL, stun: bool = False) -> None:
        self.token = token
        #: Serve STUN (RFC 5389 binding) on a loopback UDP port named in the DERP map.
        self.stun = StunResponder() if stun else None
        self.user = user
        self.api_version = api_version
        self.response_buffer = response_buffer
        self.heartbeat = heartbeat
        self.workspaces: list[FakeWorkspace] = []
        self.extra_routes: dict[str, Callable[[Request], Awaitable[ResponseLike]]] = {}
        self.derp_force_websockets = False
        """``derp_force_websockets`` of the connection info (clients then use DERP over WS)."""
        self.requests: list[str] = []
        self.derp = DerpServer()
        self.coordinator = Coordinator(on_added=self._peer_added, on_removed=self._peer_removed)
        self._derp_map: dict[str, Any] | None = None
        self._derp_map_set = False
        self._derp_map_changed = asyncio.Event()
        self._connections: set[_CoordinateConnection] = set()
        self._http_tasks: set[asyncio.Task[Any]] = set()
        self._http_writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_workspace(self, name: str, *agent_names: str, owner: str | None = None,
                      **kwargs: Any) -> FakeWorkspace:
        ws = FakeWorkspace(owner or self.user, name, [FakeAgent(n) for n in agent_names],
                           **kwargs)
        self.workspaces.append(ws)
        return ws

    # ----- DERP map and relay switches -----------------------------------------------------

    def default_derp_map(self) -> dict[str, Any]:
        """Region 1 served by this server (Coder's integration harness uses the same)."""
        return {"HomeParams": {}, "Regions": {"1": {
            "EmbeddedRelay": False, "RegionID": 1, "RegionCode": "test",
            "RegionName": "test server",
            "Nodes": [{"Name": "test0", "RegionID": 1, "HostName": "127.0.0.1",
                       "IPv4": "127.0.0.1", "IPv6": "none",
                       "STUNPort": self.stun.port if self.stun is not None else -1,
                       "DERPPort": self.port, "InsecureForTests": True, "ForceHTTP": True}]}}}

    def derp_map(self) -> dict[str, Any] | None:
        """The DERP map served (REST connection info and ``StreamDERPMaps``): the one given to
        :meth:`set_derp_map`, else :meth:`default_derp_map`."""
        return self._derp_map if self._derp_map_set else self.default_derp_map()

    def set_derp_map(self, derp_map: Mapping[str, Any] | DerpMap | None) -> None:
        """Serve another DERP map (JSON, Go field names, or a :class:`DerpMap`): every open
        ``StreamDERPMaps`` sends it if it differs from its last one. ``None`` ends those
        streams (DRPC Close), as coderd's ``DERPMapFn`` returning nil does in tests."""
        if isinstance(derp_map, DerpMap):
            derp_map = derp_map.to_json()
        self._derp_map = None if derp_map is None else dict(derp_map)
        self._derp_map_set = True
        changed, self._derp_map_changed = self._derp_map_changed, asyncio.Event()
        changed.set()

    @property
    def fail_derp_upgrade(self) -> bool:
        """True: ``/derp`` answers ``Upgrade: DERP`` with 400, so clients fall back to DERP
        over websockets (Coder's harness ``DERPUpgradeFails``)."""
        return self.derp.upgrade_status is not None

    @fail_derp_upgrade.setter
    def fail_derp_upgrade(self, value: bool) -> None:
        self.derp.upgrade_status = 400 if value else None

    async def restart_derp(self) -> None:
        """Replace the relay by a new one with a new server key (same switches); every DERP
        connection of the old one is closed."""
        old = self.derp
        self.derp = DerpServer(upgrade_status=old.upgrade_status, websocket=old.websocket)
        await old.close()

    async def _derp_route(self, request: Request) -> ResponseLike:
        return await self.derp.handle(request)

    # ----- coordinator switches ------------------------------------------------------------

    def coordinator_peers(self) -> dict[uuid.UUID, PeerInfo]:
        """The registered coordinator peers by id."""
        out = {}
        for peer in self.coordinator.peers.values():
            out[peer.id] = PeerInfo(
                id=peer.id, name=peer.name, kind=peer.kind,
                agent_id=peer.agent.id if peer.agent is not None else None,
                tunnels=frozenset(self.coordinator.tunnels.by_src.get(peer.id, ())),
                node=peer.node, overwrites=peer.overwrites)
        return out

    async def drop_coordinators(self, timeout: float = 5.0) -> None:
        """Close every coordinate websocket abruptly (no close frame); returns once their
        peers are gone (LOST to their tunnel peers)."""
        connections = list(self._connections)
        for conn in connections:
            conn.ws.abort()
        await self._wait_connections(connections, timeout)

    async def _wait_connections(self, connections: Iterable[_CoordinateConnection],
                                timeout: float) -> None:
        waits = [conn.done.wait() for conn in connections]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*waits)

    def _peer_added(self, peer: CoordinatorPeer) -> None:
        if peer.kind == "agent" and peer.agent is not None:
            peer.agent.status = "connected"

    def _peer_removed(self, peer: CoordinatorPeer) -> None:
        if (peer.kind == "agent" and peer.agent is not None
                and peer.id not in self.coordinator.peers):
            peer.agent.status = "disconnected"

    # ----- lifecycle -----------------------------------------------------------------------

    async def start(self) -> str:
        """Listen on 127.0.0.1 (any port); mounts ``/derp`` unless a test mounted its own."""
        self.extra_routes.setdefault("/derp", self._derp_route)
        http = HttpServer(self.handle)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._http_tasks.add(task)
            self._http_writers.add(writer)
            try:
                await http.serve_connection(reader, writer)
            finally:
                self._http_tasks.discard(task)
                self._http_writers.discard(writer)

        if self.stun is not None:
            await self.stun.start()
        self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    async def close(self) -> None:
        """Close the coordinator (peers LOST ``coordinator close``, their streams closed), every
        coordinate and DERP connection, and the listener; waits for all of their tasks."""
        if self._server is not None:
            self._server.close()
        self.coordinator.close()
        connections = list(self._connections)
        # let the Coordinate handlers flush the last responses and the DRPC Close (bounded)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while any(conn.coordinating for conn in connections):
                    await asyncio.sleep(0.01)
        for conn in connections:
            conn.ws.abort()
        await self._wait_connections(connections, 5.0)
        await self.derp.close()
        if self.stun is not None:
            self.stun.close()
        for writer in list(self._http_writers):
            writer.transport.abort()
        if self._http_tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*self._http_tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----- HTTP ----------------------------------------------------------------------------

    @staticmethod
    def _request_token(request: Request) -> str:
        """``APITokenFromRequest``: cookie, then query parameter, then header."""
        with contextlib.suppress(CookieError):
            for header in request.headers.get_all("cookie"):
                cookie = SimpleCookie()
                cookie.load(header)
                if "coder_session_token" in cookie and cookie["coder_session_token"].value:
                    return cookie["coder_session_token"].value
        return (request.query.get("coder_session_token")
                or request.headers.get("coder-session-token", ""))

    def _authorized(self, request: Request) -> ServerResponse | None:
        token = self._request_token(request)
        if not token:
            return coder_error(401, SIGNED_OUT, 'Cookie "coder_session_token" or query '
                                                "parameter must be provided.")
        parts = token.split("-")
        if len(parts) != 2:
            return coder_error(401, SIGNED_OUT, "Invalid API key format: incorrect amount of "
                                                f"API key parts, expected 2 got {len(parts)}")
        if parts[0] != self.token.split("-")[0]:
            return coder_error(401, SIGNED_OUT, "API key is invalid.")
        if token != self.token:
            return coder_error(401, SIGNED_OUT, "API key secret is invalid.")
        return None

    def _agent(self, agent_id: str) -> FakeAgent | None:
        for ws in self.workspaces:
            for agent in ws.agents:
                if str(agent.id) == agent_id:
                    return agent
        return None

    def _agent_by_token(self, request: Request) -> FakeAgent | ServerResponse:
        """``ExtractWorkspaceAgent``: the agent whose token the request carries, or the 401."""
        token = self._request_token(request)
        if not token:
            return coder_error(401, AGENT_TOKEN_MISSING)
        try:
            parsed = uuid.UUID(token)
        except ValueError:
            return coder_error(401, AGENT_TOKEN_INVALID,
                               f"An agent token must be a valid UUIDv4. (len {len(token)})")
        for ws in self.workspaces:
            for agent in ws.agents:
                with contextlib.suppress(ValueError):
                    if uuid.UUID(agent.token) == parsed:
                        return agent
        return coder_error(401, AGENT_NOT_AUTHORIZED, AGENT_NOT_AUTHORIZED_DETAIL)

    async def handle(self, request: Request) -> ResponseLike:
        self.requests.append(request.target)
        for prefix, handler in self.extra_routes.items():
            if request.path.startswith(prefix):
                return await handler(request)
        path = request.path
        if path == "/api/v2/workspaceagents/me/coordinate":
            me = self._agent_by_token(request)
            if isinstance(me, ServerResponse):
                return me
            return await self._coordinate_endpoint(
                request, me, peer_id=me.id, name=me.name, kind="agent",
                authorize=agent_authorizer(me.id), resume=False)
        if path == "/api/v2/workspaceagents/connection" and self._authorized(request):
            # the deployment-wide connection info (§1.5), for agents too (their manifest
            # carries the DERP map in coderd; our Agent fetches it here with its token)
            me = self._agent_by_token(request)
            if isinstance(me, ServerResponse):
                return me
            return self._connection_info()
        denied = self._authorized(request)
        if denied is not None:
            return denied
        if path == "/api/v2/workspaceagents/connection":
            return self._connection_info()
        if m := re.fullmatch(r"/api/v2/users/([^/]+)/workspace/([^/]+)", path):
            owner = self.user if m[1] == "me" else m[1]
            for ws in self.workspaces:
                if ws.owner == owner and ws.name == m[2]:
                    return ws.json()
            return coder_error(404, NOT_FOUND)
        if m := re.fullmatch(r"/api/v2/workspaceagents/([^/]+)(/connection|/coordinate)?", path):
            try:
                uuid.UUID(m[1])
            except ValueError as exc:
                return coder_error(400, f'Invalid UUID "{m[1]}".', str(exc))
            agent = self._agent(m[1])
            if agent is None:
                return coder_error(404, NOT_FOUND)
            if m[2] == "/connection":
                return self._connection_info()
            if m[2] == "/coordinate":
                return await self._coordinate_endpoint(
                    request, agent, peer_id=uuid.uuid4(), name="client", kind="client",
                    authorize=client_authorizer(agent.id), resume=True)
            return agent.json()
        return coder_error(404, "Route not found.")

    def _connection_info(self) -> dict[str, Any]:
        return {"derp_map": self.derp_map(), "derp_force_websockets": self.derp_force_websockets,
                "disable_direct_connections": False, "hostname_suffix": "coder"}

    async def _coordinate_endpoint(self, request: Request, agent: FakeAgent, *,
                                   peer_id: uuid.UUID, name: str, kind: str,
                                   authorize: Authorizer, resume: bool) -> ResponseLike:
        """After authentication: version, resume token, websocket accept, then serve."""
        version = request.query.get("version") or "1.0"
        problem = validate_version(version, self.api_version)
        if problem is not None:
            return coder_error(400, UNSUPPORTED_VERSION, validations=[("version", problem)])
        if resume and request.query.get("resume_token"):
            # this server issues no resume tokens (RefreshResumeToken is not served)
            return coder_error(401, INVALID_RESUME_TOKEN, "parse resume token: token is not "
                               "signed by this server", [("resume_token", INVALID_RESUME_TOKEN)])
        refusal = _websocket_refusal(request)
        if refusal is not None:
            return refusal
        ws = await request.accept_websocket(compression=False)
        conn = _CoordinateConnection(peer_id, name, kind, authorize, agent, ws)
        await self._serve_connection(conn)
        return None

    # ----- one coordinate connection -------------------------------------------------------

    async def _serve_connection(self, conn: _CoordinateConnection) -> None:
        self._connections.add(conn)
        heartbeat = (asyncio.create_task(self._heartbeat(conn.ws), name="coordinate-heartbeat")
                     if self.heartbeat else None)
        session = conn.session = yamux_over_websocket(conn.ws, Role.SERVER)
        try:
            async def coordinate(call: TypedCall[CoordinateResponse, CoordinateRequest]) -> None:
                await self._coordinate(conn, call)

            async def stream_derp_maps(request: StreamDERPMapsRequest,
                                       call: TypedCall[DERPMap, StreamDERPMapsRequest]) -> None:
                await self._stream_derp_maps(conn, call)

            server = tailnet_server(coordinate=coordinate, stream_derp_maps=stream_derp_maps)
            server.register(RPC_POST_TELEMETRY, self._post_telemetry)
            await server.serve(session)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)
            await session.close()
            # DRPC handlers end by themselves once their call is lost; don't leave any behind
            for task in list(conn.handlers):
                task.cancel()
            await asyncio.gather(*conn.handlers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await conn.ws.close()  # coderd: defer conn.Close(StatusNormalClosure, "")
            self._connections.discard(conn)
            conn.done.set()

    async def _heartbeat(self, ws: WebSocket) -> None:
        assert self.heartbeat
        with contextlib.suppress(Exception):
            while not ws.closed:
                await asyncio.sleep(self.heartbeat)
                await ws.ping()

    @staticmethod
    async def _post_telemetry(call: Call) -> None:
        """``PostTelemetry`` (2.2+): the events are dropped, the response is empty."""
        await call.recv()
        await call.send(b"")

    async def _coordinate(self, conn: _CoordinateConnection,
                          call: TypedCall[CoordinateResponse, CoordinateRequest]) -> None:
        """``DRPCService.Coordinate``: register the peer; requests go to the coordinator, its
        queued responses come back; once the peer is closed, DRPC Close."""
        task = asyncio.current_task()
        assert task is not None
        conn.handlers.add(task)
        conn.coordinating.add(task)
        peer = CoordinatorPeer(conn.peer_id, conn.name, conn.kind, conn.authorize,
                               agent=conn.agent, buffer=self.response_buffer)
        reader: asyncio.Task[None] | None = None
        try:
            try:
                self.coordinator.init_peer(peer)
            except CoordinatorClosedError:
                await call.close()
                return
            reader = asyncio.create_task(self._read_requests(peer, call),
                                         name=f"coordinate-requests {peer.id}")
            try:
                while True:
                    while peer.responses:
                        await call.send(peer.responses.popleft())
                    if peer.closed:
                        break
                    peer.wake.clear()
                    await peer.wake.wait()
            except DrpcError as exc:  # the stream or its transport is gone
                _log.debug("coordinate %r: send failed: %s", peer, exc)
            await call.close()
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            self.coordinator.lost_peer(peer)
            conn.handlers.discard(task)
            conn.coordinating.discard(task)

    async def _read_requests(self, peer: CoordinatorPeer,
                             call: TypedCall[CoordinateResponse, CoordinateRequest]) -> None:
        """``loopReq`` + ``reqLoop``: until CloseSend/Close/loss or a request error, then the
        peer is lost (unless it left or was replaced already)."""
        try:
            while (request := await call.recv()) is not None:
                error = self.coordinator.handle_request(peer, request)
                if error is not None:
                    if error:
                        self.coordinator._error(peer, error)
                    return
        except (DrpcError, ProtobufError) as exc:
            _log.debug("coordinate %r: receive failed: %s", peer, exc)
        finally:
            self.coordinator.lost_peer(peer)

    async def _stream_derp_maps(self, conn: _CoordinateConnection,
                                call: TypedCall[DERPMap, StreamDERPMapsRequest]) -> None:
        """``DRPCService.StreamDERPMaps``: the current map, then each different one; a None
        map closes the stream."""
        task = asyncio.current_task()
        assert task is not None
        conn.handlers.add(task)
        try:
            last: bytes | None = None
            while True:
                changed = self._derp_map_changed
                derp_map = self.derp_map()
                if derp_map is None:
                    await call.close()
                    return
                message = derp_map_to_proto(derp_map)
                encoded = message.encode()
                if encoded != last:
                    await call.send(message)
                    last = encoded
                await _first(changed.wait(), call.call.remote_ended.wait())
                if call.call.remote_ended.is_set():
                    return
        finally:
            conn.handlers.discard(task)
