"""A blocking facade over the async API, for plain scripts, threads and notebooks.

Theory of operation: one event loop runs on a daemon thread per process (the "portal", the
pattern of anyio's blocking portal and httpx's sync wrappers); every tunnel, agent connection
and transport of this module lives on that loop. A call from any thread submits the coroutine
with ``asyncio.run_coroutine_threadsafe`` and waits for its result, so it works from several
threads at once and inside Jupyter, where the calling thread already runs a loop (calls must
not be made from the portal's own thread). Streams come back as plain iterators and file-like
objects. At interpreter exit the portal closes every connection it opened, then stops.

::

    from agentconn import sync

    with sync.connect("keys/client.conf", "12345678-1234-1234-1234-123456789abc") as conn:
        print([e.name for e in conn.ls("/tmp").contents])
        conn.write_file("/tmp/x.txt", b"hi")
        with conn.read_file("/tmp/x.txt") as f:
            print(f.read())
    with sync.dial("myworkspace") as conn:          # a Coder workspace (CODER_URL/token)
        print(conn.list_processes())
        with conn.http_client(8000) as http:        # a blocking httpx.Client to port 8000
            print(http.get("/").text)
        with conn.websocket(8000, "/ws") as ws:     # a blocking websocket to port 8000
            ws.send("hi")
            print(ws.receive())
"""
from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from .client.conn import AgentConn, FileStream
from .web.errors import ConnectionClosed
from .web.websocket import WebSocket

__all__ = ["SyncAgentConn", "SyncContainersWatch", "SyncFileStream", "SyncGitWatch",
           "SyncWebSocket", "connect", "dial", "run"]

T = TypeVar("T")


class _Portal:
    """The process's background loop thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._open: set[AgentConn] = set()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name="agentconn-sync", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        loop = self.loop()
        if threading.current_thread() is self._thread:
            raise RuntimeError("agentconn.sync called from its own event loop thread; use the "
                               "async API there")
        future = asyncio.run_coroutine_threadsafe(_await(coro), loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def shutdown(self) -> None:
        """Close what is still open, stop the loop and join the thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = None
        if loop is None or thread is None:
            return

        async def close_all() -> None:
            for conn in list(self._open):
                try:
                    await conn.close()
                except Exception:  # noqa: BLE001 - closing at exit must not raise
                    pass
            self._open.clear()
            try:
                from .coder import close_all as coder_close_all

                await coder_close_all()
            except Exception:  # noqa: BLE001
                pass

        try:
            asyncio.run_coroutine_threadsafe(close_all(), loop).result(10)
        except Exception:  # noqa: BLE001 - a stuck close must not block exit
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        if not thread.is_alive():
            loop.close()


async def _await(aw: Awaitable[T]) -> T:
    return await aw


_portal = _Portal()
atexit.register(_portal.shutdown)


def run(coro: Awaitable[T], timeout: float | None = None) -> T:
    """Run a coroutine of this package on the portal loop and return its result."""
    return _portal.run(coro, timeout)


class SyncFileStream:
    """A blocking :class:`~agentconn.client.conn.FileStream`: iterate for chunks, or
    :meth:`read` the rest; ``mime_type`` and ``size`` as there. Use as a context manager."""

    def __init__(self, stream: FileStream) -> None:
        self._stream = stream
        self.mime_type = stream.mime_type
        self.size = stream.size
        self._iter = stream.__aiter__()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return run(self._iter.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def read(self) -> bytes:
        """The rest of the body."""
        return b"".join(self)

    def close(self) -> None:
        run(self._stream.aclose())

    def __enter__(self) -> SyncFileStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncWebSocket:
    """A blocking :class:`~agentconn.web.websocket.WebSocket`: :meth:`send`, :meth:`receive`,
    :meth:`close`; iterating yields messages until the peer closes. Use as a context manager."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, if any."""
        return self._ws.subprotocol

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or received, or the connection dropped."""
        return self._ws.closed

    @property
    def close_code(self) -> int | None:
        """The close code once closed (1006: dropped without a close frame)."""
        return self._ws.close_code

    def send(self, message: bytes | str) -> None:
        """Send one message: ``str`` as text, ``bytes`` as binary."""
        run(self._ws.send(message))

    def receive(self, timeout: float | None = None) -> bytes | str:
        """The next whole message; raises :class:`~agentconn.web.errors.ConnectionClosed`
        when the peer closes, ``TimeoutError`` after ``timeout`` seconds."""
        return run(self._ws.receive(), timeout)

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping (the pong is consumed by :meth:`receive`)."""
        run(self._ws.ping(payload))

    def __iter__(self) -> Iterator[bytes | str]:
        while True:
            try:
                yield self.receive()
            except ConnectionClosed:
                return

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame, wait briefly for the peer's, hang up. Idempotent."""
        run(self._ws.close(code, reason))

    def __enter__(self) -> SyncWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncContainersWatch:
    """A blocking :class:`~agentconn.client.containers.ContainersWatch`: each ``next()``
    waits for the next container list; a context manager that closes the websocket."""

    def __init__(self, watch: Any) -> None:
        self._watch = watch
        run(watch.open())

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return run(self._watch.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        run(self._watch.aclose())

    def __enter__(self) -> SyncContainersWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncGitWatch:
    """A blocking :class:`~agentconn.client.git.GitWatch`: ``with conn.watch_git(chat_id=c)
    as w: for msg in w: ...``; :meth:`refresh`, :meth:`close`; ``repositories`` as there."""

    def __init__(self, watch: Any) -> None:
        self._watch = watch

    @property
    def repositories(self) -> Any:
        return self._watch.repositories

    def __enter__(self) -> SyncGitWatch:
        run(self._watch.open())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        msg = run(self._watch.receive())
        if msg is None:
            raise StopIteration
        return msg

    def refresh(self) -> None:
        run(self._watch.refresh())

    def close(self) -> None:
        run(self._watch.close())


class SyncAgentConn:
    """Every method of :class:`~agentconn.AgentConn`, blocking: same arguments, same typed
    results and exceptions. ``read_file`` gives a :class:`SyncFileStream`. Close it (or use
    ``with``) when done."""

    def __init__(self, conn: AgentConn) -> None:
        self._conn = conn
        _portal._open.add(conn)

    @property
    def aconn(self) -> AgentConn:
        """The underlying async connection (use it only on the portal loop)."""
        return self._conn

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            result = run(attr(*args, **kwargs))
            if isinstance(result, FileStream):
                return SyncFileStream(result)
            if isinstance(result, WebSocket):
                return SyncWebSocket(result)
            return result

        return call

    def http_client(self, port: int, **httpx_kwargs: Any) -> Any:
        """A blocking ``httpx.Client`` to the web app on the agent's ``port`` (base URL
        ``http://localhost:<port>``), through the tunnel, keep-alive pooled. Needs ``httpx``."""
        import httpx

        from .client.http import SyncTunnelTransport

        httpx_kwargs.setdefault("base_url", f"http://localhost:{port}")
        return httpx.Client(transport=SyncTunnelTransport(self._conn, run), **httpx_kwargs)

    def watch_containers(self) -> SyncContainersWatch:
        """Blocking :meth:`~agentconn.AgentConn.watch_containers`: iterate for each list;
        use ``with`` (or :meth:`SyncContainersWatch.close`)."""
        return SyncContainersWatch(self._conn.watch_containers())

    def watch_git(self, chat_id: Any = None) -> SyncGitWatch:
        """Blocking :meth:`AgentConn.watch_git <agentconn.AgentConn.watch_git>`."""
        return SyncGitWatch(self._conn.watch_git(chat_id))

    def close(self) -> None:
        """Close the connection (and its tunnel when it owns it)."""
        _portal._open.discard(self._conn)
        run(self._conn.close())

    def __enter__(self) -> SyncAgentConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SyncAgentConn agent={self._conn.agent_id}>"


def connect(config: Any, agent_id: Any, **kwargs: Any) -> SyncAgentConn:
    """Blocking :func:`agentconn.connect`: a tunnel from a wg-quick config and an
    AgentConn to ``agent_id`` (waits until the agent answers)."""
    from .client.conn import connect as aconnect

    return SyncAgentConn(run(aconnect(config, agent_id, **kwargs)))


def dial(target: Any, **kwargs: Any) -> SyncAgentConn:
    """Blocking :func:`agentconn.coder.dial` to a Coder workspace."""
    from .coder import dial as adial

    return SyncAgentConn(run(adial(target, **kwargs)))


def call_soon(fn: Callable[..., Any], *args: Any) -> None:
    """Schedule a plain callable on the portal loop (thread-safe)."""
    _portal.loop().call_soon_threadsafe(fn, *args)
