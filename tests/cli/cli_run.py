"""Run the real ``agentconn`` entry point in a subprocess with a clean environment."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import _wgcore
import agentconn

# Where this checkout's agentconn and compiled _wgcore live, for the child's PYTHONPATH.
PYTHONPATH = os.pathsep.join(dict.fromkeys([
    str(Path(agentconn.__file__).resolve().parent.parent),
    str(Path(_wgcore.__file__).resolve().parent.parent)]))


@dataclass(frozen=True)
class Result:
    """How a CLI run ended."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


#: ``cli(*argv, env=..., module=...)``: see :func:`run_cli`
Cli = Callable[..., Result]


def run_cli(home: Path, *argv: str, env: Mapping[str, str] | None = None,
            module: str = "agentconn.cli", timeout: float = 60) -> Result:
    """``python -m module *argv`` with only PATH, HOME, LANG and PYTHONPATH set, plus
    ``env``; stdin is empty."""
    child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                 "PYTHONPATH": PYTHONPATH, "LANG": "C.UTF-8", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *argv], env=child_env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def free_udp_port() -> int:
    """A loopback UDP port nobody holds right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def agent_process(root: Path, agent_id: uuid.UUID, extra_args: Sequence[str] = (),
                  env: Mapping[str, str] | None = None) -> Iterator[tuple[Path, Path]]:
    """`agentconn agent` in a subprocess on a fresh pair of configs under `root`; yields
    (client.conf, the agent's work directory) once the agent serves, terminates it after.
    ``extra_args`` go on the agent's command line, ``env`` over the environment."""
    from agentconn.cli.commands import pair_configs

    port = free_udp_port()
    agent_conf, client_conf, _ = pair_configs(agent_id, listen_port=port,
                                              endpoint=f"127.0.0.1:{port}")
    (root / "agent.conf").write_text(agent_conf)
    (root / "client.conf").write_text(client_conf)
    work = root / "work"
    work.mkdir()
    child_env = {**os.environ, **(env or {}), "PYTHONPATH": PYTHONPATH}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentconn.cli", "agent", "--config", str(root / "agent.conf"),
         "--agent-id", str(agent_id), "--directory", str(work), "--log-dir",
         str(root / "log"), *extra_args], env=child_env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    assert b"API on" in line, (line, proc.stderr.read() if proc.poll() is not None else b"")
    try:
        yield root / "client.conf", work
    finally:
        proc.terminate()
        proc.wait(10)
