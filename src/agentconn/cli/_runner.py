"""The event-loop runner of every ``agentconn`` command, and ``python -m agentconn.cli.<command>``
(one subcommand run on its own, with the same flags)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` to completion on uvloop (stdlib asyncio without it); its exit status."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))


def standalone_main(name: str, add_parser: Callable[[Any], None],
                    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
                    argv: Sequence[str] | None, errors: tuple[type[BaseException], ...],
                    error_status: int) -> int:
    """Parse ``argv`` as ``agentconn <name> …`` and run it with :func:`run_async`; ``errors``
    print ``agentconn <name>: <error>`` and give ``error_status``; ^C gives 130."""
    parser = argparse.ArgumentParser(prog="agentconn")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_async(run(args))
    except errors as exc:
        print(f"agentconn {name}: {exc}", file=sys.stderr)
        return error_status
    except KeyboardInterrupt:
        return 130
