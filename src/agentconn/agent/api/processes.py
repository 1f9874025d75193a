"""Process API: start, list, read and signal detached shell commands (agent-api.md §4).

Theory of operation
-------------------
``POST /api/v0/processes/start`` runs ``sh -c <command>`` detached from the request, with stdin
on ``/dev/null``, in a new session (so its process group id is its pid and signals reach its
children), and with stdout and stderr dup'ed onto the write end of **one** pipe, so the two
streams land in arrival order. The read end is non-blocking and drained by the event loop
(``add_reader``) into a :class:`HeadTailBuffer`.

Every process moves through two states:

``RUNNING``
    from the spawn until the process has been reaped *and* its pipe is done: either at EOF,
    or :data:`PIPE_DRAIN_TIMEOUT` after the exit if stray children still hold the pipe (Go's
    ``cmd.WaitDelay``), after which reading stops.
``EXITED``
    ``exit_code`` and ``exited_at_unix`` are set, ``wait=true`` waiters are woken, and the
    ``on_process_exit`` hook runs for processes started under a chat. The record is forgotten
    :data:`EXITED_RETENTION` after the exit, lazily, by the next ``list``.

The exit code follows Go's ``exec.Cmd.Wait``: the exit status; ``-1`` when a signal ended the
process, when the wait failed, or when the process exited 0 but the pipe had to be abandoned
(Go reports ``ErrWaitDelay`` instead of success then). Spawning, signalling and reaping are
:mod:`agentconn.agent.children`'s.

Chat isolation (§4.3): a process started under chat A is invisible (404) to output and signal
requests carrying chat B; requests without a chat see everything; ``list`` with a chat shows only
that chat's processes.

Output bytes become a JSON string the way Go's encoder writes a ``[]byte``-converted string:
each byte that is not part of a valid UTF-8 sequence becomes one U+FFFD.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from agentconn.agent.api.fsutil import go_quote, go_text
from agentconn.agent.api.router import (
    ApiError,
    RequestContext,
    Router,
    decode_body,
    json_ok,
    query_params,
)
from agentconn.agent.children import DEVNULL, PIPE, STDOUT, Child
from agentconn.agent.options import AgentOptions
from agentconn.proto.common import Response
from agentconn.proto.processes import (
    ListProcessesResponse,
    OutputTruncation,
    ProcessInfo,
    ProcessOutputResponse,
    ProcessSignal,
    SignalProcessRequest,
    StartProcessRequest,
    StartProcessResponse,
)
from agentconn.web.server import Request, ResponseLike

__all__ = [
    "EXITED_RETENTION",
    "MAX_HEAD_BYTES",
    "MAX_LINE_LENGTH",
    "MAX_LIST_PROCESSES",
    "MAX_TAIL_BYTES",
    "MAX_WAIT",
    "PIPE_DRAIN_TIMEOUT",
    "HeadTailBuffer",
    "ProcessManager",
    "go_string",
]

_log = logging.getLogger("agentconn.agent.processes")

#: §4.2: bytes kept from the start of the output (Go ``MaxHeadBytes``).
MAX_HEAD_BYTES = 16 << 10
#: §4.2: bytes kept from the end of the output in a ring (Go ``MaxTailBytes``).
MAX_TAIL_BYTES = 16 << 10
#: §4.2: lines longer than this are cut (Go ``MaxLineLength``).
MAX_LINE_LENGTH = 2048
#: §4.2: appended to a cut line; the line is cut so the result is ``MAX_LINE_LENGTH`` bytes.
LINE_TRUNCATION_SUFFIX = b" ... [truncated]"
#: §4.4: ``list`` returns at most this many entries.
MAX_LIST_PROCESSES = 10
#: §4.1: after the exit, how long stray children may hold the pipe open (Go ``WaitDelay``).
PIPE_DRAIN_TIMEOUT = 5.0
#: §4.3: the longest an ``output?wait=true`` request blocks.
MAX_WAIT = 300.0
#: §4.3: exited processes are forgotten this long after exit.
EXITED_RETENTION = 300.0

_READ_SIZE = 64 << 10
#: ``data`` as Go's JSON encoder writes ``string(data)``: one U+FFFD per invalid byte.
go_string = go_text


def _errno_text(e: OSError) -> str:
    """The error as Go's ``syscall.Errno`` spells it (lower-case ``strerror``)."""
    text = os.strerror(e.errno) if e.errno else str(e)
    return text[:1].lower() + text[1:]


def _truncate_lines(segment: bytes) -> bytes:
    """§4.2: cut every line longer than ``MAX_LINE_LENGTH`` (only if the segment itself is)."""
    if len(segment) <= MAX_LINE_LENGTH:
        return segment
    cut = MAX_LINE_LENGTH - len(LINE_TRUNCATION_SUFFIX)
    return b"\n".join(
        line[:cut] + LINE_TRUNCATION_SUFFIX if len(line) > MAX_LINE_LENGTH else line
        for line in segment.split(b"\n")
    )


class HeadTailBuffer:
    """Bounded capture of a process's combined output (agent-api.md §4.2).

    The first ``max_head`` bytes are kept as the head; everything after goes to a tail that
    keeps only the last ``max_tail`` bytes. Memory stays bounded however much is written.
    Sizes are in bytes and must be positive.
    """

    __slots__ = ("_head", "_max_head", "_max_tail", "_tail", "_total")

    def __init__(self, max_head: int = MAX_HEAD_BYTES, max_tail: int = MAX_TAIL_BYTES) -> None:
        if max_head <= 0 or max_tail <= 0:
            raise ValueError(f"head and tail sizes must be positive, got {max_head}, {max_tail}")
        self._max_head = max_head
        self._max_tail = max_tail
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0

    @property
    def total_bytes(self) -> int:
        """Bytes written so far (may exceed what is stored)."""
        return self._total

    def __len__(self) -> int:
        """Bytes currently stored (head + tail)."""
        return len(self._head) + len(self._tail)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the output."""
        view = memoryview(data)
        self._total += len(view)
        room = self._max_head - len(self._head)
        if room > 0:
            self._head += view[:room]
            view = view[room:]
        if not view:
            return
        if len(view) >= self._max_tail:
            self._tail[:] = view[len(view) - self._max_tail:]
            return
        self._tail += view
        excess = len(self._tail) - self._max_tail
        if excess > 0:
            del self._tail[:excess]

    def output(self) -> tuple[bytes, OutputTruncation | None]:
        """The ``output`` bytes and the ``truncated`` record (``None`` when nothing was split).

        Without a split the output is everything written (long lines cut); otherwise it is
        head + ``\\n\\n... [omitted N bytes] ...\\n\\n`` (or ``\\n`` when N is 0) + tail, each
        part's long lines cut, and ``retained_bytes`` is the length of that result.
        """
        head = bytes(self._head)
        if len(head) < self._max_head or not self._tail:
            return _truncate_lines(head), None
        tail = bytes(self._tail)
        omitted = self._total - len(head) - len(tail)
        joiner = f"\n\n... [omitted {omitted} bytes] ...\n\n".encode() if omitted > 0 else b"\n"
        result = _truncate_lines(head) + joiner + _truncate_lines(tail)
        return result, OutputTruncation(
            original_bytes=self._total,
            retained_bytes=len(result),
            omitted_bytes=omitted,
            strategy="head_tail",
        )


@dataclass(eq=False, slots=True)
class _Process:
    """One tracked process. ``running`` stays true until the pipe is done (see module doc)."""

    id: str
    command: str
    workdir: str  #: the resolved directory (what ``list`` shows)
    requested_workdir: str  #: as given in the request ("" if none): the exit hook's argument
    background: bool
    chat_id: uuid.UUID | None
    chats: tuple[uuid.UUID, ...]  #: the chat and its ancestors (the exit hook's argument)
    child: Child
    started_at_unix: int
    started_at: float  #: monotonic; orders ``list`` within one second
    buffer: HeadTailBuffer = field(default_factory=HeadTailBuffer)
    running: bool = True
    exit_code: int | None = None
    exited_at_unix: int | None = None
    exited_at: float | None = None  #: monotonic; drives reaping
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        return self.child.pid

    def info(self) -> ProcessInfo:
        return ProcessInfo(
            id=self.id,
            command=self.command,
            workdir=self.workdir,
            background=self.background,
            running=self.running,
            exit_code=self.exit_code,
            started_at_unix=self.started_at_unix,
            exited_at_unix=self.exited_at_unix,
        )


_SIGNALS = {ProcessSignal.KILL.value: signal.SIGKILL, ProcessSignal.TERMINATE.value: signal.SIGTERM}


class ProcessManager:
    """The ``/api/v0/processes`` routes and the processes they started.

    ``on_process_exit(chats, workdir)`` is called once a process started under a chat has
    finished (after its output is complete), with the chat and its ancestors
    (``Coder-Ancestor-Chat-Ids``) and the ``workdir`` exactly as the request gave it, or ``""``. ``max_wait``, ``exited_retention`` and ``pipe_drain_timeout`` (seconds)
    default to the spec's 5 min, 5 min and 5 s. Call :meth:`close` on shutdown.
    """

    def __init__(
        self,
        options: AgentOptions,
        on_process_exit: Callable[[tuple[uuid.UUID, ...], str], None] | None = None,
        *,
        max_wait: float = MAX_WAIT,
        exited_retention: float = EXITED_RETENTION,
        pipe_drain_timeout: float = PIPE_DRAIN_TIMEOUT,
    ) -> None:
        self._options = options
        self._on_process_exit = on_process_exit
        self._max_wait = max_wait
        self._exited_retention = exited_retention
        self._pipe_drain_timeout = pipe_drain_timeout
        self._procs: dict[str, _Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def register(self, router: Router) -> None:
        """Serve the four process routes."""
        router.add_routes({
            "StartProcess": self._start,
            "ListProcesses": self._list,
            "ProcessOutput": self._output,
            "SignalProcess": self._signal,
        })

    async def close(self) -> None:
        """Refuse new processes, SIGKILL every running process group and wait for them all."""
        self._closed = True
        for proc in list(self._procs.values()):
            if proc.running:
                try:
                    proc.child.signal_group(signal.SIGKILL)
                except OSError as e:
                    # Already gone: the group emptied between the exit and the pipe EOF.
                    _log.debug("close: kill group %d of process %s: %s", proc.pid, proc.id, e)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- handlers ------------------------------------------------------------------------------

    async def _start(self, request: Request, ctx: RequestContext) -> ResponseLike:
        body = await decode_body(request, StartProcessRequest)
        if body.command == "":
            raise ApiError(400, "Command is required.")
        for name, value in (("command", body.command), ("workdir", body.workdir),
                            *(("env", f"{k}={v}") for k, v in body.env.items())):
            if "\x00" in value:  # the OS refuses it (ValueError): a bad request, not a 500
                raise ApiError(400, f"{name} must not contain a NUL byte")
        if self._closed:
            raise ApiError(500, "Failed to start process.", "manager is closed")
        workdir = body.workdir or self._options.working_directory() or self._options.home
        env = dict(self._options.environ)
        env.update(body.env)
        if ctx.chat_id is not None:
            env["CODER_CHAT_ID"] = str(ctx.chat_id)
        try:
            child = Child.spawn(["sh", "-c", body.command], cwd=workdir, env=env,
                                stdin=DEVNULL, stdout=PIPE, stderr=STDOUT)
        except OSError as e:
            if e.filename == workdir:
                detail = f"start process: chdir {workdir}: {_errno_text(e)}"
            else:
                detail = f"start process: fork/exec {e.filename or 'sh'}: {_errno_text(e)}"
            raise ApiError(500, "Failed to start process.", detail) from e
        except ValueError as e:  # NUL bytes or '=' in the environment
            raise ApiError(500, "Failed to start process.", f"start process: {e}") from e
        proc = _Process(
            id=str(uuid.uuid4()),
            command=body.command,
            workdir=workdir,
            requested_workdir=body.workdir,
            background=body.background,
            chat_id=ctx.chat_id,
            chats=ctx.chats,
            child=child,
            started_at_unix=int(time.time()),
            started_at=time.monotonic(),
        )
        self._procs[proc.id] = proc
        task = asyncio.get_running_loop().create_task(
            self._supervise(proc), name=f"process {proc.id} (pid {proc.pid})"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return json_ok(StartProcessResponse(id=proc.id, started=True))

    async def _list(self, request: Request, ctx: RequestContext) -> ResponseLike:
        now = time.monotonic()
        shown: list[_Process] = []
        for proc in list(self._procs.values()):
            if proc.exited_at is not None and now - proc.exited_at > self._exited_retention:
                del self._procs[proc.id]
                continue
            if ctx.chat_id is not None and proc.chat_id != ctx.chat_id:
                continue
            shown.append(proc)
        # §4.4: running first, then newest first.
        shown.sort(key=lambda p: (not p.running, -p.started_at))
        infos = [p.info() for p in shown[:MAX_LIST_PROCESSES]]
        return json_ok(ListProcessesResponse(processes=infos))

    async def _output(self, request: Request, ctx: RequestContext, id: str) -> ResponseLike:
        proc = self._visible(id, ctx)
        if proc is None:
            raise ApiError(404, f"Process {go_quote(id)} not found.")
        if query_params(request, "ProcessOutput")["wait"] is True and proc.running:
            # §4.3: until the process exits, the client goes away or the cap passes; then
            # answer with the current snapshot.
            done = asyncio.ensure_future(proc.done.wait())
            gone = asyncio.ensure_future(request.wait_client_gone())
            try:
                await asyncio.wait({done, gone}, timeout=self._max_wait,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                done.cancel()
                gone.cancel()
        # State before output: once the state says exited, the buffer is final.
        running, exit_code = proc.running, proc.exit_code
        output, truncated = proc.buffer.output()
        return json_ok(ProcessOutputResponse(
            output=go_string(output), truncated=truncated, running=running, exit_code=exit_code,
        ))

    async def _signal(self, request: Request, ctx: RequestContext, id: str) -> ResponseLike:
        not_found = ApiError(404, f"Process {go_quote(id)} not found.")
        # Chat isolation comes before the body is even read, as in the reference agent.
        if id in self._procs and self._visible(id, ctx) is None:
            raise not_found
        body = await decode_body(request, SignalProcessRequest)
        name = body.signal.value if isinstance(body.signal, ProcessSignal) else body.signal
        if name == "":
            raise ApiError(400, "Signal is required.")
        signum = _SIGNALS.get(name)
        if signum is None:
            raise ApiError(400, f'Unsupported signal {go_quote(name)}. Use "kill" or "terminate".')
        proc = self._procs.get(id)
        if proc is None:
            raise not_found
        if not proc.running:
            raise ApiError(409, f"Process {go_quote(id)} is not running.")
        try:
            proc.child.signal_group(signum)  # §4.5: the whole process group
        except OSError as e:
            raise ApiError(500, "Failed to signal process.",
                           f"{name} process: {_errno_text(e)}") from e
        return json_ok(Response(message=f"Signal {go_quote(name)} sent to process {go_quote(id)}."))

    def _visible(self, id: str, ctx: RequestContext) -> _Process | None:
        proc = self._procs.get(id)
        if proc is None:
            return None
        if ctx.chat_id is not None and proc.chat_id is not None and proc.chat_id != ctx.chat_id:
            return None
        return proc

    # -- process lifetime ----------------------------------------------------------------------

    async def _supervise(self, proc: _Process) -> None:
        """Drain the pipe, reap the process, give the pipe its grace period, then finish."""
        loop = asyncio.get_running_loop()
        eof: asyncio.Future[None] = loop.create_future()
        output = proc.child.stdout  # stdout and stderr, one pipe (the read end)
        assert output is not None
        read_fd = output.fileno()
        os.set_blocking(read_fd, False)

        def on_readable() -> None:
            try:
                data = os.read(read_fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                _log.warning("process %s: reading output failed: %s", proc.id, e)
                data = b""
            if data:
                proc.buffer.write(data)
                return
            loop.remove_reader(read_fd)
            if not eof.done():
                eof.set_result(None)

        loop.add_reader(read_fd, on_readable)
        code: int | None = None
        drained = False
        try:
            code = await proc.child.wait()
            done, _ = await asyncio.wait({eof}, timeout=self._pipe_drain_timeout)
            drained = bool(done)
            if not drained:
                _log.info("process %s: children still hold its output after %.1fs; "
                          "no longer reading", proc.id, self._pipe_drain_timeout)
        finally:
            loop.remove_reader(read_fd)
            output.close()
            if not eof.done():
                eof.cancel()
            if code is None or code < 0 or (code == 0 and not drained):
                code = -1
            proc.exit_code = code
            proc.exited_at_unix = int(time.time())
            proc.exited_at = time.monotonic()
            proc.running = False
            proc.done.set()
        if proc.chat_id is not None and self._on_process_exit is not None:
            try:
                self._on_process_exit(proc.chats, proc.requested_workdir)
            except Exception:  # noqa: BLE001 - a faulty hook must not break the bookkeeping
                _log.exception("process %s: on_process_exit hook failed", proc.id)

