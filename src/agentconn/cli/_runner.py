"""The event-loop runner of every ``agentconn`` command, and ``python -m agentconn.cli.<command>``
(one subcommand run on its own, with the same flags)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from agentconn.errors import AgentConnError

LEAVE_TIMEOUT = 5.0  #: seconds to leave Coder tailnets gracefully when a command ends


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` to completion on uvloop (stdlib asyncio without it); its exit status."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return int(asyncio.run(_leaving_tailnets(coro)))
    return int(uvloop.run(_leaving_tailnets(coro)))


async def _leaving_tailnets(coro: Coroutine[Any, Any, int]) -> int:
    """``coro``, then leave every Coder deployment it dialed (``coder.dial`` keeps one shared
    tunnel per deployment open after its connections close, for the next dial)."""
    try:
        return await coro
    finally:
        dial = sys.modules.get("agentconn.coder.deployment")
        if dial is not None:
            with contextlib.suppress(AgentConnError, OSError):  # best effort: we are exiting
                await asyncio.wait_for(dial.close_all(), LEAVE_TIMEOUT)


def standalone_main(name: str, add_parser: Callable[[Any], None],
                    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
                    argv: Sequence[str] | None, errors: tuple[type[BaseException], ...],
                    error_status: int) -> int:
    """Parse ``argv`` as ``agentconn <name> …`` and run it with :func:`run_async`; ``errors``
    print ``agentconn <name>: <error>`` and give ``error_status`` (or the error's own
    ``exit_status``, as :class:`~agentconn.cli.target.TargetError` has); ^C gives 130."""
    parser = argparse.ArgumentParser(prog="agentconn")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_async(run(args))
    except errors as exc:
        print(f"agentconn {name}: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_status", error_status))
    except KeyboardInterrupt:
        return 130
