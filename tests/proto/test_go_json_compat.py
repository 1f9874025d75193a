"""Go ``encoding/json`` compatibility of the agent API models, both ways (issue 16).

Golden bodies are written by hand as Go's encoder writes the Go type named in each comment
(coder/coder ``codersdk/workspacesdk/agentconn.go`` unless noted): ``nil`` slices and maps as
``null``, ``omitempty`` keys absent, ``<``/``>``/``&`` as ``\\u003c``…, ``time.Time`` as RFC 3339
with nanoseconds, keys our models do not know (newer agents add fields). Our client must read
each. The other direction: what our encoder writes must have the JSON types Go's decoder
needs (integers without a fraction, ``opt.Bool`` as a literal, ``time.Time`` zero-padded).
``tests/agent/test_go_json_decode.py`` asks Go itself the same questions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from agentconn.proto import models as m
from agentconn.proto._codec import _enc_int, format_time, parse_time
from agentconn.proto.debug import normalize_net_info, opt_bool_json
from agentconn.proto.errors import ProtocolError

# -- what Go writes, read by our client ------------------------------------------------------


def test_ls_response_with_null_contents() -> None:
    # LSResponse{AbsolutePath: nil, Contents: nil}: an agent that never appended.
    r = m.LSResponse.from_json(b'{"absolute_path":null,"absolute_path_string":"/",'
                               b'"contents":null}\n')
    assert (r.absolute_path, r.contents) == ([], [])


def test_list_processes_with_omitted_optionals_and_unknown_keys() -> None:
    # ListProcessesResponse / ProcessInfo: workdir, exit_code, exited_at_unix are omitempty;
    # "pid" stands for any field a newer agent adds.
    r = m.ListProcessesResponse.from_json(
        b'{"processes":[{"id":"p1","command":"sleep 9","background":false,"running":true,'
        b'"started_at_unix":1777777777,"pid":42}]}\n')
    p = r.processes[0]
    assert (p.workdir, p.exit_code, p.exited_at_unix, p.started_at_unix) == (
        "", None, None, 1777777777)
    assert m.ListProcessesResponse.from_json(b'{"processes":null}').processes == []


def test_process_output_as_go_writes_it() -> None:
    # ProcessOutputResponse{Truncated: *ProcessTruncation, ExitCode: *int}: HTML escaped.
    r = m.ProcessOutputResponse.from_json(
        b'{"output":"a \\u003c b \\u0026\\u0026 c\\n","truncated":{"original_bytes":40000,'
        b'"retained_bytes":32800,"omitted_bytes":7200,"strategy":"head_tail"},'
        b'"running":false,"exit_code":-1}\n')
    assert r.output == "a < b && c\n" and r.exit_code == -1
    assert r.truncated is not None and r.truncated.omitted_bytes == 7200


def test_read_file_lines_failure_omits_zero_fields() -> None:
    # ReadFileLinesResponse: every field but success is omitempty.
    r = m.ReadFileLinesResponse.from_json(b'{"success":false,"error":"file does not exist"}\n')
    assert (r.success, r.file_size, r.content) == (False, 0, "")
    # int64 file sizes beyond 2^53 stay exact
    big = m.ReadFileLinesResponse.from_json(b'{"success":true,"file_size":9007199254740993}')
    assert big.file_size == 9007199254740993


def test_file_edit_response_empty_object() -> None:
    # FileEditResponse{Files: nil} with `omitempty`: "{}".
    assert m.FileEditResponse.from_json(b"{}\n").files == []


def test_bundle_manifest_error_without_path() -> None:
    # BundleFilesManifestError.Path is `json:"path,omitempty"`; mod_time is time.Time with
    # nanoseconds and the file's zone offset.
    r = m.BundleManifest.from_json(
        b'{"requested":["~/x.log","/nope/*"],"files":[{"requested":"~/x.log",'
        b'"path":"/home/c/x.log","archive_path":"files/home/c/x.log","size":3,'
        b'"mod_time":"2026-05-04T05:02:01.123456789+02:00","bytes_written":3,'
        b'"truncated":false}],"errors":[{"requested":"/nope/*","reason":"no matches"}],'
        b'"truncated":false,"limits":{"max_files":10000,"max_bytes_per_file":10485760,'
        b'"max_total_bytes":104857600}}\n')
    assert r.errors[0].path == "" and r.errors[0].reason == "no matches"
    assert r.files[0].mod_time == datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)
    # and ours omits it the same way
    assert b'"path"' not in m.BundleManifestError(requested="/x", reason="r").to_json()


def test_mcp_content_type_is_open() -> None:
    # MCPToolContent.Type is a plain string: a type our enum does not know is kept.
    r = m.CallMCPToolResponse.from_json(
        b'{"content":[{"type":"text","text":"hi"},{"type":"resource_link","uri":"file:///a"}],'
        b'"is_error":false,"structured_content":{"n":1}}\n')
    assert r.content[0].type == m.MCPContentType.TEXT and r.content[1].type == "resource_link"
    assert r.structured_content == {"n": 1}
    # CallMCPToolResponse{Content: nil}
    assert m.CallMCPToolResponse.from_json(b'{"content":null,"is_error":true}').content == []


def test_mcp_tools_with_null_schema_and_required() -> None:
    # MCPToolInfo{Schema: nil map, Required: nil}: both null.
    r = m.ListMCPToolsResponse.from_json(
        b'{"tools":[{"server_name":"s","name":"s__t","description":"","schema":null,'
        b'"required":null}]}\n')
    assert (r.tools[0].schema, r.tools[0].required) == ({}, [])


def test_context_config_part_with_go_only_fields() -> None:
    # codersdk.ChatMessagePart: every field but type is omitempty; Data is []byte (base64).
    r = m.ContextConfigResponse.from_json(
        b'{"parts":[{"type":"context-file","context_file_path":"/w/AGENTS.md",'
        b'"context_file_content":"x"},{"type":"file","media_type":"image/png",'
        b'"data":"iVBORw0KGgo="}]}\n')
    assert r.parts[0].context_file_path == "/w/AGENTS.md" and r.parts[1].type == "file"
    assert m.ContextConfigResponse.from_json(b'{"parts":null}').parts == []


def test_netcheck_as_a_go_agent_writes_it() -> None:
    # healthsdk.AgentNetcheckReport: BaseReport.Error *string (null), Warnings nil (null),
    # NetInfo *tailcfg.NetInfo with opt.Bool literals and null, DERPLatency map[string]float64,
    # InterfacesReport.Interfaces nil (null); FirewallMode is newer than our model of it.
    body = (b'{"error":null,"severity":"ok","warnings":null,"dismissed":false,"net_info":{'
            b'"MappingVariesByDestIP":null,"HairPinning":null,"WorkingIPv6":false,'
            b'"OSHasIPv6":true,"WorkingUDP":true,"WorkingICMPv4":null,"UPnP":null,"PMP":null,'
            b'"PCP":null,"PreferredDERP":999,"LinkType":"","DERPLatency":{"999-v4":0.0021},'
            b'"FirewallMode":"iptables"},"interfaces":{"error":null,"severity":"ok",'
            b'"warnings":null,"dismissed":false,"interfaces":null}}\n')
    r = m.NetcheckReport.from_json(body)
    assert r.severity == m.Severity.OK and r.warnings == [] and r.interfaces.interfaces == []
    ni = normalize_net_info(r.net_info)
    assert ni is not None
    assert (ni["WorkingUDP"], ni["WorkingIPv6"], ni["UPnP"]) == ("true", "false", "")
    # older agents of ours sent the strings; still read the same
    legacy = normalize_net_info({"WorkingUDP": "true", "UPnP": ""})
    assert legacy == {"WorkingUDP": "true", "UPnP": ""}


def test_severity_is_open() -> None:
    # health.Severity is a string type: its zero value "" (an unset report) is not an error.
    assert m.NetcheckReport.from_json(b'{"severity":"","net_info":null}').severity == ""


def test_listening_ports_null() -> None:
    # WorkspaceAgentListeningPortsResponse{Ports: nil} (platforms without port detection)
    assert m.ListeningPortsResponse.from_json(b'{"ports":null}\n').ports == []


def test_error_response_with_validations() -> None:
    # codersdk.Response{Validations: []ValidationError{...}}; detail omitempty
    r = m.Response.from_json(b'{"message":"Query parameters have invalid values.",'
                             b'"validations":[{"field":"path","detail":"\\"path\\" is required"}]}')
    assert r.detail == "" and r.validations[0].field == "path"


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-05-04T03:02:01Z", datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)),
    ("2026-05-04T03:02:01.1Z", datetime(2026, 5, 4, 3, 2, 1, 100000, tzinfo=UTC)),
    ("2026-05-04T03:02:01.999999999Z", datetime(2026, 5, 4, 3, 2, 1, 999999, tzinfo=UTC)),
    ("2026-05-04T03:02:01-07:30",
     datetime(2026, 5, 4, 3, 2, 1, tzinfo=timezone(-timedelta(hours=7, minutes=30)))),
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),  # Go's zero time.Time
])
def test_go_time_texts(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected


# -- what we write, as Go needs it -----------------------------------------------------------


def test_format_time_pads_years_like_go() -> None:
    assert format_time(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00Z"
    assert format_time(datetime(999, 2, 3, 4, 5, 6, 70, tzinfo=UTC)) == \
        "0999-02-03T04:05:06.00007Z"
    assert format_time(datetime(2026, 5, 4, 3, 2, 1, 120000,
                                tzinfo=timezone(timedelta(hours=5, minutes=45)))) == \
        "2026-05-04T03:02:01.12+05:45"


def test_integer_fields_never_carry_a_fraction() -> None:
    # Go's decoder rejects 1.0 / 1e9 for int, int64, uint16 (e.g. ProcessInfo.StartedAt).
    info = m.ProcessInfo(id="p", started_at_unix=1.7e9,  # type: ignore[arg-type]
                         exited_at_unix=1.7e9 + 1.0, exit_code=0)  # type: ignore[arg-type]
    assert info.to_json() == (
        b'{"id":"p","command":"","workdir":"","background":false,"running":false,'
        b'"exit_code":0,"started_at_unix":1700000000,"exited_at_unix":1700000001}')
    assert orjson.dumps(m.ListeningPort(port=8080.0).to_obj()) == (  # type: ignore[arg-type]
        b'{"process_name":"","network":"tcp","port":8080}')
    for bad in (1.5, True, "3", None):
        with pytest.raises(ProtocolError):
            _enc_int(bad)
    with pytest.raises(ProtocolError):
        m.DesktopActionResponse(screenshot_width=1280.5).to_json()  # type: ignore[arg-type]


def test_opt_bool_values_are_literals() -> None:
    # tailscale opt.Bool.UnmarshalJSON accepts exactly true, false, null.
    assert [opt_bool_json(v) for v in (True, False, None)] == [True, False, None]
    report = m.NetcheckReport(net_info={"WorkingUDP": opt_bool_json(True),
                                        "UPnP": opt_bool_json(None)})
    assert b'"WorkingUDP":true' in report.to_json() and b'"UPnP":null' in report.to_json()


def test_go_shapes_of_our_encoder() -> None:
    # omitempty where Go has it, never where Go does not (a Go client reads absence and zero
    # the same, but other consumers compare bodies).
    assert m.ReadFileLinesResponse(success=True).to_json() == b'{"success":true}'
    assert m.FileEditResponse().to_json() == b"{}"
    assert m.ProcessOutputResponse(output="", running=True).to_json() == \
        b'{"output":"","running":true}'
    assert m.LSResponse(absolute_path=[], absolute_path_string="/", contents=[]).to_json() == \
        b'{"absolute_path":[],"absolute_path_string":"/","contents":[]}'
    assert m.NetcheckReport().to_json().startswith(
        b'{"severity":"ok","warnings":[],"dismissed":false,"net_info":null,')
