"""MCP servers through the agent's HTTP API (agent-api.md §12.2-§12.5), against real servers.

The servers are ``tools/mcp_test_server.py`` (the official SDK's ``MCPServer``) spawned over
stdio from a real ``.mcp.json`` and over streamable HTTP on a loopback port this module
starts. Nothing of the SDK or of the manager is mocked.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agentconn.agent.api.contextconfig import ENV_MCP_CONFIG_FILES
from agentconn.agent.api.mcp import McpManager, expand_env, parse_config
from agentconn.agent.api.router import Router
from agentconn.agent.options import AgentOptions

SERVER = str(Path(__file__).parent / "tools" / "mcp_test_server.py")
PNG = "iVBORw0KGgpmYWtlLXBuZw=="
WAV = "UklGRi4uLi5XQVZFZm10IA=="


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, str]:
    """Live (non-zombie) child processes of this test process: pid → command line."""
    me = os.getpid()
    out: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me and fields[0] != "Z":
            out[int(entry)] = cmd
    return out


def _stdio_children() -> dict[int, str]:
    return {p: c for p, c in _children().items() if SERVER in c and "--http" not in c}


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    """A streamable-HTTP test server on a free loopback port; yields its MCP URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"test MCP HTTP server exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("test MCP HTTP server did not start listening")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


def _write(path: Path, doc: Any) -> str:
    path.write_bytes(doc if isinstance(doc, bytes) else orjson.dumps(doc))
    return str(path)


def _options(tmp_path: Path) -> AgentOptions:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    environ = dict(os.environ)
    environ.update(TEST_GREETING="hello", TEST_SUFFIX="world", AGENT_ONLY="from-agent")
    return AgentOptions(home=str(tmp_path / "home"), directory=str(work), environ=environ)


def _config_files(tmp_path: Path, http_url: str) -> list[str]:
    good = {
        "mcpServers": {
            "py": {
                "command": sys.executable,
                "args": [SERVER],
                "env": {"GREETING": "${TEST_GREETING}-$TEST_SUFFIX!", "AGENT_ONLY": "$AGENT_ONLY"},
            },
            "web": {"url": http_url},
            "broken": {"command": str(tmp_path / "no-such-binary")},
            "a__b": {"command": sys.executable, "args": [SERVER]},
            "_lead": {"command": sys.executable, "args": [SERVER]},
            "nothing": {},
        }
    }
    second = {"mcpServers": {"py": {"command": str(tmp_path / "shadowed")}}}
    shadow = orjson.dumps({"mcpServers": {"hidden": {"command": sys.executable, "args": [SERVER]}}})
    return [
        # Malformed JSON (trailing garbage) and a wrong shape: each file is ignored whole.
        _write(tmp_path / "malformed.json", shadow + b" trailing"),
        _write(tmp_path / "shape.json", {"mcpServers": [shadow.decode()]}),
        str(tmp_path / "missing.json"),
        _write(tmp_path / "work" / ".mcp.json", good),
        _write(tmp_path / "second.json", second),
    ]


@pytest.fixture
async def mcp_api(tmp_path: Path, http_server: str, make_api: Any) -> AsyncIterator[Any]:
    options = _options(tmp_path)
    manager = McpManager(options, _config_files(tmp_path, http_server), call_timeout=2.0)
    await manager.start()
    router = Router()
    manager.register(router)
    api = await make_api(router)
    api.manager = manager
    api.router = router
    try:
        yield api
    finally:
        await manager.close()


async def _call(api: Any, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    body: dict[str, Any] = {"tool_name": tool}
    if arguments is not None:
        body["arguments"] = arguments
    return await api.call("POST", "/api/v0/mcp/call-tool", body=body)


# ---------------------------------------------------------------------------------------------
# config parsing (§12.2)


def test_expand_env_matches_go_os_expand() -> None:
    env = {"A": "x", "B_1": "y", "1": "one"}
    cases = {
        "${A}": "x",
        "$A": "x",
        "$B_1-z": "y-z",
        "pre${A}post": "prexpost",
        "$": "$",
        "a$": "a$",
        "$ x": "$ x",
        "${}": "",
        "${A": "A",
        "$1": "one",
        "$-": "",
        "$UNSET.": ".",
        "${UNSET}": "",
        "$$": "",
    }
    for raw, want in cases.items():
        assert expand_env(raw, env) == want, raw


def test_parse_config_rules(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.json",
        {
            "mcpServers": {
                "zeta": {"url": "https://z/mcp", "headers": {"Authorization": "Bearer t"}},
                "alpha": {"command": "run", "args": ["-x"], "env": {"K": "${V}"}},
                "ev": {"type": "sse", "url": "https://e/sse"},
                "both": {"command": "c", "url": "https://u"},
                "explicit": {"type": "http", "command": "ignored", "url": "https://x"},
                "a__b": {"command": "c"},
                "_a": {"command": "c"},
                "b_": {"command": "c"},
                "mid_ok": {"command": "c"},
                "none": {},
                "badargs": {"command": "c", "args": "not-a-list"},
                "badenv": {"command": "c", "env": {"K": 1}},
                "notobj": [],
            }
        },
    )
    configs = parse_config(path, {"V": "value"})
    assert [c.name for c in configs] == ["alpha", "both", "ev", "explicit", "mid_ok", "zeta"]
    by = {c.name: c for c in configs}
    assert (by["alpha"].transport, by["alpha"].args, by["alpha"].env) == (
        "stdio", ("-x",), (("K", "value"),)
    )
    assert by["both"].transport == "stdio"
    assert by["ev"].transport == "sse"
    assert by["explicit"].transport == "http"
    assert (by["zeta"].transport, by["zeta"].headers) == (
        "http", (("Authorization", "Bearer t"),)
    )
    assert parse_config(_write(tmp_path / "empty.json", {}), {}) == []
    assert parse_config(_write(tmp_path / "null.json", {"mcpServers": None}), {}) == []
    with pytest.raises(ValueError):
        parse_config(_write(tmp_path / "bad.json", b"{nope"), {})
    with pytest.raises(ValueError):
        parse_config(_write(tmp_path / "list.json", []), {})
    with pytest.raises(FileNotFoundError):
        parse_config(str(tmp_path / "absent.json"), {})


def test_default_config_files_follow_env_setting(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    opts = AgentOptions(home=str(tmp_path / "h"), directory=str(work), environ={})
    assert McpManager(opts).config_files() == [str(work / ".mcp.json")]
    opts.environ[ENV_MCP_CONFIG_FILES] = " conf/a.json , ~/b.json,, /abs/c.json "
    assert McpManager(opts).config_files() == [
        str(work / "conf" / "a.json"),
        str(tmp_path / "h" / "b.json"),
        "/abs/c.json",
    ]
    no_dir = AgentOptions(home=str(tmp_path / "h"), directory=None, environ={})
    assert McpManager(no_dir).config_files() == []


# ---------------------------------------------------------------------------------------------
# list tools (§12.3)


async def test_list_tools(mcp_api: Any) -> None:
    r = await mcp_api.call("GET", "/api/v0/mcp/tools")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    tools = r.json()["tools"]
    names = [t["name"] for t in tools]
    assert names == sorted(names)
    per_server = ["audio", "cwd", "echo", "env", "exit", "fail", "image", "resource", "slow",
                  "structured"]
    # Only "py" (from the first file naming it) and "web": no "hidden", "broken", "a__b", ….
    assert names == sorted([f"py__{n}" for n in per_server] + [f"web__{n}" for n in per_server])
    echo = next(t for t in tools if t["name"] == "py__echo")
    assert echo == {
        "server_name": "py",
        "name": "py__echo",
        "description": "Echo a message back.",
        "schema": {
            "message": {"title": "Message", "type": "string"},
            "count": {"default": 1, "title": "Count", "type": "integer"},
        },
        "required": ["message"],
    }
    image = next(t for t in tools if t["name"] == "web__image")
    assert image == {"server_name": "web", "name": "web__image",
                     "description": "Return a PNG image.", "schema": {}, "required": []}
    # Unknown query parameters and values never fail the listing.
    r = await mcp_api.call("GET", "/api/v0/mcp/tools?refresh=yes&bogus=1")
    assert r.status == 200 and [t["name"] for t in r.json()["tools"]] == names


async def test_list_tools_empty_is_array(tmp_path: Path, make_api: Any) -> None:
    manager = McpManager(_options(tmp_path), [str(tmp_path / "absent.json")])
    await manager.start()
    router = Router()
    manager.register(router)
    api = await make_api(router)
    try:
        r = await api.call("GET", "/api/v0/mcp/tools?refresh=true")
        assert (r.status, r.body) == (200, b'{"tools":[]}\n')
    finally:
        await manager.close()


# ---------------------------------------------------------------------------------------------
# call tool (§12.4)


async def test_call_tool_content_mapping(mcp_api: Any) -> None:
    for server in ("py", "web"):
        r = await _call(mcp_api, f"{server}__echo", {"message": "hi", "count": 2})
        assert (r.status, r.body) == (
            200, b'{"content":[{"type":"text","text":"hihi"}],"is_error":false}\n'
        )
        r = await _call(mcp_api, f"{server}__image")
        assert r.json() == {"content": [{"type": "image", "data": PNG, "media_type": "image/png"}],
                            "is_error": False}
        r = await _call(mcp_api, f"{server}__audio")
        assert r.json() == {"content": [{"type": "audio", "data": WAV, "media_type": "audio/wav"}],
                            "is_error": False}
        r = await _call(mcp_api, f"{server}__resource")
        assert r.json() == {
            "content": [
                {"type": "resource", "uri": "test://embedded.txt",
                 "resource": {"uri": "test://embedded.txt", "mime_type": "text/plain",
                              "text": "embedded text"}},
                {"type": "resource", "uri": "test://embedded.bin",
                 "resource": {"uri": "test://embedded.bin",
                              "mime_type": "application/octet-stream", "blob": "AAECYmluYXJ5"}},
                {"type": "resource", "uri": "test://linked",
                 "resource": {"uri": "test://linked", "mime_type": "text/markdown"}},
            ],
            "is_error": False,
        }
        r = await _call(mcp_api, f"{server}__structured", {"a": 2, "b": 3})
        assert r.json() == {"content": [{"type": "text", "text": "2+3=5"}], "is_error": False,
                            "structured_content": {"sum": 5, "items": [2, 3]}}
        r = await _call(mcp_api, f"{server}__fail")
        assert (r.status, r.json()) == (
            200, {"content": [{"type": "text", "text": "it broke"}], "is_error": True}
        )


async def test_call_tool_env_and_cwd_reach_stdio_server(mcp_api: Any, tmp_path: Path) -> None:
    async def text(tool: str, args: dict[str, Any]) -> str:
        r = await _call(mcp_api, tool, args)
        assert r.status == 200, r.body
        return str(r.json()["content"][0]["text"])

    assert await text("py__env", {"name": "GREETING"}) == "hello-world!"
    assert await text("py__env", {"name": "AGENT_ONLY"}) == "from-agent"
    assert await text("py__env", {"name": "TEST_SUFFIX"}) == "world"
    assert await text("py__cwd", {}) == str(tmp_path / "work")


async def test_call_tool_errors(mcp_api: Any) -> None:
    msg = "MCP tool call failed."
    for bad in ("nosep", "__echo", "py__", ""):
        r = await _call(mcp_api, bad)
        assert r.status == 400, bad
        body = r.json()
        assert body["message"] == msg and "invalid tool name format" in body["detail"]
    r = await _call(mcp_api, "nope__echo")
    assert (r.status, r.json()) == (404, {"message": msg,
                                          "detail": 'unknown MCP server: "nope"'})
    # Rejected and failed servers are unknown, too ("a__echo" splits at the first "__").
    for name in ("broken", "a", "_lead", "nothing"):
        assert (await _call(mcp_api, f"{name}__echo")).status == 404
    r = await mcp_api.call("POST", "/api/v0/mcp/call-tool", body=b"")
    assert (r.status, r.json()["message"]) == (400, "Request body must be valid JSON.")
    r = await mcp_api.call("POST", "/api/v0/mcp/call-tool", body={"tool_name": 5})
    assert r.status == 400


async def test_call_tool_timeout_is_502_and_server_survives(mcp_api: Any) -> None:
    r = await _call(mcp_api, "py__slow", {"seconds": 30})
    assert r.status == 502
    assert r.json() == {
        "message": "MCP tool call failed.",
        "detail": 'call tool "slow" on "py": context deadline exceeded',
    }
    r = await _call(mcp_api, "py__echo", {"message": "still here"})
    assert r.status == 200 and r.json()["content"][0]["text"] == "still here"


async def test_session_death_is_502_others_keep_working_refresh_reconnects(mcp_api: Any) -> None:
    r = await _call(mcp_api, "py__exit")
    assert r.status == 502 and r.json()["message"] == "MCP tool call failed."
    assert r.json()["detail"].startswith('call tool "exit" on "py": ')
    r = await _call(mcp_api, "py__echo", {"message": "x"})
    assert r.status == 502
    r = await _call(mcp_api, "web__echo", {"message": "web ok"})
    assert r.status == 200 and r.json()["content"][0]["text"] == "web ok"
    # The dead child was reaped by the SDK's shutdown.
    for _ in range(200):
        if not _stdio_children():
            break
        await asyncio.sleep(0.05)
    assert _stdio_children() == {}
    # refresh=true reconnects the dead server.
    r = await mcp_api.call("GET", "/api/v0/mcp/tools?refresh=true")
    assert r.status == 200 and "py__echo" in [t["name"] for t in r.json()["tools"]]
    r = await _call(mcp_api, "py__echo", {"message": "back"})
    assert r.status == 200 and r.json()["content"][0]["text"] == "back"


async def test_refresh_picks_up_config_changes(mcp_api: Any, tmp_path: Path) -> None:
    config = tmp_path / "work" / ".mcp.json"
    _write(config, {"mcpServers": {"solo": {"command": sys.executable, "args": [SERVER]}}})
    r = await mcp_api.call("GET", "/api/v0/mcp/tools")
    assert {t["server_name"] for t in r.json()["tools"]} == {"py", "web"}
    r = await mcp_api.call("GET", "/api/v0/mcp/tools?refresh=true")
    assert {t["server_name"] for t in r.json()["tools"]} == {"solo"}
    assert (await _call(mcp_api, "py__echo", {"message": "x"})).status == 404
    assert (await _call(mcp_api, "solo__echo", {"message": "x"})).status == 200
    assert len(_stdio_children()) == 1


# ---------------------------------------------------------------------------------------------
# read resource (§12.5)


async def test_read_resource(mcp_api: Any) -> None:
    for server in ("py", "web"):
        r = await mcp_api.call("POST", "/api/v0/mcp/read-resource",
                               body={"server_name": server, "uri": "test://greeting"})
        assert (r.status, r.json()) == (200, {
            "uri": "test://greeting", "mime_type": "text/plain",
            "text": "hello from a resource", "meta": {"origin": "test"},
        })
    r = await mcp_api.call("POST", "/api/v0/mcp/read-resource",
                           body={"server_name": "nope", "uri": "test://greeting"})
    assert r.status == 404
    r = await mcp_api.call("POST", "/api/v0/mcp/read-resource",
                           body={"server_name": "py", "uri": "test://absent"})
    assert r.status == 502 and "test://absent" in r.json()["detail"]
    for body in ({"server_name": "py"}, {"uri": "test://greeting"},
                 {"server_name": "", "uri": "test://greeting"}, b"not json"):
        r = await mcp_api.call("POST", "/api/v0/mcp/read-resource", body=body)
        assert r.status == 400, body


# ---------------------------------------------------------------------------------------------
# lifecycle


async def test_close_leaves_no_children_or_tasks(tmp_path: Path, http_server: str) -> None:
    before = _stdio_children()
    manager = McpManager(_options(tmp_path), _config_files(tmp_path, http_server))
    await manager.start()
    started = _stdio_children()
    assert len(started) == len(before) + 1
    assert [t.name for t in manager.tools()][:2] == ["py__audio", "py__cwd"]
    await manager.close()
    assert _stdio_children() == before
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("mcp-server:")] == []
    assert manager.tools() == []
    # Closing twice is harmless; a closed manager does not reconnect.
    await manager.close()
    await manager.start()
    assert _stdio_children() == before


async def test_start_never_raises_for_bad_servers(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.json", {"mcpServers": {
        "exits": {"command": sys.executable, "args": ["-c", "pass"]},
        "garbage": {"command": sys.executable, "args": ["-c", "print('not json'); import time; time.sleep(60)"]},
        "ws": {"type": "websocket", "url": "ws://127.0.0.1:1/"},
    }})
    manager = McpManager(_options(tmp_path), [path], connect_timeout=3.0)
    await manager.start()
    try:
        assert manager.tools() == []
    finally:
        await manager.close()
    assert [c for c in _children().values() if "time.sleep(60)" in c] == []
