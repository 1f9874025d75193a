"""Which paths each chat touched (agent-api.md §3, §10): the feed of git-watch.

write-file and edit-files record the caller's paths, a finished process its ``workdir``, for
the request's chat **and** every ancestor chat from ``Coder-Ancestor-Chat-Ids``, so a parent's
watcher sees what its sub-agents change. Subscribers (one per git-watch socket) are plain
callbacks run on the event loop right after a change, the way the Go agent pokes a one-slot
channel: they only set a flag, so a burst of writes costs one rescan. A finished process
without a workdir notifies without adding a path (its command may have changed files in
repositories already watched).

Memory is bounded: at most :data:`MAX_PATHS_PER_CHAT` paths per chat (the oldest are
forgotten first; watchers keep the repositories they already found).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

__all__ = ["MAX_PATHS_PER_CHAT", "PathStore"]

#: Distinct paths remembered per chat.
MAX_PATHS_PER_CHAT = 10_000


class PathStore:
    """chat id → the paths touched under it, in first-touched order, plus subscribers."""

    def __init__(self, max_paths_per_chat: int = MAX_PATHS_PER_CHAT) -> None:
        self.max_paths_per_chat = max_paths_per_chat
        self._paths: dict[uuid.UUID, dict[str, None]] = {}
        self._subscribers: dict[uuid.UUID, list[Callable[[], None]]] = {}

    def add_paths(self, chats: Iterable[uuid.UUID], paths: Iterable[str]) -> None:
        """Record ``paths`` for every chat of ``chats`` (nil UUIDs skipped) and notify."""
        affected = [c for c in chats if c.int != 0]
        items = list(paths)
        for chat in affected:
            seen = self._paths.setdefault(chat, {})
            for p in items:
                if p in seen:
                    continue
                seen[p] = None
                if len(seen) > self.max_paths_per_chat:
                    del seen[next(iter(seen))]
        self.notify(affected)

    def notify(self, chats: Iterable[uuid.UUID]) -> None:
        """Wake the subscribers of ``chats`` without adding a path."""
        for chat in chats:
            for callback in list(self._subscribers.get(chat, ())):
                callback()

    def paths(self, chat: uuid.UUID) -> list[str]:
        """The paths touched under ``chat``, oldest first."""
        return list(self._paths.get(chat, ()))

    def as_dict(self) -> dict[uuid.UUID, list[str]]:
        """Every chat's paths (a copy)."""
        return {chat: list(p) for chat, p in self._paths.items()}

    def subscribe(self, chat: uuid.UUID, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` whenever ``chat`` gets paths or a notification; returns the
        function that unsubscribes."""
        subs = self._subscribers.setdefault(chat, [])
        subs.append(callback)

        def unsubscribe() -> None:
            lst = self._subscribers.get(chat)
            if lst is not None and callback in lst:
                lst.remove(callback)
                if not lst:
                    del self._subscribers[chat]

        return unsubscribe

    def subscriber_count(self, chat: uuid.UUID) -> int:
        return len(self._subscribers.get(chat, ()))
