"""A small coderd for tests (coder-control-plane.md §8.2): the REST side.

Serves, over plain HTTP on loopback, what a client needs before the coordinator: the
workspace lookup (§1.4), an agent by id, and the connection info with a DERP map pointing at
this server (§1.5), with coderd's auth checks and error bodies (§1.3). The coordinate
websocket and the DERP relay hook in through :attr:`ControlPlane.extra_routes` (path prefix →
handler), so one port serves everything, as coderd does.
"""
from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agentconn.web.server import HttpServer, Request, ResponseLike, ServerResponse, json_response

TOKEN = "abcdefghij-0123456789abcdefghijkl"     # <id 10>-<secret 22> (SplitAPIToken)
SIGNED_OUT = ("You are signed out or your session has expired. Please sign in again to "
              "continue.")
NOT_FOUND = "Resource not found or you do not have access to this resource"


def coder_error(status: int, message: str, detail: str = "") -> ServerResponse:
    """A ``codersdk.Response`` body as coderd sends it (detail omitted when empty)."""
    body: dict[str, Any] = {"message": message}
    if detail:
        body["detail"] = detail
    response = json_response(body, status)
    response.headers = [("Content-Type", "application/json; charset=utf-8")]
    return response


@dataclass
class FakeAgent:
    name: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    status: str = "connected"
    lifecycle_state: str = "ready"

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


class ControlPlane:
    """The REST part of a test coderd on 127.0.0.1 (see module doc)."""

    def __init__(self, *, token: str = TOKEN, user: str = "alice") -> None:
        self.token = token
        self.user = user
        self.workspaces: list[FakeWorkspace] = []
        self.extra_routes: dict[str, Callable[[Request], Awaitable[ResponseLike]]] = {}
        self.derp_force_websockets = False
        self.requests: list[str] = []
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

    def derp_map(self) -> dict[str, Any]:
        """Region 1 served by this server (Coder's integration harness uses the same)."""
        return {"HomeParams": {}, "Regions": {"1": {
            "EmbeddedRelay": False, "RegionID": 1, "RegionCode": "test",
            "RegionName": "test server",
            "Nodes": [{"Name": "test0", "RegionID": 1, "HostName": "127.0.0.1",
                       "IPv4": "127.0.0.1", "IPv6": "none", "STUNPort": -1,
                       "DERPPort": self.port, "InsecureForTests": True, "ForceHTTP": True}]}}}

    async def start(self) -> str:
        http = HttpServer(self.handle)
        self._server = await asyncio.start_server(http.serve_connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _authorized(self, request: Request) -> ServerResponse | None:
        token = request.headers.get("coder-session-token") or request.query.get(
            "coder_session_token")
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

    async def handle(self, request: Request) -> ResponseLike:
        self.requests.append(request.target)
        for prefix, handler in self.extra_routes.items():
            if request.path.startswith(prefix):
                return await handler(request)
        denied = self._authorized(request)
        if denied is not None:
            return denied
        path = request.path
        if m := re.fullmatch(r"/api/v2/users/([^/]+)/workspace/([^/]+)", path):
            owner = self.user if m[1] == "me" else m[1]
            for ws in self.workspaces:
                if ws.owner == owner and ws.name == m[2]:
                    return ws.json()
            return coder_error(404, NOT_FOUND)
        if m := re.fullmatch(r"/api/v2/workspaceagents/([^/]+)(/connection)?", path):
            try:
                uuid.UUID(m[1])
            except ValueError as exc:
                return coder_error(400, f'Invalid UUID "{m[1]}".', str(exc))
            agent = self._agent(m[1])
            if agent is None:
                return coder_error(404, NOT_FOUND)
            if m[2]:
                return {"derp_map": self.derp_map(),
                        "derp_force_websockets": self.derp_force_websockets,
                        "disable_direct_connections": False, "hostname_suffix": "coder"}
            return agent.json()
        return coder_error(404, "Route not found.")
