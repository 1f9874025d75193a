"""Copy files and directory trees to and from an agent: ``AgentConn.upload`` / ``download``.

Theory of operation: the agent's file API moves the bytes (``write-file`` streams a body into
an atomic temp-file-and-rename, ``read-file`` streams a range), and the process API does what
it cannot: ``stat`` (modes and sizes: :class:`~agentconn.proto.files.LSFile` has no mode),
``mkdir -p`` (empty directories), ``chmod`` and ``sha256sum``, one process per directory batch
rather than per file. Every file streams in 1 MiB chunks (never held whole) and is hashed on
the way; after each batch the agent's sha256 must equal ours or :class:`TransferError` is
raised. A download goes into ``NAME.part`` renamed at the end; a ``.part`` left by an
interrupted download is continued from its size (``read_file(offset=...)``) when ``resume``
is true, and the whole file is verified (a mismatch starts that file over once).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import shlex
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentconn.errors import AgentConnError

if TYPE_CHECKING:
    from agentconn.client.conn import AgentConn

__all__ = ["Progress", "TransferError", "TransferResult", "download", "upload"]

#: ``progress(done_bytes, total_bytes, name)``: bytes of the whole transfer so far (resumed
#: bytes count as done), its total, and the file being copied (its path as given/relative).
Progress = Callable[[int, int, str], None]

CHUNK = 1 << 20
PART_SUFFIX = ".part"
_BATCH_FILES = 64        # files per stat / chmod / sha256sum process
# bytes of quoted paths per such process (the answers never repeat the paths: they stay far
# below the 16 KiB the agent keeps of a process's output before it cuts out the middle)
_BATCH_ARGS = 24 << 10


class TransferError(AgentConnError):
    """A copy failed: a missing file, a directory without ``recursive``, a checksum mismatch,
    a failed remote command. The message is one line naming the path."""

    exit_status = 1


@dataclass
class TransferResult:
    """What a transfer did: ``files`` copied, ``directories`` created, ``total_bytes`` of file
    content, ``transferred_bytes`` actually sent or received (less than the total when a
    download resumed), and ``resumed`` (the local paths continued from a ``.part``)."""

    files: int = 0
    directories: int = 0
    total_bytes: int = 0
    transferred_bytes: int = 0
    resumed: list[str] = field(default_factory=list)


@dataclass
class _File:
    src: str
    dst: str
    size: int
    mode: int
    name: str  # shown in progress


class _Meter:
    def __init__(self, total: int, progress: Progress | None, result: TransferResult) -> None:
        self.total = total
        self.done = 0
        self.progress = progress
        self.result = result

    def add(self, n: int, name: str, *, transferred: bool = True) -> None:
        self.done += n
        if transferred:
            self.result.transferred_bytes += n
        if self.progress is not None:
            self.progress(self.done, self.total, name)


# -- remote helpers ---------------------------------------------------------------------------

async def _run(conn: AgentConn, command: str) -> tuple[int, str]:
    """``sh -c command`` on the agent: (exit code, output)."""
    started = await conn.start_process(command)
    out = await conn.process_output(started.id, wait=True)
    while out.running:  # the wait is bounded by the agent (5 minutes)
        out = await conn.process_output(started.id, wait=True)
    if out.truncated is not None:
        raise TransferError(f"the agent cut the output of {command[:60]!r}... "
                            f"({out.truncated.original_bytes} bytes)")
    return (out.exit_code if out.exit_code is not None else -1), out.output


def _batches(paths: Sequence[str]) -> list[list[str]]:
    batches: list[list[str]] = []
    current: list[str] = []
    size = 0
    for p in paths:
        q = len(shlex.quote(p)) + 1
        if current and (len(current) >= _BATCH_FILES or size + q > _BATCH_ARGS):
            batches.append(current)
            current, size = [], 0
        current.append(p)
        size += q
    if current:
        batches.append(current)
    return batches


def _quote_all(paths: Sequence[str]) -> str:
    return " ".join(shlex.quote(p) for p in paths)


async def _remote_stat(conn: AgentConn, paths: Sequence[str], *, skip_missing: bool = False
                       ) -> list[tuple[str, int, int, str]]:
    """(kind ``f``/``d``/``o``, permission bits, size, ``device:inode``) of each path,
    following symlinks; with
    ``skip_missing`` a path that cannot be stat-ed (a dangling symlink, a file removed since
    the listing) is kind ``o`` (skipped) instead of an error."""
    found: list[tuple[str, int, int, str]] = []
    for batch in _batches(paths):
        if skip_missing:
            command = (f"for p in {_quote_all(batch)}; do stat -L -c '%f %s %d:%i' -- \"$p\" "
                       f"2>/dev/null || echo '0 0 0'; done")
        else:
            command = f"stat -L -c '%f %s %d:%i' -- {_quote_all(batch)} 2>&1"
        code, output = await _run(conn, command)
        lines = output.splitlines()
        if code != 0 or len(lines) != len(batch):
            detail = output.strip().splitlines()[-1] if output.strip() else f"exit {code}"
            raise TransferError(_clean_stat_error(detail))
        for line in lines:
            raw, size, ident = line.split()
            mode = int(raw, 16)
            kind = "d" if stat.S_ISDIR(mode) else "f" if stat.S_ISREG(mode) else "o"
            found.append((kind, stat.S_IMODE(mode), int(size), ident))
    return found


def _clean_stat_error(text: str) -> str:
    # "stat: cannot statx '/x': No such file or directory" -> "/x: No such file or directory"
    for prefix in ("stat: cannot statx ", "stat: cannot stat "):
        if text.startswith(prefix):
            rest = text[len(prefix):]
            if rest.startswith("'") and "': " in rest:
                path, _, reason = rest[1:].partition("': ")
                return f"{path}: {reason}"
    return text


async def _remote_sha256(conn: AgentConn, paths: Sequence[str]) -> list[str]:
    digests: list[str] = []
    for batch in _batches(paths):
        # "<hash>  -" for each file read on stdin: one short line each, whatever the name
        code, output = await _run(conn, f"for p in {_quote_all(batch)}; do sha256sum < \"$p\" "
                                        f"2>&1 || exit 1; done")
        lines = output.splitlines()
        if code != 0 or len(lines) != len(batch):
            detail = lines[-1] if lines else f"exit {code}"
            raise TransferError(f"sha256sum failed on the agent ({detail})")
        digests.extend(line[:64] for line in lines)
    return digests


async def _remote_home(conn: AgentConn) -> str:
    code, output = await _run(conn, 'printf %s "$HOME"')
    if code != 0 or not output.startswith("/"):
        raise TransferError("cannot find the agent's home directory for a relative path")
    return output


async def _absolute(conn: AgentConn, path: str) -> str:
    if path.startswith("/"):
        return path
    home = await _remote_home(conn)
    return posixpath.join(home, path) if path not in ("", ".") else home


def _mode_groups(items: Sequence[tuple[str, int]]) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for path, mode in items:
        groups.setdefault(mode, []).append(path)
    return groups


async def _remote_chmod(conn: AgentConn, items: Sequence[tuple[str, int]]) -> None:
    for mode, paths in _mode_groups(items).items():
        for batch in _batches(paths):
            code, output = await _run(conn, f"chmod {mode:o} -- {_quote_all(batch)} 2>&1")
            if code != 0:
                raise TransferError(f"chmod on the agent failed: {output.strip()}")


# -- upload -----------------------------------------------------------------------------------

async def upload(conn: AgentConn, local_path: str | os.PathLike[str], remote_path: str, *,
                 recursive: bool = False, progress: Progress | None = None) -> TransferResult:
    """Copy ``local_path`` (a file, or with ``recursive`` a directory tree) to ``remote_path``
    on the agent, like ``scp``: into ``remote_path`` when that is an existing directory, else
    as ``remote_path``. Modes are kept; each file's sha256 is checked on the agent."""
    local = os.fspath(local_path)
    try:
        st = os.stat(local)
    except OSError as e:
        raise TransferError(f"{local}: {e.strerror}") from None
    remote = await _absolute(conn, remote_path)
    is_dir = stat.S_ISDIR(st.st_mode)
    if is_dir and not recursive:
        raise TransferError(f"{local}: is a directory (use -r / recursive=True)")
    if not is_dir and not stat.S_ISREG(st.st_mode):
        raise TransferError(f"{local}: not a regular file")
    base = posixpath.basename(os.path.abspath(local).rstrip(os.sep)) or "root"
    remote_is_dir = await _remote_is_dir(conn, remote)
    if remote_is_dir or remote_path.endswith("/"):
        remote = posixpath.join(remote, base)

    result = TransferResult()
    files: list[_File] = []
    dirs: list[tuple[str, int]] = []
    if is_dir:
        # symlinked directories are followed (as scp -r does), a cycle is not
        chains = {local: frozenset({(st.st_dev, st.st_ino)})}
        for root, dirnames, filenames in os.walk(local, followlinks=True):
            chain = chains.pop(root)
            keep = []
            for d in sorted(dirnames):
                try:
                    dst = os.stat(os.path.join(root, d))
                except OSError:
                    continue
                if (dst.st_dev, dst.st_ino) not in chain:
                    chains[os.path.join(root, d)] = chain | {(dst.st_dev, dst.st_ino)}
                    keep.append(d)
            dirnames[:] = keep
            rel = os.path.relpath(root, local)
            rroot = remote if rel == "." else posixpath.join(remote, *rel.split(os.sep))
            dirs.append((rroot, stat.S_IMODE(os.stat(root).st_mode)))
            for fn in sorted(filenames):
                lp = os.path.join(root, fn)
                try:
                    fst = os.stat(lp)
                except OSError:  # a dangling symlink, a file removed meanwhile: skipped
                    continue
                if not stat.S_ISREG(fst.st_mode):
                    continue
                files.append(_File(lp, posixpath.join(rroot, fn), fst.st_size,
                                   stat.S_IMODE(fst.st_mode),
                                   os.path.normpath(os.path.join(base, rel, fn))))
    else:
        files.append(_File(local, remote, st.st_size, stat.S_IMODE(st.st_mode), base))

    meter = _Meter(sum(f.size for f in files), progress, result)
    result.total_bytes = meter.total
    if dirs:
        for batch in _batches([d for d, _ in dirs]):
            code, output = await _run(conn, f"mkdir -p -- {_quote_all(batch)} 2>&1")
            if code != 0:
                raise TransferError(f"mkdir on the agent failed: {output.strip()}")
        result.directories = len(dirs)

    pending: list[tuple[_File, str]] = []
    pending_args = 0
    for f in files:
        digest = await _upload_file(conn, f, meter)
        pending.append((f, digest))
        pending_args += len(shlex.quote(f.dst)) + 1
        if len(pending) >= _BATCH_FILES or pending_args > _BATCH_ARGS:
            await _finish_uploads(conn, pending)
            pending, pending_args = [], 0
    await _finish_uploads(conn, pending)
    result.files = len(files)
    # Directory modes last, deepest first: a read-only directory must not stop its own files.
    if dirs:
        await _remote_chmod(conn, sorted(dirs, key=lambda d: -d[0].count("/")))
    if progress is not None and not files:
        progress(0, 0, base)
    return result


async def _remote_is_dir(conn: AgentConn, path: str) -> bool:
    from agentconn.client.conn import AgentApiError

    try:
        await conn.ls(path)
    except AgentApiError:
        return False
    return True


async def _upload_file(conn: AgentConn, f: _File, meter: _Meter) -> str:
    h = hashlib.sha256()

    async def chunks(fh: object) -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(fh.read, CHUNK):  # type: ignore[attr-defined]
            h.update(chunk)
            yield chunk
            meter.add(len(chunk), f.name)

    try:
        fh = await asyncio.to_thread(open, f.src, "rb")  # closed below, read in a thread
    except OSError as e:
        raise TransferError(f"{f.src}: {e.strerror}") from None
    try:
        await conn.write_file(f.dst, chunks(fh))
    except AgentConnError as e:
        raise TransferError(f"{f.dst}: {_api_message(e)}") from e
    finally:
        fh.close()
    return h.hexdigest()


async def _finish_uploads(conn: AgentConn, pending: list[tuple[_File, str]]) -> None:
    if not pending:
        return
    # checked before chmod: a mode without read permission must not stop sha256sum
    remote = await _remote_sha256(conn, [f.dst for f, _ in pending])
    for (f, ours), theirs in zip(pending, remote, strict=True):
        if ours != theirs:
            raise TransferError(f"{f.dst}: sha256 mismatch after upload "
                                f"(local {ours[:12]}, agent {theirs[:12]})")
    await _remote_chmod(conn, [(f.dst, f.mode) for f, _ in pending])


def _api_message(e: AgentConnError) -> str:
    message = getattr(e, "message", None)
    status = getattr(e, "status", None)
    if message and status:
        return f"{message} ({status})"
    return str(e)


# -- download ---------------------------------------------------------------------------------

async def download(conn: AgentConn, remote_path: str, local_path: str | os.PathLike[str], *,
                   recursive: bool = False, resume: bool = True,
                   progress: Progress | None = None) -> TransferResult:
    """Copy ``remote_path`` (a file, or with ``recursive`` a directory tree) from the agent to
    ``local_path``, like ``scp``: into ``local_path`` when that is an existing directory, else
    as ``local_path``. Modes are kept; each file is verified against the agent's sha256. With
    ``resume``, a ``.part`` left by an interrupted download is continued, not restarted."""
    remote = await _absolute(conn, remote_path)
    local = os.fspath(local_path)
    (kind, mode, size, ident), = await _remote_stat(conn, [remote])
    if kind == "d" and not recursive:
        raise TransferError(f"{remote}: is a directory (use -r / recursive=True)")
    if kind == "o":
        raise TransferError(f"{remote}: not a regular file")
    base = posixpath.basename(remote.rstrip("/")) or "root"
    if os.path.isdir(local) or local.endswith(os.sep):
        local = os.path.join(local, base)

    result = TransferResult()
    files: list[_File] = []
    dirs: list[tuple[str, int]] = []
    if kind == "d":
        await _walk_remote(conn, remote, local, base, mode, files, dirs, {ident})
    else:
        files.append(_File(remote, local, size, mode, base))

    meter = _Meter(sum(f.size for f in files), progress, result)
    result.total_bytes = meter.total
    for d, _ in dirs:
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            raise TransferError(f"{d}: {e.strerror}") from None
    result.directories = len(dirs)

    for i in range(0, len(files), _BATCH_FILES):
        batch = files[i:i + _BATCH_FILES]
        theirs = await _remote_sha256(conn, [f.src for f in batch])
        for f, digest in zip(batch, theirs, strict=True):
            await _download_file(conn, f, digest, meter, resume=resume)
    result.files = len(files)
    for d, dmode in sorted(dirs, key=lambda d: -d[0].count(os.sep)):
        os.chmod(d, dmode)
    if progress is not None and not files:
        progress(0, 0, base)
    return result


async def _walk_remote(conn: AgentConn, remote: str, local: str, name: str, mode: int,
                       files: list[_File], dirs: list[tuple[str, int]], seen: set[str]) -> None:
    """List ``remote`` into ``files`` and ``dirs``; symlinked directories are followed (as
    scp -r does) but a directory already on the way down (``seen``) is not entered again."""
    from agentconn.client.conn import AgentApiError

    dirs.append((local, mode))
    try:
        listing = await conn.ls(remote)
    except AgentApiError as e:
        raise TransferError(f"{remote}: {_api_message(e)}") from e
    entries = sorted(listing.contents, key=lambda e: e.name)
    paths = [posixpath.join(remote, e.name) for e in entries]
    stats = await _remote_stat(conn, paths, skip_missing=True) if paths else []
    for entry, path, (kind, emode, size, ident) in zip(entries, paths, stats, strict=True):
        lp = os.path.join(local, entry.name)
        if kind == "d" and ident not in seen:
            await _walk_remote(conn, path, lp, f"{name}/{entry.name}", emode, files, dirs,
                               seen | {ident})
        elif kind == "f":
            files.append(_File(path, lp, size, emode, f"{name}/{entry.name}"))


async def _download_file(conn: AgentConn, f: _File, digest: str, meter: _Meter, *,
                         resume: bool) -> None:
    part = f.dst + PART_SUFFIX
    offset = 0
    if resume:
        try:
            offset = os.path.getsize(part)
        except OSError:
            offset = 0
        if offset > f.size:
            offset = 0
    start = meter.done
    for attempt in range(2):
        h = hashlib.sha256()
        if offset:
            await asyncio.to_thread(_hash_prefix, part, offset, h)
            meter.result.resumed.append(f.dst)
            meter.add(offset, f.name, transferred=False)
        try:
            # unbuffered: what is on disk is always a prefix a later run can resume from
            fh = await asyncio.to_thread(open, part, "r+b" if offset else "wb", buffering=0)
        except OSError as e:
            raise TransferError(f"{part}: {e.strerror}") from None
        try:
            fh.seek(offset)
            fh.truncate()
            if offset < f.size or f.size == 0:
                await _receive(conn, f, offset, fh, h, meter)
        finally:
            fh.close()
        if h.hexdigest() == digest:
            break
        if attempt == 0 and offset:
            # the prefix we kept was not the agent's: start this file over
            meter.done = start
            meter.result.resumed.remove(f.dst)
            offset = 0
            continue
        raise TransferError(f"{f.src}: sha256 mismatch after download "
                            f"(agent {digest[:12]}, local {h.hexdigest()[:12]})")
    os.chmod(part, f.mode)
    os.replace(part, f.dst)


async def _receive(conn: AgentConn, f: _File, offset: int, fh: object,
                   h: hashlib._Hash, meter: _Meter) -> None:
    from agentconn.client.conn import AgentApiError

    try:
        stream = await conn.read_file(f.src, offset=offset)
    except AgentApiError as e:
        raise TransferError(f"{f.src}: {_api_message(e)}") from e
    async with stream:
        async for chunk in stream:
            h.update(chunk)
            await asyncio.to_thread(_write_all, fh, chunk)
            meter.add(len(chunk), f.name)


def _write_all(fh: object, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = fh.write(view)  # type: ignore[attr-defined]
        view = view[n:]


def _hash_prefix(path: str, size: int, h: hashlib._Hash) -> None:
    with open(path, "rb") as fh:
        left = size
        while left > 0:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
