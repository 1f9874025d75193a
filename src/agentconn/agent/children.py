"""Terminal helpers shared by the agent's PTY and SSH servers: the OS user, window sizes and
the child setup that gives a process its PTY as controlling terminal."""

from __future__ import annotations

import fcntl
import os
import pwd
import struct
import termios
from collections.abc import Callable

__all__ = ["controlling_terminal", "os_user", "set_window_size"]


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


def controlling_terminal(slave: int) -> Callable[[], None]:
    """A ``preexec_fn``: a new session whose controlling terminal is the PTY ``slave``.

    It does the ``setsid()`` itself rather than ``start_new_session=True`` and names the
    slave by its own descriptor, not fd 0: CPython runs ``preexec_fn`` after the dup2s and
    setsid, uvloop (libuv) before them, and this works in either order.
    """
    def setup() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    return setup
