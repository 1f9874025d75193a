"""Containers and dev containers (agent-api.md §9) against a real Docker engine.

An :class:`Agent` with ``devcontainers=True`` and an :class:`AgentConn` in this process over a
real userspace WireGuard tunnel (``agent_pair``); the engine is Debian's ``dockerd`` started
by :mod:`docker_env` for the session. Containers always run with ``--network none`` (the
test devcontainer.json files say so in ``runArgs``). Each test starts from an engine without
containers. Waits are generous and never timed: a watcher or a listing is polled until the
expected state shows up.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from agent_pair import Pair, agent_pair
from docker_env import IMAGE, DockerDaemon, docker_daemon  # noqa: F401 - the fixture

from agentconn.agent.containers.api import ContainersApi
from agentconn.client.containers import (
    ContainersFailedError,
    ContainersForbiddenError,
    ContainersUnavailableError,
    DevcontainerBusyError,
    DevcontainerNotFoundError,
)
from agentconn.proto.containers import (
    Devcontainer,
    DevcontainerStatus,
    ListContainersResponse,
)

WAIT = 120.0  # seconds; generous: the engine shares two cores with other test runs
HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def go_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """go_containers/main.go built: decodes list responses strictly with the Go client's
    types (see the file)."""
    import shutil

    go = shutil.which("go")
    if go is None:
        msg = "go not found (Debian package golang-go)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    out = tmp_path_factory.mktemp("go_containers")
    env = dict(os.environ, GO111MODULE="off", GOFLAGS="", GOCACHE=str(out / "cache"))
    subprocess.run([go, "build", "-o", str(out / "decode"), "main.go"], cwd=HERE /
                   "go_containers", env=env, check=True, capture_output=True, timeout=600)
    return out / "decode"


def go_decodes(decoder: Path, *documents: bytes) -> list[str]:
    """What the Go decoder says of each JSON document (``ok <dcs> <containers>``)."""
    lines = b"".join(d.rstrip(b"\n") + b"\n" for d in documents)
    r = subprocess.run([str(decoder)], input=lines, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.decode().splitlines()


@pytest.fixture
def docker(docker_daemon: DockerDaemon, monkeypatch: pytest.MonkeyPatch  # noqa: F811
           ) -> Iterator[DockerDaemon]:
    """The engine, without containers, and DOCKER_HOST pointing at it for the agent."""
    ids = docker_daemon.docker("ps", "-aq").stdout.split()
    if ids:
        docker_daemon.docker("rm", "-f", *ids)
    monkeypatch.setenv("DOCKER_HOST", docker_daemon.host)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    yield docker_daemon


@pytest.fixture
async def pair(docker: DockerDaemon, tmp_path: Path) -> AsyncIterator[Pair]:
    async with agent_pair(tmp_path, agent_options={"devcontainers": True}) as p:
        yield p


def write_config(folder: Path, config: dict[str, object] | str, *,
                 name: str = ".devcontainer/devcontainer.json") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    return path


async def wait_for(get: Callable[[], object], check: Callable[[object], bool],
                   what: str) -> object:
    """Poll the awaitable factory ``get`` until ``check`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    last: object = None
    while loop.time() < deadline:
        last = await get()  # type: ignore[misc]
        if check(last):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}; last: {last}")


def devcontainer(listing: ListContainersResponse, folder: str | Path) -> Devcontainer | None:
    return next((d for d in listing.devcontainers if d.workspace_folder == str(folder)), None)


def containers_api(p: Pair) -> ContainersApi:
    return next(m for m in p.agent._modules if isinstance(m, ContainersApi))


# -- 403 and 500 without the engine ----------------------------------------------------------


async def test_disabled_answers_the_exact_403(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        with pytest.raises(ContainersForbiddenError) as e:
            await p.conn.list_containers()
        assert (e.value.status, e.value.message, e.value.detail) == (
            403, "Dev Container feature not enabled.",
            "To enable this feature, set CODER_AGENT_DEVCONTAINERS_ENABLE=true in your "
            "template.")
        # The one path answers every method; sub-paths are chi's 404.
        with pytest.raises(DevcontainerNotFoundError) as nf:
            await p.conn.recreate_devcontainer(uuid.uuid4())
        assert nf.value.message == "404 page not found"
        with pytest.raises(DevcontainerNotFoundError):
            async with p.conn.watch_containers():
                pass


async def test_engine_unreachable_is_500(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    async with agent_pair(tmp_path, agent_options={"devcontainers": True}) as p:
        with pytest.raises(ContainersFailedError) as e:
            await p.conn.list_containers()
        assert e.value.status == 500
        assert e.value.message == "Could not get containers"
        assert "run docker ps" in e.value.detail and "no-such.sock" in e.value.detail
        # Nothing to start a watch with: the agent ends it at once, as the Go agent does.
        async with p.conn.watch_containers() as watch:
            assert [listing async for listing in watch] == []
        assert (watch.close_code, watch.close_reason) == (1011, "Could not get containers")


async def test_docker_cli_missing_is_500(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # the agent's session PATH: no docker on it
    async with agent_pair(tmp_path, agent_options={"devcontainers": True}) as p:
        with pytest.raises(ContainersFailedError) as e:
            await p.conn.list_containers()
        assert (e.value.message, e.value.detail) == (
            "Could not get containers",
            'run docker ps: exec: "docker": executable file not found in $PATH')


# -- list ------------------------------------------------------------------------------------


async def test_list_running_and_stopped_containers(pair: Pair, docker: DockerDaemon,
                                                   tmp_path: Path, go_decoder: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    docker.docker("run", "-d", "--network", "none", "--name", "web", "--label", "app=web",
                  "-v", f"{data}:/data", IMAGE, "sleep", "1000")
    docker.docker("run", "--network", "none", "--name", "job", IMAGE, "sh", "-c", "exit 3",
                  check=False)
    # The agent serves its last listing; docker events bring both containers in.
    listing = await wait_for(pair.conn.list_containers, lambda lst: {
        c.name for c in lst.containers} == {"web", "job"}, "both containers")  # type: ignore[attr-defined]
    assert isinstance(listing, ListContainersResponse)
    by_name = {c.name: c for c in listing.containers}
    web, job = by_name["web"], by_name["job"]
    inspect = json.loads(docker.docker("inspect", "web", "job").stdout)
    assert web.id == inspect[0]["Id"] and job.id == inspect[1]["Id"]
    assert len(web.id) == 64
    assert (web.image, web.running, web.status) == (IMAGE, True, "running")
    assert (job.image, job.running, job.status) == (IMAGE, False, "exited with code 3")
    assert web.labels == {"app": "web"} and job.labels == {}
    assert web.volumes == {str(data): "/data"} and job.volumes == {}
    assert web.ports == [] and job.ports == []  # --network none: nothing published
    assert web.created_at.isoformat().startswith(inspect[0]["Created"][:19])
    assert listing.devcontainers == [] and listing.warnings == []
    # What goes over the wire decodes as the Go client's types expect: every key present.
    raw = json.loads(listing.to_json())
    assert set(raw["containers"][0]) == {"created_at", "id", "name", "image", "labels",
                                         "running", "ports", "status", "volumes"}
    assert go_decodes(go_decoder, await pair.conn._bytes("ListContainers")) == ["ok 0 2"]


async def test_labelled_and_discovered_devcontainers(pair: Pair, docker: DockerDaemon
                                                     ) -> None:
    labelled = pair.work / "b-labelled"
    labelled.mkdir()
    config = write_config(labelled, {"image": IMAGE})
    docker.docker("run", "-d", "--network", "none", "--label",
                  f"devcontainer.local_folder={labelled}", "--label",
                  f"devcontainer.config_file={config}", IMAGE, "sleep", "1000")
    discovered = pair.work / "a-project"
    write_config(discovered, {"image": IMAGE}, name=".devcontainer.json")
    # Found anywhere below the agent's directory, but not inside node_modules.
    write_config(pair.work / "node_modules" / "dep", {"image": IMAGE})
    await containers_api(pair).refresh()

    listing = await pair.conn.list_containers()
    assert [d.workspace_folder for d in listing.devcontainers] == [str(discovered),
                                                                   str(labelled)]
    a, b = listing.devcontainers
    assert (a.status, a.container, a.name, a.dirty) == (DevcontainerStatus.STOPPED, None, "",
                                                       False)
    assert a.config_path == str(discovered / ".devcontainer.json")
    assert b.status is DevcontainerStatus.RUNNING and b.container is not None
    assert b.container.id == listing.containers[0].id and b.name == "b-labelled"
    assert b.config_path == str(config)
    assert b.id != a.id
    # The ids stay while the dev containers are known.
    again = await pair.conn.list_containers()
    assert [d.id for d in again.devcontainers] == [a.id, b.id]

    # A change to the config file after the container was created makes it dirty.
    os.utime(config)
    await containers_api(pair).refresh()
    dirty = devcontainer(await pair.conn.list_containers(), labelled)
    assert dirty is not None and dirty.dirty


# -- watch -----------------------------------------------------------------------------------


async def test_watch_sends_the_list_then_each_change(pair: Pair, docker: DockerDaemon) -> None:
    folder = pair.work / "svc"
    config = write_config(folder, {"image": IMAGE})
    cid = docker.docker("run", "-d", "--network", "none", "--label",
                        f"devcontainer.local_folder={folder}", "--label",
                        f"devcontainer.config_file={config}", IMAGE, "sleep",
                        "1000").stdout.strip()
    await containers_api(pair).refresh()
    async with pair.conn.watch_containers() as watch:
        first = await asyncio.wait_for(anext(watch), WAIT)
        dc = devcontainer(first, folder)
        assert dc is not None and dc.status is DevcontainerStatus.RUNNING
        assert dc.container is not None and dc.container.id == cid
        # docker stop from outside: docker events → refresh → a new list, no request made.
        await asyncio.to_thread(docker.docker, "stop", "-t", "1", cid)
        while True:
            listing = await asyncio.wait_for(anext(watch), WAIT)
            dc = devcontainer(listing, folder)
            assert dc is not None
            if dc.status is DevcontainerStatus.STOPPED:
                break
        assert dc.container is not None and not dc.container.running
        assert dc.container.status == "exited with code 143" or \
            dc.container.status.startswith("exited")
    assert watch.close_code == 1000


async def test_docker_events_is_restarted_when_it_dies(pair: Pair, docker: DockerDaemon
                                                       ) -> None:
    api = containers_api(pair)
    await wait_for(lambda: asyncio.sleep(0, api.docker.events_pid),
                   lambda pid: pid is not None, "docker events to run")
    first = api.docker.events_pid
    assert first is not None
    os.kill(first, 9)
    await wait_for(lambda: asyncio.sleep(0, api.docker.events_pid),
                   lambda pid: pid is not None and pid != first, "docker events to restart")
    # ... and still drives the watch: a container started now shows up in a new list.
    folder = pair.work / "late"
    async with pair.conn.watch_containers() as watch:
        await anext(watch)
        docker.docker("run", "-d", "--network", "none", "--label",
                      f"devcontainer.local_folder={folder}", IMAGE, "sleep", "1000")
        async for listing in watch:
            dc = devcontainer(listing, folder)
            if dc is not None and dc.status is DevcontainerStatus.RUNNING:
                break


# -- recreate --------------------------------------------------------------------------------


async def test_recreate_goes_starting_to_running_in_a_new_container(
        pair: Pair, docker: DockerDaemon) -> None:
    folder = pair.work / "app"
    write_config(folder, """{
        // JSONC: comments and trailing commas, as VS Code writes it
        "name": "app",
        "image": "%s",
        "runArgs": ["--network", "none"],
        "containerEnv": {"GREETING": "hello ${localWorkspaceFolderBasename}"},
        "mounts": [{"type": "tmpfs", "target": "/scratch"}],
        "postCreateCommand": "echo $GREETING > ${containerWorkspaceFolder}/created.txt",
        "postStartCommand": ["touch", "/scratch/started"],
    }""" % IMAGE)
    await containers_api(pair).refresh()
    listing = await pair.conn.list_containers()
    dc = devcontainer(listing, folder)
    assert dc is not None and dc.status is DevcontainerStatus.STOPPED

    async with pair.conn.watch_containers() as watch:
        await anext(watch)
        resp = await pair.conn.recreate_devcontainer(dc.id)
        assert (resp.message, resp.detail) == (
            "Devcontainer recreation initiated",
            'Recreation process for devcontainer "" has started.')
        # "starting" was set before the 202: a second recreate and a delete are refused.
        with pytest.raises(DevcontainerBusyError) as busy:
            await pair.conn.recreate_devcontainer(dc.id)
        assert (busy.value.status, busy.value.message, busy.value.detail) == (
            409, "Unable to recreate transitioning devcontainer",
            'Devcontainer "" is currently starting and cannot be restarted.')
        with pytest.raises(DevcontainerBusyError) as busy:
            await pair.conn.delete_devcontainer(dc.id)
        assert (busy.value.message, busy.value.detail) == (
            "Unable to delete transitioning devcontainer",
            'Devcontainer "" is currently starting and cannot be deleted.')
        seen = []
        async for listing in watch:
            now = devcontainer(listing, folder)
            assert now is not None
            seen.append(now.status)
            if now.status is not DevcontainerStatus.STARTING:
                break
        assert seen[0] is DevcontainerStatus.STARTING and seen[-1] is DevcontainerStatus.RUNNING
    assert now.error == "" and now.container is not None and now.name == "app"
    first_id = now.container.id
    assert (folder / "created.txt").read_text() == "hello app\n"  # the bind-mounted folder
    assert now.container.labels["devcontainer.local_folder"] == str(folder)
    assert now.container.volumes[str(folder)] == "/workspaces/app"
    docker.docker("exec", first_id, "test", "-f", "/scratch/started")

    # Again: a new container, the old one removed.
    await pair.conn.recreate_devcontainer(dc.id)
    done = await wait_for(pair.conn.list_containers, lambda lst: (
        (d := devcontainer(lst, folder)) is not None  # type: ignore[arg-type]
        and d.status is DevcontainerStatus.RUNNING and d.container is not None
        and d.container.id != first_id), "the second recreate")
    assert isinstance(done, ListContainersResponse)
    ids = docker.docker("ps", "-aq", "--no-trunc").stdout.split()
    assert first_id not in ids and len(ids) == 1


async def test_recreate_builds_a_dockerfile(pair: Pair, docker: DockerDaemon) -> None:
    folder = pair.work / "built"
    (folder / "ctx").mkdir(parents=True)
    (folder / "ctx" / "payload.txt").write_text("from the context\n")
    write_config(folder, {"build": {"dockerfile": "Dockerfile", "context": "../ctx",
                                    "args": {"WHO": "docker build"}},
                          "workspaceFolder": "/src", "runArgs": ["--network", "none"],
                          "postCreateCommand": "cat /payload.txt > out.txt && echo $WHO"})
    (folder / ".devcontainer" / "Dockerfile").write_text(
        f"FROM {IMAGE}\nARG WHO\nCOPY payload.txt /payload.txt\nRUN echo $WHO > /who\n")
    await containers_api(pair).refresh()
    dc = devcontainer(await pair.conn.list_containers(), folder)
    assert dc is not None
    await pair.conn.recreate_devcontainer(dc.id)
    listing = await wait_for(pair.conn.list_containers, lambda lst: (
        (d := devcontainer(lst, folder)) is not None  # type: ignore[arg-type]
        and d.status is not DevcontainerStatus.STARTING), "the build")
    now = devcontainer(listing, folder)  # type: ignore[arg-type]
    assert now is not None and now.status is DevcontainerStatus.RUNNING, now
    assert now.container is not None and now.container.image.startswith(
        "agentconn-devcontainer-built-")
    assert now.container.volumes[str(folder)] == "/src"
    assert (folder / "out.txt").read_text() == "from the context\n"
    who = docker.docker("exec", now.container.id, "cat", "/who").stdout
    assert who == "docker build\n"


async def test_recreate_failures_show_as_error(pair: Pair, docker: DockerDaemon,
                                              go_decoder: Path) -> None:
    unsupported = pair.work / "features"
    write_config(unsupported, {"image": IMAGE, "features": {"ghcr.io/x/y:1": {}}})
    failing = pair.work / "lifecycle"
    write_config(failing, {"image": IMAGE, "runArgs": ["--network", "none"],
                           "postCreateCommand": "echo nope >&2; exit 7"})
    await containers_api(pair).refresh()
    listing = await pair.conn.list_containers()
    for folder in (unsupported, failing):
        d = devcontainer(listing, folder)
        assert d is not None
        await pair.conn.recreate_devcontainer(d.id)
    listing = await wait_for(pair.conn.list_containers, lambda lst: all(
        (d := devcontainer(lst, f)) is not None  # type: ignore[arg-type]
        and d.status is not DevcontainerStatus.STARTING for f in (unsupported, failing)),
        "both recreates to end")
    bad = devcontainer(listing, unsupported)  # type: ignore[arg-type]
    assert bad is not None and bad.status is DevcontainerStatus.ERROR
    assert 'unsupported devcontainer.json property "features"' in bad.error
    assert bad.container is None
    # A lifecycle failure keeps the container, running, with the error shown (as the CLI).
    half = devcontainer(listing, failing)  # type: ignore[arg-type]
    assert half is not None and half.status is DevcontainerStatus.RUNNING
    assert half.container is not None and half.container.running
    assert half.error == "postCreateCommand failed with exit code 7: nope"
    # The error outlives later listings while that container stands.
    await containers_api(pair).refresh()
    again = devcontainer(await pair.conn.list_containers(), failing)
    assert again is not None and again.error == half.error
    # What the agent sent (error, running, a container with labels and volumes) decodes with
    # the Go client's types, unknown keys refused: the list body and a watch message.
    raw = await pair.conn._bytes("ListContainers")
    async with pair.conn.watch_containers() as watch:
        assert watch._ws is not None
        message = await watch._ws.receive()
    assert isinstance(message, str)
    assert go_decodes(go_decoder, raw, message.encode()) == ["ok 2 1", "ok 2 1"]

    with pytest.raises(DevcontainerNotFoundError) as nf:
        await pair.conn.recreate_devcontainer("not-a-known-id")
    assert (nf.value.status, nf.value.message, nf.value.detail) == (
        404, "Devcontainer not found.", 'Could not find devcontainer with ID: "not-a-known-id"')


# -- delete ----------------------------------------------------------------------------------


async def test_delete_stops_removes_and_forgets(pair: Pair, docker: DockerDaemon) -> None:
    folder = pair.work / "gone"
    cid = docker.docker("run", "-d", "--network", "none", "--label",
                        f"devcontainer.local_folder={folder}", IMAGE, "sleep",
                        "1000").stdout.strip()
    await containers_api(pair).refresh()
    dc = devcontainer(await pair.conn.list_containers(), folder)
    assert dc is not None and dc.status is DevcontainerStatus.RUNNING
    async with pair.conn.watch_containers() as watch:
        await anext(watch)
        await pair.conn.delete_devcontainer(dc.id)
        statuses = []
        async for listing in watch:
            now = devcontainer(listing, folder)
            if now is None:
                break
            statuses.append(now.status)
        assert statuses[0] is DevcontainerStatus.STOPPING
    assert cid not in docker.docker("ps", "-aq", "--no-trunc").stdout.split()
    listing = await pair.conn.list_containers()
    assert devcontainer(listing, folder) is None
    assert all(c.id != cid for c in listing.containers)
    with pytest.raises(DevcontainerNotFoundError) as nf:
        await pair.conn.delete_devcontainer(dc.id)
    assert nf.value.detail == f'Could not find devcontainer with ID: "{dc.id}"'


async def test_delete_failure_is_500_and_error(pair: Pair, docker: DockerDaemon) -> None:
    folder = pair.work / "stuck"
    cid = docker.docker("run", "-d", "--network", "none", "--label",
                        f"devcontainer.local_folder={folder}", IMAGE, "sleep",
                        "1000").stdout.strip()
    # Make the engine unable to remove the container's files: an immutable file in its
    # root file system (vfs keeps it as a plain directory tree).
    mount_id = (docker.root / "data/image/vfs/layerdb/mounts" / cid / "mount-id").read_text()
    pinned = docker.root / "data/vfs/dir" / mount_id.strip() / "etc/passwd"
    subprocess.run(["chattr", "+i", str(pinned)], check=True)
    try:
        await containers_api(pair).refresh()
        dc = devcontainer(await pair.conn.list_containers(), folder)
        assert dc is not None
        with pytest.raises(ContainersFailedError) as e:
            await pair.conn.delete_devcontainer(dc.id)
        assert e.value.status == 500
        assert e.value.message == "An error occurred removing the container"
        assert e.value.detail.startswith(f"remove {cid}: exit status 1: ")
        now = devcontainer(await pair.conn.list_containers(), folder)
        assert now is not None and now.status is DevcontainerStatus.ERROR
        assert now.error == e.value.detail
    finally:
        subprocess.run(["chattr", "-i", str(pinned)], check=False)


# -- 503 -------------------------------------------------------------------------------------


async def test_closed_api_is_503(pair: Pair) -> None:
    await containers_api(pair).close()
    with pytest.raises(ContainersUnavailableError) as e:
        await pair.conn.list_containers()
    assert (e.value.status, e.value.message, e.value.detail) == (
        503, "API closed", "The API is closed and cannot process requests.")
