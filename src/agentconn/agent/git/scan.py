"""One repository's state as git-watch reports it, read with the real ``git`` (agent-api.md §10).

Theory of operation: every fact comes from a ``git`` child process run with a timeout
(:data:`COMMAND_TIMEOUT`), its output read in bounded pieces, so a slow or huge repository can
cost time but never unbounded agent memory.

* :func:`find_repo_root` maps a tracked path to ``git rev-parse --show-toplevel`` of its nearest
  existing directory (symlinks resolved by git).
* :func:`scan_repo` reads the branch (``symbolic-ref``; empty when detached or before the first
  commit), the first ``remote.origin.url`` and the worktree diff against ``HEAD`` (the empty
  tree before the first commit). Untracked, non-ignored files are added *intent-to-add* to a
  throwaway copy of the index (``GIT_INDEX_FILE``), so one ``git diff HEAD`` shows them as new
  files against ``/dev/null``; the repository's own index is never written
  (``GIT_OPTIONAL_LOCKS=0``).
* Size guards of the go-git agent revision: a file larger than :data:`MAX_FILE_READ_SIZE` on
  either side is not diffed at all (``git diff`` excludes it) and gets a stub patch ``File too
  large to diff. Current size: <IEC size>``; a single file's patch larger than
  :data:`MAX_FILE_DIFF_SIZE` is cut to its header plus ``File diff too large to show. Diff
  size: <size>``; a whole diff larger than :data:`MAX_TOTAL_DIFF_SIZE` becomes ``Total diff too
  large to show. Size: <size>. Showing branch and remote only.`` While the diff streams in, at
  most one file's limit plus the total limit are held.

:class:`DiffSplitter` is the sans-IO part (bytes in, per-file patches out) and is tested on
its own; the rest is the thin process layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentconn.errors import AgentConnError

__all__ = [
    "COMMAND_TIMEOUT",
    "MAX_FILE_DIFF_SIZE",
    "MAX_FILE_READ_SIZE",
    "MAX_TOTAL_DIFF_SIZE",
    "DiffSplitter",
    "GitError",
    "RepoState",
    "find_repo_root",
    "git_environ",
    "iec_size",
    "is_repo_deleted",
    "quote_path",
    "scan_repo",
    "total_note",
]

_log = logging.getLogger("agentconn.agent.git")

#: Files larger than this (either side) are not diffed (go-git agent: ``maxFileReadSize``).
MAX_FILE_READ_SIZE = 2 * 1024 * 1024
#: A single file's patch larger than this is replaced by a stub (``maxFileDiffSize``).
MAX_FILE_DIFF_SIZE = 256 * 1024
#: A repository's whole diff larger than this is replaced by a note (``maxTotalDiffSize``).
MAX_TOTAL_DIFF_SIZE = 3 * 1024 * 1024
#: Seconds one git command may take before it is killed (the scan of that repo then fails).
COMMAND_TIMEOUT = 30.0
#: More files than this over :data:`MAX_FILE_READ_SIZE` and the whole diff is the note.
MAX_BIG_FILES = 1000
#: Output cap of the listing commands (untracked files, raw diff): past it the repository is
#: reported as a too-large diff instead of being listed.
MAX_LISTING_SIZE = 8 * 1024 * 1024

_READ_SIZE = 64 * 1024
_ZERO_SHA = frozenset({"0" * 40, "0" * 64})
_STUB_HUNK = b"@@ -0,0 +1 @@\n+"
# Settings that would change the diff's shape if a user's config set them.
_DIFF_CONFIG = ("-c", "core.quotePath=true", "-c", "diff.noprefix=false",
                "-c", "diff.mnemonicPrefix=false", "-c", "color.ui=never")


class GitError(AgentConnError):
    """A git command failed, timed out or produced more than the scan accepts."""


class _TooLarge(GitError):
    def __init__(self, size: int) -> None:
        super().__init__(f"git output larger than {size} bytes")
        self.size = size


@dataclass(frozen=True, slots=True)
class RepoState:
    """What one scan saw: ``branch`` (short, ``""`` when detached or before the first
    commit), ``remote_origin`` (``""`` when unset) and the ``unified_diff`` (guards applied)."""

    repo_root: str
    branch: str
    remote_origin: str
    unified_diff: str


def git_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment git runs in: the agent's session environment without variables that
    would redirect repository discovery, with a fixed locale, no prompts and no pager."""
    env = {k: v for k, v in environ.items()
           if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                        "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES")}
    env.update({"LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0",
                "GIT_PAGER": "cat", "PAGER": "cat"})
    return env


def iec_size(n: int) -> str:
    """A byte count the way Go's ``humanize.IBytes`` prints it (``2.5 MiB``, ``300 KiB``)."""
    if n < 10:
        return f"{n} B"
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    e = 0
    v = float(n)
    while v >= 1024 and e < len(units) - 1:
        v /= 1024
        e += 1
    val = int(v * 10 + 0.5) / 10
    return f"{val:.1f} {units[e]}" if val < 10 else f"{val:.0f} {units[e]}"


_C_ESCAPES = {0x07: b"\\a", 0x08: b"\\b", 0x09: b"\\t", 0x0A: b"\\n", 0x0B: b"\\v",
              0x0C: b"\\f", 0x0D: b"\\r", 0x22: b'\\"', 0x5C: b"\\\\"}


def quote_path(path: bytes) -> bytes:
    """A path as git prints it in a diff header with ``core.quotePath=true`` (C-style quoting
    when it holds a quote, backslash, control or non-ASCII byte)."""
    if not any(b < 0x20 or b >= 0x7F or b in (0x22, 0x5C) for b in path):
        return path
    out = bytearray(b'"')
    for b in path:
        if b in _C_ESCAPES:
            out += _C_ESCAPES[b]
        elif b < 0x20 or b >= 0x7F:
            out += b"\\%03o" % b
        else:
            out.append(b)
    out += b'"'
    return bytes(out)


def _diff_header(path: bytes) -> bytes:
    return b"diff --git " + quote_path(b"a/" + path) + b" " + quote_path(b"b/" + path) + b"\n"


# -- the diff stream, sans-IO ---------------------------------------------------------------


@dataclass(slots=True)
class _File:
    data: bytearray
    size: int = 0
    over: bool = False


_FILE_START = re.compile(rb"^diff --git ", re.MULTILINE)
#: Of a file whose patch went over the limit, this much of its start is kept for the header.
_HEAD_KEEP = 64 * 1024


class DiffSplitter:
    """Cut ``git diff`` output into per-file patches, applying the per-file limit.

    :meth:`feed` takes the output in any pieces; every finished file patch (a stub when the
    file's patch exceeded ``file_limit``) is returned by :meth:`feed` or :meth:`finish`, each as
    ``(first header line, patch bytes)``. File boundaries are found in whole lines with one
    regular-expression scan per piece (a file starts at a line ``diff --git …``; content lines
    never do, they start with a space, ``+`` or ``-``). Memory held: the current file up to
    ``file_limit`` plus one partial line up to the same limit.
    """

    def __init__(self, file_limit: int = MAX_FILE_DIFF_SIZE) -> None:
        self.file_limit = file_limit
        self._pending = b""
        self._skipping = False
        self._file: _File | None = None
        self._out: list[tuple[bytes, bytes]] = []

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self._append(data, keep=False)
                return self._take()
            self._append(data[:nl + 1], keep=False)
            data = data[nl + 1:]
            self._skipping = False
        buf = self._pending + data if self._pending else data
        last = buf.rfind(b"\n")
        complete, rest = (buf[:last + 1], buf[last + 1:]) if last >= 0 else (b"", buf)
        pos = 0
        for m in _FILE_START.finditer(complete):
            if m.start() > pos:
                self._append(complete[pos:m.start()])
            self._close_file()
            self._file = _File(bytearray())
            pos = m.start()
        if pos < len(complete):
            self._append(complete[pos:])
        if len(rest) > self.file_limit:
            # One line longer than a whole file may be: that file is over its limit whatever
            # else it holds, so only its size is kept until the line ends.
            self._append(rest, keep=False)
            self._pending = b""
            self._skipping = True
        else:
            self._pending = rest
        return self._take()

    def finish(self) -> list[tuple[bytes, bytes]]:
        if self._pending:
            if _FILE_START.match(self._pending):
                self._close_file()
                self._file = _File(bytearray())
            self._append(self._pending)
            self._pending = b""
        self._skipping = False
        self._close_file()
        return self._take()

    def _take(self) -> list[tuple[bytes, bytes]]:
        out, self._out = self._out, []
        return out

    def _append(self, data: bytes, keep: bool = True) -> None:
        f = self._file
        if f is None:
            return  # nothing precedes the first header in git's output
        f.size += len(data)
        if f.over:
            return
        if keep:
            f.data += data
        if f.size > self.file_limit or not keep:
            f.over = True
            del f.data[_HEAD_KEEP:]  # enough for the header lines

    def _close_file(self) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        first = bytes(f.data[:f.data.find(b"\n") + 1])
        if not f.over:
            self._out.append((first, bytes(f.data)))
            return
        header = bytearray()
        for line in bytes(f.data).splitlines(keepends=True):
            if not line.endswith(b"\n") or (header and line.startswith(
                    (b"@@", b"Binary files ", b"GIT binary patch"))):
                break
            header += line
        msg = f"File diff too large to show. Diff size: {iec_size(f.size)}\n".encode()
        self._out.append((first, bytes(header) + _STUB_HUNK + msg))


# -- git processes --------------------------------------------------------------------------


async def _run(argv: Sequence[str], *, cwd: str, env: Mapping[str, str],
               stdin: bytes | None = None, limit: int = MAX_LISTING_SIZE,
               ok_codes: Iterable[int] = (0,), timeout: float = COMMAND_TIMEOUT) -> bytes:
    """Run ``git *argv`` in ``cwd``; its stdout (at most ``limit`` bytes, else
    :class:`_TooLarge`). A non-OK exit or a timeout raises :class:`GitError`."""
    out = bytearray()

    def sink(chunk: bytes) -> None:
        out.extend(chunk)
        if len(out) > limit:
            raise _TooLarge(len(out))

    code, err = await _stream(argv, cwd=cwd, env=env, sink=sink, stdin=stdin,
                              timeout=timeout)
    if code not in tuple(ok_codes):
        raise GitError(f"git {argv[0]}: exit status {code}: {err.strip()}")
    return bytes(out)


async def _stream(argv: Sequence[str], *, cwd: str, env: Mapping[str, str],
                  sink: Callable[[bytes], None], stdin: bytes | None = None,
                  timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
    """Run ``git *argv``, handing its stdout to ``sink`` piece by piece while stdin is
    written and stderr drained concurrently (no pipe can fill up and stall git). Returns
    (exit status, start of stderr); the process is killed on timeout or on any error."""
    proc = await _spawn(argv, cwd=cwd, env=env, stdin=stdin is not None)
    err_task = asyncio.ensure_future(_stderr(proc))
    helpers: list[asyncio.Future[Any]] = [err_task]
    if stdin is not None:
        helpers.append(asyncio.ensure_future(_feed(proc, stdin)))
    try:
        async with asyncio.timeout(timeout):
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(_READ_SIZE):
                sink(chunk)
            code = await proc.wait()
            err = await err_task
    except TimeoutError:
        raise GitError(f"git {argv[0]} timed out after {timeout:g}s") from None
    finally:
        await _reap(proc)
        for h in helpers:
            h.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    return code, err


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(ConnectionError, BrokenPipeError):
        proc.stdin.write(data)
        await proc.stdin.drain()
    proc.stdin.close()


async def _spawn(argv: Sequence[str], *, cwd: str, env: Mapping[str, str],
                 stdin: bool = False) -> asyncio.subprocess.Process:
    git = shutil.which("git", path=env.get("PATH"))
    if git is None:
        raise GitError("git executable not found on PATH")
    try:
        # A repository's own config must not make a scan run programs (fsmonitor hooks).
        return await asyncio.create_subprocess_exec(
            git, "-c", "core.fsmonitor=false", *argv, cwd=cwd, env=dict(env),
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
    except OSError as e:
        raise GitError(f"git {argv[0]}: {e.strerror or e}") from e


async def _stderr(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    data = await proc.stderr.read(4096)
    while await proc.stderr.read(_READ_SIZE):
        pass
    return data.decode("utf-8", "replace")


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def find_repo_root(path: str, env: Mapping[str, str]) -> str | None:
    """The work tree root of the repository containing ``path`` (or its nearest existing
    ancestor), or ``None`` when there is none or ``path`` is not absolute."""
    if not os.path.isabs(path):
        return None
    d = os.path.normpath(path)
    while not os.path.isdir(d):
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent
    try:
        out = await _run(("rev-parse", "--show-toplevel"), cwd=d, env=env, limit=65536)
    except GitError:
        return None
    root = os.fsdecode(out.rstrip(b"\n"))
    return root or None


async def is_repo_deleted(root: str, env: Mapping[str, str]) -> bool:
    """True when ``root`` or its ``.git`` is gone, or ``.git`` is a file (worktree, submodule)
    whose git directory no longer opens — a removal, not a transient scan failure."""
    if not os.path.isdir(root):
        return True
    dotgit = os.path.join(root, ".git")
    try:
        st = os.stat(dotgit)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if stat.S_ISDIR(st.st_mode):
        return False
    try:
        await _run(("rev-parse", "--git-dir"), cwd=root, env=env, limit=65536)
    except GitError:
        return True
    return False


@dataclass(slots=True)
class _Change:
    path: bytes
    old_mode: str
    new_mode: str
    old_sha: str
    status: str
    big: bool = False
    size: int = 0


def _parse_raw(raw: bytes) -> list[_Change]:
    """``git diff --raw -z --no-renames``: ``:old new sha1 sha2 S\\0path\\0`` records."""
    parts = raw.split(b"\0")
    changes: list[_Change] = []
    i = 0
    while i + 1 < len(parts):
        meta = parts[i].decode("ascii", "replace")
        if not meta.startswith(":"):
            i += 1
            continue
        fields = meta[1:].split()
        if len(fields) >= 5:
            changes.append(_Change(parts[i + 1], fields[0], fields[1], fields[2], fields[4][:1]))
        i += 2
    return changes


async def _blob_sizes(root: str, env: Mapping[str, str], shas: list[str]) -> dict[str, int]:
    if not shas:
        return {}
    out = await _run(("cat-file", "--batch-check=%(objectname) %(objectsize)"), cwd=root,
                     env=env, stdin="".join(s + "\n" for s in shas).encode())
    sizes: dict[str, int] = {}
    for line in out.decode("ascii", "replace").splitlines():
        name, _, size = line.partition(" ")
        if size.isdigit():
            sizes[name] = int(size)
    return sizes


def _worktree_size(root: str, path: bytes) -> int:
    try:
        st = os.lstat(os.path.join(os.fsencode(root), path))
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) else 0


def _big_file_stub(c: _Change) -> bytes:
    """The patch for a file too large to diff: a git-style header and one note line."""
    head = bytearray(_diff_header(c.path))
    old_exists = c.old_mode != "000000"
    new_exists = c.status != "D" and c.new_mode != "000000"
    if not old_exists:
        head += b"new file mode " + c.new_mode.encode() + b"\n"
    elif not new_exists:
        head += b"deleted file mode " + c.old_mode.encode() + b"\n"
    elif c.old_mode != c.new_mode:
        head += b"old mode " + c.old_mode.encode() + b"\nnew mode " + c.new_mode.encode() + b"\n"
    head += b"--- " + (quote_path(b"a/" + c.path) if old_exists else b"/dev/null") + b"\n"
    head += b"+++ " + (quote_path(b"b/" + c.path) if new_exists else b"/dev/null") + b"\n"
    msg = f"File too large to diff. Current size: {iec_size(c.size)}\n".encode()
    return bytes(head) + _STUB_HUNK + msg


class _Collector:
    """Joins file patches in git's order with the big-file stubs, applying the total limit."""

    def __init__(self, changes: list[_Change], total_limit: int) -> None:
        self._changes = changes
        self._next = 0
        self._limit = total_limit
        self.parts: list[bytes] = []
        self.size = 0

    def _add(self, patch: bytes) -> None:
        self.size += len(patch)
        if self.size <= self._limit:
            self.parts.append(patch)
        elif self.parts:
            self.parts.clear()  # the note replaces the diff: free what was kept

    def _stubs_until(self, stop: int) -> None:
        while self._next < stop:
            c = self._changes[self._next]
            if c.big:
                self._add(_big_file_stub(c))
            self._next += 1

    def patch(self, first_line: bytes, data: bytes) -> None:
        for j in range(self._next, len(self._changes)):
            c = self._changes[j]
            if not c.big and first_line == _diff_header(c.path):
                self._stubs_until(j)
                self._next = j + 1
                break
        self._add(data)

    def finish(self) -> None:
        self._stubs_until(len(self._changes))


def total_note(size: int) -> str:
    """The text that replaces a diff of ``size`` bytes that is too large to send."""
    return (f"Total diff too large to show. Size: {iec_size(size)}. "
            "Showing branch and remote only.")


async def _head_info(root: str, env: Mapping[str, str]) -> tuple[str, str, bool]:
    """(branch, origin URL, whether HEAD has a commit)."""
    async def branch() -> str:
        out = await _run(("symbolic-ref", "-q", "--short", "HEAD"), cwd=root, env=env,
                         ok_codes=(0, 1), limit=65536)
        return out.decode("utf-8", "replace").strip()

    async def origin() -> str:
        out = await _run(("config", "--get-all", "remote.origin.url"), cwd=root, env=env,
                         ok_codes=(0, 1), limit=65536)
        lines = out.decode("utf-8", "replace").splitlines()
        return lines[0] if lines else ""

    async def has_commit() -> bool:
        out = await _run(("rev-parse", "-q", "--verify", "HEAD^{commit}"), cwd=root, env=env,
                         ok_codes=(0, 1), limit=65536)
        return bool(out.strip())

    b, o, c = await asyncio.gather(branch(), origin(), has_commit())
    return (b if c else ""), o, c


async def _base(root: str, env: Mapping[str, str], has_commit: bool) -> str:
    if has_commit:
        return "HEAD"
    out = await _run(("hash-object", "-t", "tree", "/dev/null"), cwd=root, env=env, limit=256)
    return out.decode().strip()


async def _diff(root: str, env: Mapping[str, str], base: str,
                total_limit: int) -> str:
    diff_env = dict(env)
    untracked_raw = await _run(("ls-files", "--others", "--exclude-standard", "-z"),
                               cwd=root, env=env)
    untracked = [p for p in untracked_raw.split(b"\0") if p and not p.endswith(b"/")]
    tmpdir: str | None = None
    try:
        if untracked:
            tmpdir = await asyncio.to_thread(tempfile.mkdtemp, prefix="agentconn-gitwatch-")
            index = os.path.join(tmpdir, "index")
            real = os.fsdecode((await _run(("rev-parse", "--path-format=absolute",
                                             "--git-path", "index"), cwd=root, env=env,
                                            limit=65536)).rstrip(b"\n"))
            with contextlib.suppress(FileNotFoundError):
                # copy2 keeps the index's mtime, which git's racy-entry check compares with
                await asyncio.to_thread(shutil.copy2, real, index)
            diff_env["GIT_INDEX_FILE"] = index
            await _run(("add", "--intent-to-add", "--pathspec-from-file=-",
                        "--pathspec-file-nul"), cwd=root, env=diff_env,
                       stdin=b"\0".join(untracked) + b"\0")
        raw = await _run((*_DIFF_CONFIG, "diff", base, "--raw", "-z", "--no-abbrev",
                          "--no-renames", "--no-ext-diff", "--ignore-submodules=none"),
                         cwd=root, env=diff_env)
        changes = _parse_raw(raw)
        if not changes:
            return ""
        # The size guard: sizes on both sides, before anything is diffed.
        old = [c.old_sha for c in changes if c.old_sha not in _ZERO_SHA
               and not c.old_mode.startswith("160")]
        sizes = await _blob_sizes(root, env, sorted(set(old)))
        new_sizes = await asyncio.to_thread(
            lambda: [0 if c.status == "D" else _worktree_size(root, c.path) for c in changes])
        for c, new_size in zip(changes, new_sizes, strict=True):
            if max(sizes.get(c.old_sha, 0), new_size) > MAX_FILE_READ_SIZE:
                c.big, c.size = True, new_size
        big = [c for c in changes if c.big]
        if len(big) > MAX_BIG_FILES:
            return total_note(sum(c.size for c in big))
        argv = [*_DIFF_CONFIG, "diff", base, "--no-color", "--no-ext-diff", "--no-textconv",
                "--no-renames", "--no-relative", "--src-prefix=a/", "--dst-prefix=b/",
                "--submodule=short", "-O/dev/null", "--"]
        argv += [":(exclude,literal)" + os.fsdecode(c.path) for c in changes
                 if c.big]
        collector = _Collector(changes, total_limit)
        splitter = DiffSplitter()

        def sink(chunk: bytes) -> None:
            for first, patch in splitter.feed(chunk):
                collector.patch(first, patch)

        code, err = await _stream(argv, cwd=root, env=diff_env, sink=sink)
        if code != 0:
            raise GitError(f"git diff: exit status {code}: {err.strip()}")
        for first, patch in splitter.finish():
            collector.patch(first, patch)
        collector.finish()
        if collector.size > total_limit:
            return total_note(collector.size)
        return b"".join(collector.parts).decode("utf-8", "replace")
    except _TooLarge as e:
        return total_note(e.size)
    finally:
        if tmpdir is not None:
            await asyncio.to_thread(shutil.rmtree, tmpdir, True)


async def scan_repo(root: str, env: Mapping[str, str], *,
                    total_limit: int = MAX_TOTAL_DIFF_SIZE) -> RepoState:
    """Branch, origin and diff of the repository at ``root``. Raises :class:`GitError` when
    git fails (the caller tells a removal from a transient failure with
    :func:`is_repo_deleted`)."""
    if not os.path.lexists(os.path.join(root, ".git")):
        # Without this, git would find an enclosing repository and report that one.
        raise GitError(f"{root}: no .git")
    branch, origin, has_commit = await _head_info(root, env)
    base = await _base(root, env, has_commit)
    diff = await _diff(root, env, base, total_limit)
    return RepoState(root, branch, origin, diff)
