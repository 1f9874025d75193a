"""``python -m agentconn.cli.<command>``: one subcommand run on its own, with the same flags."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any


def standalone_main(name: str, add_parser: Callable[[Any], None],
                    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
                    argv: Sequence[str] | None, errors: tuple[type[BaseException], ...],
                    error_status: int) -> int:
    """Parse ``argv`` as ``agentconn <name> …``, run it on uvloop (stdlib asyncio without it);
    ``errors`` print ``agentconn <name>: <error>`` and give ``error_status``; ^C gives 130."""
    parser = argparse.ArgumentParser(prog="agentconn")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            return asyncio.run(run(args))
        return uvloop.run(run(args))
    except errors as exc:
        print(f"agentconn {name}: {exc}", file=sys.stderr)
        return error_status
    except KeyboardInterrupt:
        return 130
