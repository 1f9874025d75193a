"""Target arguments of every command that talks to an agent (``cli/target.py``): a Coder
workspace name, or ``--config FILE --agent-id UUID``. The real entry point runs in a subprocess
with a clean environment; exit status, stdout and stderr are checked exactly where they are
ours to choose. (Dialing a workspace on the test control plane is tested end to end
elsewhere.)"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import pytest
from cli_run import Cli, Result

from agentconn.cli.__main__ import build_parser
from agentconn.cli.commands import format_rtt
from agentconn.cli.ssh import _command, split_workspace_command
from agentconn.cli.target import (
    EXIT_CONNECT,
    EXIT_USAGE,
    NO_TARGET,
    Target,
    TargetError,
    agent_id_type,
    target_of,
)

AGENT = "12345678-1234-1234-1234-123456789abc"
NOT_LOGGED_IN = "You are not logged in. Try logging in using 'coder login <url>'."
RECORDING = str(uuid.UUID(int=7))

# label: (words before the workspace, words after it); the label's first word is
# args.command, which names the command in "agentconn <command>: ..." lines.
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ssh": (("ssh",), ()),
    "pty": (("pty",), ()),
    "speedtest": (("speedtest",), ()),
    "port-forward": (("port-forward", "-p", "18080"), ()),
    "vnc": (("vnc",), ()),
    "desktop screenshot": (("desktop", "screenshot", "-o", "shot.png"), ()),
    "desktop action": (("desktop", "action"), ("cursor_position",)),
    "desktop record start": (("desktop", "record", "start"), ()),
    "desktop record stop": (("desktop", "record", "stop"), (RECORDING, "-o", "out.mp4")),
    "ping": (("ping",), ()),
    "git-watch": (("git-watch",), ("--chat-id", str(uuid.UUID(int=9)))),
}


def argv(label: str, workspace: str | None = None, *options: str) -> list[str]:
    """The command line of ``label`` with ``options``, then ``workspace`` in its place.
    Options go first: after ``ssh WORKSPACE`` every word is the remote command, and argparse
    before 3.12 cannot fill a positional after options that follow an optional positional
    (``desktop action ws -c C ACTION`` is read as the action ``ws``)."""
    before, after = COMMANDS[label]
    return [*before, *options, *([workspace] if workspace is not None else []), *after]


def one_line(result: Result, code: int, line: str) -> None:
    """Exit ``code``, nothing on stdout, exactly ``line`` on stderr."""
    assert (result.code, result.out, result.err) == (code, "", line + "\n"), result


def ends_with_line(result: Result, code: int, line: str) -> None:
    """Exit ``code``, nothing on stdout; stderr's last line is ``line`` and before it at most
    the "Connecting to ..." notice a slow dial prints."""
    assert (result.code, result.out) == (code, ""), result
    assert "Traceback" not in result.err, result.err
    *before, last = result.err_lines
    assert last == line, result.err
    assert all(x.startswith("Connecting to ") for x in before), result.err


# -- --agent-id is a UUID, checked by argparse ---------------------------------------------------

@pytest.mark.parametrize("label", [*COMMANDS, "agent", "pair"])
def test_non_uuid_agent_id_is_one_argparse_error(cli: Cli, label: str) -> None:
    if label in ("agent", "pair"):
        words = [label, "--config", "a.conf"] if label == "agent" else [label]
        prog = label
    else:
        words = argv(label, None, "--config", "c.conf")
        prog = label
    result = cli(*words, "--agent-id", "not-a-uuid")
    assert (result.code, result.out) == (2, ""), result
    assert "Traceback" not in result.err
    errors = [line for line in result.err_lines if "error:" in line]
    expected = (f"agentconn {prog}: error: argument --agent-id: 'not-a-uuid' is not a UUID "
                f"(like {AGENT})")
    assert errors == [expected], result.err


def test_non_uuid_agent_id_standalone_module(cli: Cli) -> None:
    result = cli("--stdio", "--config", "c.conf", "--agent-id", "1234", module="agentconn.cli.ssh")
    assert (result.code, result.out) == (2, "")
    assert result.err_lines[-1] == ("agentconn ssh: error: argument --agent-id: '1234' is not "
                                    f"a UUID (like {AGENT})"), result.err


def test_agent_id_type_accepts_any_uuid_spelling() -> None:
    assert agent_id_type(AGENT.upper()) == uuid.UUID(AGENT)
    assert agent_id_type("{" + AGENT + "}") == uuid.UUID(AGENT)
    with pytest.raises(argparse.ArgumentTypeError, match="'x' is not a UUID"):
        agent_id_type("x")


# -- one target, named once -------------------------------------------------------------------

@pytest.mark.parametrize("label", COMMANDS)
def test_no_target(cli: Cli, label: str) -> None:
    one_line(cli(*argv(label)), EXIT_USAGE, f"agentconn {label.split()[0]}: {NO_TARGET}")


def test_no_target_message() -> None:
    assert NO_TARGET == ("give a workspace name (with CODER_URL and CODER_SESSION_TOKEN set, or "
                         "after 'coder login') or --config FILE --agent-id UUID")


@pytest.mark.parametrize("label", [c for c in COMMANDS if c != "ssh"])
def test_workspace_and_config(cli: Cli, label: str) -> None:
    # not ssh: with --config its first positional starts the command (tested below)
    result = cli(*argv(label, "myws", "--config", "c.conf", "--agent-id", AGENT))
    one_line(result, EXIT_USAGE,
             f"agentconn {label.split()[0]}: give either a workspace name or --config FILE "
             f"--agent-id UUID, not both (workspace 'myws' and --config 'c.conf')")


@pytest.mark.parametrize("label", COMMANDS)
def test_workspace_and_agent_id(cli: Cli, label: str) -> None:
    one_line(cli(*argv(label, "myws", "--agent-id", AGENT)), EXIT_USAGE,
             f"agentconn {label.split()[0]}: give either a workspace name or --config FILE "
             f"--agent-id UUID, not both (workspace 'myws' and --agent-id {AGENT})")


@pytest.mark.parametrize("label", COMMANDS)
def test_config_without_agent_id(cli: Cli, label: str, tmp_path: Path) -> None:
    if label == "ping":  # ping --config FILE ADDRESS pings an address; without one:
        one_line(cli("ping", "--config", "c.conf"), EXIT_USAGE,
                 "agentconn ping: give an address or --agent-id")
        return
    one_line(cli(*argv(label, None, "--config", "c.conf")), EXIT_USAGE,
             f"agentconn {label.split()[0]}: --config 'c.conf' needs --agent-id UUID (the agent "
             f"to reach through it)")


@pytest.mark.parametrize("label", COMMANDS)
def test_agent_id_without_config(cli: Cli, label: str) -> None:
    one_line(cli(*argv(label, None, "--agent-id", AGENT)), EXIT_USAGE,
             f"agentconn {label.split()[0]}: --agent-id needs --config FILE (to reach agent "
             f"{AGENT} through Coder, give its UUID in place of a workspace name)")


def test_ping_config_with_a_name_instead_of_an_address(cli: Cli) -> None:
    one_line(cli("ping", "--config", "c.conf", "myws"), EXIT_USAGE,
             "agentconn ping: 'myws' is not an IP address (with --config, give an address "
             "inside the tunnel, or --agent-id UUID to ping the agent)")


def test_target_of() -> None:
    def parse(*words: str) -> Target:
        return target_of(build_parser().parse_args(["speedtest", *words]))

    assert parse("alice/ws.main") == Target(workspace="alice/ws.main")
    assert parse(AGENT) == Target(workspace=AGENT)  # an agent UUID, dialed through Coder
    assert parse("-c", "c.conf", "--agent-id", AGENT) == Target(config="c.conf",
                                                                agent_id=uuid.UUID(AGENT))
    for bad in ((), ("ws", "-c", "c"), ("-c", "c"), ("--agent-id", AGENT), ("",)):
        with pytest.raises(TargetError) as e:
            parse(*bad)
        assert e.value.exit_status == EXIT_USAGE


# -- opening the connection fails: one line, exit 1 ----------------------------------------------

@pytest.mark.parametrize("label", COMMANDS)
def test_workspace_without_credentials(cli: Cli, label: str) -> None:
    one_line(cli(*argv(label, "myws")), EXIT_CONNECT,
             f"agentconn {label.split()[0]}: {NOT_LOGGED_IN}")


def test_workspace_without_credentials_ssh_stdio(cli: Cli) -> None:
    # the ProxyCommand form, through the standalone module as OpenSSH would run it
    one_line(cli("--stdio", "myws", module="agentconn.cli.ssh"), EXIT_CONNECT,
             f"agentconn ssh: {NOT_LOGGED_IN}")
    # a URL without a token (or the reverse) is not a login either
    one_line(cli("ping", "myws", env={"CODER_URL": "http://127.0.0.1:1"}), EXIT_CONNECT,
             f"agentconn ping: {NOT_LOGGED_IN}")


@pytest.mark.parametrize("label", COMMANDS)
def test_workspace_on_unreachable_deployment(cli: Cli, label: str, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    result = cli(*argv(label, "myws"), env={"CODER_URL": url, "CODER_SESSION_TOKEN": "t0ken"})
    ends_with_line(result, EXIT_CONNECT,
                   f"agentconn {label.split()[0]}: cannot reach {url}: [Errno 111] Connection "
                   f"refused")


def test_coder_login_files_are_used(cli: Cli, home: Path, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    config = home / ".config" / "coderv2"
    config.mkdir(parents=True)
    (config / "url").write_text(url + "\n")
    (config / "session").write_text("t0ken\n")
    result = cli("--stdio", "alice/myws.main", module="agentconn.cli.ssh")
    ends_with_line(result, EXIT_CONNECT,
                   f"agentconn ssh: cannot reach {url}: [Errno 111] Connection refused")


def test_config_file_missing(cli: Cli, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.conf")
    for words in (["ssh", "--config", missing, "--agent-id", AGENT, "--", "true"],
                  ["ping", "-c", missing, "--agent-id", AGENT],
                  ["desktop", "screenshot", "-c", missing, "--agent-id", AGENT, "-o", "x.png"]):
        one_line(cli(*words), EXIT_CONNECT, f"agentconn {words[0]}: no such file: {missing!r}")


# -- ssh: workspace or command -----------------------------------------------------------------

@pytest.mark.parametrize(("words", "workspace", "command"), [
    # coder's form: the workspace, then the command
    (["ws"], "ws", None),
    (["ws", "uname", "-a"], "ws", "uname -a"),
    (["ws", "--", "uname", "-a"], "ws", "uname -a"),
    (["-t", "alice/ws.main", "top"], "alice/ws.main", "top"),
    (["--stdio", "ws"], "ws", None),
    (["--", "ws", "ls"], "ws", "ls"),
    # with --config every positional word belongs to the command
    (["--config", "C", "--agent-id", AGENT], None, None),
    (["--config", "C", "--agent-id", AGENT, "--"], None, None),
    (["--config", "C", "--agent-id", AGENT, "--", "uname", "-a"], None, "uname -a"),
    (["--config", "C", "--agent-id", AGENT, "--", "ls"], None, "ls"),
    (["--config", "C", "--agent-id", AGENT, "uname", "-a"], None, "uname -a"),
    (["-c", "C", "--agent-id", AGENT, "-T", "--", "sh", "-c", "exit 3"], None, "sh -c exit 3"),
    (["--stdio", "--config", "C", "--agent-id", AGENT], None, None),
])
def test_ssh_workspace_or_command(words: list[str], workspace: str | None,
                                  command: str | None) -> None:
    args = build_parser().parse_args(["ssh", *words])
    got_workspace, got_words = split_workspace_command(args)
    assert (got_workspace, _command(got_words)) == (workspace, command)
    args.workspace = got_workspace
    expected = (Target(workspace=workspace) if workspace is not None
                else Target(config="C", agent_id=uuid.UUID(AGENT)))
    assert target_of(args) == expected


def test_ssh_stdio_takes_no_command(cli: Cli) -> None:
    one_line(cli("ssh", "--stdio", "ws", "ls"), 2, "agentconn ssh: --stdio takes no command")
    one_line(cli("ssh", "--stdio", "-c", "C", "--agent-id", AGENT, "--", "ls"), 2,
             "agentconn ssh: --stdio takes no command")


def test_ssh_config_without_agent_id_even_with_a_command(cli: Cli) -> None:
    # "ws" would be a command here, so the missing --agent-id is what is reported
    one_line(cli("ssh", "--config", "c.conf", "uname"), EXIT_USAGE,
             "agentconn ssh: --config 'c.conf' needs --agent-id UUID (the agent to reach "
             "through it)")


# -- output ------------------------------------------------------------------------------------

def test_format_rtt_like_coder_ping() -> None:
    # Go: dur.Round(time.Millisecond).String(); more in test_ping_coder.py
    assert format_rtt(0.0421) == "42ms"
    assert format_rtt(1.5) == "1.5s"
    assert format_rtt(0.000412) == "0s"


async def test_relay_region_names_the_derp_region(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ping WORKSPACE` says which DERP region relays it (as `coder ping`): the region of the
    relay path in the peer's endpoint, read from the shared deployment of ``coder.dial``."""
    import ipaddress

    from agentconn.aio.tunnel import Tunnel
    from agentconn.cli.commands import _path
    from agentconn.cli.target import relay_region
    from agentconn.client.conn import AgentConn
    from agentconn.coder import deployment as dial
    from agentconn.coder.api import CoderApi, Credentials
    from agentconn.coder.derp import DerpMap
    from agentconn.coder.keys import NodePrivate, random_client_address
    from agentconn.coder.tailnet import CoordinateTarget, TailnetNode
    from agentconn.wg.config import InterfaceConfig

    key = NodePrivate.generate()
    tunnel = Tunnel(InterfaceConfig(private_key=key.raw, addresses=[
        ipaddress.IPv6Interface(f"{random_client_address()}/128")]))
    node_json = {"Name": "a", "RegionID": 999, "HostName": "127.0.0.1", "DERPPort": 1}
    derp_map = DerpMap.from_json({"Regions": {
        "999": {"RegionID": 999, "RegionCode": "cb", "RegionName": "Council Bluffs, Iowa",
                "Nodes": [node_json]},
        "7": {"RegionID": 7, "RegionCode": "seven", "Nodes": []},
        "8": {"RegionID": 8, "Nodes": []}}})
    node = TailnetNode(tunnel, key, derp_map, CoordinateTarget("127.0.0.1", 1, "/", {}, None))
    conn = AgentConn(tunnel, uuid.UUID(AGENT))
    paths = {region: node._path(region, NodePrivate.generate().public) for region in (999, 7, 8)}

    assert relay_region(conn, f"relay:{paths[999]}") is None  # not a coder.dial connection
    api = CoderApi(Credentials("http://127.0.0.1:1", "t0ken"))
    monkeypatch.setitem(dial._deployments, ("http://127.0.0.1:1", "t0ken", 0),
                        dial.Deployment(api, tunnel, node))
    assert relay_region(conn, f"relay:{paths[999]}") == "Council Bluffs, Iowa"
    assert relay_region(conn, f"relay:{paths[7]}") == "seven"  # no name: the code
    assert relay_region(conn, f"relay:{paths[8]}") == "8"      # neither: the ID
    assert relay_region(conn, "relay:4242") is None            # a path nobody made
    assert relay_region(conn, "127.0.0.1:51820") is None
    assert _path(conn, f"relay:{paths[999]}") == "proxied via DERP(Council Bluffs, Iowa)"
    assert _path(conn, "relay:4242") == "proxied via DERP"
    assert _path(conn, "127.0.0.1:51820") == "p2p via 127.0.0.1:51820"
    await api.close()
