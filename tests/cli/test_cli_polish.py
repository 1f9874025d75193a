"""Issue 16, the CLI as a new user meets it: port-forward (coder's lines, ranges and lists, a
refused port, a clean and prompt exit on SIGINT/SIGTERM with a connection open), speedtest
(coder's JSON, the progress line on stderr, ``--time`` honoured), ``pair`` refusing to overwrite
keys, ``agent --directory`` checked, ``--version``, ``demo --json`` and ``ping``'s handshake
mark. Every test runs the real entry point in a subprocess; the agent is ``agentconn agent``
on a ``agentconn pair`` configuration, in a subprocess too."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_run import PYTHONPATH, Cli

import agentconn._version

RECEIVED = "Received signal, closing all listeners and active connections"


def _env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "PYTHONPATH": PYTHONPATH, "LANG": "C.UTF-8"}


def _popen(home: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agentconn.cli", *argv], env=_env(home),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class Watched:
    """A running CLI whose stdout and stderr lines are read as they come (one thread each)."""

    def __init__(self, home: Path, *argv: str) -> None:
        self.proc = _popen(home, *argv)
        self.lines: dict[str, queue.Queue[str | None]] = {}
        self.seen: dict[str, list[str]] = {}
        self.threads = []
        for name in ("stdout", "stderr"):
            self.lines[name] = queue.Queue()
            self.seen[name] = []
            t = threading.Thread(target=self._read, args=(name,), daemon=True)
            t.start()
            self.threads.append(t)

    def _read(self, name: str) -> None:
        for line in getattr(self.proc, name):
            self.seen[name].append(line.rstrip("\n"))
            self.lines[name].put(line.rstrip("\n"))
        self.lines[name].put(None)

    def until(self, stream: str, last: str, timeout: float = 60) -> list[str]:
        """Lines of ``stream`` not read before, up to and including the one that starts with
        ``last``."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines[stream].get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no {last!r} on {stream} of {self.proc.args}: {got}")
            got.append(line)
            if line.startswith(last):
                return got

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        """Wait for the exit: (status, all stdout, all stderr)."""
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        for t in self.threads:
            t.join(10)
        return (code, "".join(x + "\n" for x in self.seen["stdout"]),
                "".join(x + "\n" for x in self.seen["stderr"]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class RunningAgent:
    client_conf: Path
    agent_id: str

    def target(self) -> list[str]:
        return ["--config", str(self.client_conf), "--agent-id", self.agent_id]


@pytest.fixture
def agent(home: Path, tmp_path: Path, cli: Cli) -> Iterator[RunningAgent]:
    """``agentconn pair`` and ``agentconn agent`` on its agent.conf, running."""
    agent_id = str(uuid.uuid4())
    out = tmp_path / "pair"
    result = cli("pair", "--agent-id", agent_id, "--out", str(out), "--port",
                 str(_free_port(socket.SOCK_DGRAM)))
    assert result.code == 0, result
    work = tmp_path / "work"
    work.mkdir()
    running = Watched(home, "agent", "--config", str(out / "agent.conf"), "--agent-id",
                      agent_id, "--directory", str(work))
    try:
        running.until("stdout", f"agentconn agent {agent_id}: API on ")
        yield RunningAgent(out / "client.conf", agent_id)
    finally:
        running.proc.send_signal(signal.SIGINT)
        try:
            running.finish()
        except subprocess.TimeoutExpired:
            pass


class _Server:
    """A loopback TCP server that greets every client with ``hi`` and keeps it open."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.clients: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.sendall(b"hi")
            self.clients.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.clients:
            c.close()


def _forwarding(local: int, remote: int) -> list[str]:
    """coder's lines for one spec without a bind address: [::1] (when there), then IPv4."""
    binds = (["[::1]"] if _has_ipv6_loopback() else []) + ["127.0.0.1"]
    return [f"Forwarding 'tcp://{b}:{local}' locally to 'tcp://127.0.0.1:{remote}' in the "
            f"workspace" for b in binds]


# -- 1. port-forward -------------------------------------------------------------------------

def test_port_forward_sigint_with_open_connection_exits_promptly_and_quietly(
        home: Path, agent: RunningAgent, closed_port: int) -> None:
    server = _Server()
    local, refused_local = _free_port(), _free_port()
    # coder's list syntax: two specs in one -p
    fwd = Watched(home, "port-forward", *agent.target(), "-p",
                  f"{local}:{server.port},{refused_local}:{closed_port}")
    try:
        head = fwd.until("stderr", "Ready!")
        assert head == [*_forwarding(local, server.port),
                        *_forwarding(refused_local, closed_port), "Ready!"]
        with socket.create_connection(("127.0.0.1", local), timeout=10) as open_conn:
            assert open_conn.recv(2) == b"hi"
            with socket.create_connection(("127.0.0.1", refused_local), timeout=10) as refused:
                try:
                    assert refused.recv(10) == b""
                except ConnectionResetError:
                    pass
            failed = fwd.until("stderr", "Failed to dial ")
            assert failed == [(f"Failed to dial 'tcp://127.0.0.1:{closed_port}' in workspace: "
                               f"connection reset by the agent (is anything listening on port "
                               f"{closed_port}?)")]
            started = time.monotonic()
            fwd.proc.send_signal(signal.SIGINT)
            code, out, err = fwd.finish()
            elapsed = time.monotonic() - started
            # the forwarded connection was closed, not left hanging
            open_conn.settimeout(5)
            try:
                assert open_conn.recv(10) == b""
            except ConnectionResetError:
                pass
    finally:
        fwd.kill()
        server.close()
    assert code == 0, err
    assert err.splitlines()[-1] == RECEIVED and "Traceback" not in err, err
    assert err.count("\n") == len(head) + 2, err    # coder's lines, the failed dial, the signal
    assert elapsed < 2.0, elapsed
    address = _agent_address(out)
    assert out.splitlines() == [
        f"Forwarding tcp 127.0.0.1:{local} -> [{address}]:{server.port}",
        f"Forwarding tcp 127.0.0.1:{refused_local} -> [{address}]:{closed_port}"]


def _agent_address(out: str) -> str:
    return out.split("[", 1)[1].split("]", 1)[0]


def _consecutive_free_ports(n: int) -> int:
    for _ in range(50):
        first = _free_port()
        if first + n > 65535:
            continue
        socks = []
        try:
            for p in range(first, first + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
                if _has_ipv6_loopback():
                    s6 = socket.socket(socket.AF_INET6)
                    socks.append(s6)
                    s6.bind(("::1", p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return first
    raise AssertionError("no consecutive free ports")


def test_port_forward_range_and_sigterm(home: Path, agent: RunningAgent) -> None:
    first = _consecutive_free_ports(3)
    fwd = Watched(home, "port-forward", *agent.target(), "-p",
                  f"{first}-{first + 1}:3000-3001", "--tcp", f"127.0.0.1:{first + 2}:80")
    try:
        head = fwd.until("stderr", "Ready!")
        fwd.proc.send_signal(signal.SIGTERM)
        code, out, err = fwd.finish()
    finally:
        fwd.kill()
    assert head == [*_forwarding(first, 3000), *_forwarding(first + 1, 3001),
                    (f"Forwarding 'tcp://127.0.0.1:{first + 2}' locally to "
                     f"'tcp://127.0.0.1:80' in the workspace"), "Ready!"]
    assert (code, err) == (0, "\n".join([*head, RECEIVED]) + "\n")
    assert [line.split(" -> ")[0] for line in out.splitlines()] == [
        f"Forwarding tcp 127.0.0.1:{first}", f"Forwarding tcp 127.0.0.1:{first + 1}",
        f"Forwarding tcp 127.0.0.1:{first + 2}"]


@pytest.mark.parametrize(("spec", "problem"), [
    ("x", ("invalid port specification 'x' (expected PORT, LOCAL:REMOTE, START-END or "
           "BIND:LOCAL:REMOTE)")),
    ("70000", "invalid port specification '70000': 70000 out of range 1-65535"),
    ("9090-9091:3000", ("invalid port specification '9090-9091:3000': port ranges must be "
                        "the same length, got 2 ports forwarded to 1 ports")),
    ("9091-9090", ("invalid port specification '9091-9090': range end 9090 is less than "
                   "start 9091")),
    ("8080,y", ("invalid port specification 'y' (expected PORT, LOCAL:REMOTE, START-END or "
                "BIND:LOCAL:REMOTE)")),
])
def test_port_forward_bad_spec_is_one_usage_error(cli: Cli, spec: str, problem: str) -> None:
    result = cli("port-forward", "--config", "client.conf", "--agent-id", str(uuid.uuid4()),
                 "-p", spec)
    assert (result.code, result.out) == (2, ""), result
    assert result.err_lines[-1] == (f"agentconn port-forward: error: argument -p/--tcp: "
                                    f"{problem}"), result.err
    assert "parse_spec" not in result.err


def test_port_forward_same_local_port_twice(cli: Cli) -> None:
    result = cli("port-forward", "--config", "client.conf", "--agent-id", str(uuid.uuid4()),
                 "-p", "8080:80,8080:81")
    assert (result.code, result.out, result.err) == (
        2, "", "agentconn port-forward: local tcp://127.0.0.1:8080 is specified twice\n")


# -- 2. speedtest ----------------------------------------------------------------------------

def test_speedtest_json_is_coders_and_time_is_honoured(cli: Cli, agent: RunningAgent) -> None:
    result = cli("speedtest", *agent.target(), "--time", "2s", "--output", "json")
    assert result.code == 0, result
    assert result.err_lines[0] == "Starting a 2s download test...", result.err
    assert "Traceback" not in result.err
    report = json.loads(result.out)                      # stdout is only the JSON document
    keys = {"start_time_seconds", "end_time_seconds", "throughput_mbits"}
    assert set(report) == {"overall", "intervals"}
    assert set(report["overall"]) == keys and report["overall"]["start_time_seconds"] == 0
    # about 2 s (the interval clock starts a moment after the timer), not 5
    assert 1.8 <= report["overall"]["end_time_seconds"] < 4.0, report
    assert report["overall"]["throughput_mbits"] > 0
    assert len(report["intervals"]) >= 2
    assert all(set(i) == keys for i in report["intervals"])
    assert report["intervals"][0]["start_time_seconds"] == 0


def test_speedtest_table_has_the_starting_line_on_stderr(cli: Cli, agent: RunningAgent) -> None:
    result = cli("speedtest", *agent.target(), "--time", "1s", "--direction", "up")
    assert result.code == 0, result
    assert result.err_lines[0] == "Starting a 1s upload test...", result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["INTERVAL", "THROUGHPUT"], lines
    assert set(lines[-2]) == {"-"} and lines[-1].startswith("0.00-"), lines


# -- 3. pair and agent refuse what would hurt ------------------------------------------------

def test_pair_refuses_to_overwrite_keys_without_force(cli: Cli, tmp_path: Path) -> None:
    agent_id = str(uuid.uuid4())
    out = tmp_path / "keys"
    assert cli("pair", "--agent-id", agent_id, "--out", str(out)).code == 0
    before = (out / "agent.conf").read_text(), (out / "client.conf").read_text()
    again = cli("pair", "--agent-id", agent_id, "--out", str(out))
    assert (again.code, again.out, again.err) == (
        1, "", (f"agentconn pair: {out / 'agent.conf'} exists (it holds keys); --force "
                f"overwrites it\n"))
    assert ((out / "agent.conf").read_text(), (out / "client.conf").read_text()) == before
    (out / "agent.conf").unlink()       # either file is enough to refuse
    again = cli("pair", "--agent-id", agent_id, "--out", str(out))
    assert (again.code, again.err) == (
        1, (f"agentconn pair: {out / 'client.conf'} exists (it holds keys); --force "
            f"overwrites it\n"))
    forced = cli("pair", "--agent-id", agent_id, "--out", str(out), "--force")
    assert forced.code == 0 and forced.err == "", forced
    assert (out / "client.conf").read_text() != before[1]


def test_agent_refuses_a_missing_directory(cli: Cli, tmp_path: Path) -> None:
    agent_id = str(uuid.uuid4())
    assert cli("pair", "--agent-id", agent_id, "--out", str(tmp_path)).code == 0
    missing = tmp_path / "no-such-dir"
    result = cli("agent", "--config", str(tmp_path / "agent.conf"), "--agent-id", agent_id,
                 "--directory", str(missing))
    assert (result.code, result.out, result.err) == (
        1, "", f"agentconn agent: --directory {missing}: no such directory\n")


# -- 4. --version, demo --json ---------------------------------------------------------------

def test_version(cli: Cli) -> None:
    result = cli("--version")
    assert (result.code, result.out, result.err) == (
        0, f"agentconn {agentconn._version.__version__}\n", "")


def test_demo_json_prints_only_json_on_stdout(cli: Cli) -> None:
    result = cli("demo", "--json", "--count", "1", "--megabytes", "1")
    assert result.code == 0, result
    state = json.loads(result.out)
    assert set(state) == {"A", "B"}
    assert result.err_lines[0].startswith("peer A "), result.err
    assert any(line.startswith("A -> B TCP bulk: ") for line in result.err_lines), result.err


# -- 5. ping's handshake mark ----------------------------------------------------------------

_NO_HANDSHAKE = '''
import sys
import agentconn.cli.__main__ as cli
from agentconn.errors import PingTimeoutError


class NeverHandshaked:
    """An AgentConn whose agent never answered: no WireGuard handshake yet."""
    agent_address = "fd7a:115c:a1e0::1"

    async def ping(self, timeout):
        raise PingTimeoutError("no reply")

    def get_peer_diagnostics(self):
        return {"peer": {"public_key": "KEY=", "endpoint": "192.0.2.1:51820",
                         "last_handshake_unix": 0, "rx_bytes": 0, "tx_bytes": 148}}

    async def close(self):
        pass


async def open_conn(args):
    conn = NeverHandshaked()
    conn.agent_id = args.agent_id
    return conn


cli.open_conn = open_conn
sys.exit(cli.main())
'''


def test_ping_marks_a_missing_handshake_as_a_warning(cli: Cli, tmp_path: Path) -> None:
    """The real ``main`` with the connection replaced by one that never saw a handshake (a
    real tunnel does not connect without one)."""
    (tmp_path / "never_handshaked.py").write_text(_NO_HANDSHAKE)
    agent_id = str(uuid.uuid4())
    result = cli("ping", "--config", "client.conf", "--agent-id", agent_id, "-n", "1",
                 "-W", "0.1", module="never_handshaked",
                 env={"PYTHONPATH": os.pathsep.join([str(tmp_path), PYTHONPATH])})
    assert (result.code, result.err) == (0, ""), result  # coder exits 0 (--require-pong: 1)
    assert result.out.splitlines() == [
        f"ping to agent {agent_id} timed out ",
        "✔ agent address [fd7a:115c:a1e0::1] is routed to peer KEY=",
        ("⚠ last WireGuard handshake never; endpoint 192.0.2.1:51820; direct UDP (no DERP "
         "relay)"),
        "  rx 0 B, tx 148 B; 0/1 pongs"]


def test_ping_ticks_a_handshake(cli: Cli, agent: RunningAgent) -> None:
    result = cli("ping", *agent.target(), "-n", "1")
    assert result.code == 0, result
    marks = [line for line in result.out.splitlines() if "last WireGuard handshake" in line]
    assert len(marks) == 1 and marks[0].startswith("✔ last WireGuard handshake "), result.out
    assert "never" not in marks[0]


# -- 6. the README's commands and snippets run as written ------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_block(after: str, lang: str) -> str:
    text = README.read_text()
    start = text.index(f"```{lang}\n", text.index(after)) + len(f"```{lang}\n")
    return text[start:text.index("```", start)]


def test_readme_tunnel_snippet_runs_with_the_pair_files(home: Path, tmp_path: Path,
                                                        cli: Cli) -> None:
    """"Using the tunnel directly" against ``agentconn agent`` on the files ``agentconn pair``
    wrote for the README's AGENT_ID, at the address it printed."""
    agent_id = "12345678-1234-1234-1234-123456789abc"
    assert f"AGENT_ID={agent_id}" in README.read_text()
    paired = cli("pair", "--agent-id", agent_id, "--out", str(tmp_path / "keys"), "--port",
                 str(_free_port(socket.SOCK_DGRAM)))
    assert paired.code == 0, paired
    snippet = _readme_block("## Using the tunnel directly", "python")
    address = paired.out.splitlines()[-1].split("[", 1)[1].split("]", 1)[0]
    assert f'AGENT = "{address}"' in snippet
    (tmp_path / "snippet.py").write_text(snippet)
    running = Watched(home, "agent", "--config", str(tmp_path / "keys" / "agent.conf"),
                      "--agent-id", agent_id)
    try:
        running.until("stdout", f"agentconn agent {agent_id}: API on ")
        proc = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=_env(home),
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert '"Hello from the agent!"' in proc.stdout
        ping = _readme_block("## Using the tunnel directly", "sh").splitlines()[0].split()
        assert ping[:3] == ["agentconn", "ping", "--config"]
        pinged = subprocess.run(
            [sys.executable, "-m", "agentconn.cli", *ping[1:]], cwd=tmp_path, env=_env(home),
            capture_output=True, text=True, timeout=60, check=False)
        assert pinged.returncode == 0, pinged
        assert pinged.stdout.startswith(f"icmp reply from {address}: seq=0 ")
    finally:
        running.proc.send_signal(signal.SIGINT)
        running.finish()


def test_readme_commands_run_non_interactively() -> None:
    text = README.read_text()
    assert "uuidgen" not in text and "10.0.0.1" not in text
    for line in text.splitlines():
        if line.lstrip().startswith("ssh "):   # the ProxyCommand examples
            assert "StrictHostKeyChecking=accept-new" in line, line


# -- 7. scripts/demo.sh: progress while installing, no rebuild when nothing changed ----------

_FAKE_PYTHON = """#!/bin/sh
echo "python $*" >> "$(dirname "$0")/../calls"
case "$*" in
  *"pip install"*" ."*) echo "Building wheel for agentconn (pyproject.toml) ... done" ;;
esac
"""
_FAKE_AGENTCONN = """#!/bin/sh
echo "agentconn $*"
"""


def test_demo_sh_shows_the_build_and_skips_it_when_nothing_changed(tmp_path: Path) -> None:
    """The real script with a stand-in venv (its python records the pip calls, its agentconn
    prints its arguments), so no network and no compiler run."""
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists() or \
            shutil.which("gcc") is None:
        pytest.skip("demo.sh would install gcc / python3-dev first")
    repo = README.parent
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, text in (("python", _FAKE_PYTHON), ("agentconn", _FAKE_AGENTCONN)):
        (venv / "bin" / name).write_text(text)
        (venv / "bin" / name).chmod(0o755)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "AGENTCONN_VENV": str(venv), "PYTHON": sys.executable, "LANG": "C.UTF-8"}

    def demo() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(repo / "scripts" / "demo.sh"), "--json"], env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    first = demo()
    assert (first.returncode, first.stdout) == (0, "agentconn demo --json\n"), first
    assert first.stderr.startswith(f"demo.sh: building and installing agentconn into {venv} "),\
        first.stderr
    assert "Building wheel for agentconn" in first.stderr      # pip's own progress, on stderr
    calls = (venv / "calls").read_text().splitlines()
    assert calls == ["python -m pip install --upgrade pip",
                     "python -m pip install --progress-bar on ."]

    again = demo()
    assert (again.returncode, again.stdout) == (0, "agentconn demo --json\n"), again
    assert again.stderr == (f"demo.sh: agentconn in {venv} is up to date with the sources "
                            f"(no rebuild)\n")
    assert (venv / "calls").read_text().splitlines() == calls     # pip did not run again
