"""The VNC route's pipe: one viewer's websocket ↔ the Xvnc unix socket (agent-api.md §11.1).

Theory of operation
-------------------
The websocket carries the raw RFB stream in binary messages whose boundaries mean nothing;
the agent only copies bytes, it never parses RFB. Each viewer gets its own connection to
Xvnc's socket (Xvnc runs ``-AlwaysShared``, so viewers coexist). Two directions:

Xvnc → viewer (the bulk: framebuffer updates)
    :class:`_VncSide` is the unix socket's asyncio protocol. Every ``data_received`` chunk
    goes straight out as one binary message (:meth:`WebSocket.write_message`: the frame header
    and the chunk are two writes, the chunk is never copied or compressed). When the
    websocket transport's buffer passes its high-water mark (:data:`HIGH_WATER`) the unix
    socket's reading is paused, and resumed once that buffer has drained below
    :data:`LOW_WATER`. So a viewer that stops reading stops Xvnc's output at the socket:
    the agent holds at most one high-water mark plus one read per viewer, whatever happens
    on the screen.
viewer → Xvnc (input events, small)
    message pieces are forwarded as they arrive (never joined, so there is no message size
    limit and no buffering of a whole message), waiting for the unix socket to drain when
    Xvnc is slow to read. An :class:`~agentconn.agent.desktop.rfbinput.RfbInputScanner` reads
    along: each key, pointer or clipboard message from the viewer calls ``on_input`` (the
    desktop's activity clock, which the idle-recording watchdog reads), while a viewer that
    only asks for updates does not.

Either side ending ends both: the viewer's close frame or hang-up closes the socket; Xvnc
closing its socket sends a close frame (1000). Nothing here is an error worth a traceback:
viewers come and go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from agentconn.agent.desktop.rfbinput import RfbInputScanner
from agentconn.web.errors import ConnectionClosed
from agentconn.web.websocket import WebSocket

__all__ = ["HIGH_WATER", "LOW_WATER", "VncBridge", "open_vnc"]

_log = logging.getLogger("agentconn.agent.desktop.vnc")

#: The websocket transport's write buffer limits (bytes) that pause / resume reading Xvnc.
#: A full 1280x720 frame is 3.7 MB: a 1 MiB mark lets Xvnc hand over a frame in 4 pieces
#: rather than 15, each of them a wake-up of another process (it matters on a busy machine).
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
#: RFC 6455 §7.4.1 close codes.
_CLOSE_NORMAL = 1000
_CLOSE_UNSUPPORTED_DATA = 1003


class _VncSide(asyncio.Protocol):
    """The Xvnc socket's protocol: forwards to the websocket, paused by its backpressure."""

    def __init__(self, bridge: VncBridge) -> None:
        self.bridge = bridge
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A unix socket's transport (uvloop's are not asyncio.Transport subclasses).
        self.transport = cast(asyncio.Transport, transport)
        # Xvnc speaks first (its RFB version); hold it until the websocket is accepted (an
        # event loop may still deliver a first read: VncBridge keeps it for then).
        self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.bridge._to_viewer(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        if not self.closed.done():
            self.closed.set_result(exc)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()


class VncBridge:
    """Copies between one viewer's websocket and its own connection to the VNC socket.

    Connect with :func:`open_vnc` (reading starts paused), accept the websocket, then
    :meth:`run`.

    ``on_input`` is called for every piece of the viewer's bytes that ends an input message
    (key, pointer, clipboard).

    Counters for tests and diagnostics: ``to_viewer_bytes``, ``to_vnc_bytes``, ``pauses``
    (times reading Xvnc was paused by backpressure), ``max_buffered`` (the largest the
    websocket's write buffer got, in bytes) and ``scanner.inputs`` (input messages seen).
    """

    def __init__(self, on_input: Callable[[], None] | None = None) -> None:
        self._on_input = on_input
        self.scanner = RfbInputScanner()
        self._ws: WebSocket | None = None
        self.to_viewer_bytes = 0
        self.to_vnc_bytes = 0
        self.pauses = 0
        self.max_buffered = 0
        self._vnc: _VncSide | None = None
        self._early: list[bytes] = []  # from Xvnc before the websocket was accepted
        self._paused = False
        self._resumer: asyncio.Task[None] | None = None

    @property
    def ws(self) -> WebSocket:
        """The viewer's websocket (set by :meth:`run`)."""
        assert self._ws is not None, "bridge not running"
        return self._ws

    @property
    def buffered(self) -> int:
        """Bytes waiting in the websocket transport's buffer right now."""
        return self.ws.transport.get_write_buffer_size()

    def _to_viewer(self, data: bytes) -> None:
        if self._ws is None:
            self._early.append(data)
            return
        try:
            self.ws.write_message(data)
        except ConnectionClosed:
            if self._vnc is not None and self._vnc.transport is not None:
                self._vnc.transport.close()
            return
        self.to_viewer_bytes += len(data)
        size = self.ws.transport.get_write_buffer_size()
        self.max_buffered = max(self.max_buffered, size)
        if size > HIGH_WATER and not self._paused:
            assert self._vnc is not None and self._vnc.transport is not None
            self._paused = True
            self.pauses += 1
            self._vnc.transport.pause_reading()
            self._resumer = asyncio.get_running_loop().create_task(self._resume_when_drained())

    async def _resume_when_drained(self) -> None:
        try:
            await self.ws.drain()  # returns once the buffer is below LOW_WATER
        except ConnectionClosed:
            return
        self._paused = False
        vnc = self._vnc
        if vnc is not None and vnc.transport is not None and not vnc.transport.is_closing():
            vnc.transport.resume_reading()

    async def run(self, ws: WebSocket, vnc_transport: asyncio.Transport, vnc: _VncSide) -> None:
        """Copy both ways until either side ends, then close both. Never raises for a
        viewer or server that goes away."""
        self._ws, self._vnc = ws, vnc
        ws.transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        early, self._early = self._early, []
        for data in early:
            self._to_viewer(data)
        vnc_transport.resume_reading()
        pump = asyncio.ensure_future(self._to_vnc(vnc_transport, vnc))
        try:
            await asyncio.wait([pump, vnc.closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            pump.cancel()
            if self._resumer is not None:
                self._resumer.cancel()
            vnc_transport.close()
            await asyncio.gather(pump, return_exceptions=True)
        if not self.ws.closed:
            try:
                await self.ws.close(_CLOSE_NORMAL, "VNC server closed the connection")
            except (ConnectionClosed, ConnectionError, OSError):
                pass

    def abort(self) -> None:
        """Hang up both sides at once (the agent is stopping)."""
        if self._vnc is not None and self._vnc.transport is not None:
            self._vnc.transport.abort()
        if self._ws is not None:
            self._ws.transport.abort()

    async def _to_vnc(self, transport: asyncio.Transport, vnc: _VncSide) -> None:
        while True:
            try:
                piece = await self.ws.receive_chunk()
            except ConnectionClosed:
                return
            if isinstance(piece, str):  # §11.1: binary messages only
                await self.ws.close(_CLOSE_UNSUPPORTED_DATA, "binary messages only")
                return
            if transport.is_closing():
                return
            transport.write(piece)
            self.to_vnc_bytes += len(piece)
            if self.scanner.receive_data(piece) and self._on_input is not None:
                self._on_input()
            await vnc.drain()


async def open_vnc(path: str, bridge: VncBridge) -> tuple[asyncio.Transport, _VncSide]:
    """Connect to the VNC server's unix socket ``path`` for ``bridge``; raises ``OSError``."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_unix_connection(lambda: _VncSide(bridge), path)
    return transport, protocol
