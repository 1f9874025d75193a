"""``agentconn vnc``: a local VNC port bridged to the agent's desktop (agent-api.md §11.1).

Listens on ``[BIND:]PORT`` (default 127.0.0.1:5900) and bridges every accepted connection to
its own ``/api/v0/desktop/vnc`` websocket through the tunnel, so any VNC viewer pointed at the
local port sees (and drives) the agent's desktop; several viewers may connect at once.
Runs until interrupted (Ctrl-C ends it quietly).

``agentconn vnc WORKSPACE [-p [BIND:]PORT]`` (or ``--config CLIENT_CONF --agent-id UUID``
instead of the workspace, see :mod:`~agentconn.cli.target`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from agentconn.cli.target import add_target_arguments, open_conn

__all__ = ["DEFAULT_BIND", "DEFAULT_PORT", "add_parser", "parse_listen", "run"]

DEFAULT_BIND = "127.0.0.1"
DEFAULT_PORT = 5900
_READ_SIZE = 1 << 18


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT`` or ``BIND:PORT`` (``[::1]:5901`` for IPv6); ValueError names the problem."""
    bind, sep, port_text = text.rpartition(":")
    bind = bind.strip("[]") if sep else DEFAULT_BIND
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid listen address {text!r}: the port must be a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid listen address {text!r}: port {port} out of range 1-65535")
    return bind or DEFAULT_BIND, port


def _listen_arg(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("vnc", help="serve the agent's desktop on a local VNC port")
    add_target_arguments(p)
    p.add_argument("-p", "--port", dest="listen", type=_listen_arg,
                   default=(DEFAULT_BIND, DEFAULT_PORT), metavar="[BIND:]PORT",
                   help=f"where to listen (default {DEFAULT_BIND}:{DEFAULT_PORT})")


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(_READ_SIZE):
            writer.write(data)
            await writer.drain()


async def bridge(local: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 remote: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Copy both ways until either side ends (RFB has no half-close), then close both."""
    tasks = [asyncio.ensure_future(_copy(local[0], remote[1])),
             asyncio.ensure_future(_copy(remote[0], local[1]))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in (local[1], remote[1]):
            w.close()
        for w in (local[1], remote[1]):
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()


async def run(args: argparse.Namespace) -> int:
    import agentconn

    bind, port = args.listen
    conn = await open_conn(args)
    server: asyncio.Server | None = None
    viewers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
    stop = asyncio.Event()
    try:
        # One websocket up front: a desktop the agent cannot run is reported now, not when the
        # first viewer connects (and the desktop is started, ready for that viewer).
        probe = await conn.connect_desktop_vnc()
        probe[1].close()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            viewers[task] = writer
            try:
                try:
                    remote = await conn.connect_desktop_vnc()
                except (OSError, agentconn.AgentConnError) as e:
                    if not stop.is_set():
                        print(f"agentconn vnc: viewer {writer.get_extra_info('peername')}: "
                              f"{e}", file=sys.stderr, flush=True)
                    writer.transport.abort()
                    return
                await bridge((reader, writer), remote)
            finally:
                viewers.pop(task, None)

        server = await asyncio.start_server(serve, bind, port)
        shown = f"[{bind}]" if ":" in bind else bind
        print(f"VNC server for agent {conn.agent_id} listening on {shown}:{port}; "
              f"point a VNC viewer at {shown}::{port} (e.g. `vncviewer {shown}::{port}`)",
              flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    except OSError as e:
        print(f"agentconn vnc: {e}", file=sys.stderr)
        return 1
    finally:
        stop.set()
        if server is not None:
            server.close()
        # Hang up on the viewers and let their bridges wind down by themselves (a cancelled
        # connection handler would be reported as an error by asyncio).
        for writer in list(viewers.values()):
            writer.transport.abort()
        if viewers:
            await asyncio.wait(list(viewers), timeout=5)
        await conn.close()
    return 0
