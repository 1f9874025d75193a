"""``agentconn port-forward``: local TCP ports forwarded to ports on the agent (coder syntax).

``agentconn port-forward WORKSPACE -p SPEC [-u SPEC]...`` (or ``--config CLIENT_CONF --agent-id
UUID`` instead of the workspace, see :mod:`~agentconn.cli.target`).

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
from typing import Any

from agentconn.aio.relay import join
from agentconn.cli.target import add_target_arguments, open_conn

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
    add_target_arguments(p)
    p.add_argument("-p", "--tcp", dest="specs", action="append", type=parse_spec, default=[],
                   metavar="[BIND:]LOCAL[:REMOTE]", help="a TCP port to forward (repeatable)")
    p.add_argument("-u", "--udp", dest="udp_specs", action="append", type=parse_spec,
                   default=[], metavar="[BIND:]LOCAL[:REMOTE]",
                   help="a UDP port to forward (repeatable)")


class _UdpToAgent(asyncio.DatagramProtocol):
    """Tunnel side of one local UDP client: replies from the agent go back to that client."""

    def __init__(self, local: asyncio.DatagramTransport, client: tuple[str, int]) -> None:
        self.local = local
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.local.sendto(data, self.client)


class _LocalUdp(asyncio.DatagramProtocol):
    """The local UDP socket of one ``--udp`` spec: one tunnel flow per client address."""

    def __init__(self, conn: Any, spec: Spec) -> None:
        self.conn = conn
        self.spec = spec
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[str, int], Any] = {}
        self.pending: dict[tuple[str, int], list[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        client = (str(addr[0]), int(addr[1]))
        flow = self.flows.get(client)
        if flow is not None:
            flow.sendto(data)
        elif client in self.pending:
            self.pending[client].append(data)
        else:
            self.pending[client] = [data]
            asyncio.get_running_loop().create_task(self._open(client))

    async def _open(self, client: tuple[str, int]) -> None:
        assert self.transport is not None
        local = self.transport
        tunnel = self.conn.tunnel
        try:
            flow, _ = await tunnel.create_datagram_endpoint(
                lambda: _UdpToAgent(local, client),
                remote_addr=(str(self.conn.agent_address), self.spec.remote))
        except (OSError, ValueError) as e:
            print(f"port-forward udp {self.spec.local}: {e}", file=sys.stderr, flush=True)
            self.pending.pop(client, None)
            return
        self.flows[client] = flow
        for data in self.pending.pop(client, []):
            flow.sendto(data)

    def close(self) -> None:
        for flow in self.flows.values():
            flow.close()
        if self.transport is not None:
            self.transport.close()


async def run(args: argparse.Namespace) -> int:
    import agentconn

    if not args.specs and not args.udp_specs:
        print("agentconn port-forward: give at least one -p/--tcp or -u/--udp", file=sys.stderr)
        return 2
    conn = await open_conn(args)
    servers: list[asyncio.Server] = []
    udps: list[_LocalUdp] = []
    try:
        loop = asyncio.get_running_loop()
        for spec in args.udp_specs:
            udp = _LocalUdp(conn, spec)
            await loop.create_datagram_endpoint(lambda u=udp: u,  # type: ignore[misc]
                                                local_addr=(spec.bind, spec.local))
            udps.append(udp)
            print(f"Forwarding udp {spec.bind}:{spec.local} -> "
                  f"[{conn.agent_address}]:{spec.remote}", flush=True)
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
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    except OSError as e:
        print(f"agentconn port-forward: {e}", file=sys.stderr)
        return 1
    finally:
        for u in udps:
            u.close()
        for s in servers:
            s.close()
        for s in servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()
        await conn.close()
    return 0
