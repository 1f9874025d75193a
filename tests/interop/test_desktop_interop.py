"""The desktop (agent-api.md §11) through a real tunnel: clients in a wireguard-go namespace.

Topology as in test_agent_curl.py: wireguard-go and the kernel's TCP in a namespace, our Agent
(with a real Xvnc desktop) as the userspace peer. From the namespace, a VNC viewer (our RFB
client over a websocket on a kernel TCP socket) watches the desktop while curl drives actions
and recordings, all crossing wireguard-go → our WireGuard → our TCP stack → the agent.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import sys
import uuid
from pathlib import Path

from netns import Namespace, ns_curl, wg_pair
from PIL import Image, ImageChops

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from desktop_env import ffprobe, require_desktop_tools
from rfb import RfbClient

from agentconn.agent.agent import Agent
from agentconn.agent.options import AgentOptions
from agentconn.proto.desktop import split_recording
from agentconn.proto.ports import agent_addresses
from agentconn.web.websocket import websocket_connect
from agentconn.web.wsstream import open_websocket_stream

AGENT_ID = uuid.UUID("12345678-1234-1234-1234-123456789abc")
AGENT_TS, AGENT_CODER = (str(a) for a in agent_addresses(AGENT_ID))
BASE = f"http://[{AGENT_TS}]:4"
W, H = 640, 480




async def _action(ns: Namespace, **body: object) -> dict[str, object]:
    status, out = await ns_curl(ns, "-X", "POST", "-H", "Content-Type: application/json",
                              "--data", json.dumps(body), f"{BASE}/api/v0/desktop/action")
    assert status == 200, out
    return json.loads(out)  # type: ignore[no-any-return]


async def test_vnc_viewer_and_curl_through_wireguard_go(netns: Namespace,
                                                        tmp_path: Path) -> None:
    require_desktop_tools()
    pair = wg_pair(netns, mtu=1280)
    try:
        pair.wg.set_peer(pair.our_public_key, allowed_ips=[
            f"{pair.our_addresses[0]}/32", f"{pair.our_addresses[1]}/128",
            f"{AGENT_TS}/128", f"{AGENT_CODER}/128"])
        pair.wg.add_route(f"{AGENT_TS}/128")
        pair.wg.add_route(f"{AGENT_CODER}/128")
        logs = tmp_path / "logs"
        logs.mkdir()
        options = AgentOptions(home=str(tmp_path), log_dir=str(logs), desktop=True,
                               desktop_geometry=(W, H),
                               environ={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        with pair.ns.enter():
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        agent = Agent(pair.wg_quick_config(), AGENT_ID, options=options, sock=udp)
        await agent.start()
        try:
            await agent.tunnel.ping(pair.their_addresses[0], timeout=10)
            ns = pair.ns
            resp = await _action(ns, action="mouse_move", coordinate=[100, 50],
                                 scaled_width=320, scaled_height=240)
            assert resp == {"output": "mouse_move action performed"}
            assert await _action(ns, action="cursor_position") == {"output": "x=201,y=101"}

            # A viewer on the namespace's kernel TCP: websocket upgrade, then raw RFB.
            loop = asyncio.get_running_loop()
            sock = ns.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setblocking(False)
            await loop.sock_connect(sock, (AGENT_TS, 4))
            reader, writer = await asyncio.open_connection(sock=sock)
            ws = await websocket_connect(reader, writer, f"[{AGENT_TS}]:4",
                                         "/api/v0/desktop/vnc", compression=False)
            assert not ws.compressed
            viewer = await RfbClient.open(*await open_websocket_stream(ws))
            assert (viewer.width, viewer.height, viewer.name) == (W, H, "agentconn")
            viewer.pointer(201, 101)  # where the pointer is: the server leaves it out
            captured = await viewer.capture()
            shot = await _action(ns, action="screenshot")
            assert (shot["screenshot_width"], shot["screenshot_height"]) == (W, H)
            png = Image.open(io.BytesIO(base64.b64decode(str(shot["screenshot_data"]))))
            assert ImageChops.difference(captured, png.convert("RGB")).getbbox() is None
            for _ in range(3):  # sustained full updates over the real tunnel
                assert await (viewer.capture()) is not None
            await viewer.close()

            # A recording, stopped and fetched with curl.
            rid = str(uuid.uuid4())
            status, out = await ns_curl(ns, "-X", "POST", "--data",
                                      json.dumps({"recording_id": rid}),
                                      f"{BASE}/api/v0/desktop/recording/start")
            assert (status, json.loads(out)) == (200, {"message": "Recording started."})
            for x in range(0, 300, 30):
                await _action(ns, action="left_click", coordinate=[x, x])
            await asyncio.sleep(0.5)
            headers = tmp_path / "headers"
            status, body = await ns_curl(ns, "-X", "POST", "-D", str(headers), "--data",
                                       json.dumps({"recording_id": rid}),
                                       f"{BASE}/api/v0/desktop/recording/stop")
            assert status == 200
            ctype = next(line.split(":", 1)[1].strip()
                         for line in headers.read_text().splitlines()
                         if line.lower().startswith("content-type:"))
            video, thumb = split_recording(body, ctype)
            (tmp_path / "rec.mp4").write_bytes(video)
            info = await ffprobe(tmp_path / "rec.mp4")
            assert info["streams"][0]["codec_type"] == "video"
            assert (info["streams"][0]["width"], info["streams"][0]["height"]) == (W, H)
            assert thumb is not None and thumb.startswith(b"\xff\xd8")
            status, out = await ns_curl(ns, "-X", "POST", "--data", '{"recording_id":"x"}',
                                      f"{BASE}/api/v0/desktop/recording/stop")
            assert (status, json.loads(out)["message"]) == (400, "Invalid recording_id format.")
        finally:
            await agent.close()
    finally:
        pair.wg.stop()
