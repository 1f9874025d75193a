"""``agentconn cp``: copy files and directory trees to and from an agent, like ``scp``.

``agentconn cp ./build WS:/srv/app -r``, ``agentconn cp WS:/var/log/app.log .``,
``agentconn cp --config C --agent-id U :/tmp/x .``: exactly one of SRC and DST is remote,
``WORKSPACE:PATH`` (a Coder workspace, see :mod:`~agentconn.cli.target`) or ``:PATH`` (the
agent of ``--config``/``--agent-id``). As in scp, an argument is remote only when its colon
is preceded by something that can name a workspace and the argument is not an existing
local path (``./a:b`` is a local file, see :func:`parse_spec`). A relative remote PATH is
under the agent's home directory (``WS:`` alone is that directory). The bytes move through
:mod:`agentconn.client.transfer` (streamed, modes kept, sha256 verified, interrupted
downloads resumed from ``NAME.part``). A ``rich`` progress bar goes to stderr when it is a
terminal (and not ``--no-progress``); otherwise nothing is printed unless ``--verbose`` asks
for a summary line. Failures are one line
``agentconn cp: <message>`` and exit status 1.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentconn.cli._runner import standalone_main
from agentconn.cli.target import EXIT_USAGE, TargetError, add_target_arguments, open_conn
from agentconn.client.transfer import TransferError
from agentconn.errors import AgentConnError

#: what a target before the colon can look like: [owner/]workspace[.agent] or an agent UUID
_WORKSPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?"
                        r"(\.[A-Za-z0-9_-]+)?")

__all__ = ["Spec", "add_parser", "main", "parse_spec", "run"]


@dataclass(frozen=True, slots=True)
class Spec:
    """One side of the copy: ``remote`` with ``workspace`` ("" for ``:PATH``), or local."""

    path: str
    remote: bool = False
    workspace: str = ""


def parse_spec(text: str) -> Spec:
    """``[owner/]WS[.agent]:PATH`` or ``:PATH`` (remote), else a local path: a path that
    exists here, or whose part before the colon cannot be a workspace (it has a second ``/``,
    starts with ``.``, ``/`` or ``~``, or holds other characters), like ``./a:b``."""
    prefix, colon, path = text.partition(":")
    if not colon or os.path.lexists(text):
        return Spec(text)
    if prefix and not _WORKSPACE.fullmatch(prefix):
        return Spec(text)
    return Spec(path, remote=True, workspace=prefix)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cp`` on the ``agentconn`` subcommands."""
    p = sub.add_parser(
        "cp", help="copy files to or from a workspace agent (like scp)",
        description="Copy a file or (with -r) a directory tree between this machine and a "
                    "workspace agent. One of SRC and DST is WORKSPACE:PATH, or :PATH with "
                    "--config FILE --agent-id UUID. Modes are kept, every file is checked "
                    "with sha256, and an interrupted download resumes from its .part file.")
    p.add_argument("src", metavar="SRC", help="local path, WORKSPACE:PATH or :PATH")
    p.add_argument("dst", metavar="DST", help="local path, WORKSPACE:PATH or :PATH")
    p.add_argument("--recursive", "-r", action="store_true", help="copy directories")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar even when stderr is a terminal")
    p.add_argument("--no-resume", action="store_true",
                   help="download from the start even when a .part file is left over")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="print a summary line on stderr at the end")
    add_target_arguments(p, positional=False)


async def run(args: argparse.Namespace) -> int:
    src, dst = parse_spec(args.src), parse_spec(args.dst)
    if src.remote == dst.remote:
        raise TargetError("one of SRC and DST must be remote (WORKSPACE:PATH or :PATH) and "
                          "the other local", EXIT_USAGE)
    remote = src if src.remote else dst
    args.workspace = remote.workspace or None
    if not remote.path:  # "WS:" is the home directory, as in scp
        remote = Spec(".", remote=True, workspace=remote.workspace)
        src, dst = (remote, dst) if src.remote else (src, remote)
    if not src.remote and not os.path.lexists(src.path):
        # before dialing: a typo should not wait for a tunnel
        raise TargetError(f"{src.path}: No such file or directory", 1)
    show = not args.no_progress and sys.stderr.isatty()
    conn = await open_conn(args)
    bar = _Bar() if show else None
    started = time.monotonic()
    try:
        result = await _copy(conn, args, src, dst, bar)
    finally:
        if bar is not None:
            bar.close()
        await conn.close()
    if args.verbose:
        elapsed = time.monotonic() - started
        resumed = f", resumed {len(result.resumed)}" if result.resumed else ""
        print(f"{result.files} files, {result.directories} directories, "
              f"{result.total_bytes} bytes total, {result.transferred_bytes} bytes "
              f"transferred{resumed} in {elapsed:.1f} s", file=sys.stderr)
    return 0


async def _copy(conn: Any, args: argparse.Namespace, src: Spec, dst: Spec,
                bar: _Bar | None) -> Any:
    """The transfer; every failure as a :class:`TransferError` (exit status 1)."""
    try:
        if src.remote:
            return await conn.download(src.path, dst.path, recursive=args.recursive,
                                       resume=not args.no_resume,
                                       progress=bar.update if bar else None)
        return await conn.upload(src.path, dst.path, recursive=args.recursive,
                                 progress=bar.update if bar else None)
    except TransferError:
        raise
    except AgentConnError as e:
        raise TransferError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise TransferError(f"{where}{e.strerror or e}") from e


class _Bar:
    """A rich progress bar on stderr: name, bar, bytes, speed, time left."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(file=sys.stderr), transient=False)
        self._progress.start()
        self._task: Any = None

    def update(self, done: int, total: int, name: str) -> None:
        if self._task is None:
            self._task = self._progress.add_task(name, total=total or None, completed=done)
        else:
            self._progress.update(self._task, completed=done, total=total or None,
                                  description=name)

    def close(self) -> None:
        self._progress.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentconn.cli.cp SRC DST ...``."""
    return standalone_main("cp", add_parser, run, argv, (AgentConnError,), 1)


if __name__ == "__main__":
    sys.exit(main())
