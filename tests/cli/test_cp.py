"""agentconn cp and AgentConn.upload/download: a directory tree up and back down with modes
and contents intact (in process over a real tunnel, and through the CLI against the `agentconn
agent` CLI in another process), a 200 MB file both ways with sha256 equal, an interrupted
download resumed from its .part, the progress bar on a terminal only, one-line errors."""
from __future__ import annotations

import hashlib
import itertools
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import PYTHONPATH, Result, agent_process, run_cli

from agentconn.cli.cp import parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from agent_pair import agent_pair

AGENT_ID = uuid.UUID("12345678-1234-1234-1234-123456789abc")
BIG = 200 << 20


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(client.conf, the agent's work directory): `agentconn agent` in a subprocess."""
    with agent_process(tmp_path_factory.mktemp("cp"), AGENT_ID) as paths:
        yield paths


def _target(agent: tuple[Path, Path]) -> list[str]:
    return ["--config", str(agent[0]), "--agent-id", str(AGENT_ID)]


def cp(tmp_path: Path, agent: tuple[Path, Path], *argv: str, timeout: float = 120) -> Result:
    return run_cli(tmp_path, "cp", *_target(agent), *argv, timeout=timeout)


def cp_measured(tmp_path: Path, agent: tuple[Path, Path], *argv: str) -> tuple[Result, int]:
    """:func:`cp` and the peak RSS of that cp process (bytes: its VmHWM at exit; getrusage
    would count the pytest process it was forked from)."""
    hwm = tmp_path / "cp.hwm"
    code = ("import atexit, sys\n"
            "def hwm():\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM:'):\n"
            f"            open({str(hwm)!r}, 'w').write(line.split()[1])\n"
            "atexit.register(hwm)\n"
            "from agentconn.cli.__main__ import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "PYTHONPATH": PYTHONPATH, "LANG": "C.UTF-8"}
    proc = subprocess.run([sys.executable, "-c", code, "cp", *_target(agent), *argv], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr), int(hwm.read_text()) * 1024


def _make_tree(root: Path) -> None:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "top.txt").write_text("top\n")
    (root / "a" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "a" / "run.sh").chmod(0o755)
    (root / "a" / "b" / "empty").write_bytes(b"")
    (root / "a" / "b" / "secret").write_bytes(os.urandom(3 << 20))
    (root / "a" / "b" / "secret").chmod(0o600)
    (root / "a" / "b" / "c" / "deep.bin").write_bytes(os.urandom(1000))
    (root / "a" / "b" / "c").chmod(0o750)


def _snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel] = ("d", stat.S_IMODE(os.stat(dirpath).st_mode), "")
        for fn in filenames:
            p = Path(dirpath) / fn
            out[os.path.join(rel, fn)] = ("f", stat.S_IMODE(p.stat().st_mode),
                                          hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_random(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(4 << 20, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def test_parse_spec() -> None:
    assert parse_spec("ws:/srv/app").remote and parse_spec("ws:/srv/app").workspace == "ws"
    assert parse_spec(":/tmp/x") == parse_spec(":/tmp/x")
    assert parse_spec(":/tmp/x").remote and parse_spec(":/tmp/x").workspace == ""
    assert not parse_spec("./a:b").remote
    assert not parse_spec("build").remote
    assert parse_spec("me/ws.main:rel") == parse_spec("me/ws.main:rel")
    assert parse_spec("me/ws.main:rel").workspace == "me/ws.main"
    assert not parse_spec("a/b/c:d").remote and not parse_spec("/x:y").remote
    assert parse_spec("ws:rel/x").path == "rel/x"


async def test_library_tree_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    _make_tree(src)
    seen: list[tuple[int, int, str]] = []
    async with agent_pair(tmp_path / "agent") as p:
        remote = str(p.work / "up")
        up = await p.conn.upload(src, remote, recursive=True,
                                 progress=lambda d, t, n: seen.append((d, t, n)))
        assert up.files == 5 and up.directories == 5
        assert _snapshot(Path(remote)) == _snapshot(src)
        back = tmp_path / "back"
        down = await p.conn.download(remote, back, recursive=True)
        assert down.files == 5 and down.transferred_bytes == down.total_bytes
    assert _snapshot(back) == _snapshot(src)
    total = up.total_bytes
    # dangling symlinks and FIFOs are skipped both ways, not errors
    os.symlink("/nonexistent", src / "dangling")
    os.mkfifo(src / "fifo")
    os.symlink("..", src / "a" / "loop")  # a cycle: skipped
    async with agent_pair(tmp_path / "agent2") as p:
        remote = str(p.work / "up")
        up = await p.conn.upload(src, remote, recursive=True)
        assert up.files == 5
        os.symlink("/nonexistent", Path(remote) / "dangling")
        os.mkfifo(Path(remote) / "fifo")
        os.symlink("..", Path(remote) / "a" / "loop")  # a cycle: not entered again
        down = await p.conn.download(remote, tmp_path / "back2", recursive=True)
        assert down.files == 5
    assert not (tmp_path / "back2" / "a" / "loop").exists()  # the cycle is skipped
    assert _snapshot(tmp_path / "back2") == _snapshot(back)
    assert seen[-1][:2] == (total, total)
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(seen))


async def test_library_errors(tmp_path: Path) -> None:
    from agentconn.client.transfer import TransferError

    (tmp_path / "d").mkdir()
    async with agent_pair(tmp_path / "agent") as p:
        with pytest.raises(TransferError, match="is a directory"):
            await p.conn.upload(tmp_path / "d", str(p.work / "x"))
        with pytest.raises(TransferError, match="No such file"):
            await p.conn.upload(tmp_path / "missing", str(p.work / "x"))
        with pytest.raises(TransferError, match="No such file"):
            await p.conn.download(str(p.work / "missing"), tmp_path / "x")
        with pytest.raises(TransferError, match="is a directory"):
            await p.conn.download(str(p.work), tmp_path / "x")
        # relative remote paths are under the agent's home directory ("." is that directory)
        (tmp_path / "f.txt").write_text("home\n")
        await p.conn.upload(tmp_path / "f.txt", "rel/f.txt")
        await p.conn.upload(tmp_path / "f.txt", ".")
        assert (p.home / "rel" / "f.txt").read_text() == (p.home / "f.txt").read_text() == "home\n"
        await p.conn.download("rel/f.txt", tmp_path / "back.txt")
        assert (tmp_path / "back.txt").read_text() == "home\n"


async def test_library_stale_part_starts_over(tmp_path: Path) -> None:
    """A .part that is not a prefix of the agent's file fails the check and is redone."""
    async with agent_pair(tmp_path / "agent") as p:
        data = os.urandom(5 << 20)
        (p.work / "f.bin").write_bytes(data)
        local = tmp_path / "f.bin"
        (tmp_path / "f.bin.part").write_bytes(os.urandom(2 << 20))
        result = await p.conn.download(str(p.work / "f.bin"), local)
        assert local.read_bytes() == data and not (tmp_path / "f.bin.part").exists()
        assert result.transferred_bytes == len(data) + (3 << 20)  # the tail, then everything
        assert result.resumed == []
        (tmp_path / "f.bin.part").write_bytes(data[:1 << 20])  # a true prefix: resumed
        local.unlink()
        result = await p.conn.download(str(p.work / "f.bin"), local)
        assert local.read_bytes() == data
        assert result.transferred_bytes == len(data) - (1 << 20)
        assert result.resumed == [str(local)]
        (tmp_path / "f.bin.part").write_bytes(data[:1 << 20])
        result = await p.conn.download(str(p.work / "f.bin"), local, resume=False)
        assert local.read_bytes() == data and result.transferred_bytes == len(data)


def test_cli_tree_round_trip(tmp_path: Path, agent: tuple[Path, Path]) -> None:
    src = tmp_path / "build"
    _make_tree(src)
    _, work = agent
    r = cp(tmp_path, agent, "-r", str(src), f":{work}/cli-tree")
    assert (r.code, r.out, r.err) == (0, "", "")
    assert _snapshot(work / "cli-tree") == _snapshot(src)
    # into an existing directory, as scp: the tree lands under its own name
    r = cp(tmp_path, agent, "-r", str(src), f":{work}/cli-tree")
    assert r.code == 0, r.err
    assert _snapshot(work / "cli-tree" / "build") == _snapshot(src)
    down = tmp_path / "down"
    down.mkdir()
    r = cp(tmp_path, agent, "-r", f":{work}/cli-tree", str(down))
    assert (r.code, r.err) == (0, ""), r.err
    got = _snapshot(down / "cli-tree")
    assert {k: v for k, v in got.items() if not k.startswith("build")} == _snapshot(src)


def test_cli_errors(tmp_path: Path, agent: tuple[Path, Path]) -> None:
    _, work = agent
    (tmp_path / "dir").mkdir()
    r = cp(tmp_path, agent, str(tmp_path / "nope"), f":{work}/x")
    assert r.code == 1
    assert r.err_lines == [f"agentconn cp: {tmp_path}/nope: No such file or directory"]
    r = cp(tmp_path, agent, f":{work}/nope", str(tmp_path))
    assert r.code == 1 and len(r.err_lines) == 1 and "No such file or directory" in r.err
    r = cp(tmp_path, agent, str(tmp_path / "dir"), f":{work}/x")
    assert r.code == 1 and len(r.err_lines) == 1 and "is a directory (use -r" in r.err
    r = cp(tmp_path, agent, f":{work}", str(tmp_path / "w"))
    assert r.code == 1 and len(r.err_lines) == 1 and "is a directory (use -r" in r.err
    r = cp(tmp_path, agent, str(tmp_path / "dir"), ":")
    assert r.code == 1 and "is a directory (use -r" in r.err
    r = run_cli(tmp_path, "cp", "a", "b")
    assert r.code == 2 and "one of SRC and DST must be remote" in r.err


def test_cli_200mb_up_and_down(tmp_path: Path, agent: tuple[Path, Path]) -> None:
    _, work = agent
    big = tmp_path / "big.bin"
    digest = _write_random(big, BIG)
    r, up_peak = cp_measured(tmp_path, agent, str(big), f":{work}/big.bin")
    assert (r.code, r.err) == (0, "")
    assert _sha256(work / "big.bin") == digest
    big.unlink()
    r, down_peak = cp_measured(tmp_path, agent, "-v", f":{work}/big.bin", str(tmp_path))
    assert r.code == 0, r.err
    assert _sha256(tmp_path / "big.bin") == digest
    assert f"{BIG} bytes total, {BIG} bytes transferred" in r.err
    # streamed: the cp process never came near holding the file (about 45 MB measured)
    assert max(up_peak, down_peak) < 100 << 20, (up_peak, down_peak)


def test_cli_resumed_download(tmp_path: Path, agent: tuple[Path, Path]) -> None:
    _, work = agent
    remote = work / "resume.bin"
    digest = _write_random(remote, BIG)
    local = tmp_path / "resume.bin"
    part = tmp_path / "resume.bin.part"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "PYTHONPATH": PYTHONPATH, "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentconn.cli", "cp", *_target(agent), f":{remote}",
         str(local)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if part.exists() and part.stat().st_size >= BIG // 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the download ended before it could be interrupted"
        proc.kill()
    finally:
        proc.kill()
        proc.wait(10)
    kept = part.stat().st_size
    assert BIG // 2 <= kept < BIG and not local.exists()
    r = cp(tmp_path, agent, "-v", f":{remote}", str(local), timeout=600)
    assert r.code == 0, r.err
    assert not part.exists() and _sha256(local) == digest
    assert f"{BIG} bytes total, {BIG - kept} bytes transferred, resumed 1" in r.err


def _run_on_pty(argv: list[str], timeout: float = 120) -> tuple[int, bytes]:
    """Run the CLI with stderr (and stdout) on a pseudo-terminal; its exit code and output."""
    master, slave = pty.openpty()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent",
           "PYTHONPATH": PYTHONPATH, "LANG": "C.UTF-8", "TERM": "xterm", "COLUMNS": "100"}
    proc = subprocess.Popen([sys.executable, "-m", "agentconn.cli", *argv], env=env,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
        return proc.wait(timeout), bytes(out)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        os.close(master)


def test_progress_on_a_terminal_only(tmp_path: Path, agent: tuple[Path, Path]) -> None:
    _, work = agent
    f = tmp_path / "p.bin"
    _write_random(f, 32 << 20)
    code, out = _run_on_pty(["cp", *_target(agent), str(f), f":{work}/p.bin"])
    assert code == 0, out
    text = out.decode("utf-8", "replace")
    assert "p.bin" in text and "33.6 MB" in text, text  # rich's DownloadColumn, SI units
    code, out = _run_on_pty(["cp", "--no-progress", *_target(agent), str(f),
                             f":{work}/p2.bin"])
    assert (code, out) == (0, b"")
    r = cp(tmp_path, agent, str(f), f":{work}/p3.bin")  # stderr is a pipe: quiet
    assert (r.code, r.out, r.err) == (0, "", "")


def test_cli_target_errors(tmp_path: Path, agent: tuple[Path, Path]) -> None:
    """The target comes from the remote side: a workspace name, or ':' with --config."""
    r = run_cli(tmp_path, "cp", "dev:/tmp/x", str(tmp_path))
    assert r.code == 1 and r.err_lines == [
        "agentconn cp: You are not logged in. Try logging in using 'coder login <url>'."]
    r = cp(tmp_path, agent, "dev:/tmp/x", str(tmp_path))
    assert r.code == 2 and "not both" in r.err and len(r.err_lines) == 1
    r = run_cli(tmp_path, "cp", ":/tmp/x", str(tmp_path))
    assert r.code == 2 and "--config FILE --agent-id UUID" in r.err and len(r.err_lines) == 1


async def test_cli_by_workspace_name(tmp_path: Path) -> None:
    """`agentconn cp f dev:/path` and back, on the test Coder control plane (DERP, then the
    direct UDP path disco finds)."""
    import asyncio

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "coder"))
    from controlplane import TOKEN
    from test_e2e_tailnet import plane_with_agents

    src = tmp_path / "src"
    _make_tree(src)
    remote = tmp_path / "remote"
    async with plane_with_agents(tmp_path, "dev") as (plane, _):
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": PYTHONPATH,
               "CODER_URL": plane.url, "CODER_SESSION_TOKEN": TOKEN,
               "AGENTCONN_TAILNET_LISTEN": "127.0.0.1"}   # disco endpoints: loopback only

        async def run(*args: str) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agentconn.cli", "cp", *args, env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), 90)
            assert proc.returncode is not None
            return proc.returncode, err.decode()

        assert await run("-r", str(src), f"dev:{remote}") == (0, "")
        assert await run("-r", f"dev:{remote}", str(tmp_path / "back")) == (0, "")
        code, err = await run(f"nope:{remote}/top.txt", str(tmp_path))
        assert code == 1 and 'workspace "me/nope" not found' in err
    assert _snapshot(remote) == _snapshot(src) == _snapshot(tmp_path / "back")


def test_sync_facade(tmp_path: Path, agent: tuple[Path, Path]) -> None:
    """agentconn.sync has upload/download too (its proxy forwards every AgentConn method)."""
    from agentconn import sync

    config, work = agent
    src = tmp_path / "s"
    _make_tree(src)
    with sync.connect(str(config), AGENT_ID) as conn:
        result = conn.upload(src, str(work / "sync"), recursive=True)
        assert result.files == 5
        conn.download(str(work / "sync"), tmp_path / "d", recursive=True)
    assert _snapshot(tmp_path / "d") == _snapshot(src)


async def test_library_long_names_in_batches(tmp_path: Path) -> None:
    """Many files with long names: every stat/sha256sum/chmod answer fits the agent's
    32 KiB of kept process output (batches are cut by size, not only by count)."""
    src = tmp_path / "long"
    src.mkdir()
    for i in range(150):
        (src / (f"{i:03d}-" + "n" * 200)).write_bytes(str(i).encode())
    async with agent_pair(tmp_path / "agent") as p:
        up = await p.conn.upload(src, str(p.work / "long"), recursive=True)
        down = await p.conn.download(str(p.work / "long"), tmp_path / "back", recursive=True)
    assert up.files == down.files == 150
    assert _snapshot(tmp_path / "back") == _snapshot(src)


async def test_library_symlinked_directories_are_followed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "real" / "f").write_bytes(b"x")
    os.symlink("real", src / "linked")
    async with agent_pair(tmp_path / "agent") as p:
        up = await p.conn.upload(src, str(p.work / "up"), recursive=True)
        assert up.files == 2 and not (p.work / "up" / "linked").is_symlink()
        assert (p.work / "up" / "linked" / "f").read_bytes() == b"x"
        os.symlink("real", p.work / "up" / "linked2")
        down = await p.conn.download(str(p.work / "up"), tmp_path / "down", recursive=True)
        assert down.files == 3 and (tmp_path / "down" / "linked2" / "f").read_bytes() == b"x"
