"""The client side of git watch (agent-api.md §10): ``AgentConn.watch_git``.

``GET /api/v0/git/watch[?chat_id=]`` is a websocket upgrade on the API port carrying the extra
headers (§2.3), permessage-deflate without context takeover and a 4 MiB read limit (§2.6). Its
text messages are single JSON values, decoded into
:class:`~agentconn.proto.git.GitServerMessage`; a binary frame or undecodable JSON ends the
watch with :class:`GitWatchError`, as Go's ``wsjson`` reader does.

Both agent revisions are understood: the go-git one (deltas only) and the newest git-CLI one,
which also sends empty ``changes`` heartbeats and streams each repository's diff as
``progress`` messages (``reset``, chunks, ``complete``) before the ``changes`` snapshot.
Every message is yielded as it arrives; :class:`GitWatch` also keeps the resulting view —
:attr:`GitWatch.repositories` (the last snapshot of each repository, removed ones dropped) and
:attr:`GitWatch.in_progress` (diffs being streamed). Messages of a type this client does not
know are skipped.

::

    async with conn.watch_git(chat_id=chat) as w:
        async for msg in w:
            ...
            await w.refresh()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Self

import orjson
from wsproto.events import CloseConnection

from agentconn.errors import AgentConnError
from agentconn.proto._codec import go_json
from agentconn.proto.errors import BadRequest
from agentconn.proto.git import (
    GIT_CLIENT_REFRESH,
    GitClientMessage,
    GitProgress,
    GitRepoChanges,
    GitServerMessage,
    GitServerMessageType,
)
from agentconn.proto.ports import AGENT_HTTP_API_PORT
from agentconn.proto.routes import build_target, route
from agentconn.web.errors import ConnectionClosed, LocalProtocolError, WebSocketRejected
from agentconn.web.websocket import WebSocket, websocket_connect

if TYPE_CHECKING:
    from agentconn.client.conn import AgentConn

__all__ = ["GIT_WATCH_READ_LIMIT", "GitWatch", "GitWatchError", "RepoProgress"]

#: The client's per-message read limit (§2.6).
GIT_WATCH_READ_LIMIT = 4 << 20
_KNOWN_TYPES = frozenset(t.value for t in GitServerMessageType)
_NORMAL_CLOSE = (1000, 1001)


class GitWatchError(AgentConnError):
    """The watch ended abnormally: the agent sent something that is not a JSON text message,
    or the connection dropped. ``close_code`` is the websocket close code when there was one."""

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


@dataclass(slots=True)
class RepoProgress:
    """A repository diff being streamed by ``progress`` messages (newest agents)."""

    repo_root: str
    branch: str = ""
    remote_origin: str = ""
    chunks: list[str] = field(default_factory=list)
    size: int = 0
    truncated: bool = False
    processed_files: int = 0
    total_files: int = 0
    complete: bool = False

    @property
    def unified_diff(self) -> str:
        return "".join(self.chunks)


class GitWatch:
    """An open (or about to open) git-watch socket. Use ``async with``; iterate for messages.

    ``chat_id`` selects the chat whose repositories are watched (without one the agent watches
    nothing). :meth:`refresh` asks for an immediate rescan; :meth:`close` ends the watch
    (iteration then stops).
    """

    def __init__(self, conn: AgentConn | None, chat_id: uuid.UUID | str | None = None, *,
                 read_limit: int = GIT_WATCH_READ_LIMIT) -> None:
        self._conn = conn
        self.chat_id = uuid.UUID(str(chat_id)) if chat_id is not None else None
        self.read_limit = read_limit
        self._ws: WebSocket | None = None
        self._closing = False
        self._receiving = asyncio.Event()  # set while no task is inside receive()
        self._receiving.set()
        #: repo root → its last ``changes`` entry (removed repositories are dropped).
        self.repositories: dict[str, GitRepoChanges] = {}
        #: repo root → the diff streamed so far by ``progress`` messages.
        self.in_progress: dict[str, RepoProgress] = {}
        #: Messages received (all types, unknown ones included).
        self.received = 0

    @classmethod
    def over(cls, ws: WebSocket, *, read_limit: int = GIT_WATCH_READ_LIMIT) -> GitWatch:
        """A watch on an already open git-watch websocket (e.g. one dialed over another
        transport); :meth:`open` must not be called on it."""
        w = cls.__new__(cls)
        w._conn = None
        w.chat_id = None
        w.read_limit = read_limit
        w._ws = ws
        w._closing = False
        w._receiving = asyncio.Event()
        w._receiving.set()
        w.repositories = {}
        w.in_progress = {}
        w.received = 0
        return w

    @property
    def websocket(self) -> WebSocket:
        if self._ws is None:
            raise AgentConnError("git watch is not open")
        return self._ws

    async def open(self) -> Self:
        """Upgrade to the websocket. Raises ``AgentApiError`` when the agent refuses."""
        from agentconn.client.desktop import _api_error

        conn = self._conn
        if conn is None:
            raise AgentConnError("this git watch has no AgentConn to open with")
        if conn._closed:
            raise AgentConnError("AgentConn is closed")
        r = route("WatchGit")
        target = build_target(r, query={"chat_id": self.chat_id})
        reader, writer = await conn._open(conn._host, AGENT_HTTP_API_PORT)
        try:
            self._ws = await websocket_connect(
                reader, writer, f"[{conn._host}]:{AGENT_HTTP_API_PORT}", target,
                headers=conn._extra_headers, compression=True,
                max_message_size=self.read_limit, timeout=conn.timeout)
        except WebSocketRejected as e:
            raise _api_error(e, r.method, target) from None
        conn._last_ok = time.monotonic()
        return self

    async def __aenter__(self) -> Self:
        if self._ws is None:
            await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> GitServerMessage:
        msg = await self.receive()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def receive(self) -> GitServerMessage | None:
        """The next message of a known type, or ``None`` once the watch ended normally.
        Raises :class:`GitWatchError` when it ended abnormally."""
        ws = self.websocket
        self._receiving.clear()
        try:
            return await self._receive(ws)
        finally:
            self._receiving.set()

    async def _receive(self, ws: WebSocket) -> GitServerMessage | None:
        while True:
            try:
                data = await ws.receive()
            except ConnectionClosed as e:
                if self._closing or e.code in _NORMAL_CLOSE:
                    return None
                raise GitWatchError(f"git watch closed: {e}", e.code) from None
            self.received += 1
            if isinstance(data, bytes):
                await ws.close(1003, "expected a text message")
                raise GitWatchError("git watch: the agent sent a binary message", 1003)
            try:
                msg = GitServerMessage.from_json(data)
            except BadRequest as e:
                if _unknown_type(data):
                    continue  # a newer agent's message type: not for us
                await ws.close(1007, "invalid JSON")
                raise GitWatchError(f"git watch: undecodable message from the agent: {e}",
                                    1007) from None
            self._apply(msg)
            return msg

    def _apply(self, msg: GitServerMessage) -> None:
        if msg.type is GitServerMessageType.CHANGES:
            for repo in msg.repositories or ():
                self.in_progress.pop(repo.repo_root, None)
                if repo.removed:
                    self.repositories.pop(repo.repo_root, None)
                else:
                    self.repositories[repo.repo_root] = repo
        elif msg.type is GitServerMessageType.PROGRESS and msg.progress is not None:
            self._progress(msg.progress)

    def _progress(self, p: GitProgress) -> None:
        state = self.in_progress.get(p.repo_root)
        if p.reset or state is None:
            state = RepoProgress(p.repo_root)
            self.in_progress[p.repo_root] = state
        if p.branch:
            state.branch = p.branch
        if p.remote_origin:
            state.remote_origin = p.remote_origin
        if p.unified_diff_chunk and not state.truncated:
            if state.size + len(p.unified_diff_chunk) > self.read_limit:
                state.truncated = True  # bounded: the snapshot that follows has the rest
            else:
                state.chunks.append(p.unified_diff_chunk)
                state.size += len(p.unified_diff_chunk)
        state.processed_files = max(state.processed_files, p.processed_files)
        state.total_files = max(state.total_files, p.total_files)
        state.complete = state.complete or p.complete

    async def send(self, message: GitClientMessage | str) -> None:
        """Send a client message (a :class:`GitClientMessage` or just its ``type``)."""
        msg = message if isinstance(message, GitClientMessage) else GitClientMessage(
            type=message)
        try:
            await self.websocket.send(go_json(msg.to_json(), html_escape=False).decode())
        except (ConnectionClosed, LocalProtocolError) as e:
            raise GitWatchError(f"git watch is closed: {e}") from None

    async def refresh(self) -> None:
        """Ask the agent to rescan now (it still honours its 1 s cooldown)."""
        await self.send(GIT_CLIENT_REFRESH)

    async def close(self) -> None:
        """End the watch (idempotent). Safe while another task waits in :meth:`receive`:
        that task then gets the end of the iteration."""
        self._closing = True
        ws = self._ws
        if ws is None:
            return
        if self._receiving.is_set():
            await ws.close()
            return
        # Another task is reading: send the close frame and let that reader consume the
        # agent's reply (two readers on one stream are not allowed), then hang up.
        if not ws.closed:
            with contextlib.suppress(ConnectionError, OSError, LocalProtocolError):
                await ws._write(CloseConnection(code=1000))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ws.close_timeout):
                await self._receiving.wait()
        await ws.close_transport()


def _unknown_type(data: str) -> bool:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("type"), str) and \
        obj["type"] not in _KNOWN_TYPES
