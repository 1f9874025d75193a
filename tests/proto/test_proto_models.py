"""Agent API JSON models: round trips, exact bytes from agent-api.md, validation errors."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentconn.proto import models as m
from agentconn.proto._codec import Model

ALL_MODELS: list[type[Model]] = sorted(
    {
        obj
        for obj in vars(m).values()
        if isinstance(obj, type) and issubclass(obj, Model) and obj is not Model
    },
    key=lambda c: c.__name__,
)

# ------------------------------------------------------------------------------------------
# strategies derived from the type hints (mirrors the codec)

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)
_int = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_json_scalar = st.none() | st.booleans() | _int | _text
_json = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_time = st.builds(
    lambda dt, off: dt.replace(tzinfo=timezone(timedelta(minutes=off))),
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)),
    st.sampled_from([0, 60, -90, 330]),
)


def _strategy(tp: Any, open_enum: type[enum.Enum] | None = None) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return st.none() | _strategy(inner, open_enum)
    if open_enum is not None:
        return st.sampled_from([e.value for e in open_enum]) | _text
    if origin is list:
        return st.lists(_strategy(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(_text, _strategy(args[1]), max_size=3)
    if origin is tuple:
        return st.tuples(*(_strategy(a) for a in args))
    if tp is Any:
        return _json
    if tp is str:
        return _text
    if tp is bool:
        return st.booleans()
    if tp is int:
        return _int
    if tp is uuid.UUID:
        return st.uuids()
    if tp is datetime:
        return _time
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and issubclass(tp, Model):
        return _model_strategy(tp)
    raise TypeError(tp)


def _model_strategy(cls: type[Model]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: _strategy(hints[f.name], f.metadata.get("enum"))
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    }
    return st.builds(cls, **kwargs)


@pytest.mark.parametrize("cls", ALL_MODELS, ids=lambda c: c.__name__)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(cls: type[Model], data: st.DataObject) -> None:
    value = data.draw(_model_strategy(cls))
    encoded = value.to_json()
    assert cls.from_json(encoded) == value
    # the encoding is stable and uses exactly the declared keys
    assert set(orjson.loads(encoded)) <= set(cls.json_keys().values())
    assert cls.from_json(encoded).to_json() == encoded


def test_every_model_is_frozen_slotted_and_documented() -> None:
    assert len(ALL_MODELS) >= 45
    for cls in ALL_MODELS:
        assert dataclasses.is_dataclass(cls)
        assert "__slots__" in cls.__dict__
        assert cls.__doc__ and cls.__doc__.strip()
        params = cls.__dataclass_params__
        assert params.frozen


def test_snake_case_attributes_map_to_spec_keys() -> None:
    assert m.LSFile.json_keys() == {
        "name": "name",
        "absolute_path_string": "absolute_path_string",
        "is_dir": "is_dir",
    }
    for cls in ALL_MODELS:
        for attr in cls.json_keys():
            assert attr == attr.lower()


# ------------------------------------------------------------------------------------------
# exact bytes of the spec's examples


def _rt(cls: type[Model], raw: bytes) -> Model:
    value = cls.from_json(raw)
    assert value.to_json() == raw
    return value


def test_error_body_shapes() -> None:
    assert m.Response(message="x").to_json() == b'{"message":"x"}'
    _rt(m.Response, b'{"message":"MCP tool call failed.","detail":"boom"}')
    v = _rt(
        m.Response,
        b'{"message":"Query parameters have invalid values.",'
        b'"validations":[{"field":"path","detail":"Query param \\"path\\" is required"}]}',
    )
    assert isinstance(v, m.Response) and v.validations[0].field == "path"
    _rt(
        m.Response,
        b'{"message":"Dev Container feature not enabled.","detail":"To enable this feature, '
        b'set CODER_AGENT_DEVCONTAINERS_ENABLE=true in your template."}',
    )
    assert m.GREETING.to_json() == b'{"message":"Hello from the agent!"}'
    # empty detail/validations decode like absent ones
    assert m.Response.from_json(b'{"message":"a","detail":"","validations":null}') == m.Response(
        message="a"
    )


def test_files_examples() -> None:
    req = _rt(m.LSRequest, b'{"path":["repos","coder"],"relativity":"home"}')
    assert isinstance(req, m.LSRequest) and req.relativity is m.Relativity.HOME
    odd = m.LSRequest.from_json(b'{"relativity":"nowhere"}')
    assert odd.relativity == "nowhere" and odd.path == []
    assert m.LSRequest.from_json(b"{}") == m.LSRequest()
    _rt(
        m.LSResponse,
        b'{"absolute_path":["home","coder"],"absolute_path_string":"/home/coder",'
        b'"contents":[{"name":"Downloads","absolute_path_string":"/home/coder/Downloads",'
        b'"is_dir":true}]}',
    )
    _rt(m.LSResponse, b'{"absolute_path":[],"absolute_path_string":"/","contents":[]}')
    _rt(m.ResolvePathResponse, b'{"resolved_path":"/real-dir/NEW.md"}')
    _rt(
        m.ReadFileLinesResponse,
        b'{"success":true,"file_size":17,"total_lines":3,"lines_read":3,'
        b'"content":"1\\tline1\\n2\\tline2\\n3\\tline3"}',
    )
    assert m.ReadFileLinesResponse(success=True).to_json() == b'{"success":true}'
    assert m.ReadFileLinesResponse(success=False).to_json() == b'{"success":false}'
    _rt(m.ReadFileLinesResponse, b'{"success":false,"error":"file does not exist: /x"}')
    _rt(m.Response, b'{"message":"Successfully wrote to \\"/tmp/a\\""}')


def test_edit_files_examples() -> None:
    spec = (
        b'{"files":[{"path":"/abs/file.go","edits":[{"old_text":"a","new_text":"b",'
        b'"replace_all":false}]}],"include_diff":true}'
    )
    req = m.FileEditRequest.from_json(spec)
    edit = req.files[0].edits[0]
    assert req.include_diff and edit.effective() == ("a", "b") and not edit.replace_all
    sent = m.FileEditRequest(
        files=[m.FileEdits(path="/abs/file.go", edits=[m.FileEdit.for_client("a", "b")])]
    )
    assert sent.to_json() == (
        b'{"files":[{"path":"/abs/file.go","edits":[{"old_text":"a","new_text":"b",'
        b'"search":"a","replace":"b"}]}]}'
    )
    all_ = m.FileEdit.for_client("a", "b", replace_all=True).to_json()
    assert all_.endswith(b',"replace_all":true}')
    # fallback to the legacy keys only when both new keys are empty/absent
    assert m.FileEdit.from_json(b'{"search":"s","replace":"r"}').effective() == ("s", "r")
    assert m.FileEdit.from_json(b'{"old_text":"x","new_text":"","search":"s"}').effective() == (
        "x",
        "",
    )
    assert m.FileEditResponse().to_json() == b"{}"
    _rt(m.FileEditResponse, b'{"files":[{"path":"/a","diff":""}]}')


def test_bundle_examples() -> None:
    assert m.BundleLimits().to_json() == (
        b'{"max_files":10000,"max_bytes_per_file":10485760,"max_total_bytes":104857600}'
    )
    _rt(m.BundleFilesRequest, b'{"paths":["~/x.log","/var/log/*.log"]}')
    man = _rt(
        m.BundleManifest,
        b'{"requested":["/a"],"files":[{"requested":"/a","path":"/a","archive_path":"files/a",'
        b'"size":3,"mod_time":"2026-05-18T12:00:00.5Z","bytes_written":3,"truncated":false}],'
        b'"errors":[{"requested":"/b","path":"/b","reason":"does not exist"}],"truncated":false,'
        b'"limits":{"max_files":10000,"max_bytes_per_file":10485760,"max_total_bytes":104857600}}',
    )
    assert isinstance(man, m.BundleManifest)
    assert man.files[0].mod_time == datetime(2026, 5, 18, 12, 0, 0, 500000, tzinfo=UTC)


def test_process_examples() -> None:
    _rt(
        m.StartProcessRequest,
        b'{"command":"npm test","workdir":"/home/coder/app","env":{"CI":"1"},"background":true}',
    )
    assert m.StartProcessRequest(command="ls").to_json() == b'{"command":"ls"}'
    assert m.StartProcessRequest.from_json(b"{}").command == ""
    pid = "0b3c9a8e-1111-4222-8333-444455556666"
    _rt(m.StartProcessResponse, b'{"id":"' + pid.encode() + b'","started":true}')
    _rt(m.ProcessOutputResponse, b'{"output":"hi\\n","running":false,"exit_code":0}')
    _rt(m.ProcessOutputResponse, b'{"output":"","running":true}')
    _rt(
        m.ProcessOutputResponse,
        b'{"output":"x","truncated":{"original_bytes":40000,"retained_bytes":32800,'
        b'"omitted_bytes":7200,"strategy":"head_tail"},"running":false,"exit_code":-1}',
    )
    _rt(
        m.ListProcessesResponse,
        b'{"processes":[{"id":"a","command":"sleep 1","workdir":"/w","background":false,'
        b'"running":true,"started_at_unix":1700000000},{"id":"b","command":"true",'
        b'"workdir":"/w","background":true,"running":false,"exit_code":0,'
        b'"started_at_unix":1700000000,"exited_at_unix":1700000001}]}',
    )
    assert m.ListProcessesResponse().to_json() == b'{"processes":[]}'
    sig = _rt(m.SignalProcessRequest, b'{"signal":"kill"}')
    assert isinstance(sig, m.SignalProcessRequest) and sig.signal is m.ProcessSignal.KILL
    assert m.SignalProcessRequest.from_json(b'{"signal":"HUP"}').signal == "HUP"
    _rt(m.Response, b'{"message":"Signal \\"kill\\" sent to process \\"a\\"."}')


def test_listening_ports_and_containers_examples() -> None:
    _rt(
        m.ListeningPortsResponse, b'{"ports":[{"process_name":"node","network":"tcp","port":3000}]}'
    )
    assert m.ListeningPortsResponse().to_json() == b'{"ports":[]}'
    _rt(m.ContainerPort, b'{"port":8080,"network":"tcp","host_ip":"0.0.0.0","host_port":32768}')
    dc_id = "6a1e7b5c-0000-4000-8000-000000000001"
    raw = (
        b'{"devcontainers":[{"id":"' + dc_id.encode() + b'","name":"app",'
        b'"workspace_folder":"/home/coder/app","config_path":"/home/coder/app/.devcontainer/'
        b'devcontainer.json","status":"running","dirty":false,"container":{"created_at":'
        b'"2026-05-18T12:00:00Z","id":"abc","name":"c1","image":"ubuntu","labels":'
        b'{"devcontainer.local_folder":"/home/coder/app"},"running":true,"ports":[{"port":8080,'
        b'"network":"tcp","host_ip":"0.0.0.0","host_port":32768}],"status":"running",'
        b'"volumes":{"src":"dst"}},"agent":{"id":"' + dc_id.encode() + b'","name":"sub",'
        b'"directory":"/w"}}],"containers":[],"warnings":["w"]}'
    )
    lst = _rt(m.ListContainersResponse, raw)
    assert isinstance(lst, m.ListContainersResponse)
    assert lst.devcontainers[0].status is m.DevcontainerStatus.RUNNING
    assert lst.devcontainers[0].id == uuid.UUID(dc_id)
    assert m.ListContainersResponse().to_json() == b'{"containers":[]}'
    assert m.ListContainersResponse.from_json(b'{"devcontainers":null,"containers":null}') == (
        m.ListContainersResponse()
    )
    _rt(
        m.Response,
        b'{"message":"Devcontainer recreation initiated","detail":"Recreation process for '
        b'devcontainer \\"app\\" has started."}',
    )


def test_git_examples() -> None:
    msg = _rt(
        m.GitServerMessage,
        b'{"type":"changes","scanned_at":"2026-05-18T12:00:00Z","repositories":[{"repo_root":'
        b'"/home/coder/app","branch":"main","remote_origin":"git@x","unified_diff":'
        b'"diff --git a/f b/f","removed":false}]}',
    )
    assert isinstance(msg, m.GitServerMessage) and msg.type is m.GitServerMessageType.CHANGES
    assert msg.scanned_at == datetime(2026, 5, 18, 12, tzinfo=UTC)
    err = m.GitServerMessage(type=m.GitServerMessageType.ERROR, message="unknown message type")
    assert err.to_json() == b'{"type":"error","message":"unknown message type"}'
    heartbeat = m.GitServerMessage(type=m.GitServerMessageType.CHANGES, repositories=[])
    assert heartbeat.to_json() == b'{"type":"changes","repositories":[]}'
    _rt(m.GitClientMessage, b'{"type":"refresh"}')
    assert m.GitClientMessage.from_json(b'{"type":"bogus"}').type == "bogus"
    _rt(
        m.GitServerMessage,
        b'{"type":"progress","progress":{"repo_root":"/r","reset":true}}',
    )


def test_desktop_examples() -> None:
    raw = (
        b'{"action":"left_click","coordinate":[10,20],"start_coordinate":[1,2],"text":"hi",'
        b'"duration":1000,"scroll_amount":3,"scroll_direction":"down","scaled_width":1280,'
        b'"scaled_height":720}'
    )
    req = _rt(m.DesktopActionRequest, raw)
    assert isinstance(req, m.DesktopActionRequest)
    assert req.action is m.DesktopAction.LEFT_CLICK and req.coordinate == (10, 20)
    assert req.scroll_direction is m.ScrollDirection.DOWN
    assert m.DesktopActionRequest(action=m.DesktopAction.SCREENSHOT).to_json() == (
        b'{"action":"screenshot"}'
    )
    assert m.DesktopActionRequest.from_json(b'{"action":"fly"}').action == "fly"
    _rt(
        m.DesktopActionResponse,
        b'{"output":"screenshot","screenshot_data":"iVBO","screenshot_width":1280,'
        b'"screenshot_height":720}',
    )
    assert m.DesktopActionResponse(output="x=1,y=2").to_json() == b'{"output":"x=1,y=2"}'
    _rt(m.DesktopRecordingRequest, b'{"recording_id":"6a1e7b5c-0000-4000-8000-000000000001"}')
    _rt(m.Response, b'{"message":"Recording started."}')
    _rt(
        m.Response,
        b'{"message":"Invalid recording_id format.","detail":"recording_id must be a valid UUID."}',
    )


def test_mcp_examples() -> None:
    _rt(
        m.ListMCPToolsResponse,
        b'{"tools":[{"server_name":"github","name":"github__create_issue","description":"d",'
        b'"schema":{"title":{"type":"string"}},"required":["title"],"ui_resource_uri":"ui://x"}]}',
    )
    assert m.ListMCPToolsResponse().to_json() == b'{"tools":[]}'
    call = _rt(
        m.CallMCPToolRequest,
        b'{"tool_name":"github__create_issue","arguments":{"title":"t","n":[1,{"a":null}]}}',
    )
    assert isinstance(call, m.CallMCPToolRequest)
    assert call.split() == ("github", "create_issue")
    assert m.CallMCPToolRequest(tool_name="a__b__c").split() == ("a", "b__c")
    for bad in ("nosep", "__x", "x__"):
        assert m.CallMCPToolRequest(tool_name=bad).split() is None
    res = _rt(
        m.CallMCPToolResponse,
        b'{"content":[{"type":"text","text":"ok"},{"type":"image","data":"AAAA",'
        b'"media_type":"image/png"}],"is_error":false,"structured_content":{"k":1}}',
    )
    assert isinstance(res, m.CallMCPToolResponse)
    assert res.content[1].type is m.MCPContentType.IMAGE
    _rt(
        m.CallMCPToolResponse,
        b'{"content":[{"type":"resource","uri":"file:///a","resource":{"uri":"file:///a",'
        b'"mime_type":"text/plain","text":"x"}}],"is_error":true}',
    )
    _rt(m.ReadMCPResourceRequest, b'{"server_name":"s","uri":"file:///a"}')
    _rt(m.ReadMCPResourceResponse, b'{"uri":"u","mime_type":"m","blob":"AAAA","meta":{"a":1}}')


def test_context_examples() -> None:
    spec_skill = (
        b'{"type":"skill","skill_name":"deploy","skill_description":"Deploys",'
        b'"skill_dir":"/h/.agents/skills/deploy","context_file_skill_meta_file":"SKILL.md"}'
    )
    part = m.ChatMessagePart.from_json(spec_skill)
    assert part.skill_name == "deploy" and part.type == m.PART_SKILL
    assert part.to_json() == (
        b'{"type":"skill","text":"","url":"","media_type":"","file_name":"","start_line":0,'
        b'"end_line":0,"content":"","skill_name":"deploy","skill_description":"Deploys",'
        b'"skill_dir":"/h/.agents/skills/deploy","context_file_skill_meta_file":"SKILL.md"}'
    )
    cf = m.ChatMessagePart.from_json(
        b'{"type":"context-file","context_file_path":"/h/.coder/AGENTS.md",'
        b'"context_file_content":"hi","context_file_truncated":true,"unknown_key":1}'
    )
    assert cf.context_file_truncated and cf.context_file_content == "hi"
    assert m.ContextConfigResponse().to_json() == b'{"parts":[]}'
    _rt(
        m.LegacyContextConfigResponse,
        b'{"instructions_dirs":["/h/.coder"],"instructions_file":"AGENTS.md","skills_dirs":'
        b'["/w/.agents/skills"],"skill_meta_file":"SKILL.md","mcp_config_files":["/w/.mcp.json"]}',
    )


def test_netcheck_example() -> None:
    raw = (
        b'{"severity":"ok","warnings":[],"dismissed":false,"net_info":{"MappingVariesByDestIP":'
        b'"","HairPinning":"","WorkingIPv6":"","OSHasIPv6":"","WorkingUDP":"","WorkingICMPv4":'
        b'"","UPnP":"","PMP":"","PCP":"","PreferredDERP":1},"interfaces":{"severity":"ok",'
        b'"warnings":[],"dismissed":false,"interfaces":[{"name":"eth0","mtu":1500,'
        b'"addresses":["10.0.0.2/24"]}]}}'
    )
    rep = _rt(m.NetcheckReport, raw)
    assert isinstance(rep, m.NetcheckReport) and rep.net_info is not None
    assert rep.net_info["PreferredDERP"] == 1
    assert rep.interfaces.interfaces[0].mtu == 1500
    unknown = m.NetcheckReport(severity=m.Severity.WARNING, error="e", net_info=None)
    assert unknown.to_json().startswith(b'{"error":"e","severity":"warning",')
    assert b'"net_info":null' in unknown.to_json()
    _rt(
        m.InterfacesReport,
        b'{"severity":"warning","warnings":[{"code":"EIF01","message":"MTU low"}],'
        b'"dismissed":false,"interfaces":[]}',
    )


# ------------------------------------------------------------------------------------------
# validation errors name the field


@pytest.mark.parametrize(
    ("cls", "raw", "field", "needle"),
    [
        (m.LSRequest, b"", "", ""),
        (m.LSRequest, b"not json", "", ""),
        (m.LSRequest, b"[]", "", "object"),
        (m.LSRequest, b'{"path":"x"}', "path", "array"),
        (m.LSRequest, b'{"path":["a",1]}', "path[1]", "string"),
        (m.LSRequest, b'{"relativity":5}', "relativity", "string"),
        (m.LSResponse, b'{"absolute_path":[],"absolute_path_string":"/"}', "contents", "required"),
        (
            m.LSResponse,
            (
                b'{"absolute_path":[],"absolute_path_string":"/","contents":[{"name":"a",'
                b'"absolute_path_string":"/a","is_dir":"yes"}]}'
            ),
            "contents[0].is_dir",
            "boolean",
        ),
        (
            m.FileEditRequest,
            b'{"files":[{"path":"/a","edits":[{"old_text":1}]}]}',
            "files[0].edits[0].old_text",
            "string",
        ),
        (m.FileEditRequest, b'{"include_diff":"true"}', "include_diff", "boolean"),
        (m.StartProcessRequest, b'{"command":"x","env":{"A":1}}', "env.A", "string"),
        (m.StartProcessRequest, b'{"command":null}', "command", "null"),
        (m.StartProcessResponse, b'{"started":true}', "id", "required"),
        (m.ReadFileLinesResponse, b'{"success":true,"file_size":true}', "file_size", "integer"),
        (m.ReadFileLinesResponse, b'{"success":true,"file_size":1.5}', "file_size", "integer"),
        (m.ReadFileLinesResponse, b"{}", "success", "required"),
        (m.ProcessOutputResponse, b'{"exit_code":"0"}', "exit_code", "integer"),
        (
            m.ProcessOutputResponse,
            b'{"truncated":{"original_bytes":1,"retained_bytes":1}}',
            "truncated.omitted_bytes",
            "required",
        ),
        (m.SignalProcessRequest, b'{"signal":["kill"]}', "signal", "string"),
        (m.ListeningPortsResponse, b'{"ports":[{"port":"80"}]}', "ports[0].port", "integer"),
        (
            m.Devcontainer,
            b'{"id":"6a1e7b5c-0000-4000-8000-000000000001","status":5}',
            "status",
            "string",
        ),
        (m.Devcontainer, b'{"id":"nope","status":"running"}', "id", "UUID"),
        (m.Container, b'{"created_at":"yesterday","id":"x"}', "created_at", "RFC 3339"),
        (m.GitServerMessage, b'{"type":"changes","scanned_at":5}', "scanned_at", "string"),
        (m.GitServerMessage, b"{}", "type", "required"),
        (m.DesktopActionRequest, b'{"coordinate":[1]}', "coordinate", "2 elements"),
        (m.DesktopActionRequest, b'{"coordinate":[1,"2"]}', "coordinate[1]", "integer"),
        (m.DesktopActionRequest, b'{"duration":"1s"}', "duration", "integer"),
        (m.CallMCPToolRequest, b'{"tool_name":"a__b","arguments":[1]}', "arguments", "object"),
        (m.MCPContent, b'{"type":7}', "type", "string"),  # open enum (Go string)
        (m.NetcheckReport, b'{"net_info":[]}', "net_info", "object"),
        (m.NetcheckReport, b'{"interfaces":{"severity":1}}', "interfaces.severity", "string"),
        (
            m.Response,
            b'{"message":"m","validations":[{"field":"f"}]}',
            "validations[0].detail",
            "required",
        ),
    ],
)
def test_validation_errors_name_the_field(
    cls: type[Model], raw: bytes, field: str, needle: str
) -> None:
    with pytest.raises(m.BadRequest) as info:
        cls.from_json(raw)
    assert info.value.field == field
    assert needle in info.value.message
    assert isinstance(info.value, m.ProtocolError) and isinstance(info.value, ValueError)


def test_bad_request_to_response() -> None:
    with pytest.raises(m.BadRequest) as info:
        m.FileEditRequest.from_json(b'{"files":[{"path":1}]}')
    body = info.value.to_response()
    assert body.message == m.INVALID_JSON_MESSAGE == "Request body must be valid JSON."
    assert body.validations == [m.Validation(field="files[0].path", detail=info.value.message)]
    with pytest.raises(m.BadRequest) as info:
        m.FileEditRequest.from_json(b"")
    body = info.value.to_response()
    assert body.validations == [] and body.detail
    assert orjson.loads(body.to_json()).keys() == {"message", "detail"}


# ------------------------------------------------------------------------------------------
# timestamps and Go encoder compatibility


@pytest.mark.parametrize(
    ("text", "value", "canonical"),
    [
        ("2026-05-18T12:00:00Z", datetime(2026, 5, 18, 12, tzinfo=UTC), None),
        (
            "2026-05-18T12:00:00.123456789Z",
            datetime(2026, 5, 18, 12, 0, 0, 123456, tzinfo=UTC),
            "2026-05-18T12:00:00.123456Z",
        ),
        (
            "2026-05-18T12:00:00.1Z",
            datetime(2026, 5, 18, 12, 0, 0, 100000, tzinfo=UTC),
            None,
        ),
        (
            "2026-05-18T14:30:00+02:30",
            datetime(2026, 5, 18, 14, 30, tzinfo=timezone(timedelta(hours=2, minutes=30))),
            None,
        ),
        (
            "2026-05-18T07:00:00-05:00",
            datetime(2026, 5, 18, 7, tzinfo=timezone(timedelta(hours=-5))),
            None,
        ),
        (
            "2026-05-18T12:00:00+00:00",
            datetime(2026, 5, 18, 12, tzinfo=UTC),
            "2026-05-18T12:00:00Z",
        ),
    ],
)
def test_time_format(text: str, value: datetime, canonical: str | None) -> None:
    parsed = m.parse_time(text)
    assert parsed == value and parsed.utcoffset() == value.utcoffset()
    assert m.format_time(value) == (canonical or text)


def test_time_rejects_naive_and_garbage() -> None:
    with pytest.raises(m.ProtocolError):
        m.format_time(datetime(2026, 1, 1))
    for bad in ("2026-05-18", "2026-05-18 12:00:00Z", "2026-05-18T12:00:00", "x"):
        with pytest.raises(ValueError):
            m.parse_time(bad)


def test_go_json() -> None:
    body = m.Response(message="<a & b>\u2028").to_json()
    assert m.go_json(body) == b'{"message":"\\u003ca \\u0026 b\\u003e\\u2028"}\n'
    assert m.go_json(body, html_escape=False) == b'{"message":"<a & b>\\u2028"}\n'
    assert m.Response.from_json(m.go_json(body)) == m.Response(message="<a & b>\u2028")


def test_unknown_keys_ignored_and_models_immutable() -> None:
    v = m.ResolvePathResponse.from_json(b'{"resolved_path":"/a","extra":{"x":[1]}}')
    assert v == m.ResolvePathResponse(resolved_path="/a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.resolved_path = "/b"  # type: ignore[misc]


def test_devcontainer_status_is_an_open_enum() -> None:
    """Go's ``WorkspaceAgentDevcontainerStatus`` is a plain string: a status newer than ours
    is kept as its string, known ones become the enum member."""
    new = m.Devcontainer.from_json(
        b'{"id":"6a1e7b5c-0000-4000-8000-000000000001","status":"flying"}')
    assert new.status == "flying"
    known = m.Devcontainer.from_json(
        b'{"id":"6a1e7b5c-0000-4000-8000-000000000001","status":"running"}')
    assert known.status is m.DevcontainerStatus.RUNNING
