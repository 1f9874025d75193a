"""``agentconn port-forward``: local TCP ports forwarded to ports on the agent (coder syntax).

Each ``-p``/``--tcp`` spec is ``PORT`` (same number both sides) or ``LOCAL:REMOTE``, optionally
``BIND:LOCAL:REMOTE`` (default bind 127.0.0.1). Every accepted local connection becomes one
tunnel TCP connection to the agent's port (``AgentConn.dial``); on the agent, ports it does not
serve itself reach the workspace loopback. Runs until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass

from agentconn.agent.forward import join

__all__ = ["Spec", "add_parser", "parse_spec", "run"]


@dataclass(frozen=True)
class Spec:
    bind: str
    local: int
    remote: int


def parse_spec(text: str) -> Spec:
    """``PORT``, ``LOCAL:REMOTE`` or ``BIND:LOCAL:REMOTE``; ValueError names the problem."""
    parts = text.rsplit(":", 2)
    bind = "127.0.0.1"
    if len(parts) == 3:
        bind = parts[0].strip("[]") or "127.0.0.1"
        parts = parts[1:]
    try:
        ports = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"invalid port specification {text!r}: ports must be numbers") from None
    local, remote = (ports[0], ports[0]) if len(ports) == 1 else (ports[0], ports[1])
    for p in (local, remote):
        if not 0 < p < 65536:
            raise ValueError(f"invalid port specification {text!r}: {p} out of range 1-65535")
    return Spec(bind, local, remote)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("port-forward", help="forward local TCP ports to ports on an agent")
    p.add_argument("--config", "-c", required=True, help="wg-quick configuration file")
    p.add_argument("--agent-id", required=True, help="the agent UUID")
    p.add_argument("-p", "--tcp", dest="specs", action="append", type=parse_spec, required=True,
                   metavar="[BIND:]LOCAL[:REMOTE]", help="a TCP port to forward (repeatable)")


async def run(args: argparse.Namespace) -> int:
    import agentconn

    conn = await agentconn.connect(args.config, args.agent_id)
    servers: list[asyncio.Server] = []
    try:
        for spec in args.specs:
            async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              spec: Spec = spec) -> None:
                try:
                    remote = await conn.dial("tcp", spec.remote)
                except (OSError, agentconn.AgentConnError) as e:
                    print(f"port-forward {spec.local} -> agent:{spec.remote}: {e}",
                          file=sys.stderr, flush=True)
                    writer.transport.abort()
                    return
                await join((reader, writer), remote)

            server = await asyncio.start_server(forward, spec.bind, spec.local)
            servers.append(server)
            print(f"Forwarding tcp {spec.bind}:{spec.local} -> "
                  f"[{conn.agent_address}]:{spec.remote}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    except OSError as e:
        print(f"agentconn port-forward: {e}", file=sys.stderr)
        return 1
    finally:
        for s in servers:
            s.close()
        for s in servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()
        await conn.close()
    return 0
