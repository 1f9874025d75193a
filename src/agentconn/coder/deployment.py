"""``agentconn.coder.dial``: an :class:`~agentconn.AgentConn` to a workspace agent of a Coder
deployment, the way the ``coder`` CLI reaches it (coder-control-plane.md §1.7, §8.1).

Theory of operation: one :class:`Deployment` per (URL, token) per event loop holds the REST
client, one Tunnel with a fresh node key and a random /128 in ``fd7a:115c:a1e0::/48``, and one
:class:`~agentconn.coder.tailnet.TailnetNode` (one coordinator session, one DERP connection per
region). Every :func:`dial` reuses it: it resolves the name, asks the coordinator for a tunnel
to the agent, waits for the agent to answer a TSMP ping (through DERP at first; the tailnet node
upgrades to a direct UDP path by disco when one works) and returns an
``AgentConn`` whose ``close()`` releases only its lease — the transport stays for the next
dial, as coderd's shared agent connections do. :func:`close_all` (or :meth:`Deployment.close`)
leaves the tailnet gracefully.

The tunnel's UDP socket binds every address (``AGENTCONN_TAILNET_LISTEN`` names one instead,
e.g. ``127.0.0.1`` in tests); ``CODER_DISABLE_DIRECT_CONNECTIONS=true`` keeps it on DERP.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import uuid
from typing import Any

from ..aio.tunnel import Tunnel
from ..client.conn import AgentConn, SkipClose
from ..errors import TunnelError
from ..wg.config import InterfaceConfig
from .api import AgentInfo, CoderApi, Credentials, WorkspaceError
from .derp import DerpMap
from .keys import NodePrivate, random_client_address
from .tailnet import CoordinateTarget, TailnetNode

__all__ = ["Deployment", "close_all", "dial"]

_deployments: dict[tuple[str, str, int], Deployment] = {}


class Deployment:
    """Our node on one Coder deployment (see module doc). Build with :meth:`open`."""

    def __init__(self, api: CoderApi, tunnel: Tunnel, node: TailnetNode) -> None:
        self.api = api
        self.tunnel = tunnel
        self.node = node
        self.leases = 0
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, credentials: Credentials, first_agent: uuid.UUID, *,
                   timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None
                   ) -> Deployment:
        """Connection info (through `first_agent`), a tunnel, DERP and the coordinator."""
        api = CoderApi(credentials, ssl_context=ssl_context)
        try:
            info = await api.connection_info(first_agent)
            key = NodePrivate.generate()
            address = random_client_address()
            config = InterfaceConfig(private_key=key.raw, mtu=1280,
                                     addresses=[ipaddress.IPv6Interface(f"{address}/128")])
            listen = os.environ.get("AGENTCONN_TAILNET_LISTEN", "")
            tunnel = Tunnel(config, listen_host=listen)
            await tunnel.start()
        except BaseException:
            await api.close()
            raise
        host, port, path, headers = api.coordinate_target(first_agent)
        target = CoordinateTarget(host, port, path, headers, api.ssl_context)
        url = credentials.url
        from .api import rewrite_derp_map

        # Direct UDP paths unless coderd (DisableDirectConnections) or the user
        # (coder's --disable-direct-connections, CODER_DISABLE_DIRECT_CONNECTIONS) says DERP only.
        block = info.disable_direct_connections or os.environ.get(
            "CODER_DISABLE_DIRECT_CONNECTIONS", "").lower() in ("1", "true", "yes")
        node = TailnetNode(tunnel, key, DerpMap.from_json(info.derp_map), target,
                           force_websockets=info.derp_force_websockets,
                           rewrite_derp_map=lambda m: rewrite_derp_map(m, url),
                           block_endpoints=block)
        try:
            await node.start(timeout)
        except BaseException:
            await tunnel.close()
            await api.close()
            raise
        return cls(api, tunnel, node)

    async def connect(self, agent: AgentInfo, *, timeout: float = 30.0) -> AgentConn:
        """An AgentConn lease to `agent` over this deployment's tunnel (a coordinator session
        for it: coderd authorizes each client session for the agent in its URL)."""
        host, port, path, headers = self.api.coordinate_target(agent.id)
        target = CoordinateTarget(host, port, path, headers, self.api.ssl_context)
        await self.node.add_agent(agent.id, target, timeout)
        self.leases += 1

        async def release() -> None:
            self.leases -= 1
            raise SkipClose

        conn = AgentConn(self.tunnel, agent.id, close_hook=release)
        if not await conn.await_reachable(timeout):
            await conn.close()
            region = self.node.peers.get(agent.id)
            where = f"DERP region {region.region}" if region is not None else "DERP"
            raise TunnelError(f"agent {agent.name or agent.id} did not answer through {where} "
                              f"within {timeout:g} s (is it running? see 'coder ping')")
        return conn

    async def close(self) -> None:
        """Leave the tailnet (Disconnect), close DERP, the tunnel and the REST client."""
        for key, dep in list(_deployments.items()):
            if dep is self:
                del _deployments[key]
        await self.node.close()
        await self.tunnel.close()
        await self.api.close()

    def stats(self) -> dict[str, Any]:
        """The tailnet node's counters and the tunnel's."""
        return {"tailnet": self.node.stats(), "tunnel": self.tunnel.stats(),
                "leases": self.leases}


async def dial(target: str | uuid.UUID, *, url: str | None = None, token: str | None = None,
               timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None) -> AgentConn:
    """An :class:`~agentconn.AgentConn` to ``[owner/]workspace[.agent]`` or an agent UUID.

    Credentials come from the arguments, ``CODER_URL``/``CODER_SESSION_TOKEN`` or ``coder
    login``'s files. Every dial in one event loop to the same deployment shares one tunnel,
    one coordinator session and the DERP connections; closing the returned connection releases
    only its lease. Raises NotLoggedInError, WorkspaceError (unknown, stopped, ambiguous),
    CoderApiError (401/403/404 from coderd), TailnetError (coordinator or DERP unusable),
    TunnelError (the agent did not answer).
    """
    credentials = Credentials.load(url, token)
    loop = asyncio.get_running_loop()
    key = (credentials.url, credentials.token, id(loop))
    deployment = _deployments.get(key)
    async with _open_lock(key):
        deployment = _deployments.get(key)
        api = deployment.api if deployment is not None else CoderApi(credentials,
                                                                      ssl_context=ssl_context)
        try:
            agent = await api.resolve_agent(str(target))
        finally:
            if deployment is None:
                await api.close()
        if agent.status and agent.status != "connected":
            raise WorkspaceError(f"agent {agent.name or agent.id} is {agent.status}, not "
                                 "connected to the deployment")
        if deployment is None:
            deployment = await Deployment.open(credentials, agent.id, timeout=timeout,
                                               ssl_context=ssl_context)
            _deployments[key] = deployment
    return await deployment.connect(agent, timeout=timeout)


_locks: dict[tuple[str, str, int], asyncio.Lock] = {}


def _open_lock(key: tuple[str, str, int]) -> asyncio.Lock:
    lock = _locks.get(key)
    if lock is None:
        lock = _locks[key] = asyncio.Lock()
    return lock


async def close_all() -> None:
    """Close every deployment this process opened in the running loop."""
    loop_id = id(asyncio.get_running_loop())
    for key, deployment in list(_deployments.items()):
        if key[2] == loop_id:
            await deployment.close()
