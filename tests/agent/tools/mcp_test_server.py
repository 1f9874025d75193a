"""A real MCP server for the agent's MCP tests, built on the official SDK's ``MCPServer``.

Run ``python mcp_test_server.py`` for stdio or ``python mcp_test_server.py --http PORT`` for
streamable HTTP on ``127.0.0.1:PORT`` (endpoint ``/mcp``).

Tools (each returns an exact, known result so tests can compare the agent's JSON byte for
byte): ``echo`` (text; required ``message``, optional ``count``), ``image`` (a PNG),
``audio`` (a WAV), ``resource`` (an embedded text and blob resource plus a resource link),
``structured`` (text + ``structuredContent``), ``fail`` (``isError: true``), ``slow``
(sleeps ``seconds``), ``env`` (returns an environment variable), ``cwd`` (the working
directory) and ``exit`` (terminates the process without answering: session death).
Resource: ``test://greeting`` (text, ``text/plain``, with ``_meta``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-png").decode()
WAV = base64.b64encode(b"RIFF....WAVEfmt ").decode()
BLOB = base64.b64encode(b"\x00\x01\x02binary").decode()

server = MCPServer("agent-test-server")


@server.tool(description="Echo a message back.")
def echo(message: str, count: int = 1) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message * count)])


@server.tool(description="Return a PNG image.")
def image() -> CallToolResult:
    return CallToolResult(content=[ImageContent(type="image", data=PNG, mime_type="image/png")])


@server.tool(description="Return a WAV clip.")
def audio() -> CallToolResult:
    return CallToolResult(content=[AudioContent(type="audio", data=WAV, mime_type="audio/wav")])


@server.tool(description="Return embedded resources and a resource link.")
def resource() -> CallToolResult:
    return CallToolResult(
        content=[
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri="test://embedded.txt", mime_type="text/plain", text="embedded text"
                ),
            ),
            EmbeddedResource(
                type="resource",
                resource=BlobResourceContents(
                    uri="test://embedded.bin", mime_type="application/octet-stream", blob=BLOB
                ),
            ),
            ResourceLink(
                type="resource_link", uri="test://linked", name="linked", mime_type="text/markdown"
            ),
        ]
    )


@server.tool(description="Return structured content.")
def structured(a: int, b: int) -> CallToolResult:
    total: dict[str, Any] = {"sum": a + b, "items": [a, b]}
    return CallToolResult(
        content=[TextContent(type="text", text=f"{a}+{b}={a + b}")], structured_content=total
    )


@server.tool(description="Fail at the tool level.")
def fail() -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text="it broke")], is_error=True)


@server.tool(description="Sleep, then answer.")
async def slow(seconds: float) -> CallToolResult:
    await asyncio.sleep(seconds)
    return CallToolResult(content=[TextContent(type="text", text="done")])


@server.tool(description="Return an environment variable.")
def env(name: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=os.environ.get(name, "<unset>"))])


@server.tool(description="Return the working directory.")
def cwd() -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=os.getcwd())])


@server.tool(description="Exit the server process without answering.")
def exit() -> CallToolResult:
    sys.stdout.flush()
    os._exit(3)


@server.resource("test://greeting", mime_type="text/plain", meta={"origin": "test"})
def greeting() -> str:
    return "hello from a resource"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=None, help="serve streamable HTTP on PORT")
    args = parser.parse_args()
    if args.http is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
