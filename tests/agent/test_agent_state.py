"""Per-agent state (issue 14 item 6): two agents on one machine share neither their log
directory nor their SSH host key, and the host key is created atomically, never overwritten."""

from __future__ import annotations

import os
import stat
import threading
import uuid
from pathlib import Path

import asyncssh
import pytest
from agent_pair import pair_configs

from agentconn.agent import options as options_mod
from agentconn.agent.agent import Agent
from agentconn.agent.options import AgentOptions, default_log_dir
from agentconn.agent.services import ssh as ssh_mod
from agentconn.agent.services.ssh import HOST_KEY_FILENAME, SshServer, load_host_key

ID_A = uuid.UUID("11111111-1111-1111-1111-111111111111")
ID_B = uuid.UUID("22222222-2222-2222-2222-222222222222")


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setattr(options_mod, "_home", lambda: str(home))
    return home


def test_two_agents_with_default_options_get_their_own_directories(fake_home: Path) -> None:
    conf_a, _, _ = pair_configs(ID_A)
    conf_b, _, _ = pair_configs(ID_B)
    shared = AgentOptions(home=str(fake_home), environ={})
    a = Agent(conf_a, ID_A, options=shared)
    b = Agent(conf_b, ID_B, options=shared)
    c = Agent(conf_b, ID_B)                       # no options at all
    assert a.options.log_dir == str(fake_home / ".agentconn" / str(ID_A)) == default_log_dir(ID_A)
    assert b.options.log_dir == str(fake_home / ".agentconn" / str(ID_B))
    assert c.options.log_dir == b.options.log_dir
    assert shared.log_dir is None                 # the caller's options are not changed
    assert a.debug.log_dir != b.debug.log_dir
    paths = {SshServer(agent.options).host_key_path for agent in (a, b)}
    assert paths == {str(fake_home / ".agentconn" / str(i) / HOST_KEY_FILENAME)
                     for i in (ID_A, ID_B)}
    # an explicit log_dir is used as given
    explicit = AgentOptions(log_dir=str(fake_home / "logs"))
    assert Agent(conf_a, ID_A, options=explicit).options is explicit


def test_a_service_on_its_own_needs_a_log_dir() -> None:
    with pytest.raises(ValueError, match="log_dir"):
        SshServer(AgentOptions())
    assert SshServer(AgentOptions(), host_key_path="/nonexistent/k").host_key_path == "/nonexistent/k"


def test_concurrent_host_key_creation_yields_one_key(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Both starters read FileNotFoundError, both generate; one key is published and both
    return it (no half-written file is ever read, no key replaced)."""
    path = str(tmp_path / "state" / HOST_KEY_FILENAME)
    both_generated = threading.Barrier(2)
    real_generate = asyncssh.generate_private_key

    def generate(alg: str) -> asyncssh.SSHKey:
        key = real_generate(alg)
        both_generated.wait(timeout=10)           # neither publishes before both generated
        return key

    monkeypatch.setattr(ssh_mod.asyncssh, "generate_private_key", generate)
    results: list[asyncssh.SSHKey] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            results.append(load_host_key(path))
        except BaseException as exc:  # noqa: BLE001 - the thread's failure is the test's
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors and len(results) == 2
    on_disk = asyncssh.read_private_key(path)
    assert results[0].export_public_key() == results[1].export_public_key() \
        == on_disk.export_public_key()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path / "state") == [HOST_KEY_FILENAME]     # no temp file left


def test_existing_host_key_is_kept(tmp_path: Path) -> None:
    path = tmp_path / HOST_KEY_FILENAME
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.write_bytes(key.export_private_key())
    before = path.read_bytes()
    assert load_host_key(str(path)).export_public_key() == key.export_public_key()
    # even a starter that lost the read race (generated its own) keeps the existing file
    assert not ssh_mod._publish_exclusive(str(path), b"another key")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [HOST_KEY_FILENAME]


def test_a_new_host_key_is_private_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "new" / HOST_KEY_FILENAME
    key = load_host_key(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert asyncssh.read_private_key(str(path)).export_public_key() == key.export_public_key()
