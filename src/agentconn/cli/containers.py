"""``agentconn containers`` and ``agentconn devcontainer``: the agent's containers (§9).

    agentconn containers WORKSPACE [--watch] [--output table|json]
    agentconn devcontainer recreate WORKSPACE ID
    agentconn devcontainer delete WORKSPACE ID

``containers`` prints a table like ``docker ps`` (id, image, status, ports, name) followed by
the dev containers (id, name, status, workspace folder, container, dirty, error), or the
agent's JSON (``--output json``: one list per line). ``--watch`` prints the list again on
every dev container change until interrupted. ``devcontainer recreate`` starts the rebuild
(the agent answers at once; follow it with ``containers --watch``), ``devcontainer delete``
returns when the container is gone. ``-c FILE --agent-id UUID`` instead of ``WORKSPACE``
reaches the agent through a wg-quick file (see :mod:`~agentconn.cli.target`). Errors are one
line: ``agentconn containers: … 403 Dev Container feature not enabled.: To enable …``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TextIO

from agentconn.cli.target import add_target_arguments, open_conn
from agentconn.client.conn import AgentApiError
from agentconn.proto._codec import go_json
from agentconn.proto.containers import Container, ListContainersResponse

__all__ = ["add_parser", "format_table", "run", "run_devcontainer"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``containers`` and ``devcontainer recreate|delete`` to the subcommands."""
    p = sub.add_parser("containers", help="list the agent's containers and dev containers",
                       description="List the containers of the agent's Docker engine and its "
                                   "dev containers (agent-api.md §9).")
    add_target_arguments(p)
    p.add_argument("--watch", "-w", action="store_true",
                   help="print the list again whenever a dev container changes")
    p.add_argument("--output", "-o", choices=("table", "json"), default="table",
                   help="table (default) or the agent's JSON, one list per line")

    dc = sub.add_parser("devcontainer", help="recreate or delete a dev container")
    what = dc.add_subparsers(dest="devcontainer_command", required=True)
    for name, text in (("recreate", "rebuild a dev container into a new container"),
                       ("delete", "stop and remove a dev container's container")):
        one = what.add_parser(name, help=text)
        add_target_arguments(one)
        one.add_argument("id", metavar="ID",
                         help="the dev container id (the first column of `agentconn "
                              "containers`' dev container table)")


def _ago(then: datetime, now: datetime) -> str:
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} seconds ago"


def _ports(c: Container) -> str:
    shown = []
    for p in c.ports:
        if p.host_port:
            host = f"[{p.host_ip}]" if ":" in p.host_ip else p.host_ip
            shown.append(f"{host}:{p.host_port}->{p.port}/{p.network}")
        else:
            shown.append(f"{p.port}/{p.network}")
    return ", ".join(shown)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def format_table(listing: ListContainersResponse, now: datetime | None = None) -> str:
    """The list as ``docker ps -a`` would show it, then the dev containers, then warnings."""
    now = now or datetime.now(UTC)
    rows = [["CONTAINER ID", "IMAGE", "CREATED", "STATUS", "PORTS", "NAMES"]]
    for c in listing.containers:
        rows.append([c.id[:12], c.image, _ago(c.created_at, now), c.status, _ports(c), c.name])
    lines = _table(rows)
    if listing.devcontainers:
        dc_rows = [["DEVCONTAINER ID", "NAME", "STATUS", "WORKSPACE FOLDER", "CONTAINER",
                    "DIRTY"]]
        errors = []
        for d in listing.devcontainers:
            status = getattr(d.status, "value", d.status)     # an open enum: str when unknown
            dc_rows.append([str(d.id), d.name or "-", status, d.workspace_folder,
                            d.container.id[:12] if d.container else "-",
                            "yes" if d.dirty else ""])
            if d.error:
                errors.append(f"error: {d.name or d.workspace_folder}: {d.error}")
        lines += ["", *_table(dc_rows), *errors]
    lines += [f"warning: {w}" for w in listing.warnings]
    return "\n".join(lines)


def _print(listing: ListContainersResponse, output: str, out: TextIO) -> None:
    if output == "json":
        out.write(go_json(listing.to_json(), html_escape=False).decode())
    else:
        out.write(format_table(listing) + "\n")
    out.flush()


def _failed(command: str, err: AgentApiError) -> int:
    # The agent's answer in one line (exit status 1: the request was made and refused).
    print(f"agentconn {command}: {err}", file=sys.stderr)
    return 1


async def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``agentconn containers``."""
    try:
        return await _run(args, out)
    except AgentApiError as e:
        return _failed("containers", e)


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    async with await open_conn(args) as conn:
        if not args.watch:
            _print(await conn.list_containers(), args.output, out)
            return 0
        async with conn.watch_containers() as watch:
            first = True
            async for listing in watch:
                if not first and args.output == "table":
                    out.write("\n")
                first = False
                _print(listing, args.output, out)
        print(f"agentconn containers: the agent closed the watch ({watch.close_code})",
              file=sys.stderr)
        return 1


async def run_devcontainer(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``agentconn devcontainer recreate|delete``."""
    try:
        return await _run_devcontainer(args, out)
    except AgentApiError as e:
        return _failed("devcontainer", e)


async def _run_devcontainer(args: argparse.Namespace, out: TextIO) -> int:
    async with await open_conn(args) as conn:
        if args.devcontainer_command == "recreate":
            resp = await conn.recreate_devcontainer(args.id)
            out.write(f"{resp.message}: {resp.detail}\n" if resp.detail else f"{resp.message}\n")
        else:
            await conn.delete_devcontainer(args.id)
            out.write(f"deleted dev container {args.id}\n")
    return 0
