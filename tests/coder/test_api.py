"""coderd REST client (agentconn.coder.api) against the test control plane's REST side."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentconn.coder.api import (CoderApi, CoderApiError, Credentials, NotLoggedInError,
                                 WorkspaceError, rewrite_derp_map)
from controlplane import SIGNED_OUT, TOKEN, ControlPlane


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    cp = ControlPlane()
    await cp.start()
    try:
        yield cp
    finally:
        await cp.close()


def test_credentials_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CODER_URL", "CODER_SESSION_TOKEN", "CODER_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(NotLoggedInError, match="You are not logged in. Try logging in using "
                                               "'coder login <url>'."):
        Credentials.load()
    assert not Credentials.available()
    cfg = tmp_path / ".config" / "coderv2"
    cfg.mkdir(parents=True)
    (cfg / "url").write_text("https://coder.example.com/\n")
    (cfg / "session").write_text(f"  {TOKEN}\n")
    assert Credentials.load() == Credentials("https://coder.example.com", TOKEN)
    monkeypatch.setenv("CODER_URL", "http://127.0.0.1:3000")
    assert Credentials.load().url == "http://127.0.0.1:3000"
    assert Credentials.load(token="x-y").token == "x-y"
    other = tmp_path / "other"
    other.mkdir()
    (other / "session").write_text("from-dir")
    monkeypatch.setenv("CODER_CONFIG_DIR", str(other))
    assert Credentials.load().token == "from-dir"
    with pytest.raises(NotLoggedInError, match="not an http"):
        Credentials.load(url="ftp://x")


async def test_resolve_workspace_and_agent_names(plane: ControlPlane) -> None:
    one = plane.add_workspace("dev", "main")
    two = plane.add_workspace("multi", "a", "b")
    plane.add_workspace("shared", "main", owner="bob")
    plane.add_workspace("off", "main", status="stopped", transition="stop")
    plane.add_workspace("empty")
    async with CoderApi(Credentials(plane.url, TOKEN)) as api:
        info = await api.resolve_agent("dev")
        assert (info.id, info.name, info.workspace, info.owner) == (
            one.agents[0].id, "main", "dev", "alice")
        assert (await api.resolve_agent("alice/dev.main")).id == one.agents[0].id
        assert (await api.resolve_agent("multi.b")).id == two.agents[1].id
        assert (await api.resolve_agent("bob/shared")).owner == "bob"
        assert (await api.resolve_agent(str(one.agents[0].id))).name == "main"
        with pytest.raises(WorkspaceError, match=r"multiple agents found, please specify the "
                                                 r"agent name, available agents: \['a', 'b'\]"):
            await api.resolve_agent("multi")
        with pytest.raises(WorkspaceError, match='agent not found by name "c"'):
            await api.resolve_agent("multi.c")
        with pytest.raises(WorkspaceError, match='workspace "me/nope" not found'):
            await api.resolve_agent("nope")
        with pytest.raises(WorkspaceError, match="is not running .*coder start alice/off"):
            await api.resolve_agent("off")
        with pytest.raises(WorkspaceError, match='workspace "alice/empty" has no agents'):
            await api.resolve_agent("empty")
        with pytest.raises(WorkspaceError, match='invalid workspace name: "a/b/c"'):
            await api.resolve_agent("a/b/c")
        with pytest.raises(CoderApiError) as err:
            await api.resolve_agent(str(uuid.uuid4()))
        assert err.value.status == 404


async def test_auth_errors_are_typed(plane: ControlPlane) -> None:
    plane.add_workspace("dev", "main")
    for token, detail in (("nodash", "Invalid API key format: incorrect amount of API key "
                                     "parts, expected 2 got 1"),
                          ("zzzzzzzzzz-0123456789abcdefghijkl", "API key is invalid."),
                          ("abcdefghij-wrongwrongwrongwrongwr", "API key secret is invalid.")):
        async with CoderApi(Credentials(plane.url, token)) as api:
            with pytest.raises(CoderApiError) as err:
                await api.resolve_agent("dev")
        assert (err.value.status, err.value.message, err.value.detail) == (401, SIGNED_OUT,
                                                                           detail)
        assert "coder login" in str(err.value)


async def test_connection_info_and_coordinate_target(plane: ControlPlane) -> None:
    ws = plane.add_workspace("dev", "main")
    async with CoderApi(Credentials(plane.url, TOKEN)) as api:
        info = await api.connection_info(ws.agents[0].id)
        node = info.derp_map["Regions"]["1"]["Nodes"][0]
        assert (node["HostName"], node["DERPPort"], node["ForceHTTP"]) == (
            "127.0.0.1", plane.port, True)
        assert not info.derp_force_websockets and not info.disable_direct_connections
        host, port, path, headers = api.coordinate_target(ws.agents[0].id)
        assert (host, port) == ("127.0.0.1", plane.port)
        assert path == f"/api/v2/workspaceagents/{ws.agents[0].id}/coordinate?version=2.0"
        assert headers["Coder-Session-Token"] == TOKEN


def test_rewrite_embedded_relay() -> None:
    derp = {"Regions": {"999": {"EmbeddedRelay": True, "RegionID": 999, "Nodes": [
        {"Name": "999b", "RegionID": 999, "HostName": "coder.example.com", "STUNPort": -1,
         "DERPPort": 443}, {"Name": "stun", "STUNOnly": True, "HostName": "stun.example"}]},
        "7": {"RegionID": 7, "Nodes": [{"Name": "7a", "HostName": "relay.example",
                                        "DERPPort": 443}]}}}
    out = rewrite_derp_map(derp, "http://localhost:3000/")
    nodes = out["Regions"]["999"]["Nodes"]
    assert (nodes[0]["HostName"], nodes[0]["DERPPort"], nodes[0]["ForceHTTP"]) == (
        "localhost", 3000, True)
    assert nodes[1]["HostName"] == "stun.example"              # STUN-only nodes untouched
    assert out["Regions"]["7"]["Nodes"][0]["HostName"] == "relay.example"
    assert derp["Regions"]["999"]["Nodes"][0]["HostName"] == "coder.example.com"  # copy
    https = rewrite_derp_map(derp, "https://coder.internal")["Regions"]["999"]["Nodes"][0]
    assert (https["DERPPort"], https["ForceHTTP"]) == (443, False)
