"""The ``coder.tailnet.v2.Tailnet`` DRPC service: typed client calls and server wiring.

Client (agentconn, over the coordinate websocket)::

    session = yamux_over_websocket(ws, Role.CLIENT)
    tailnet = TailnetClient(session)
    coord = await tailnet.coordinate()          # yamux stream 1
    await coord.send(CoordinateRequest(add_tunnel=Tunnel.to(agent_id)))
    maps = await tailnet.stream_derp_maps()     # yamux stream 3
    derp_map = await maps.recv()
    response = await coord.recv()               # CoordinateResponse, None when the server closed

Server (the test coordinator)::

    server = tailnet_server(coordinate=handle_coordinate, stream_derp_maps=handle_maps)
    await server.serve(yamux_over_websocket(ws, Role.SERVER))

Method names and shapes: coder-control-plane.md §3.6.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .drpc_aio import Call, DrpcClient, DrpcServer, StreamOpener, TypedCall
from .errors import DrpcClosedError, DrpcError
from .tailnet_pb import (
    CoordinateRequest,
    CoordinateResponse,
    DERPMap,
    Disconnect,
    StreamDERPMapsRequest,
)

__all__ = [
    "RPC_COORDINATE",
    "RPC_POST_TELEMETRY",
    "RPC_REFRESH_RESUME_TOKEN",
    "RPC_STREAM_DERP_MAPS",
    "RPC_WORKSPACE_UPDATES",
    "CoordinateCall",
    "CoordinateHandler",
    "DERPMapStream",
    "StreamDERPMapsHandler",
    "TailnetClient",
    "tailnet_server",
]

_SERVICE = "/coder.tailnet.v2.Tailnet/"
RPC_POST_TELEMETRY = _SERVICE + "PostTelemetry"
RPC_STREAM_DERP_MAPS = _SERVICE + "StreamDERPMaps"
RPC_REFRESH_RESUME_TOKEN = _SERVICE + "RefreshResumeToken"
RPC_COORDINATE = _SERVICE + "Coordinate"
RPC_WORKSPACE_UPDATES = _SERVICE + "WorkspaceUpdates"


class CoordinateCall(TypedCall[CoordinateRequest, CoordinateResponse]):
    """The client side of ``Coordinate``: ``send(CoordinateRequest)``,
    ``recv() -> CoordinateResponse | None`` (None: the coordinator closed the stream)."""

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Graceful leave (§4.10): send ``Disconnect{}``, wait up to ``timeout`` s for the
        coordinator to close the stream (responses meanwhile are discarded), then close."""
        try:
            await self.send(CoordinateRequest(disconnect=Disconnect()))

            async def drain() -> None:
                while await self.recv() is not None:
                    pass

            await asyncio.wait_for(drain(), timeout)
        except (DrpcError, TimeoutError):
            pass
        finally:
            await self.close()


class DERPMapStream(TypedCall[StreamDERPMapsRequest, DERPMap]):
    """The client side of ``StreamDERPMaps``: ``recv() -> DERPMap | None``."""


class TailnetClient:
    """Typed calls of the Tailnet service, each on its own yamux stream."""

    def __init__(self, session: StreamOpener) -> None:
        self.drpc = DrpcClient(session)

    async def coordinate(self) -> CoordinateCall:
        """Start the bidirectional ``Coordinate`` stream (the Invoke leaves at once)."""
        call = await self.drpc.invoke(RPC_COORDINATE)
        await call._transport.flush()
        return CoordinateCall(call, CoordinateResponse.decode)

    async def stream_derp_maps(self) -> DERPMapStream:
        """Start ``StreamDERPMaps`` (Invoke, empty request, CloseSend — §3.7)."""
        call = await self.drpc.server_stream(RPC_STREAM_DERP_MAPS, StreamDERPMapsRequest().encode())
        return DERPMapStream(call, DERPMap.decode)


CoordinateHandler = Callable[[TypedCall[CoordinateResponse, CoordinateRequest]], Awaitable[None]]
StreamDERPMapsHandler = Callable[
    [StreamDERPMapsRequest, TypedCall[DERPMap, StreamDERPMapsRequest]], Awaitable[None]
]


def tailnet_server(
    *,
    coordinate: CoordinateHandler | None = None,
    stream_derp_maps: StreamDERPMapsHandler | None = None,
    server: DrpcServer | None = None,
) -> DrpcServer:
    """A :class:`DrpcServer` (new or ``server``) serving the given Tailnet methods.

    ``coordinate(call)`` reads requests with ``call.recv()`` and answers with
    ``call.send(CoordinateResponse)``; returning ends the stream (CloseSend), ``call.close()``
    sends Close as Coder's coordinator does when it drops a peer. ``stream_derp_maps(request,
    call)`` gets the decoded request first (the generated server's ``MsgRecv``).
    """
    server = server or DrpcServer()
    if coordinate is not None:
        handle_coordinate = coordinate

        async def _coordinate(call: Call) -> None:
            await handle_coordinate(TypedCall(call, CoordinateRequest.decode))

        server.register(RPC_COORDINATE, _coordinate)
    if stream_derp_maps is not None:
        handle_maps = stream_derp_maps

        async def _stream_derp_maps(call: Call) -> None:
            data = await call.recv()
            if data is None:
                raise DrpcClosedError("EOF")  # MsgRecv on a stream without a message
            await handle_maps(
                StreamDERPMapsRequest.decode(data), TypedCall(call, StreamDERPMapsRequest.decode)
            )

        server.register(RPC_STREAM_DERP_MAPS, _stream_derp_maps)
    return server
