"""SSH to the agent: Go ``AgentConn.SSH``/``SSHOnPort``/``SSHClient`` (agent-api.md §6).

:func:`ssh` is the raw TCP stream to the agent's SSH port (what ``coder ssh --stdio`` pipes,
and what an OpenSSH ``ProxyCommand`` needs). :func:`ssh_client` runs asyncssh's client over
our tunnel and returns a logged-in ``SSHClientConnection``: like Go's ``SSHClient`` it ignores
the host key (``InsecureIgnoreHostKey``) and offers no authentication beyond "none", which the
agent accepts.
"""
from __future__ import annotations

import asyncio
import getpass
from typing import TYPE_CHECKING, Any

import asyncssh

from agentconn.errors import TunnelError
from agentconn.proto.ports import AGENT_SSH_PORT

if TYPE_CHECKING:
    from agentconn.aio.streams import TcpTransport
    from agentconn.aio.tunnel import Tunnel
    from agentconn.client.conn import AgentConn

__all__ = ["ssh", "ssh_client"]

STREAM_LIMIT = 1 << 20  #: StreamReader buffer before it pauses the transport


class _TunnelConnector:
    """What ``asyncssh.connect(tunnel=...)`` needs: open one TCP connection through our tunnel.

    The host asyncssh passes is only a label (Go dials the placeholder ``localhost:22``); the
    connection always goes to ``address``.
    """

    def __init__(self, tunnel: Tunnel, address: str) -> None:
        self._tunnel = tunnel
        self._address = address

    async def create_connection(self, session_factory: Any, remote_host: str,
                                remote_port: int) -> tuple[TcpTransport, asyncio.BaseProtocol]:
        return await self._tunnel.create_connection(session_factory, self._address, remote_port)

    def close(self) -> None:
        """Nothing to close: the tunnel belongs to the AgentConn."""

    async def wait_closed(self) -> None:
        """Nothing to wait for (see :meth:`close`)."""


async def _await_reachable(conn: AgentConn) -> None:
    # Go SSHOnPort: AwaitReachable first, so a fresh tunnel has its handshake done.
    if not await conn.await_reachable(conn.timeout):
        raise TunnelError(f"workspace agent {conn.agent_address} not reachable within "
                          f"{conn.timeout:g} s")


async def ssh(conn: AgentConn, port: int = AGENT_SSH_PORT, *, await_reachable: bool = True
              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TCP stream to the agent's SSH server on ``port`` (1; 22 is the same server).

    Waits until the agent answers a TSMP ping first, as Go's ``SSHOnPort`` does
    (``await_reachable=False`` skips that, for a peer that is no agent, such as a kernel
    running sshd, which does not answer TSMP). Raises :class:`TunnelError` when it does not
    answer within ``conn.timeout`` seconds, and what :meth:`Tunnel.open_connection` raises
    (ConnectionRefusedError when nothing listens on ``port``).
    """
    if await_reachable:
        await _await_reachable(conn)
    return await conn.tunnel.open_connection(str(conn.agent_address), port, limit=STREAM_LIMIT)


async def ssh_client(conn: AgentConn, port: int = AGENT_SSH_PORT, *,
                     await_reachable: bool = True,
                     **asyncssh_kwargs: Any) -> asyncssh.SSHClientConnection:
    """An SSH client connection to the agent, handshake and "none" authentication done.

    ``asyncssh_kwargs`` go to ``asyncssh.connect``. By default the host key is not checked
    (``known_hosts=None``), no configuration file, key, agent or password is used, and the
    user name is the local user's (the agent runs every session as its own OS user anyway).
    Pass e.g. ``client_keys=[key]`` to log into a server that wants a key. Close the result
    with ``close()`` and ``await wait_closed()`` (or use it as an async context manager).
    ``await_reachable`` is as for :func:`ssh`. Raises :class:`TunnelError` when the agent is
    not reachable and ``asyncssh.Error`` (e.g. ``PermissionDenied``) when the SSH handshake
    fails.
    """
    if await_reachable:
        await _await_reachable(conn)
    options: dict[str, Any] = {
        "known_hosts": None,
        "config": None,
        "client_keys": None,
        "agent_path": None,
        "password": None,
        "kbdint_auth": False,
        "gss_auth": False,
        "host_based_auth": False,
        "username": getpass.getuser(),
        "connect_timeout": conn.timeout,
    }
    options.update(asyncssh_kwargs)
    address = str(conn.agent_address)
    return await asyncssh.connect(address, port, tunnel=_TunnelConnector(conn.tunnel, address),
                                  **options)
