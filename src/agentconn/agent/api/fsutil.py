"""File-system helpers shared by the agent's file endpoints (agent-api.md §3).

Theory of operation: the file endpoints answer exactly as the Go agent does, so this module
reproduces the few Go library behaviours they expose on the wire:

* paths: ``filepath.Clean``/``Join``/``Ext`` (:func:`clean_path`, :func:`join_path`,
  :func:`path_ext`) and the agent's symlink resolution (:func:`resolve_path`, §3.2);
* error texts: Go's ``*PathError`` strings such as ``open /x: no such file or directory``
  (:func:`os_error_text`), the status mapping not-found 404 / permission 403 / else 500
  (:func:`status_for_oserror`) and ``%q`` quoting (:func:`go_quote`);
* JSON text: Go writes each invalid UTF-8 byte of a string as U+FFFD (:func:`go_text`);
* MIME types: ``mime.TypeByExtension`` with Go's builtin table first, then the system's
  shared-mime-info ``globs2`` or ``mime.types`` files, loaded the same way (:func:`type_by_extension`).

File data moves in bounded pieces: :func:`atomic_write` streams an async iterable of chunks into a
temp file next to the target (``.<basename>.tmp.<8 hex>``), fsyncs, renames it over the target,
and on *any* failure, cancellation included, removes the temp file so the target is untouched.
:class:`FileRange` streams a byte range of an open file as a response body. Blocking calls run in
the default executor; a blocking call that owns a file descriptor is always awaited to completion,
even when the awaiting task is cancelled, so the descriptor is never closed under a running read or
write. Failures meant for the client are raised as :class:`FileError` (status + message).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import posixpath
import re
import secrets
import stat
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TypeVar

from agentconn.errors import AgentConnError

__all__ = [
    "MAX_SYMLINK_HOPS",
    "FileError",
    "FileRange",
    "atomic_write",
    "clean_path",
    "go_quote",
    "go_text",
    "join_path",
    "json_safe",
    "mkdir_all",
    "os_error_text",
    "path_ext",
    "resolve_path",
    "run_blocking",
    "status_for_oserror",
    "type_by_extension",
]

_log = logging.getLogger("agentconn.agent.fsutil")

T = TypeVar("T")

#: §3.2: more symlink hops than this while resolving a path is an error.
MAX_SYMLINK_HOPS = 40

#: Request-body bytes gathered before one write to the temp file (bounds memory per upload).
_WRITE_BUFFER = 1 << 20
#: Bytes per read when streaming a file range.
_READ_CHUNK = 256 * 1024


class FileError(AgentConnError):
    """A file operation failed in a way the client sees: HTTP ``status`` and ``message``."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


# --- Go-compatible text -----------------------------------------------------------------------

_ESCAPED_BYTES = {0xDC80 + i: 0xFFFD for i in range(128)}


def go_text(data: bytes) -> str:
    """``data`` as Go's JSON encoder writes a string: every invalid UTF-8 byte becomes U+FFFD.

    ``surrogateescape`` maps each invalid byte (always ≥ 0x80) to one lone surrogate, which is
    then replaced, so the result matches Go byte for byte (Python's ``replace`` would fold a
    truncated multi-byte sequence into a single U+FFFD).
    """
    return data.decode("utf-8", "surrogateescape").translate(_ESCAPED_BYTES)


def json_safe(text: str) -> str:
    """``text`` (possibly holding ``surrogateescape`` bytes) as Go would serialise it."""
    return go_text(text.encode("utf-8", "surrogateescape"))


_SIMPLE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string (``strconv.Quote``): double quotes, Go escapes.

    ``surrogateescape`` bytes are written as ``\\xNN`` like Go's invalid bytes.
    """
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")  # not a valid rune: Go writes the replacement character
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _errno_text(exc: OSError) -> str:
    if exc.errno is None:
        return exc.strerror or str(exc)
    text = os.strerror(exc.errno)
    # Go's syscall error strings are glibc's with a lower-case first letter.
    return text[:1].lower() + text[1:]


def os_error_text(op: str, path: str, exc: OSError) -> str:
    """Go's ``*PathError`` text: ``"<op> <path>: <errno text>"`` (``open /x: permission denied``)."""
    return f"{op} {path}: {_errno_text(exc)}"


def status_for_oserror(exc: OSError) -> int:
    """§3: not-found → 404, permission (EACCES/EPERM) → 403, anything else → 500."""
    if exc.errno == errno.ENOENT:
        return 404
    if exc.errno in (errno.EACCES, errno.EPERM):
        return 403
    return 500


def _is_permission(exc: OSError) -> bool:
    return exc.errno in (errno.EACCES, errno.EPERM)


# --- Go path semantics ------------------------------------------------------------------------


def clean_path(path: str) -> str:
    """Go's ``filepath.Clean`` on Unix (``""`` → ``"."``; a leading ``//`` becomes ``/``)."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def join_path(*elems: str) -> str:
    """Go's ``filepath.Join``: join the non-empty elements with ``/`` and clean the result."""
    parts = [e for e in elems if e]
    return clean_path("/".join(parts)) if parts else ""


def path_ext(path: str) -> str:
    """Go's ``filepath.Ext``: from the last ``.`` of the final element, or ``""``."""
    for i in range(len(path) - 1, -1, -1):
        if path[i] == "/":
            break
        if path[i] == ".":
            return path[i:]
    return ""


def resolve_path(path: str) -> str:
    """Resolve ``path`` through symlinks the way the agent does (agent-api.md §3.2).

    The path is cleaned lexically, then resolved from the leaf upwards: an existing component
    that is a symlink is replaced by its target (a relative target is taken relative to the
    link's directory) and resolution restarts on that; a missing component is kept as is and its
    parent is resolved instead, so missing trailing components survive. A component under a
    regular file (``ENOTDIR``) counts as missing, so write-file can report ``ENOTDIR`` as 400.

    Raises :class:`FileError` (400) for a relative path, ``(403|500)`` with Go's ``lstat``/
    ``readlink`` error text, and 500 ``too many levels of symlinks resolving "<p>"`` after more
    than :data:`MAX_SYMLINK_HOPS` hops. Blocking: call it in a thread.
    """
    if not path.startswith("/"):
        raise FileError(400, f"file path must be absolute: {go_quote(path)}")
    current = clean_path(path)
    hops = 0
    suffix: list[str] = []  # components below `current`, leaf last-in-first-out
    while True:
        if hops > MAX_SYMLINK_HOPS:
            raise FileError(500, f"too many levels of symlinks resolving {go_quote(current)}")
        try:
            st = os.lstat(current)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise FileError(
                    403 if _is_permission(e) else 500, os_error_text("lstat", current, e)
                ) from e
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(current)
            except OSError as e:
                raise FileError(
                    403 if _is_permission(e) else 500, os_error_text("readlink", current, e)
                ) from e
            if not target.startswith("/"):
                target = join_path(posixpath.dirname(current), target)
            current = clean_path(target)
            hops += 1
            continue
        parent = posixpath.dirname(current)
        if parent == current:  # reached "/"
            return join_path(current, *reversed(suffix))
        suffix.append(posixpath.basename(current))
        current = parent


def mkdir_all(path: str, mode: int = 0o755) -> None:
    """Go's ``os.MkdirAll``: create ``path`` and missing parents with ``mode`` (before umask).

    Raises :class:`FileError` with Go's ``mkdir <p>: …`` text: 403 on permission, 400 when an
    existing component is not a directory (``ENOTDIR``), else 500. Blocking.
    """
    missing: list[str] = []
    current = path.rstrip("/") or "/"
    while True:
        try:
            st = os.stat(current)
        except OSError:
            missing.append(current)
            parent = posixpath.dirname(current)
            if parent == current:
                break
            current = parent
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise FileError(400, os_error_text("mkdir", current, OSError(errno.ENOTDIR, "")))
        break
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except OSError as e:
            try:
                if stat.S_ISDIR(os.lstat(directory).st_mode):
                    continue
            except OSError:
                pass
            if _is_permission(e):
                status = 403
            elif e.errno == errno.ENOTDIR:
                status = 400
            else:
                status = 500
            raise FileError(status, os_error_text("mkdir", directory, e)) from e


# --- blocking calls from async code -----------------------------------------------------------


async def run_blocking(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` in the default executor and wait for it to **finish**.

    If the caller is cancelled meanwhile, the call is still awaited to completion before the
    ``CancelledError`` propagates, so a file descriptor it uses can be closed safely afterwards.
    """
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, fn, *args)
    cancelled = False
    while not fut.done():
        try:
            # asyncio.wait never cancels what it waits for, unlike a plain await.
            await asyncio.wait({fut})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return fut.result()


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _temp_path(path: str) -> str:
    directory, base = posixpath.split(path)
    return posixpath.join(directory, f".{base}.tmp.{secrets.token_hex(4)}")


async def atomic_write(path: str, chunks: AsyncIterable[bytes], mode: int | None) -> int:
    """Replace ``path`` atomically with the bytes of ``chunks``; return the byte count.

    agent-api.md §3.5 step 5: the data goes to ``.<basename>.tmp.<8 hex>`` in the same directory
    (created exclusively, mode 0666 before umask) in bounded pieces, is fsynced and closed; the
    temp file is ``chmod``-ed to ``mode`` when given (a failure there is only logged) and renamed
    over ``path``. Any failure — including an error or cancellation while iterating ``chunks`` —
    removes the temp file and leaves ``path`` untouched.

    Raises :class:`FileError`: creating the temp file fails → 403 (permission) / 500 with the OS
    error text; reading ``chunks`` or writing fails → 500 ``write <path>: <err>``; the rename
    fails → 403 / 500 ``write <path>: rename …``. ``CancelledError`` propagates after cleanup.
    """
    tmp = _temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise FileError(403 if _is_permission(e) else 500, os_error_text("open", tmp, e)) from e
    fd_open = True
    renamed = False
    total = 0
    try:
        buf = bytearray()
        it = chunks.__aiter__()
        while True:
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                break
            except Exception as e:
                raise FileError(500, f"write {path}: {e}") from e
            buf += chunk
            total += len(chunk)
            if len(buf) >= _WRITE_BUFFER:
                await _write_chunk(fd, buf, path, tmp)
                buf.clear()
        if buf:
            await _write_chunk(fd, buf, path, tmp)
            buf.clear()
        try:
            await run_blocking(os.fsync, fd)
        except OSError as e:
            raise FileError(500, f"write {path}: {os_error_text('sync', tmp, e)}") from e
        fd_open = False
        try:
            os.close(fd)
        except OSError as e:
            raise FileError(500, f"write {path}: {os_error_text('close', tmp, e)}") from e
        if mode is not None:
            try:
                os.chmod(tmp, stat.S_IMODE(mode))
            except OSError as e:
                _log.warning("unable to set file permissions on %s: %s", path, e)
        try:
            os.rename(tmp, path)
        except OSError as e:
            status = 403 if _is_permission(e) else 500
            raise FileError(status, f"write {path}: rename {tmp} {path}: {_errno_text(e)}") from e
        renamed = True
        return total
    finally:
        if fd_open:
            try:
                os.close(fd)
            except OSError:
                pass
        if not renamed:
            try:
                os.unlink(tmp)
            except OSError as e:
                _log.warning("unable to clean up temp file %s: %s", tmp, e)


async def _write_chunk(fd: int, buf: bytearray, path: str, tmp: str) -> None:
    try:
        await run_blocking(_write_all, fd, buf)
    except OSError as e:
        raise FileError(500, f"write {path}: {os_error_text('write', tmp, e)}") from e


class FileRange:
    """A response body streaming ``length`` bytes of open file ``fd`` from ``offset``.

    Owns ``fd``: it is closed when the stream ends, fails, is abandoned, or :meth:`close` is
    called (also on garbage collection, for a body that is never iterated). Stops early if the
    file shrinks, so the peer sees a short body rather than invented bytes.
    """

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd = fd
        self._offset = offset
        self._length = length
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        os.close(self._fd)

    def __del__(self) -> None:
        if not self._closed:
            self.close()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            pos = self._offset
            remaining = self._length
            while remaining > 0:
                data = await run_blocking(os.pread, self._fd, min(_READ_CHUNK, remaining), pos)
                if not data:
                    return
                pos += len(data)
                remaining -= len(data)
                yield data
        finally:
            self.close()


# --- MIME types (Go mime.TypeByExtension) -----------------------------------------------------

#: Go ``mime.builtinTypesLower`` (src/mime/type.go); loaded before the system tables.
_GO_BUILTIN_TYPES = {
    ".avif": "image/avif",
    ".css": "text/css; charset=utf-8",
    ".gif": "image/gif",
    ".htm": "text/html; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".jpeg": "image/jpeg",
    ".jpg": "image/jpeg",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".mjs": "text/javascript; charset=utf-8",
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".webp": "image/webp",
    ".xml": "text/xml; charset=utf-8",
}

#: Go src/mime/type_unix.go: the first globs2 file that opens wins; else every mime.types file.
_MIME_GLOBS = ("/usr/local/share/mime/globs2", "/usr/share/mime/globs2")
_MIME_TYPE_FILES = (
    "/etc/mime.types",
    "/etc/apache2/mime.types",
    "/etc/apache/mime.types",
    "/etc/httpd/conf/mime.types",
)

# RFC 2045 token: printable ASCII without space and tspecials (Go mime/grammar.go).
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z|~]+$")
_PARAM_RE = re.compile(r'^\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;"]+)\s*$')


class _MimeTable:
    def __init__(self) -> None:
        self.types: dict[str, str] = dict(_GO_BUILTIN_TYPES)
        self.lower: dict[str, str] = dict(_GO_BUILTIN_TYPES)

    def set_type(self, ext: str, mime_type: str) -> None:
        """Go ``setExtensionType``: text types get ``charset=utf-8`` unless they name one."""
        parsed = _parse_media_type(mime_type)
        if parsed is None:
            return
        media, params = parsed
        if mime_type.startswith("text/") and not params.get("charset"):
            params["charset"] = "utf-8"
            mime_type = _format_media_type(media, params)
        self.types[ext] = mime_type
        self.lower[ext.lower()] = mime_type

    def load_globs(self, filename: str) -> bool:
        try:
            with open(filename, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError:
            return False
        for line in text.split("\n"):
            fields = line.rstrip("\r").split(":")
            if len(fields) < 3 or len(fields[0]) < 1 or len(fields[2]) < 3:
                continue
            if fields[0][0] == "#" or fields[2][0] != "*" or fields[2][1] != ".":
                continue
            extension = fields[2][1:]
            if "?" in extension or "*" in extension:
                continue  # a glob, not a bare extension
            if "[" in extension:
                for ext in _expand_glob(extension) or ():
                    self.set_type(ext, fields[1])
                continue
            if extension in self.types:
                continue  # the file is in weight order: the first entry wins
            self.set_type(extension, fields[1])
        return True

    def load_mime_types(self, filename: str) -> None:
        try:
            with open(filename, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError:
            return
        for line in text.split("\n"):
            fields = line.split()
            if len(fields) <= 1 or fields[0][0] == "#":
                continue
            for ext in fields[1:]:
                if ext[0] == "#":
                    break
                self.set_type("." + ext, fields[0])


def _parse_media_type(value: str) -> tuple[str, dict[str, str]] | None:
    """A simplified Go ``mime.ParseMediaType``: ``None`` where Go reports an error."""
    media, _, rest = value.partition(";")
    media = media.strip()
    major, slash, minor = media.partition("/")
    if not _TOKEN_RE.match(major) or (slash and not _TOKEN_RE.match(minor)):
        return None
    params: dict[str, str] = {}
    for piece in rest.split(";") if rest else ():
        if not piece.strip():
            continue
        m = _PARAM_RE.match(piece)
        if m is None:
            return None
        val = m.group(2)
        if val.startswith('"'):
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        params[m.group(1).lower()] = val
    return media.lower(), params


def _format_media_type(media: str, params: dict[str, str]) -> str:
    """Go ``mime.FormatMediaType``: lower-case type, parameters sorted, quoted when needed."""
    out = [media.lower()]
    for name in sorted(params):
        val = params[name]
        if not _TOKEN_RE.match(val):
            val = '"' + val.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(f"; {name}={val}")
    return "".join(out)


def _expand_glob(glob: str) -> list[str] | None:
    """Go ``mime.expand``: expand one ``[...]`` character class of a globs2 pattern."""
    opening = closing = -1
    prefix: list[str] = []
    suffix: list[str] = []
    target = prefix
    for i, c in enumerate(glob):
        if ord(c) > 0x7F:
            return None
        if c == "[":
            if target and target[-1] == "\\":
                target[-1] = c
                continue
            if opening != -1:
                if closing != -1:
                    return None
                continue
            opening = i
            target = suffix
        elif c == "]":
            if opening == -1:
                target.append("]")
                continue
            if i == opening + 1:
                continue
            closing = i
        else:
            if opening > -1 and closing == -1:
                continue
            target.append(c)
    if opening == -1 and closing == -1:
        return ["".join(prefix)]
    if opening != -1 and closing == -1:
        return ["".join(prefix) + glob[opening:]]
    expansion = _expand_range(glob[opening + 1 : closing])
    if expansion is None:
        return None
    return ["".join(prefix) + ch + "".join(suffix) for ch in expansion]


def _expand_range(spec: str) -> list[str] | None:
    out: list[str] = []
    i = 0
    while i < len(spec):
        c = spec[i]
        if c == "!" and i == 0:
            return None  # negated classes are not expanded
        if c != "-":
            out.append(c)
            i += 1
            continue
        if i == 0 or i == len(spec) - 1:
            out.append("-")
            i += 1
            continue
        lo, hi = ord(spec[i - 1]), ord(spec[i + 1])
        if hi < lo:
            return None
        out.extend(chr(x) for x in range(lo + 1, hi + 1) if chr(x) != "/")
        i += 2
    return out


_mime_table: _MimeTable | None = None
_mime_lock = threading.Lock()


def _load_mime_table() -> _MimeTable:
    global _mime_table
    with _mime_lock:
        if _mime_table is None:
            table = _MimeTable()
            if not any(table.load_globs(f) for f in _MIME_GLOBS):
                for f in _MIME_TYPE_FILES:
                    table.load_mime_types(f)
            _mime_table = table
        return _mime_table


def type_by_extension(ext: str) -> str:
    """Go ``mime.TypeByExtension(ext)``: case-sensitive lookup, then lower-case; ``""`` if unknown.

    The first call reads the system tables (blocking, once).
    """
    table = _mime_table or _load_mime_table()
    found = table.types.get(ext)
    if found is not None:
        return found
    return table.lower.get(ext.lower(), "")
