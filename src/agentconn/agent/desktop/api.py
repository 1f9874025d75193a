"""The desktop routes (agent-api.md §11): VNC websocket, actions, recordings.

Every route first makes sure the desktop runs (:meth:`DesktopSession.ensure_started`: it
starts on first use and is shared by all requests); when it cannot, the answer is 500
``Failed to start desktop session.`` with the reason as detail. An agent started without
``--desktop`` answers exactly that on every route, as a Go agent that cannot run its desktop
does. Request bodies that do not decode are 400 ``Failed to decode request body.``.

* ``GET /api/v0/desktop/vnc``: dial the VNC socket (500 ``Failed to connect to VNC
  server.`` before the upgrade), accept the websocket without compression, then
  :class:`~agentconn.agent.desktop.bridge.VncBridge` copies bytes both ways.
* ``POST /api/v0/desktop/action``: :mod:`~agentconn.agent.desktop.actions`.
* ``POST /api/v0/desktop/recording/start|stop``: :mod:`~agentconn.agent.desktop.recording`;
  stop streams ``multipart/mixed`` (video part, optional thumbnail part, closing delimiter).
  While the agent shuts down both answer 503 ``Desktop API is shutting down.``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import IO

from agentconn.agent.api.router import ApiError, RequestContext, Router, json_ok
from agentconn.agent.desktop.actions import check_action, run_action
from agentconn.agent.desktop.bridge import VncBridge, open_vnc
from agentconn.agent.desktop.recording import Artifact, RecordingManager
from agentconn.agent.desktop.session import DesktopSession, DesktopUnavailable
from agentconn.agent.options import AgentOptions
from agentconn.proto.common import Response
from agentconn.proto.desktop import (
    RECORDING_THUMBNAIL_TYPE,
    RECORDING_VIDEO_TYPE,
    DesktopActionRequest,
    DesktopRecordingRequest,
    new_boundary,
    recording_close,
    recording_content_type,
    recording_part_head,
)
from agentconn.proto.errors import BadRequest
from agentconn.web.errors import RemoteProtocolError
from agentconn.web.server import Request, ResponseLike, ServerResponse

__all__ = ["DesktopApi"]

_log = logging.getLogger("agentconn.agent.desktop")

DECODE_FAILED = "Failed to decode request body."
#: Request bodies larger than this do not decode (an action's text included).
MAX_BODY = 1 << 20
_STREAM_CHUNK = 1 << 20


class DesktopApi:
    """The §11 routes over one :class:`DesktopSession`; register with :meth:`register`.

    The desktop lives under ``<log_dir>/desktop`` (the agent's data directory): the session's
    private directory and the recordings. ``bridges`` are the live VNC viewers.
    """

    def __init__(self, options: AgentOptions) -> None:
        data_dir = os.path.join(options.data_dir(), "desktop")
        self.session = DesktopSession(enabled=options.desktop,
                                      geometry=options.desktop_geometry,
                                      data_dir=data_dir, environ=options.environ)
        self.recordings = RecordingManager(self.session, os.path.join(data_dir, "recordings"))
        self.bridges: set[VncBridge] = set()

    def register(self, router: Router) -> None:
        """Add the four desktop routes to ``router``."""
        router.add_routes({"ConnectDesktopVNC": self.vnc,
                           "ExecuteDesktopAction": self.action,
                           "StartDesktopRecording": self.start_recording,
                           "StopDesktopRecording": self.stop_recording})

    async def _ensure_desktop(self) -> None:
        try:
            await self.session.ensure_started()
        except DesktopUnavailable as e:
            if self.session.enabled:
                _log.warning("desktop unavailable: %s", e)
            raise ApiError(500, "Failed to start desktop session.", str(e)) from e

    @staticmethod
    async def _body(request: Request) -> bytes:
        try:
            return await request.body(MAX_BODY)
        except RemoteProtocolError as e:
            raise ApiError(400, DECODE_FAILED, str(e)) from e

    # -- §11.1 VNC ------------------------------------------------------------------------

    async def vnc(self, request: Request, ctx: RequestContext) -> ResponseLike:
        """Bridge a viewer's websocket to the VNC server."""
        await self._ensure_desktop()
        bridge = VncBridge(on_input=self.session.touch)  # viewer input is desktop activity
        try:
            transport, side = await open_vnc(self.session.rfb_socket, bridge)
        except OSError as e:
            raise ApiError(500, "Failed to connect to VNC server.", str(e)) from e
        try:
            # §2.6/§11.1: no compression; pieces are forwarded unjoined, so no read limit.
            ws = await request.accept_websocket(compression=False)
        except BaseException:
            transport.close()
            raise
        self.bridges.add(bridge)
        try:
            await bridge.run(ws, transport, side)
        finally:
            self.bridges.discard(bridge)
        return None

    # -- §11.2 actions --------------------------------------------------------------------

    async def action(self, request: Request, ctx: RequestContext) -> ResponseLike:
        """Perform one action on the desktop."""
        await self._ensure_desktop()
        raw = await self._body(request)
        try:
            req = DesktopActionRequest.from_json(raw)
        except BadRequest as e:
            raise ApiError(400, DECODE_FAILED, str(e)) from e
        plan = check_action(req, self.session.geometry)
        return json_ok(await run_action(self.session, plan, request.wait_client_gone))

    # -- §11.3 recordings -----------------------------------------------------------------

    async def _recording_id(self, request: Request) -> uuid.UUID:
        if self.recordings.closing:
            raise ApiError(503, "Desktop API is shutting down.")
        await self._ensure_desktop()
        raw = await self._body(request)
        try:
            req = DesktopRecordingRequest.from_json(raw)
        except BadRequest as e:
            raise ApiError(400, DECODE_FAILED, str(e)) from e
        if not req.recording_id:
            raise ApiError(400, "Missing recording_id.")
        try:
            return uuid.UUID(req.recording_id)
        except ValueError:
            raise ApiError(400, "Invalid recording_id format.",
                           "recording_id must be a valid UUID.") from None

    async def start_recording(self, request: Request, ctx: RequestContext) -> ResponseLike:
        """Start (or keep) recording the desktop under the given id."""
        rid = await self._recording_id(request)
        await self.recordings.start(rid)
        return json_ok(Response(message="Recording started."))

    async def stop_recording(self, request: Request, ctx: RequestContext) -> ResponseLike:
        """Finalise a recording and stream it as multipart/mixed."""
        rid = await self._recording_id(request)
        artifact = await self.recordings.stop(rid)
        try:
            video = await asyncio.to_thread(open, artifact.video_path, "rb")
        except OSError as e:
            raise ApiError(500, "Failed to stop recording.", str(e)) from e
        boundary = new_boundary()
        return ServerResponse(200, [("Content-Type", recording_content_type(boundary))],
                              _multipart(video, artifact, boundary))

    async def close(self) -> None:
        """Refuse new recording requests, end recorders and viewers, stop the desktop."""
        self.recordings.closing = True
        await self.recordings.close()
        for bridge in list(self.bridges):
            bridge.abort()
        await self.session.close()


async def _multipart(video: IO[bytes], artifact: Artifact, boundary: str
                     ) -> AsyncIterator[bytes]:
    """§11.3's body: the MP4 part, the thumbnail part if any, the closing delimiter. A read
    failure ends the stream early (no closing delimiter), which the client sees as truncated."""
    try:
        yield recording_part_head(boundary, RECORDING_VIDEO_TYPE, first=True)
        left = artifact.video_size
        while left > 0:
            chunk = await asyncio.to_thread(video.read, min(_STREAM_CHUNK, left))
            if not chunk:
                raise OSError(f"{artifact.video_path} shrank while being sent")
            left -= len(chunk)
            yield chunk
        if artifact.thumbnail is not None:
            yield recording_part_head(boundary, RECORDING_THUMBNAIL_TYPE, first=False)
            yield artifact.thumbnail
        yield recording_close(boundary)
    finally:
        video.close()
