"""The ``agentconn`` command line: argparse wiring and output formatting only (STYLE §1)."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import AgentConnError
from . import commands
from . import containers as containers_cli
from . import cp as cp_cli
from . import derp as derp_cli
from . import desktop as desktop_cli
from . import gitwatch as gitwatch_cli
from . import portforward as portforward_cli
from . import pty as pty_cli
from . import speedtest as speedtest_cli
from . import ssh as ssh_cli
from . import vnc as vnc_cli
from ._runner import run_async
from .speedtest import parse_duration
from .target import EXIT_USAGE, add_target_arguments, agent_id_type, open_conn


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentconn",
        description="Userspace WireGuard tunnels to Coder-style workspace agents.")
    parser.add_argument("--version", action="version", version=f"agentconn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="two userspace WireGuard peers in one process, pinging")
    demo.add_argument("--count", type=int, default=5, help="pings each way (default 5)")
    demo.add_argument("--json", action="store_true",
                      help="print the final state as JSON on stdout (progress on stderr)")
    demo.add_argument("--megabytes", type=int, default=64,
                      help="size of the TCP bulk transfer (default 64)")

    ping = sub.add_parser(
        "ping", help="ping a workspace agent (as `coder ping`), or an address through a tunnel",
        description="agentconn ping WORKSPACE: TSMP pings to the workspace's agent, as `coder "
                    "ping`. agentconn ping --config FILE --agent-id UUID: the same to an agent "
                    "reached through a wg-quick file. agentconn ping --config FILE ADDRESS: "
                    "ICMP (or --tsmp) pings to an address inside that tunnel.")
    add_target_arguments(ping, positional=False)
    ping.add_argument("--num", "-n", "--count", dest="count", type=int, default=None,
                      help="number of pings (default 10 to an agent, as `coder ping`, where 0 "
                           "pings until interrupted; 4 to an address)")
    ping.add_argument("--wait", "--interval", "-i", dest="interval", type=parse_duration,
                      default=1.0, metavar="DURATION",
                      help="how long to wait between pings, e.g. 1s (default 1s)")
    ping.add_argument("--timeout", "-t", "-W", type=parse_duration, default=5.0,
                      metavar="DURATION",
                      help="how long to wait for each ping to complete, e.g. 5s (default 5s)")
    ping.add_argument("--tsmp", action="store_true",
                      help="send TSMP pings (IP protocol 99, as Coder clients do) instead of ICMP")
    ping.add_argument("--stats", action="store_true", help="print tunnel counters at the end")
    ping.add_argument("--precise", action="store_true",
                      help="to an agent: print each round-trip time unrounded (412.345µs) "
                           "instead of coder's whole milliseconds (0s under half a millisecond)")
    ping.add_argument("--require-pong", action="store_true",
                      help="to an agent: exit 1 when no ping got a pong (`coder ping` exits 0 "
                           "once its pings are done, answered or not)")
    ping.add_argument("address", nargs="?", metavar="WORKSPACE|ADDRESS",
                      help="[owner/]workspace[.agent] or an agent UUID on the Coder deployment "
                           "of CODER_URL and CODER_SESSION_TOKEN (or of 'coder login'); with "
                           "--config and no --agent-id, an IPv4 or IPv6 address inside the "
                           "tunnel")

    agent = sub.add_parser("agent", help="run a workspace agent serving the agent API on port 4")
    agent.add_argument("--config", "-c", required=True,
                       help="wg-quick configuration: the agent's key and its client peers")
    agent.add_argument("--agent-id", required=True, type=agent_id_type, metavar="UUID",
                       help="the agent UUID (its tunnel addresses derive from it)")
    agent.add_argument("--directory", help="the workspace working directory")
    agent.add_argument("--log-dir", help="where coder-agent.log and the SSH host key go "
                       "(default ~/.agentconn/AGENT_ID)")
    agent.add_argument("--manifest", help="JSON file served at /debug/manifest")
    agent.add_argument("--mcp-config", action="append",
                       help="MCP config file (repeatable; default <directory>/.mcp.json)")
    agent.add_argument("--desktop", action="store_true",
                       help="serve the desktop routes (an Xvnc desktop started on first use)")
    agent.add_argument("--devcontainers", action="store_true",
                       default=_env_true("CODER_AGENT_DEVCONTAINERS_ENABLE"),
                       help="serve the container routes (Docker through the docker CLI and "
                            "DOCKER_HOST; dev containers under --directory); default from "
                            "CODER_AGENT_DEVCONTAINERS_ENABLE")
    agent.add_argument("--desktop-geometry", type=desktop_cli.arg_type(desktop_cli.parse_size),
                       default=(1920, 1080), metavar="WxH",
                       help="the desktop's size in pixels (default 1920x1080, depth 24)")

    pair = sub.add_parser("pair", help="write agent.conf and client.conf that reach each other")
    pair.add_argument("--agent-id", required=True, type=agent_id_type, metavar="UUID",
                      help="the agent UUID")
    pair.add_argument("--out", default=".", help="directory to write into (default .)")
    pair.add_argument("--port", type=int, default=51820, help="agent UDP port (default 51820)")
    pair.add_argument("--host", default="127.0.0.1",
                      help="agent host as the client reaches it (default 127.0.0.1)")
    pair.add_argument("--force", action="store_true",
                      help="overwrite existing agent.conf and client.conf (new keys)")

    cp_cli.add_parser(sub)
    speedtest_cli.add_parser(sub)
    ssh_cli.add_parser(sub)
    pty_cli.add_parser(sub)
    portforward_cli.add_parser(sub)
    vnc_cli.add_parser(sub)
    desktop_cli.add_parser(sub)
    derp_cli.add_parser(sub)
    containers_cli.add_parser(sub)
    gitwatch_cli.add_parser(sub)

    sub.add_parser("genkey", help="print a new base64 private key (like `wg genkey`)")
    sub.add_parser("pubkey", help="read a private key on stdin, print its public key")
    return parser


async def _ping_agent(args: argparse.Namespace) -> int:
    """``agentconn ping WORKSPACE`` or ``--config FILE --agent-id UUID``: pongs as `coder ping`."""
    conn = await open_conn(args)
    try:
        return await commands.ping_agent(
            conn, name=args.workspace or f"agent {conn.agent_id}", quote=bool(args.workspace),
            count=args.count, interval=args.interval, timeout=args.timeout,
            precise=args.precise, require_pong=args.require_pong)
    finally:
        await conn.close()


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return run_async(commands.demo(count=args.count, as_json=args.json,
                                           megabytes=args.megabytes))
        if args.command == "ping" and (args.config is None or args.agent_id is not None):
            args.workspace = args.address
            if args.count is None:
                args.count = 10  # coder ping --num
            return run_async(_ping_agent(args))
        if args.command == "ping" and not args.address:
            print("agentconn ping: give an address or --agent-id", file=sys.stderr)
            return 2
        if args.command == "ping" and not _is_ip_address(args.address):
            print(f"agentconn ping: {args.address!r} is not an IP address (with --config, "
                  f"give an address inside the tunnel, or --agent-id UUID to ping the agent)",
                  file=sys.stderr)
            return 2
        if args.command == "ping" and args.count is None:
            args.count = 4
        if args.command == "ping":
            return run_async(commands.ping(
                config=args.config, address=args.address, count=args.count,
                interval=args.interval, timeout=args.timeout,
                kind="tsmp" if args.tsmp else "icmp", show_stats=args.stats))
        if args.command == "agent":
            return run_async(commands.agent(
                config=args.config, agent_id=args.agent_id, directory=args.directory,
                log_dir=args.log_dir, manifest=args.manifest, mcp_config=args.mcp_config,
                desktop=args.desktop, desktop_geometry=args.desktop_geometry,
                devcontainers=args.devcontainers))
        if args.command == "pair":
            return commands.pair(agent_id=str(args.agent_id), out_dir=args.out, port=args.port,
                                 host=args.host, force=args.force)
        if args.command == "cp":
            return run_async(cp_cli.run(args))
        if args.command == "speedtest":
            return run_async(speedtest_cli.run(args))
        if args.command == "port-forward":
            return run_async(portforward_cli.run(args))
        if args.command == "vnc":
            return run_async(vnc_cli.run(args))
        if args.command == "desktop":
            return run_async(desktop_cli.run(args))
        if args.command == "pty":
            return run_async(pty_cli.run(args))
        if args.command == "ssh":
            return run_async(ssh_cli.run(args))
        if args.command == "derp":
            return run_async(derp_cli.run(args))
        if args.command == "containers":
            return run_async(containers_cli.run(args))
        if args.command == "devcontainer":
            return run_async(containers_cli.run_devcontainer(args))
        if args.command == "git-watch":
            return run_async(gitwatch_cli.run(args))
        if args.command == "genkey":
            print(commands.genkey())
            return 0
        if args.command == "pubkey":
            print(commands.pubkey(sys.stdin.read()))
            return 0
    except AgentConnError as exc:
        # one line, no traceback; a TargetError (the target could not be named or reached)
        # carries its own status: 2 for bad arguments, 1 for a failed connection
        print(f"agentconn {args.command}: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_status", EXIT_USAGE))
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
