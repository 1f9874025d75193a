"""``GET /api/v0/context-config`` bodies (agent-api.md §12.1)."""

# ruff: noqa: RUF009  # key() is this package's dataclass field specifier, not a default
from __future__ import annotations

from dataclasses import dataclass

from agentconn.proto._codec import Model, Omit, key

__all__ = [
    "PART_CONTEXT_FILE",
    "PART_SKILL",
    "ChatMessagePart",
    "ContextConfigResponse",
    "LegacyContextConfigResponse",
]

PART_CONTEXT_FILE = "context-file"
PART_SKILL = "skill"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessagePart(Model):
    """A ``codersdk.ChatMessagePart`` restricted to what the agent sends.

    ``type`` is a plain string (codersdk has many more part types; consumers ignore unknown
    ones). ``text``, ``url``, ``media_type``, ``file_name``, ``start_line``, ``end_line`` and
    ``content`` are always emitted (not ``omitempty`` in codersdk); the context/skill keys are
    omitted when empty."""

    type: str = key("type")
    text: str = key("text", default="")
    url: str = key("url", default="")
    media_type: str = key("media_type", default="")
    file_name: str = key("file_name", default="")
    start_line: int = key("start_line", default=0)
    end_line: int = key("end_line", default=0)
    content: str = key("content", default="")
    context_file_path: str = key("context_file_path", omit=Omit.EMPTY, default="")
    context_file_content: str = key("context_file_content", omit=Omit.EMPTY, default="")
    context_file_truncated: bool = key("context_file_truncated", omit=Omit.EMPTY, default=False)
    skill_name: str = key("skill_name", omit=Omit.EMPTY, default="")
    skill_description: str = key("skill_description", omit=Omit.EMPTY, default="")
    skill_dir: str = key("skill_dir", omit=Omit.EMPTY, default="")
    context_file_skill_meta_file: str = key(
        "context_file_skill_meta_file", omit=Omit.EMPTY, default=""
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextConfigResponse(Model):
    """``{"parts": [...]}`` (``[]``, never null, means "supports this format")."""

    parts: list[ChatMessagePart] = key("parts", default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class LegacyContextConfigResponse(Model):
    """The paths-only shape of earlier agents [version]."""

    instructions_dirs: list[str] = key("instructions_dirs", default_factory=list)
    instructions_file: str = key("instructions_file", default="AGENTS.md")
    skills_dirs: list[str] = key("skills_dirs", default_factory=list)
    skill_meta_file: str = key("skill_meta_file", default="SKILL.md")
    mcp_config_files: list[str] = key("mcp_config_files", default_factory=list)
