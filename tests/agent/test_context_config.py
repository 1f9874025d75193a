"""``GET /api/v0/context-config`` (agent-api.md §12.1) over real files and real HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agentconn.agent.api.contextconfig import (
    ENV_INSTRUCTIONS_DIRS,
    ENV_INSTRUCTIONS_FILE,
    ENV_MCP_CONFIG_FILES,
    ENV_SKILL_META_FILE,
    ENV_SKILLS_DIRS,
    ContextConfigApi,
    parse_skill_front_matter,
    resolve_paths,
    sanitize_instructions,
)
from agentconn.agent.api.router import Router
from agentconn.agent.options import AgentOptions

ROUTE = "/api/v0/context-config"
# The ChatMessagePart keys codersdk always emits (not omitempty), with their zero values.
ZERO_KEYS = {"text": "", "url": "", "media_type": "", "file_name": "", "start_line": 0,
             "end_line": 0, "content": ""}


def _file_part(path: Path, content: str, truncated: bool = False) -> dict[str, Any]:
    part = {"type": "context-file", **ZERO_KEYS, "context_file_path": str(path),
            "context_file_content": content}
    if truncated:
        part["context_file_truncated"] = True
    return part


def _skill_part(root: Path, name: str, description: str, meta: str = "SKILL.md") -> dict[str, Any]:
    part: dict[str, Any] = {"type": "skill", **ZERO_KEYS, "skill_name": name}
    if description:
        part["skill_description"] = description
    part.update(skill_dir=str(root / name), context_file_skill_meta_file=meta)
    return part


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    return home, work


async def _serve(make_api: Any, api: ContextConfigApi) -> tuple[Any, Router]:
    router = Router()
    api.register(router)
    return await make_api(router), router


# ---------------------------------------------------------------------------------------------
# configuration


def test_env_vars_read_trimmed_and_removed(tmp_path: Path) -> None:
    environ = {
        ENV_INSTRUCTIONS_DIRS: " /a , b ",
        ENV_INSTRUCTIONS_FILE: "  CLAUDE.md ",
        ENV_SKILLS_DIRS: "   ",
        ENV_SKILL_META_FILE: "META.md",
        ENV_MCP_CONFIG_FILES: "x.json,~/y.json",
        "KEEP": "1",
    }
    home, work = _layout(tmp_path)
    opts = AgentOptions(home=str(home), directory=str(work), environ=environ)
    api = ContextConfigApi(opts)
    assert environ == {"KEEP": "1"}
    s = api.settings
    assert (s.instructions_dirs, s.instructions_file, s.skills_dirs, s.skill_meta_file) == (
        "/a , b", "CLAUDE.md", ".agents/skills", "META.md"
    )
    assert api.mcp_config_files() == [str(work / "x.json"), str(home / "y.json")]
    # Defaults when nothing is set.
    d = ContextConfigApi(AgentOptions(home=str(home), directory=str(work), environ={})).settings
    assert (d.instructions_dirs, d.instructions_file, d.skills_dirs, d.skill_meta_file,
            d.mcp_config_files) == ("~/.coder", "AGENTS.md", ".agents/skills", "SKILL.md",
                                    ".mcp.json")


def test_resolve_paths() -> None:
    assert resolve_paths(" ~ , ~/a/../b, /abs/x/, rel/./y ,, ", "/work", "/home/u") == [
        "/home/u", "/home/u/b", "/abs/x/", "/work/rel/y"
    ]
    assert resolve_paths("rel, /abs", None, "/home/u") == ["/abs"]
    assert resolve_paths("  ", "/work", "/home/u") == []


def test_sanitize_instructions() -> None:
    raw = ("\ufeff  # Title\r\nline<!-- hidden\r\nmulti -->two\rthree\u200b\u202e\u2066"
           "\u00ad\ufe0f\u180e x\u3164y  \n\n")
    assert sanitize_instructions(raw) == "# Title\nlinetwo\nthree xy"
    assert sanitize_instructions("<!-- only -->\r\n \u200b") == ""


def test_parse_skill_front_matter() -> None:
    assert parse_skill_front_matter("---\nname: a\ndescription: d\n---\nbody") == ("a", "d")
    assert parse_skill_front_matter("\ufeff---\r\nname: a\r\n---\r\n") == ("a", "")
    assert parse_skill_front_matter("---\nname: a\ndescription: |\n  two\n  lines\n---\n") == (
        "a", "two\nlines"
    )
    for bad in ("name: a\n", "---\nname: a\n", "---\ndescription: x\n---\n",
                "---\nname: ''\n---\n", "---\nname: [x\n---\n", "---\n- a\n---\n",
                "---\nname: 5\n---\n", "---\nname: a\ndescription: [1]\n---\n", ""):
        assert parse_skill_front_matter(bad) is None, bad


# ---------------------------------------------------------------------------------------------
# the endpoint


async def test_empty_parts_is_array_never_null(tmp_path: Path, make_api: Any) -> None:
    home, work = _layout(tmp_path)
    api, _ = await _serve(make_api, ContextConfigApi(
        AgentOptions(home=str(home), directory=str(work), environ={})))
    r = await api.call("GET", ROUTE)
    assert (r.status, r.body) == (200, b'{"parts":[]}\n')
    assert r.headers["content-type"] == "application/json; charset=utf-8"


async def test_instruction_files(tmp_path: Path, make_api: Any) -> None:
    home, work = _layout(tmp_path)
    coder = home / ".coder"
    coder.mkdir()
    # A directory whose name matches sorts first ("AGENTS.md" < "agents.md") and is skipped.
    (coder / "AGENTS.md").mkdir()
    (coder / "agents.md").write_bytes(
        b"\r\n# Home rules\r\n<!-- secret\r\ninjection -->Be \xe2\x80\x8bnice.\r\r"
        b"\xe2\x80\xaeend\xef\xbb\xbf  \r\n"
    )
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / " Agents.MD ").write_text("x" * 70_000 + "<!-- c -->")
    only_comment = tmp_path / "only-comment"
    only_comment.mkdir()
    (only_comment / "AGENTS.md").write_text("<!-- nothing here -->\n\u200b\n")
    (work / "AGENTS.md").write_text("work rules\n")
    environ = {ENV_INSTRUCTIONS_DIRS: f"~/.coder,{extra},{only_comment},~/.coder,missing"}
    api, _ = await _serve(make_api, ContextConfigApi(
        AgentOptions(home=str(home), directory=str(work), environ=environ)))
    r = await api.call("GET", ROUTE)
    assert r.status == 200
    assert r.json() == {"parts": [
        _file_part(coder / "agents.md", "# Home rules\nBe nice.\n\nend"),
        _file_part(extra / " Agents.MD ", "x" * 65_536, truncated=True),
        _file_part(work / "AGENTS.md", "work rules"),
    ]}


async def test_working_dir_not_read_twice_and_custom_name(tmp_path: Path, make_api: Any) -> None:
    home, work = _layout(tmp_path)
    (work / "claude.md").write_text("only once")
    (work / "AGENTS.md").write_text("not this name")
    environ = {ENV_INSTRUCTIONS_DIRS: str(work), ENV_INSTRUCTIONS_FILE: "CLAUDE.md"}
    api, _ = await _serve(make_api, ContextConfigApi(
        AgentOptions(home=str(home), directory=str(work), environ=environ)))
    r = await api.call("GET", ROUTE)
    assert r.json() == {"parts": [_file_part(work / "claude.md", "only once")]}


async def test_no_working_directory_drops_relative_dirs(tmp_path: Path, make_api: Any) -> None:
    home, work = _layout(tmp_path)
    (work / "AGENTS.md").write_text("work")
    skills = work / ".agents" / "skills" / "s"
    skills.mkdir(parents=True)
    (skills / "SKILL.md").write_text("---\nname: s\n---\n")
    opts = AgentOptions(home=str(home), directory=str(tmp_path / "does-not-exist"), environ={})
    api, _ = await _serve(make_api, ContextConfigApi(opts))
    assert (await api.call("GET", ROUTE)).json() == {"parts": []}


def _skill(root: Path, sub: str, text: str | bytes, meta: str = "SKILL.md") -> None:
    d = root / sub
    d.mkdir(parents=True, exist_ok=True)
    (d / meta).write_bytes(text.encode() if isinstance(text, str) else text)


async def test_skills(tmp_path: Path, make_api: Any) -> None:
    home, work = _layout(tmp_path)
    root1 = work / ".agents" / "skills"
    root2 = tmp_path / "more-skills"
    _skill(root1, "alpha", "---\nname: alpha\ndescription: First alpha.\n---\n# Body\n")
    _skill(root1, "beta", b"\xef\xbb\xbf---\r\nname: beta\r\ndescription: 'BOM + CRLF'\r\n---\r\n")
    _skill(root1, "gamma", "---\nname: other\n---\n")  # name differs from directory
    _skill(root1, "Bad_Name", "---\nname: Bad_Name\n---\n")  # not kebab-case
    _skill(root1, "nameless", "---\ndescription: no name\n---\n")
    _skill(root1, "broken-yaml", "---\nname: [broken-yaml\n---\n")
    _skill(root1, "no-front", "# just markdown\n")
    _skill(root1, "unclosed", "---\nname: unclosed\n")
    _skill(root1, "epsilon", "---\nname: epsilon\n---\n")  # no description → key omitted
    (root1 / "empty-dir").mkdir()
    (root1 / "plain-file.md").write_text("---\nname: plain-file.md\n---\n")
    _skill(root2, "alpha", "---\nname: alpha\ndescription: Shadowed.\n---\n")
    _skill(root2, "delta", "---\nname: delta\ndescription: |\n  Multi\n  line\n---\n")
    _skill(root2, "zeta-2", "---\nname: zeta-2\ndescription: " + "d" * 70_000 + "\n---\n")
    _skill(root2, "meta-named", "---\nname: meta-named\n---\n", meta="OTHER.md")
    environ = {ENV_SKILLS_DIRS: f".agents/skills, {root2}, {tmp_path / 'absent'}",
               ENV_INSTRUCTIONS_DIRS: str(tmp_path / "none")}
    api, _ = await _serve(make_api, ContextConfigApi(
        AgentOptions(home=str(home), directory=str(work), environ=environ)))
    r = await api.call("GET", ROUTE)
    assert r.status == 200
    assert r.json() == {"parts": [
        _skill_part(root1, "alpha", "First alpha."),
        _skill_part(root1, "beta", "BOM + CRLF"),
        _skill_part(root1, "epsilon", ""),
        _skill_part(root2, "delta", "Multi\nline"),
    ]}
    # Exact bytes of one part: the zero-value keys come first, in codersdk's order.
    assert b'{"type":"skill","text":"","url":"","media_type":"","file_name":"","start_line":0,' \
           b'"end_line":0,"content":"","skill_name":"alpha","skill_description":"First alpha.",' \
           b'"skill_dir":"' + str(root1 / "alpha").encode() + \
           b'","context_file_skill_meta_file":"SKILL.md"}' in r.body


async def test_instruction_parts_come_before_skills(tmp_path: Path, make_api: Any) -> None:
    home, work = _layout(tmp_path)
    _skill(work / ".agents" / "skills", "aa", "---\nname: aa\n---\n", meta="META.md")
    (work / "AGENTS.md").write_text("rules")
    api, _ = await _serve(make_api, ContextConfigApi(AgentOptions(
        home=str(home), directory=str(work), environ={ENV_SKILL_META_FILE: "META.md"})))
    parts = (await api.call("GET", ROUTE)).json()["parts"]
    assert [p["type"] for p in parts] == ["context-file", "skill"]
    assert parts[1] == _skill_part(work / ".agents" / "skills", "aa", "", meta="META.md")


# ---------------------------------------------------------------------------------------------
# startup gate


async def _wait_for(predicate: Any, what: str) -> None:
    for _ in range(400):
        if predicate():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


async def test_gate_waits_for_settle_event(tmp_path: Path, make_api: Any) -> None:
    home, work = _layout(tmp_path)
    settled = asyncio.Event()
    api, router = await _serve(make_api, ContextConfigApi(
        AgentOptions(home=str(home), directory=str(work), environ={}), settled,
        settle_timeout=60.0))
    request = asyncio.ensure_future(api.call("GET", ROUTE))
    await _wait_for(lambda: router.requests == 1, "the request to reach the handler")
    await asyncio.sleep(0.2)
    assert not request.done()
    # A "startup script" writes the file while the request waits; then startup settles.
    (work / "AGENTS.md").write_text("written by startup")
    settled.set()
    r = await request
    assert r.status == 200
    assert r.json() == {"parts": [_file_part(work / "AGENTS.md", "written by startup")]}
    # Once settled, requests do not wait.
    assert (await api.call("GET", ROUTE)).status == 200


async def test_gate_timeout_answers_from_disk(tmp_path: Path, make_api: Any) -> None:
    home, work = _layout(tmp_path)
    (work / "AGENTS.md").write_text("on disk")
    api, _ = await _serve(make_api, ContextConfigApi(
        AgentOptions(home=str(home), directory=str(work), environ={}), asyncio.Event(),
        settle_timeout=0.3))
    r = await api.call("GET", ROUTE)
    assert (r.status, r.json()) == (200, {"parts": [_file_part(work / "AGENTS.md", "on disk")]})


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_gate_client_gone_is_503(tmp_path: Path, make_api: Any, how: str) -> None:
    home, work = _layout(tmp_path)
    api, router = await _serve(make_api, ContextConfigApi(
        AgentOptions(home=str(home), directory=str(work), environ={}), asyncio.Event(),
        settle_timeout=60.0))
    _reader, writer = await asyncio.open_connection(api.host, api.port)
    writer.write(f"GET {ROUTE} HTTP/1.1\r\nHost: agent\r\n\r\n".encode())
    await writer.drain()
    await _wait_for(lambda: router.requests == 1, "the request to reach the handler")
    if how == "abort":
        writer.transport.abort()
    else:
        writer.close()
    await _wait_for(lambda: router.status_counts.get(503) == 1, "the handler to give up")
    assert router.status_counts == {503: 1}
