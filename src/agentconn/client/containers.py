"""The client side of the container routes (agent-api.md §9): list, watch, recreate, delete.

``ListContainers``, ``RecreateDevcontainer`` and ``DeleteDevcontainer`` are plain calls;
``WatchContainers`` is a websocket upgrade on the API port (without the extra headers, with
permessage-deflate offered, messages up to 4 MiB, §2.3/§2.6) carrying one JSON list per text
message, which :class:`ContainersWatch` turns into typed
:class:`~agentconn.proto.containers.ListContainersResponse` objects.

Errors of these routes are :class:`ContainersError` subclasses of
:class:`~agentconn.client.conn.AgentApiError`, one per status the spec gives them, so callers
can branch: :class:`ContainersForbiddenError` (403: the feature is not enabled on the agent,
or a Terraform-defined dev container), :class:`DevcontainerNotFoundError` (404),
:class:`DevcontainerBusyError` (409: starting, stopping or deleting),
:class:`ContainersFailedError` (500: listing, stopping or removing failed) and
:class:`ContainersUnavailableError` (503: the agent's container API is closed). Other
statuses stay plain ``AgentApiError``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from agentconn.client.conn import AgentApiError
from agentconn.proto.common import Response as MessageResponse
from agentconn.proto.containers import ListContainersResponse
from agentconn.proto.errors import ProtocolError
from agentconn.proto.ports import AGENT_HTTP_API_PORT
from agentconn.proto.routes import route
from agentconn.web.errors import ConnectionClosed, WebSocketRejected
from agentconn.web.websocket import WebSocket, websocket_connect

if TYPE_CHECKING:
    from agentconn.client.conn import AgentConn

__all__ = [
    "WATCH_MAX_MESSAGE",
    "ContainersError",
    "ContainersFailedError",
    "ContainersForbiddenError",
    "ContainersUnavailableError",
    "ContainersWatch",
    "DevcontainerBusyError",
    "DevcontainerNotFoundError",
    "delete_devcontainer",
    "list_containers",
    "recreate_devcontainer",
]

#: §2.6: the client's read limit on containers-watch messages.
WATCH_MAX_MESSAGE = 4 << 20


class ContainersError(AgentApiError):
    """A container route answered with an error status (see the subclasses)."""


class ContainersForbiddenError(ContainersError):
    """403: ``Dev Container feature not enabled.`` (the agent runs without
    ``--devcontainers``), or a Terraform-defined dev container cannot be recreated."""


class DevcontainerNotFoundError(ContainersError):
    """404: no dev container with that id (or the watch route does not exist: disabled)."""


class DevcontainerBusyError(ContainersError):
    """409: the dev container is starting, stopping or deleting."""


class ContainersFailedError(ContainersError):
    """500: listing the containers, or stopping or removing one, failed (``detail`` says
    what the engine answered)."""


class ContainersUnavailableError(ContainersError):
    """503: ``API closed``: the agent's container API is shutting down."""


_BY_STATUS: dict[int, type[ContainersError]] = {
    403: ContainersForbiddenError, 404: DevcontainerNotFoundError, 409: DevcontainerBusyError,
    500: ContainersFailedError, 503: ContainersUnavailableError}


def typed_error(err: AgentApiError) -> AgentApiError:
    """``err`` as the :class:`ContainersError` subclass of its status (itself when none)."""
    cls = _BY_STATUS.get(err.status)
    if cls is None or isinstance(err, cls):
        return err
    return cls(err.status, err.message, err.detail, err.validations, method=err.method,
               target=err.target, body=err.body)


async def list_containers(conn: AgentConn) -> ListContainersResponse:
    """``GET /api/v0/containers``."""
    try:
        return await conn._call("ListContainers", ListContainersResponse)
    except AgentApiError as e:
        raise typed_error(e) from None


async def recreate_devcontainer(conn: AgentConn, devcontainer_id: uuid.UUID | str
                                ) -> MessageResponse:
    """``POST /api/v0/containers/devcontainers/{id}/recreate``: the agent's 202 message
    (``Devcontainer recreation initiated``); the rebuild goes on in the background."""
    try:
        return await conn._call("RecreateDevcontainer", MessageResponse,
                                path={"id": str(devcontainer_id)})
    except AgentApiError as e:
        raise typed_error(e) from None


async def delete_devcontainer(conn: AgentConn, devcontainer_id: uuid.UUID | str) -> None:
    """``DELETE /api/v0/containers/devcontainers/{id}``: returns once the agent answered
    204 (container stopped and removed). Stopping may take the engine ~10 s, so the read
    timeout allows for a minute more."""
    try:
        resp = await conn._send("DeleteDevcontainer", path={"id": str(devcontainer_id)},
                                timeout=max(conn.timeout, 30.0) + 60.0)
    except AgentApiError as e:
        raise typed_error(e) from None
    async with resp:
        await resp.read()


class ContainersWatch:
    """``WatchContainers``: the agent's container list now and after every dev container
    change, as :class:`~agentconn.proto.containers.ListContainersResponse` objects.

    Use ``async with conn.watch_containers() as watch: async for listing in watch: …``
    (or ``watch = await conn.watch_containers()`` … ``await watch.aclose()``). Iteration
    ends when the agent closes the socket (``close_code``/``close_reason`` say how); leaving
    the ``async with`` or :meth:`aclose` closes it with a normal close handshake. A message
    that is not one JSON list closes the socket and raises
    :class:`~agentconn.proto.errors.ProtocolError`. Opening raises :class:`ContainersError`
    when the agent refuses the upgrade (404 when the feature is off).
    """

    def __init__(self, conn: AgentConn) -> None:
        self._conn = conn
        self._ws: WebSocket | None = None
        self.close_code: int | None = None
        self.close_reason = ""

    async def open(self) -> Self:
        """Open the websocket (once; later calls do nothing)."""
        if self._ws is not None:
            return self
        conn = self._conn
        r = route("WatchContainers")
        reader, writer = await conn._open(conn._host, AGENT_HTTP_API_PORT)
        try:
            # §2.3: the Go client sends no extra headers on this handshake.
            self._ws = await websocket_connect(
                reader, writer, f"[{conn._host}]:{AGENT_HTTP_API_PORT}", r.path,
                compression=True, max_message_size=WATCH_MAX_MESSAGE, timeout=conn.timeout)
        except WebSocketRejected as e:
            from agentconn.client.desktop import _api_error

            raise typed_error(_api_error(e, r.method, r.path)) from None
        conn._last_ok = time.monotonic()
        return self

    def __await__(self) -> Generator[Any, None, Self]:
        return self.open().__await__()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ListContainersResponse:
        ws = self._ws or (await self.open())._ws
        assert ws is not None
        try:
            message = await ws.receive()
        except ConnectionClosed as e:
            self.close_code, self.close_reason = e.code, e.reason
            raise StopAsyncIteration from None
        if not isinstance(message, str):
            await ws.close(1003, "expected a text message")
            raise ProtocolError("containers watch: the agent sent a binary message")
        try:
            return ListContainersResponse.from_json(message)
        except ProtocolError as e:
            await ws.close(1007, "invalid JSON")
            raise ProtocolError(f"containers watch: undecodable message: {e}") from None

    async def aclose(self) -> None:
        """Close the websocket (normal close handshake); idempotent."""
        ws = self._ws
        if ws is not None and not ws.closed:
            await ws.close()
        if ws is not None and self.close_code is None:
            self.close_code, self.close_reason = ws.close_code, ws.close_reason

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
