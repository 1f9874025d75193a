"""The local terminal of the interactive commands (``agentconn pty``, ``agentconn ssh``): raw
mode, window size and SIGWINCH, reading stdin on the event loop, writing stdout in full.

Theory of operation: stdin is read by the event loop when it can poll it (a terminal, a pipe,
a socket) and by a thread of its own when it cannot (a regular file; epoll refuses those and
``/dev/null``); either way bytes arrive through one ``on_data`` callback, ``b""`` at EOF, and
the returned ``pause(flag)`` stops and restarts reading for flow control. Output is written
with blocking semantics even when the descriptor is non-blocking (a terminal shared with
stdin), so nothing is lost when the terminal is slow.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import stat
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator

__all__ = ["on_resize", "raw_mode", "read_stdin", "terminal_size", "write_all"]

READ_SIZE = 65536   #: bytes read from stdin at a time


def write_all(fd: int, data: bytes) -> None:
    """Write everything to ``fd`` even if it is non-blocking (a terminal shared with stdin)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


def terminal_size(*fds: int) -> tuple[int, int]:
    """(rows, columns) of the first fd that is a terminal; 24 × 80 otherwise."""
    for fd in fds:
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.lines, size.columns
    return 24, 80


@contextlib.contextmanager
def raw_mode(fd: int, enabled: bool = True) -> Iterator[None]:
    """Put the terminal ``fd`` in raw mode for the block (when ``enabled`` and ``fd`` is a
    terminal), keeping typed-ahead input as OpenSSH does; the old mode is restored after."""
    saved = None
    if enabled and os.isatty(fd):
        saved = termios.tcgetattr(fd)
        tty.setraw(fd, termios.TCSADRAIN)
    try:
        yield
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def on_resize(loop: asyncio.AbstractEventLoop, callback: Callable[[], object],
              enabled: bool = True) -> Iterator[None]:
    """Call ``callback`` on every SIGWINCH (the local terminal was resized) during the block,
    when ``enabled``."""
    if enabled:
        loop.add_signal_handler(signal.SIGWINCH, callback)
    try:
        yield
    finally:
        if enabled:
            loop.remove_signal_handler(signal.SIGWINCH)


def read_stdin(loop: asyncio.AbstractEventLoop, on_data: Callable[[bytes], None], *,
               poll_only: bool = False) -> Callable[[bool], None]:
    """Call ``on_data(chunk)`` for stdin's bytes and ``on_data(b"")`` at EOF.

    Uses the event loop's reader when stdin can be polled (terminal, pipe, socket) and a
    thread otherwise (a regular file) — unless ``poll_only``, which leaves such a stdin
    unread. Returns ``pause(flag)`` for flow control; ``pause(True)`` also ends reading.
    """
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            state["eof"] = True
            loop.remove_reader(fd)
        on_data(data)

    state = {"paused": False, "eof": False}

    def pause(flag: bool) -> None:
        if flag != state["paused"] and not state["eof"]:
            state["paused"] = flag
            if flag:
                loop.remove_reader(fd)
            else:
                loop.add_reader(fd, readable)

    if poll_only or not stat.S_ISREG(os.fstat(fd).st_mode):
        try:
            loop.add_reader(fd, readable)
            return pause
        except OSError:  # epoll refuses regular files and /dev/null (EPERM), kqueue some devices
            if poll_only:
                return lambda flag: None

    resume = threading.Event()
    resume.set()

    def reader_thread() -> None:
        while True:
            resume.wait()
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:
                data = b""
            loop.call_soon_threadsafe(on_data, data)
            if not data:
                return

    threading.Thread(target=reader_thread, name="agentconn-stdin", daemon=True).start()
    return lambda flag: resume.clear() if flag else resume.set()
