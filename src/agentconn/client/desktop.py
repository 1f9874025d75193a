"""The client side of the desktop routes (agent-api.md §11): the VNC websocket as a byte
stream, actions, recordings.

``ConnectDesktopVNC`` is a websocket upgrade on the API port (with the extra headers, no
compression, no read limit, §2.3/§2.6); its binary messages carry raw RFB, so the websocket
is opened as an asyncio stream (:func:`agentconn.web.wsstream.connect_websocket_stream`, which
parses the frames straight off the TCP connection) that any VNC client code can read and
write. A refused upgrade becomes :class:`~agentconn.client.conn.AgentApiError` with
the agent's message (``Failed to start desktop session.``, ``Failed to connect to VNC
server.``). The other three routes are plain JSON calls; ``StopDesktopRecording`` returns the
body and Content-Type unparsed, as the Go client does, and :func:`split_recording` takes them
apart.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

from agentconn.errors import AgentConnError
from agentconn.proto.common import Response as MessageResponse
from agentconn.proto.desktop import (
    DesktopActionRequest,
    DesktopActionResponse,
    DesktopRecordingRequest,
    split_recording,
)
from agentconn.proto.ports import AGENT_HTTP_API_PORT
from agentconn.proto.routes import route
from agentconn.web.errors import WebSocketRejected
from agentconn.web.websocket import WebSocket, websocket_connect
from agentconn.web.wsstream import connect_websocket_stream

if TYPE_CHECKING:
    from agentconn.client.conn import AgentApiError, AgentConn

__all__ = ["connect_desktop_vnc", "desktop_vnc_websocket", "execute_desktop_action",
           "split_recording", "start_desktop_recording", "stop_desktop_recording"]

#: The StreamReader buffer limit of the VNC stream (reading pauses at twice this).
VNC_READ_LIMIT = 1 << 20


def _api_error(err: WebSocketRejected, method: str, target: str) -> AgentApiError:
    from agentconn.client.conn import AgentApiError

    if "json" in err.headers.get("content-type", ""):
        try:
            parsed = MessageResponse.from_json(err.body)
        except AgentConnError:
            pass
        else:
            return AgentApiError(err.status, parsed.message, parsed.detail, parsed.validations,
                                 method=method, target=target, body=err.body)
    text = err.body.decode("utf-8", "replace").strip()
    return AgentApiError(err.status, text or str(err), method=method, target=target,
                         body=err.body)


async def desktop_vnc_websocket(conn: AgentConn) -> WebSocket:
    """The open VNC websocket (binary messages of raw RFB). Raises ``AgentApiError`` when
    the agent refuses the upgrade."""
    r = route("ConnectDesktopVNC")
    reader, writer = await conn._open(conn._host, AGENT_HTTP_API_PORT)
    try:
        ws = await websocket_connect(
            reader, writer, f"[{conn._host}]:{AGENT_HTTP_API_PORT}", r.path,
            headers=conn._extra_headers, compression=False, timeout=conn.timeout)
    except WebSocketRejected as e:
        raise _api_error(e, r.method, r.path) from None
    conn._last_ok = time.monotonic()
    return ws


async def connect_desktop_vnc(conn: AgentConn, *, limit: int = VNC_READ_LIMIT
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The agent's VNC server as an asyncio stream pair carrying raw RFB.

    On the fast path (:func:`~agentconn.web.wsstream.connect_websocket_stream`): the server's
    frames are parsed straight off the tunnel's TCP connection into the reader.
    """
    r = route("ConnectDesktopVNC")
    try:
        pair = await connect_websocket_stream(
            conn._create_connection, f"[{conn._host}]:{AGENT_HTTP_API_PORT}", r.path,
            headers=conn._extra_headers, timeout=conn.timeout, limit=limit)
    except WebSocketRejected as e:
        raise _api_error(e, r.method, r.path) from None
    conn._last_ok = time.monotonic()
    return pair


async def execute_desktop_action(conn: AgentConn, request: DesktopActionRequest
                                 ) -> DesktopActionResponse:
    """``POST /api/v0/desktop/action`` (the only call that sends a JSON Content-Type)."""
    timeout = conn.timeout
    if request.duration is not None:  # hold_key answers after the key was held
        timeout += request.duration / 1000
    from agentconn.client.conn import _json_body

    return await conn._call("ExecuteDesktopAction", DesktopActionResponse,
                            body=_json_body(request), timeout=timeout,
                            headers=[("Content-Type", "application/json")])


def _recording_body(recording_id: uuid.UUID | str) -> bytes:
    from agentconn.client.conn import _json_body

    return _json_body(DesktopRecordingRequest(recording_id=str(recording_id)))


async def start_desktop_recording(conn: AgentConn, recording_id: uuid.UUID | str) -> None:
    """Start (or keep) recording under ``recording_id``."""
    await conn._call("StartDesktopRecording", MessageResponse,
                     body=_recording_body(recording_id))


async def stop_desktop_recording(conn: AgentConn, recording_id: uuid.UUID | str
                                 ) -> tuple[bytes, str]:
    """Finalise the recording: (multipart body, its Content-Type), unparsed.

    Finalising may take the agent up to 30 s, so the read timeout allows for that.
    """
    resp = await conn._send("StopDesktopRecording", body=_recording_body(recording_id),
                            timeout=max(conn.timeout, 30.0) + 30.0)
    async with resp:
        body = await resp.read()
    return body, resp.headers.get("content-type", "")
