"""``GET /api/v0/context-config``: instruction files and skills for chat (agent-api.md §12.1).

Theory of operation: the five ``CODER_AGENT_EXP_*`` variables are read once, when
:class:`ContextConfigApi` is built, from ``AgentOptions.environ`` and then removed from it, so
processes and MCP servers started later do not inherit them. Values are trimmed and empty
ones fall back to the defaults. Comma-separated lists are resolved per request by
:func:`resolve_paths` (``~`` → home, relative → the working directory evaluated now,
relative without a working directory → dropped), the helper the MCP manager shares for its
``.mcp.json`` list (§12.2).

A request first passes the startup gate: it waits for ``startup_settled`` (the agent's
startup scripts finished; they may create these files) for at most ``settle_timeout``
seconds. A client that hangs up while waiting gets 503 ``Agent startup has not settled.``
(what Go answers when the request context is cancelled); on timeout the handler answers from
disk anyway. The answer is then built from disk in a worker thread:

1. instruction files: per instruction dir (duplicates skipped), then the working directory
   unless listed, the first regular file in name order whose trimmed name equals the
   configured name case-insensitively; at most 64 KiB read (``context_file_truncated``),
   sanitised (CRLF/CR → LF, HTML comments and invisible/bidi code points removed, trimmed);
   empty or unreadable → skipped;
2. skills: per skill root, per subdirectory in name order, ``<sub>/<meta file>`` (≤ 64 KiB)
   with YAML front matter between ``---`` lines; ``name`` must equal the directory name and
   be kebab-case; the first root holding a name wins.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the environment

from agentconn.agent.api.router import ApiError, RequestContext, Router, json_ok
from agentconn.agent.options import AgentOptions
from agentconn.proto.context import (
    PART_CONTEXT_FILE,
    PART_SKILL,
    ChatMessagePart,
    ContextConfigResponse,
)
from agentconn.web.server import Request, ResponseLike

__all__ = [
    "ENV_INSTRUCTIONS_DIRS",
    "ENV_INSTRUCTIONS_FILE",
    "ENV_MCP_CONFIG_FILES",
    "ENV_SKILLS_DIRS",
    "ENV_SKILL_META_FILE",
    "ContextConfigApi",
    "ContextSettings",
    "parse_skill_front_matter",
    "read_context_settings",
    "resolve_path",
    "resolve_paths",
    "sanitize_instructions",
]

_log = logging.getLogger("agentconn.agent.contextconfig")

ENV_INSTRUCTIONS_DIRS = "CODER_AGENT_EXP_INSTRUCTIONS_DIRS"
ENV_INSTRUCTIONS_FILE = "CODER_AGENT_EXP_INSTRUCTIONS_FILE"
ENV_SKILLS_DIRS = "CODER_AGENT_EXP_SKILLS_DIRS"
ENV_SKILL_META_FILE = "CODER_AGENT_EXP_SKILL_META_FILE"
ENV_MCP_CONFIG_FILES = "CODER_AGENT_EXP_MCP_CONFIG_FILES"
_ENV_KEYS = (
    ENV_INSTRUCTIONS_DIRS,
    ENV_INSTRUCTIONS_FILE,
    ENV_SKILLS_DIRS,
    ENV_SKILL_META_FILE,
    ENV_MCP_CONFIG_FILES,
)

# §12.1 defaults.
DEFAULT_INSTRUCTIONS_DIRS = "~/.coder"
DEFAULT_INSTRUCTIONS_FILE = "AGENTS.md"
DEFAULT_SKILLS_DIRS = ".agents/skills"
DEFAULT_SKILL_META_FILE = "SKILL.md"
DEFAULT_MCP_CONFIG_FILES = ".mcp.json"

#: §12.1: instruction files and skill meta files are read up to this many bytes.
MAX_INSTRUCTION_FILE_BYTES = 64 * 1024
MAX_SKILL_META_BYTES = 64 * 1024

#: How long a request waits for startup scripts before answering from disk (§12.1).
STARTUP_SETTLE_TIMEOUT = 35.0
STARTUP_NOT_SETTLED_MESSAGE = "Agent startup has not settled."

# How often the startup gate checks whether the client hung up.
_GONE_POLL_INTERVAL = 0.1

_HTML_COMMENT = re.compile(r"<!--[\s\S]*?-->")
# §12.1: invisible and bidi-control code points removed from instruction files.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u070f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b\u200d-\u200f"
    "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8]"
)
_SKILL_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
# Go's unicode.IsSpace set, which strings.TrimSpace uses (Python's str.strip also trims
# U+001C..U+001F, which Go keeps).
_GO_SPACE = (
    "\t\n\v\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_BOM = "\ufeff"


def _trim(text: str) -> str:
    """Go's ``strings.TrimSpace``."""
    return text.strip(_GO_SPACE)


@dataclass(frozen=True, slots=True)
class ContextSettings:
    """The five context settings as configured (trimmed, defaults applied, not yet resolved)."""

    instructions_dirs: str = DEFAULT_INSTRUCTIONS_DIRS
    instructions_file: str = DEFAULT_INSTRUCTIONS_FILE
    skills_dirs: str = DEFAULT_SKILLS_DIRS
    skill_meta_file: str = DEFAULT_SKILL_META_FILE
    mcp_config_files: str = DEFAULT_MCP_CONFIG_FILES


def read_context_settings(
    environ: Mapping[str, str] | MutableMapping[str, str], *, remove: bool = False
) -> ContextSettings:
    """Read the ``CODER_AGENT_EXP_*`` settings from ``environ`` (§12.1).

    Values are trimmed; empty or whitespace-only values take the default. With ``remove``
    the five variables are deleted from ``environ`` (which must then be mutable) so that
    children started with it do not inherit them.
    """

    def get(key: str, default: str) -> str:
        return _trim(environ.get(key, "")) or default

    settings = ContextSettings(
        instructions_dirs=get(ENV_INSTRUCTIONS_DIRS, DEFAULT_INSTRUCTIONS_DIRS),
        instructions_file=get(ENV_INSTRUCTIONS_FILE, DEFAULT_INSTRUCTIONS_FILE),
        skills_dirs=get(ENV_SKILLS_DIRS, DEFAULT_SKILLS_DIRS),
        skill_meta_file=get(ENV_SKILL_META_FILE, DEFAULT_SKILL_META_FILE),
        mcp_config_files=get(ENV_MCP_CONFIG_FILES, DEFAULT_MCP_CONFIG_FILES),
    )
    if remove:
        if not isinstance(environ, MutableMapping):
            raise TypeError("remove=True needs a mutable environment mapping")
        for key in _ENV_KEYS:
            environ.pop(key, None)
    return settings


def resolve_path(raw: str, base_dir: str | None, home: str) -> str:
    """Resolve one configured path (§12.1); ``""`` means "dropped".

    ``~`` → ``home``; ``~/x`` → ``home/x``; absolute → as is; relative → joined to
    ``base_dir`` (the working directory), or dropped when there is none. Joined paths are
    cleaned like Go's ``filepath.Join``.
    """
    raw = _trim(raw)
    if not raw:
        return ""
    if raw == "~":
        return home
    if raw.startswith("~/"):
        return os.path.normpath(os.path.join(home, raw[2:]))
    if os.path.isabs(raw):
        return raw
    if not base_dir:
        return ""
    return os.path.normpath(os.path.join(base_dir, raw))


def resolve_paths(raw: str, base_dir: str | None, home: str) -> list[str]:
    """Resolve a comma-separated list with :func:`resolve_path`, dropping empty results."""
    if not _trim(raw):
        return []
    out: list[str] = []
    for part in raw.split(","):
        resolved = resolve_path(part, base_dir, home)
        if resolved:
            out.append(resolved)
    return out


def sanitize_instructions(text: str) -> str:
    """Sanitise instruction-file text (§12.1): line endings, comments, invisible characters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _HTML_COMMENT.sub("", text)
    text = _INVISIBLE.sub("", text)
    return _trim(text)


def _equal_fold(a: str, b: str) -> bool:
    """Go's ``strings.EqualFold`` (simple case folding, rune by rune)."""
    if len(a) != len(b):
        return False
    return all(
        x == y or x.lower() == y.lower() or x.upper() == y.upper()
        for x, y in zip(a, b, strict=True)
    )


def _read_capped(path: str, limit: int) -> tuple[bytes, bool]:
    """Read at most ``limit`` bytes of ``path``; the flag says whether the file was longer."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        return data[:limit], True
    return data, False


def _instruction_part(directory: str, file_name: str) -> ChatMessagePart | None:
    """The context-file part for ``directory``, or ``None`` (§12.1 instruction files)."""
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return None
    for entry in entries:
        if not _equal_fold(_trim(entry.name), file_name):
            continue
        try:
            if not entry.is_file():
                continue
        except OSError:
            continue
        path = os.path.normpath(os.path.join(directory, entry.name))
        try:
            raw, truncated = _read_capped(path, MAX_INSTRUCTION_FILE_BYTES)
        except OSError as e:
            _log.debug("instruction file %s unreadable: %s", path, e)
            return None
        content = sanitize_instructions(raw.decode("utf-8", errors="replace"))
        if not content:
            return None
        return ChatMessagePart(
            type=PART_CONTEXT_FILE,
            context_file_path=path,
            context_file_content=content,
            context_file_truncated=truncated,
        )
    return None


def parse_skill_front_matter(text: str) -> tuple[str, str] | None:
    """``(name, description)`` from a skill meta file's YAML front matter, or ``None``.

    An optional UTF-8 BOM is skipped; the first line must be ``---`` and the YAML runs to the
    next ``---`` line. ``name`` must be a non-empty string, ``description`` a string if
    present; trailing CR/LF is trimmed from both (§12.1 skills, step 2).
    """
    text = text.removeprefix(_BOM)
    lines = text.split("\n")
    if _trim(lines[0]) != "---":
        return None
    closing = next((i for i in range(1, len(lines)) if _trim(lines[i]) == "---"), -1)
    if closing < 0:
        return None
    try:
        doc: Any = yaml.safe_load("\n".join(lines[1:closing]))
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict):
        return None
    name = doc.get("name")
    description = doc.get("description")
    if not isinstance(name, str):
        return None
    if description is None:
        description = ""
    elif not isinstance(description, str):
        return None
    name = name.rstrip("\r\n")
    if not name:
        return None
    return name, description.rstrip("\r\n")


def _skill_parts(roots: list[str], meta_file: str) -> list[ChatMessagePart]:
    """Skill parts from every root, first occurrence of a name winning (§12.1 skills)."""
    seen: set[str] = set()
    parts: list[ChatMessagePart] = []
    for root in roots:
        try:
            with os.scandir(root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            meta_path = os.path.join(root, entry.name, meta_file)
            try:
                raw, _ = _read_capped(meta_path, MAX_SKILL_META_BYTES)
            except OSError:
                continue
            parsed = parse_skill_front_matter(raw.decode("utf-8", errors="replace"))
            if parsed is None:
                continue
            name, description = parsed
            if name != entry.name or not _SKILL_NAME.match(name) or name in seen:
                continue
            seen.add(name)
            parts.append(
                ChatMessagePart(
                    type=PART_SKILL,
                    skill_name=name,
                    skill_description=description,
                    skill_dir=os.path.normpath(os.path.join(root, entry.name)),
                    context_file_skill_meta_file=meta_file,
                )
            )
    return parts


class ContextConfigApi:
    """Serves ``GET /api/v0/context-config`` (§12.1).

    ``startup_settled`` is set by the agent once its startup scripts reached a terminal
    state; ``None`` means there is nothing to wait for. ``settle_timeout`` (seconds) caps the
    wait. Building the object reads the ``CODER_AGENT_EXP_*`` settings from
    ``options.environ`` and removes them from it.
    """

    def __init__(
        self,
        options: AgentOptions,
        startup_settled: asyncio.Event | None = None,
        settle_timeout: float = STARTUP_SETTLE_TIMEOUT,
    ) -> None:
        self._options = options
        self._settled = startup_settled
        self._settle_timeout = settle_timeout
        self.settings = read_context_settings(options.environ, remove=True)

    def mcp_config_files(self) -> list[str]:
        """The resolved ``.mcp.json`` paths (§12.2), for the MCP manager."""
        return resolve_paths(
            self.settings.mcp_config_files,
            self._options.working_directory(),
            self._options.home,
        )

    def register(self, router: Router) -> None:
        """Serve the ``ContextConfig`` route."""
        router.add_routes({"ContextConfig": self._get})

    def resolve(self) -> ContextConfigResponse:
        """Build the response from disk now (blocking file I/O; call from a worker thread)."""
        working = self._options.working_directory()
        home = self._options.home
        s = self.settings
        dirs = resolve_paths(s.instructions_dirs, working, home)
        parts: list[ChatMessagePart] = []
        seen: set[str] = set()
        for d in dirs:
            if d in seen:
                continue
            seen.add(d)
            part = _instruction_part(d, s.instructions_file)
            if part is not None:
                parts.append(part)
        if working and working not in seen:
            part = _instruction_part(working, s.instructions_file)
            if part is not None:
                parts.append(part)
        parts.extend(_skill_parts(resolve_paths(s.skills_dirs, working, home), s.skill_meta_file))
        return ContextConfigResponse(parts=parts)

    async def _wait_settled(self, request: Request) -> bool:
        """Wait for startup to settle; ``False`` if the client hung up first.

        Returns ``True`` when settled or when ``settle_timeout`` ran out (answer from disk).
        """
        event = self._settled
        if event is None or event.is_set():
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settle_timeout
        waiter = asyncio.ensure_future(event.wait())
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    _log.warning(
                        "context-config startup gate timed out after %.1fs, returning disk state",
                        self._settle_timeout,
                    )
                    return True
                done, _ = await asyncio.wait({waiter}, timeout=min(remaining, _GONE_POLL_INTERVAL))
                if done:
                    return True
                if request.client_gone:
                    return False
        finally:
            waiter.cancel()

    async def _get(self, request: Request, ctx: RequestContext) -> ResponseLike:
        if not await self._wait_settled(request):
            raise ApiError(503, STARTUP_NOT_SETTLED_MESSAGE, "context canceled")
        response = await asyncio.to_thread(self.resolve)
        return json_ok(response)
