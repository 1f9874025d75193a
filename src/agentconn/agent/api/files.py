"""The agent's file endpoints: list-directory, resolve-path, read-file, read-file-lines,
write-file and edit-files (agent-api.md §3.1–§3.6).

Theory of operation: each handler validates its query or JSON body (§2.5), does the file work
through :mod:`agentconn.agent.api.fsutil` and answers with the exact texts and status codes of the
Go agent. Blocking file-system calls run in the default executor; file data is streamed in
bounded pieces in both directions (read-file sends a :class:`~agentconn.agent.api.fsutil.FileRange`,
write-file pipes the request body into :func:`~agentconn.agent.api.fsutil.atomic_write`), so a
1 GB file never sits in memory. read-file-lines and edit-files read whole files, as the Go agent
does, bounded by ``max_file_size`` and by the caller's own request respectively; both refuse
what is not a regular file (a device such as ``/dev/zero`` reports size 0 and never ends). A
NUL byte in a path is a 400 naming the field.

edit-files runs in phases: literal duplicates are merged and symlink aliases rejected (step 2);
phase 1 computes every file's new content in memory and collects all errors, answering with the
highest status if any file failed, before anything is written; phase 2 replaces the files one by
one atomically. Successful write-file and edit-files requests report the caller's paths to
``on_paths_touched`` for the request's chat and its ancestors (§3, used by git-watch).
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from agentconn.agent.api import fsutil
from agentconn.agent.api.editing import EditError, apply_edits, unified_diff
from agentconn.agent.api.fsutil import FileError, FileRange, go_quote, os_error_text
from agentconn.agent.api.router import (
    ApiError,
    RequestContext,
    Router,
    decode_body,
    json_ok,
    query_params,
)
from agentconn.agent.options import AgentOptions
from agentconn.proto.common import Response
from agentconn.proto.files import (
    FileEdit,
    FileEditRequest,
    FileEditResponse,
    FileEditResult,
    LSFile,
    LSRequest,
    LSResponse,
    ReadFileLinesResponse,
    Relativity,
    ResolvePathResponse,
)
from agentconn.proto.routes import READ_FILE_LINES_DEFAULTS, QueryValue
from agentconn.web.server import Request, ResponseLike, ServerResponse

__all__ = ["FilesApi", "PathsTouched"]

PathsTouched = Callable[[tuple[uuid.UUID, ...], list[str]], None]
"""``on_paths_touched(chats, paths)``: paths a successful write went to, for each chat."""

_OCTET_STREAM = "application/octet-stream"
#: edit-files hands new content to atomic_write in pieces of this size.
_EDIT_WRITE_CHUNK = 1 << 20


def _api_error(e: FileError) -> ApiError:
    # Paths read from symlinks may hold non-UTF-8 bytes: write them as Go would (U+FFFD).
    return ApiError(e.status, fsutil.json_safe(e.message))


def _no_nul(value: str, name: str) -> None:
    """400 for a NUL byte, which no path or command can hold (the OS would refuse it)."""
    if "\x00" in value:
        raise ApiError(400, f"{name} must not contain a NUL byte")


def _absolute_or_400(path: str) -> None:
    _no_nul(path, "path")
    if not path.startswith("/"):
        raise ApiError(400, f"file path must be absolute: {go_quote(path)}")


def _int(values: dict[str, QueryValue | None], name: str) -> int:
    value = values.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        return READ_FILE_LINES_DEFAULTS.get(name, 0)
    return value


def _str(values: dict[str, QueryValue | None], name: str) -> str:
    value = values.get(name)
    return value if isinstance(value, str) else ""


def _open_nonblocking(path: str) -> int:
    """Open for reading without hanging on a FIFO; the descriptor is then made blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    os.set_blocking(fd, True)
    return fd


async def _open_for_read(path: str) -> int:
    """Open ``path`` in a thread; if the caller is cancelled, the descriptor is still closed."""
    fut = asyncio.get_running_loop().run_in_executor(None, _open_nonblocking, path)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        def close_late(f: asyncio.Future[int]) -> None:
            if not f.cancelled() and f.exception() is None:
                os.close(f.result())

        fut.add_done_callback(close_late)
        raise


def _read_all(fd: int) -> bytes:
    """Read ``fd`` to EOF (Go ``io.ReadAll``: a file that grew is read whole)."""
    chunks: list[bytes] = []
    while True:
        data = os.read(fd, 1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


@dataclass(slots=True)
class _EditEntry:
    """One file of an edit-files request after merging lexical duplicates (§3.6 step 2)."""

    path: str
    edits: list[FileEdit] = field(default_factory=list)


@dataclass(slots=True)
class _PendingEdit:
    """Phase-1 result for one file: where to write what, and the diff inputs."""

    caller_path: str
    resolved: str
    old: str
    new: str
    mode: int


class FilesApi:
    """The file routes of §3.1–§3.6; ``on_paths_touched`` records successful writes (§3)."""

    def __init__(self, options: AgentOptions,
                 on_paths_touched: PathsTouched | None = None) -> None:
        self._options = options
        self._on_paths_touched = on_paths_touched

    def register(self, router: Router) -> None:
        """Serve the file routes."""
        router.add_routes({
            "LS": self._list_directory,
            "ResolvePath": self._resolve_path,
            "ReadFile": self._read_file,
            "ReadFileLines": self._read_file_lines,
            "WriteFile": self._write_file,
            "EditFiles": self._edit_files,
        })

    async def close(self) -> None:
        """Nothing to release; present for the module convention."""

    def _touched(self, ctx: RequestContext, paths: list[str]) -> None:
        chats = ctx.chats
        if chats and self._on_paths_touched is not None:
            self._on_paths_touched(chats, paths)

    # --- §3.1 list-directory ------------------------------------------------------------------

    async def _list_directory(self, request: Request, ctx: RequestContext) -> ResponseLike:
        query = query_params(request, "LS")
        body = await decode_body(request, LSRequest)
        path = _str(query, "path")
        _no_nul(path, "path")
        for part in body.path:
            _no_nul(part, "path")
        try:
            return json_ok(await asyncio.to_thread(self._list, path, body))
        except FileError as e:
            raise _api_error(e) from e

    def _list(self, path: str, body: LSRequest) -> LSResponse:
        if path:
            if not path.startswith("/"):
                raise FileError(500, f"path must be absolute: {go_quote(path)}")
            directory = path
        else:
            if body.relativity == Relativity.HOME.value:
                base = self._options.home
            elif body.relativity == Relativity.ROOT.value:
                base = "/"
            else:
                raise FileError(500, f"unsupported relativity type {go_quote(body.relativity)}")
            directory = fsutil.join_path(base, *body.path)
            if not directory.startswith("/"):  # Go filepath.Abs
                directory = fsutil.join_path(os.getcwd(), directory)
        try:
            fd = _open_nonblocking(directory)
        except OSError as e:
            raise FileError(
                fsutil.status_for_oserror(e),
                f"failed to open directory {go_quote(directory)}: "
                f"{os_error_text('open', directory, e)}",
            ) from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):
                raise FileError(500, f"path {go_quote(directory)} is not a directory")
            entries: list[tuple[bool, bytes, str]] = []
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        try:
                            is_dir = entry.is_dir(follow_symlinks=False)
                        except OSError:
                            continue  # vanished while listing (Go's Readdir skips it too)
                        entries.append((is_dir, os.fsencode(entry.name), entry.name))
            except OSError:
                pass  # Go keeps the entries read before a Readdir error
        finally:
            os.close(fd)
        entries.sort(key=lambda e: (not e[0], e[1]))
        contents = [
            LSFile(
                name=fsutil.json_safe(name),
                absolute_path_string=fsutil.json_safe(fsutil.join_path(directory, name)),
                is_dir=is_dir,
            )
            for is_dir, _, name in entries
        ]
        return LSResponse(
            absolute_path=[p for p in directory.split("/") if p],
            absolute_path_string=directory,
            contents=contents,
        )

    # --- §3.2 resolve-path --------------------------------------------------------------------

    async def _resolve_path(self, request: Request, ctx: RequestContext) -> ResponseLike:
        path = _str(query_params(request, "ResolvePath"), "path")
        _absolute_or_400(path)
        try:
            resolved = await asyncio.to_thread(fsutil.resolve_path, path)
        except FileError as e:
            raise _api_error(e) from e
        return json_ok(ResolvePathResponse(resolved_path=fsutil.json_safe(resolved)))

    # --- §3.3 read-file -----------------------------------------------------------------------

    async def _read_file(self, request: Request, ctx: RequestContext) -> ResponseLike:
        query = query_params(request, "ReadFile")
        path = _str(query, "path")
        offset, limit = _int(query, "offset"), _int(query, "limit")
        _absolute_or_400(path)
        try:
            fd = await _open_for_read(path)
        except OSError as e:
            raise ApiError(fsutil.status_for_oserror(e), os_error_text("open", path, e)) from e
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise ApiError(400, f"open {path}: not a file")
        except OSError as e:
            os.close(fd)
            raise ApiError(500, os_error_text("stat", path, e)) from e
        except ApiError:
            os.close(fd)
            raise
        size = st.st_size
        if limit == 0:
            limit = size
        length = min(max(size - offset, 0), limit)
        mime_type = fsutil.type_by_extension(fsutil.path_ext(path)) or _OCTET_STREAM
        headers = [("Content-Type", mime_type), ("Content-Length", str(length))]
        if length == 0 or request.method == "HEAD":
            os.close(fd)
            return ServerResponse(200, headers, b"")
        return ServerResponse(200, headers, FileRange(fd, offset, length))

    # --- §3.4 read-file-lines -----------------------------------------------------------------

    async def _read_file_lines(self, request: Request, ctx: RequestContext) -> ResponseLike:
        query = query_params(request, "ReadFileLines")
        _no_nul(_str(query, "path"), "path")
        response = await asyncio.to_thread(
            _read_file_lines,
            _str(query, "path"),
            _int(query, "offset"),
            _int(query, "limit"),
            _int(query, "max_file_size"),
            _int(query, "max_line_bytes"),
            _int(query, "max_response_lines"),
            _int(query, "max_response_bytes"),
        )
        return json_ok(response)

    # --- §3.5 write-file ----------------------------------------------------------------------

    async def _write_file(self, request: Request, ctx: RequestContext) -> ResponseLike:
        path = _str(query_params(request, "WriteFile"), "path")
        _absolute_or_400(path)
        try:
            resolved = await asyncio.to_thread(_prepare_write, path)
            mode = await asyncio.to_thread(_existing_mode, resolved)
            await fsutil.atomic_write(resolved, request.iter_body(), mode)
        except FileError as e:
            raise _api_error(e) from e
        self._touched(ctx, [path])
        return json_ok(Response(message=f"Successfully wrote to {go_quote(path)}"))

    # --- §3.6 edit-files ----------------------------------------------------------------------

    async def _edit_files(self, request: Request, ctx: RequestContext) -> ResponseLike:
        req = await decode_body(request, FileEditRequest)
        if not req.files:
            raise ApiError(400, "must specify at least one file")
        for f in req.files:
            _no_nul(f.path, "path")
        try:
            entries = await asyncio.to_thread(_merge_duplicates, req)
        except FileError as e:
            raise _api_error(e) from e

        # Phase 1: every file's new content in memory; nothing is written if any file fails.
        pending: list[_PendingEdit] = []
        messages: list[str] = []
        status = 0
        for entry in entries:
            try:
                pending.append(await asyncio.to_thread(_prepare_edit, entry))
            except FileError as e:
                messages.append(e.message)
                status = max(status, e.status)
        if messages:
            raise ApiError(status, fsutil.json_safe("\n".join(messages)))

        # Phase 2: atomic replace per file, in order (earlier files stay replaced on failure).
        for p in pending:
            data = p.new.encode("utf-8", "surrogateescape")
            try:
                await fsutil.atomic_write(p.resolved, _pieces(data), p.mode)
            except FileError as e:
                raise _api_error(e) from e

        result = FileEditResponse()
        if req.include_diff:
            diffs = []
            for p in pending:
                diff = await asyncio.to_thread(_safe_diff, p.caller_path, p.old, p.new)
                diffs.append(FileEditResult(path=p.caller_path, diff=diff))
            result = FileEditResponse(files=diffs)
        touched: list[str] = []
        for f in req.files:
            if f.path not in touched:
                touched.append(f.path)
        self._touched(ctx, touched)
        return json_ok(result)


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), _EDIT_WRITE_CHUNK):
        yield bytes(view[start : start + _EDIT_WRITE_CHUNK])


def _safe_diff(path: str, old: str, new: str) -> str:
    """The file's diff as JSON-safe text; ``""`` on any failure (§3.6 step 5)."""
    try:
        return fsutil.json_safe(unified_diff(path, old, new))
    except Exception:  # noqa: BLE001 - a diff failure never fails the edit
        return ""


def _read_file_lines(
    path: str,
    offset: int,
    limit: int,
    max_file_size: int,
    max_line_bytes: int,
    max_response_lines: int,
    max_response_bytes: int,
) -> ReadFileLinesResponse:
    """§3.4, step by step; every domain failure is a ``success: false`` body."""

    def fail(message: str) -> ReadFileLinesResponse:
        return ReadFileLinesResponse(success=False, error=message)

    if not path.startswith("/"):
        return fail(f"file path must be absolute: {go_quote(path)}")
    try:
        fd = _open_nonblocking(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return fail(f"file does not exist: {path}")
        if e.errno in (errno.EACCES, errno.EPERM):
            return fail(f"permission denied: {path}")
        return fail(f"open file: {os_error_text('open', path, e)}")
    try:
        try:
            st = os.fstat(fd)
        except OSError as e:
            return fail(f"stat file: {os_error_text('stat', path, e)}")
        if stat.S_ISDIR(st.st_mode):
            return fail(f"not a file: {path}")
        if not stat.S_ISREG(st.st_mode):  # /dev/zero reports size 0 and never ends
            return fail(f"not a regular file: {path}")
        file_size = st.st_size
        if file_size > max_file_size:
            return fail(
                f"file is {file_size} bytes which exceeds the maximum of {max_file_size} bytes. "
                "Use grep, sed, or awk to extract the content you need, or use offset and limit "
                "to read a portion."
            )
        try:
            data = _read_all(fd)
        except OSError as e:
            return fail(f"read file: {os_error_text('read', path, e)}")
    finally:
        os.close(fd)
    if not data:
        return ReadFileLinesResponse(success=True, file_size=file_size)

    lines = data.split(b"\n")
    total_lines = len(lines)
    offset = max(offset, 1)
    if offset > total_lines:
        return fail(f"offset {offset} is beyond the file length of {total_lines} lines")
    if limit <= 0:
        limit = max_response_lines
    start = offset - 1
    end = min(start + limit, total_lines)

    numbered: list[bytes] = []
    total = 0
    for i in range(start, end):
        line = lines[i]
        if len(line) > max_line_bytes:
            line = line[:max_line_bytes] + b"... [truncated]"
        formatted = b"%d\t%s" % (i + 1, line)
        new_total = total + len(formatted) + (1 if numbered else 0)
        if new_total > max_response_bytes:
            return fail(
                f"output would exceed {max_response_bytes} bytes. "
                "Read less at a time using offset and limit parameters."
            )
        if len(numbered) >= max_response_lines:
            return fail(
                f"output would exceed {max_response_lines} lines. "
                "Read less at a time using offset and limit parameters."
            )
        numbered.append(formatted)
        total = new_total
    return ReadFileLinesResponse(
        success=True,
        file_size=file_size,
        total_lines=total_lines,
        lines_read=len(numbered),
        content=fsutil.go_text(b"\n".join(numbered)),
    )


def _prepare_write(path: str) -> str:
    """write-file steps 2–4: resolve, create parents, refuse a directory; the resolved path."""
    try:
        resolved = fsutil.resolve_path(path)
    except FileError as e:
        raise FileError(500, f"resolve symlink {go_quote(path)}: {e.message}") from e
    fsutil.mkdir_all(os.path.dirname(resolved), 0o755)
    return resolved


def _existing_mode(path: str) -> int | None:
    """The mode to keep for an existing target; 400 if it is a directory."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        raise FileError(400, f"open {path}: is a directory")
    return st.st_mode


def _merge_duplicates(req: FileEditRequest) -> list[_EditEntry]:
    """§3.6 step 2: merge entries naming the same lexically-clean path (edits concatenated in
    request order, at the first entry's position); reject entries that reach the same real
    file only through a symlink with 400 ``duplicate file path … aliases …``."""
    entries: list[_EditEntry] = []
    by_key: dict[str, _EditEntry] = {}
    for f in req.files:
        key = f.path
        try:
            key = fsutil.resolve_path(f.path)
        except FileError:
            pass  # phase 1 reports the failure with its own status
        prev = by_key.get(key)
        if prev is None:
            entry = _EditEntry(f.path, list(f.edits))
            by_key[key] = entry
            entries.append(entry)
        elif fsutil.clean_path(prev.path) == fsutil.clean_path(f.path):
            prev.edits.extend(f.edits)
        else:
            raise FileError(
                400,
                f"duplicate file path {go_quote(f.path)} aliases {go_quote(prev.path)} "
                "(same real file): combine edits into a single entry's \"edits\" list",
            )
    return entries


def _prepare_edit(entry: _EditEntry) -> _PendingEdit:
    """Phase 1 for one file: validate, read, apply the edits in memory (§3.6 step 3)."""
    path = entry.path
    if not path:
        raise FileError(400, '"path" is required')
    if not path.startswith("/"):
        raise FileError(400, f"file path must be absolute: {go_quote(path)}")
    if not entry.edits:
        raise FileError(400, "must specify at least one edit")
    try:
        resolved = fsutil.resolve_path(path)
    except FileError as e:
        raise FileError(500, f"resolve symlink {go_quote(path)}: {e.message}") from e
    try:
        fd = _open_nonblocking(resolved)
    except OSError as e:
        raise FileError(fsutil.status_for_oserror(e), os_error_text("open", resolved, e)) from e
    try:
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise FileError(500, os_error_text("stat", resolved, e)) from e
        if stat.S_ISDIR(st.st_mode):
            raise FileError(400, f"open {resolved}: not a file")
        if not stat.S_ISREG(st.st_mode):  # /dev/zero reports size 0 and never ends
            raise FileError(400, f"open {resolved}: not a regular file")
        try:
            data = _read_all(fd)
        except OSError as e:
            raise FileError(500, f"read {resolved}: {os_error_text('read', resolved, e)}") from e
    finally:
        os.close(fd)
    old = data.decode("utf-8", "surrogateescape")
    try:
        new = apply_edits(old, entry.edits)
    except EditError as e:
        raise FileError(400, f"edit {resolved}: {e}") from e
    return _PendingEdit(path, resolved, old, new, st.st_mode)
