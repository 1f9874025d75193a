"""Opt-in: a real Coder deployment. Set CODER_URL, CODER_SESSION_TOKEN and
CODER_TEST_WORKSPACE (``[owner/]workspace[.agent]`` of a running workspace); the test lists the
home directory, runs a process and a speedtest through coderd's coordinator and DERP relays.
Skipped (with that reason) when the variables are unset — there is no deployment in CI."""
from __future__ import annotations

import os

import pytest

import agentconn.coder

NEEDED = ("CODER_URL", "CODER_SESSION_TOKEN", "CODER_TEST_WORKSPACE")
pytestmark = [
    pytest.mark.skipif(not all(os.environ.get(v) for v in NEEDED),
                       reason="set CODER_URL, CODER_SESSION_TOKEN and CODER_TEST_WORKSPACE to "
                              "run against a real deployment"),
    pytest.mark.timeout(180),
]


async def test_real_deployment_ls_process_speedtest() -> None:
    try:
        async with await agentconn.coder.dial(os.environ["CODER_TEST_WORKSPACE"],
                                              timeout=60) as conn:
            home = await conn.ls(components=[], relativity="home")
            assert home.absolute_path_string
            proc = await conn.start_process("echo agentconn-real && uname -s")
            out = await conn.process_output(proc.id, wait=True)
            assert out.exit_code == 0 and "agentconn-real" in out.output
            result = await conn.speedtest("down", 5.0)
            assert result.bytes > 0
    finally:
        await agentconn.coder.close_all()
