"""The agent's file endpoints over real loopback HTTP (agent-api.md §3.1–§3.6).

Every test drives :class:`FilesApi` through ``make_api`` on real files. Permission (403) cases
need a process that permission bits apply to: when the suite runs as root (as CI does), the
request is made with the effective uid switched to ``nobody`` for its duration
(:func:`unprivileged`), which works the same as running unprivileged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agentconn.agent.api import fsutil
from agentconn.agent.api.files import FilesApi
from agentconn.agent.api.router import Router
from agentconn.agent.options import AgentOptions
from agentconn.proto.routes import build_target, route

NOBODY = 65534
UMASK = os.umask(0)
os.umask(UMASK)

NOT_FOUND_TEXT = (
    "search string not found in file. Verify the search string matches the file content "
    "exactly, including whitespace and indentation"
)


class Files:
    """A FilesApi served over HTTP plus what it reported to ``on_paths_touched``."""

    def __init__(self, api: Any, router: Router, touched: list[tuple[tuple[uuid.UUID, ...], list[str]]]):
        self.api = api
        self.router = router
        self.touched = touched

    async def call(self, method: str, name: str, body: Any = None, headers: dict[str, str] | None = None,
                   **query: Any) -> Any:
        target = build_target(route(name), query=query) if query else route(name).path
        return await self.api.call(method, target, body=body, headers=headers)

    async def ls(self, body: Any, **query: Any) -> Any:
        return await self.call("POST", "LS", body, **query)

    async def resolve(self, path: str) -> Any:
        return await self.call("GET", "ResolvePath", path=path)

    async def read(self, path: str, **query: Any) -> Any:
        return await self.call("GET", "ReadFile", path=path, **query)

    async def lines(self, path: str, **query: Any) -> Any:
        return await self.call("GET", "ReadFileLines", path=path, **query)

    async def write(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return await self.call("POST", "WriteFile", body, headers, path=path)

    async def edit(self, body: Any, headers: dict[str, str] | None = None) -> Any:
        return await self.call("POST", "EditFiles", body, headers)


@pytest.fixture
async def files(make_api: Any, tmp_path: Path) -> Files:
    home = tmp_path / "home"
    home.mkdir()
    touched: list[tuple[tuple[uuid.UUID, ...], list[str]]] = []
    router = Router()
    FilesApi(AgentOptions(home=str(home)), lambda chats, paths: touched.append((chats, paths))).register(router)
    return Files(await make_api(router), router, touched)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can traverse (tmp_path's parents are private to the owner)."""
    d = Path(tempfile.mkdtemp(prefix="agentconn-files-"))
    d.chmod(0o755)
    yield d
    for root, dirs, _ in os.walk(d):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    shutil.rmtree(d)


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Make permission bits apply: as root, act as ``nobody`` until the block ends."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


def chat_headers() -> tuple[dict[str, str], tuple[uuid.UUID, ...]]:
    chat, parent = uuid.uuid4(), uuid.uuid4()
    headers = {"Coder-Chat-Id": str(chat), "Coder-Ancestor-Chat-Ids": orjson.dumps([str(parent)]).decode()}
    return headers, (chat, parent)


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def leftovers(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if ".tmp." in n]


# --- §3.1 list-directory ---------------------------------------------------------------------


async def test_ls_home_lists_everything_dirs_first_bytewise(files: Files, tmp_path: Path) -> None:
    home = tmp_path / "home"
    for d in ("repos", "Downloads", ".hidden_dir", "_under"):
        (home / d).mkdir()
    for f in ("b.txt", ".dotfile", "A.txt", "Zeta", "ä-umlaut"):
        (home / f).write_text("x")
    (home / "link_to_dir").symlink_to(home / "repos")
    r = await files.ls({"path": [], "relativity": "home"})
    assert r.status == 200, r.body
    body = r.json()
    assert body["absolute_path"] == [p for p in str(home).split("/") if p]
    assert body["absolute_path_string"] == str(home)
    names = [(e["name"], e["is_dir"]) for e in body["contents"]]
    assert names == [
        (".hidden_dir", True), ("Downloads", True), ("_under", True), ("repos", True),
        (".dotfile", False), ("A.txt", False), ("Zeta", False), ("b.txt", False),
        ("link_to_dir", False),  # lstat-style: a symlink to a directory is not a directory
        ("ä-umlaut", False),
    ]
    assert body["contents"][0]["absolute_path_string"] == str(home / ".hidden_dir")


async def test_ls_body_path_is_joined_and_cleaned(files: Files, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "repos" / "coder").mkdir(parents=True)
    (home / "repos" / "coder" / "main.go").write_text("package main\n")
    r = await files.ls({"path": ["repos", "coder"], "relativity": "home"})
    assert r.json() == {
        "absolute_path": [p for p in str(home / "repos" / "coder").split("/") if p],
        "absolute_path_string": str(home / "repos" / "coder"),
        "contents": [{"name": "main.go", "absolute_path_string": str(home / "repos" / "coder" / "main.go"),
                      "is_dir": False}],
    }
    r = await files.ls({"path": ["repos", "..", "repos", "coder"], "relativity": "home"})
    assert r.json()["absolute_path_string"] == str(home / "repos" / "coder")
    parts = [p for p in str(tmp_path).split("/") if p]
    r = await files.ls({"path": parts, "relativity": "root"})
    assert r.status == 200 and r.json()["absolute_path_string"] == str(tmp_path)
    assert [e["name"] for e in r.json()["contents"]] == ["home"]


async def test_ls_query_path_wins_but_body_is_required(files: Files, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    r = await files.ls({"relativity": "bogus", "path": ["nowhere"]}, path=str(tmp_path))
    assert r.status == 200 and r.json()["absolute_path_string"] == str(tmp_path)
    r = await files.ls(b"", path=str(tmp_path))
    assert r.status == 400 and r.json()["message"] == "Request body must be valid JSON."
    r = await files.ls({}, path="relative/dir")
    assert (r.status, r.json()) == (500, {"message": 'path must be absolute: "relative/dir"'})
    r = await files.api.call("POST", "/api/v0/list-directory?path=/&extra=1", body={})
    assert r.status == 400 and r.json()["message"] == "Query parameters have invalid values."
    r = await files.ls({}, path="/")
    assert r.status == 200
    assert (r.json()["absolute_path"], r.json()["absolute_path_string"]) == ([], "/")


async def test_ls_empty_dir_gives_empty_list(files: Files, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = await files.ls({}, path=str(tmp_path / "empty"))
    assert r.status == 200
    assert b'"contents":[]' in r.body and r.json()["contents"] == []


async def test_non_utf8_names_are_written_like_go(files: Files, tmp_path: Path) -> None:
    d = tmp_path / "names"
    (d / "zz").mkdir(parents=True)
    raw = os.fsencode(d) + b"/caf\xe9"
    os.close(os.open(raw, os.O_CREAT | os.O_WRONLY, 0o644))
    r = await files.ls({}, path=str(d))
    assert r.status == 200
    assert [(e["name"], e["is_dir"]) for e in r.json()["contents"]] == [("zz", True), ("caf\ufffd", False)]
    os.symlink(raw, os.fsencode(d) + b"/link")
    r = await files.resolve(str(d / "link"))
    assert (r.status, r.json()) == (200, {"resolved_path": f"{d}/caf\ufffd"})


async def test_ls_errors(files: Files, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    r = await files.ls({}, path=str(missing))
    assert (r.status, r.json()["message"]) == (
        404, f'failed to open directory "{missing}": open {missing}: no such file or directory')
    (tmp_path / "file").write_text("x")
    r = await files.ls({}, path=str(tmp_path / "file"))
    assert (r.status, r.json()["message"]) == (500, f'path "{tmp_path / "file"}" is not a directory')
    r = await files.ls({"path": [], "relativity": "bogus"})
    assert (r.status, r.json()["message"]) == (500, 'unsupported relativity type "bogus"')
    r = await files.ls({"path": []})
    assert (r.status, r.json()["message"]) == (500, 'unsupported relativity type ""')


async def test_ls_permission_denied(files: Files, open_dir: Path) -> None:
    locked = open_dir / "locked"
    locked.mkdir()
    locked.chmod(0o000)
    with unprivileged():
        r = await files.ls({}, path=str(locked))
    assert (r.status, r.json()["message"]) == (
        403, f'failed to open directory "{locked}": open {locked}: permission denied')


# --- §3.2 resolve-path -----------------------------------------------------------------------


async def test_resolve_path_through_symlink_chains(files: Files, tmp_path: Path) -> None:
    real = tmp_path / "real-dir"
    real.mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rel-link").symlink_to("../real-dir")  # relative to the link's dir
    (tmp_path / "abs-link").symlink_to(real)
    (tmp_path / "chain").symlink_to("sub/rel-link")  # link → link → dir
    for link in ("sub/rel-link", "abs-link", "chain"):
        r = await files.resolve(f"{tmp_path}/{link}/NEW.md")
        assert (r.status, r.json()) == (200, {"resolved_path": f"{real}/NEW.md"}), link
    r = await files.resolve(f"{tmp_path}/chain/missing/deeper/x.txt")
    assert r.json() == {"resolved_path": f"{real}/missing/deeper/x.txt"}
    r = await files.resolve(f"{tmp_path}/./sub/../abs-link//")
    assert r.json() == {"resolved_path": str(real)}
    r = await files.resolve(f"{tmp_path}/nothing/here")
    assert r.json() == {"resolved_path": f"{tmp_path}/nothing/here"}
    # A link whose target is missing still resolves to where a write would land.
    (tmp_path / "dangling").symlink_to("gone/new.txt")
    r = await files.resolve(f"{tmp_path}/dangling")
    assert r.json() == {"resolved_path": f"{tmp_path}/gone/new.txt"}


async def test_resolve_path_hop_limit_and_loops(files: Files, tmp_path: Path) -> None:
    (tmp_path / "target").write_text("x")
    # l0 → l1 → … → l40 → target: resolving l0 takes 41 hops, l1 takes 40.
    for i in range(41):
        nxt = f"l{i + 1}" if i < 40 else "target"
        (tmp_path / f"l{i}").symlink_to(nxt)
    r = await files.resolve(str(tmp_path / "l1"))
    assert r.json() == {"resolved_path": str(tmp_path / "target")}
    r = await files.resolve(str(tmp_path / "l0"))
    assert r.status == 500
    assert r.json()["message"] == f'too many levels of symlinks resolving "{tmp_path / "target"}"'
    (tmp_path / "self").symlink_to("self")
    r = await files.resolve(str(tmp_path / "self"))
    assert (r.status, r.json()) == (500, {"message": f'too many levels of symlinks resolving "{tmp_path / "self"}"'})
    (tmp_path / "ping").symlink_to("pong")
    (tmp_path / "pong").symlink_to("ping")
    r = await files.resolve(str(tmp_path / "ping"))  # hop 41 lands on "pong"
    assert (r.status, r.json()) == (500, {"message": f'too many levels of symlinks resolving "{tmp_path / "pong"}"'})
    # Below a looping link the kernel itself gives up (ELOOP): Go's lstat error text, 500.
    r = await files.resolve(str(tmp_path / "ping" / "child"))
    assert (r.status, r.json()) == (
        500, {"message": f"lstat {tmp_path}/ping/child: too many levels of symbolic links"})


async def test_resolve_path_errors(files: Files, open_dir: Path) -> None:
    r = await files.resolve("rel/x")
    assert (r.status, r.json()) == (400, {"message": 'file path must be absolute: "rel/x"'})
    r = await files.api.call("GET", "/api/v0/resolve-path")
    assert r.status == 400 and '"path" is required' in r.json()["validations"][0]["detail"]
    locked = open_dir / "locked"
    locked.mkdir()
    locked.chmod(0o000)
    with unprivileged():
        r = await files.resolve(str(locked / "x"))
    assert (r.status, r.json()) == (403, {"message": f"lstat {locked}/x: permission denied"})


# --- §3.3 read-file --------------------------------------------------------------------------


async def test_read_file_ranges(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "digits.txt"
    p.write_bytes(b"0123456789")
    cases = [({}, b"0123456789"), ({"offset": 3, "limit": 4}, b"3456"), ({"offset": 8, "limit": 100}, b"89"),
             ({"limit": 2}, b"01"), ({"offset": 10}, b""), ({"offset": 100, "limit": 5}, b"")]
    for query, expected in cases:
        r = await files.read(str(p), **query)
        assert (r.status, r.body) == (200, expected), query
        assert r.headers["content-length"] == str(len(expected))
        assert r.headers["content-type"] == "text/plain; charset=utf-8"


async def test_read_file_head_and_fifo(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "page.html"
    p.write_bytes(b"<p>hi</p>")
    r = await files.call("HEAD", "ReadFile", path=str(p))
    assert (r.status, r.body, r.headers["content-length"]) == (200, b"", "9")
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: opening must not hang the request
    r = await files.read(str(fifo))
    assert (r.status, r.body, r.headers["content-type"]) == (200, b"", "application/octet-stream")


async def test_read_file_mime_from_extension_only(files: Files, tmp_path: Path) -> None:
    expected = {
        "a.png": "image/png", "a.PNG": "image/png", "a.json": "application/json",
        "a.html": "text/html; charset=utf-8", "a.js": "text/javascript; charset=utf-8",
        "a.svg": "image/svg+xml", "a.xml": "text/xml; charset=utf-8", "a.txt": "text/plain; charset=utf-8",
        "page.zzqx": "application/octet-stream", "Makefile": "application/octet-stream",
    }
    for name, mime in expected.items():
        (tmp_path / name).write_bytes(b"<html><body>no sniffing</body></html>")
        r = await files.read(str(tmp_path / name))
        assert (r.status, r.headers["content-type"]) == (200, mime), name


async def test_read_file_errors(files: Files, tmp_path: Path, open_dir: Path) -> None:
    r = await files.read(str(tmp_path))
    assert (r.status, r.json()) == (400, {"message": f"open {tmp_path}: not a file"})
    r = await files.read(str(tmp_path / "missing"))
    assert (r.status, r.json()) == (404, {"message": f"open {tmp_path}/missing: no such file or directory"})
    r = await files.read("rel.txt")
    assert (r.status, r.json()) == (400, {"message": 'file path must be absolute: "rel.txt"'})
    r = await files.api.call("GET", f"/api/v0/read-file?path={tmp_path}/x&offset=-1")
    assert r.status == 400 and "value is negative" in r.json()["validations"][0]["detail"]
    r = await files.api.call("GET", f"/api/v0/read-file?path={tmp_path}/x&limit=abc")
    assert r.status == 400
    secret = open_dir / "secret.txt"
    secret.write_text("top secret")
    secret.chmod(0o000)
    with unprivileged():
        r = await files.read(str(secret))
    assert (r.status, r.json()) == (403, {"message": f"open {secret}: permission denied"})


async def test_read_file_streams_large_file(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    size = 32 << 20
    with p.open("wb") as f:
        for i in range(size >> 20):
            f.write(i.to_bytes(4, "big") * (1 << 18))
    digest = sha256_of(p)
    got = hashlib.sha256()
    received = 0
    tracemalloc.start()
    try:
        resp = await files.api.client.request(
            "GET", build_target(route("ReadFile"), query={"path": str(p)}),
            host=files.api.host, port=files.api.port)
        async with resp:
            assert resp.status == 200
            assert dict(resp.headers.items())["content-length"] == str(size)
            async for chunk in resp.iter_bytes():
                got.update(chunk)
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (received, got.hexdigest()) == (size, digest)
    assert peak < 8 << 20, f"peak traced memory {peak} bytes while streaming {size}"


# --- §3.4 read-file-lines --------------------------------------------------------------------


async def test_read_file_lines_content(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "three.txt"
    p.write_bytes(b"line1\nline2\nline3")
    r = await files.lines(str(p))
    assert r.status == 200
    assert r.body == (b'{"success":true,"file_size":17,"total_lines":3,"lines_read":3,'
                      b'"content":"1\\tline1\\n2\\tline2\\n3\\tline3"}\n')
    r = await files.lines(str(p), offset=2, limit=1)
    assert r.json() == {"success": True, "file_size": 17, "total_lines": 3, "lines_read": 1, "content": "2\tline2"}
    r = await files.lines(str(p), offset=0, limit=2)  # offset < 1 counts as 1
    assert r.json()["content"] == "1\tline1\n2\tline2"
    r = await files.lines(str(p), offset=3, limit=10)
    assert r.json()["content"] == "3\tline3"
    r = await files.lines(str(p), offset=4)
    assert r.json() == {"success": False, "error": "offset 4 is beyond the file length of 3 lines"}

    p.write_bytes(b"a\nb\n")  # a trailing newline yields a final empty line
    r = await files.lines(str(p))
    assert r.json() == {"success": True, "file_size": 4, "total_lines": 3, "lines_read": 3, "content": "1\ta\n2\tb\n3\t"}
    p.write_bytes(b"a\r\nb\r\n")  # CR is kept
    assert (await files.lines(str(p))).json()["content"] == "1\ta\r\n2\tb\r\n3\t"
    p.write_bytes(b"")
    r = await files.lines(str(p))
    assert r.body == b'{"success":true}\n'


async def test_read_file_lines_cuts_long_lines_by_bytes(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "long.txt"
    p.write_bytes(b"abcdef\nxy\n" + "aé".encode() + b"\n" + b"z" * 2000)
    r = await files.lines(str(p), max_line_bytes=3, limit=2)
    assert r.json()["content"] == "1\tabc... [truncated]\n2\txy"
    # The cut may split the 2-byte "é": the dangling byte is written as U+FFFD, as Go does.
    r = await files.lines(str(p), offset=3, limit=1, max_line_bytes=2)
    assert r.json()["content"] == "3\ta\ufffd... [truncated]"
    r = await files.lines(str(p), offset=4)  # default max_line_bytes = 1024
    assert r.json()["content"] == "4\t" + "z" * 1024 + "... [truncated]"
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe \xe2\x82 end")
    r = await files.lines(str(tmp_path / "bad.txt"))
    assert r.json()["content"] == "1\tok \ufffd\ufffd \ufffd\ufffd end"


async def test_read_file_lines_limits(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    p.write_bytes(b"aaaa\nbbbb\ncccc")  # formatted: "1\taaaa" (6) + "\n" + "2\tbbbb" (6) = 13
    r = await files.lines(str(p), limit=2, max_response_bytes=12)
    assert r.json() == {"success": False, "error": "output would exceed 12 bytes. Read less at a time using offset and limit parameters."}
    r = await files.lines(str(p), limit=2, max_response_bytes=13)
    assert r.json()["content"] == "1\taaaa\n2\tbbbb"
    r = await files.lines(str(p), limit=3, max_response_lines=2)
    assert r.json() == {"success": False, "error": "output would exceed 2 lines. Read less at a time using offset and limit parameters."}
    r = await files.lines(str(p), max_response_lines=2)  # limit 0 → max_response_lines
    assert r.json()["lines_read"] == 2 and r.json()["total_lines"] == 3
    r = await files.lines(str(p), max_file_size=13)
    assert r.json() == {"success": False, "error": (
        "file is 14 bytes which exceeds the maximum of 13 bytes. Use grep, sed, or awk to extract the "
        "content you need, or use offset and limit to read a portion.")}
    r = await files.api.call("GET", build_target(route("ReadFileLines"), query={"path": str(p)})
                             + "&max_file_size=0")  # a present 0 is used literally
    assert r.json()["success"] is False and r.json()["error"].startswith("file is 14 bytes")


async def test_read_file_lines_errors_are_200(files: Files, tmp_path: Path, open_dir: Path) -> None:
    cases = {
        "rel/f.txt": 'file path must be absolute: "rel/f.txt"',
        str(tmp_path / "missing"): f"file does not exist: {tmp_path}/missing",
        str(tmp_path): f"not a file: {tmp_path}",
    }
    for path, error in cases.items():
        r = await files.lines(path)
        assert (r.status, r.json()) == (200, {"success": False, "error": error}), path
    secret = open_dir / "secret.txt"
    secret.write_text("x")
    secret.chmod(0o000)
    with unprivileged():
        r = await files.lines(str(secret))
    assert (r.status, r.json()) == (200, {"success": False, "error": f"permission denied: {secret}"})
    for target in ("/api/v0/read-file-lines", f"/api/v0/read-file-lines?path={tmp_path}&max_line_bytes=-1",
                   f"/api/v0/read-file-lines?path={tmp_path}&bogus=1"):
        r = await files.api.call("GET", target)
        assert r.status == 400 and r.json()["message"] == "Query parameters have invalid values.", target


# --- §3.5 write-file -------------------------------------------------------------------------


async def test_write_file_creates_parents_and_records_chat(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "a" / "b" / "new.txt"
    headers, chats = chat_headers()
    r = await files.write(str(p), b"hello\n", headers)
    assert (r.status, r.json()) == (200, {"message": f'Successfully wrote to "{p}"'})
    assert p.read_bytes() == b"hello\n"
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755 & ~UMASK
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~UMASK
    assert files.touched == [(chats, [str(p)])]
    assert leftovers(p.parent) == []
    # Without a chat nothing is recorded; an invalid chat id means "no chat".
    await files.write(str(p), b"again", {"Coder-Chat-Id": "not-a-uuid"})
    assert p.read_bytes() == b"again" and len(files.touched) == 1


async def test_write_file_keeps_mode_and_replaces_atomically(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "script.sh"
    p.write_text("old")
    p.chmod(0o751)
    inode = p.stat().st_ino
    r = await files.write(str(p), b"#!/bin/sh\necho new\n")
    assert r.status == 200
    assert p.read_bytes() == b"#!/bin/sh\necho new\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o751
    assert p.stat().st_ino != inode  # a new file was renamed over the old one
    r = await files.write(str(p), b"")
    assert (r.status, p.read_bytes()) == (200, b"")


async def test_write_file_through_symlinks(files: Files, tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to("real.txt")
    r = await files.write(str(link), b"via link")
    assert (r.status, r.json()["message"]) == (200, f'Successfully wrote to "{link}"')
    assert link.is_symlink() and os.readlink(link) == "real.txt"
    assert real.read_bytes() == b"via link"
    (tmp_path / "real-dir").mkdir()
    (tmp_path / "dir-link").symlink_to(tmp_path / "real-dir")
    assert (await files.write(str(tmp_path / "dir-link" / "x" / "NEW.md"), b"new")).status == 200
    assert (tmp_path / "real-dir" / "x" / "NEW.md").read_bytes() == b"new"
    (tmp_path / "dangling").symlink_to("later/target.txt")
    assert (await files.write(str(tmp_path / "dangling"), b"made")).status == 200
    assert (tmp_path / "later" / "target.txt").read_bytes() == b"made"
    assert (tmp_path / "dangling").is_symlink()


async def test_write_file_special_characters_in_path(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "we ird?#%&+=;name ü.txt"
    r = await files.write(str(p), b"odd")
    assert (r.status, r.json()["message"]) == (200, f'Successfully wrote to "{p}"')
    assert p.read_bytes() == b"odd"
    r = await files.read(str(p))
    assert (r.status, r.body) == (200, b"odd")
    q = tmp_path / 'quote"back\\slash\ttab'
    r = await files.write(str(q), b"q")
    assert r.json()["message"] == 'Successfully wrote to "' + str(tmp_path) + '/quote\\"back\\\\slash\\ttab"'
    assert q.read_bytes() == b"q"


async def test_write_file_errors(files: Files, tmp_path: Path, open_dir: Path) -> None:
    r = await files.write(str(tmp_path), b"x")
    assert (r.status, r.json()) == (400, {"message": f"open {tmp_path}: is a directory"})
    (tmp_path / "file").write_text("x")
    r = await files.write(str(tmp_path / "file" / "sub" / "x.txt"), b"x")
    assert (r.status, r.json()) == (400, {"message": f"mkdir {tmp_path}/file: not a directory"})
    r = await files.write("rel.txt", b"x")
    assert (r.status, r.json()) == (400, {"message": 'file path must be absolute: "rel.txt"'})
    r = await files.api.call("POST", "/api/v0/write-file", body=b"x")
    assert r.status == 400 and '"path" is required' in r.json()["validations"][0]["detail"]
    (tmp_path / "loop").symlink_to("loop")
    r = await files.write(str(tmp_path / "loop"), b"x")
    assert (r.status, r.json()["message"]) == (
        500, f'resolve symlink "{tmp_path}/loop": too many levels of symlinks resolving "{tmp_path}/loop"')
    readonly = open_dir / "ro"
    readonly.mkdir()
    (readonly / "keep.txt").write_text("keep")
    readonly.chmod(0o555)
    with unprivileged():
        r1 = await files.write(str(readonly / "keep.txt"), b"x")
        r2 = await files.write(str(readonly / "newdir" / "x.txt"), b"x")
    assert r1.status == 403
    assert r1.json()["message"].startswith(f"open {readonly}/.keep.txt.tmp.")
    assert r1.json()["message"].endswith(": permission denied")
    assert (r2.status, r2.json()) == (403, {"message": f"mkdir {readonly}/newdir: permission denied"})
    assert (readonly / "keep.txt").read_text() == "keep" and leftovers(readonly) == []
    assert files.touched == []


async def test_write_file_body_cut_short_leaves_original(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "precious.txt"
    p.write_bytes(b"original")
    target = build_target(route("WriteFile"), query={"path": str(p)})
    _reader, writer = await asyncio.open_connection(files.api.host, files.api.port)
    writer.write(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n".encode()
                 + b"partial data" * 10000)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    async with asyncio.timeout(10):
        while files.router.status_counts.get(500) != 1:
            await asyncio.sleep(0.01)
    assert p.read_bytes() == b"original"
    assert leftovers(tmp_path) == []
    assert files.touched == []


async def test_atomic_write_cancelled_midway_removes_temp(tmp_path: Path) -> None:
    p = tmp_path / "target.txt"
    p.write_bytes(b"original")
    started = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * (3 << 20)  # more than one write buffer: data reaches the temp file
        started.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(fsutil.atomic_write(str(p), body(), None))
    await started.wait()
    assert len(leftovers(tmp_path)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert p.read_bytes() == b"original" and leftovers(tmp_path) == []


async def test_write_file_streams_50mb_with_bounded_memory(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    digest = hashlib.sha256()
    size = 50 << 20
    seed = os.urandom(64 << 10)

    async def body() -> AsyncIterator[bytes]:
        for i in range(size // len(seed)):
            chunk = i.to_bytes(8, "big") + seed[8:]
            digest.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        r = await files.write(str(p), body())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status == 200, r.body
    assert p.stat().st_size == size
    assert sha256_of(p) == digest.hexdigest()
    assert peak < 12 << 20, f"peak traced memory {peak} bytes for a {size}-byte upload"
    assert leftovers(tmp_path) == []


# --- §3.6 edit-files -------------------------------------------------------------------------


def edit(old: str, new: str, **kw: Any) -> dict[str, Any]:
    """An edit as the reference client sends it: both key pairs with the same values."""
    return {"old_text": old, "new_text": new, "search": old, "replace": new, **kw}


async def test_edit_files_basic_and_diff_shape(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "main.go"
    p.write_text("package main\n\nfunc a() {}\n")
    p.chmod(0o751)
    headers, chats = chat_headers()
    r = await files.edit({"files": [{"path": str(p), "edits": [edit("func a", "func b")]}]}, headers)
    assert (r.status, r.body) == (200, b"{}\n")
    assert p.read_text() == "package main\n\nfunc b() {}\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o751
    assert files.touched == [(chats, [str(p)])]
    assert leftovers(tmp_path) == []

    r = await files.edit({"files": [{"path": str(p), "edits": [edit("func b", "func c")]}], "include_diff": True})
    assert r.status == 200
    assert r.json() == {"files": [{"path": str(p), "diff": (
        f"--- {p}\n+++ {p}\n@@ -1,3 +1,3 @@\n package main\n \n-func b() {{}}\n+func c() {{}}\n")}]}
    r = await files.edit({"files": [{"path": str(p), "edits": [edit("func c", "func c")]}], "include_diff": True})
    assert r.json() == {"files": [{"path": str(p), "diff": ""}]}


async def test_edit_files_sequential_and_legacy_keys(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    p.write_text("alpha beta gamma\n")
    body = {"files": [{"path": str(p), "edits": [
        edit("alpha", "ALPHA"),
        edit("ALPHA beta", "delta"),  # searches the previous edit's output
        {"search": "gamma", "replace": "GAMMA"},  # legacy keys when the new ones are absent
        {"old_text": " GAMMA", "new_text": ""},  # an empty new_text is a deletion
    ]}]}
    r = await files.edit(body)
    assert r.status == 200, r.body
    assert p.read_text() == "delta\n"


async def test_edit_files_merges_lexical_duplicates(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    p.write_text("one\n")
    other = tmp_path / "g.txt"
    other.write_text("x\n")
    body = {"include_diff": True, "files": [
        {"path": str(p), "edits": [edit("one", "two")]},
        {"path": str(other), "edits": [edit("x", "y")]},
        {"path": f"{tmp_path}/./f.txt", "edits": [edit("two", "three")]},
    ]}
    r = await files.edit(body)
    assert r.status == 200, r.body
    assert p.read_text() == "three\n" and other.read_text() == "y\n"
    assert [f["path"] for f in r.json()["files"]] == [str(p), str(other)]
    assert "-one\n+three\n" in r.json()["files"][0]["diff"]


async def test_edit_files_rejects_symlink_aliases(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    p.write_text("one\n")
    link = tmp_path / "alias.txt"
    link.symlink_to(p)
    body = {"files": [{"path": str(p), "edits": [edit("one", "two")]},
                      {"path": str(link), "edits": [edit("one", "three")]}]}
    r = await files.edit(body, chat_headers()[0])
    assert r.status == 400
    assert r.json()["message"] == (
        f'duplicate file path "{link}" aliases "{p}" (same real file): '
        "combine edits into a single entry's \"edits\" list")
    assert p.read_text() == "one\n" and files.touched == []


async def test_edit_files_through_symlink(files: Files, tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("hello\n")
    link = tmp_path / "link.txt"
    link.symlink_to("real.txt")
    r = await files.edit({"files": [{"path": str(link), "edits": [edit("hello", "bye")]}], "include_diff": True})
    assert r.status == 200
    assert real.read_text() == "bye\n" and link.is_symlink()
    assert r.json()["files"][0]["diff"].startswith(f"--- {link}\n+++ {link}\n")


async def test_edit_files_phase1_failure_writes_nothing(files: Files, tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("aaa\n")
    b.write_text("bbb\n")
    r = await files.edit({"files": [{"path": str(a), "edits": [edit("aaa", "AAA")]},
                                    {"path": str(b), "edits": [edit("zzz", "ZZZ")]}]}, chat_headers()[0])
    assert (r.status, r.json()) == (400, {"message": f"edit {b}: {NOT_FOUND_TEXT}"})
    assert a.read_text() == "aaa\n" and b.read_text() == "bbb\n"
    assert files.touched == [] and leftovers(tmp_path) == []


async def test_edit_files_collects_errors_highest_status(files: Files, tmp_path: Path, open_dir: Path) -> None:
    ok = tmp_path / "ok.txt"
    ok.write_text("ok\n")
    missing = tmp_path / "missing.txt"
    r = await files.edit({"files": [
        {"path": str(ok), "edits": [edit("nope", "x")]},
        {"path": "", "edits": [edit("a", "b")]},
        {"path": "rel.txt", "edits": [edit("a", "b")]},
        {"path": str(ok), "edits": []},  # merged into the first entry: not an error of its own
        {"path": str(missing), "edits": [edit("a", "b")]},
        {"path": str(tmp_path), "edits": [edit("a", "b")]},
        {"path": str(tmp_path / "nodit.txt"), "edits": []},
    ]})
    assert r.status == 404
    assert r.json()["message"].split("\n") == [
        f"edit {ok}: {NOT_FOUND_TEXT}",
        '"path" is required',
        'file path must be absolute: "rel.txt"',
        f"open {missing}: no such file or directory",
        f"open {tmp_path}: not a file",
        "must specify at least one edit",
    ]
    assert ok.read_text() == "ok\n"

    secret = open_dir / "secret.txt"
    secret.write_text("s\n")
    secret.chmod(0o000)
    with unprivileged():
        r403 = await files.edit({"files": [{"path": "rel.txt", "edits": [edit("a", "b")]},
                                           {"path": str(secret), "edits": [edit("s", "t")]}]})
        r404 = await files.edit({"files": [{"path": str(secret), "edits": [edit("s", "t")]},
                                           {"path": str(open_dir / "gone.txt"), "edits": [edit("s", "t")]}]})
    assert (r403.status, r403.json()["message"]) == (
        403, f'file path must be absolute: "rel.txt"\nopen {secret}: permission denied')
    assert r404.status == 404


async def test_edit_files_request_errors(files: Files, tmp_path: Path) -> None:
    r = await files.edit({"files": []})
    assert (r.status, r.json()) == (400, {"message": "must specify at least one file"})
    r = await files.edit({})
    assert (r.status, r.json()) == (400, {"message": "must specify at least one file"})
    r = await files.edit(b"")
    assert r.status == 400 and r.json()["message"] == "Request body must be valid JSON."
    r = await files.edit(b'{"files": "nope"}')
    assert r.status == 400 and r.json()["message"] == "Request body must be valid JSON."


async def test_edit_files_keeps_arbitrary_bytes(files: Files, tmp_path: Path) -> None:
    p = tmp_path / "bin.dat"
    p.write_bytes(b"\xff\xfe head \x80\n hello \xe2\x82\n")
    r = await files.edit({"files": [{"path": str(p), "edits": [edit("hello", "bye")]}], "include_diff": True})
    assert r.status == 200, r.body
    assert p.read_bytes() == b"\xff\xfe head \x80\n bye \xe2\x82\n"
    diff = r.json()["files"][0]["diff"]
    assert "- hello \ufffd\ufffd\n+ bye \ufffd\ufffd\n" in diff


def _vm_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
async def test_endless_devices_are_refused_with_bounded_memory(files: Files, device: str) -> None:
    """A character device reports size 0 and never ends: read-file-lines and edit-files refuse
    it instead of reading it to EOF (which grew the agent by GBs); read-file stays bounded."""
    before = _vm_rss()
    r = await files.lines(device)
    assert (r.status, r.json()) == (200, {"success": False,
                                          "error": f"not a regular file: {device}"})
    r = await files.edit({"files": [{"path": device,
                                     "edits": [{"search": "a", "replace": "b"}]}]})
    assert (r.status, r.json()) == (400, {"message": f"open {device}: not a regular file"})
    # read-file is bounded by the reported size (0), as in Go: an empty 200, like a FIFO
    for query in ({}, {"limit": 1 << 20}):
        r = await files.read(device, **query)
        assert (r.status, r.body) == (200, b"")
    assert _vm_rss() - before < 50 << 20


async def test_nul_byte_in_a_path_is_400_without_traceback(
        files: Files, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = f"{tmp_path}/a\x00b"
    expected = (400, {"message": "path must not contain a NUL byte"})
    for r in [
        await files.read(bad),
        await files.lines(bad),
        await files.resolve(bad),
        await files.write(bad, b"data"),
        await files.ls({}, path=bad),
        await files.ls({"path": ["tmp", "a\x00b"], "relativity": "root"}),
        await files.edit({"files": [{"path": bad, "edits": [{"search": "a", "replace": "b"}]}]}),
    ]:
        assert (r.status, r.json()) == expected
    assert not (tmp_path / "a").exists()
    assert not [r.getMessage() for r in caplog.records if r.levelno >= 30 and r.exc_info]


async def test_killed_upload_logs_no_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An upload whose client vanished mid-body, then a shutdown that cancels its handler: the
    server is the start_server callback itself (as in the agent), and neither asyncio's
    "Exception in callback … CancelledError" nor any traceback is logged; no file is left."""
    from agentconn.web import HttpServer

    caplog.set_level(logging.DEBUG)
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    router = Router()
    FilesApi(AgentOptions(home=str(tmp_path))).register(router)
    http = HttpServer(router)
    server = await asyncio.start_server(http.serve_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = build_target(route("WriteFile"), query={"path": str(tmp_path / "up.bin")})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
                     .encode() + b"x" * 100_000)
        await writer.drain()
        serving = set()
        for _ in range(500):
            serving = {t for t in asyncio.all_tasks()
                       if t.get_coro().__qualname__ == "HttpServer.serve_connection"}
            if serving and any(tmp_path.iterdir()):  # the handler is writing the temp file
                break
            await asyncio.sleep(0.01)
        assert len(serving) == 1
        for t in serving:
            t.cancel()
        await asyncio.wait(serving, timeout=5)
        await asyncio.sleep(0.05)  # the start_server done-callback runs
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
        loop.set_exception_handler(old_handler)
    assert not loop_errors, loop_errors
    assert http.connections_aborted == 1
    assert list(tmp_path.iterdir()) == []
    assert not [r.getMessage() for r in caplog.records
                if r.levelno >= logging.ERROR or (r.levelno >= logging.WARNING and r.exc_info)]
