"""``agentconn containers`` and ``agentconn devcontainer`` against ``agentconn agent
--devcontainers`` (both real subprocesses) and a real Docker engine (tests/agent/docker_env)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import PYTHONPATH, Cli, agent_process

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from docker_env import IMAGE, DockerDaemon, docker_daemon  # noqa: E402, F401 - the fixture

from agentconn.proto.containers import DevcontainerStatus, ListContainersResponse  # noqa: E402

AGENT_ID = uuid.UUID("c0a7a14e-0000-4000-8000-00000000c11d")
WAIT = 120.0


@pytest.fixture
def agent(docker_daemon: DockerDaemon, tmp_path: Path  # noqa: F811
          ) -> Iterator[tuple[Path, Path, DockerDaemon]]:
    """(client.conf, the agent's directory, the engine): an agent with --devcontainers."""
    ids = docker_daemon.docker("ps", "-aq").stdout.split()
    if ids:
        docker_daemon.docker("rm", "-f", *ids)
    with agent_process(tmp_path, AGENT_ID, ["--devcontainers"],
                       env={"DOCKER_HOST": docker_daemon.host}) as (conf, work):
        yield conf, work, docker_daemon


def _target(conf: Path) -> list[str]:
    return ["-c", str(conf), "--agent-id", str(AGENT_ID)]


def _listing(cli: Cli, conf: Path) -> ListContainersResponse:
    r = cli("containers", *_target(conf), "--output", "json")
    assert r.code == 0, r.err
    return ListContainersResponse.from_json(r.out)


def _wait(cli: Cli, conf: Path, check: object, what: str) -> ListContainersResponse:
    deadline = time.monotonic() + WAIT
    while True:
        listing = _listing(cli, conf)
        if check(listing):  # type: ignore[operator]
            return listing
        assert time.monotonic() < deadline, f"gave up waiting for {what}: {listing}"
        time.sleep(0.3)


def test_table_json_recreate_delete(cli: Cli, agent: tuple[Path, Path, DockerDaemon]) -> None:
    conf, work, docker = agent
    docker.docker("run", "-d", "--network", "none", "--name", "plain", IMAGE, "sleep", "1000")
    project = work / "proj"
    (project / ".devcontainer").mkdir(parents=True)
    (project / ".devcontainer" / "devcontainer.json").write_text(
        '{"image": "%s", "runArgs": ["--network", "none"]}' % IMAGE)
    listing = _wait(cli, conf, lambda lst: [c.name for c in lst.containers] == ["plain"]
                    and len(lst.devcontainers) == 1, "the container and the dev container")
    dc = listing.devcontainers[0]
    assert dc.workspace_folder == str(project) and dc.status is DevcontainerStatus.STOPPED

    table = cli("containers", *_target(conf))
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[0].split() == ["CONTAINER", "ID", "IMAGE", "CREATED", "STATUS", "PORTS",
                                "NAMES"]
    assert lines[1].startswith(listing.containers[0].id[:12])
    assert IMAGE in lines[1] and "running" in lines[1] and lines[1].endswith("plain")
    assert lines[3].split()[:3] == ["DEVCONTAINER", "ID", "NAME"]
    assert lines[4].split() == [str(dc.id), "-", "stopped", str(project), "-"]

    r = cli("devcontainer", "recreate", *_target(conf), str(dc.id))
    assert (r.code, r.out) == (0, 'Devcontainer recreation initiated: Recreation process for '
                                  'devcontainer "" has started.\n'), r.err
    listing = _wait(cli, conf, lambda lst: lst.devcontainers[0].status
                    is DevcontainerStatus.RUNNING, "the dev container to run")
    running = listing.devcontainers[0]
    assert running.container is not None and running.name == "proj"
    table = cli("containers", *_target(conf))
    assert f"{running.id}   proj   running   {project}   {running.container.id[:12]}" \
        in table.out

    r = cli("devcontainer", "delete", *_target(conf), str(dc.id))
    assert (r.code, r.out) == (0, f"deleted dev container {dc.id}\n"), r.err
    assert running.container.id not in docker.docker("ps", "-aq", "--no-trunc").stdout

    # Errors: one line, the agent's message, no traceback.
    r = cli("devcontainer", "delete", *_target(conf), str(dc.id))
    assert r.code == 1
    assert r.err_lines == [
        f"agentconn devcontainer: DELETE /api/v0/containers/devcontainers/{dc.id}: unexpected "
        f"status code 404: Devcontainer not found.: Could not find devcontainer with ID: "
        f'"{dc.id}"']


def test_watch_prints_each_change(cli: Cli, agent: tuple[Path, Path, DockerDaemon],
                                  home: Path) -> None:
    conf, work, docker = agent
    folder = work / "w"
    cid = docker.docker("run", "-d", "--network", "none", "--label",
                        f"devcontainer.local_folder={folder}", IMAGE, "sleep",
                        "1000").stdout.strip()
    _wait(cli, conf, lambda lst: len(lst.devcontainers) == 1, "the dev container")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentconn.cli", "containers", *_target(conf), "--watch",
         "--output", "json"], env={"PATH": "/usr/bin:/bin", "HOME": str(home),
                                   "PYTHONPATH": PYTHONPATH, "LANG": "C.UTF-8"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = ListContainersResponse.from_json(proc.stdout.readline())
        assert first.devcontainers[0].status is DevcontainerStatus.RUNNING
        docker.docker("stop", "-t", "1", cid)
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else b""
            now = ListContainersResponse.from_json(line)
            if now.devcontainers[0].status is DevcontainerStatus.STOPPED:
                break
    finally:
        proc.terminate()
        proc.wait(10)


def test_agent_flag_defaults_from_the_coder_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentconn.cli.__main__ import build_parser

    argv = ["agent", "--config", "a.conf", "--agent-id", str(AGENT_ID)]
    assert build_parser().parse_args(argv).devcontainers is False
    monkeypatch.setenv("CODER_AGENT_DEVCONTAINERS_ENABLE", "true")
    assert build_parser().parse_args(argv).devcontainers is True
    assert build_parser().parse_args([*argv, "--devcontainers"]).devcontainers is True


def test_disabled_agent_error_line(cli: Cli, docker_daemon: DockerDaemon,  # noqa: F811
                                   tmp_path: Path) -> None:
    with agent_process(tmp_path, AGENT_ID) as (conf, _):
        r = cli("containers", *_target(conf))
        assert r.code == 1
        assert r.err_lines == [
            "agentconn containers: GET /api/v0/containers: unexpected status code 403: Dev "
            "Container feature not enabled.: To enable this feature, set "
            "CODER_AGENT_DEVCONTAINERS_ENABLE=true in your template."]
        r = cli("containers", *_target(conf), "--watch")
        assert r.code == 1 and "404" in r.err and "Traceback" not in r.err
