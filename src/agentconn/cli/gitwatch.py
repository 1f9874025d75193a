"""``agentconn git-watch``: print a chat's git changes as the agent reports them (§10).

``agentconn git-watch WORKSPACE --chat-id UUID`` (or ``--config CLIENT_CONF --agent-id UUID``,
see :mod:`~agentconn.cli.target`) opens the git-watch socket for the chat and prints each
change as it arrives until interrupted. Text output, per repository in a ``changes`` message::

    14:02:07 /home/coder/app  branch main  origin git@example.com:app.git
      2 files changed, +3 -1
        M a.txt      +1 -1
        A notes.md   +2 -0

``removed`` repositories print one line; ``error`` messages go to stderr; ``progress`` messages
and empty heartbeats (newest agents) print nothing. ``--output json`` prints every message as
one JSON line instead. Without ``--chat-id`` the agent watches nothing (it says so on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import uuid
from dataclasses import dataclass
from typing import TextIO

from agentconn.cli.target import add_target_arguments, agent_id_type, open_conn
from agentconn.proto.git import GitRepoChanges, GitServerMessage, GitServerMessageType

__all__ = ["FileStat", "add_parser", "diff_stats", "format_message", "run"]


@dataclass(frozen=True, slots=True)
class FileStat:
    """One file of a unified diff: its path, ``A``/``D``/``M`` and the lines added/removed."""

    path: str
    status: str
    added: int
    removed: int


_UNESCAPE = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _unquote(text: str) -> str:
    """A path as git printed it: C-quoted (``"b/x\\303\\251"``) or plain."""
    if not (len(text) >= 2 and text[0] == '"' and text[-1] == '"'):
        return text
    out = bytearray()
    body, i = text[1:-1], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in _UNESCAPE:
                out.append(_UNESCAPE[nxt])
                i += 2
                continue
            if body[i + 1:i + 4].isdigit():
                out.append(int(body[i + 1:i + 4], 8) & 0xFF)
                i += 4
                continue
        out += c.encode()
        i += 1
    return out.decode("utf-8", "replace")


def _side_path(line: str) -> str | None:
    # "--- a/x" / "+++ b/x" (git appends a tab when the path has a space); None for /dev/null
    name = _unquote(line[4:].rstrip("\t"))
    return None if name == "/dev/null" else name[2:]


def _header_path(line: str) -> str:
    # "diff --git a/x b/x": both halves are equal, so the b/ half starts in the middle
    rest = line[len("diff --git "):]
    if rest.endswith('"'):
        return _unquote(rest[rest.rfind(' "') + 1:])[2:]
    half = (len(rest) - 1) // 2
    if 0 < half < len(rest) and rest[half] == " ":
        return rest[half + 1:][2:]
    return rest.rsplit(" b/", 1)[-1]


def diff_stats(diff: str) -> list[FileStat]:
    """Per-file counts of a git-style unified diff (stub patches count their note line)."""
    stats: list[FileStat] = []
    path, status, added, removed, in_hunk = "", "M", 0, 0, False
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            if path:
                stats.append(FileStat(path, status, added, removed))
            path, status, added, removed, in_hunk = _header_path(line), "M", 0, 0, False
        elif not in_hunk and line.startswith("new file mode"):
            status = "A"
        elif not in_hunk and line.startswith("deleted file mode"):
            status = "D"
        elif not in_hunk and line.startswith(("--- ", "+++ ")):
            side = _side_path(line)
            if side is not None:
                path = side
        elif line.startswith("@@"):
            in_hunk = True
        elif in_hunk and line.startswith("+"):
            added += 1
        elif in_hunk and line.startswith("-"):
            removed += 1
    if path:
        stats.append(FileStat(path, status, added, removed))
    return stats


def _repo_lines(repo: GitRepoChanges, when: str) -> list[str]:
    if repo.removed:
        return [f"{when} {repo.repo_root}  removed"]
    head = f"{when} {repo.repo_root}  branch {repo.branch or '(none)'}"
    if repo.remote_origin:
        head += f"  origin {repo.remote_origin}"
    lines = [head]
    stats = diff_stats(repo.unified_diff)
    if not stats:
        note = repo.unified_diff.strip()
        lines.append(f"  {note}" if note else "  no changes")
        return lines
    plus = sum(s.added for s in stats)
    minus = sum(s.removed for s in stats)
    lines.append(f"  {len(stats)} file{'s' if len(stats) != 1 else ''} changed, +{plus} -{minus}"
                 + ("  (diff truncated)" if repo.diff_truncated else ""))
    width = max(len(s.path) for s in stats)
    for s in stats:
        lines.append(f"    {s.status} {s.path.ljust(width)}  +{s.added} -{s.removed}")
    return lines


def format_message(msg: GitServerMessage) -> list[str]:
    """The text lines for ``msg`` (none for progress messages and empty heartbeats)."""
    if msg.type is not GitServerMessageType.CHANGES:
        return []
    when = msg.scanned_at.astimezone().strftime("%H:%M:%S") if msg.scanned_at else "--:--:--"
    lines: list[str] = []
    for repo in msg.repositories or ():
        lines += _repo_lines(repo, when)
    return lines


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("git-watch", help="print the git changes a chat makes, as they happen",
                       description="Watch the git repositories a chat touched (its writes, "
                                   "edits and process workdirs) and print each change.")
    add_target_arguments(p)
    p.add_argument("--chat-id", type=agent_id_type, metavar="UUID",
                   help="the chat whose repositories to watch (without it the agent watches "
                        "nothing)")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text",
                   help="text (default) or json: one JSON line per message")


async def _print_messages(w: object, as_json: bool, out: TextIO) -> None:
    from agentconn.client.git import GitWatch

    assert isinstance(w, GitWatch)
    async for msg in w:
        if as_json:
            out.write(msg.to_json().decode() + "\n")
        elif msg.type is GitServerMessageType.ERROR:
            print(f"agentconn git-watch: agent: {msg.message}", file=sys.stderr, flush=True)
            continue
        else:
            out.writelines(line + "\n" for line in format_message(msg))
        out.flush()


async def run(args: argparse.Namespace) -> int:
    chat: uuid.UUID | None = args.chat_id
    conn = await open_conn(args)
    try:
        async with conn.watch_git(chat_id=chat) as w:
            if chat is None:
                print("agentconn git-watch: no --chat-id: the agent watches nothing",
                      file=sys.stderr, flush=True)
            else:
                print(f"watching the git changes of chat {chat} on agent {conn.agent_id} "
                      "(Ctrl-C to stop)", file=sys.stderr, flush=True)
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(_print_messages(w, args.output == "json", sys.stdout))
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            if task.cancelled():
                return 0
        print("agentconn git-watch: the agent ended the watch", file=sys.stderr)
        return 1
    finally:
        await conn.close()
