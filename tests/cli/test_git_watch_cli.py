"""``agentconn git-watch``: the real entry point in a subprocess, against an Agent on this
test's event loop (loopback UDP), watching a real git repository.

The chat's change is recorded the way write-file records it (the agent's PathStore) after the
file was changed on disk, so the CLI is the only client on the tunnel.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from cli_run import PYTHONPATH, free_udp_port
from gitrepo import make_repo, require_git

from agentconn.agent.agent import Agent
from agentconn.agent.options import AgentOptions
from agentconn.cli.commands import pair_configs
from agentconn.cli.gitwatch import FileStat, diff_stats, format_message
from agentconn.proto.git import GitServerMessage

AGENT_ID = uuid.UUID("12345678-1234-1234-1234-123456789abc")
HANG_GUARD = 120.0


async def _line(stream: asyncio.StreamReader) -> str:
    async with asyncio.timeout(HANG_GUARD):
        line = await stream.readline()
    assert line, "the CLI ended early"
    return line.decode()


async def _watch(home: Path, client_conf: Path, chat: uuid.UUID, *extra: str
                 ) -> asyncio.subprocess.Process:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "PYTHONPATH": PYTHONPATH, "LANG": "C.UTF-8", "TZ": "UTC"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentconn.cli", "git-watch", "--config", str(client_conf),
        "--agent-id", str(AGENT_ID), "--chat-id", str(chat), *extra, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    assert (await _line(proc.stderr)).startswith(f"watching the git changes of chat {chat}")
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> str:
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(HANG_GUARD):
        _, err = await proc.communicate()
    assert proc.returncode == 0, err
    return err.decode()


async def test_git_watch_prints_changes(tmp_path: Path) -> None:
    require_git()
    home = tmp_path / "home"
    home.mkdir()
    port = free_udp_port()
    agent_conf, client_conf, _ = pair_configs(AGENT_ID, listen_port=port,
                                              endpoint=f"127.0.0.1:{port}")
    (tmp_path / "client.conf").write_text(client_conf)
    repo = make_repo(tmp_path / "repo", home, origin="git@example.invalid:app.git",
                     files={"a.txt": "one\ntwo\n"}).resolve()
    options = AgentOptions(home=str(home), directory=str(tmp_path), log_dir=str(tmp_path / "log"),
                           environ={"PATH": os.environ.get("PATH", ""), "HOME": str(home)})
    agent = Agent(agent_conf, AGENT_ID, options=options, listen_host="127.0.0.1", services=())
    async with agent:
        chat = uuid.uuid4()
        proc = await _watch(home, tmp_path / "client.conf", chat, "--output", "json")
        assert proc.stdout is not None
        (repo / "a.txt").write_text("one\nTWO\n")
        agent.paths.add_paths([chat], [str(repo / "a.txt")])
        msg = json.loads(await _line(proc.stdout))
        assert msg["type"] == "changes"
        (entry,) = msg["repositories"]
        assert (entry["repo_root"], entry["branch"], entry["remote_origin"]) == (
            str(repo), "main", "git@example.invalid:app.git")
        assert "-two\n+TWO\n" in entry["unified_diff"]
        err = await _stop(proc)
        assert "Traceback" not in err

        text = await _watch(home, tmp_path / "client.conf", chat)  # text output
        assert text.stdout is not None
        head = await _line(text.stdout)
        assert head.endswith(f" {repo}  branch main  origin git@example.invalid:app.git\n")
        assert await _line(text.stdout) == "  1 file changed, +1 -1\n"
        assert await _line(text.stdout) == "    M a.txt  +1 -1\n"
        (repo / "new file.md").write_text("x\ny\n")
        agent.paths.add_paths([chat], [str(repo / "new file.md")])
        await _line(text.stdout)
        assert await _line(text.stdout) == "  2 files changed, +3 -1\n"
        assert await _line(text.stdout) == "    M a.txt        +1 -1\n"
        assert await _line(text.stdout) == "    A new file.md  +2 -0\n"
        assert "Traceback" not in await _stop(text)


def test_unreachable_agent_is_one_line_without_traceback(tmp_path: Path) -> None:
    from cli_run import run_cli

    _, client_conf, _ = pair_configs(AGENT_ID, endpoint=f"127.0.0.1:{free_udp_port()}")
    (tmp_path / "client.conf").write_text(client_conf)
    r = run_cli(tmp_path, "git-watch", "--config", str(tmp_path / "client.conf"),
                "--agent-id", str(AGENT_ID), "--chat-id", str(uuid.uuid4()),
                env={"AGENTCONN_CONNECT_TIMEOUT": "1"}, timeout=120)
    assert r.code != 0
    assert "Traceback" not in r.err
    assert r.err_lines[-1].startswith("agentconn git-watch: ")


def test_diff_stats_and_text_format() -> None:
    diff = ('diff --git a/a.txt b/a.txt\nindex 1..2 100644\n--- a/a.txt\n+++ b/a.txt\n'
            '@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n'
            'diff --git a/sp ace.md b/sp ace.md\nnew file mode 100644\nindex 0..1\n--- /dev/null\n'
            '+++ b/sp ace.md\t\n@@ -0,0 +1 @@\n+--- not a header\n'
            'diff --git "a/x\\303\\251" "b/x\\303\\251"\ndeleted file mode 100644\n'
            '--- "a/x\\303\\251"\n+++ /dev/null\n@@ -1 +0,0 @@\n-gone\n'
            'diff --git a/mode.sh b/mode.sh\nold mode 100644\nnew mode 100755\n')
    assert diff_stats(diff) == [FileStat("a.txt", "M", 1, 1), FileStat("sp ace.md", "A", 1, 0),
                                FileStat("xé", "D", 0, 1), FileStat("mode.sh", "M", 0, 0)]
    msg = GitServerMessage.from_json(json.dumps({
        "type": "changes", "scanned_at": "2026-05-18T12:00:00Z",
        "repositories": [{"repo_root": "/r", "branch": "", "unified_diff": "Total diff too "
                          "large to show. Size: 4.0 MiB. Showing branch and remote only."},
                         {"repo_root": "/gone", "removed": True}]}))
    lines = format_message(msg)
    assert lines[0].endswith(" /r  branch (none)")
    assert lines[1] == "  Total diff too large to show. Size: 4.0 MiB. Showing branch and " \
                       "remote only."
    assert lines[2].endswith(" /gone  removed")
    assert format_message(GitServerMessage.from_json('{"type":"changes","repositories":[]}')) \
        == []
