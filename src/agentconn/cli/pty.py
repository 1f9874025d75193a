"""``agentconn pty``: an interactive terminal on an agent's reconnecting PTY (agent-api.md §5).

``agentconn pty WORKSPACE [--id UUID] [--command CMD]`` (or ``--config CLIENT_CONF --agent-id
UUID`` instead of the workspace, see :mod:`~agentconn.cli.target`) attaches to
the session ``--id`` (a new random one by default, printed on stderr so it can be re-attached
later), creating it with ``--command`` (default: the login shell). The local terminal is put in
raw mode; keystrokes go to the agent as ``{"data": ...}`` objects and SIGWINCH sends the new
size. The program ends when the agent closes the connection (the remote program exited, the
session was killed); a *dropped* connection (reset, timeout, tunnel error) is re-attached with
the same ID, retrying with exponential backoff for ``--reconnect-timeout`` seconds. On
re-attach the local terminal is reset and the agent's replay of the last 64 KiB of output
redraws the screen.

``python -m agentconn.cli.pty ...`` runs it alone too (see ``_runner``).
"""
from __future__ import annotations

import argparse
import asyncio
import codecs
import os
import sys
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agentconn.cli._runner import standalone_main
from agentconn.cli.target import add_target_arguments, open_conn
from agentconn.cli.terminal import on_resize, raw_mode, read_stdin, terminal_size, write_all
from agentconn.errors import AgentConnError

if TYPE_CHECKING:
    from agentconn.client.conn import AgentConn
    from agentconn.client.pty import ReconnectingPty

__all__ = ["add_parser", "main", "run"]

READ_SIZE = 65536
RECONNECT_TIMEOUT = 300.0      #: default seconds to keep re-attaching (the agent's idle timeout)
BACKOFF_FIRST = 0.1            #: seconds before the first re-attach attempt
BACKOFF_MAX = 5.0              #: longest wait between attempts
TERMINAL_RESET = b"\x1bc"      #: RIS: the replay that follows redraws the screen from scratch
EXIT_LOST = 1                  #: exit status when re-attaching gave up


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``pty`` on the ``agentconn`` subcommands."""
    p = sub.add_parser("pty", help="interactive terminal on an agent's reconnecting PTY",
                       description="Attach to (or create) a reconnecting PTY session on a "
                                   "workspace agent (tailnet port 2); re-attaches by ID when "
                                   "the connection drops.")
    add_target_arguments(p)
    p.add_argument("--id", type=uuid.UUID, default=None, dest="session_id", metavar="UUID",
                   help="session ID to attach to (default: a new random one)")
    # not dest="command": the top-level parser keeps the subcommand's name there
    p.add_argument("--command", default="", dest="pty_command", metavar="CMD",
                   help="command for a new session (default: the login shell)")
    p.add_argument("--reconnect-timeout", type=float, default=RECONNECT_TIMEOUT, metavar="S",
                   help=f"seconds to keep re-attaching after a drop (default "
                        f"{RECONNECT_TIMEOUT:g})")


class _Terminal:
    """The local side: stdin → requests, output → stdout, re-attach on drops.

    Input and resizes go through one queue drained by :meth:`_send_loop`, so nothing typed
    while re-attaching is lost or reordered.
    """

    def __init__(self, conn: AgentConn, session_id: uuid.UUID, command: str,
                 reconnect_timeout: float) -> None:
        self.conn = conn
        self.session_id = session_id
        self.command = command
        self.reconnect_timeout = reconnect_timeout
        self.stdin = sys.stdin.fileno()
        self.stdout = sys.stdout.fileno()
        self._loop = asyncio.get_running_loop()
        self._pty: ReconnectingPty | None = None
        self._broken = False            # the sender saw the connection fail
        self._connected = asyncio.Event()
        self._queue: deque[tuple[str, Any]] = deque()
        self._queued = asyncio.Event()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    # -- local input ---------------------------------------------------------------------------

    def _push(self, kind: str, value: Any) -> None:
        self._queue.append((kind, value))
        self._queued.set()

    def _on_stdin(self, data: bytes) -> None:
        # b"": stdin ended (a pipe): keep showing output until the session ends
        text = self._decoder.decode(data, final=not data)
        if text:
            self._push("data", text)

    def _on_resize(self) -> None:
        self._push("size", terminal_size(self.stdout, self.stdin, 2))

    async def _send_loop(self) -> None:
        while True:
            while not self._queue:
                self._queued.clear()
                await self._queued.wait()
            kind, value = self._queue[0]
            await self._connected.wait()
            pty = self._pty
            assert pty is not None
            try:
                if kind == "data":
                    await pty.write(value)
                else:
                    await pty.resize(*value)
            except (ConnectionError, OSError):
                # keep the item; the read side notices the drop and re-attaches
                if self._pty is pty:
                    self._broken = True
                    self._connected.clear()
                    pty.abort()
                continue
            self._queue.popleft()

    # -- connection ----------------------------------------------------------------------------

    async def _attach(self) -> ReconnectingPty:
        from agentconn.client.pty import reconnecting_pty

        rows, columns = terminal_size(self.stdout, self.stdin, 2)
        return await reconnecting_pty(self.conn, self.session_id, rows, columns, self.command)

    async def _reattach(self, reason: str) -> ReconnectingPty | None:
        self._notice(f"connection lost ({reason}); re-attaching to {self.session_id}")
        deadline = time.monotonic() + self.reconnect_timeout
        delay = BACKOFF_FIRST
        while True:
            try:
                return await self._attach()
            except (AgentConnError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            left = deadline - time.monotonic()
            if left <= 0:
                self._notice(f"giving up re-attaching: {reason}")
                return None
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, BACKOFF_MAX)

    def _notice(self, text: str) -> None:
        write_all(2, f"\r\n[agentconn pty: {text}]\r\n".encode())

    async def run(self) -> int:
        """Attach, then relay until the agent closes the session; the exit status."""
        pty = await self._attach()
        try:
            with raw_mode(self.stdin):
                sender = asyncio.ensure_future(self._send_loop())
                # A stdin epoll refuses (a regular file, /dev/null) gives no input.
                pause = read_stdin(self._loop, self._on_stdin, poll_only=True)
                try:
                    with on_resize(self._loop, self._on_resize,
                                   os.isatty(self.stdout) or os.isatty(self.stdin)):
                        return await self._serve(pty)
                finally:
                    sender.cancel()
                    pause(True)
        finally:
            if self._pty is not None:
                self._pty.close()

    async def _serve(self, pty: ReconnectingPty) -> int:
        """Relay, re-attaching after drops, until the agent ends the session or we give up."""
        while True:
            self._pty, self._broken = pty, False
            self._connected.set()
            reason = await self._relay(pty)
            self._connected.clear()
            pty.abort()
            if reason is None:
                return 0
            new = await self._reattach(reason)
            if new is None:
                return EXIT_LOST
            pty = new
            write_all(self.stdout, TERMINAL_RESET)  # the replay redraws from here

    async def _relay(self, pty: ReconnectingPty) -> str | None:
        """Copy output to stdout until EOF (None: the agent ended it) or a drop (reason)."""
        while True:
            try:
                data = await pty.read(READ_SIZE)
            except (ConnectionError, TimeoutError, OSError) as exc:
                return str(exc) or type(exc).__name__
            if not data:
                return "write failed" if self._broken else None
            write_all(self.stdout, data)


async def run(args: argparse.Namespace) -> int:
    """Connect, attach and relay the terminal; returns the exit status."""
    conn = await open_conn(args)
    session_id: uuid.UUID = args.session_id or uuid.uuid4()
    if args.session_id is None:
        print(f"agentconn pty: session {session_id} (re-attach with --id {session_id})",
              file=sys.stderr)
    try:
        return await _Terminal(conn, session_id, args.pty_command, args.reconnect_timeout).run()
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentconn.cli.pty ...`` (the same flags as the subcommand)."""
    return standalone_main("pty", add_parser, run, argv, (AgentConnError, OSError), EXIT_LOST)


if __name__ == "__main__":
    sys.exit(main())
