"""The agent's reconnecting-PTY server on tailnet TCP port 2 (agent-api.md §5).

Theory of operation
-------------------
Every accepted connection first sends an init frame (2-byte little-endian length, then that
many bytes of JSON, :mod:`agentconn.proto.rpty`). We read exactly those bytes with
``readexactly`` so nothing after the frame is consumed early; a short read, EOF, invalid JSON, a
length above ``max_init_size`` or no frame within ``init_timeout`` closes the connection without
writing a byte and touches no session.

Sessions are keyed by the init ``ID``. :attr:`ReconnectingPtyServer._sessions` maps an ID to a
future of its :class:`PtySession`: the first connection puts the future there and spawns the
child, concurrent connections for the same ID await that future, and a failed spawn resolves it
to ``None`` and releases the ID. Only the "buffered" backend exists (``screen`` is honoured by
the newest Coder agents only as a hint; a request for it falls back to buffered here):

- one PTY per session; the child (``<shell> -l`` for an empty command, else
  ``<shell> -c <command>``) leads its own session with the PTY as controlling terminal;
- the master fd is non-blocking and served by ``loop.add_reader``/``add_writer``; output goes to
  a 64 KiB ring buffer and to every attached connection;
- attaching resizes the PTY to the init size (when both sides are non-zero), writes the ring
  buffer to the new connection and then adds it to the fan-out, all without yielding, so the
  connection sees every byte exactly once;
- each request object types its ``data`` and then resizes when height and width are non-zero.

Lifetime: a new session must be attached within ``first_attach_timeout``; after the last
connection detaches it lives ``timeout`` more seconds. (Go re-arms the timer every
``timeout/2`` while attached; disarming it while anything is attached is the same rule.) The
child exiting closes the session and all its connections once its last output is sent;
:meth:`ReconnectingPtyServer.close` ends every session (SIGHUP to the child's process group,
SIGKILL :data:`KILL_GRACE` seconds later).

Flow control: when an attached connection has more than :data:`OUTPUT_HIGH_WATER` bytes queued
we stop reading the PTY until every such connection drained (Go blocks the same way on a slow
writer); when the child does not read its input fast enough, connections stop reading requests.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import uuid
from typing import TYPE_CHECKING, Any

from agentconn.agent.children import (
    Child,
    Login,
    Terminal,
    read_terminal,
    set_window_size,
    write_terminal,
)
from agentconn.agent.options import AgentOptions
from agentconn.proto.errors import ProtocolError
from agentconn.proto.ports import AGENT_RECONNECTING_PTY_PORT
from agentconn.proto.rpty import (
    INIT_HEADER_SIZE,
    MAX_INIT_SIZE,
    RING_BUFFER_SIZE,
    ReconnectingPtyInit,
    RequestDecoder,
)

if TYPE_CHECKING:
    from agentconn.aio.streams import TunnelServer
    from agentconn.aio.tunnel import Tunnel

__all__ = ["PtySession", "ReconnectingPtyServer"]

_log = logging.getLogger("agentconn.agent.pty")

DEFAULT_TIMEOUT = 300.0             #: seconds a session lives with nothing attached (Go: 5 min)
FIRST_ATTACH_TIMEOUT = 30.0         #: seconds a new session has to get its first attach
INIT_TIMEOUT = 30.0                 #: seconds a connection has to send its init frame
KILL_GRACE = 2.0                    #: seconds between SIGHUP and SIGKILL when ending a child
EXIT_UNKNOWN = 255                  #: exit status when the child's could not be collected
READ_SIZE = 65536                   #: bytes read from a connection at a time
OUTPUT_HIGH_WATER = 1 << 20         #: bytes queued on a connection before we stop reading the PTY
INPUT_HIGH_WATER = 1 << 20          #: bytes of input queued for the PTY before requests pause
CLOSE_TIMEOUT = 5.0                 #: seconds close() waits for children and handlers
TERM = "xterm-256color"


class PtySession:
    """One reconnecting-PTY session (buffered backend): a child on a PTY, its output ring
    buffer and the connections attached to it. Created by :class:`ReconnectingPtyServer`."""

    def __init__(self, server: ReconnectingPtyServer, session_id: uuid.UUID,
                 command: str) -> None:
        self.id = session_id
        self.command = command
        self.exit_status: int | None = None   #: the child's status once reaped (-N: signal N)
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._child: Child | None = None
        self._master: int | None = None
        self._ring = bytearray()
        self._connections: list[asyncio.StreamWriter] = []
        self._input = bytearray()
        self._input_drained = asyncio.Event()
        self._input_drained.set()
        self._reading = False              # add_reader is installed on the master
        self._drain_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._wait_task: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()  #: done when closing
        self._done = asyncio.Event()       # child reaped and master closed

    # -- creation ---------------------------------------------------------------------------

    async def spawn(self, rows: int, columns: int) -> None:
        """Start the child on a new PTY of ``rows`` × ``columns`` (80 × 24 when either is 0).
        Raises OSError / SubprocessError when it cannot be started."""
        login = Login.of(self._server.options)
        argv = login.argv(self.command or None)
        env = login.environ
        env["TERM"] = TERM
        with Terminal(rows, columns) as terminal:
            env["SSH_TTY"] = terminal.name
            self._child = Child.spawn(argv, cwd=login.directory, env=env, terminal=terminal)
        self._master = self._child.master
        self._start_reading()
        self._wait_task = asyncio.ensure_future(self._wait_child())
        self._arm_timer(self._server.first_attach_timeout)
        _log.info("reconnecting PTY %s started %r (pid %d)", self.id, argv, self._child.pid)

    # -- connections ------------------------------------------------------------------------

    @property
    def connections(self) -> tuple[asyncio.StreamWriter, ...]:
        """The writers of the connections attached right now."""
        return tuple(self._connections)

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return None if self._child is None else self._child.pid

    def attach(self, writer: asyncio.StreamWriter, rows: int, columns: int) -> None:
        """Resize to the init size, replay the ring buffer to ``writer``, then send it live
        output. Must not be split by an ``await`` (the replay/live boundary relies on it)."""
        if self.closed.done():
            raise RuntimeError(f"reconnecting PTY session {self.id} is closed")
        if rows and columns:
            self.resize(rows, columns)
        if self._ring:
            writer.write(bytes(self._ring))
        self._connections.append(writer)
        self._cancel_timer()
        self._check_output_pressure(writer)

    def detach(self, writer: asyncio.StreamWriter) -> None:
        """Stop sending output to ``writer``; arm the idle timeout when nothing is left."""
        with contextlib.suppress(ValueError):
            self._connections.remove(writer)
        if not self._connections and not self.closed.done():
            self._arm_timer(self._server.timeout)

    def write_input(self, data: bytes) -> None:
        """Queue ``data`` for the PTY (typed by the user)."""
        if self.closed.done() or not data:
            return
        self._input += data
        self._flush_input()

    async def wait_input_drained(self) -> None:
        """Wait until the queued input is below :data:`INPUT_HIGH_WATER`."""
        await self._input_drained.wait()

    def resize(self, rows: int, columns: int) -> None:
        """Set the PTY size (TIOCSWINSZ; the child gets SIGWINCH)."""
        if self._master is None:
            return
        try:
            set_window_size(self._master, rows, columns)
        except OSError as exc:
            _log.debug("reconnecting PTY %s: resize to %dx%d failed: %s", self.id, rows,
                       columns, exc)

    # -- PTY input ----------------------------------------------------------------------------

    def _flush_input(self) -> None:
        master = self._master
        if master is None:
            self._input.clear()
            self._input_drained.set()
            return
        error = write_terminal(master, self._input)
        if error is not None:
            _log.debug("reconnecting PTY %s: input dropped: %s", self.id, error)
        if self._input:
            self._loop.add_writer(master, self._flush_input)
        else:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(master)
        if len(self._input) > INPUT_HIGH_WATER:
            self._input_drained.clear()
        else:
            self._input_drained.set()

    # -- PTY output ---------------------------------------------------------------------------

    def _start_reading(self) -> None:
        if not self._reading and self._master is not None:
            self._loop.add_reader(self._master, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading and self._master is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._master)
        self._reading = False

    def _on_readable(self) -> None:
        if self._master is None:
            return
        data = read_terminal(self._master)
        if data is None:
            return
        if not data:  # the child's exit (watched in _wait_child) ends the session
            self._stop_reading()
            return
        self._output(data)

    def _output(self, data: bytes) -> None:
        ring = self._ring
        ring += data
        if len(ring) > RING_BUFFER_SIZE:
            del ring[:len(ring) - RING_BUFFER_SIZE]
        for writer in self._connections:
            if not writer.is_closing():
                writer.write(data)
                self._check_output_pressure(writer)

    def _check_output_pressure(self, writer: asyncio.StreamWriter) -> None:
        if (writer.transport.get_write_buffer_size() > OUTPUT_HIGH_WATER
                and self._drain_task is None):
            self._stop_reading()
            self._drain_task = asyncio.ensure_future(self._drain_connections())

    async def _drain_connections(self) -> None:
        """Wait until no attached connection is above the high-water mark, then read again."""
        try:
            while True:
                slow = [w for w in self._connections
                        if not w.is_closing()
                        and w.transport.get_write_buffer_size() > OUTPUT_HIGH_WATER]
                if not slow:
                    break
                for writer in slow:
                    with contextlib.suppress(ConnectionError, OSError):
                        await writer.drain()
        finally:
            self._drain_task = None
        if not self.closed.done():
            self._start_reading()

    def _drain_master(self) -> None:
        """After the child exited: send what is still in the PTY (non-blocking reads)."""
        if self._master is None:
            return
        # None: a leftover process holds the slave; b"": all gone
        while data := read_terminal(self._master):
            self._output(data)

    # -- lifetime -----------------------------------------------------------------------------

    def _arm_timer(self, after: float) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(after, self._on_timeout, after)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self, after: float) -> None:
        self._timer = None
        if not self._connections:
            _log.info("reconnecting PTY %s: nothing attached for %g s, killing it", self.id,
                      after)
            self.close()

    async def _wait_child(self) -> None:
        child = self._child
        assert child is not None
        try:
            status = await child.wait()
            self.exit_status = EXIT_UNKNOWN if status is None else status
            self._drain_master()
            _log.info("reconnecting PTY %s: child exited with %s", self.id, self.exit_status)
        finally:
            self.close()
            master, self._master = self._master, None
            if master is not None:
                self._stop_reading_fd(master)
            child.close()  # hangs up the terminal: SIGHUP to leftovers in its session
            self._server._all_sessions.discard(self)
            self._done.set()

    def _stop_reading_fd(self, master: int) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(master)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(master)
        self._reading = False

    def close(self) -> None:
        """End the session: close every attached connection (after its queued output), and
        SIGHUP the child's process group (SIGKILL :data:`KILL_GRACE` s later) if it runs."""
        if self.closed.done():
            return
        self.closed.set_result(None)
        self._cancel_timer()
        self._server._forget(self)
        if self._master is not None:
            self._stop_reading_fd(self._master)
        self._input.clear()
        self._input_drained.set()
        for writer in self._connections:
            writer.close()
        self._connections.clear()
        if self._child is not None:
            self._child.hang_up(KILL_GRACE)
        else:
            self._done.set()

    async def wait_closed(self) -> None:
        """Wait until the child was reaped and the PTY closed."""
        await self._done.wait()


class ReconnectingPtyServer:
    """Reconnecting-PTY server for the agent (agent-api.md §5), buffered backend.

    ``ReconnectingPtyServer(options).start(tunnel)`` listens on ``port`` (2) of the tunnel;
    :meth:`close` stops listening, closes every connection and ends every session's child.
    ``timeout`` (seconds) is how long a session lives with nothing attached,
    ``first_attach_timeout`` how long a new one waits for its first attach, ``init_timeout``
    how long a connection may take to send its init frame, ``max_init_size`` the largest init
    JSON accepted (bytes; 65535 = anything a Go client can send).
    """

    def __init__(self, options: AgentOptions, *, timeout: float = DEFAULT_TIMEOUT,
                 first_attach_timeout: float = FIRST_ATTACH_TIMEOUT,
                 port: int = AGENT_RECONNECTING_PTY_PORT, init_timeout: float = INIT_TIMEOUT,
                 max_init_size: int = MAX_INIT_SIZE) -> None:
        if timeout <= 0 or first_attach_timeout <= 0:
            raise ValueError(f"timeouts must be positive, got {timeout} and "
                             f"{first_attach_timeout}")
        self.options = options
        self.timeout = timeout
        self.first_attach_timeout = first_attach_timeout
        self.port = port
        self.init_timeout = init_timeout
        self.max_init_size = max_init_size
        self._server: TunnelServer | None = None
        self._sessions: dict[uuid.UUID, asyncio.Future[PtySession | None]] = {}
        self._all_sessions: set[PtySession] = set()
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._closed = False
        #: connections closed for a bad init frame or request (hostile or broken clients)
        self.bad_frames = 0

    async def start(self, tunnel: Tunnel) -> None:
        """Listen on TCP ``port`` of the tunnel. Raises OSError if it is taken."""
        if self._server is not None:
            raise RuntimeError("reconnecting PTY server already started")
        self._server = await tunnel.start_server(self.serve_connection, self.port)

    @property
    def sessions(self) -> dict[uuid.UUID, PtySession]:
        """The live sessions by ID (those still being created are left out)."""
        out = {}
        for key, fut in self._sessions.items():
            if fut.done() and fut.result() is not None:
                session = fut.result()
                assert session is not None
                out[key] = session
        return out

    async def close(self) -> None:
        """Stop listening, close every connection, end every session and reap its child."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        creating = [fut for fut in self._sessions.values() if not fut.done()]
        if creating:  # _create closes what it finishes after _closed was set
            await asyncio.wait(creating, timeout=CLOSE_TIMEOUT)
        sessions = list(self._all_sessions)
        for session in sessions:
            session.close()
        for writer in list(self._handlers.values()):
            writer.transport.abort()
        # The aborts end every handler's read (cancelling them instead would make Python
        # 3.11's start_server callback log the cancelled task as an error).
        if self._handlers:
            _, stuck = await asyncio.wait(list(self._handlers), timeout=CLOSE_TIMEOUT)
            for task in stuck:
                task.cancel()
        if sessions:
            await asyncio.wait([asyncio.ensure_future(s.wait_closed()) for s in sessions],
                               timeout=KILL_GRACE + CLOSE_TIMEOUT)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), CLOSE_TIMEOUT)

    def _forget(self, session: PtySession) -> None:
        """Release the session's ID (called once when it closes)."""
        fut = self._sessions.get(session.id)
        if fut is not None and fut.done() and fut.result() is session:
            del self._sessions[session.id]

    async def serve_connection(self, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        """Run one connection (init frame, attach, requests) and close it. Works on any
        asyncio stream pair, e.g. from ``asyncio.start_server``."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        peer = writer.get_extra_info("peername")
        try:
            init = await self._read_init(reader, peer)
            if init is None or self._closed:
                return
            session = await self._session_for(init)
            if session is None:
                return
            session.attach(writer, init.height, init.width)
            try:
                await self._serve_requests(session, reader, peer)
            finally:
                session.detach(writer)
        except (ConnectionError, OSError) as exc:
            _log.debug("reconnecting PTY connection from %s: %s", peer, exc)
        finally:
            del self._handlers[task]
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)

    async def _read_init(self, reader: asyncio.StreamReader, peer: Any
                         ) -> ReconnectingPtyInit | None:
        """The init frame, or None (logged) when it is bad: nothing is written back."""
        try:
            async with asyncio.timeout(self.init_timeout):
                length = ReconnectingPtyInit.parse_length(
                    await reader.readexactly(INIT_HEADER_SIZE))
                if length > self.max_init_size:
                    raise ProtocolError(f"init frame of {length} bytes is over the limit of "
                                        f"{self.max_init_size}")
                body = await reader.readexactly(length)
            return ReconnectingPtyInit.parse(body)
        except asyncio.IncompleteReadError as exc:
            _log.info("reconnecting PTY from %s: connection ended inside the init frame "
                      "(%d bytes)", peer, len(exc.partial))
        except TimeoutError:
            _log.info("reconnecting PTY from %s: no init frame within %g s", peer,
                      self.init_timeout)
        except ProtocolError as exc:
            self.bad_frames += 1
            _log.info("reconnecting PTY from %s: bad init frame: %s", peer, exc)
        return None

    async def _session_for(self, init: ReconnectingPtyInit) -> PtySession | None:
        """The live session for ``init.id``, created (with ``init``'s command and size) when
        there is none. None when creating it failed."""
        for _ in range(2):  # a session that closes while we wait is replaced once
            fut = self._sessions.get(init.id)
            if fut is None:
                return await self._create(init)
            session = await asyncio.shield(fut)
            if session is not None and not session.closed.done():
                return session
            if session is None:
                return None
        return None

    async def _create(self, init: ReconnectingPtyInit) -> PtySession | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[PtySession | None] = loop.create_future()
        self._sessions[init.id] = fut
        if init.backend_type not in ("", "buffered"):
            _log.info("reconnecting PTY %s: backend %r is not available, using buffered",
                      init.id, init.backend_type)
        if init.container or init.container_user:
            _log.info("reconnecting PTY %s: dev containers are not enabled; ignoring "
                      "container %r", init.id, init.container)
        session = PtySession(self, init.id, init.command)
        try:
            await session.spawn(init.height, init.width)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            _log.warning("reconnecting PTY %s could not start %r: %s", init.id,
                         init.command or "login shell", exc)
            self._release(init.id, fut)
            return None
        except BaseException:
            self._release(init.id, fut)
            session.close()
            raise
        self._all_sessions.add(session)
        fut.set_result(session)
        if self._closed:
            session.close()
            return None
        return session

    def _release(self, session_id: uuid.UUID, fut: asyncio.Future[PtySession | None]) -> None:
        if self._sessions.get(session_id) is fut:
            del self._sessions[session_id]
        if not fut.done():
            fut.set_result(None)

    async def _serve_requests(self, session: PtySession, reader: asyncio.StreamReader,
                              peer: Any) -> None:
        """Apply request objects until EOF, a bad object, or the session closing."""
        decoder = RequestDecoder()
        while not session.closed.done():
            read = asyncio.ensure_future(reader.read(READ_SIZE))
            waiting: set[asyncio.Future[Any]] = {read, session.closed}
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not read.done():
                    read.cancel()
            if not read.done() or read.cancelled():  # the session closed first
                return
            data = read.result()
            if not data:
                return
            try:
                decoder.receive_data(data)
                while (request := decoder.next_request()) is not None:
                    if request.data:
                        session.write_input(request.data.encode("utf-8"))
                    if request.resize is not None:
                        session.resize(*request.resize)
            except ProtocolError as exc:
                self.bad_frames += 1
                _log.info("reconnecting PTY %s from %s: bad request: %s", session.id, peer, exc)
                return
            await session.wait_input_drained()
