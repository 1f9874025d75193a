"""asyncio transports, servers and streams over the userspace TCP stack (``_wgcore.tcpip``).

Theory of operation
-------------------
A :class:`TcpTransport` wraps one ``TcpConn``. It is a real :class:`asyncio.Transport`, so any
asyncio protocol (``StreamReaderProtocol``, h11 adapters, asyncssh) runs on it unchanged.

* Writing: ``write()`` copies into the connection's send ring (the equivalent of a kernel socket
  buffer, up to ``TcpStack.send_buffer`` bytes) and asks the tunnel for one coalesced flush.
  What does not fit stays in this transport's own buffer, which is what
  ``get_write_buffer_size()`` reports and what drives ``pause_writing``/``resume_writing``
  against the high/low water marks, exactly as asyncio's socket transports do.
* Reading: when a batch brought in-order data, the tunnel delivers the connection's events
  once per batch (``StackHost.watch``); all new bytes go to ``data_received`` in one call. ``pause_reading()`` simply stops
  taking data out of the receive ring, so the advertised window shrinks and the peer stops —
  memory stays bounded by the window.
* Closing: ``close()`` lets buffered data go, then sends FIN; ``connection_lost(None)`` follows
  once the data is handed to the stack (as asyncio does once it is handed to the kernel).
  ``abort()`` sends RST. A reset, a refused connection or a timeout reaches the protocol as
  ``connection_lost(ConnectionResetError/ConnectionRefusedError/TimeoutError)``.

:class:`TunnelServer` mirrors :class:`asyncio.Server` for a listener on the tunnel.
:class:`StreamEndpoints` (mixed into ``Tunnel``) builds both; everything they need from the
tunnel goes through the narrow :class:`~agentconn.aio.host.StackHost`.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from _wgcore.tcpip import TcpConn, TcpEvent, TcpListener, TcpState

from ..errors import TunnelClosedError
from .host import StackHost

__all__ = [
    "StreamEndpoints",
    "TcpTransport",
    "TunnelServer",
    "address_tuple",
    "connection_error",
]

log = logging.getLogger("agentconn.tcp")

EV_READABLE = TcpEvent.READABLE
EV_EOF = TcpEvent.EOF
EV_WRITABLE = TcpEvent.WRITABLE
EV_CLOSED = TcpEvent.CLOSED
EV_ACCEPT = TcpEvent.ACCEPT

DEFAULT_HIGH_WATER = 64 * 1024
READ_CHUNK = 1 << 20          # largest single data_received() call


def address_tuple(raw: bytes, port: int) -> tuple[Any, ...]:
    """(host, port) for IPv4 and (host, port, flowinfo, scope_id) for IPv6, as asyncio gives."""
    ip = ipaddress.ip_address(raw)
    if ip.version == 4:
        return (str(ip), port)
    return (str(ip), port, 0, 0)


def connection_error(code: int, peer: tuple[Any, ...]) -> OSError:
    """The OSError subclass for a connection's errno (ConnectionResetError, TimeoutError, ...)."""
    what = {
        errno.ECONNRESET: "connection reset by peer",
        errno.ECONNREFUSED: "connection refused",
        errno.ETIMEDOUT: "connection timed out",
    }.get(code, "connection failed")
    return OSError(code, f"{what} ({peer[0]} port {peer[1]})")


class TcpTransport(asyncio.Transport):
    """A connection on the tunnel's TCP stack as an asyncio transport (see module doc)."""

    def __init__(self, host: StackHost, conn: TcpConn, protocol: asyncio.BaseProtocol,
                 server: TunnelServer | None = None) -> None:
        super().__init__()
        self._host = host
        self._loop = host.running_loop()
        self._conn = conn
        host.watch(conn, self._on_events)
        self._protocol = protocol
        self._server = server
        self._pending: collections.deque[bytes | memoryview] = collections.deque()
        self._pending_size = 0
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._protocol_paused = False
        self._reading_paused = False
        self._closing = False            # close() called
        self._eof_requested = False      # write_eof() called
        self._eof_delivered = False
        self._lost = False               # connection_lost() called (or scheduled)
        self._error: OSError | None = None
        local, remote = conn.local, conn.remote
        self._extra: dict[str, Any] = {
            "peername": address_tuple(*remote),
            "sockname": address_tuple(*local),
            "socket": None,
            "tcp_connection": conn,
        }
        if server is not None:
            server._attach(self)

    # -- asyncio.BaseTransport ------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Send what is buffered, then FIN; ``connection_lost(None)`` follows."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._eof_requested = True
        if not self._pending:
            self._finish_close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # -- reading ------------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._lost

    def pause_reading(self) -> None:
        """Stop delivering data; the receive window closes as the ring fills."""
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        self._loop.call_soon(self._resume_delivery)

    def _resume_delivery(self) -> None:
        # Reading drains the ring and may reopen a closed window: the window update must go
        # out now (the tunnel flushes on its own only around its socket events), or the peer
        # waits for its persist timer (>= 200 ms) to probe.
        self._deliver()
        self._host.schedule_flush()

    # -- writing ------------------------------------------------------------------------------

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def get_write_buffer_size(self) -> int:
        return self._pending_size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof_requested and not self._lost and not self._closing:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._lost or self._closing:
            return          # asyncio drops writes after close/loss (it logs after a few)
        if not self._pending:
            try:
                taken = self._conn.send(data)
            except OSError:
                return
            if taken == len(data):
                self._host.schedule_flush()
                return
            data = bytes(memoryview(data)[taken:])
            self._host.schedule_flush()
        else:
            data = bytes(data)
        self._pending.append(data)
        self._pending_size += len(data)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        # Each piece goes into the send ring as it is: joining them first would copy the
        # payload once more (a websocket server writes a frame header and its payload).
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        """Half-close: FIN after the buffered data; reading continues."""
        if self._eof_requested or self._lost:
            return
        self._eof_requested = True
        if not self._pending:
            self._shutdown()

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        """Reset the connection (RST) and drop buffered data."""
        if self._lost:
            return
        self._pending.clear()
        self._pending_size = 0
        self._conn.abort()
        self._host.schedule_flush()
        self._connection_lost(None)

    # -- the connection's events (StackHost.watch) -----------------------------------------------

    def _on_events(self, events: TcpEvent) -> None:
        if events & EV_WRITABLE:
            self._push_pending()
        if events & (EV_READABLE | EV_EOF):
            self._deliver()
        if events & EV_CLOSED:
            code = self._conn.error
            if code:
                self._error = connection_error(code, self._extra["peername"])
            if not self._reading_paused:
                self._deliver()
            self._connection_lost(self._error)

    def _deliver(self) -> None:
        """Hand in-order data (then EOF) to the protocol, unless reading is paused."""
        conn = self._conn
        while not self._reading_paused and not self._lost:
            data = conn.read(READ_CHUNK)
            if not data:
                break
            try:
                self._protocol.data_received(data)  # type: ignore[attr-defined]
            except Exception as exc:
                self._fatal(exc, "data_received")
                return
        if (not self._reading_paused and not self._eof_delivered and not self._lost
                and conn.at_eof):
            self._eof_delivered = True
            try:
                keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
            except Exception as exc:
                self._fatal(exc, "eof_received")
                return
            if not keep_open:
                self.close()

    def _push_pending(self) -> None:
        conn = self._conn
        moved = False
        while self._pending:
            chunk = self._pending[0]
            try:
                taken = conn.send(chunk)
            except OSError:
                self._pending.clear()
                self._pending_size = 0
                break
            if taken == 0:
                break
            moved = True
            self._pending_size -= taken
            if taken == len(chunk):
                self._pending.popleft()
            else:
                self._pending[0] = memoryview(chunk)[taken:]  # no copy of the rest
                break
        if moved:
            self._host.schedule_flush()
        if self._protocol_paused and self._pending_size <= self._low:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except Exception as exc:
                self._fatal(exc, "resume_writing")
                return
        if not self._pending and self._eof_requested:
            if self._closing:
                self._finish_close()
            else:
                self._shutdown()

    def _maybe_pause_protocol(self) -> None:
        if not self._protocol_paused and self._pending_size > self._high:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except Exception as exc:
                self._fatal(exc, "pause_writing")

    def _shutdown(self) -> None:
        try:
            self._conn.shutdown()
        except OSError:
            pass
        self._host.schedule_flush()

    def _finish_close(self) -> None:
        conn = self._conn
        try:
            conn.close()
        except OSError:
            pass
        self._host.schedule_flush()
        self._connection_lost(None)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: Exception | None) -> None:
        self._host.unwatch(self._conn)
        try:
            self._protocol.connection_lost(exc)
        finally:
            if self._server is not None:
                self._server._detach(self)
                self._server = None

    def _fatal(self, exc: Exception, where: str) -> None:
        log.error("protocol %s raised in %s; aborting the connection to %s",
                  type(self._protocol).__name__, where, self._extra["peername"], exc_info=exc)
        self.abort()

    def __repr__(self) -> str:
        peer = self._extra["peername"]
        return f"<TcpTransport {peer[0]}:{peer[1]} {self._conn.state_name}>"


def _closed_now(conn: TcpConn) -> bool:
    return TcpState(conn.state) is TcpState.CLOSED


class TunnelServer:
    """A listening TCP port on the tunnel, like :class:`asyncio.Server`."""

    def __init__(self, host: StackHost, listener: TcpListener,
                 protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._host = host
        self._listener = listener
        self._factory = protocol_factory
        self._transports: set[TcpTransport] = set()
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []
        host.watch(listener, self._on_events)

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The (host, port) pairs listened on ("" host: every tunnel address)."""
        raw = self._listener.address
        host = str(ipaddress.ip_address(raw)) if raw else ""
        return [] if self._closed else [(host, self._listener.port)]

    @property
    def port(self) -> int:
        return int(self._listener.port)

    def is_serving(self) -> bool:
        return not self._closed

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._host.running_loop()

    def close(self) -> None:
        """Stop listening (connections not yet accepted are reset; open ones stay)."""
        if self._closed:
            return
        self._closed = True
        self._listener.close()
        self._host.unwatch(self._listener)
        self._host.schedule_flush()
        self._wake()

    def close_clients(self) -> None:
        for transport in list(self._transports):
            transport.close()

    def abort_clients(self) -> None:
        for transport in list(self._transports):
            transport.abort()

    async def wait_closed(self) -> None:
        """Wait until closed and every connection it accepted is gone."""
        if not self._closed or self._transports:
            waiter: asyncio.Future[None] = self.get_loop().create_future()
            self._waiters.append(waiter)
            if self._closed and not self._transports:
                self._wake()
            await waiter

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        """Serve until cancelled (then close)."""
        try:
            await self.get_loop().create_future()
        finally:
            self.close()
            await self.wait_closed()

    async def __aenter__(self) -> TunnelServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def _on_events(self, events: TcpEvent) -> None:
        if not events & EV_ACCEPT:
            return
        while not self._closed:
            conn = self._listener.accept()
            if conn is None:
                break
            try:
                protocol = self._factory()
            except Exception:
                log.exception("protocol factory failed; resetting the accepted connection")
                conn.abort()
                continue
            transport = TcpTransport(self._host, conn, protocol, server=self)
            try:
                protocol.connection_made(transport)
            except Exception as exc:
                transport._fatal(exc, "connection_made")
                continue
            # Data (even a FIN) may have arrived with the handshake's last ACK.
            transport._deliver()
            if _closed_now(conn) and not transport._lost:
                transport._on_events(EV_CLOSED)

    def _attach(self, transport: TcpTransport) -> None:
        self._transports.add(transport)

    def _detach(self, transport: TcpTransport) -> None:
        self._transports.discard(transport)
        if self._closed and not self._transports:
            self._wake()

    def _wake(self) -> None:
        if self._closed and not self._transports:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    def __repr__(self) -> str:
        return f"<TunnelServer sockets={self.sockets}>"


# -- the Tunnel's stream methods ----------------------------------------------------------------

class StreamEndpoints:
    """``create_connection``/``open_connection``/``create_server``/``start_server`` for a
    :class:`~agentconn.aio.host.StackHost` (mixed into ``Tunnel``)."""

    async def create_connection(
            self: StackHost, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str,
            port: int, *, local_port: int = 0,
    ) -> tuple[TcpTransport, asyncio.BaseProtocol]:
        """Open a TCP connection through the tunnel, like ``loop.create_connection``.

        `host` is an IPv4/IPv6 address literal covered by some peer's AllowedIPs. Returns
        (transport, protocol) once the handshake completed. Raises NoRouteError,
        ConnectionRefusedError (the peer answered RST), TimeoutError (no answer after 6 SYN
        retransmissions, about 2 minutes; bound it with asyncio.timeout), ValueError for a
        host that is not an address, TunnelClosedError.
        """
        loop = self.running_loop()
        conn = self.iface.connect(host, port, self.clock(), local_port=local_port)
        waiter: asyncio.Future[None] = loop.create_future()

        def on_events(_: TcpEvent) -> None:
            if waiter.done():
                return
            if self.closed:
                waiter.set_exception(TunnelClosedError("tunnel closed"))
                return
            state = TcpState(conn.state)
            if state is TcpState.ESTABLISHED or state is TcpState.CLOSE_WAIT:
                waiter.set_result(None)
            elif state is TcpState.CLOSED:
                waiter.set_exception(connection_error(conn.error or errno.ECONNREFUSED,
                                                      address_tuple(*conn.remote)))

        self.watch(conn, on_events)
        self.schedule_flush()
        try:
            await waiter
        except BaseException:
            self.unwatch(conn)
            conn.abort()
            self.schedule_flush()
            raise
        protocol = protocol_factory()
        transport = TcpTransport(self, conn, protocol)
        protocol.connection_made(transport)
        transport._deliver()
        if _closed_now(conn):
            transport._on_events(EV_CLOSED)
        return transport, protocol

    async def open_connection(self: StackHost, host: str, port: int, *, limit: int = 2 ** 16,
                              local_port: int = 0
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A (StreamReader, StreamWriter) pair for a TCP connection through the tunnel, like
        ``asyncio.open_connection``. Raises as :meth:`create_connection`."""
        loop = self.running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await StreamEndpoints.create_connection(
            self, lambda: protocol, host, port, local_port=local_port)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    async def create_server(self: StackHost, protocol_factory: Callable[[], asyncio.BaseProtocol],
                            port: int, host: str | None = None, *, backlog: int = 128
                            ) -> TunnelServer:
        """Listen on a TCP port of the tunnel's addresses (`host`: one of them, or None for
        all), like ``loop.create_server``. Port 0 is the catch-all listener (SYNs to ports
        without a listener of their own). Raises OSError(EADDRINUSE) for a taken port and
        ValueError for an address that is not the tunnel's."""
        self.running_loop()
        listener = self.iface.listen(int(port), host, backlog=backlog)
        return TunnelServer(self, listener, protocol_factory)

    async def start_server(self: StackHost, client_connected_cb: Callable[..., Any], port: int,
                           host: str | None = None, *, backlog: int = 128,
                           limit: int = 2 ** 16) -> TunnelServer:
        """Like ``asyncio.start_server``: `client_connected_cb(reader, writer)` (plain or
        coroutine function) runs for every accepted connection."""
        loop = self.running_loop()

        def factory() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

        return await StreamEndpoints.create_server(self, factory, port, host, backlog=backlog)
