"""Would coder's Go client decode what our agent answers? Asked of Go's own ``encoding/json``.

``go_decode/main.go`` mirrors the Go types ``codersdk/workspacesdk.AgentConn`` decodes each
answer into (written from the types' facts: field types and json tags, with tailscale's
``opt.Bool`` and google/uuid's text rules), and decodes a body exactly as the client's
``decodeAgentJSON`` does (``json.NewDecoder(body).Decode(&v)``): unknown keys ignored, a value
of the wrong JSON type (a float for an ``int``, a string for an ``opt.Bool``, a non-RFC 3339
``time.Time``) fails. The live test drives every JSON route of a real agent over the tunnel
and feeds each raw answer (successes and ``codersdk.Response`` error bodies) to it; the
model test does the same for an instance of every response model, including the shapes the
live agent cannot produce here (desktop, truncated output, the bundle-files manifest, which
our agent does not serve). The
reverse direction (our client reading what Go writes, ``nil`` slices as ``null``) uses Go's
encoding of each type's zero value.

Needs ``go`` (Debian ``golang-go``; standard library only). Without it the tests skip, and fail
under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from agent_pair import agent_pair

from agentconn import AgentApiError
from agentconn.proto import models as m
from agentconn.proto._codec import go_json

_SRC = Path(__file__).resolve().parent / "go_decode"


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"prerequisite missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def go_decode(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        _missing("go not found (Debian package golang-go)")
    out = tmp_path_factory.mktemp("go_decode")
    binary = out / "go_decode"
    env = dict(os.environ, GO111MODULE="off", GOFLAGS="", GOPATH=str(out / "gopath"))
    env.setdefault("GOCACHE", str(out / "gocache"))
    result = subprocess.run([str(go), "build", "-o", str(binary), "main.go"], cwd=_SRC, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        pytest.fail(f"building go_decode failed:\n{result.stderr}", pytrace=False)
    return binary


@dataclass
class GoResult:
    code: int
    out: str
    err: str


def _go(binary: Path, mode: str, type_name: str, body: bytes = b"") -> GoResult:
    r = subprocess.run([str(binary), mode, type_name], input=body, capture_output=True,
                       timeout=60, check=False)
    return GoResult(r.returncode, r.stdout.decode(), r.stderr.decode())


def assert_go_decodes(binary: Path, type_name: str, body: bytes, what: str) -> None:
    r = _go(binary, "decode", type_name, body)
    assert r.code == 0, f"{what}: Go cannot decode it as {type_name}: {r.err.strip()}\n{body!r}"


# -- the live agent --------------------------------------------------------------------------

#: Route → the Go type its 200 body is decoded into (workspacesdk unless noted).
GO_TYPE = {
    "Netcheck": "AgentNetcheckReport",                          # healthsdk
    "ListeningPorts": "WorkspaceAgentListeningPortsResponse",   # codersdk
    "LS": "LSResponse",
    "ResolvePath": "ResolvePathResponse",
    "ReadFileLines": "ReadFileLinesResponse",
    "WriteFile": "Response",                                    # codersdk.Response
    "EditFiles": "FileEditResponse",
    "StartProcess": "StartProcessResponse",
    "ListProcesses": "ListProcessesResponse",
    "ProcessOutput": "ProcessOutputResponse",
    "SignalProcess": "Response",
    "ContextConfig": "ContextConfigResponse",
    "ListMCPTools": "ListMCPToolsResponse",
    "CallMCPTool": "CallMCPToolResponse",
    "ReadMCPResource": "ReadMCPResourceResponse",
    "DebugManifest": "Manifest",                                # agentsdk (support bundle)
}


class _Recorder:
    """Wraps an AgentConn's ``_call`` so each raw body is kept, then decoded as before."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.bodies: list[tuple[str, bytes]] = []
        self.errors: list[tuple[str, int, bytes]] = []

        async def call(name: str, model: type[Any], **kw: Any) -> Any:
            try:
                raw = await conn._bytes(name, **kw)
            except AgentApiError as e:
                self.errors.append((name, e.status, e.body))
                raise
            self.bodies.append((name, raw))
            return model.from_json(raw)

        conn._call = call

    async def raw(self, name: str, **kw: Any) -> bytes:
        try:
            raw: bytes = await self.conn._bytes(name, **kw)
        except AgentApiError as e:
            self.errors.append((name, e.status, e.body))
            raise
        self.bodies.append((name, raw))
        return raw

    async def expect_error(self, coro: Any) -> None:
        with pytest.raises(AgentApiError):
            await coro


async def test_every_live_answer_decodes_in_go(tmp_path: Path, go_decode: Path) -> None:
    server = Path(__file__).parent / "tools" / "mcp_test_server.py"
    work = tmp_path / "work"
    work.mkdir()
    (work / ".mcp.json").write_text(orjson.dumps({"mcpServers": {
        "py": {"command": sys.executable, "args": [str(server)]}}}).decode())
    (work / "a.txt").write_text("one\ntwo <&> three\n")
    (work / "sub").mkdir()
    (work / "empty").mkdir()
    async with agent_pair(tmp_path) as p:
        rec = _Recorder(p.conn)
        conn = p.conn
        await conn.netcheck()
        await conn.listening_ports()
        await conn.ls(str(work))
        await conn.ls(str(work / "empty"))
        await conn.ls(request=m.LSRequest(path=[], relativity="root"))
        await rec.expect_error(conn.ls(str(work / "missing")))
        await rec.expect_error(conn.ls("relative"))
        await conn.resolve_path(str(work / "a.txt"))
        await conn.read_file_lines(str(work / "a.txt"))
        await conn.read_file_lines(str(work / "missing.txt"))
        await rec.expect_error(conn.resolve_path("relative"))
        await rec.expect_error(rec.raw("ReadFile", query={"path": str(work / "a.txt"),
                                                          "offset": -1}))
        await rec.raw("WriteFile", query={"path": str(work / "new.txt")}, body=b"new\n")
        await conn.edit_files({str(work / "a.txt"): [("two", "2")]})
        await conn.edit_files({str(work / "a.txt"): [("2", "two")]}, include_diff=True)
        await rec.expect_error(conn.edit_files({str(work / "a.txt"): [("absent", "x")]}))
        done = await conn.start_process("echo out; echo err >&2; exit 3", workdir=str(work))
        await conn.process_output(done.id, wait=True)
        sleeper = await conn.start_process("sleep 30", background=True)
        await conn.list_processes()
        await conn.process_output(sleeper.id)
        await conn.signal_process(sleeper.id, "kill")
        await conn.process_output(sleeper.id, wait=True)
        await rec.expect_error(conn.signal_process(done.id, "terminate"))
        await rec.expect_error(conn.process_output(str(uuid.uuid4())))
        await conn.list_processes()
        await conn.context_config()
        for _ in range(300):  # the agent connects MCP servers in the background
            if (await conn.list_mcp_tools()).tools:
                break
            await __import__("asyncio").sleep(0.1)
        for tool, args in [("py__echo", {"message": "<hi>", "count": 2}), ("py__image", {}),
                           ("py__audio", {}), ("py__resource", {}),
                           ("py__structured", {"a": 1, "b": 2}), ("py__fail", {})]:
            await conn.call_mcp_tool(tool, args)
        await rec.expect_error(conn.call_mcp_tool("nosuch__tool"))
        await conn.read_mcp_resource("py", "test://greeting")
        manifest = await conn.debug_manifest()
        rec.bodies.append(("DebugManifest", manifest))
    # every agentsdk.Manifest key, as a real agent's (Go writes each one: no omitempty)
    assert set(orjson.loads(manifest)) >= {
        "agent_id", "agent_name", "owner_name", "workspace_id", "workspace_name",
        "git_auth_configs", "vscode_port_proxy_uri", "apps", "derpmap", "derp_force_websockets",
        "environment_variables", "directory", "motd_file", "disable_direct_connections",
        "metadata", "scripts", "devcontainers"}

    seen = {name for name, _ in rec.bodies}
    assert set(GO_TYPE) <= seen | {"DebugManifest"}, set(GO_TYPE) - seen
    for name, body in rec.bodies:
        assert_go_decodes(go_decode, GO_TYPE[name], body, f"{name} 200")
    assert len(rec.errors) >= 8
    assert any(b'"validations":[' in body for _, _, body in rec.errors), rec.errors
    for name, status, body in rec.errors:
        assert_go_decodes(go_decode, "Response", body, f"{name} {status}")


# -- every response model, as our encoder writes it ------------------------------------------

_NOW = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)

#: (Go type, instance): the fullest shapes, every optional field set.
MODEL_CASES: list[tuple[str, m.Model]] = [
    ("Response", m.Response(message="m", detail="d",
                            validations=[m.Validation(field="path", detail="x")])),
    ("LSResponse", m.LSResponse(absolute_path=["a"], absolute_path_string="/a", contents=[
        m.LSFile(name="b", absolute_path_string="/a/b", is_dir=True)])),
    ("ReadFileLinesResponse", m.ReadFileLinesResponse(success=True, file_size=2**40,
                                                      total_lines=3, lines_read=3, content="x")),
    ("FileEditResponse", m.FileEditResponse(files=[m.FileEditResult(path="/a", diff="")])),
    ("BundleFilesManifest", m.BundleManifest(
        requested=["/a"],
        files=[m.BundleManifestFile(requested="/a", path="/a", archive_path="files/a",
                                    size=5, mod_time=_NOW, bytes_written=5, truncated=False)],
        errors=[m.BundleManifestError(requested="/b", path="", reason="no matches")])),
    ("StartProcessResponse", m.StartProcessResponse(id=str(uuid.uuid4()), started=True,
                                                    attached=True, client_token="t")),
    ("ProcessOutputResponse", m.ProcessOutputResponse(
        output="o", running=False, exit_code=-1, command="c",
        truncated=m.OutputTruncation(original_bytes=10, retained_bytes=5, omitted_bytes=5))),
    ("ListProcessesResponse", m.ListProcessesResponse(processes=[m.ProcessInfo(
        id="i", command="c", workdir="/", running=False, exit_code=0,
        started_at_unix=1_700_000_000, exited_at_unix=1_700_000_001)])),
    ("WorkspaceAgentListeningPortsResponse", m.ListeningPortsResponse(ports=[
        m.ListeningPort(process_name="p", port=65535)])),
    ("ListMCPToolsResponse", m.ListMCPToolsResponse(tools=[m.MCPTool(
        server_name="s", name="s__t", schema={"x": {"type": "string"}}, required=["x"],
        ui_resource_uri="ui://x")])),
    ("CallMCPToolResponse", m.CallMCPToolResponse(is_error=True, structured_content=[1, "a"],
                                                  content=[
        m.MCPContent(type=m.MCPContentType.IMAGE, data="iVBORw0KGgo=", media_type="image/png"),
        m.MCPContent(type=m.MCPContentType.RESOURCE, uri="u", resource=m.MCPResourceContents(
            uri="u", mime_type="text/plain", text="t", meta={"k": [1]}))])),
    ("ReadMCPResourceResponse", m.MCPResourceContents(uri="u", blob="AAAA", meta={"a": None})),
    ("ContextConfigResponse", m.ContextConfigResponse(parts=[
        m.ChatMessagePart(type="context-file", context_file_path="/AGENTS.md",
                          context_file_content="c", context_file_truncated=True),
        m.ChatMessagePart(type="skill", skill_name="n", skill_description="d", skill_dir="/s",
                          context_file_skill_meta_file="SKILL.md")])),
    ("DesktopActionResponse", m.DesktopActionResponse(output="o", screenshot_data="AAAA",
                                                      screenshot_width=1280,
                                                      screenshot_height=720)),
    ("AgentNetcheckReport", m.NetcheckReport(
        error="e", severity=m.Severity.WARNING,
        warnings=[m.HealthMessage(code="EIF01", message="m")],
        net_info={"WorkingUDP": True, "WorkingIPv6": None, "OSHasIPv6": False,
                  "PreferredDERP": 0, "DERPLatency": {"1-v4": 0.0123}},
        interfaces=m.InterfacesReport(interfaces=[m.InterfaceInfo(name="lo", mtu=65536,
                                                                 addresses=["::1/128"])]))),
]


@pytest.mark.parametrize(("go_type", "model"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_model_encodings_decode_in_go(go_decode: Path, go_type: str, model: m.Model) -> None:
    assert_go_decodes(go_decode, go_type, go_json(model.to_json()), type(model).__name__)


def test_go_decode_rejects_what_go_rejects(go_decode: Path) -> None:
    """The harness is strict where Go is: each of these bodies fails to decode."""
    for go_type, body in [
        ("AgentNetcheckReport", b'{"net_info":{"WorkingUDP":"true"}}'),  # opt.Bool string
        ("WorkspaceAgentListeningPortsResponse", b'{"ports":[{"port":1.0}]}'),  # float uint16
        ("WorkspaceAgentListeningPortsResponse", b'{"ports":[{"port":65536}]}'),
        ("ListProcessesResponse", b'{"processes":[{"started_at_unix":1.5e9}]}'),
        ("BundleFilesManifest", b'{"files":[{"mod_time":"2026-05-04 03:02:01"}]}'),
        ("ListMCPToolsResponse", b'{"tools":[{"schema":[]}]}'),
        ("Manifest", b'{"agent_id":"not-a-uuid"}'),
        ("ContextConfigResponse", b'{"parts":[{"type":"file","data":"not base64!"}]}'),
    ]:
        assert _go(go_decode, "decode", go_type, body).code == 1, (go_type, body)


# -- what Go writes, read by our client ------------------------------------------------------

#: Go type → our model: Go's encoding of the zero value (nil slices/maps/pointers as null,
#: omitempty keys absent) must decode.
ZERO_CASES = [
    ("Response", m.Response), ("LSResponse", m.LSResponse),
    ("ResolvePathResponse", m.ResolvePathResponse),
    ("ReadFileLinesResponse", m.ReadFileLinesResponse),
    ("FileEditResponse", m.FileEditResponse), ("BundleFilesManifest", m.BundleManifest),
    ("StartProcessResponse", m.StartProcessResponse),
    ("ListProcessesResponse", m.ListProcessesResponse),
    ("ProcessOutputResponse", m.ProcessOutputResponse),
    ("WorkspaceAgentListeningPortsResponse", m.ListeningPortsResponse),
    ("AgentNetcheckReport", m.NetcheckReport), ("ListMCPToolsResponse", m.ListMCPToolsResponse),
    ("CallMCPToolResponse", m.CallMCPToolResponse),
    ("ReadMCPResourceResponse", m.ReadMCPResourceResponse),
    ("ContextConfigResponse", m.ContextConfigResponse),
    ("DesktopActionResponse", m.DesktopActionResponse),
]


@pytest.mark.parametrize(("go_type", "model"), ZERO_CASES, ids=[c[0] for c in ZERO_CASES])
def test_go_zero_values_decode_in_our_client(go_decode: Path, go_type: str,
                                             model: type[m.Model]) -> None:
    r = _go(go_decode, "zero", go_type)
    assert r.code == 0, r.err
    model.from_json(r.out)


def test_go_zero_values_of_nested_types_decode(go_decode: Path) -> None:
    """Elements as Go writes them when every field is zero (e.g. a bundle error without
    ``path``, a tool without schema)."""
    cases = [
        (m.BundleManifest, "BundleFilesManifest",
         b'{"files":[{}],"errors":[{"requested":"/x","reason":"no matches"}]}'),
        (m.ListMCPToolsResponse, "ListMCPToolsResponse",
         b'{"tools":[{"server_name":"s","name":"s__t"}]}'),
        (m.ListProcessesResponse, "ListProcessesResponse", b'{"processes":[{"id":"x"}]}'),
        (m.CallMCPToolResponse, "CallMCPToolResponse",
         b'{"content":[{"type":"text"},{"type":"resource","resource":{"uri":"u"}}]}'),
        (m.ContextConfigResponse, "ContextConfigResponse", b'{"parts":[{"type":"skill"}]}'),
        (m.NetcheckReport, "AgentNetcheckReport",
         b'{"net_info":{},"interfaces":{"interfaces":[{}]}}'),
    ]
    for model, go_type, body in cases:
        r = _go(go_decode, "decode", go_type, body)
        assert r.code == 0, r.err
        model.from_json(r.out)


# -- what our client sends, read by a Go agent -----------------------------------------------


def _request_cases() -> list[tuple[str, bytes]]:
    from agentconn.client.conn import _json_body
    from agentconn.proto.rpty import ReconnectingPtyInit, ReconnectingPtyRequest
    from agentconn.proto.speedtest import Direction, SpeedtestConfig, emit_response

    return [
        ("StartProcessRequest", _json_body(m.StartProcessRequest(
            command="echo <&>", workdir="/w", env={"A": "1"}, background=True))),
        ("StartProcessRequest", _json_body(m.StartProcessRequest(command="true"))),
        ("SignalProcessRequest", _json_body(m.SignalProcessRequest(signal="kill"))),
        ("LSRequest", _json_body(m.LSRequest(path=["home", "c"], relativity="root"))),
        ("LSRequest", _json_body(m.LSRequest())),
        ("FileEditRequest", _json_body(m.FileEditRequest(include_diff=True, files=[
            m.FileEdits(path="/a", edits=[m.FileEdit.for_client("x", "", replace_all=True)])]))),
        ("CallMCPToolRequest", _json_body(m.CallMCPToolRequest(
            tool_name="s__t", arguments={"n": 1.5, "l": [1, None], "o": {}}))),
        ("CallMCPToolRequest", _json_body(m.CallMCPToolRequest(tool_name="s__t"))),
        ("ReadMCPResourceRequest", _json_body(m.ReadMCPResourceRequest(server_name="s",
                                                                       uri="test://x"))),
        ("DesktopAction", _json_body(m.DesktopActionRequest(
            action="left_click_drag", coordinate=(10, 20), start_coordinate=(1, 2), text="t",
            duration=500, scroll_amount=3, scroll_direction="down", scaled_width=1280,
            scaled_height=720))),
        ("DesktopAction", _json_body(m.DesktopActionRequest(action="screenshot"))),
        ("StartDesktopRecordingRequest", _json_body(m.DesktopRecordingRequest(
            recording_id=str(uuid.uuid4())))),
        ("AgentReconnectingPTYInit", ReconnectingPtyInit(
            id=uuid.uuid4(), height=65535, width=80, command="bash -l",
            container="c", container_user="u", backend_type="screen").to_json()),
        ("ReconnectingPTYRequest", ReconnectingPtyRequest(data="ls\r", height=24,
                                                          width=80).emit()),
        ("ReconnectingPTYRequest", ReconnectingPtyRequest(data="x").emit()),
        ("SpeedtestConfig", SpeedtestConfig.for_test(Direction.UPLOAD, 2.5).emit()),
        # and the agent's replies to it
        ("SpeedtestConfigResponse", emit_response()),
        ("SpeedtestConfigResponse", emit_response("version mismatch! <x>")),
    ]


def test_our_requests_decode_in_a_go_agent(go_decode: Path) -> None:
    for go_type, body in _request_cases():
        assert_go_decodes(go_decode, go_type, body, f"our {go_type}")
