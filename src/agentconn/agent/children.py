"""The agent's child processes: one way to start, signal and reap them.

Theory of operation
-------------------
Every child the agent runs (process-API commands, reconnecting-PTY sessions, SSH sessions)
leads a session of its own, so its process group id is its pid and one ``killpg`` reaches
the child and whatever it started that stayed in its group (background jobs, pipelines).
With a :class:`Terminal` the child's stdin, stdout and stderr are the PTY slave, which
becomes its controlling terminal; the agent keeps the master, non-blocking, for the event
loop. Without one the caller chooses the three like ``subprocess.Popen``'s arguments
(``PIPE``, ``DEVNULL``, ``STDOUT``); :meth:`Child.open_streams` turns pipes into asyncio
streams, as ``asyncio.create_subprocess_exec`` would give them.

Spawning is :class:`subprocess.Popen` on every event loop (fork and exec in the loop's
thread, as asyncio's own subprocess support does), so a child is set up in the same order
whether the agent runs on asyncio or uvloop. Reaping is ours alone: a pidfd on the loop says
when the child exited and ``waitpid(WNOHANG)`` collects it; where pidfds are unavailable, a
thread of its own blocks in ``waitpid``. Popen never waits or polls (it would race us for the
status) and is told the exit code afterwards. Exit codes are asyncio's ``returncode``: the
exit status, or ``-N`` when signal ``N`` ended the child; ``None`` when the status could not
be collected.

Ending a child: :meth:`Child.hang_up` sends SIGHUP to the group, as a closing terminal
would, and SIGKILL ``grace`` seconds later: to end the child (reaping it drops the SIGKILL;
the reconnecting PTY) or the whole group (the SIGKILL comes anyway, for background jobs that
outlive the child and hold its pipes; SSH). :meth:`Child.signal_group` sends any signal to
the group, :meth:`Child.send_signal` to the child alone. :func:`read_terminal` and
:func:`write_terminal` are the non-blocking reads and writes of a PTY master.

:class:`Login` is what a login of the agent's OS user looks like (shell, environment,
directory), shared by the SSH and reconnecting-PTY servers.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import pwd
import shutil
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Self

from agentconn.agent.options import AgentOptions

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "Child",
    "Login",
    "Terminal",
    "os_user",
    "read_terminal",
    "set_window_size",
    "write_terminal",
]

_log = logging.getLogger("agentconn.agent.children")

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT
STREAM_LIMIT = 1 << 16   #: StreamReader limit of :meth:`Child.open_streams` (asyncio's default)
READ_SIZE = 1 << 16      #: bytes :func:`read_terminal` reads at a time


def os_user() -> tuple[str, str]:
    """(user name, login shell from the passwd entry) of the agent's OS user."""
    try:
        entry = pwd.getpwuid(os.getuid())
    except KeyError:
        return str(os.getuid()), ""
    return entry.pw_name, entry.pw_shell


def set_window_size(fd: int, rows: int, columns: int, xpixels: int = 0, ypixels: int = 0) -> None:
    """TIOCSWINSZ (the foreground process group gets SIGWINCH); values clamped to 16 bits."""
    # struct winsize {ws_row, ws_col, ws_xpixel, ws_ypixel}: four unsigned shorts
    size = struct.pack("HHHH", *(min(max(v, 0), 0xFFFF) for v in (rows, columns, xpixels, ypixels)))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, size)


@dataclass(slots=True)
class Login:
    """A login of the agent's OS user, as sshd sets one up.

    ``shell`` is the passwd entry's shell when it is executable, else ``fallback_shell``, else
    ``sh`` from ``PATH``; ``environ`` is the agent's session environment plus ``USER``,
    ``LOGNAME``, ``HOME`` and ``SHELL`` (callers add their own); ``directory`` is the
    configured working directory, else the home directory, else ``/``.
    """

    user: str
    shell: str
    environ: dict[str, str]
    directory: str

    @classmethod
    def of(cls, options: AgentOptions, *, fallback_shell: str | None = None) -> Login:
        """The login described by ``options`` (evaluated now: the passwd entry, directories)."""
        user, login_shell = os_user()
        shell = (login_shell if login_shell and os.access(login_shell, os.X_OK)
                 else fallback_shell or shutil.which("sh") or "/bin/sh")
        environ = dict(options.environ)
        environ.update(USER=user, LOGNAME=user, HOME=options.home, SHELL=shell)
        directory = options.working_directory()
        if directory is None:
            directory = options.home if os.path.isdir(options.home) else "/"
        return cls(user, shell, environ, directory)

    def argv(self, command: str | None) -> list[str]:
        """``shell -l`` for an interactive login (``command`` None), else ``shell -c command``."""
        return [self.shell, "-l"] if command is None else [self.shell, "-c", command]


def read_terminal(master: int) -> bytes | None:
    """One non-blocking read from a PTY master: the bytes the child wrote; ``b""`` once no
    process holds the slave any more (EIO); None when nothing is waiting."""
    try:
        return os.read(master, READ_SIZE)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def write_terminal(master: int, buffer: bytearray) -> OSError | None:
    """Write what a PTY master takes now from the front of ``buffer`` and remove it there.

    Returns None, or the error when the terminal is gone (EIO: the child exited); the input
    has nowhere to go then and ``buffer`` is cleared.
    """
    while buffer:
        try:
            n = os.write(master, buffer)
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        except OSError as exc:
            buffer.clear()
            return exc
        del buffer[:n]
    return None


class Terminal:
    """A new pseudo-terminal for one child, ``rows`` × ``columns`` (24 × 80 for a 0).

    Use it as a context manager around :meth:`Child.spawn`: leaving the block closes the
    slave (the child has its own copies), and the master too unless a spawned child took it.
    ``name`` is the slave's path (``/dev/pts/N``, for ``SSH_TTY``). Raises OSError when no
    PTY can be opened.
    """

    def __init__(self, rows: int, columns: int, xpixels: int = 0, ypixels: int = 0) -> None:
        self.master, self.slave = os.openpty()
        self._master_taken = False
        try:
            set_window_size(self.slave, rows or 24, columns or 80, xpixels, ypixels)
            self.name = os.ttyname(self.slave)
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.slave)
        if not self._master_taken:
            os.close(self.master)

    def _take_master(self) -> int:
        self._master_taken = True
        return self.master


def _controlling_terminal(slave: int) -> Callable[[], None]:
    """A ``preexec_fn``: a new session whose controlling terminal is the PTY ``slave``.

    It does the ``setsid()`` itself rather than ``start_new_session=True`` and names the
    slave by its own descriptor, not fd 0: CPython runs ``preexec_fn`` after the dup2s and
    setsid, uvloop (libuv) before them, and this works in either order.
    """
    def setup() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    return setup


class Child:
    """One child process leading its own session (its process group id is its pid).

    Made by :meth:`spawn`; reaped in the background from then on (:meth:`wait`). ``master``
    is the non-blocking PTY master when it runs on a :class:`Terminal`; ``stdin``, ``stdout``
    and ``stderr`` are our ends of the pipes asked for with ``PIPE`` (unbuffered binary files),
    else None.
    """

    def __init__(self, popen: subprocess.Popen[bytes], master: int | None) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.master = master
        self.stdin: IO[bytes] | None = popen.stdin
        self.stdout: IO[bytes] | None = popen.stdout
        self.stderr: IO[bytes] | None = popen.stderr
        self._loop = asyncio.get_running_loop()
        self._hung_up = False
        self._kill_leftovers = False
        self._kill_handle: asyncio.TimerHandle | None = None
        self._exit = self._loop.create_task(self._reap(), name=f"reap child {self.pid}")

    @classmethod
    def spawn(cls, argv: Sequence[str], *, cwd: str, env: Mapping[str, str],
              terminal: Terminal | None = None, stdin: int | None = DEVNULL,
              stdout: int | None = None, stderr: int | None = None) -> Child:
        """Start ``argv`` in ``cwd`` with exactly the environment ``env``, in a new session.

        With ``terminal`` the child's stdio is its slave and it becomes the child's
        controlling terminal (``stdin``/``stdout``/``stderr`` are ignored); otherwise those
        three are as for ``subprocess.Popen`` (``None`` inherits the agent's). Must run in
        the event loop. Raises OSError (``filename`` is ``cwd`` when the directory is the
        problem), ValueError (NUL bytes, ``=`` in a variable name) or SubprocessError.
        """
        master: int | None = None
        if terminal is not None:
            slave = terminal.slave
            # preexec_fn forks without exec'ing a helper; it only calls setsid and ioctl, which
            # take no lock another thread of ours could hold.
            popen = subprocess.Popen(
                argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, bufsize=0,
                close_fds=True, preexec_fn=_controlling_terminal(slave))  # noqa: PLW1509
            master = terminal._take_master()
            os.set_blocking(master, False)
        else:
            popen = subprocess.Popen(
                argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=env, bufsize=0,
                close_fds=True, start_new_session=True)
        return cls(popen, master)

    # -- exit -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True until the child has been reaped."""
        return not self._exit.done()

    async def wait(self) -> int | None:
        """The exit code once the child was reaped (``-N``: signal ``N``; ``None`` when the
        status could not be collected). Cancelling the caller does not stop the reaping."""
        return await asyncio.shield(self._exit)

    async def _reap(self) -> int | None:
        status = await _wait_exit(self.pid)
        code = None if status is None else os.waitstatus_to_exitcode(status)
        # Popen must not try to reap the pid again (its __del__ would track it otherwise).
        self._popen.returncode = -1 if code is None else code
        if self._kill_handle is not None and not self._kill_leftovers:
            self._kill_handle.cancel()
            self._kill_handle = None
        return code

    # -- signals ----------------------------------------------------------------------------

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the child alone, while it runs."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's process group. Raises OSError (ProcessLookupError
        once nothing is left in the group)."""
        os.killpg(self.pid, signum)

    def hang_up(self, grace: float, *, leftovers: bool = False) -> None:
        """SIGHUP the process group now and SIGKILL it ``grace`` seconds later.

        Without ``leftovers`` this ends the child: nothing happens once it has been reaped,
        and reaping it drops the SIGKILL. With ``leftovers`` it ends the whole group whether
        or not the child itself still runs (background jobs that hold its pipes). Only the
        first call counts.
        """
        if self._hung_up or (not leftovers and not self.running):
            return
        self._hung_up = True
        self._kill_leftovers = leftovers
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGHUP)
        self._kill_handle = self._loop.call_later(grace, self._kill_group)

    def _kill_group(self) -> None:
        # The group outlives its leader while members are left; once it is empty this is
        # ESRCH (a pid is not reused as a new group's id while the group exists).
        self._kill_handle = None
        if self.running or self._kill_leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    # -- I/O --------------------------------------------------------------------------------

    async def open_streams(self) -> tuple[asyncio.StreamWriter | None,
                                          asyncio.StreamReader | None,
                                          asyncio.StreamReader | None]:
        """asyncio streams over the ``PIPE`` ends, as ``asyncio.create_subprocess_exec``
        gives them: a writer for stdin and readers (64 KiB limit) for stdout and stderr.
        The read pipes close themselves at EOF; close the writer when done."""
        loop = self._loop
        readers: list[asyncio.StreamReader | None] = []
        for pipe in (self.stdout, self.stderr):
            if pipe is None:
                readers.append(None)
                continue
            reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
            await loop.connect_read_pipe(functools.partial(_ReadProtocol, reader), pipe)
            readers.append(reader)
        writer = None
        if self.stdin is not None:
            transport, protocol = await loop.connect_write_pipe(_WriteProtocol, self.stdin)
            writer = asyncio.StreamWriter(transport, protocol, None, loop)
        return writer, readers[0], readers[1]

    def close(self) -> None:
        """Close the PTY master (if any), which hangs up the terminal: SIGHUP to whatever is
        left in the child's session. Call it once the child was reaped and the loop no
        longer watches the master."""
        master, self.master = self.master, None
        if master is not None:
            os.close(master)


class _ReadProtocol(asyncio.StreamReaderProtocol):
    """A ``StreamReader`` on a read pipe. A pipe has no half-close: EOF closes the transport
    (asyncio's pipe transport does so anyway, uvloop's only when told)."""

    def eof_received(self) -> bool:
        super().eof_received()
        return False


class _WriteProtocol(asyncio.streams.FlowControlMixin):
    """What a ``StreamWriter`` on a write pipe needs: ``drain()`` support (asyncio's own
    subprocess streams use the same mixin)."""


# -- reaping ----------------------------------------------------------------------------------


async def _wait_exit(pid: int) -> int | None:
    """Reap child ``pid`` without blocking the loop; its wait status, or ``None`` if that failed."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return await _wait_exit_thread(pid)
    try:
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)
    exited_now, status = _reap_exited(pid)
    return status if exited_now else await _wait_exit_thread(pid)


def _reap_exited(pid: int) -> tuple[bool, int | None]:
    """``waitpid(pid, WNOHANG)`` for a child whose pidfd said it exited; never blocks.

    ``(True, status)``; ``(True, None)`` if the wait failed; ``(False, None)`` if the child
    is, against the pidfd's word, still running.
    """
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError as e:
        _log.warning("waitpid(%d) failed: %s", pid, e)
        return True, None
    return (True, status) if reaped == pid else (False, None)


async def _wait_exit_thread(pid: int) -> int | None:
    # A thread of its own rather than the default executor: a long-running process must not
    # hold one of its few workers.
    loop = asyncio.get_running_loop()
    result: asyncio.Future[int | None] = loop.create_future()

    def deliver(status: int | None) -> None:
        if not result.done():
            result.set_result(status)

    def run() -> None:
        try:
            status: int | None = os.waitpid(pid, 0)[1]
        except ChildProcessError as e:
            _log.warning("waitpid(%d) failed: %s", pid, e)
            status = None
        try:
            loop.call_soon_threadsafe(deliver, status)
        except RuntimeError:
            _log.debug("waitpid(%d): the loop closed before the exit was delivered", pid)

    threading.Thread(target=run, name=f"agentconn-waitpid-{pid}", daemon=True).start()
    return await result
