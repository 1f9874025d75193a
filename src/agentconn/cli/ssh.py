"""``agentconn ssh``: a shell or command on an agent, or a raw SSH stream for OpenSSH.

``agentconn ssh [--port 1] [-t|-T] WORKSPACE [command...]`` (as ``coder ssh``) or
``agentconn ssh --config CLIENT_CONF --agent-id UUID [...] [--] [command...]`` (see
:mod:`~agentconn.cli.target`; with ``--config`` every positional word is the command) logs in
with our asyncssh client ("none" auth, host key ignored, agent-api.md §6). Without a
command it starts the agent user's shell, on a PTY when stdin is a terminal (raw mode here,
the remote terminal resized on SIGWINCH); with one it runs it (PTY only with ``-t``). The
exit status is the remote one (255 when the remote side reported a signal or none at all,
as OpenSSH's ``ssh``).

``--stdio`` instead pipes stdin/stdout to the agent's SSH port unchanged, which makes it an
OpenSSH ``ProxyCommand``::

    ssh -o ProxyCommand="agentconn ssh --stdio WORKSPACE" user@workspace
    ssh -o ProxyCommand="agentconn ssh --stdio --config C --agent-id U" user@workspace

``python -m agentconn.cli.ssh ...`` runs it alone too (see ``_runner``).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agentconn.cli._runner import standalone_main
from agentconn.cli.target import add_target_arguments, open_conn
from agentconn.cli.terminal import on_resize, raw_mode, read_stdin, terminal_size, write_all
from agentconn.errors import AgentConnError
from agentconn.proto.ports import AGENT_SSH_PORT

if TYPE_CHECKING:
    import asyncssh

__all__ = ["add_parser", "main", "run", "split_workspace_command"]

READ_SIZE = 65536
EXIT_NO_STATUS = 255  #: OpenSSH's exit status when the remote reported a signal or nothing


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``ssh`` on the ``agentconn`` subcommands."""
    p = sub.add_parser("ssh", help="open a shell or run a command on an agent over SSH",
                       description="SSH into a workspace agent (its built-in server on tailnet "
                                   "port 1), or with --stdio act as an OpenSSH ProxyCommand.")
    add_target_arguments(p)
    p.add_argument("--port", "-p", type=int, default=AGENT_SSH_PORT,
                   help=f"the agent's SSH port (default {AGENT_SSH_PORT}; 22 is the same server)")
    p.add_argument("--stdio", action="store_true",
                   help="pipe stdin/stdout to the SSH port (for ssh -o ProxyCommand=...)")
    p.add_argument("--user", "-l", default=None,
                   help="user name to send (default: yours; the agent ignores it)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-t", "--tty", action="store_true",
                      help="request a PTY even when running a command")
    mode.add_argument("-T", "--no-tty", action="store_true", help="never request a PTY")
    # not dest="command": the top-level parser keeps the subcommand's name there
    p.add_argument("remote_command", nargs=argparse.REMAINDER, metavar="command",
                   help="command to run instead of a shell (after the workspace, or after -- "
                        "with --config)")


def split_workspace_command(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """(workspace, command words) of parsed ``ssh`` arguments. With ``--config`` there is no
    workspace, so the first positional argparse gave ``workspace`` starts the command
    (``ssh --config C --agent-id U -- uname -a``); otherwise it names the workspace
    (``ssh ws uname -a``, as ``coder ssh``)."""
    workspace: str | None = args.workspace
    words = list(args.remote_command)
    if args.config is not None and workspace is not None:
        return None, [workspace, *words]
    return workspace, words


def _command(words: Sequence[str]) -> str | None:
    words = list(words)
    if words and words[0] == "--":
        words = words[1:]
    return " ".join(words) if words else None  # joined with spaces, as OpenSSH's ssh does


async def _stdio(conn: Any, port: int) -> int:
    """Pump stdin → the agent's SSH port → stdout until the agent closes the connection."""
    from agentconn.client.ssh import ssh

    loop = asyncio.get_running_loop()
    reader, writer = await ssh(conn, port)
    out = sys.stdout.fileno()
    pending: list[asyncio.Future[None]] = []

    def on_data(data: bytes) -> None:
        if writer.is_closing():
            return
        if not data:
            if writer.can_write_eof():
                writer.write_eof()
            return
        writer.write(data)
        if writer.transport.get_write_buffer_size() > READ_SIZE * 4 and not pending:
            pause(True)
            pending.append(asyncio.ensure_future(drain()))

    async def drain() -> None:
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        pending.clear()
        pause(False)

    pause = read_stdin(loop, on_data)
    try:
        while data := await reader.read(READ_SIZE):
            write_all(out, data)
    finally:
        pause(True)
        writer.close()
    return 0


# -- interactive / command session ------------------------------------------------------------


async def _session(client: asyncssh.SSHClientConnection, command: str | None,
                   want_pty: bool) -> int:
    import asyncssh

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()

    class Terminal(asyncssh.SSHClientSession[bytes]):
        def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
            write_all(2 if datatype == asyncssh.EXTENDED_DATA_STDERR else stdout_fd, data)

        def pause_writing(self) -> None:
            pause(True)

        def resume_writing(self) -> None:
            pause(False)

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_result(None)

    def columns_rows() -> tuple[int, int]:
        rows, columns = terminal_size(stdout_fd, stdin_fd, 2)
        return columns, rows

    pty_args: dict[str, Any] = {}
    if want_pty:
        pty_args = {"term_type": os.environ.get("TERM") or "xterm-256color",
                    "term_size": columns_rows()}
    chan, _ = await client.create_session(Terminal, command, encoding=None, **pty_args)

    def on_data(data: bytes) -> None:
        if data:
            chan.write(data)
        elif not want_pty:  # with a PTY, ^D travels as a byte; EOF would end nothing
            chan.write_eof()

    pause: Callable[[bool], None] = lambda flag: None  # until stdin is hooked up
    with raw_mode(stdin_fd, want_pty):
        pause = read_stdin(loop, on_data)
        try:
            with on_resize(loop, lambda: chan.change_terminal_size(*columns_rows()), want_pty):
                await done
        finally:
            pause(True)
    status = chan.get_exit_status()
    return status if status is not None and status >= 0 else EXIT_NO_STATUS


async def run(args: argparse.Namespace) -> int:
    """Connect, then run ``--stdio`` piping or an SSH session; returns the exit status."""
    from agentconn.client.ssh import ssh_client

    args.workspace, words = split_workspace_command(args)
    command = _command(words)
    if args.stdio and command is not None:
        print("agentconn ssh: --stdio takes no command", file=sys.stderr)
        return 2
    conn = await open_conn(args)
    try:
        if args.stdio:
            return await _stdio(conn, args.port)
        kwargs: dict[str, Any] = {} if args.user is None else {"username": args.user}
        want_pty = not args.no_tty and (args.tty or (command is None and sys.stdin.isatty()))
        client = await ssh_client(conn, args.port, **kwargs)
        try:
            return await _session(client, command, want_pty)
        finally:
            client.close()
            await client.wait_closed()
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentconn.cli.ssh ...`` (the same flags as the subcommand)."""
    import asyncssh

    return standalone_main("ssh", add_parser, run, argv,
                           (AgentConnError, OSError, asyncssh.Error), EXIT_NO_STATUS)


if __name__ == "__main__":
    sys.exit(main())
