"""The container methods through the blocking facade (``agentconn.sync``) against
``agentconn agent --devcontainers`` in another process and a real Docker engine."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from cli_run import agent_process  # noqa: E402
from docker_env import IMAGE, DockerDaemon, docker_daemon  # noqa: E402, F401 - the fixture

from agentconn.client.containers import DevcontainerNotFoundError  # noqa: E402
from agentconn.proto.containers import DevcontainerStatus  # noqa: E402

AGENT_ID = uuid.UUID("5c0a7a14-0000-4000-8000-0000000005c0")


def test_sync_list_and_watch(docker_daemon: DockerDaemon, tmp_path: Path  # noqa: F811
                             ) -> None:
    from agentconn import sync

    ids = docker_daemon.docker("ps", "-aq").stdout.split()
    if ids:
        docker_daemon.docker("rm", "-f", *ids)
    with agent_process(tmp_path, AGENT_ID, ["--devcontainers"],
                       env={"DOCKER_HOST": docker_daemon.host}) as (config, work):
        folder = work / "sync"
        cid = docker_daemon.docker("run", "-d", "--network", "none", "--label",
                                   f"devcontainer.local_folder={folder}", IMAGE, "sleep",
                                   "1000").stdout.strip()
        with sync.connect(str(config), AGENT_ID) as conn:
            with conn.watch_containers() as watch:
                for listing in watch:  # the first list, then changes: until ours shows up
                    if listing.devcontainers and listing.devcontainers[0].container:
                        break
                dc = listing.devcontainers[0]
                assert dc.container is not None and dc.container.id == cid
                assert dc.status is DevcontainerStatus.RUNNING
                docker_daemon.docker("stop", "-t", "1", cid)
                for listing in watch:
                    if listing.devcontainers[0].status is DevcontainerStatus.STOPPED:
                        break
            listing = conn.list_containers()
            assert [c.id for c in listing.containers] == [cid]
            with pytest.raises(DevcontainerNotFoundError):
                conn.delete_devcontainer(uuid.uuid4())
