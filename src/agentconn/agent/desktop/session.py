"""The agent's desktop: one TigerVNC ``Xvnc`` server, started on first use (agent-api.md §11).

Theory of operation
-------------------
A :class:`DesktopSession` is ``STOPPED``, ``RUNNING`` or ``CLOSED``. Every desktop route calls
:meth:`DesktopSession.ensure_started` first; under one asyncio lock it returns at once while
the server runs (so concurrent requests share one desktop), and otherwise starts it:

1. a private directory, mode 0700, under the agent's data directory (or under the system temp
   directory when that path would be too long for a unix socket);
2. an Xauthority file there holding a fresh MIT-MAGIC-COOKIE-1, so only holders of the file
   (the agent, and the children it gives it to, e.g. ffmpeg) can open the X display;
3. ``Xvnc`` in its own process group (:func:`xvnc_command` gives the exact command line): it
   picks a free display number itself and reports it on a pipe (``-displayfd``), serves X on
   that display and RFB *only* on a unix socket in the private directory (``-rfbunixpath``,
   mode 0600, ``-rfbport -1``: no TCP listener). Nothing outside the agent's user can reach the
   VNC server, which is why it runs with ``-SecurityTypes None``; ``-AlwaysShared`` lets several
   viewers watch at once;
4. the agent's X connection (:class:`~agentconn.agent.desktop.display.XDisplay`) on a dedicated
   single-worker thread: :meth:`DesktopSession.call` runs blocking X calls there, one at a time,
   off the event loop.

Any failure undoes the steps done so far and raises :class:`DesktopUnavailable` (the routes
answer 500 ``Failed to start desktop session.``). If Xvnc dies or the X connection breaks, the
next request starts a fresh server. :meth:`DesktopSession.close` (the agent stopping) moves to
``CLOSED`` for good: it closes the X connection, sends SIGTERM to Xvnc's process group, SIGKILL
after :data:`STOP_TIMEOUT`, waits for it, and removes the private directory, so no process or
file is left behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import logging
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from Xlib import error as xerror

from agentconn.agent.desktop.display import XDisplay, XError, write_xauthority
from agentconn.errors import AgentConnError

__all__ = ["START_TIMEOUT", "STOP_TIMEOUT", "DesktopSession", "DesktopState",
           "DesktopUnavailable", "xvnc_command"]

_log = logging.getLogger("agentconn.agent.desktop")

#: Seconds Xvnc may take to report its display number.
START_TIMEOUT = 15.0
#: Seconds between SIGTERM and SIGKILL when stopping Xvnc (and waiting for it after).
STOP_TIMEOUT = 3.0
#: Longest unix socket path we hand to Xvnc (sun_path holds 108 bytes with the NUL).
_MAX_SOCKET_PATH = 100
#: The desktop's pixel depth; 24 bits in 32-bit pixels is what clients and GetImage expect.
DEPTH = 24

T = TypeVar("T")


class DesktopUnavailable(AgentConnError):
    """The desktop could not be started (or is disabled, or the agent is stopping)."""


class DesktopState(enum.Enum):
    STOPPED = "stopped"
    RUNNING = "running"
    CLOSED = "closed"


def xvnc_command(xvnc: str, *, displayfd: int, geometry: tuple[int, int], rfb_socket: str,
                 xauthority: str) -> list[str]:
    """The exact Xvnc command line the agent runs."""
    return [
        xvnc,
        "-displayfd", str(displayfd),          # pick a free display, report it when ready
        "-geometry", f"{geometry[0]}x{geometry[1]}",
        "-depth", str(DEPTH),
        "-rfbunixpath", rfb_socket,            # RFB only on this unix socket ...
        "-rfbunixmode", "0600",
        "-rfbport", "-1",                      # ... and on no TCP port
        "-SecurityTypes", "None",              # safe: nobody else can reach the socket
        "-AlwaysShared",                       # several viewers at once
        "-nolisten", "tcp",                    # X11 on the local socket only ...
        "-auth", xauthority,                   # ... and only with the cookie
        "-noreset",                            # keep the desktop when the last client leaves
        "-desktop", "agentconn",
    ]


class DesktopSession:
    """The agent's desktop (see the module doc).

    ``enabled`` false makes every start fail (the agent runs without ``--desktop``).
    ``geometry`` is the native (width, height) in pixels. ``data_dir`` is where the private
    directory goes; ``environ`` is the environment Xvnc runs with.
    """

    def __init__(self, *, enabled: bool, geometry: tuple[int, int], data_dir: str,
                 environ: Mapping[str, str] | None = None) -> None:
        width, height = geometry
        if width < 16 or height < 16:
            raise ValueError(f"desktop geometry {width}x{height} is too small (16x16 minimum)")
        self.enabled = enabled
        self.geometry = (width, height)
        self.data_dir = data_dir
        self._environ = dict(environ if environ is not None else os.environ)
        self.state = DesktopState.STOPPED
        self._lock = asyncio.Lock()
        self._proc: asyncio.subprocess.Process | None = None
        self._dir: str | None = None
        self._display_name = ""
        self._x: XDisplay | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._broken = False
        self.starts = 0
        #: ``time.monotonic()`` of the last desktop activity (actions and VNC viewer input;
        #: see :meth:`touch`).
        self.last_activity = time.monotonic()

    # -- facts about the running desktop -----------------------------------------------------

    @property
    def running(self) -> bool:
        """True while Xvnc runs and the X connection is usable."""
        return (self.state is DesktopState.RUNNING and self._proc is not None
                and self._proc.returncode is None and not self._broken)

    @property
    def display(self) -> str:
        """The X display (``":N"``) of the running desktop."""
        return self._display_name

    @property
    def rfb_socket(self) -> str:
        """Path of the VNC server's unix socket."""
        assert self._dir is not None, "desktop not started"
        return os.path.join(self._dir, "vnc.sock")

    @property
    def xauthority(self) -> str:
        """Path of the Xauthority file that opens the display."""
        assert self._dir is not None, "desktop not started"
        return os.path.join(self._dir, "Xauthority")

    @property
    def pid(self) -> int | None:
        """Xvnc's process id (also its process group id) while it runs."""
        return self._proc.pid if self._proc is not None else None

    def child_environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: the session environment) plus DISPLAY and XAUTHORITY for a
        program that should draw on, or read from, this desktop."""
        env = dict(self._environ if base is None else base)
        env["DISPLAY"] = self._display_name
        env["XAUTHORITY"] = self.xauthority
        return env

    def touch(self) -> None:
        """Record desktop activity now (every action and every viewer's input does;
        recordings watch it)."""
        self.last_activity = time.monotonic()

    # -- lifecycle ------------------------------------------------------------------------

    async def ensure_started(self) -> None:
        """Start the desktop unless it runs; concurrent callers share one start.

        Raises :class:`DesktopUnavailable` with the reason when it cannot run.
        """
        if self.running:
            return
        async with self._lock:
            if self.state is DesktopState.CLOSED:
                raise DesktopUnavailable("the agent is shutting down")
            if self.running:
                return
            if not self.enabled:
                raise DesktopUnavailable(
                    "the desktop is not enabled on this agent (run it with --desktop)")
            if self.state is DesktopState.RUNNING:
                _log.warning("desktop %s died (Xvnc exit status %s); starting a new one",
                             self._display_name, self._proc.returncode if self._proc else None)
                await self._stop()
            try:
                await self._start()
            except BaseException:
                await self._stop()
                raise

    def _private_dir(self) -> str:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        path = tempfile.mkdtemp(prefix="session-", dir=self.data_dir)  # mode 0700
        if len(os.path.join(path, "vnc.sock")) > _MAX_SOCKET_PATH:
            os.rmdir(path)
            path = tempfile.mkdtemp(prefix="agentconn-desktop-")
        return path

    async def _start(self) -> None:
        xvnc = shutil.which("Xvnc", path=self._environ.get("PATH", os.defpath))
        if xvnc is None:
            raise DesktopUnavailable(
                "Xvnc not found on PATH (Debian package tigervnc-standalone-server)")
        self._dir = self._private_dir()
        write_xauthority(self.xauthority, secrets.token_bytes(16))
        read_fd, write_fd = os.pipe()
        log_path = os.path.join(self._dir, "Xvnc.log")
        try:
            with open(log_path, "wb") as log:  # noqa: ASYNC230 - creating a local file
                self._proc = await asyncio.create_subprocess_exec(
                    *xvnc_command(xvnc, displayfd=write_fd, geometry=self.geometry,
                                  rfb_socket=self.rfb_socket, xauthority=self.xauthority),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                    pass_fds=(write_fd,), start_new_session=True, env=self._environ)
        finally:
            os.close(write_fd)
        self.state = DesktopState.RUNNING
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                               os.fdopen(read_fd, "rb", buffering=0))
        try:
            line = await asyncio.wait_for(reader.readline(), START_TIMEOUT)
        except TimeoutError:
            raise DesktopUnavailable(
                f"Xvnc did not report a display within {START_TIMEOUT:g} s; "
                f"log: {_tail(log_path)}") from None
        finally:
            pipe.close()
        number = line.decode("ascii", "replace").strip()
        if not number.isdigit():
            await asyncio.sleep(0.1)  # let it finish writing its log
            raise DesktopUnavailable(f"Xvnc exited (status {self._proc.returncode}) without "
                                     f"reporting a display; log: {_tail(log_path)}")
        self._display_name = f":{number}"
        if not os.path.exists(self.rfb_socket):
            raise DesktopUnavailable(f"Xvnc on {self._display_name} did not create its VNC "
                                     f"socket {self.rfb_socket}; log: {_tail(log_path)}")
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"agentconn-desktop{self._display_name}")
        try:
            self._x = await loop.run_in_executor(
                self._executor, XDisplay, self._display_name, self.xauthority)
        except XError as e:
            raise DesktopUnavailable(str(e)) from e
        if (self._x.width, self._x.height) != self.geometry:
            raise DesktopUnavailable(f"Xvnc made a {self._x.width}x{self._x.height} screen, "
                                     f"not the {self.geometry[0]}x{self.geometry[1]} asked for")
        self._broken = False
        self.starts += 1
        self.touch()
        _log.info("desktop started: Xvnc pid %d on display %s, %dx%d, VNC socket %s",
                  self._proc.pid, self._display_name, *self.geometry, self.rfb_socket)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(xdisplay, *args, **kwargs)`` on the X thread and return its result.

        Raises :class:`~agentconn.agent.desktop.display.XError` when X fails (a lost
        connection also marks the desktop for a restart on the next request) and
        :class:`DesktopUnavailable` when the desktop is not running.
        """
        x, executor = self._x, self._executor
        if x is None or executor is None or not self.running:
            raise DesktopUnavailable("the desktop is not running")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, functools.partial(fn, x, *args, **kwargs))
        except (xerror.ConnectionClosedError, OSError) as e:
            self._broken = True
            raise XError(f"X connection lost: {e}") from e
        except XError as e:
            if "connection lost" in str(e):
                self._broken = True
            raise
        except RuntimeError as e:  # the executor was shut down under us (agent stopping)
            raise DesktopUnavailable(str(e)) from e
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # our caller is being cancelled
            # the queued call was dropped because the desktop is stopping
            raise DesktopUnavailable("the desktop stopped") from None

    async def close(self) -> None:
        """Stop the desktop for good (idempotent); leaves no process or file behind."""
        async with self._lock:
            await self._stop()
            self.state = DesktopState.CLOSED

    async def _stop(self) -> None:
        x, executor, proc = self._x, self._executor, self._proc
        self._x = self._executor = self._proc = None
        if x is not None and executor is not None:
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(executor, x.close), STOP_TIMEOUT)
            except (TimeoutError, RuntimeError):
                pass
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if proc is not None:
            await _kill_group(proc)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._display_name = ""
        if self.state is DesktopState.RUNNING:
            self.state = DesktopState.STOPPED


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, SIGKILL it after :data:`STOP_TIMEOUT`, reap the leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.returncode is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            continue
    if proc.returncode is None:
        await proc.wait()


def _tail(path: str, limit: int = 600) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(unreadable: {e})"
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())
