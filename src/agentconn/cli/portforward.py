"""``agentconn port-forward``: local TCP ports forwarded to ports on the agent (coder syntax).

``agentconn port-forward WORKSPACE -p SPEC [-u SPEC]...`` (or ``--config CLIENT_CONF --agent-id
UUID`` instead of the workspace, see :mod:`~agentconn.cli.target`).

Each ``-p``/``--tcp`` (``-u``/``--udp``) value is a comma-separated list of specs, as in
``coder port-forward``: ``PORT`` (same number both sides), ``LOCAL:REMOTE``, a range
``START-END`` or ``START-END:START-END`` (equal lengths), each optionally prefixed by a bind
address ``BIND:`` (``127.0.0.1:8080:80``, ``[::1]:8080:80``). Without a bind address the port
listens on 127.0.0.1 and, when available, on [::1] (as coder does). Every accepted local
connection becomes one tunnel TCP connection to the agent's port (``AgentConn.dial``); on the
agent, ports it does not serve itself reach the workspace loopback.

Like coder, it prints ``Forwarding '<local>' locally to '<remote>' in the workspace`` per
listener and ``Ready!`` on stderr once the agent answers, ``Failed to dial ... in workspace``
for a connection the agent refuses, and on SIGINT/SIGTERM ``Received signal, closing all
listeners and active connections`` before it closes them and exits 0. For scripts, stdout
also carries one ``Forwarding tcp|udp BIND:PORT -> [AGENT]:PORT`` line per spec.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import re
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from agentconn.aio.relay import CHUNK, pipe
from agentconn.cli.target import add_target_arguments, open_conn

__all__ = ["Spec", "SpecError", "add_parser", "parse_spec", "parse_specs", "run"]

DEFAULT_BIND = "127.0.0.1"
#: seconds forwarded connections get to end after their sockets are closed, at exit
CLOSE_GRACE = 1.0


@dataclass(frozen=True)
class Spec:
    bind: str
    local: int
    remote: int
    #: no bind address was given: also listen on [::1] when the host has IPv6 loopback
    default_bind: bool = field(default=False, compare=False)


class SpecError(argparse.ArgumentTypeError, ValueError):
    """A bad port-forward specification; argparse prints its message as is."""


# [BIND:]PORT[-PORT][:PORT[-PORT]]; BIND is an IPv4 address or a bracketed IPv6 address
_SPEC = re.compile(r"^(?:(\[[0-9a-fA-F:.]+\]|\d+\.\d+\.\d+\.\d+):)?"
                   r"(\d+)(?:-(\d+))?(?::(\d+)(?:-(\d+))?)?$")


def _port(text: str, spec: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise SpecError(f"invalid port specification {spec!r}: {port} out of range 1-65535")
    return port


def _range(start: str, end: str | None, spec: str) -> list[int]:
    first = _port(start, spec)
    last = _port(end, spec) if end else first
    if last < first:
        raise SpecError(f"invalid port specification {spec!r}: range end {last} is less "
                        f"than start {first}")
    return list(range(first, last + 1))


def parse_specs(text: str) -> list[Spec]:
    """One ``-p``/``--udp`` value: comma-separated ``[BIND:]LOCAL[-END][:REMOTE[-END]]``
    specs, ranges expanded. :class:`SpecError` (a ValueError) names the problem."""
    specs: list[Spec] = []
    for part in text.split(","):
        item = part.strip()
        m = _SPEC.match(item)
        if m is None:
            raise SpecError(f"invalid port specification {item!r} (expected PORT, "
                            f"LOCAL:REMOTE, START-END or BIND:LOCAL:REMOTE)")
        bind_text, l0, l1, r0, r1 = m.groups()
        bind = DEFAULT_BIND
        if bind_text:
            try:
                bind = str(ipaddress.ip_address(bind_text.strip("[]")))
            except ValueError:
                raise SpecError(f"invalid port specification {item!r}: bad address "
                                f"{bind_text!r}") from None
        local = _range(l0, l1, item)
        remote = _range(r0, r1, item) if r0 else local
        if len(local) != len(remote):
            raise SpecError(f"invalid port specification {item!r}: port ranges must be the "
                            f"same length, got {len(local)} ports forwarded to "
                            f"{len(remote)} ports")
        specs.extend(Spec(bind, lp, rp, default_bind=not bind_text)
                     for lp, rp in zip(local, remote))
    return specs


def parse_spec(text: str) -> Spec:
    """One ``PORT``, ``LOCAL:REMOTE`` or ``BIND:LOCAL:REMOTE`` spec (no list, no range)."""
    specs = parse_specs(text)
    if len(specs) != 1:
        raise SpecError(f"invalid port specification {text!r}: one port expected")
    return specs[0]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("port-forward", help="forward local TCP ports to ports on an agent",
                       description="Forward local ports to ports in the workspace, as coder "
                                   "port-forward: -p 8080, -p 8000:80, -p 9090-9091:3000-3001, "
                                   "-p 8080:80,8081:81, -p 127.0.0.1:8080:80.")
    add_target_arguments(p)
    p.add_argument("-p", "--tcp", dest="specs", action="append", type=parse_specs, default=[],
                   metavar="[BIND:]LOCAL[:REMOTE][,...]",
                   help="TCP port(s) to forward; ranges START-END (repeatable)")
    p.add_argument("-u", "--udp", dest="udp_specs", action="append", type=parse_specs,
                   default=[], metavar="[BIND:]LOCAL[:REMOTE][,...]",
                   help="UDP port(s) to forward; ranges START-END (repeatable)")


def _flatten(groups: list[list[Spec]]) -> list[Spec]:
    return [spec for group in groups for spec in group]


def _binds(spec: Spec) -> list[str]:
    """Where ``spec`` listens: [::1] first (when the host has it and no address was given),
    then its bind address."""
    return (["::1"] if spec.default_bind and _has_ipv6_loopback() else []) + [spec.bind]


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _url(network: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{network}://{shown}:{port}"


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


def _reason(exc: BaseException) -> str:
    """An OSError's text without the ``[Errno N]`` prefix, else the exception's message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _duplicate(tcp: list[Spec], udp: list[Spec]) -> str | None:
    seen: set[tuple[str, str, int]] = set()
    for network, specs in (("tcp", tcp), ("udp", udp)):
        for spec in specs:
            key = (network, spec.bind, spec.local)
            if key in seen:
                return f"local {_url(network, spec.bind, spec.local)} is specified twice"
            seen.add(key)
    return None


async def _from_agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      port: int) -> None:
    """Copy the agent's side of a forwarded connection to the local client. The agent accepts
    every tunnel connection and resets it when nothing listens on the port in the workspace
    (see ``agent/services/forward.py``): a reset before the first byte is reported as coder
    reports a failed dial."""
    try:
        first = await reader.read(CHUNK)
    except ConnectionResetError:
        print(f"Failed to dial '{_url('tcp', '127.0.0.1', port)}' in workspace: connection "
              f"reset by the agent (is anything listening on port {port}?)",
              file=sys.stderr, flush=True)
        writer.transport.abort()
        return
    except (ConnectionError, OSError):
        writer.transport.abort()
        return
    if not first:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
        return
    writer.write(first)
    await pipe(reader, writer)


async def _reachable(conn: Any) -> None:
    """Return once the agent answers a TSMP ping (Go ``AwaitReachable``: waits as long as it
    takes)."""
    while not await conn.await_reachable(30.0):
        pass


async def run(args: argparse.Namespace) -> int:
    import agentconn

    tcp_specs, udp_specs = _flatten(args.specs), _flatten(args.udp_specs)
    if not tcp_specs and not udp_specs:
        print("agentconn port-forward: give at least one -p/--tcp or -u/--udp", file=sys.stderr)
        return 2
    duplicate = _duplicate(tcp_specs, udp_specs)
    if duplicate:
        print(f"agentconn port-forward: {duplicate}", file=sys.stderr)
        return 2
    conn = await open_conn(args)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if not stop.is_set():
            # coder's line; its leading newline only moves past a "^C" on a terminal
            lead = "\n" if sys.stderr.isatty() else ""
            print(f"{lead}Received signal, closing all listeners and active connections",
                  file=sys.stderr, flush=True)
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    servers: list[asyncio.Server] = []
    udps: list[_LocalUdp] = []
    forwards: set[asyncio.Task[Any]] = set()
    writers: set[asyncio.StreamWriter] = set()
    notices: list[str] = []   # coder's stderr lines, printed once the agent is reachable
    summary: list[str] = []   # our stdout lines, one per spec

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      spec: Spec) -> None:
        task = asyncio.current_task()
        assert task is not None
        forwards.add(task)
        writers.add(writer)
        remote: Any = None
        try:
            try:
                remote = await conn.dial("tcp", spec.remote)
            except (OSError, ValueError, agentconn.AgentConnError) as e:
                print(f"Failed to dial '{_url('tcp', '127.0.0.1', spec.remote)}' in workspace: "
                      f"{_reason(e)}", file=sys.stderr, flush=True)
                return
            writers.add(remote[1])
            await asyncio.gather(pipe(reader, remote[1]),
                                 _from_agent(remote[0], writer, spec.remote))
        except asyncio.CancelledError:
            # shutting down: end quietly (asyncio logs a traceback for a client_connected_cb
            # task that ends cancelled)
            pass
        except Exception:
            if not stop.is_set():   # at exit, the sockets are closed under the copies
                raise
        finally:
            ends = [writer, *([remote[1]] if remote is not None else [])]
            for w in ends:
                writers.discard(w)
                if stop.is_set():
                    w.transport.abort()
                else:
                    w.close()
            if not stop.is_set():
                for w in ends:
                    with contextlib.suppress(Exception):
                        await w.wait_closed()
            forwards.discard(task)

    try:
        for sig in signals:
            loop.add_signal_handler(sig, on_signal)
        for network, specs in (("udp", udp_specs), ("tcp", tcp_specs)):
            for spec in specs:
                for bind in _binds(spec):
                    try:
                        if network == "udp":
                            udp = _LocalUdp(conn, spec)
                            await loop.create_datagram_endpoint(
                                lambda u=udp: u,  # type: ignore[misc]
                                local_addr=(bind, spec.local))
                            udps.append(udp)
                        else:
                            servers.append(await asyncio.start_server(
                                functools.partial(forward, spec=spec), bind, spec.local))
                    except OSError as e:
                        if bind != spec.bind:   # the opportunistic [::1]: 127.0.0.1 suffices
                            continue
                        print(f"agentconn port-forward: listen "
                              f"'{_url(network, bind, spec.local)}': {_reason(e)}",
                              file=sys.stderr)
                        return 1
                    notices.append(f"Forwarding '{_url(network, bind, spec.local)}' locally to "
                                   f"'{_url(network, '127.0.0.1', spec.remote)}' in the "
                                   f"workspace")
                summary.append(f"Forwarding {network} {spec.bind}:{spec.local} -> "
                               f"[{conn.agent_address}]:{spec.remote}")
        reachable = asyncio.ensure_future(_reachable(conn))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({reachable, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reachable.cancel()
            stopped.cancel()
        if not stop.is_set():
            for line in notices:
                print(line, file=sys.stderr)
            print("Ready!", file=sys.stderr, flush=True)
            for line in summary:
                print(line, flush=True)
            await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await _shut_down(servers, udps, forwards, writers)
        await conn.close()
    return 0


async def _shut_down(servers: list[asyncio.Server], udps: list[_LocalUdp],
                     forwards: set[asyncio.Task[Any]],
                     writers: set[asyncio.StreamWriter]) -> None:
    """Close the listeners, then every forwarded connection (both sides), and wait a moment
    for their tasks to end."""
    for u in udps:
        u.close()
    for s in servers:
        s.close()
    for w in list(writers):
        with contextlib.suppress(Exception):
            w.transport.abort()
    if forwards:
        _, pending = await asyncio.wait(set(forwards), timeout=CLOSE_GRACE)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_GRACE)
    for s in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(s.wait_closed(), CLOSE_GRACE)
