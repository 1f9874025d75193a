"""`agentconn demo` (the README main job) runs end to end: pings, TCP and the agent API."""
from __future__ import annotations

import os
import subprocess
import sys

import _wgcore


def test_demo_pings_and_moves_tcp_data_intact() -> None:
    env = dict(os.environ)
    # the child must import the same _wgcore/agentconn as this process (installed wheel in CI)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(_wgcore.__file__)), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-m", "agentconn.cli", "demo", "--count", "2",
                          "--megabytes", "8"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum("rtt µs" in line for line in lines) == 3
    assert any("hello over userspace TCP" in line for line in lines)
    bulk = [line for line in lines if "TCP bulk" in line]
    assert len(bulk) == 1 and "sha256 ok" in bulk[0] and "8 MB" in bulk[0], out.stdout
    assert "drops 0" in out.stdout
    # the agent API part: Agent + AgentConn in the same process over their own tunnel
    assert "API ls " in out.stdout and "'hello.py'" in out.stdout
    assert "+print('hi from the agent')" in out.stdout
    assert "API read_file: b\"print('hi from the agent')\\n\"" in out.stdout
    assert "exit 0, output 'hi from the agent\\n'" in out.stdout
    assert "over 1 TCP connection(s)" in out.stdout
