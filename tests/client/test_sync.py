"""agentconn.sync: the blocking facade against a real agent in another process (the
`agentconn agent` CLI on a pair of configs), from plain threads and from inside a running loop
(as in Jupyter); nothing is left running after shutdown."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import agentconn
from agentconn import AgentApiError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from cli_run import agent_process  # noqa: E402

AGENT_ID = uuid.UUID("12345678-1234-1234-1234-123456789abc")
SRC = str(Path(agentconn.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(client.conf, the agent's work directory): `agentconn agent` in a subprocess."""
    with agent_process(tmp_path_factory.mktemp("sync"), AGENT_ID) as paths:
        yield paths


def test_blocking_calls_from_several_threads(agent: tuple[Path, Path]) -> None:
    from agentconn import sync

    config, work = agent
    with sync.connect(str(config), AGENT_ID) as conn:
        conn.write_file(str(work / "a.txt"), b"hello\nworld\n")
        assert [e.name for e in conn.ls(str(work)).contents] == ["a.txt"]
        with conn.read_file(str(work / "a.txt")) as f:
            assert f.size == 12 and b"".join(f) == b"hello\nworld\n"
        with pytest.raises(AgentApiError) as err:
            conn.read_file_bytes(str(work / "missing"))
        assert err.value.status == 404
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                proc = conn.start_process(f"echo thread-{i}")
                out = conn.process_output(proc.id, wait=True)
                assert out.output.strip() == f"thread-{i}"
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors


def test_works_inside_a_running_loop(agent: tuple[Path, Path]) -> None:
    """Jupyter runs cells inside a loop: the facade's own thread does the work."""
    from agentconn import sync

    config, work = agent

    async def cell() -> list[str]:
        with sync.connect(str(config), AGENT_ID) as conn:
            return [e.name for e in conn.ls(str(work)).contents]

    assert "a.txt" in asyncio.run(cell())


def test_shutdown_leaves_no_thread() -> None:
    code = ("import threading, agentconn.sync as s;"
            "s.run(__import__('asyncio').sleep(0));"
            "assert any(t.name == 'agentconn-sync' for t in threading.enumerate());"
            "s._portal.shutdown();"
            "assert not any(t.name == 'agentconn-sync' and t.is_alive() "
            "for t in threading.enumerate()); print('clean')")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stderr
