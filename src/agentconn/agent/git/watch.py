"""``GET /api/v0/git/watch[?chat_id=]``: the git-watch websocket (agent-api.md §10, §2.6).

Theory of operation
-------------------
One :class:`GitWatcher` per socket, as the Go agent keeps one handler per connection. It
watches the repositories that contain the paths its chat touched (:class:`~agentconn.agent.git.
paths.PathStore`: write-file, edit-files and process workdirs, the chat's own and its
descendants'), found with ``git rev-parse --show-toplevel`` (cached agent-wide per directory).
It scans when asked — paths already tracked at connect time, a new path or a finished process
of the chat, a client ``{"type":"refresh"}`` — at most once per :data:`SCAN_COOLDOWN` (a
request inside the cooldown waits for it, and every request that arrives before a scan starts
is served by that one scan), and otherwise every :data:`FALLBACK_POLL_INTERVAL`.

This is the **go-git revision** of the agent (early 2026) implemented with the git CLI: a
30 s fallback poll, no ``progress`` messages, no empty heartbeat ``changes``; per-file and
total size stubs (:mod:`~agentconn.agent.git.scan`). Deltas only: :class:`RepoDeltas` keeps a
digest of each repository's last sent (branch, origin, diff) — never the diff itself — and a
scan sends only the repositories whose digest changed; if none did, nothing is sent. A
repository whose root or ``.git`` vanished is sent once with ``"removed":true`` and dropped.
The changed repositories of one scan go out as one ``changes`` message, or several (same
``scanned_at``) when together they would exceed :data:`MESSAGE_BUDGET`, so every message stays
under the 4 MiB read limit of Go clients.

Client messages: ``refresh`` triggers a scan; any other ``type`` gets ``{"type":"error",
"message":"unknown message type"}`` and the socket stays open; a binary frame or undecodable
JSON closes it (wsjson). The agent pings every :data:`PING_INTERVAL` and closes the socket when
a ping went unanswered for a whole interval. Without ``git`` on PATH the socket opens, says so
once in an ``error`` message and never sends ``changes``.

Memory per subscriber: digests and roots (at most :data:`MAX_REPOS_PER_WATCHER`), plus the
one message being sent and one repository's scan (the scan's own limits); sends are awaited,
so a slow reader slows its own scans instead of queueing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from urllib.parse import parse_qs

from agentconn.agent.api.router import ApiError, RequestContext, Router
from agentconn.agent.git.paths import PathStore
from agentconn.agent.git.scan import (
    GitError,
    RepoState,
    find_repo_root,
    git_environ,
    is_repo_deleted,
    scan_repo,
    total_note,
)
from agentconn.agent.options import AgentOptions
from agentconn.proto._codec import go_json
from agentconn.proto.errors import BadRequest
from agentconn.proto.git import (
    GIT_CLIENT_REFRESH,
    GIT_UNKNOWN_TYPE_MESSAGE,
    GitClientMessage,
    GitRepoChanges,
    GitServerMessage,
    GitServerMessageType,
)
from agentconn.web.errors import ConnectionClosed, LocalProtocolError, RemoteProtocolError
from agentconn.web.server import Request, ResponseLike
from agentconn.web.websocket import WebSocket

__all__ = [
    "FALLBACK_POLL_INTERVAL",
    "GIT_MISSING_MESSAGE",
    "MESSAGE_BUDGET",
    "PING_INTERVAL",
    "SCAN_COOLDOWN",
    "GitWatchApi",
    "GitWatcher",
    "RepoDeltas",
    "encode_changes",
]

_log = logging.getLogger("agentconn.agent.git")

#: Minimum seconds between two scans of one socket.
SCAN_COOLDOWN = 1.0
#: Seconds without any trigger after which a socket rescans anyway.
FALLBACK_POLL_INTERVAL = 30.0
#: Seconds between websocket pings; a ping unanswered for this long closes the socket.
PING_INTERVAL = 15.0
#: Client → agent message size limit (§2.6).
MAX_CLIENT_MESSAGE = 4 << 20
#: Encoded size past which a scan's repositories are split over several messages.
MESSAGE_BUDGET = 3 << 20 | 1 << 19
#: One repository's encoded entry larger than this gets the "too large" note instead.
MAX_ENCODED_REPO = (4 << 20) - (64 << 10)
#: Repositories one socket watches at most (further ones are ignored, with a log line).
MAX_REPOS_PER_WATCHER = 256
#: Paths outside any repository that each rescan request looks at again (the most recent).
RETRY_UNRESOLVED = 64
#: Directories whose repository root the agent remembers.
ROOT_CACHE_SIZE = 4096
#: Repository scans running at once, agent-wide.
MAX_CONCURRENT_SCANS = 2
#: ``message`` of the one error a socket gets when the agent has no git.
GIT_MISSING_MESSAGE = "git watch unavailable: git executable not found on PATH"


class RepoDeltas:
    """Which repositories changed since the last message on one socket (sans-IO)."""

    def __init__(self) -> None:
        self._last: dict[str, bytes] = {}

    def update(self, state: RepoState) -> GitRepoChanges | None:
        """The entry to send for ``state``, or ``None`` when it equals the last one sent."""
        h = hashlib.sha256()
        for part in (state.branch, state.remote_origin, state.unified_diff):
            data = part.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
        digest = h.digest()
        if self._last.get(state.repo_root) == digest:
            return None
        self._last[state.repo_root] = digest
        return GitRepoChanges(repo_root=state.repo_root, branch=state.branch,
                              remote_origin=state.remote_origin,
                              unified_diff=state.unified_diff)

    def removed(self, root: str) -> GitRepoChanges:
        """The one ``removed`` entry for ``root``; the repository is forgotten."""
        self._last.pop(root, None)
        return GitRepoChanges(repo_root=root, removed=True)


def _encode(entries: list[GitRepoChanges], scanned_at: datetime) -> bytes:
    return go_json(GitServerMessage(type=GitServerMessageType.CHANGES, scanned_at=scanned_at,
                                    repositories=entries).to_json())


def encode_changes(entries: Iterable[GitRepoChanges], scanned_at: datetime,
                   budget: int = MESSAGE_BUDGET) -> list[bytes]:
    """The ``changes`` messages (wire bytes) carrying ``entries``: as few as possible, each
    within ``budget`` unless a single repository alone is larger."""
    out: list[bytes] = []
    batch: list[GitRepoChanges] = []
    size = 0
    for entry in entries:
        n = len(go_json(entry.to_json()))
        if batch and size + n > budget:
            out.append(_encode(batch, scanned_at))
            batch, size = [], 0
        batch.append(entry)
        size += n
    if batch:
        out.append(_encode(batch, scanned_at))
    return out


class GitWatcher:
    """The watch state of one socket: its repositories, deltas and scan loop.

    ``send(message_bytes)`` delivers one wire message. ``chat`` is the chat whose paths are
    watched (``None``: nothing is). Drive it with :meth:`run`; poke it with
    :meth:`request_scan` and :meth:`paths_changed`.
    """

    def __init__(self, api: GitWatchApi, chat: uuid.UUID | None,
                 send: Callable[[bytes], Awaitable[None]]) -> None:
        self._api = api
        self.chat = chat
        self._send = send
        self.roots: dict[str, None] = {}
        self.deltas = RepoDeltas()
        self._considered: set[str] = set()
        self._unresolved: OrderedDict[str, None] = OrderedDict()
        self._paths_dirty = False
        self._wake = asyncio.Event()
        self._last_scan = -math.inf
        #: Scans that had repositories to look at, and run-loop rounds completed (tests
        #: wait on these instead of on time).
        self.scans = 0
        self.rounds = 0
        #: The socket this watcher serves (set by the route).
        self.websocket: WebSocket | None = None
        self._warned: set[str] = set()

    def request_scan(self) -> None:
        self._wake.set()

    def paths_changed(self) -> None:
        """The chat's paths changed (or a process of it ended): resolve, then rescan."""
        self._paths_dirty = True
        self._wake.set()

    async def _resolve_paths(self) -> None:
        """Map the chat's new paths to repositories; retry recent paths that were in none
        (a later ``git init`` makes them count, as the Go agent's re-subscribe does)."""
        if self.chat is None:
            return
        store_paths = self._api.paths.paths(self.chat)
        retry = list(self._unresolved)[-RETRY_UNRESOLVED:]
        for p in store_paths:
            if p in self._considered:
                continue
            self._considered.add(p)
            await self._add_root(p)
        for p in retry:
            await self._add_root(p)
        if len(self._considered) > 4 * self._api.paths.max_paths_per_chat:
            self._considered = set(store_paths)

    async def _add_root(self, path: str) -> None:
        root = await self._api.repo_root(path)
        if root is None:
            self._unresolved[path] = None
            self._unresolved.move_to_end(path)
            if len(self._unresolved) > 4 * RETRY_UNRESOLVED:
                self._unresolved.popitem(last=False)
            return
        self._unresolved.pop(path, None)
        if root in self.roots:
            return
        if len(self.roots) >= MAX_REPOS_PER_WATCHER:
            if root not in self._warned and len(self._warned) < 64:
                self._warned.add(root)
                _log.warning("git watch: chat %s watches %d repositories already; ignoring %s",
                             self.chat, len(self.roots), root)
            return
        self.roots[root] = None

    async def run(self) -> None:
        """Scan on request, after the cooldown, or every fallback interval; until cancelled
        or a send fails (:class:`~agentconn.web.errors.ConnectionClosed`)."""
        loop = asyncio.get_running_loop()
        api = self._api
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(api.poll_interval):
                    await self._wake.wait()
            wait = self._last_scan + api.cooldown - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._wake.clear()
            if self._paths_dirty:
                self._paths_dirty = False
                await self._resolve_paths()
            self._last_scan = loop.time()
            await self.scan()
            self.rounds += 1

    async def scan(self) -> int:
        """Scan every watched repository and send what changed; the number of messages."""
        roots = list(self.roots)
        if not roots:
            return 0
        self.scans += 1
        now = datetime.now(UTC)
        env = self._api.env
        pending: list[GitRepoChanges] = []
        pending_size = 0
        sent = 0
        for root in roots:
            try:
                async with self._api.scan_slots:
                    state = await scan_repo(root, env)
            except GitError as e:
                if await is_repo_deleted(root, env):
                    self.roots.pop(root, None)
                    self._api.forget_root(root)
                    # The next round maps every path again: one that lived in this repository
                    # may now be in another, or in a new one at the same place.
                    self._considered.clear()
                    self._paths_dirty = True
                    entry: GitRepoChanges | None = self.deltas.removed(root)
                else:
                    if str(e) not in self._warned and len(self._warned) < 64:
                        self._warned.add(str(e))
                        _log.warning("git watch: scanning %s failed: %s", root, e)
                    continue
            else:
                entry = self.deltas.update(state)
            if entry is None:
                continue
            n = len(go_json(entry.to_json()))
            if n > MAX_ENCODED_REPO:
                # Within the 3 MiB guard, yet HTML escaping (``<`` → ``\u003c``) grew it past
                # what a client reads in one message: send the note instead.
                entry = dataclasses.replace(
                    entry, unified_diff=total_note(len(entry.unified_diff.encode())))
                n = len(go_json(entry.to_json()))
            if pending and pending_size + n > MESSAGE_BUDGET:
                for msg in encode_changes(pending, now):
                    await self._send(msg)
                    sent += 1
                pending, pending_size = [], 0
            pending.append(entry)
            pending_size += n
        for msg in encode_changes(pending, now):
            await self._send(msg)
            sent += 1
        return sent


class GitWatchApi:
    """The git-watch route; one per agent. ``paths`` is the agent's
    :class:`~agentconn.agent.git.paths.PathStore`. ``cooldown``, ``poll_interval`` and
    ``ping_interval`` (seconds) default to the spec's 1 s, 30 s and 15 s."""

    def __init__(self, options: AgentOptions, paths: PathStore, *,
                 cooldown: float = SCAN_COOLDOWN,
                 poll_interval: float = FALLBACK_POLL_INTERVAL,
                 ping_interval: float = PING_INTERVAL) -> None:
        self.options = options
        self.paths = paths
        self.cooldown = cooldown
        self.poll_interval = poll_interval
        self.ping_interval = ping_interval
        self.env = git_environ(options.environ)
        self.scan_slots = asyncio.Semaphore(MAX_CONCURRENT_SCANS)
        self._roots: OrderedDict[str, str] = OrderedDict()
        self._sessions: list[list[asyncio.Task[None]]] = []
        self._warned_missing = False
        self.watchers: set[GitWatcher] = set()

    def register(self, router: Router) -> None:
        router.add_route("WatchGit", self.watch)

    def git_available(self) -> bool:
        return shutil.which("git", path=self.env.get("PATH")) is not None

    # -- repository roots -------------------------------------------------------------------

    async def repo_root(self, path: str) -> str | None:
        """The repository containing ``path`` (cached per nearest existing directory)."""
        if not os.path.isabs(path):
            return None
        d = os.path.normpath(path)
        while not os.path.isdir(d):
            parent = os.path.dirname(d)
            if parent == d:
                return None
            d = parent
        root = self._roots.get(d)
        if root is not None:
            self._roots.move_to_end(d)
            return root
        root = await find_repo_root(d, self.env)
        if root is not None:
            self._roots[d] = root
            if len(self._roots) > ROOT_CACHE_SIZE:
                self._roots.popitem(last=False)
        return root

    def forget_root(self, root: str) -> None:
        """Drop cached lookups that led to ``root`` (it was removed)."""
        for d in [d for d, r in self._roots.items() if r == root]:
            del self._roots[d]

    # -- the route --------------------------------------------------------------------------

    @staticmethod
    def _chat_from_query(request: Request) -> uuid.UUID | None:
        _, _, query = request.target.partition("?")
        values = parse_qs(query, keep_blank_values=True).get("chat_id")
        if not values:
            return None
        try:
            return uuid.UUID(values[0])
        except ValueError:
            return None  # §10: an unparsable chat_id is ignored

    async def watch(self, request: Request, ctx: RequestContext) -> ResponseLike:
        chat = self._chat_from_query(request)
        try:
            ws = await request.accept_websocket(compression=True,
                                                max_message_size=MAX_CLIENT_MESSAGE)
        except RemoteProtocolError as e:
            raise ApiError(500, "Failed to accept WebSocket.", str(e)) from e
        await self._serve(ws, chat)
        return None

    async def _serve(self, ws: WebSocket, chat: uuid.UUID | None) -> None:
        async def send(data: bytes) -> None:
            await ws.send(data.decode())

        watcher = GitWatcher(self, chat, send)
        watcher.websocket = ws
        tasks: list[asyncio.Task[None]] = [
            asyncio.ensure_future(self._read(ws, watcher)),
            asyncio.ensure_future(self._heartbeat(ws)),
        ]
        self._sessions.append(tasks)
        unsubscribe: Callable[[], None] | None = None
        if not self.git_available():
            if not self._warned_missing:
                self._warned_missing = True
                _log.warning("git watch: %s", GIT_MISSING_MESSAGE)
            tasks.append(asyncio.ensure_future(send(go_json(GitServerMessage(
                type=GitServerMessageType.ERROR, message=GIT_MISSING_MESSAGE).to_json()))))
        elif chat is not None:
            self.watchers.add(watcher)
            unsubscribe = self.paths.subscribe(chat, watcher.paths_changed)
            if self.paths.paths(chat):
                watcher.paths_changed()
            tasks.append(asyncio.ensure_future(watcher.run()))
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(not t.cancelled() and t.exception() is not None for t in done) or \
                        tasks[0] in done or tasks[1] in done:
                    break
        finally:
            self._sessions.remove(tasks)
            if unsubscribe is not None:
                unsubscribe()
            self.watchers.discard(watcher)
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(
                        r, (asyncio.CancelledError, ConnectionClosed, ConnectionError, OSError,
                            LocalProtocolError)):
                    _log.error("git watch: socket task failed", exc_info=r)
            with contextlib.suppress(ConnectionError, OSError, LocalProtocolError):
                await ws.close(1001 if not ws.closed else 1000)

    async def _read(self, ws: WebSocket, watcher: GitWatcher) -> None:
        """Client messages until the socket ends (wsjson: text frames of one JSON value)."""
        while True:
            try:
                data = await ws.receive()
            except ConnectionClosed:
                return
            if isinstance(data, bytes):
                await ws.close(1003, "expected a text message")
                return
            try:
                msg = GitClientMessage.from_json(data)
            except BadRequest as e:
                await ws.close(1007, f"invalid JSON: {e}"[:120])
                return
            if msg.type == GIT_CLIENT_REFRESH:
                watcher.request_scan()
            else:
                await ws.send(go_json(GitServerMessage(
                    type=GitServerMessageType.ERROR,
                    message=GIT_UNKNOWN_TYPE_MESSAGE).to_json()).decode())

    async def _heartbeat(self, ws: WebSocket) -> None:
        """Ping every interval; a ping still unanswered one interval later ends the socket."""
        before: int | None = None
        while True:
            await asyncio.sleep(self.ping_interval)
            if before is not None and ws.pongs == before:
                _log.info("git watch: client did not answer a ping in %gs; closing",
                          self.ping_interval)
                return
            before = ws.pongs
            await ws.ping(b"git-watch")

    async def close(self) -> None:
        """End every watch socket (agent shutdown)."""
        for tasks in list(self._sessions):
            for task in tasks:
                task.cancel()
        for _ in range(100):
            if not self._sessions:
                break
            await asyncio.sleep(0.01)

