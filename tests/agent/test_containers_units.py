"""The container code that needs no engine: JSONC, ``docker inspect`` conversion, the dev
container table's transitions, names, config loading, discovery bounds, CLI outcomes."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agentconn.agent.containers import jsonc
from agentconn.agent.containers.devcontainer import (
    UpError,
    discover,
    load_config,
    parse_cli_outcome,
)
from agentconn.agent.containers.docker import convert_inspect, inspect_status, run_command
from agentconn.agent.containers.state import (
    DevcontainerBusy,
    DevcontainerNotFound,
    DevcontainerTable,
    agent_name,
)
from agentconn.proto.containers import Container, DevcontainerStatus, ListContainersResponse

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

# -- JSONC -----------------------------------------------------------------------------------


def test_jsonc_comments_trailing_commas_and_strings() -> None:
    text = """\ufeff{
      // a comment with "quotes" and a , comma
      "url": "http://example.com/*not a comment*/", /* block
      comment */ "list": [1, 2, 3,],
      "obj": {"a": "b\\"//", },
    }"""
    assert jsonc.loads(text) == {"url": "http://example.com/*not a comment*/",
                                 "list": [1, 2, 3], "obj": {"a": 'b"//'}}


@pytest.mark.parametrize(("text", "line"), [
    ('{\n  "a": 1\n  "b": 2\n}', 3),
    ('{\n "a": /* never closed\n}', 2),
    ('{\n\n "a": "open', 3),
])
def test_jsonc_errors_name_the_line(text: str, line: int) -> None:
    with pytest.raises(jsonc.JsoncError) as e:
        jsonc.loads(text)
    assert e.value.line == line, e.value


def test_jsonc_strip_keeps_line_numbers() -> None:
    text = '{"a": 1, /* x\ny */ "b": 2, // z\n}'
    assert jsonc.strip(text).count("\n") == text.count("\n")


# -- docker inspect --------------------------------------------------------------------------


def _inspect(**over: object) -> dict[str, object]:
    item: dict[str, object] = {
        "Id": "a" * 64, "Created": "2026-01-02T03:04:05.123456789Z", "Name": "/web",
        "Config": {"Image": "img:1", "Labels": {"k": "v"}},
        "State": {"Running": True, "ExitCode": 0, "Error": ""},
        "Mounts": [{"Source": "/b", "Destination": "/y"}, {"Source": "/a", "Destination": "/x"}],
        "NetworkSettings": {"Ports": {
            "8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"},
                         {"HostIp": "::", "HostPort": "32768"}],
            "53/udp": [{"HostIp": "10.0.0.1", "HostPort": "5353"}],
            "9000/tcp": None}},
    }
    item.update(over)
    return item


def test_convert_inspect_like_the_go_agent() -> None:
    other = _inspect(Id="b" * 64, Name="/db", State={"Running": False, "ExitCode": 2,
                                                      "Error": "oom"},
                     NetworkSettings={"Ports": {"5432/tcp": [{"HostIp": "127.0.0.1",
                                                              "HostPort": "32768"}]}},
                     Mounts=None, Config={"Image": "pg", "Labels": None})
    containers, warnings = convert_inspect(json.dumps([_inspect(), other]).encode())
    web, db = containers
    assert (web.id, web.name, web.image, web.labels, web.running, web.status) == (
        "a" * 64, "web", "img:1", {"k": "v"}, True, "running")
    assert web.created_at == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    # 0.0.0.0 and :: for the same port: shown once; sorted by "port/proto" key text.
    assert [(p.port, p.network, p.host_ip, p.host_port) for p in web.ports] == [
        (53, "udp", "10.0.0.1", 5353), (8080, "tcp", "0.0.0.0", 32768)]
    assert web.volumes == {"/a": "/x", "/b": "/y"}
    assert (db.status, db.running, db.labels, db.volumes) == ("exited with code 2: oom",
                                                              False, {}, {})
    assert warnings == [f"host port 32768 is mapped to multiple containers on different "
                        f"interfaces: {'a' * 64}, {'b' * 64}"]


def test_convert_inspect_bad_input() -> None:
    assert convert_inspect(b"") == ([], [])
    with pytest.raises(ValueError, match="decode docker inspect output"):
        convert_inspect(b"{not json")
    with pytest.raises(ValueError, match="not a JSON array"):
        convert_inspect(b"{}")
    containers, warnings = convert_inspect(json.dumps([
        {"no": "id"}, _inspect(NetworkSettings={"Ports": {"x/tcp": [
            {"HostIp": "", "HostPort": "99999"}, {"HostIp": "", "HostPort": "1"}]}})]).encode())
    assert len(containers) == 1 and [p.host_port for p in containers[0].ports] == [1]
    assert "invalid port format: x/tcp" in warnings[0]
    assert any("invalid host port 99999" in w for w in warnings)


def test_inspect_status() -> None:
    assert inspect_status({"Running": False, "ExitCode": 0}) == "exited successfully"
    assert inspect_status({"Running": False, "ExitCode": 137}) == "exited with code 137"


async def test_run_command_bounds_and_timeouts(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"]}
    r = await run_command(["sh", "-c", "echo out; echo err >&2; exit 4"], environ=env,
                          timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (4, b"out\n", b"err\n")
    with pytest.raises(Exception, match="exit status 4: err"):
        r.check("thing")
    with pytest.raises(Exception, match="output exceeds 1000 bytes"):
        await run_command(["sh", "-c", "yes | head -c 100000000"], environ=env, timeout=30,
                          max_stdout=1000)
    tail = await run_command(["sh", "-c", "seq 1 100000"], environ=env, timeout=30,
                             max_stdout=7, keep_tail=True)
    assert tail.stdout == b"100000\n"
    with pytest.raises(Exception, match="timed out after 0.2 s"):
        await run_command(["sleep", "30"], environ=env, timeout=0.2)
    with pytest.raises(Exception, match="executable file not found"):
        await run_command(["no-such-program-here"], environ=env, timeout=5)


# -- the table -------------------------------------------------------------------------------


def _container(cid: str, folder: str, *, running: bool = True, created: datetime = T0,
               config: str = "", name: str = "happy_turing") -> Container:
    labels = {"devcontainer.local_folder": folder}
    if config:
        labels["devcontainer.config_file"] = config
    return Container(created_at=created, id=cid, name=name, image="i", labels=labels,
                     running=running, status="running" if running else "exited successfully")


def test_table_statuses_follow_the_listing() -> None:
    t = DevcontainerTable()
    cfg = "/w/a/.devcontainer/devcontainer.json"
    assert t.apply([_container("c1", "/w/a", config=cfg)], {}, {cfg: T0 - timedelta(1)})
    (a,) = t.snapshot()
    assert (a.status, a.name, a.config_path, a.dirty) == (DevcontainerStatus.RUNNING, "a", cfg,
                                                         False)
    assert not t.apply([_container("c1", "/w/a", config=cfg)], {}, {cfg: T0 - timedelta(1)})
    # Config changed after the container was created: dirty.
    assert t.apply([_container("c1", "/w/a", config=cfg)], {}, {cfg: T0 + timedelta(1)})
    assert t.snapshot()[0].dirty
    # Stopped, then gone: still known (its config exists) as stopped, nameless.
    assert t.apply([_container("c1", "/w/a", running=False)], {}, {cfg: T0})
    assert t.snapshot()[0].status is DevcontainerStatus.STOPPED
    assert t.apply([], {}, {cfg: T0})
    (a2,) = t.snapshot()
    assert (a2.id, a2.status, a2.container, a2.name) == (a.id, DevcontainerStatus.STOPPED,
                                                         None, "")
    # Neither container nor config file: forgotten.
    assert t.apply([], {}, {}) and t.snapshot() == []
    # Test-run containers are not dev containers.
    test_run = _container("c9", "/w/t")
    test_run.labels["devcontainer.is_test_run"] = "true"
    assert not t.apply([test_run], {}, {})


def test_table_operations_and_their_conflicts() -> None:
    t = DevcontainerTable()
    t.apply([_container("c1", "/w/a")], {"/w/b": "/w/b/.devcontainer.json"},
            {"/w/b/.devcontainer.json": T0})
    a, b = t.snapshot()
    with pytest.raises(DevcontainerNotFound):
        t.begin_recreate(str(uuid.uuid4()))
    with pytest.raises(DevcontainerNotFound):  # Go compares the id's text exactly
        t.begin_recreate(str(a.id).upper())
    entry = t.begin_recreate(str(a.id))
    assert entry.status is DevcontainerStatus.STARTING and entry.container is None
    for op in (t.begin_recreate, t.begin_delete):
        with pytest.raises(DevcontainerBusy) as e:
            op(str(a.id))
        assert e.value.status is DevcontainerStatus.STARTING
    # A listing while starting keeps "starting" but links the container it sees.
    t.apply([_container("c2", "/w/a", created=T0 + timedelta(1))], {},
            {"/w/b/.devcontainer.json": T0})
    assert t.get("/w/a").status is DevcontainerStatus.STARTING  # type: ignore[union-attr]
    t.finish_recreate("/w/a", "c2", "")
    assert t.snapshot()[0].status is DevcontainerStatus.RUNNING
    # A failed recreate: error until a container newer than the failure appears.
    t.begin_recreate(str(b.id))
    t.fail("/w/b", "boom", T0 + timedelta(2))
    t.apply([_container("old", "/w/b", created=T0)], {}, {"/w/b/.devcontainer.json": T0})
    assert (t.get("/w/b").status, t.get("/w/b").error) == (  # type: ignore[union-attr]
        DevcontainerStatus.ERROR, "boom")
    t.apply([_container("new", "/w/b", created=T0 + timedelta(3))], {},
            {"/w/b/.devcontainer.json": T0})
    assert (t.get("/w/b").status, t.get("/w/b").error) == (  # type: ignore[union-attr]
        DevcontainerStatus.RUNNING, "")
    # Delete: stopping → deleting → forgotten.
    t.begin_delete(str(b.id))
    t.apply([], {}, {})  # an operation holds it even with nothing left
    assert t.get("/w/b").status is DevcontainerStatus.STOPPING  # type: ignore[union-attr]
    t.set_status("/w/b", DevcontainerStatus.DELETING)
    t.forget("/w/b")
    assert t.get("/w/b") is None


def test_agent_names() -> None:
    assert agent_name("/home/coder/My_Project", "x", []) == "my-project"
    assert agent_name("/home/coder/app", "x", ["app"]) == "coder-app"
    assert agent_name("/a/b/c", "x", ["c", "b-c", "a-b-c"]) == "x"
    assert agent_name("/srv/---", "Friendly_Name", []) == "friendly-name"
    assert len(agent_name("/" + "x" * 100, "f", [])) == 64
    t = DevcontainerTable()
    t.apply([_container("1", "/one/app"), _container("2", "/two/app")], {}, {})
    assert [d.name for d in t.snapshot()] == ["app", "two-app"]


# -- config ----------------------------------------------------------------------------------


def test_load_config_substitutes_and_resolves(tmp_path: Path) -> None:
    folder = tmp_path / "proj"
    (folder / ".devcontainer").mkdir(parents=True)
    (folder / ".devcontainer" / "devcontainer.json").write_text("""{
      "build": {"dockerfile": "Dockerfile", "context": "..", "args": {"V": "${localEnv:V:dflt}"}},
      "workspaceFolder": "/work/${localWorkspaceFolderBasename}",
      "mounts": ["type=volume,source=${devcontainerId},target=/cache",
                 {"type": "tmpfs", "target": "/t"}],
      "containerEnv": {"WF": "${containerWorkspaceFolder}", "N": 3, "HOME_X": "${localEnv:HOME}"},
      "remoteEnv": {"UNSET": null},
      "postCreateCommand": {"one": "echo 1", "two": ["echo", "2"]},
      "features": {},
      "customizations": {"vscode": {}},
    }""")
    cfg = load_config(str(folder), "", {"HOME": "/h"})
    assert cfg.dockerfile == str(folder / ".devcontainer" / "Dockerfile")
    assert cfg.context == str(folder)
    assert cfg.build_args == {"V": "dflt"}
    assert cfg.container_workspace_folder == "/work/proj"
    assert cfg.container_env == {"WF": "/work/proj", "N": "3", "HOME_X": "/h"}
    assert cfg.mounts[0].startswith("type=volume,source=") and "${" not in cfg.mounts[0]
    assert cfg.mounts[1] == "type=tmpfs,target=/t"
    assert cfg.remote_env == {}
    assert cfg.lifecycle == [("postCreateCommand", {"one": "echo 1", "two": ["echo", "2"]})]


@pytest.mark.parametrize(("text", "error"), [
    ('{"image": "x", "dockerComposeFile": "c.yml", "service": "s"}',
     'unsupported devcontainer.json properties "dockerComposeFile", "service"'),
    ('{"image": "x", "features": {"a": {}}}', 'unsupported devcontainer.json property '
                                              '"features"'),
    ('{"build": {"dockerfile": "D", "cacheFrom": "x"}}', '"build.cacheFrom"'),
    ('{"name": "no image"}', 'needs "image" or "build.dockerfile"'),
    ('{"image": 3}', '"image" must be a string'),
    ('{"image": "x", "runArgs": "--rm"}', '"runArgs" must be an array of strings'),
    ("[1]", "must hold a JSON object"),
    ('{"image": "x",, }', "not valid JSONC: line 1"),
])
def test_load_config_errors(tmp_path: Path, text: str, error: str) -> None:
    (tmp_path / ".devcontainer.json").write_text(text)
    with pytest.raises(UpError) as e:
        load_config(str(tmp_path), str(tmp_path / ".devcontainer.json"), {})
    assert error in str(e.value)
    assert e.value.container_id is None


def test_load_config_without_a_path_finds_either_name(tmp_path: Path) -> None:
    (tmp_path / ".devcontainer.json").write_text('{"image": "x"}')
    assert load_config(str(tmp_path), "", {}).config_path == str(tmp_path / ".devcontainer.json")
    with pytest.raises(UpError, match="No such file"):
        load_config(str(tmp_path / "nowhere"), "", {})


def test_discover_is_bounded(tmp_path: Path) -> None:
    for rel in ("a", "b/c", "node_modules/x", ".git/y", "d/e/f/g/h/too-deep"):
        (tmp_path / rel / ".devcontainer").mkdir(parents=True)
        (tmp_path / rel / ".devcontainer" / "devcontainer.json").write_text("{}")
    (tmp_path / ".devcontainer.json").write_text("{}")
    found = discover(str(tmp_path))
    assert found == {
        str(tmp_path): str(tmp_path / ".devcontainer.json"),
        str(tmp_path / "a"): str(tmp_path / "a/.devcontainer/devcontainer.json"),
        str(tmp_path / "b/c"): str(tmp_path / "b/c/.devcontainer/devcontainer.json"),
    }
    assert discover(str(tmp_path), max_entries=3).keys() <= found.keys()


def test_parse_cli_outcome() -> None:
    ok = (b'{"type":"text","level":3,"text":"building"}\n'
          b'{"outcome":"success","containerId":"abc","remoteUser":"root",'
          b'"remoteWorkspaceFolder":"/workspaces/x"}\n')
    assert parse_cli_outcome(ok) == ("abc", "")
    failed = b'{"outcome":"error","message":"Command failed","description":"postCreate"}\n'
    assert parse_cli_outcome(failed) == (None, "Command failed: postCreate")
    half = b'{"outcome":"error","message":"lifecycle","containerId":"def"}'
    assert parse_cli_outcome(half) == ("def", "lifecycle")
    assert parse_cli_outcome(b"garbage\n")[1] == "devcontainer up: no outcome in its output"


def test_list_response_wire_shape() -> None:
    """What a Go client decodes: devcontainers left out when none, keys as codersdk has
    them."""
    t = DevcontainerTable()
    t.apply([_container("c1", "/w/a")], {}, {})
    body = json.loads(ListContainersResponse(devcontainers=t.snapshot(), containers=[
        _container("c1", "/w/a")]).to_json())
    dc = body["devcontainers"][0]
    assert set(dc) == {"id", "name", "workspace_folder", "status", "dirty", "container"}
    assert "warnings" not in body
    assert json.loads(ListContainersResponse().to_json()) == {"containers": []}
