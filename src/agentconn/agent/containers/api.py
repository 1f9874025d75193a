"""The container routes (agent-api.md §9): list, watch, recreate and delete dev containers.

Theory of operation
-------------------
Disabled (the default, ``AgentOptions.devcontainers`` false), the one path
``/api/v0/containers`` answers every method with the exact 403 of §9 and its sub-paths 404,
as a Go agent without ``CODER_AGENT_DEVCONTAINERS_ENABLE``.

Enabled, :class:`ContainersApi` keeps the last listing and a
:class:`~agentconn.agent.containers.state.DevcontainerTable`, refreshed by one updater task:
once at start (every route waits for that first refresh; after :meth:`close` they answer 503
``API closed``), then whenever ``docker events`` reports a container state change (a burst
is coalesced into one refresh), and as a fallback every :data:`FALLBACK_INTERVAL` seconds
(:data:`EVENTS_DOWN_INTERVAL` while the events command is not running; it is restarted with
exponential backoff). A refresh is ``docker ps`` + ``docker inspect`` (:mod:`.docker`), the
configurations found under the agent's directory (:func:`.devcontainer.discover`, rescanned
at most every :data:`DISCOVERY_INTERVAL` seconds) and the config files' modification times.
A failed listing is answered with 500 ``Could not get containers`` until one succeeds.

Watchers (``GET /api/v0/containers/watch``) each hold one :class:`asyncio.Event`: a change
sets it, the watcher's task then sends the list as it is *now*, so a slow reader costs one
pending flag, never a queue. The server only reads the socket to answer pings and see the
close; it pings every :data:`PING_INTERVAL` seconds.

Recreate marks the dev container ``starting`` and broadcasts before the 202 is written, then
:func:`.devcontainer.up` runs in a task of its own; delete runs ``stopping`` → ``docker stop``
→ ``deleting`` → ``docker rm`` → forgotten → a refresh, within the request, answering 204.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from agentconn.agent.api.router import ApiError, RequestContext, Router, json_ok
from agentconn.agent.containers.devcontainer import UpError, discover, up
from agentconn.agent.containers.docker import STATE_ACTIONS, CommandError, DockerCli
from agentconn.agent.containers.state import (
    DevcontainerBusy,
    DevcontainerNotFound,
    DevcontainerTable,
)
from agentconn.agent.options import AgentOptions
from agentconn.proto._codec import go_json
from agentconn.proto.common import Response
from agentconn.proto.containers import Container, DevcontainerStatus, ListContainersResponse
from agentconn.proto.routes import route
from agentconn.web.errors import ConnectionClosed
from agentconn.web.server import Request, ResponseLike, ServerResponse
from agentconn.web.websocket import WebSocket

__all__ = ["DISABLED_DETAIL", "DISABLED_MESSAGE", "ContainersApi"]

_log = logging.getLogger("agentconn.agent.containers")

DISABLED_MESSAGE = "Dev Container feature not enabled."
DISABLED_DETAIL = ("To enable this feature, set CODER_AGENT_DEVCONTAINERS_ENABLE=true in your "
                   "template.")
CLOSED_MESSAGE = "API closed"
CLOSED_DETAIL = "The API is closed and cannot process requests."

#: Seconds between refreshes while ``docker events`` runs (it reports every change).
FALLBACK_INTERVAL = 60.0
#: Seconds between refreshes while it does not (Go's ``defaultUpdateInterval``).
EVENTS_DOWN_INTERVAL = 10.0
#: Seconds to gather a burst of events into one refresh.
COALESCE = 0.05
#: Seconds between scans of the agent's directory for devcontainer.json files.
DISCOVERY_INTERVAL = 30.0
EVENTS_BACKOFF_MIN = 0.5
EVENTS_BACKOFF_MAX = 30.0
#: §2.6: the agent pings watch sockets every 15 s.
PING_INTERVAL = 15.0
#: A watcher that does not take a message within this long is dropped.
SEND_TIMEOUT = 60.0
#: Client messages are read only to be dropped: none may be larger than this.
MAX_CLIENT_MESSAGE = 64 << 10
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


async def _disabled(request: Request, ctx: RequestContext) -> ResponseLike:
    raise ApiError(403, DISABLED_MESSAGE, DISABLED_DETAIL)


class ContainersApi:
    """The §9 routes. ``options.devcontainers`` enables them; ``options.environ`` is where
    the ``docker`` (and ``devcontainer``) CLI and ``DOCKER_HOST`` come from;
    ``options.directory`` is searched for dev container configurations."""

    def __init__(self, options: AgentOptions) -> None:
        self.enabled = options.devcontainers
        self.directory = options.directory
        self.environ = dict(options.environ)
        self.docker = DockerCli(self.environ)
        self.table = DevcontainerTable()
        self._containers: list[Container] = []
        self._warnings: list[str] = []
        self._list_error: str | None = None
        self._discovered: dict[str, str] = {}
        self._discovered_at = float("-inf")
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._poke = asyncio.Event()
        self._refresh_lock = asyncio.Lock()
        self._watchers: set[asyncio.Event] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._events_running = False
        #: Refreshes done (for tests and the debug page).
        self.refreshes = 0

    # -- lifecycle --------------------------------------------------------------------------

    def register(self, router: Router) -> None:
        """Add the routes to ``router``; enabled, start the updater and the events follower."""
        if not self.enabled:
            for method in _METHODS:
                router.add(method, route("ListContainers").path, _disabled)
            return
        router.add_routes({"ListContainers": self.list,
                           "WatchContainers": self.watch,
                           "RecreateDevcontainer": self.recreate,
                           "DeleteDevcontainer": self.delete})
        self._spawn(self._updater(), "containers updater")
        self._spawn(self._follow_events(), "docker events")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Answer 503 from now on, end watchers, stop the updater, events and operations."""
        self._closing.set()
        for wake in list(self._watchers):
            wake.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _wait_ready(self) -> None:
        # Go: every route waits for the initial update; a closed API answers 503.
        if not self._ready.is_set() and not self._closing.is_set():
            closing = asyncio.ensure_future(self._closing.wait())
            ready = asyncio.ensure_future(self._ready.wait())
            try:
                await asyncio.wait({closing, ready}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closing.cancel()
                ready.cancel()
        if self._closing.is_set():
            raise ApiError(503, CLOSED_MESSAGE, CLOSED_DETAIL)

    # -- refreshing -------------------------------------------------------------------------

    def _broadcast(self) -> None:
        for wake in self._watchers:
            wake.set()

    def _scan(self) -> dict[str, str]:
        directory = self.directory
        if not directory or not os.path.isdir(directory):
            return {}
        return discover(directory)

    async def refresh(self) -> None:
        """List the containers now and update the dev containers; broadcast a change."""
        async with self._refresh_lock:
            self.refreshes += 1
            try:
                listing = await self.docker.list()
            except CommandError as e:
                if self._list_error != str(e):
                    _log.warning("listing containers failed: %s", e)
                self._list_error = str(e)
                return
            loop = asyncio.get_running_loop()
            if loop.time() - self._discovered_at >= DISCOVERY_INTERVAL:
                self._discovered = await asyncio.to_thread(self._scan)
                self._discovered_at = loop.time()
            paths = set(self._discovered.values())
            paths.update(c.labels.get("devcontainer.config_file", "") for c in listing.containers)
            paths.update(e.config_path for e in self.table.snapshot())
            mtimes = await asyncio.to_thread(_mtimes, paths)
            changed = self.table.apply(listing.containers, self._discovered, mtimes)
            self._containers = listing.containers
            self._warnings = listing.warnings
            self._list_error = None
            if changed:
                self._broadcast()

    async def _updater(self) -> None:
        try:
            await self.refresh()
        finally:
            self._ready.set()
        while True:
            interval = FALLBACK_INTERVAL if self._events_running else EVENTS_DOWN_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), interval)
            await asyncio.sleep(COALESCE)
            self._poke.clear()
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the updater must outlive one bad refresh
                _log.exception("refreshing containers failed")

    async def _follow_events(self) -> None:
        backoff = EVENTS_BACKOFF_MIN
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                self._events_running = True
                async for action in self.docker.events():
                    # "health_status: healthy" and the like: the action is before the colon
                    if action.partition(":")[0].strip() in STATE_ACTIONS:
                        self._poke.set()
            except CommandError as e:
                _log.debug("docker events: %s", e)
            finally:
                self._events_running = False
            if loop.time() - started > 2 * EVENTS_BACKOFF_MAX:
                backoff = EVENTS_BACKOFF_MIN  # it ran a good while: start over
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, EVENTS_BACKOFF_MAX)
            self._poke.set()  # changes may have been missed while it was down

    def _response(self) -> ListContainersResponse:
        return ListContainersResponse(devcontainers=self.table.snapshot(),
                                      containers=list(self._containers),
                                      warnings=list(self._warnings))

    # -- §9.1 list --------------------------------------------------------------------------

    async def list(self, request: Request, ctx: RequestContext) -> ResponseLike:
        """``GET /api/v0/containers``."""
        await self._wait_ready()
        if self._list_error is not None:
            raise ApiError(500, "Could not get containers", self._list_error)
        return json_ok(self._response())

    # -- §9.2 watch -------------------------------------------------------------------------

    async def watch(self, request: Request, ctx: RequestContext) -> ResponseLike:
        """``GET /api/v0/containers/watch``: the list now, then again on every change."""
        await self._wait_ready()
        ws = await request.accept_websocket(compression=True,
                                            max_message_size=MAX_CLIENT_MESSAGE)
        wake = asyncio.Event()
        wake.set()
        gone = asyncio.Event()
        reader = asyncio.ensure_future(_read_until_closed(ws, wake, gone))
        self._watchers.add(wake)
        first = True
        try:
            while not self._closing.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), PING_INTERVAL)
                if gone.is_set() or self._closing.is_set():
                    break
                if not wake.is_set():
                    await asyncio.wait_for(ws.ping(), SEND_TIMEOUT)
                    continue
                wake.clear()
                if self._list_error is not None:
                    if first:  # Go: no list to start with ends the watch
                        await asyncio.wait_for(ws.close(1011, "Could not get containers"),
                                               SEND_TIMEOUT)
                        break
                    _log.debug("containers watch: %s", self._list_error)
                    continue  # Go: logs it and waits for the next update
                message = go_json(self._response().to_json()).decode()
                await asyncio.wait_for(ws.send(message), SEND_TIMEOUT)
                first = False
        except (ConnectionClosed, ConnectionError, TimeoutError):
            pass
        finally:
            self._watchers.discard(wake)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if not gone.is_set() and not ws.closed:
                with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                    await asyncio.wait_for(ws.close(1001 if self._closing.is_set() else 1000),
                                           5.0)
        return None

    # -- §9.3 recreate ----------------------------------------------------------------------

    async def recreate(self, request: Request, ctx: RequestContext,
                       id: str) -> ResponseLike:  # noqa: A002 - the route's {id}
        """``POST …/devcontainers/{id}/recreate``: 202 once ``starting`` is set."""
        await self._wait_ready()
        try:
            entry = self.table.begin_recreate(id)
        except DevcontainerNotFound:
            raise ApiError(404, "Devcontainer not found.",
                           f'Could not find devcontainer with ID: "{id}"') from None
        except DevcontainerBusy as e:
            raise ApiError(409, "Unable to recreate transitioning devcontainer",
                           f'Devcontainer "{e.name}" is currently {e.status.value} and '
                           f"cannot be restarted.") from None
        self._broadcast()
        self._spawn(self._recreate(entry.workspace_folder, entry.config_path),
                    f"recreate {entry.workspace_folder}")
        return json_ok(Response(
            message="Devcontainer recreation initiated",
            detail=f'Recreation process for devcontainer "{entry.name}" has started.'),
            202)

    async def _recreate(self, workspace_folder: str, config_path: str) -> None:
        error = ""
        container_id: str | None
        try:
            container_id = await up(self.docker, workspace_folder, config_path,
                                    environ=self.environ)
        except UpError as e:
            container_id, error = e.container_id, str(e)
        except Exception as e:  # noqa: BLE001 - reported in the list, never lost
            _log.exception("recreating %s failed", workspace_folder)
            container_id, error = None, f"{type(e).__name__}: {e}"
        if error:
            _log.warning("recreating dev container %s: %s", workspace_folder, error)
        if container_id is None:
            self.table.fail(workspace_folder, error, datetime.now(UTC))
            self._broadcast()
            return
        await self.refresh()  # the new container, while still "starting"
        self.table.finish_recreate(workspace_folder, container_id, error)
        self._broadcast()

    # -- §9.4 delete ------------------------------------------------------------------------

    async def delete(self, request: Request, ctx: RequestContext,
                     id: str) -> ResponseLike:  # noqa: A002 - the route's {id}
        """``DELETE …/devcontainers/{id}``: stop, remove, forget; 204."""
        await self._wait_ready()
        try:
            entry = self.table.begin_delete(id)
        except DevcontainerNotFound:
            raise ApiError(404, "Devcontainer not found.",
                           f'Could not find devcontainer with ID: "{id}"') from None
        except DevcontainerBusy as e:
            raise ApiError(409, "Unable to delete transitioning devcontainer",
                           f'Devcontainer "{e.name}" is currently {e.status.value} and '
                           f"cannot be deleted.") from None
        folder = entry.workspace_folder
        container_id = entry.container.id if entry.container is not None else ""
        self._broadcast()
        if container_id:
            try:
                await self.docker.stop(container_id)
            except CommandError as e:
                self.table.fail(folder, str(e), datetime.now(UTC))
                self._broadcast()
                raise ApiError(500, "An error occurred stopping the container", str(e)) from None
        self.table.set_status(folder, DevcontainerStatus.DELETING)
        self._broadcast()
        if container_id:
            try:
                await self.docker.remove(container_id)
            except CommandError as e:
                self.table.fail(folder, str(e), datetime.now(UTC))
                self._broadcast()
                raise ApiError(500, "An error occurred removing the container", str(e)) from None
        self.table.forget(folder)
        self._broadcast()
        # The container list, too, without the removed container before we answer.
        await self.refresh()
        return ServerResponse(204, [], b"")


def _mtimes(paths: set[str]) -> dict[str, datetime]:
    out: dict[str, datetime] = {}
    for path in paths:
        if not path:
            continue
        try:
            out[path] = datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
        except OSError:
            continue
    return out


async def _read_until_closed(ws: WebSocket, wake: asyncio.Event, gone: asyncio.Event) -> None:
    """Read (and drop) what the client sends, so pings are answered and its close is seen;
    then wake the sender to finish."""
    try:
        while True:
            await ws.receive()
    except (ConnectionClosed, ConnectionError, OSError, TimeoutError):
        pass
    finally:
        gone.set()
        wake.set()
