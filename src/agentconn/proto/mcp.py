"""MCP tool bodies: list tools, call tool, read resource (agent-api.md §12.3-§12.5)."""

# ruff: noqa: RUF009  # key() is this package's dataclass field specifier, not a default
from __future__ import annotations

import enum
from dataclasses import dataclass

from agentconn.proto._codec import JSON, Model, Omit, key

__all__ = [
    "TOOL_NAME_SEP",
    "CallMCPToolRequest",
    "CallMCPToolResponse",
    "ListMCPToolsResponse",
    "MCPContent",
    "MCPContentType",
    "MCPResourceContents",
    "MCPTool",
    "ReadMCPResourceRequest",
    "ReadMCPResourceResponse",
]

#: Separator between server and tool in an exposed tool name (``<server>__<tool>``).
TOOL_NAME_SEP = "__"


class MCPContentType(str, enum.Enum):
    """``MCPContent.type``."""

    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    RESOURCE = "resource"


@dataclass(frozen=True, slots=True, kw_only=True)
class MCPTool(Model):
    """A tool: ``schema`` is the input schema's ``properties`` object, ``required`` its list."""

    server_name: str = key("server_name")
    name: str = key("name")
    description: str = key("description", default="")
    schema: dict[str, JSON] = key("schema", default_factory=dict)
    required: list[str] = key("required", default_factory=list)
    ui_resource_uri: str = key("ui_resource_uri", omit=Omit.EMPTY, default="")


@dataclass(frozen=True, slots=True, kw_only=True)
class ListMCPToolsResponse(Model):
    """``GET /api/v0/mcp/tools`` body (always 200), sorted by name, ``[]`` when none."""

    tools: list[MCPTool] = key("tools", default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallMCPToolRequest(Model):
    """``POST /api/v0/mcp/call-tool`` body; ``tool_name`` is split at the first ``__``."""

    tool_name: str = key("tool_name", default="")
    arguments: dict[str, JSON] = key("arguments", omit=Omit.EMPTY, default_factory=dict)

    def split(self) -> tuple[str, str] | None:
        """``(server, tool)`` or ``None`` when either part is empty or there is no separator."""
        server, sep, tool = self.tool_name.partition(TOOL_NAME_SEP)
        if not sep or not server or not tool:
            return None
        return server, tool


@dataclass(frozen=True, slots=True, kw_only=True)
class MCPResourceContents(Model):
    """A resource's contents (first item of ``resources/read``); optional fields omitted."""

    uri: str = key("uri")
    mime_type: str = key("mime_type", omit=Omit.EMPTY, default="")
    text: str = key("text", omit=Omit.EMPTY, default="")
    blob: str = key("blob", omit=Omit.EMPTY, default="")
    meta: dict[str, JSON] = key("meta", omit=Omit.EMPTY, default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class MCPContent(Model):
    """One content item of a tool result: text, image/audio (base64 ``data``), or resource.

    ``type`` is an open enum (Go: a plain ``string``): a type newer than :class:`MCPContentType`
    is kept as its string instead of failing the whole response."""

    type: str = key("type", enum=MCPContentType)
    text: str = key("text", omit=Omit.EMPTY, default="")
    data: str = key("data", omit=Omit.EMPTY, default="")
    media_type: str = key("media_type", omit=Omit.EMPTY, default="")
    uri: str = key("uri", omit=Omit.EMPTY, default="")
    resource: MCPResourceContents | None = key("resource", omit=Omit.NONE, default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallMCPToolResponse(Model):
    """call-tool 200 body; ``is_error`` mirrors MCP ``isError`` [``structured_content``: version]."""

    content: list[MCPContent] = key("content", default_factory=list)
    is_error: bool = key("is_error", default=False)
    structured_content: JSON = key("structured_content", omit=Omit.NONE, default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadMCPResourceRequest(Model):
    """``POST /api/v0/mcp/read-resource`` body."""

    server_name: str = key("server_name", default="")
    uri: str = key("uri", default="")


ReadMCPResourceResponse = MCPResourceContents
