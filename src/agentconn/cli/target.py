"""Which agent a command talks to: a Coder workspace name, or a wg-quick file and an agent UUID.

Every command that reaches an agent takes the same target arguments (:func:`add_target_arguments`)
and opens its connection with :func:`open_conn`:

* ``agentconn <cmd> [owner/]workspace[.agent]`` (or an agent UUID) dials it on the Coder
  deployment of ``CODER_URL``/``CODER_SESSION_TOKEN`` or of ``coder login``
  (:func:`agentconn.coder.deployment.dial`), saying so on stderr when that takes a moment;
* ``agentconn <cmd> --config FILE --agent-id UUID`` brings up a tunnel from the wg-quick file
  (:func:`agentconn.connect`).

``--pcap-file FILE`` (either way) writes the tunnel's inner IP packets to FILE in pcap format
(``tcpdump -r FILE``, Wireshark) until the connection closes: from the tunnel's start with
``--config``, from the moment the agent answered through a workspace's shared tunnel.

Mistakes in the arguments, and every failure to open the connection, are raised as
:class:`TargetError`: ``__main__`` prints it as the one line ``agentconn <cmd>: <message>`` and
exits with its :attr:`~TargetError.exit_status` (2 for bad arguments, 1 when the connection
could not be opened), never with a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentconn.errors import AgentConnError

if TYPE_CHECKING:
    from agentconn.client.conn import AgentConn

__all__ = ["EXIT_CONNECT", "EXIT_USAGE", "NO_TARGET", "PROGRESS_DELAY", "Target", "TargetError",
           "add_target_arguments", "agent_id_type", "connect_target", "open_conn",
           "relay_region", "target_of"]

EXIT_USAGE = 2     #: the arguments do not name one target (as argparse's own errors)
EXIT_CONNECT = 1   #: the target is named but could not be reached
#: Seconds of dialing a workspace before "Connecting to ..." goes to stderr: quick answers
#: (connected, refused, not found) print nothing more, slow ones never leave the user guessing.
PROGRESS_DELAY = 0.5
#: Seconds to wait for an agent reached with ``--config`` (``AGENTCONN_CONNECT_TIMEOUT``).
CONNECT_TIMEOUT = 30.0
#: Seconds between the "Still waiting" lines while an agent does not answer.
WAIT_NOTICE_EVERY = 5.0

NO_TARGET = ("give a workspace name (with CODER_URL and CODER_SESSION_TOKEN set, or after "
             "'coder login') or --config FILE --agent-id UUID")
_BOTH = ("give either a workspace name or --config FILE --agent-id UUID, not both "
         "(workspace {workspace!r} and {other})")
_CONFIG_WITHOUT_ID = "--config {config!r} needs --agent-id UUID (the agent to reach through it)"
_ID_WITHOUT_CONFIG = ("--agent-id needs --config FILE (to reach agent {agent_id} through Coder, "
                      "give its UUID in place of a workspace name)")
_UUID_EXAMPLE = "12345678-1234-1234-1234-123456789abc"


class TargetError(AgentConnError):
    """The target arguments are wrong, or the connection to the target could not be opened.
    ``exit_status`` is what the command exits with."""

    def __init__(self, message: str, exit_status: int = EXIT_CONNECT) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def agent_id_type(text: str) -> uuid.UUID:
    """``--agent-id`` for argparse: a UUID, or one argparse error line naming the value."""
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a UUID (like {_UUID_EXAMPLE})") from None


def add_target_arguments(parser: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """Add the target arguments: the optional positional ``workspace`` (unless ``positional``
    is false: a command whose positional has another meaning adds its own and sets
    ``args.workspace`` before :func:`open_conn`), ``--config/-c`` and ``--agent-id``."""
    if positional:
        parser.add_argument(
            "workspace", nargs="?", metavar="WORKSPACE",
            help="[owner/]workspace[.agent] or an agent UUID on the Coder deployment of "
                 "CODER_URL and CODER_SESSION_TOKEN (or of 'coder login')")
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="wg-quick configuration file reaching the agent directly "
                             "(instead of a workspace; needs --agent-id)")
    parser.add_argument("--agent-id", type=agent_id_type, metavar="UUID",
                        help="the agent UUID (with --config)")
    parser.add_argument("--pcap-file", metavar="FILE",
                        help="write the tunnel's packets (inner IP, both directions) to FILE "
                             "in pcap format, for tcpdump -r or Wireshark (at most 64 MiB)")


@dataclass(frozen=True, slots=True)
class Target:
    """One agent to reach: ``workspace`` through Coder, or ``config`` and ``agent_id``;
    ``pcap_file``: capture the tunnel's packets there."""

    workspace: str | None = None
    config: str | None = None
    agent_id: uuid.UUID | None = None
    pcap_file: str | None = None


def target_of(args: argparse.Namespace) -> Target:
    """The target ``args`` name; raises :class:`TargetError` (exit status 2) naming what is
    missing or contradictory."""
    workspace: str | None = getattr(args, "workspace", None)
    config: str | None = args.config
    agent_id: uuid.UUID | None = args.agent_id
    pcap_file: str | None = getattr(args, "pcap_file", None)
    if workspace is not None and (config is not None or agent_id is not None):
        other = f"--config {config!r}" if config is not None else f"--agent-id {agent_id}"
        raise TargetError(_BOTH.format(workspace=workspace, other=other), EXIT_USAGE)
    if config is not None:
        if agent_id is None:
            raise TargetError(_CONFIG_WITHOUT_ID.format(config=config), EXIT_USAGE)
        return Target(config=config, agent_id=agent_id, pcap_file=pcap_file)
    if agent_id is not None:
        raise TargetError(_ID_WITHOUT_CONFIG.format(agent_id=agent_id), EXIT_USAGE)
    if not workspace:
        raise TargetError(NO_TARGET, EXIT_USAGE)
    return Target(workspace=workspace, pcap_file=pcap_file)


async def open_conn(args: argparse.Namespace, connect_timeout: float | None = None
                    ) -> AgentConn:
    """An :class:`~agentconn.AgentConn` to the target ``args`` name (see :func:`target_of`).
    ``connect_timeout``: seconds to wait for an agent reached with ``--config`` to answer
    (default: ``AGENTCONN_CONNECT_TIMEOUT`` from the environment, else 30)."""
    return await connect_target(target_of(args), connect_timeout=connect_timeout)


def _connect_timeout() -> float:
    text = os.environ.get("AGENTCONN_CONNECT_TIMEOUT", "")
    try:
        value = float(text)
    except ValueError:
        return CONNECT_TIMEOUT
    return value if value > 0 else CONNECT_TIMEOUT


async def _progress(what: str, timeout: float) -> None:
    """Lines on stderr while an agent is waited for: one after PROGRESS_DELAY, then one
    every WAIT_NOTICE_EVERY seconds."""
    started = time.monotonic()
    await asyncio.sleep(PROGRESS_DELAY)
    print(f"Waiting for {what} to answer (up to {timeout:g} s)...", file=sys.stderr,
          flush=True)
    while True:
        await asyncio.sleep(WAIT_NOTICE_EVERY)
        print(f"Still waiting for {what} ({time.monotonic() - started:.0f} s)...",
              file=sys.stderr, flush=True)


async def connect_target(target: Target, *, connect_timeout: float | None = None
                         ) -> AgentConn:
    """Open a connection to ``target``. Raises :class:`TargetError` (exit status 1) with the
    reason: not logged in, unknown or stopped workspace, deployment or agent unreachable."""
    try:
        if target.workspace is None:
            import agentconn

            timeout = connect_timeout if connect_timeout else _connect_timeout()
            tunnel_kwargs = {"pcap": target.pcap_file} if target.pcap_file is not None else None
            notice = asyncio.ensure_future(_progress(
                f"agent {target.agent_id} through {target.config}", timeout))
            try:
                return await agentconn.connect(str(target.config), str(target.agent_id),
                                               reachable_timeout=timeout,
                                               tunnel_kwargs=tunnel_kwargs)
            finally:
                notice.cancel()
        conn = await _dial(target.workspace)
        if target.pcap_file is not None:
            try:  # the deployment's shared tunnel: closed (capture and all) when we leave
                conn.tunnel.start_capture(target.pcap_file)
            except BaseException:
                await conn.close()
                raise
        return conn
    except AgentConnError as exc:
        raise TargetError(str(exc) or type(exc).__name__) from exc
    except OSError as exc:  # the deployment (or a DERP server) cannot be reached
        raise TargetError(exc.strerror or str(exc) or type(exc).__name__) from exc


async def _dial(workspace: str) -> AgentConn:
    from agentconn.coder.api import Credentials

    credentials = Credentials.load()  # NotLoggedInError before anything else
    from agentconn.coder.deployment import dial  # the tailnet stack, only when it is used

    what = f"agent {workspace}" if _is_uuid(workspace) else f'workspace "{workspace}"'
    notice = asyncio.get_running_loop().call_later(
        PROGRESS_DELAY, lambda: print(f"Connecting to {what} on {credentials.url}...",
                                      file=sys.stderr, flush=True))
    try:
        return await dial(workspace, url=credentials.url, token=credentials.token)
    finally:
        notice.cancel()


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def relay_region(conn: AgentConn, endpoint: str) -> str | None:
    """The DERP region (name, else code, else ID) behind ``endpoint`` when it is a relay path
    (``relay:<n>`` in the tunnel's peer stats) of a connection made by :func:`connect_target`
    for a workspace; None when it is not one or the region is unknown."""
    if not endpoint.startswith("relay:"):
        return None
    dial_module = sys.modules.get("agentconn.coder.deployment")
    if dial_module is None:
        return None
    try:
        path = int(endpoint.removeprefix("relay:"))
    except ValueError:
        return None
    # Read-only look at the shared deployment that owns this tunnel (coder/deployment.py): the
    # tailnet node maps relay paths to (region, peer key) and holds the current DERP map.
    for deployment in list(dial_module._deployments.values()):
        if deployment.tunnel is not conn.tunnel:
            continue
        node = deployment.node
        found = node._path_of.get(path)
        if found is not None:
            region_id = found[0]
        else:
            peer = node.peers.get(conn.agent_id)
            if peer is None or not peer.region:
                return None
            region_id = peer.region
        region = node.pool.derp_map.regions.get(region_id)
        if region is None:
            return str(region_id)
        return region.region_name or region.region_code or str(region_id)
    return None
