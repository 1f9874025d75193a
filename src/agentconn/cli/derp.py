"""``agentconn derp``: run a DERP relay (``/derp`` over Upgrade and websocket, plus
``/derp/probe`` and ``/derp/latency-check``), like a minimal ``derper`` over plain HTTP.

``agentconn derp [--addr 127.0.0.1:3340] [--key-file F] [--region-id 1] [--print-map]``.
The server key is read from ``--key-file`` (``privkey:<hex>``, or derper's JSON config with
``PrivateKey``); a missing file is created with a new key (mode 0600); without the flag a
fresh key is used. Ctrl-C (or SIGTERM) stops it cleanly.
``python -m agentconn.cli.derp ...`` runs it alone too (see ``_runner``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence

from agentconn.cli._runner import standalone_main
from agentconn.coder.derp import DerpServer
from agentconn.coder.keys import NodePrivate
from agentconn.errors import AgentConnError, ConfigError

__all__ = ["add_parser", "load_or_create_key", "main", "parse_addr", "run"]


def parse_addr(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces); raises ArgumentTypeError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid address {text!r} (want host:port)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def load_or_create_key(path: str) -> NodePrivate:
    """The key in ``path`` (``privkey:…`` text or JSON ``{"PrivateKey": "privkey:…"}``);
    creates the file with a new key when it does not exist. Raises :class:`ConfigError`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        key = NodePrivate.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(str(key) + "\n")
        return key
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc}") from None
    if text.startswith("{"):
        try:
            text = str(json.loads(text)["PrivateKey"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a derper config with PrivateKey: {exc}") from None
    try:
        return NodePrivate.parse(text)
    except AgentConnError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``derp`` on the ``agentconn`` subcommands."""
    p = sub.add_parser("derp", help="run a DERP relay server (plain HTTP)",
                       description="Run a DERP relay: /derp over 'Upgrade: DERP' and over "
                                   "websockets (subprotocol derp), /derp/probe, "
                                   "/derp/latency-check.")
    p.add_argument("--addr", type=parse_addr, default=("127.0.0.1", 3340),
                   help="listen address host:port (default 127.0.0.1:3340)")
    p.add_argument("--key-file", help="server key file (created if missing)")
    p.add_argument("--region-id", type=int, default=1,
                   help="region ID in the printed DERP map (default 1)")
    p.add_argument("--print-map", action="store_true",
                   help="print a DERP map JSON pointing at this server")


async def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns 0."""
    key = load_or_create_key(args.key_file) if args.key_file else NodePrivate.generate()
    server = DerpServer(key)
    host, port = args.addr
    try:
        bound_host, bound_port = await server.start(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    print(f"DERP server listening on http://{bound_host}:{bound_port}/derp "
          f"(key {key.public})", flush=True)
    if args.print_map:
        print(json.dumps(server.derp_map(region_id=args.region_id).to_json()), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()
    print("DERP server stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentconn.cli.derp ...`` (the same flags as the subcommand)."""
    return standalone_main("derp", add_parser, run, argv, (AgentConnError,), 1)


if __name__ == "__main__":
    sys.exit(main())
