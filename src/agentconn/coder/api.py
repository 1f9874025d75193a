"""coderd's REST API, as much as reaching an agent needs (coder-control-plane.md §1).

Theory of operation
-------------------
* :class:`Credentials` finds the deployment URL and session token the way the ``coder`` CLI
  does (§1.1): explicit arguments, then ``CODER_URL``/``CODER_SESSION_TOKEN``, then the files
  ``coder login`` writes under ``$CODER_CONFIG_DIR`` or ``$XDG_CONFIG_HOME/coderv2``
  (``~/.config/coderv2``): ``url`` and ``session``, whitespace trimmed.
* :class:`CoderApi` sends ``Coder-Session-Token`` on every request (§1.2) over our own HTTP/1.1
  client (plain or TLS kernel sockets: coderd is not inside the tunnel) and turns error bodies
  (``codersdk.Response``, §1.3) into :class:`CoderApiError` with status, message and detail.
* :meth:`CoderApi.resolve_agent` turns ``[owner/]workspace[.agent]`` (or an agent UUID) into
  the agent's id (§1.4); :meth:`CoderApi.connection_info` fetches the DERP map and flags
  (§1.5) with the embedded relay rewritten to our own URL, as the Go client does.
"""
from __future__ import annotations

import asyncio
import os
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from ..errors import AgentConnError
from ..web.client import HttpClient

__all__ = ["AgentInfo", "CoderApi", "CoderApiError", "ConnectionInfo", "Credentials",
           "NotLoggedInError", "WorkspaceError", "rewrite_derp_map"]

NOT_LOGGED_IN = "You are not logged in. Try logging in using 'coder login <url>'."


class CoderApiError(AgentConnError):
    """coderd answered with an error (``status``, ``message``, ``detail`` from its body)."""

    def __init__(self, status: int, message: str, detail: str = "", *, url: str = "") -> None:
        self.status = status
        self.message = message
        self.detail = detail
        self.url = url
        hint = {401: " (check CODER_SESSION_TOKEN or run 'coder login')",
                403: " (your user may not use this workspace)"}.get(status, "")
        text = f"{status} {message}" + (f": {detail}" if detail else "") + hint
        super().__init__(f"{url}: {text}" if url else text)


class NotLoggedInError(AgentConnError):
    """No deployment URL or session token was found."""


class WorkspaceError(AgentConnError):
    """The workspace or agent named cannot be used (unknown, ambiguous, not running)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A deployment URL and a session token."""

    url: str
    token: str

    @classmethod
    def load(cls, url: str | None = None, token: str | None = None, *,
             config_dir: str | os.PathLike[str] | None = None) -> Credentials:
        """Arguments first, then ``CODER_URL``/``CODER_SESSION_TOKEN``, then the files of
        ``coder login``. Raises NotLoggedInError when either is missing."""
        directory = Path(config_dir or os.environ.get("CODER_CONFIG_DIR") or Path(
            os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "coderv2")

        def from_file(name: str) -> str:
            try:
                return (directory / name).read_text().strip()
            except OSError:
                return ""

        url = (url or os.environ.get("CODER_URL") or from_file("url")).strip()
        token = (token or os.environ.get("CODER_SESSION_TOKEN") or from_file("session")).strip()
        if not url or not token:
            raise NotLoggedInError(NOT_LOGGED_IN)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NotLoggedInError(f"deployment URL {url!r} is not an http(s) URL")
        return cls(url.rstrip("/"), token)

    @classmethod
    def available(cls) -> bool:
        """Whether :meth:`load` would find credentials without arguments."""
        try:
            cls.load()
        except NotLoggedInError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """An agent found through its workspace."""

    id: uuid.UUID
    name: str
    workspace: str
    owner: str
    status: str            # connecting | connected | disconnected | timeout
    lifecycle_state: str


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """``GET /api/v2/workspaceagents/{id}/connection`` (§1.5); ``derp_map`` keeps Go's JSON
    field names."""

    derp_map: dict[str, Any]
    derp_force_websockets: bool
    disable_direct_connections: bool


def rewrite_derp_map(derp_map: dict[str, Any], url: str) -> dict[str, Any]:
    """Point every DERP node of every embedded-relay region at `url` (host, port by scheme
    unless explicit, ForceHTTP for http), as ``RewriteDERPMapDefaultRelay`` does (§1.5)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    out: dict[str, Any] = orjson.loads(orjson.dumps(derp_map))
    for region in (out.get("Regions") or {}).values():
        if not region.get("EmbeddedRelay"):
            continue
        for node in region.get("Nodes") or []:
            if node.get("STUNOnly"):
                continue
            node["HostName"] = parts.hostname
            node["DERPPort"] = port
            node["ForceHTTP"] = parts.scheme == "http"
    return out


def _split_target(target: str) -> tuple[str, str, str]:
    """(owner, workspace, agent name) of ``[owner/]workspace[.agent]`` (§1.4)."""
    workspace, _, agent = target.partition(".")
    owner = "me"
    if "/" in workspace:
        owner, _, workspace = workspace.partition("/")
        if not owner or not workspace or "/" in workspace:
            raise WorkspaceError(f'invalid workspace name: "{target}"')
    if not workspace:
        raise WorkspaceError(f'invalid workspace name: "{target}"')
    return owner, workspace, agent


class CoderApi:
    """A client of one deployment's REST API (see module doc). Use as an async context
    manager or call :meth:`close`."""

    def __init__(self, credentials: Credentials, *, timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.credentials = credentials
        parts = urlsplit(credentials.url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.timeout = timeout
        self.ssl_context = ssl_context if ssl_context is not None else (
            ssl.create_default_context() if parts.scheme == "https" else None)
        self._http = HttpClient(self.open_stream)

    async def open_stream(self, host: str, port: int
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A kernel TCP (TLS for https) connection to the deployment."""
        if self.ssl_context is not None:
            return await asyncio.open_connection(host, port, ssl=self.ssl_context,
                                                 server_hostname=host)
        return await asyncio.open_connection(host, port)

    @property
    def headers(self) -> dict[str, str]:
        """What every request carries: the session token and the Host."""
        default = (self.scheme == "https" and self.port == 443) or (
            self.scheme == "http" and self.port == 80)
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return {"Coder-Session-Token": self.credentials.token,
                "Host": host if default else f"{host}:{self.port}"}

    async def get(self, path: str) -> Any:
        """GET `path` (under the URL's path) and decode the JSON answer. Raises CoderApiError
        for a non-2xx answer, OSError when the deployment cannot be reached."""
        full = self.base_path + path
        try:
            response = await self._http.request("GET", full, host=self.host, port=self.port,
                                                 headers={**self.headers,
                                                          "Accept": "application/json"},
                                                 timeout=self.timeout)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot reach {self.credentials.url}: {exc}") from None
        async with response:
            body = await response.read()
        if not 200 <= response.status < 300:
            message, detail = response.reason or "error", ""
            try:
                data = orjson.loads(body)
                message = str(data.get("message") or message)
                detail = str(data.get("detail") or "")
            except (orjson.JSONDecodeError, AttributeError):
                pass
            raise CoderApiError(response.status, message, detail,
                                url=self.credentials.url + path)
        return orjson.loads(body)

    async def resolve_agent(self, target: str) -> AgentInfo:
        """The agent for ``[owner/]workspace[.agent]`` (owner ``me`` by default), or for an
        agent UUID. Raises WorkspaceError (unknown agent, several agents and none named, a
        workspace that is not running) and CoderApiError (401, 403, 404 from coderd)."""
        try:
            agent_id = uuid.UUID(target)
        except ValueError:
            pass
        else:
            agent = await self.get(f"/api/v2/workspaceagents/{agent_id}")
            return AgentInfo(agent_id, agent.get("name", ""), "", "",
                             agent.get("status", ""), agent.get("lifecycle_state", ""))
        owner, name, agent_name = _split_target(target)
        try:
            workspace = await self.get(f"/api/v2/users/{quote(owner, safe='')}/workspace/"
                                       f"{quote(name, safe='')}?include_deleted=false")
        except CoderApiError as exc:
            if exc.status == 404:
                raise WorkspaceError(f'workspace "{owner}/{name}" not found '
                                     f"(or you do not have access to it)") from None
            raise
        build = workspace.get("latest_build") or {}
        agents = [a for r in build.get("resources") or [] for a in r.get("agents") or []]
        label = f'{workspace.get("owner_name", owner)}/{workspace.get("name", name)}'
        if build.get("transition") != "start" or build.get("status") != "running":
            raise WorkspaceError(f'workspace "{label}" is not running (build '
                                 f'{build.get("transition", "?")}: {build.get("status", "?")}); '
                                 f"start it with 'coder start {label}'")
        if not agents:
            raise WorkspaceError(f'workspace "{label}" has no agents')
        names = [a.get("name", "") for a in agents]
        if agent_name:
            found = [a for a in agents if agent_name in (a.get("name"), a.get("id"))]
            if not found:
                raise WorkspaceError(f'agent not found by name "{agent_name}", available '
                                     f"agents: {names}")
        elif len(agents) > 1:
            raise WorkspaceError("multiple agents found, please specify the agent name, "
                                 f"available agents: {names}")
        else:
            found = agents
        agent = found[0]
        return AgentInfo(uuid.UUID(agent["id"]), agent.get("name", ""),
                         workspace.get("name", name), workspace.get("owner_name", owner),
                         agent.get("status", ""), agent.get("lifecycle_state", ""))

    async def connection_info(self, agent_id: uuid.UUID | None) -> ConnectionInfo:
        """The DERP map (embedded relay rewritten to our URL) and the connection flags, for
        one agent or (None) for the deployment (``/api/v2/workspaceagents/connection``)."""
        where = f"{agent_id}/connection" if agent_id is not None else "connection"
        data = await self.get(f"/api/v2/workspaceagents/{where}")
        return ConnectionInfo(rewrite_derp_map(data.get("derp_map") or {}, self.credentials.url),
                              bool(data.get("derp_force_websockets")),
                              bool(data.get("disable_direct_connections")))

    def coordinate_target(self, agent_id: uuid.UUID) -> tuple[str, int, str, dict[str, str]]:
        """(host, port, path, headers) of the coordinate websocket (§1.6, ``version=2.0``)."""
        return (self.host, self.port,
                f"{self.base_path}/api/v2/workspaceagents/{agent_id}/coordinate?version=2.0",
                self.headers)

    async def close(self) -> None:
        """Close pooled connections."""
        await self._http.close()

    async def __aenter__(self) -> CoderApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
