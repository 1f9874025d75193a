"""asyncio DERP clients: :class:`DerpClient` (one region) and :class:`DerpPool` (several).

Theory of operation. A :class:`DerpClient` keeps one session at a time to its region: dial a
node (:func:`~.transport.dial_node`: ``Upgrade: DERP``, or the websocket when
``force_websockets`` is set or an upgrade got a 4xx — then sticky), run the sans-IO
:class:`~.clientconn.DerpClientConnection` on it, and report events through
:meth:`DerpClient.next_event` (or ``async for``). Per session there is one reader loop
(bytes → core → events), one writer task woken when the core has output, and one
``loop.call_at`` timer re-armed from the core's deadline.

When a session ends (EOF, error, read timeout, or after a Restarting frame) the client emits
:class:`~.events.Disconnected` and reconnects with exponential backoff (after a Restarting
frame: first after ``reconnect_in``, then retrying quickly for ``try_for``); each successful
login emits :class:`~.events.Connected` with ``generation`` + 1, so the caller knows to
re-announce itself. Sends while disconnected are dropped and counted (WireGuard retransmits).

Backpressure: :meth:`DerpClient.send_packet` waits while more than ``HIGH_WATER`` bytes are
queued for the transport; the reader stops reading while the event queue is full, so a slow
consumer slows the server (which then drops, §5.6) rather than growing memory here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Self

from ...web.errors import WebError
from ..keys import NodePrivate, NodePublic
from .clientconn import ClientState, DerpClientConnection
from .derpmap import DerpMap, DerpNode, DerpRegion, home_region_id
from .errors import DerpClosedError, DerpConnectError, DerpError, DerpLoginError
from .events import (
    Connected,
    ConnectionTerminated,
    DerpEvent,
    Disconnected,
    PacketReceived,
    Ping,
    Pong,
    Restarting,
)
from .frames import MAX_PACKET_SIZE, ClientInfo
from .transport import StreamPipe, WebSocketPipe, dial_node

__all__ = ["DerpClient", "DerpPool"]

_log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024  #: queued output bytes above which ``send_packet`` waits
LOW_WATER = 64 * 1024
_CLOSED = object()


class _Session:
    """One transport + core: the reader loop, writer task and timer of a connection."""

    def __init__(
        self, client: DerpClient, pipe: StreamPipe | WebSocketPipe, core: DerpClientConnection
    ) -> None:
        self.client = client
        self.pipe = pipe
        self.core = core
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.connected: asyncio.Future[Connected] = self.loop.create_future()
        self.restarting: Restarting | None = None
        self.ended: asyncio.Future[str] = self.loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._reader = asyncio.create_task(self._read_loop(), name=f"derp-read-{client.region_id}")
        self._writer = asyncio.create_task(self._write_loop(), name=f"derp-write-{client.region_id}")

    async def _read_loop(self) -> None:
        core = self.core
        reason = "closed"
        try:
            self._arm_timer()
            while core.state is not ClientState.CLOSED:
                data = await self.pipe.read()
                core.receive_data(data, self.loop.time())
                await self._drain_events()
                self._wake_writer()
                self._arm_timer()
        except DerpError as exc:  # e.g. a text message on the websocket
            core.close(str(exc))
        except asyncio.CancelledError:
            core.close("session cancelled")
            raise
        finally:
            term = core.terminated
            reason = term.reason if term is not None else reason
            if term is not None and term.error is not None:
                _log.info("DERP region %s: %s", self.client.region_id, term.error)
            await self._drain_events(final=True)
            self._finish(reason)

    async def _drain_events(self, final: bool = False) -> None:
        client = self.client
        sink = client.packet_sink
        packets: list[PacketReceived] = []
        try:
            while (event := self.core.next_event()) is not None:
                if sink is not None and type(event) is PacketReceived:
                    packets.append(event)  # handed over together, below
                    continue
                if packets:
                    self._sink(packets)
                    packets = []
                await self._dispatch_event(client, event, final)
        finally:
            if packets:
                self._sink(packets)

    def _sink(self, packets: list[PacketReceived]) -> None:
        client = self.client
        assert client.packet_sink is not None
        try:
            client.packet_sink(packets)
        except Exception:  # noqa: BLE001 - the reader must survive its consumer
            client.drops["packet_sink_failed"] += len(packets)
            _log.exception("DERP packet sink failed; %d packets dropped", len(packets))

    async def _dispatch_event(self, client: DerpClient, event: DerpEvent, final: bool) -> None:
        if isinstance(event, Connected):
            client.generation += 1
            client.server_key = event.server_key
            event = Connected(
                event.server_key, client.generation,
                event.token_bucket_bytes_per_second, event.token_bucket_bytes_burst,
            )
            if not self.connected.done():
                self.connected.set_result(event)
        if isinstance(event, ConnectionTerminated):
            if not self.connected.done():
                self.connected.set_exception(
                    event.error or DerpLoginError(f"DERP login failed: {event.reason}")
                )
            return
        if isinstance(event, Pong):
            client._on_pong(event.data)
        elif isinstance(event, Restarting):
            self.restarting = event
        elif isinstance(event, Ping):
            return  # answered by the core
        if not final:
            await client._deliver(event)
        else:
            client._deliver_nowait(event)

    def _wake_writer(self) -> None:
        if self.core.pending_bytes:
            self.wake.set()
            if self.core.pending_bytes > HIGH_WATER:
                self.writable.clear()

    async def _write_loop(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while data := self.core.data_to_send():
                    await self.pipe.send(data)
                    if self.core.pending_bytes < LOW_WATER:
                        self.writable.set()
                self.writable.set()
        except (ConnectionError, OSError, WebError) as exc:
            self.core.close(f"write failed: {exc}")
            self.pipe.abort()
        finally:
            self.writable.set()

    def _arm_timer(self) -> None:
        deadline = self.core.get_timer()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.core.handle_timer(self.loop.time())
        if self.core.state is ClientState.CLOSED:
            self.pipe.abort()  # the reader sees EOF and drains the termination
        else:
            self._arm_timer()

    def _finish(self, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._writer.cancel()
        self.pipe.abort()
        if not self.ended.done():
            self.ended.set_result(reason)

    def send(self) -> None:
        self._wake_writer()

    def close(self, reason: str) -> None:
        self.core.close(reason)
        self.pipe.abort()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(self._reader, self._writer, return_exceptions=True)


class DerpClient:
    """A DERP client for one region of a DERP map, reconnecting until :meth:`close`.

    ``private_key``: our node key. ``region``: from the DERP map (its non-STUN nodes are tried
    in order). ``force_websockets``: always use DERP-over-websocket (``derp_force_websockets``).
    ``headers``: extra HTTP headers (no token: DERP is unauthenticated). ``preferred``: send
    NotePreferred(1) after every login (this is our home region). ``connect_timeout``: for a
    whole dial + upgrade + login. Backoff between reconnects doubles from ``min_backoff`` to
    ``max_backoff`` seconds.

    Use::

        client = DerpClient(key, region)
        await client.connect()
        await client.send_packet(peer_key, wireguard_bytes)
        async for event in client:          # PacketReceived, PeerGone, Health, Restarting,
            ...                             # KeepAlive, Pong, Connected, Disconnected
        await client.close()
    """

    def __init__(
        self,
        private_key: NodePrivate,
        region: DerpRegion,
        *,
        force_websockets: bool = False,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        ssl_context: ssl.SSLContext | None = None,
        preferred: bool = False,
        client_info: ClientInfo | None = None,
        connect_timeout: float = 10.0,
        min_backoff: float = 0.25,
        max_backoff: float = 10.0,
        event_queue_size: int = 1024,
    ) -> None:
        self.private_key = private_key
        self.public_key: NodePublic = private_key.public
        self.region = region
        self.force_websockets = force_websockets
        self.forced_websocket = False
        """True once an upgrade got a 4xx and the client switched to websockets for good
        (``Node.derp_forced_websocket``)."""
        self.forced_websocket_reason = ""
        self.headers = list(headers.items() if isinstance(headers, Mapping) else headers)
        self.ssl_context = ssl_context
        self.preferred = preferred
        self.client_info = client_info or ClientInfo()
        self.connect_timeout = connect_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.generation = 0
        self.server_key: NodePublic | None = None
        self.transport_kind: str | None = None
        self.drops: Counter[str] = Counter()
        self._events: asyncio.Queue[object] = asyncio.Queue(event_queue_size)
        self.packet_sink: Callable[[list[PacketReceived]], None] | None = None
        """When set, received packets skip the event queue: each read's packets are handed
        to it in one call, in order, from the reader (it must not block)."""
        self._session: _Session | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self._closed = False

    @property
    def region_id(self) -> int:
        """The region this client serves."""
        return self.region.region_id

    @property
    def connected(self) -> bool:
        """True while logged in to the server."""
        s = self._session
        return s is not None and s.core.state is ClientState.CONNECTED

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def stats(self) -> dict[str, object]:
        """Counters: generation, packets sent/received on the current session, drops."""
        s = self._session
        drops = Counter(self.drops)
        if s is not None:
            drops.update(s.core.drops)
        return {
            "region_id": self.region_id,
            "connected": self.connected,
            "generation": self.generation,
            "transport": self.transport_kind,
            "forced_websocket": self.forced_websocket,
            "packets_sent": s.core.packets_sent if s else 0,
            "packets_received": s.core.packets_received if s else 0,
            "drops": dict(drops),
        }

    # ----- connecting ----------------------------------------------------------------------

    async def connect(self) -> Connected:
        """Connect and log in (trying each DERP node of the region, falling back to the
        websocket after a 4xx), then keep the connection up in the background.

        Returns the :class:`~.events.Connected` event (also delivered to the event stream).
        Raises :class:`DerpConnectError` or :class:`DerpLoginError` (the client stays usable
        for another :meth:`connect`), :class:`DerpClosedError` after :meth:`close`.
        """
        if self._closed:
            raise DerpClosedError(f"DERP client for region {self.region_id} is closed")
        if self._supervisor is not None:
            raise DerpError(f"DERP client for region {self.region_id} is already connected")
        connected = await self._open_session()
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"derp-supervise-{self.region_id}"
        )
        return connected

    async def _open_session(self) -> Connected:
        nodes = self.region.derp_nodes
        if not nodes:
            raise DerpConnectError(f"DERP region {self.region_id}: no non-STUN-only nodes")
        errors: list[str] = []
        for node in nodes:
            try:
                return await self._open_node_in_time(node)
            except DerpConnectError as exc:
                if exc.forced_websocket and not self._use_websocket():
                    self._force_websocket(str(exc))
                    try:
                        return await self._open_node_in_time(node)
                    except (DerpError, TimeoutError) as exc2:
                        errors.append(f"{node.name}: {exc2 or 'timed out'}")
                        continue
                errors.append(f"{node.name}: {exc}")
            except TimeoutError:
                errors.append(f"{node.name}: no login within {self.connect_timeout} s")
            except DerpError as exc:
                errors.append(f"{node.name}: {exc}")
        raise DerpConnectError(f"DERP region {self.region_id}: " + "; ".join(errors))

    async def _open_node_in_time(self, node: DerpNode) -> Connected:
        # asyncio.timeout rather than wait_for: 3.11's wait_for can swallow a cancellation.
        async with asyncio.timeout(self.connect_timeout):
            return await self._open_node(node)

    def _use_websocket(self) -> bool:
        return self.force_websockets or self.forced_websocket

    def _force_websocket(self, reason: str) -> None:
        _log.info("DERP region %s: using websockets from now on: %s", self.region_id, reason)
        self.forced_websocket = True
        self.forced_websocket_reason = reason

    async def _open_node(self, node: DerpNode) -> Connected:
        loop = asyncio.get_running_loop()
        pipe = await dial_node(
            node, websocket=self._use_websocket(), headers=self.headers,
            ssl_context=self.ssl_context, timeout=self.connect_timeout,
        )
        core = DerpClientConnection(
            self.private_key, loop.time(), info=self.client_info,
            login_timeout=self.connect_timeout,
        )
        if self.preferred:
            core.note_preferred(True)  # sent right after ClientInfo, as derphttp does
        session = _Session(self, pipe, core)
        try:
            connected = await session.connected
        except BaseException:
            session.close("login failed")
            await session.wait_closed()
            raise
        self.transport_kind = pipe.kind
        self._session = session
        _log.debug("DERP region %s: connected (%s, generation %d)", self.region_id,
                   pipe.kind, self.generation)
        return connected

    async def _supervise(self) -> None:
        backoff = self.min_backoff
        while not self._closed:
            session = self._session
            assert session is not None
            reason = await session.ended
            await session.wait_closed()
            self._session = None
            self._fail_pings()
            if self._closed:
                return
            restart = session.restarting
            if restart is not None:
                delay = restart.reconnect_in
                retry_until = asyncio.get_running_loop().time() + delay + restart.try_for
            else:
                delay = backoff * random.uniform(0.5, 1.0)
                retry_until = None
            await self._deliver(Disconnected(reason, delay))
            while not self._closed:
                await asyncio.sleep(delay)
                if self._closed:
                    return
                try:
                    await self._open_session()
                    backoff = self.min_backoff
                    break
                except DerpError as exc:
                    _log.info("DERP region %s: reconnect failed: %s", self.region_id, exc)
                    now = asyncio.get_running_loop().time()
                    if retry_until is not None and now < retry_until:
                        delay = min(self.min_backoff, retry_until - now)
                        continue
                    retry_until = None
                    backoff = min(backoff * 2, self.max_backoff)
                    delay = backoff * random.uniform(0.5, 1.0)

    # ----- events --------------------------------------------------------------------------

    async def _deliver(self, event: DerpEvent) -> None:
        await self._events.put(event)

    def _deliver_nowait(self, event: DerpEvent) -> None:
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            self.drops["event_queue_full"] += 1

    async def next_event(self) -> DerpEvent:
        """Wait for the next event. Raises :class:`DerpClosedError` once closed and drained."""
        if self._closed and self._events.empty():
            raise DerpClosedError(f"DERP client for region {self.region_id} is closed")
        item = await self._events.get()
        if item is _CLOSED:
            self._events.put_nowait(_CLOSED)  # wake other waiters too
            raise DerpClosedError(f"DERP client for region {self.region_id} is closed")
        return item  # type: ignore[return-value]

    def __aiter__(self) -> AsyncIterator[DerpEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[DerpEvent]:
        while True:
            try:
                yield await self.next_event()
            except DerpClosedError:
                return

    # ----- sending ---------------------------------------------------------------------------

    async def send_packet(self, dst: bytes, data: bytes) -> bool:
        """Send ``data`` (≤ 64 KiB) to node key ``dst`` through the server.

        Returns False when it was dropped: not connected right now (counted in
        ``drops["not_connected"]``) or over the server's advisory rate. Waits while too much
        is queued for the transport. Raises :class:`~.errors.DerpSendError` for an oversize
        packet or bad key, :class:`DerpClosedError` after :meth:`close`.
        """
        if self._closed:
            raise DerpClosedError(f"DERP client for region {self.region_id} is closed")
        s = self._session
        if s is None or s.core.state is ClientState.CLOSED:
            self.drops["not_connected"] += 1
            return False
        sent = s.core.send_packet(dst, data, s.loop.time())
        s.send()
        if not s.writable.is_set():
            await s.writable.wait()
        return sent

    async def send_packets(self, dst: bytes, datagrams: Sequence[bytes]) -> int:
        """Send each of ``datagrams`` to node key ``dst``, in order, as one write: the frames
        are queued together, the writer is woken once and backpressure is awaited once.

        Returns how many were queued; the rest were dropped and counted like
        :meth:`send_packet`'s (``not_connected``, the core's ``rate_limited``, and
        ``too_big`` for a datagram over 64 KiB, which does not raise here). Raises
        :class:`~.errors.DerpSendError` for a bad key, :class:`DerpClosedError` after
        :meth:`close`.
        """
        if self._closed:
            raise DerpClosedError(f"DERP client for region {self.region_id} is closed")
        s = self._session
        if s is None or s.core.state is ClientState.CLOSED:
            self.drops["not_connected"] += len(datagrams)
            return 0
        fit = [data for data in datagrams if len(data) <= MAX_PACKET_SIZE]
        if len(fit) != len(datagrams):
            self.drops["too_big"] += len(datagrams) - len(fit)
        sent = s.core.send_packets(dst, fit, s.loop.time())
        s.send()
        if not s.writable.is_set():
            await s.writable.wait()
        return sent

    def note_preferred(self, preferred: bool) -> None:
        """Tell the server (now and after every reconnect) whether it is our home region."""
        self.preferred = preferred
        s = self._session
        if s is not None and s.core.state is not ClientState.CLOSED:
            s.core.note_preferred(preferred)
            s.send()

    async def ping(self, timeout: float = 5.0) -> float:
        """Send a DERP Ping and wait for its Pong; returns the round trip in seconds.

        Raises :class:`TimeoutError` (after ``timeout``, Go's limit is 5 s),
        :class:`DerpConnectError` when not connected or the connection drops meanwhile.
        """
        s = self._session
        if self._closed:
            raise DerpClosedError(f"DERP client for region {self.region_id} is closed")
        if s is None or s.core.state is ClientState.CLOSED:
            raise DerpConnectError(f"DERP region {self.region_id}: not connected")
        data = os.urandom(8)
        fut: asyncio.Future[None] = s.loop.create_future()
        self._pings[data] = fut
        start = s.loop.time()
        try:
            s.core.send_ping(data)
            s.send()
            async with asyncio.timeout(timeout):
                await fut
        finally:
            self._pings.pop(data, None)
        return s.loop.time() - start

    def _on_pong(self, data: bytes) -> None:
        fut = self._pings.pop(data, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _fail_pings(self) -> None:
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(DerpConnectError(f"DERP region {self.region_id}: disconnected"))
        self._pings.clear()

    # ----- closing -------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection and stop reconnecting (idempotent). Pending :meth:`next_event`
        calls then raise :class:`DerpClosedError`."""
        if self._closed:
            return
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        s = self._session
        if s is not None:
            s.close("closed by the client")
            await s.wait_closed()
        if self._supervisor is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._fail_pings()
        while True:  # make room so the sentinel always fits
            try:
                self._events.put_nowait(_CLOSED)
                break
            except asyncio.QueueFull:
                self._events.get_nowait()
                self.drops["event_queue_full"] += 1

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "connected" if self.connected else ("closed" if self._closed else "idle")
        return f"<DerpClient region={self.region_id} {self.public_key.short_string()} {state}>"


class DerpPool:
    """DERP clients to several regions of one map, opened on demand (§5.9).

    The home region (``home_region``, default :func:`~.derpmap.home_region_id`) is connected
    by :meth:`start` and marked preferred; other regions open on the first :meth:`send` to
    them and close after ``idle_timeout`` seconds without a send (Go: 60 s). Events of every
    client arrive as ``(region_id, event)`` from :meth:`next_event` or ``async for``.
    """

    def __init__(
        self,
        private_key: NodePrivate,
        derp_map: DerpMap,
        *,
        home_region: int | None = None,
        force_websockets: bool = False,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = 60.0,
        **client_options: object,
    ) -> None:
        self.private_key = private_key
        self.derp_map = derp_map
        self.home_region = home_region if home_region is not None else home_region_id(derp_map)
        self.force_websockets = force_websockets
        self.headers = list(headers.items() if isinstance(headers, Mapping) else headers)
        self.ssl_context = ssl_context
        self.idle_timeout = idle_timeout
        self._client_options = client_options
        self.clients: dict[int, DerpClient] = {}
        self._opening: dict[int, asyncio.Task[DerpClient]] = {}
        self._pumps: dict[int, asyncio.Task[None]] = {}
        self.packet_sink: Callable[[int, list[PacketReceived]], None] | None = None
        """When set (before the regions open), received packets skip the event queues:
        ``packet_sink(region_id, packets)`` gets each read's packets in one call (see
        :attr:`DerpClient.packet_sink`); other events still come from :meth:`next_event`."""
        self._last_send: dict[int, float] = {}
        self._events: asyncio.Queue[tuple[int, DerpEvent] | object] = asyncio.Queue(1024)
        self._idle_task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> DerpClient:
        """Connect the home region; raises like :meth:`DerpClient.connect`."""
        client = await self.client(self.home_region)
        if self._idle_task is None:
            self._idle_task = asyncio.create_task(self._reap_idle(), name="derp-pool-idle")
        return client

    async def client(self, region_id: int) -> DerpClient:
        """The connected client of ``region_id``, opening it if needed (concurrent callers
        share one attempt). Raises :class:`DerpConnectError` for an unknown region."""
        if self._closed:
            raise DerpClosedError("DERP pool is closed")
        existing = self.clients.get(region_id)
        if existing is not None:
            return existing
        task = self._opening.get(region_id)
        if task is None:
            task = asyncio.create_task(self._open(region_id), name=f"derp-open-{region_id}")
            self._opening[region_id] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._opening.pop(region_id, None)

    async def _open(self, region_id: int) -> DerpClient:
        region = self.derp_map.regions.get(region_id)
        if region is None:
            raise DerpConnectError(f"DERP region {region_id} is not in the DERP map")
        client = DerpClient(
            self.private_key, region, force_websockets=self.force_websockets,
            headers=self.headers, ssl_context=self.ssl_context,
            preferred=region_id == self.home_region,
            **self._client_options,  # type: ignore[arg-type]
        )
        if self.packet_sink is not None:
            sink = self.packet_sink
            client.packet_sink = lambda packets: sink(region_id, packets)
        await client.connect()
        if self._closed:
            await client.close()
            raise DerpClosedError("DERP pool is closed")
        self.clients[region_id] = client
        self._last_send[region_id] = asyncio.get_running_loop().time()
        self._pumps[region_id] = asyncio.create_task(
            self._pump(region_id, client), name=f"derp-pump-{region_id}"
        )
        return client

    async def _pump(self, region_id: int, client: DerpClient) -> None:
        async for event in client:
            await self._events.put((region_id, event))

    async def send(self, region_id: int, dst: bytes, data: bytes) -> bool:
        """Send ``data`` to node key ``dst`` through region ``region_id`` (opened on demand).

        Returns False when dropped (see :meth:`DerpClient.send_packet`). Raises
        :class:`DerpConnectError` when the region cannot be reached."""
        client = await self.client(region_id)
        self._last_send[region_id] = asyncio.get_running_loop().time()
        return await client.send_packet(dst, data)

    async def send_batch(self, region_id: int, dst: bytes, datagrams: Sequence[bytes]) -> int:
        """Send ``datagrams`` to node key ``dst`` through region ``region_id`` as one write
        (see :meth:`DerpClient.send_packets`); returns how many were queued. Raises like
        :meth:`send`."""
        client = await self.client(region_id)
        self._last_send[region_id] = asyncio.get_running_loop().time()
        return await client.send_packets(dst, datagrams)

    def update_map(self, derp_map: DerpMap) -> None:
        """Use a new DERP map (e.g. from ``StreamDERPMaps``): clients take their region's new
        nodes on their next (re)connect; clients of regions that disappeared are closed."""
        self.derp_map = derp_map
        for rid, client in list(self.clients.items()):
            region = derp_map.regions.get(rid)
            if region is None:
                asyncio.ensure_future(self._close_region(rid))
            else:
                client.region = region

    async def _close_region(self, region_id: int) -> None:
        client = self.clients.pop(region_id, None)
        self._last_send.pop(region_id, None)
        if client is not None:
            await client.close()
        pump = self._pumps.pop(region_id, None)
        if pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _reap_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            now = loop.time()
            next_check = now + self.idle_timeout
            for rid, last in list(self._last_send.items()):
                if rid == self.home_region:
                    continue
                if now - last >= self.idle_timeout:
                    _log.debug("DERP region %s idle for %.0f s: closing", rid, now - last)
                    await self._close_region(rid)
                else:
                    next_check = min(next_check, last + self.idle_timeout)
            await asyncio.sleep(max(0.05, next_check - loop.time()))

    async def next_event(self) -> tuple[int, DerpEvent]:
        """The next ``(region_id, event)``. Raises :class:`DerpClosedError` once closed."""
        item = await self._events.get()
        if item is _CLOSED:
            self._events.put_nowait(_CLOSED)
            raise DerpClosedError("DERP pool is closed")
        return item  # type: ignore[return-value]

    def __aiter__(self) -> AsyncIterator[tuple[int, DerpEvent]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[int, DerpEvent]]:
        while True:
            try:
                yield await self.next_event()
            except DerpClosedError:
                return

    async def close(self) -> None:
        """Close every client (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._idle_task is not None:
            self._idle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle_task
        for task in self._opening.values():
            task.cancel()
        for rid in list(self.clients):
            await self._close_region(rid)
        while True:
            try:
                self._events.put_nowait(_CLOSED)
                break
            except asyncio.QueueFull:
                self._events.get_nowait()
