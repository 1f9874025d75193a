"""The workspace agent: a userspace WireGuard peer serving the agent HTTP API on port 4.

Theory of operation: :class:`Agent` owns a :class:`~agentconn.aio.tunnel.Tunnel` whose
addresses include the two /128s derived from the agent UUID (Tailscale and Coder prefixes,
agent-api.md §2.1), a :class:`~agentconn.agent.api.router.Router` with every API module registered,
and an :class:`~agentconn.web.server.HttpServer` accepting on tunnel TCP port 4 (§2.2). Modules
share one :class:`~agentconn.agent.options.AgentOptions`; chat path tracking flows from the
files/processes modules into one :class:`~agentconn.agent.git.paths.PathStore`
(:attr:`Agent.paths`), which feeds the git-watch sockets. MCP servers start in the
background so a slow server never delays the API; the agent's own log goes to
``<log_dir>/coder-agent.log`` (served by ``/debug/logs``); the default ``log_dir`` is the
agent's own ``~/.agentconn/<agent-id>`` (:meth:`AgentOptions.for_agent`), so two agents on one
machine share neither log nor SSH host key.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import os
import uuid
from collections.abc import Sequence
from typing import Any, Self

from agentconn.agent.api.debug import LOG_FILE, DebugApi
from agentconn.agent.api.router import Router
from agentconn.agent.git.paths import PathStore
from agentconn.agent.options import AgentOptions
from agentconn.aio.tunnel import Tunnel
from agentconn.proto.ports import AGENT_HTTP_API_PORT, agent_addresses
from agentconn.web.server import HttpServer
from agentconn.wg.config import InterfaceConfig, load_config

__all__ = ["Agent"]

_log = logging.getLogger("agentconn.agent")

# Go's http.Server settings for the agent API (§2.4): read-header/read/write 20 s. We keep idle
# keep-alive connections for 60 s so a pooling client can reuse them.
HEADER_TIMEOUT = 20.0
BODY_TIMEOUT = 20.0
WRITE_TIMEOUT = 20.0
KEEP_ALIVE_TIMEOUT = 60.0

#: The stream services an agent runs besides the HTTP API, by name.
STREAM_SERVICES = ("ssh", "pty", "speedtest", "forward")


def _with_agent_addresses(config: InterfaceConfig, agent_id: uuid.UUID) -> InterfaceConfig:
    config = copy.deepcopy(config)
    have = {iface.ip for iface in config.addresses}
    for addr in agent_addresses(agent_id):
        if addr not in have:
            config.addresses.append(ipaddress.IPv6Interface(f"{addr}/128"))
    return config


class Agent:
    """A workspace agent reachable over WireGuard.

    ``config`` is a wg-quick file path, its text or an :class:`InterfaceConfig` (the agent's
    key and its peers, i.e. the clients allowed in). ``agent_id`` decides the addresses.
    ``options`` describe the workspace (home, working directory, environment, log dir); the
    agent keeps them as ``self.options``, with ``log_dir`` filled in when it was None.
    ``manifest`` is served at ``/debug/manifest`` (a default one describing this agent if
    ``None``). ``mcp_config_files`` overrides the ``.mcp.json`` list. ``services`` names the
    stream services to run besides the HTTP API (default all: ``"ssh"`` on ports 1 and 22,
    ``"pty"`` (reconnecting PTY) on port 2, ``"speedtest"`` on port 3, ``"forward"``: every
    other TCP and UDP port to the workspace loopback). Use as an async context
    manager or call :meth:`start` / :meth:`close`.
    """

    def __init__(
        self,
        config: InterfaceConfig | str | os.PathLike[str],
        agent_id: uuid.UUID | str,
        *,
        options: AgentOptions | None = None,
        manifest: dict[str, Any] | None = None,
        mcp_config_files: Sequence[str] | None = None,
        log_to_file: bool = True,
        services: Sequence[str] = STREAM_SERVICES,
        **tunnel_kwargs: Any,
    ) -> None:
        self.agent_id = uuid.UUID(str(agent_id))
        base = config if isinstance(config, InterfaceConfig) else load_config(config)
        self.config = _with_agent_addresses(base, self.agent_id)
        self.options = (options or AgentOptions()).for_agent(self.agent_id)
        self.tunnel = Tunnel(self.config, **tunnel_kwargs)
        self.router = Router()
        self.http = HttpServer(self.router, header_timeout=HEADER_TIMEOUT,
                               body_timeout=BODY_TIMEOUT, write_timeout=WRITE_TIMEOUT,
                               keep_alive_timeout=KEEP_ALIVE_TIMEOUT)
        self.startup_settled = asyncio.Event()
        self._mcp_config_files = list(mcp_config_files) if mcp_config_files is not None else None
        self._log_to_file = log_to_file
        self._log_handler: logging.Handler | None = None
        self._servers: list[Any] = []
        self._modules: list[Any] = []
        self._services: list[Any] = []
        unknown = set(services) - set(STREAM_SERVICES)
        if unknown:
            raise ValueError(f"unknown agent services {sorted(unknown)}; "
                             f"choose from {list(STREAM_SERVICES)}")
        self.services = tuple(services)
        self._mcp_task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        #: Paths touched per chat (write-file, edit-files, process workdirs, §3), for git watch.
        self.paths = PathStore()
        #: The coordinator session after :meth:`join_tailnet` (``TailnetNode``), else None.
        self.tailnet: Any = None
        self.manifest = manifest if manifest is not None else self._default_manifest()
        self.debug = DebugApi(self.options.data_dir(), tunnel=self.tunnel, router=self.router,
                              manifest=self.manifest)

    def _default_manifest(self) -> dict[str, Any]:
        return {
            "agent_id": str(self.agent_id),
            "agent_name": "main",
            "owner_name": os.environ.get("USER", ""),
            "workspace_id": str(uuid.UUID(int=0)),
            "workspace_name": "",
            "git_auth_configs": 0,
            "vscode_port_proxy_uri": "",
            "apps": [],
            "derpmap": None,
            "derp_force_websockets": False,
            "environment_variables": {},
            "directory": self.options.directory or "",
            "motd_file": "",
            "disable_direct_connections": False,
            "metadata": [],
            "scripts": [],
            "devcontainers": [],
            "addresses": [str(a) for a in self.addresses],
        }

    @property
    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The tunnel addresses: the configured ones plus the two derived from the UUID."""
        return [iface.ip for iface in self.config.addresses]

    @property
    def address(self) -> ipaddress.IPv6Address:
        """The address clients dial (Tailscale prefix)."""
        return agent_addresses(self.agent_id)[0]

    @property
    def touched_paths(self) -> dict[uuid.UUID, list[str]]:
        """chat id → the paths touched under it, oldest first (a copy)."""
        return self.paths.as_dict()

    def _record_paths(self, chats: tuple[uuid.UUID, ...], paths: list[str]) -> None:
        self.paths.add_paths(chats, paths)

    def _on_process_exit(self, chats: tuple[uuid.UUID, ...], workdir: str) -> None:
        # As the Go agent: the workdir becomes a tracked path; without one, the chat's
        # watchers still rescan (the command may have changed their repositories).
        if workdir:
            self.paths.add_paths(chats, [workdir])
        else:
            self.paths.notify(chats)

    def _setup_logging(self) -> None:
        if not self._log_to_file:
            return
        log_dir = self.options.data_dir()
        os.makedirs(log_dir, mode=0o700, exist_ok=True)
        handler = logging.FileHandler(os.path.join(log_dir, LOG_FILE))
        handler.setFormatter(logging.Formatter(
            "%(asctime)s.%(msecs)03d [%(levelname)s] %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger = logging.getLogger("agentconn")
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        self._log_handler = handler

    async def start(self) -> None:
        """Bring the tunnel up and serve the API on port 4 of every agent address."""
        if self._started:
            raise RuntimeError("agent already started")
        self._started = True
        self._setup_logging()
        from agentconn.agent.api.contextconfig import ContextConfigApi
        from agentconn.agent.api.files import FilesApi
        from agentconn.agent.api.listening import ListeningPortsApi
        from agentconn.agent.api.mcp import McpManager
        from agentconn.agent.api.processes import ProcessManager
        from agentconn.agent.containers import ContainersApi
        from agentconn.agent.desktop import DesktopApi
        from agentconn.agent.git import GitWatchApi

        opts = self.options
        # ContextConfigApi consumes the CODER_AGENT_EXP_* variables (children must not inherit
        # them) and resolves the .mcp.json list the MCP manager uses.
        context = ContextConfigApi(opts, startup_settled=self.startup_settled)
        mcp = McpManager(opts, self._mcp_config_files if self._mcp_config_files is not None
                         else context.mcp_config_files())
        self._modules = [
            self.debug,
            FilesApi(opts, self._record_paths),
            ProcessManager(opts, self._on_process_exit),
            ListeningPortsApi(opts),
            context,
            mcp,
            DesktopApi(opts),
            ContainersApi(opts),
            GitWatchApi(opts, self.paths),
        ]
        for module in self._modules:
            module.register(self.router)
        from agentconn.agent.services.forward import PortForwarding
        from agentconn.agent.services.pty import ReconnectingPtyServer
        from agentconn.agent.services.speedtest import SpeedtestServer
        from agentconn.agent.services.ssh import SshServer

        # Stream services on their own ports (§5-§7): started with the tunnel, closed with
        # the agent (after the HTTP modules, before the tunnel).
        factories = {"ssh": SshServer, "pty": ReconnectingPtyServer,
                     "speedtest": SpeedtestServer, "forward": PortForwarding}
        self._services = [factories[name](opts) for name in self.services]
        await self.tunnel.start()
        self._servers.append(
            await self.tunnel.start_server(self.http.serve_connection, AGENT_HTTP_API_PORT))
        for service in self._services:
            await service.start(self.tunnel)
        self._mcp_task = asyncio.create_task(self._start_mcp(mcp))
        self.startup_settled.set()
        _log.info("agent %s listening on [%s]:%d (udp/%d)", self.agent_id, self.address,
                  AGENT_HTTP_API_PORT, self.tunnel.listen_port)

    async def _start_mcp(self, mcp: Any) -> None:
        try:
            await mcp.start()
        except Exception:  # noqa: BLE001 - a bad MCP server must not take the agent down
            _log.exception("starting MCP servers failed")

    async def join_tailnet(self, url: str, agent_token: str, *, timeout: float = 30.0,
                           ssl_context: Any = None, block_endpoints: bool = False) -> Any:
        """Join a Coder-style coordinator as this agent, reachable through its DERP relays and,
        once disco finds one, a direct UDP path (no static peers needed; ``block_endpoints``
        or a deployment with direct connections disabled: DERP only).

        Fetches the DERP map (``GET /api/v2/workspaceagents/connection`` with
        ``Coder-Session-Token: <agent_token>``), connects the home region, and runs the agent
        side of the coordinator at ``/api/v2/workspaceagents/me/coordinate?version=2.0``: it
        announces this agent's node (its WireGuard key, its two service /128s) and programs
        every client whose node arrives, answering ReadyForHandshake. That endpoint is how the
        project's test control plane models a real agent's DRPC connection to coderd. Returns
        the :class:`~agentconn.coder.tailnet.TailnetNode`; raises TailnetError or
        CoderApiError when the deployment cannot be used.
        """
        from agentconn.coder.api import CoderApi, Credentials, rewrite_derp_map
        from agentconn.coder.derp import DerpMap
        from agentconn.coder.keys import NodePrivate
        from agentconn.coder.tailnet import CoordinateTarget, TailnetNode

        if not self._started:
            raise RuntimeError("start the agent before joining a tailnet")
        credentials = Credentials(url.rstrip("/"), agent_token)
        async with CoderApi(credentials, ssl_context=ssl_context) as api:
            info = await api.connection_info(None)
            target = CoordinateTarget(
                api.host, api.port,
                f"{api.base_path}/api/v2/workspaceagents/me/coordinate?version=2.0",
                api.headers, api.ssl_context)
        node = TailnetNode(self.tunnel, NodePrivate(self.config.private_key),
                           DerpMap.from_json(info.derp_map), target, role="agent",
                           force_websockets=info.derp_force_websockets,
                           addresses=list(agent_addresses(self.agent_id)),
                           rewrite_derp_map=lambda m: rewrite_derp_map(m, credentials.url),
                           block_endpoints=block_endpoints or info.disable_direct_connections)
        await node.start(timeout)
        self.tailnet = node
        return node

    async def close(self) -> None:
        """Stop serving, end child processes and MCP servers, close the tunnel."""
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        if self._mcp_task is not None:
            self._mcp_task.cancel()
            await asyncio.gather(self._mcp_task, return_exceptions=True)
        for module in [*reversed(self._services), *reversed(self._modules)]:
            closer = getattr(module, "close", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:  # noqa: BLE001 - close the rest regardless
                    _log.exception("closing %s failed", type(module).__name__)
        if self.tailnet is not None:
            try:
                await self.tailnet.close()
            except Exception:  # noqa: BLE001 - the tunnel must close regardless
                _log.exception("leaving the tailnet failed")
        await self.tunnel.close()
        if self._log_handler is not None:
            logging.getLogger("agentconn").removeHandler(self._log_handler)
            self._log_handler.close()

    async def serve_forever(self) -> None:
        """Run until cancelled (the CLI's main loop)."""
        if not self._started:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
