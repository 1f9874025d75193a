"""The agent API route table, request targets and agent-side query validation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agentconn.proto import routes as r
from agentconn.proto._codec import Model
from agentconn.proto.errors import ProtocolError

AGENTCONN_HTTP_METHODS = {
    "ListeningPorts", "Netcheck", "DebugMagicsock", "DebugManifest", "DebugLogs",
    "PrometheusMetrics", "ListContainers", "WatchContainers", "DeleteDevcontainer",
    "RecreateDevcontainer", "WatchGit", "ConnectDesktopVNC", "ExecuteDesktopAction",
    "StartDesktopRecording", "StopDesktopRecording", "StartProcess", "ListProcesses",
    "ProcessOutput", "SignalProcess", "LS", "ResolvePath", "ReadFile", "ReadFileLines",
    "WriteFile", "EditFiles", "BundleFiles", "ContextConfig", "ListMCPTools", "CallMCPTool",
    "ReadMCPResource",
}  # fmt: skip


def test_table_covers_every_http_method_once() -> None:
    client = {x.name for x in r.ROUTES if x.client}
    assert client == AGENTCONN_HTTP_METHODS
    keys = [(x.method, x.path) for x in r.ROUTES]
    assert len(keys) == len(set(keys))
    assert len(r.ROUTES_BY_NAME) == len(r.ROUTES)


def test_table_is_consistent() -> None:
    for x in r.ROUTES:
        assert x.path.startswith("/")
        assert x.method in {"GET", "POST", "DELETE"}
        if x.request is r.Body.JSON:
            assert x.request_model is not None and issubclass(x.request_model, Model)
        if x.status == 101:
            assert x.method == "GET" and x.response in (r.Body.WS_JSON, r.Body.WS_BINARY)
    assert r.route("DeleteDevcontainer").status == 204
    assert r.route("RecreateDevcontainer").status == 202
    assert r.route("ProcessOutput").path_params == ("id",)
    assert r.route("ListContainers").path_params == ()
    assert r.route("ReadFile").response is r.Body.RAW
    assert r.route("WriteFile").request is r.Body.RAW


@pytest.mark.parametrize(
    ("name", "path_params", "query", "target"),
    [
        ("ListeningPorts", None, None, "/api/v0/listening-ports"),
        (
            "ResolvePath",
            None,
            {"path": "/home/coder/a b"},
            "/api/v0/resolve-path?path=%2Fhome%2Fcoder%2Fa+b",
        ),
        (
            "ReadFile",
            None,
            {"path": "/x", "offset": 0, "limit": 10},
            "/api/v0/read-file?limit=10&offset=0&path=%2Fx",
        ),
        (
            "ReadFileLines",
            None,
            {"path": "/f", **r.READ_FILE_LINES_DEFAULTS},
            (
                "/api/v0/read-file-lines?limit=0&max_file_size=1048576&max_line_bytes=1024"
                "&max_response_bytes=32768&max_response_lines=2000&offset=1&path=%2Ff"
            ),
        ),
        (
            "WriteFile",
            None,
            {"path": "/t/ü&=~-_."},
            "/api/v0/write-file?path=%2Ft%2F%C3%BC%26%3D~-_.",
        ),
        ("LS", None, {"path": ""}, "/api/v0/list-directory"),
        ("ProcessOutput", {"id": "abc"}, {"wait": True}, "/api/v0/processes/abc/output?wait=true"),
        ("ProcessOutput", {"id": "abc"}, {"wait": False}, "/api/v0/processes/abc/output"),
        ("SignalProcess", {"id": "a/b"}, None, "/api/v0/processes/a%2Fb/signal"),
        (
            "DeleteDevcontainer",
            {"id": uuid.UUID("6a1e7b5c-0000-4000-8000-000000000001")},
            None,
            "/api/v0/containers/devcontainers/6a1e7b5c-0000-4000-8000-000000000001",
        ),
        ("ListMCPTools", None, {"refresh": True}, "/api/v0/mcp/tools?refresh=true"),
        (
            "WatchGit",
            None,
            {"chat_id": uuid.UUID("6a1e7b5c-0000-4000-8000-000000000001")},
            "/api/v0/git/watch?chat_id=6a1e7b5c-0000-4000-8000-000000000001",
        ),
        (
            "DebugLogs",
            None,
            {"after": datetime(2026, 5, 18, 14, 0, 0, 1000, tzinfo=timezone(timedelta(hours=2)))},
            "/debug/logs?after=2026-05-18T12%3A00%3A00.001Z",
        ),
        ("DebugLogs", None, {"after": None}, "/debug/logs"),
    ],
)
def test_build_target(
    name: str,
    path_params: dict[str, str | uuid.UUID] | None,
    query: dict[str, r.QueryValue | None] | None,
    target: str,
) -> None:
    assert r.build_target(r.route(name), path_params, query) == target


def test_build_target_errors() -> None:
    with pytest.raises(ProtocolError, match="required"):
        r.build_target(r.route("ResolvePath"))
    with pytest.raises(ProtocolError, match="unknown query parameter"):
        r.build_target(r.route("ResolvePath"), query={"path": "/a", "x": "1"})
    with pytest.raises(ProtocolError, match="path parameters"):
        r.build_target(r.route("ProcessOutput"))
    with pytest.raises(ProtocolError, match="int"):
        r.build_target(r.route("ReadFile"), query={"path": "/a", "offset": "1"})
    with pytest.raises(ProtocolError, match="bool"):
        r.build_target(r.route("ProcessOutput"), {"id": "a"}, {"wait": "true"})


def test_parse_query_round_trip() -> None:
    route = r.route("ReadFileLines")
    target = r.build_target(route, query={"path": "/a b", **r.READ_FILE_LINES_DEFAULTS})
    parsed = r.parse_query(route, target.partition("?")[2])
    assert parsed == {"path": "/a b", **r.READ_FILE_LINES_DEFAULTS}
    assert r.parse_query(route, "path=/x") == {"path": "/x", **r.READ_FILE_LINES_DEFAULTS}
    assert r.parse_query(route, "path=/x&offset=-3")["offset"] == -3  # < 1 treated as 1 later
    assert r.parse_query(r.route("ProcessOutput"), "wait=true") == {"wait": True}
    assert r.parse_query(r.route("ProcessOutput"), "wait=1") == {"wait": False}
    assert r.parse_query(r.route("ProcessOutput"), "") == {"wait": False}
    # non-strict routes ignore unknown parameters
    assert r.parse_query(r.route("ListMCPTools"), "refresh=true&x=1") == {"refresh": True}
    after = r.parse_query(r.route("DebugLogs"), "after=2026-05-18T12%3A00%3A00.5Z")["after"]
    assert after == datetime(2026, 5, 18, 12, 0, 0, 500000, tzinfo=UTC)
    assert r.parse_query(r.route("LS"), "") == {"path": None}


@pytest.mark.parametrize(
    ("name", "query", "fields", "needle"),
    [
        ("ResolvePath", "", ["path"], '"path" is required'),
        ("ResolvePath", "path=", ["path"], '"path" is required'),
        ("ReadFile", "path=/a&offset=-1", ["offset"], "value is negative"),
        ("ReadFile", "path=/a&limit=abc", ["limit"], "valid integer"),
        ("ReadFile", "path=/a&limit=1_0", ["limit"], "valid integer"),
        ("ReadFileLines", "path=/a&max_line_bytes=-5", ["max_line_bytes"], "value is negative"),
        ("WriteFile", "path=/a&mode=0644", ["mode"], "not a valid query param"),
        ("LS", "path=/a&relativity=home", ["relativity"], "not a valid query param"),
        ("ReadFile", "offset=-1&x=1", ["path", "offset", "x"], ""),
        ("DebugLogs", "after=yesterday", ["after"], "RFC 3339"),
    ],
)
def test_parse_query_errors(name: str, query: str, fields: list[str], needle: str) -> None:
    with pytest.raises(r.QueryError) as info:
        r.parse_query(r.route(name), query)
    body = info.value.response
    assert body.message == r.QUERY_INVALID_MESSAGE == "Query parameters have invalid values."
    assert [v.field for v in body.validations] == fields
    assert needle in body.validations[0].detail
    assert body.to_json().startswith(b'{"message":"Query parameters have invalid values.",')
