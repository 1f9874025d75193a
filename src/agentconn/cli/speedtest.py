"""``agentconn speedtest``: Coder's ``coder speedtest`` against an agent.

``agentconn speedtest WORKSPACE [--direction up|down] [--time 5s] [--output table|json]`` (or
``--config CLIENT_CONF --agent-id UUID`` instead of the workspace, see
:mod:`~agentconn.cli.target`). The table is the one ``coder speedtest`` prints (go-pretty with
``cliui.Table()`` styling: upper-case headers, no borders, two spaces after every cell, a
dash separator before the total row). A progress line goes to stderr while the test runs.
``python -m agentconn.cli.speedtest ...`` runs it alone too (see ``_runner``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from agentconn.cli._runner import standalone_main
from agentconn.cli.target import add_target_arguments, open_conn
from agentconn.errors import AgentConnError
from agentconn.proto.speedtest import (
    DEFAULT_DURATION,
    MAX_DURATION,
    Direction,
    SpeedtestInterval,
    SpeedtestResult,
)

__all__ = ["add_parser", "format_table", "main", "parse_duration", "run", "to_coder_json"]

#: the shortest test the CLI asks for: ``--time`` is honoured down to here (the library's
#: default floor is Tailscale's 5 s; coder passes the user's duration through unclamped, and
#: agentconn's agent runs tests down to 1 s)
CLI_MIN_DURATION = 1.0

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
          "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Go ``time.ParseDuration`` ("5s", "1m30s", "500ms") or plain seconds ("5"), in seconds.
    Raises argparse.ArgumentTypeError."""
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-")
    total, pos = 0.0, 0
    for m in _PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 5s, 1m30s, 500ms)")
    return sign * total


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``speedtest`` on the ``agentconn`` subcommands."""
    p = sub.add_parser("speedtest", help="run an upload or download test against an agent",
                       description="Run upload and download tests from your machine to a "
                                   "workspace agent (Tailscale speedtest v2 on port 3).")
    add_target_arguments(p)
    p.add_argument("--direction", choices=("up", "down"), default="down",
                   help="down: the agent sends, we receive (default); up: we send")
    p.add_argument("--time", "-t", type=parse_duration, default=DEFAULT_DURATION,
                   metavar="DURATION",
                   help=f"test duration, e.g. 5s (default 5s; clamped to "
                        f"{CLI_MIN_DURATION:g}-{MAX_DURATION:g} s)")
    p.add_argument("--direct", "-d", action="store_true",
                   help="wait for a direct connection before testing speed (as coder "
                        "speedtest -d; a --config tunnel is always direct; over a DERP relay "
                        f"it waits up to {DIRECT_WAIT:g} s, then tests over the relay)")
    p.add_argument("--output", "-o", choices=("table", "json"), default="table",
                   help="table (as coder speedtest) or json")
    # Lower bound of the clamp; only tests lower it.
    p.add_argument("--min-time", type=parse_duration, default=CLI_MIN_DURATION,
                   help=argparse.SUPPRESS)


def format_table(result: SpeedtestResult) -> str:
    """``coder speedtest``'s table: ``Interval`` as ``%.2f-%.2f sec`` relative to the first
    result's start, ``Throughput`` as ``%.4f Mbits/sec``, a separator before the total."""
    results = result.results
    if not results:
        return "INTERVAL  THROUGHPUT  "
    origin = results[0].start
    rows: list[tuple[str, str] | None] = []
    for r in results:
        if r.total:
            rows.append(None)
        rows.append((f"{r.start - origin:.2f}-{r.end - origin:.2f} sec",
                     f"{r.mbits_per_second():.4f} Mbits/sec"))
    header = ("INTERVAL", "THROUGHPUT")
    cells = [header, *(row for row in rows if row is not None)]
    widths = [max(len(row[i]) for row in cells) for i in range(2)]

    def line(row: tuple[str, str]) -> str:
        return "".join(cell.ljust(width) + "  " for cell, width in zip(row, widths))

    out = [line(header)]
    for row in rows:
        out.append("-" * sum(w + 2 for w in widths) if row is None else line(row))
    return "\n".join(out)


def to_coder_json(result: SpeedtestResult) -> dict[str, Any]:
    """``coder speedtest --output json``: ``{"overall": {...}, "intervals": [{...}]}``, each
    ``start_time_seconds``/``end_time_seconds`` relative to the first interval's start and
    ``throughput_mbits`` (decimal Mbit/s); the overall row starts at 0."""
    results = result.results
    origin = results[0].start if results else 0.0

    def row(r: SpeedtestInterval, start: float) -> dict[str, float]:
        return {"start_time_seconds": start, "end_time_seconds": r.end - origin,
                "throughput_mbits": r.mbits_per_second()}

    total = result.total
    return {"overall": row(total, 0.0) if total is not None else
            {"start_time_seconds": 0.0, "end_time_seconds": 0.0, "throughput_mbits": 0.0},
            "intervals": [row(r, r.start - origin) for r in result.intervals]}


class _Progress:
    """One live line on stderr: rewritten in place on a terminal, one line per interval
    otherwise."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.tty = stream.isatty()
        self.bytes = 0
        self.shown = False

    def __call__(self, interval: SpeedtestInterval) -> None:
        self.bytes += interval.bytes
        text = (f"{self.label}: {interval.end:6.2f} sec  {interval.mbits_per_second():.4f} "
                f"Mbits/sec  ({self.bytes / 1e6:.1f} MB so far)")
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


#: Seconds ``--direct`` waits for a relayed path to become direct before testing anyway
#: (coder waits until interrupted; our tunnel may never leave the relay).
DIRECT_WAIT = 10.0


async def _await_direct(conn: Any) -> None:
    """``--direct``: as coder, ping once a second, saying ``Waiting for a direct
    connection... (<ms>ms via <relay>)`` while the path is relayed and ``<ms>ms via direct``
    once it is not; after DIRECT_WAIT seconds on a relay, say so and go on."""
    from agentconn.cli.target import relay_region
    from agentconn.errors import PingTimeoutError

    deadline = time.monotonic() + DIRECT_WAIT
    via = ""
    while True:
        try:
            rtt, _, _ = await conn.ping(timeout=1.0)
        except PingTimeoutError:
            rtt = None
        if rtt is not None:
            peer = conn.get_peer_diagnostics().get("peer") or {}
            endpoint = str(peer.get("endpoint") or "")
            if not endpoint.startswith("relay:"):
                print(f"{int(rtt * 1000)}ms via direct", file=sys.stderr, flush=True)
                return
            via = relay_region(conn, endpoint) or endpoint
            print(f"Waiting for a direct connection... ({int(rtt * 1000)}ms via {via})",
                  file=sys.stderr, flush=True)
        if time.monotonic() >= deadline:
            print(f"No direct connection within {DIRECT_WAIT:g} s; testing over the relay"
                  f"{f' ({via})' if via else ''}", file=sys.stderr, flush=True)
            return
        await asyncio.sleep(1.0)


async def run(args: argparse.Namespace) -> int:
    """Connect, run the test, print the table or JSON. 0 on success, 1 if the test failed."""
    from agentconn.client.speedtest import clamp_duration, speedtest

    direction = Direction.from_name(args.direction)
    floor = min(args.min_time, CLI_MIN_DURATION)
    seconds = clamp_duration(args.time, floor, MAX_DURATION)
    as_json = args.output == "json"
    conn = await open_conn(args)
    try:
        if getattr(args, "direct", False):
            await _await_direct(conn)
        # coder prints this with cliui.Infof on stderr, in both output modes
        print(f"Starting a {int(seconds)}s {direction.label} test...", file=sys.stderr,
              flush=True)
        progress = _Progress(sys.stderr, direction.label)
        try:
            result = await speedtest(conn, direction, seconds, on_interval=progress,
                                     min_duration=floor)
        finally:
            progress.clear()
    finally:
        await conn.close()
    if as_json:
        print(json.dumps(to_coder_json(result), indent=2))
    else:
        print(format_table(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentconn.cli.speedtest ...`` (the same flags as the subcommand)."""
    return standalone_main("speedtest", add_parser, run, argv, (AgentConnError,), 1)


if __name__ == "__main__":
    sys.exit(main())
