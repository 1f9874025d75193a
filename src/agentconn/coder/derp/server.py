"""asyncio DERP server (relay): ``/derp`` over ``Upgrade: DERP`` and over websockets.

Theory of operation. :meth:`DerpServer.handle` is an :class:`~agentconn.web.HttpServer`
handler (mount it in any server, or let :meth:`DerpServer.start` run one). It follows
``derphttp.Handler`` wrapped by Coder's ``WithWebsocketSupport`` (§5.1, §5.2, §5.8):

- ``/derp/probe`` and ``/derp/latency-check``: ``200`` to GET/HEAD (netcheck's HTTPS probe);
- ``/derp`` with ``Upgrade: websocket`` and a ``derp`` subprotocol: websocket, no compression;
- ``/derp`` with ``Upgrade: derp`` (or a bare ``websocket`` without the subprotocol, as very
  early clients sent): ``101`` with ``Derp-Version`` and ``Derp-Public-Key``, then raw DERP;
- anything else: ``426 DERP requires connection upgrade``.

Each connection runs a sans-IO :class:`~.serverconn.DerpServerConnection`: one reader loop
(bytes → core → events → :class:`~.serverconn.Relay`), one writer task woken when the core
has output (each write must finish within ``write_timeout``, Go's 2 s, or the client is
dropped), one ``loop.call_at`` for the login deadline and keepalives. A connection whose
client breaks the protocol is closed, its reason logged and counted in ``stats()``; the
others are not affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as ssl_
from collections import Counter
from dataclasses import dataclass, field
from typing import Self

from ...web.errors import WebError
from ...web.server import HttpServer, Request, ServerResponse
from ..keys import NodePrivate, NodePublic
from .derpmap import DerpMap, DerpNode, DerpRegion
from .errors import DerpError
from .events import ClientAuthenticated, ConnectionTerminated, PacketToForward
from .frames import HANDSHAKE_TIMEOUT, KEEP_ALIVE, PROTOCOL_VERSION, WRITE_TIMEOUT, ServerInfo
from .serverconn import DEFAULT_QUEUE_DEPTH, DerpServerConnection, Relay, ServerConnState
from .transport import DERP_SUBPROTOCOL, StreamPipe, WebSocketPipe

__all__ = ["DerpServer"]

_log = logging.getLogger(__name__)

_TEXT = [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")]


@dataclass(eq=False)
class _Served:
    core: DerpServerConnection
    pipe: StreamPipe | WebSocketPipe
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    timer_at: float | None = None
    writer: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class DerpServer:
    """A DERP relay. ``private_key``: the server key (a fresh one by default, as coderd makes
    per replica). ``queue_depth``: packets queued per client (Coder: 512). ``keepalive``:
    seconds between KeepAlives (plus 0–5 s jitter unless ``keepalive_jitter=False``).
    ``upgrade_status``: answer ``Upgrade: DERP`` with this HTTP status instead (e.g. 400, to
    force clients onto websockets, as Coder's test harness can). ``websocket=False`` refuses
    the websocket transport.
    """

    def __init__(
        self,
        private_key: NodePrivate | None = None,
        *,
        queue_depth: int = DEFAULT_QUEUE_DEPTH,
        keepalive: float = KEEP_ALIVE,
        keepalive_jitter: bool = True,
        write_timeout: float = WRITE_TIMEOUT,
        login_timeout: float = HANDSHAKE_TIMEOUT,
        server_info: ServerInfo | None = None,
        upgrade_status: int | None = None,
        websocket: bool = True,
    ) -> None:
        self.private_key = private_key or NodePrivate.generate()
        self.public_key: NodePublic = self.private_key.public
        self.queue_depth = queue_depth
        self.keepalive = keepalive
        self.keepalive_jitter = keepalive_jitter
        self.write_timeout = write_timeout
        self.login_timeout = login_timeout
        self.server_info = server_info or ServerInfo()
        self.upgrade_status = upgrade_status
        self.websocket = websocket
        self.relay = Relay()
        self._served: dict[DerpServerConnection, _Served] = {}
        self._counters: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._http: HttpServer | None = None
        self.host: str | None = None
        self.port: int | None = None
        self._tls = False

    # ----- HTTP --------------------------------------------------------------------------

    async def handle(self, request: Request) -> ServerResponse | None:
        """The HTTP handler for ``/derp``, ``/derp/probe`` and ``/derp/latency-check``
        (404 for other paths). Serves an upgraded connection until it ends."""
        path = request.path
        if path in ("/derp/probe", "/derp/latency-check"):
            if request.method in ("GET", "HEAD"):
                return ServerResponse(200, [("Access-Control-Allow-Origin", "*")], b"")
            return ServerResponse(405, list(_TEXT), b"bogus probe method\n")
        if path != "/derp":
            return ServerResponse(404, list(_TEXT), b"404 page not found\n")
        upgrade = request.headers.get("upgrade", "").lower()
        protocols = [
            p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",")
        ]
        if upgrade == "websocket" and "derp" in request.headers.get("sec-websocket-protocol", ""):
            if not self.websocket:
                return ServerResponse(400, list(_TEXT), b"websockets are disabled\n")
            await self._serve_websocket(request, DERP_SUBPROTOCOL in protocols)
            return None
        if upgrade not in ("websocket", "derp"):
            return ServerResponse(426, list(_TEXT), b"DERP requires connection upgrade\n")
        if self.upgrade_status is not None:
            return ServerResponse(
                self.upgrade_status, list(_TEXT), b"Upgrade: DERP refused by configuration\n"
            )
        reader, writer, trailing = await request.accept_upgrade(
            "DERP",
            [("Derp-Version", str(PROTOCOL_VERSION)),
             ("Derp-Public-Key", self.public_key.untyped_hex())],
        )
        await self.serve_pipe(StreamPipe(reader, writer, trailing))
        return None

    async def _serve_websocket(self, request: Request, derp_offered: bool) -> None:
        ws = await request.accept_websocket(
            compression=False, subprotocol=DERP_SUBPROTOCOL if derp_offered else None
        )
        if ws.subprotocol != DERP_SUBPROTOCOL:
            await ws.close(1008, "client must speak the derp subprotocol")
            return
        await self.serve_pipe(WebSocketPipe(ws, request.peer))

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl: ssl_.SSLContext | None = None
    ) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0: any) with our own HTTP server, over TLS with
        ``ssl``; returns the bound (host, port)."""
        self._http = HttpServer(self._route)
        self._tls = ssl is not None
        self._server = await asyncio.start_server(
            self._http.serve_connection, host, port, ssl=ssl
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        return self.host, self.port

    async def _route(self, request: Request) -> ServerResponse | None:
        return await self.handle(request)

    @property
    def url(self) -> str:
        """``http(s)://host:port/derp`` once started."""
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.port}/derp"

    def derp_map(
        self, region_id: int = 1, region_code: str = "test", region_name: str = "test server",
        node_name: str = "test0",
    ) -> DerpMap:
        """A DERP map whose only region points at this started server: plain HTTP
        (``ForceHTTP``), or TLS without verification (``InsecureForTests``) when started with
        ``ssl`` (Coder's integration harness shape, §8.2)."""
        if self.host is None or self.port is None:
            raise RuntimeError("DerpServer.derp_map() needs start() first")
        node = DerpNode(
            name=node_name, region_id=region_id, host_name=self.host, ipv4=self.host,
            ipv6="none", stun_port=-1, derp_port=self.port, insecure_for_tests=True,
            force_http=not self._tls,
        )
        region = DerpRegion(region_id, region_code, region_name, (node,))
        return DerpMap({region_id: region})

    # ----- connections ---------------------------------------------------------------------

    async def serve_pipe(self, pipe: StreamPipe | WebSocketPipe) -> None:
        """Serve one DERP connection on an open transport until it ends (never raises)."""
        loop = asyncio.get_running_loop()
        core = DerpServerConnection(
            self.private_key, loop.time(), server_info=self.server_info,
            queue_depth=self.queue_depth, keepalive=self.keepalive,
            keepalive_jitter=random.uniform(0.0, 5.0) if self.keepalive_jitter else 0.0,
            login_timeout=self.login_timeout, remote=pipe.peer,
        )
        served = _Served(core, pipe)
        self._served[core] = served
        self._counters["accepts"] += 1
        self._counters[f"accepts_{pipe.kind}"] += 1
        served.writer = asyncio.create_task(self._write_loop(served), name="derp-server-write")
        served.wake.set()  # the ServerKey greeting
        try:
            self._arm_timer(served)
            while core.state is not ServerConnState.CLOSED:
                data = await pipe.read()
                before = core.frames_received
                core.receive_data(data, loop.time())
                if core.frames_received != before:
                    self.relay.note_activity(core)
                self._process_events(served, loop.time())
                self._arm_timer(served)
        except DerpError as exc:  # e.g. a text message on the websocket
            self._counters["closed_protocol_error"] += 1
            _log.warning("derp: %s: closing: %s", core.remote, exc)
            core.close(str(exc))
        except Exception as exc:  # noqa: BLE001 - one connection must not stop the server
            _log.exception("derp: %s: connection failed", core.remote)
            core.close(f"{type(exc).__name__}: {exc}")
        finally:
            self._process_events(served, loop.time())
            await self._finish(served)

    def _process_events(self, served: _Served, now: float) -> None:
        core = served.core
        while (event := core.next_event()) is not None:
            if isinstance(event, PacketToForward):
                target = self.relay.forward(core, event.dst, event.data, now)
                if target is not None:
                    self._wake(target)
            elif isinstance(event, ClientAuthenticated):
                self.relay.register(core)
                _log.debug("derp: %s: client %s connected", core.remote, event.client_key)
            elif isinstance(event, ConnectionTerminated):
                if event.error is not None:
                    self._counters["closed_protocol_error"] += 1
                    _log.warning("derp: %s: client %s: closing: %s", core.remote,
                                 core.key.short_string() if core.key else "?", event.reason)
                else:
                    _log.debug("derp: %s: %s", core.remote, event.reason)
        if core.has_data_to_send():
            served.wake.set()

    def _wake(self, core: DerpServerConnection) -> None:
        served = self._served.get(core)
        if served is not None:
            served.wake.set()

    async def _write_loop(self, served: _Served) -> None:
        core, pipe = served.core, served.pipe
        try:
            while True:
                await served.wake.wait()
                served.wake.clear()
                while data := core.data_to_send():
                    try:
                        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                        # cancellation that races with the write finishing.
                        async with asyncio.timeout(self.write_timeout):
                            await pipe.send(data)
                    except TimeoutError:
                        self._counters["write_timeouts"] += 1
                        core.close(f"write timeout after {self.write_timeout} s")
                        pipe.abort()
                        return
        except (ConnectionError, OSError, WebError) as exc:
            core.close(f"write failed: {exc}")
            pipe.abort()

    def _arm_timer(self, served: _Served) -> None:
        deadline = served.core.get_timer()
        if deadline == served.timer_at:
            return
        if served.timer is not None:
            served.timer.cancel()
        served.timer_at = deadline
        loop = asyncio.get_running_loop()
        served.timer = None if deadline is None else loop.call_at(
            deadline, self._on_timer, served
        )

    def _on_timer(self, served: _Served) -> None:
        served.timer = served.timer_at = None
        core = served.core
        core.handle_timer(asyncio.get_running_loop().time())
        if core.state is ServerConnState.CLOSED:
            served.pipe.abort()  # the reader sees EOF and cleans up
            return
        if core.has_data_to_send():
            served.wake.set()
        self._arm_timer(served)

    async def _finish(self, served: _Served) -> None:
        core = served.core
        core.close("connection ended")
        if served.timer is not None:
            served.timer.cancel()
        for peer in self.relay.unregister(core):
            self._wake(peer)
        for reason, n in core.drops.items():
            self._counters[f"drops_{reason}"] += n
        if served.writer is not None:
            served.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await served.writer
        served.pipe.abort()
        self._served.pop(core, None)
        served.done.set()

    # ----- control -----------------------------------------------------------------------

    def connections(self) -> list[DerpServerConnection]:
        """The live connections (authenticated or not)."""
        return list(self._served)

    def stats(self) -> dict[str, int]:
        """Counters: accepts, current clients, packets forwarded, drops by reason (from the
        relay and from every connection, live or closed), protocol-error closes."""
        out: Counter[str] = Counter(self._counters)
        out.update(self.relay.stats)
        for core in self._served:
            for reason, n in core.drops.items():
                out[f"drops_{reason}"] += n
        out["current_connections"] = len(self._served)
        out["current_clients"] = len(self.relay.clients)
        return dict(out)

    def send_health(self, key: NodePublic, problem: str) -> None:
        """Send a Health frame to every connection of ``key``."""
        for core, served in self._served.items():
            if core.key == key:
                core.send_health(problem)
                served.wake.set()

    async def close(self, *, restarting: tuple[float, float] | None = None,
                    grace: float = 1.0) -> None:
        """Stop listening and close every connection. With ``restarting=(reconnect_in,
        try_for)`` (seconds) each client first gets a Restarting frame, flushed within
        ``grace`` seconds."""
        if self._server is not None:
            self._server.close()
        served_all = list(self._served.values())
        if restarting is not None:
            for served in served_all:
                served.core.send_restarting(*restarting)
                served.wake.set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            for served in served_all:
                while served.core.has_data_to_send() and loop.time() < deadline:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0)  # let the writers hand the bytes to the transports
        for served in served_all:
            served.core.close("server closing")
            served.pipe.abort()
        for served in served_all:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(served.done.wait(), 5.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
