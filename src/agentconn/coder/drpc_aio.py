"""DRPC over yamux with asyncio: one RPC per yamux stream, as Coder's ``drpcsdk`` does.

:class:`DrpcClient` opens a fresh yamux stream (and a fresh DRPC connection, stream id 1) per
call; :class:`DrpcServer` accepts yamux streams and serves every Invoke on each with the
handler registered for its name (``drpcserver.ServeOne``). Both wrap the sans-IO
:class:`agentconn.coder.drpc.Connection`: a pump task reads the yamux stream into it and hands
the events to the :class:`Call`; writes flush through the yamux stream's ``drain``.

A :class:`Call` is symmetric: ``send`` / ``close_send`` / ``recv`` (``None`` once the peer
sent CloseSend or Close) / ``close`` / ``send_error``. An Error packet from the peer surfaces as
:class:`DrpcError` with its code and text; a lost transport as :class:`DrpcClosedError`.
:class:`TypedCall` puts a message codec (anything with ``encode()`` and a ``decode`` function)
on top.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, Generic, Protocol, TypeVar

from .drpc import (
    CancelReceived,
    CloseReceived,
    CloseSendReceived,
    Connection,
    ConnectionTerminated,
    ErrorReceived,
    InvokeReceived,
    MessageReceived,
    Role,
    go_quote,
)
from .errors import DrpcClosedError, DrpcError, YamuxError
from .yamux_aio import YamuxStream

__all__ = [
    "Call",
    "DrpcClient",
    "DrpcServer",
    "Handler",
    "StreamAcceptor",
    "StreamOpener",
    "TypedCall",
]

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
MAX_QUEUED_MESSAGES = 16  # like drpcstream's one-message buffer, a little roomier
_EOF = object()


class StreamOpener(Protocol):
    async def open_stream(self) -> YamuxStream: ...


class StreamAcceptor(Protocol):
    async def accept_stream(self) -> YamuxStream: ...


class _Transport:
    """A yamux stream carrying one DRPC :class:`Connection`; routes events to the call."""

    def __init__(self, stream: YamuxStream, role: Role) -> None:
        self.stream = stream
        self.conn = Connection(role)
        self.call: Call | None = None
        self.invokes: deque[Call] = deque()
        self.invoke_waiter: asyncio.Future[None] | None = None
        self.closed: DrpcError | None = None  # set when the transport is gone
        self._room = asyncio.Event()
        self._room.set()
        self._write_lock = asyncio.Lock()
        self.pump = asyncio.get_running_loop().create_task(self._pump(), name="drpc-pump")

    async def _pump(self) -> None:
        try:
            while self.closed is None:
                await self._room.wait()
                try:
                    data = await self.stream.read(READ_SIZE)
                except YamuxError as exc:
                    self._lost(DrpcClosedError(f"transport failed: {exc}"))
                    return
                if not data:
                    self._lost(DrpcClosedError("transport closed"))
                    return
                self.conn.receive_data(data)
                self._dispatch()
        except asyncio.CancelledError:
            self._lost(DrpcClosedError("transport closed"))
            raise

    def _dispatch(self) -> None:
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, InvokeReceived):
                # the call exists from here on, so messages in the same read reach it
                if self.call is not None:
                    self.call._on_lost(DrpcClosedError("canceled by a new invoke"))
                self.call = Call(self, event.stream_id, event.rpc, event.metadata)
                self.invokes.append(self.call)
                self._wake_invoke()
            elif isinstance(event, ConnectionTerminated):
                log.debug("drpc: protocol error from the peer: %s", event.error)
                self._lost(event.error)
                self.stream.abort()
            elif self.call is not None and self.call.stream_id == event.stream_id:
                self.call._on_event(event)

    def _lost(self, error: DrpcError) -> None:
        if self.closed is None:
            self.closed = error
        if self.call is not None:
            self.call._on_lost(error)
        self._wake_invoke()

    def _wake_invoke(self) -> None:
        if self.invoke_waiter is not None and not self.invoke_waiter.done():
            self.invoke_waiter.set_result(None)

    def pause(self, paused: bool) -> None:
        if paused:
            self._room.clear()
        else:
            self._room.set()

    async def flush(self) -> None:
        async with self._write_lock:
            data = self.conn.data_to_send()
            if not data:
                return
            try:
                self.stream.write(data)
                await self.stream.drain()
            except YamuxError as exc:
                raise DrpcClosedError(f"transport failed: {exc}") from exc

    async def next_invoke(self) -> Call | None:
        while not self.invokes:
            if self.closed is not None:
                return None
            self.invoke_waiter = asyncio.get_running_loop().create_future()
            try:
                await self.invoke_waiter
            finally:
                self.invoke_waiter = None
        return self.invokes.popleft()

    async def close(self) -> None:
        self.stream.close()
        if not self.pump.done():
            self.pump.cancel()
        try:
            await self.pump
        except asyncio.CancelledError:
            pass


class Call:
    """One RPC on one DRPC stream, client or server side. Not safe for concurrent ``recv``
    calls from several tasks; ``send`` and ``recv`` may run in different tasks."""

    def __init__(
        self, transport: _Transport, stream_id: int, rpc: str, metadata: dict[str, str]
    ) -> None:
        self._transport = transport
        self.stream_id = stream_id
        self.rpc = rpc
        self.metadata = metadata
        self._messages: deque[bytes] = deque()
        self._end: object | DrpcError | None = None  # _EOF or the error recv raises
        self._waiter: asyncio.Future[None] | None = None
        self.terminated = asyncio.Event()  # the stream is over (either side)
        self.remote_ended = asyncio.Event()  # the peer ended it (Close/Cancel/Error) or it dropped
        self._error: DrpcError | None = None  # what send raises once terminated remotely

    def __repr__(self) -> str:
        return f"<drpc Call {self.rpc} stream {self.stream_id}>"

    # --- API -------------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Send one message. Raises :class:`DrpcError` if the peer ended the stream with an
        error, :class:`DrpcClosedError` if sending is over or the transport is gone."""
        self._check_send()
        self._transport.conn.send_message(self.stream_id, data)
        await self._transport.flush()

    async def close_send(self) -> None:
        """Tell the peer no more messages come (CloseSend)."""
        if self._transport.closed is None:
            self._transport.conn.close_send(self.stream_id)
            await self._flush_quietly()
        self._update_terminated()

    async def recv(self) -> bytes | None:
        """The next message, or None once the peer sent CloseSend or Close. Raises
        :class:`DrpcError` for an Error packet and :class:`DrpcClosedError` when the
        transport ended first or the peer canceled."""
        await self._flush_quietly()  # drpcstream flushes a pending Invoke before reading
        while True:
            if self._messages:
                data = self._messages.popleft()
                if len(self._messages) < MAX_QUEUED_MESSAGES:
                    self._transport.pause(False)
                return data
            if self._end is _EOF:
                return None
            if isinstance(self._end, DrpcError):
                raise self._end
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (data := await self.recv()) is not None:
            yield data

    async def close(self) -> None:
        """End the stream (Close packet) if it is not over yet."""
        if self._transport.closed is None:
            self._transport.conn.close(self.stream_id)
            await self._flush_quietly()
        self.terminated.set()

    async def send_error(self, message: str, code: int = 0) -> None:
        """End the stream with an Error packet (``code``, ``message``)."""
        if self._transport.closed is None:
            self._transport.conn.send_error(self.stream_id, message, code)
            await self._flush_quietly()
        self.terminated.set()

    # --- from the transport ----------------------------------------------------------------

    def _on_event(self, event: object) -> None:
        if isinstance(event, MessageReceived):
            self._messages.append(event.data)
            if len(self._messages) >= MAX_QUEUED_MESSAGES:
                self._transport.pause(True)
        elif isinstance(event, CloseSendReceived):
            self._set_end(_EOF)
        elif isinstance(event, CloseReceived):
            self._set_end(_EOF)
            self._error = DrpcClosedError("remote closed the stream", rpc=self.rpc)
        elif isinstance(event, ErrorReceived):
            err = DrpcError(event.message, code=event.code, rpc=self.rpc)
            self._set_end(err)
            self._error = err
        elif isinstance(event, CancelReceived):
            err = DrpcClosedError("canceled by the peer", rpc=self.rpc)
            self._set_end(err)
            self._error = err
        if not isinstance(event, (MessageReceived, CloseSendReceived)):
            self.remote_ended.set()
        self._update_terminated()
        self._wake()

    def _on_lost(self, error: DrpcError) -> None:
        if self._end is None:
            self._end = DrpcClosedError(error.message, code=error.code, rpc=self.rpc)
        if self._error is None:
            self._error = DrpcClosedError(error.message, rpc=self.rpc)
        self.terminated.set()
        self.remote_ended.set()
        self._wake()

    def _set_end(self, end: object) -> None:
        if self._end is None:
            self._end = end

    def _update_terminated(self) -> None:
        if self._transport.conn.stream_finished() or self._transport.closed is not None:
            self.terminated.set()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _check_send(self) -> None:
        if self._error is not None:
            raise self._error
        if self._transport.closed is not None:
            raise DrpcClosedError(self._transport.closed.message, rpc=self.rpc)

    async def _flush_quietly(self) -> None:
        try:
            await self._transport.flush()
        except DrpcClosedError as exc:
            self._transport._lost(exc)


class DrpcClient:
    """Makes RPCs over a yamux session, each on its own new yamux stream."""

    def __init__(self, session: StreamOpener) -> None:
        self._session = session

    async def invoke(self, rpc: str, metadata: Mapping[str, str] | None = None) -> ClientCall:
        """Start ``rpc`` on a new yamux stream (the Invoke leaves with the first write or
        read). Close the call with :meth:`Call.close` (or :meth:`ClientCall.aclose`)."""
        try:
            stream = await self._session.open_stream()
        except YamuxError as exc:
            raise DrpcClosedError(f"cannot open a stream: {exc}", rpc=rpc) from exc
        transport = _Transport(stream, Role.CLIENT)
        stream_id = transport.conn.invoke(rpc, metadata)
        call = ClientCall(transport, stream_id, rpc, dict(metadata or {}))
        transport.call = call
        return call

    async def unary(
        self, rpc: str, request: bytes, metadata: Mapping[str, str] | None = None
    ) -> bytes:
        """Invoke, send ``request``, CloseSend (one write, as ``drpcconn.Invoke``) and return
        the single reply. Raises :class:`DrpcError` with the server's text on an Error."""
        call = await self.invoke(rpc, metadata)
        try:
            conn = call._transport.conn
            conn.send_message(call.stream_id, request)
            conn.close_send(call.stream_id)
            await call._transport.flush()
            reply = await call.recv()
            if reply is None:
                raise DrpcClosedError("stream ended without a response", rpc=rpc)
            return reply
        finally:
            await call.aclose()

    async def server_stream(
        self, rpc: str, request: bytes, metadata: Mapping[str, str] | None = None
    ) -> ClientCall:
        """Invoke, send ``request``, CloseSend; read the replies with :meth:`Call.recv`."""
        call = await self.invoke(rpc, metadata)
        try:
            await call.send(request)
            await call.close_send()
        except BaseException:
            await call.aclose()
            raise
        return call


class ClientCall(Call):
    """A client's call: also owns its yamux stream."""

    async def aclose(self) -> None:
        """Close the RPC (Close packet unless over) and its yamux stream."""
        await self.close()
        await self._transport.close()


Handler = Callable[[Call], Coroutine[Any, Any, None]]


class DrpcServer:
    """Serves RPCs by name. A handler gets the :class:`Call`; when it returns, CloseSend is
    sent (unless the stream is over); a :class:`DrpcError` it raises becomes an Error packet
    with its code and text; another exception an Error with code 0 and ``str(exc)``. Unknown
    names get code 0 and ``protocol error: unknown rpc: "<name>"`` (drpcmux). A handler is
    cancelled when the peer ends the stream (Close, Cancel, Error) or the transport drops."""

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = dict(handlers or {})

    def register(self, rpc: str, handler: Handler) -> None:
        """Serve ``rpc`` (e.g. ``/coder.tailnet.v2.Tailnet/Coordinate``) with ``handler``."""
        self._handlers[rpc] = handler

    async def serve(self, session: StreamAcceptor) -> None:
        """Accept yamux streams until the session ends, serving each in its own task."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    stream = await session.accept_stream()
                except YamuxError:
                    return
                task = asyncio.get_running_loop().create_task(self.serve_stream(stream))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def serve_stream(self, stream: YamuxStream) -> None:
        """``ServeOne``: serve the Invokes on one yamux stream until it ends."""
        transport = _Transport(stream, Role.SERVER)
        try:
            while (call := await transport.next_invoke()) is not None:
                await self._run(call)
        finally:
            await transport.close()

    async def _run(self, call: Call) -> None:
        handler = self._handlers.get(call.rpc)
        if handler is None:
            await call.send_error(f"protocol error: unknown rpc: {go_quote(call.rpc)}")
            return
        task = asyncio.get_running_loop().create_task(handler(call), name=f"drpc {call.rpc}")
        ended = asyncio.get_running_loop().create_task(call.remote_ended.wait())
        try:
            await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if not task.done():
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            return  # the peer went away: nothing to answer
        except DrpcError as exc:
            await call.send_error(exc.message, exc.code)
            return
        except Exception as exc:
            log.warning("drpc handler %s failed: %r", call.rpc, exc, exc_info=True)
            await call.send_error(str(exc))
            return
        await call.close_send()


R = TypeVar("R")


class _Encodable(Protocol):
    def encode(self) -> bytes: ...


E = TypeVar("E", bound=_Encodable)


class TypedCall(Generic[E, R]):
    """A :class:`Call` with messages: ``send(E)``, ``recv() -> R | None``."""

    def __init__(self, call: Call, decode: Callable[[bytes], R]) -> None:
        self.call = call
        self._decode = decode

    @property
    def rpc(self) -> str:
        return self.call.rpc

    @property
    def metadata(self) -> dict[str, str]:
        return self.call.metadata

    async def send(self, message: E) -> None:
        await self.call.send(message.encode())

    async def recv(self) -> R | None:
        """The next message, None at the end. A message that does not decode raises
        :class:`~agentconn.coder.errors.ProtobufError`."""
        data = await self.call.recv()
        return None if data is None else self._decode(data)

    async def __aiter__(self) -> AsyncIterator[R]:
        while (message := await self.recv()) is not None:
            yield message

    async def close_send(self) -> None:
        await self.call.close_send()

    async def close(self) -> None:
        """Close the RPC; for a client call also its yamux stream."""
        if isinstance(self.call, ClientCall):
            await self.call.aclose()
        else:
            await self.call.close()

    async def send_error(self, message: str, code: int = 0) -> None:
        await self.call.send_error(message, code)
