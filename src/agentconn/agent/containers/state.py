"""The agent's table of known dev containers and their status (agent-api.md §9), sans I/O.

Theory of operation
-------------------
A dev container is known by its **workspace folder** (its ``devcontainer.local_folder``
label, or the folder of a discovered ``devcontainer.json``) and keeps one random UUID while
known. Inputs: :meth:`DevcontainerTable.apply` with a fresh container listing, the
discovered configurations and the modification times of the config files (all gathered by
the caller); the operations :meth:`begin_recreate`, :meth:`finish_recreate`,
:meth:`begin_delete`, :meth:`set_status`, :meth:`fail` and :meth:`forget`. Output:
:meth:`snapshot` (the ``devcontainers`` list, sorted by workspace folder) and, from
:meth:`apply`, whether any dev container changed in a way a watcher sees (Go
``WorkspaceAgentDevcontainer.Equals``: id, name, folder, status, dirty, container id, error).

Statuses, as the Go agent moves them (``agent/agentcontainers/api.go``):

* ``starting`` (recreate), ``stopping`` then ``deleting`` (delete) belong to the running
  operation: a listing never changes them, and recreate or delete is refused (409) meanwhile.
* ``error`` after a failed operation stays until a container created after the failure shows
  up (the operation's ``error_at``).
* otherwise a listing decides: ``running`` or ``stopped`` from the container, ``stopped``
  without one; ``dirty`` when the config file changed after the container was created.

A lifecycle-command error (the container exists) stays attached while that container does.
Entries with neither a container nor a config file that still exists are dropped, unless an
operation holds them. Names follow the Go agent: from the workspace folder's last path
components, lower-case letters, digits and ``-``, unique among the dev containers; empty while
there is no container.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from agentconn.agent.containers.devcontainer import (
    CONFIG_FILE_LABEL,
    LOCAL_FOLDER_LABEL,
    TEST_RUN_LABEL,
)
from agentconn.proto.containers import Container, Devcontainer, DevcontainerStatus

__all__ = ["TRANSITIONING", "DevcontainerBusy", "DevcontainerNotFound", "DevcontainerTable",
           "Entry", "agent_name"]

TRANSITIONING = frozenset({DevcontainerStatus.STARTING, DevcontainerStatus.STOPPING,
                           DevcontainerStatus.DELETING})
MAX_AGENT_NAME = 64
_AGENT_NAME = re.compile(r"^[a-z0-9](-?[a-z0-9])*$")


class DevcontainerNotFound(LookupError):
    """No known dev container has this id (the agent answers 404)."""

    def __init__(self, devcontainer_id: str) -> None:
        self.devcontainer_id = devcontainer_id
        super().__init__(devcontainer_id)


class DevcontainerBusy(RuntimeError):
    """The dev container is starting, stopping or deleting (the agent answers 409)."""

    def __init__(self, name: str, status: DevcontainerStatus) -> None:
        self.name = name
        self.status = status
        super().__init__(f"{name} is {status.value}")


@dataclass(slots=True)
class Entry:
    """One known dev container (mutable; :meth:`DevcontainerTable.snapshot` copies out)."""

    id: uuid.UUID
    workspace_folder: str
    config_path: str = ""
    name: str = ""
    status: DevcontainerStatus = DevcontainerStatus.STOPPED
    dirty: bool = False
    container: Container | None = None
    error: str = ""
    #: When an operation failed: ``error`` holds until a newer container appears.
    error_at: datetime | None = None
    #: The container a lifecycle-command error belongs to.
    error_container: str = ""

    def view(self) -> tuple[object, ...]:
        """What a watcher compares (Go ``Equals``)."""
        return (self.id, self.name, self.workspace_folder, self.status, self.dirty,
                self.container.id if self.container else None, self.error)


def agent_name(workspace_folder: str, friendly_name: str, taken: Iterable[str]) -> str:
    """The Go agent's name for a dev container: the folder's last component (then the last
    two, three … up to six) made safe (lower-case ``a-z0-9`` and single ``-``, at most 64),
    the first one not ``taken``; else the container's name, lower-cased with ``_`` → ``-``."""
    taken = set(taken)
    parts = [p for p in workspace_folder.replace("\\", "/").split("/") if p.strip()]
    fallback = friendly_name.lower().replace("_", "-")
    for depth in range(6):
        if not parts:
            break
        raw = "-".join(parts[max(0, len(parts) - depth - 1):]).lower()
        name = re.sub("-+", "-", re.sub("[^a-z0-9]", "-", raw)).strip("-")[:MAX_AGENT_NAME]
        if not _AGENT_NAME.match(name):
            return fallback
        if name not in taken:
            return name
    return fallback


def _choose(containers: list[Container]) -> Container:
    # Several containers for one folder (a crashed recreate, a manual copy): the running
    # one, then the newest.
    return max(containers, key=lambda c: (c.running, c.created_at))


class DevcontainerTable:
    """The known dev containers, by workspace folder."""

    def __init__(self) -> None:
        self._known: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self._known)

    def get(self, workspace_folder: str) -> Entry | None:
        """The entry of ``workspace_folder``, or None."""
        return self._known.get(workspace_folder)

    def _views(self) -> dict[str, tuple[object, ...]]:
        return {wf: e.view() for wf, e in self._known.items()}

    def apply(self, containers: Iterable[Container], discovered: Mapping[str, str],
              config_mtimes: Mapping[str, datetime]) -> bool:
        """Take in a listing: ``containers`` (all of them), ``discovered`` (workspace folder →
        config path found on disk) and ``config_mtimes`` (config path → modification time,
        for the config files that exist). Returns True when a watcher would see a change."""
        before = self._views()
        by_folder: dict[str, list[Container]] = {}
        for c in containers:
            folder = c.labels.get(LOCAL_FOLDER_LABEL, "")
            if not folder or c.labels.get(TEST_RUN_LABEL) == "true":
                continue
            by_folder.setdefault(folder, []).append(c)
        for entry in self._known.values():
            entry.container = None
        for folder, found in by_folder.items():
            container = _choose(found)
            entry = self._known.get(folder) or Entry(id=uuid.uuid4(), workspace_folder=folder)
            self._known[folder] = entry
            label = container.labels.get(CONFIG_FILE_LABEL, "")
            if label and not entry.config_path:
                entry.config_path = label
            entry.container = container
        for folder, path in discovered.items():
            known = self._known.get(folder)
            if known is None:
                self._known[folder] = Entry(id=uuid.uuid4(), workspace_folder=folder,
                                            config_path=path)
            elif not known.config_path:
                known.config_path = path
        for folder, entry in list(self._known.items()):
            if (entry.container is None and entry.status not in TRANSITIONING
                    and entry.status is not DevcontainerStatus.ERROR
                    and entry.config_path not in config_mtimes):
                del self._known[folder]  # nothing left to show or to recreate
                continue
            self._derive(entry, config_mtimes)
        self._name_all()
        return before != self._views()

    def _derive(self, entry: Entry, config_mtimes: Mapping[str, datetime]) -> None:
        c = entry.container
        if entry.status in TRANSITIONING:
            return  # the operation in progress decides
        if entry.status is DevcontainerStatus.ERROR and entry.error_at is not None and (
                c is None or c.created_at < entry.error_at):
            return  # failed: stays so until a newer container exists
        entry.error_at = None
        if c is None:
            entry.status = DevcontainerStatus.STOPPED
            entry.dirty = False
            entry.error = ""
            entry.error_container = ""
            return
        entry.status = DevcontainerStatus.RUNNING if c.running else DevcontainerStatus.STOPPED
        changed = config_mtimes.get(entry.config_path)
        entry.dirty = changed is not None and c.created_at < changed
        if entry.error_container != c.id:
            entry.error = ""
            entry.error_container = ""

    def _name_all(self) -> None:
        taken: set[str] = set()
        for folder in sorted(self._known):
            entry = self._known[folder]
            if entry.container is None:
                entry.name = ""
                continue
            entry.name = agent_name(folder, entry.container.name, taken)
            taken.add(entry.name)

    def snapshot(self) -> list[Devcontainer]:
        """The ``devcontainers`` of a list response, sorted by workspace folder."""
        return [Devcontainer(id=e.id, name=e.name, workspace_folder=e.workspace_folder,
                             config_path=e.config_path, status=e.status, dirty=e.dirty,
                             container=e.container, error=e.error)
                for _, e in sorted(self._known.items())]

    def find(self, devcontainer_id: str) -> Entry:
        """The entry whose id's text is exactly ``devcontainer_id`` (as Go compares it);
        raises :class:`DevcontainerNotFound`."""
        for entry in self._known.values():
            if str(entry.id) == devcontainer_id:
                return entry
        raise DevcontainerNotFound(devcontainer_id)

    def _check_idle(self, entry: Entry) -> None:
        if entry.status in TRANSITIONING:
            raise DevcontainerBusy(entry.name, entry.status)

    def begin_recreate(self, devcontainer_id: str) -> Entry:
        """Mark the dev container ``starting`` (its container link and error cleared).
        Raises DevcontainerNotFound / DevcontainerBusy."""
        entry = self.find(devcontainer_id)
        self._check_idle(entry)
        entry.status = DevcontainerStatus.STARTING
        entry.container = None
        entry.error = ""
        entry.error_at = None
        entry.error_container = ""
        return entry

    def finish_recreate(self, workspace_folder: str, container_id: str, error: str) -> None:
        """The new container ``container_id`` exists (``error``: a lifecycle command failed
        in it): leave ``starting`` for what the last listing says of it."""
        entry = self._known.get(workspace_folder)
        if entry is None:
            return
        running = entry.container is not None and entry.container.id == container_id \
            and entry.container.running
        # Go: a lifecycle failure still counts as running (the container is there to debug).
        entry.status = DevcontainerStatus.RUNNING if running or error \
            else DevcontainerStatus.STOPPED
        entry.dirty = False
        entry.error = error
        entry.error_container = container_id if error else ""
        entry.error_at = None

    def begin_delete(self, devcontainer_id: str) -> Entry:
        """Mark the dev container ``stopping``. Raises DevcontainerNotFound /
        DevcontainerBusy."""
        entry = self.find(devcontainer_id)
        self._check_idle(entry)
        entry.status = DevcontainerStatus.STOPPING
        entry.error = ""
        return entry

    def set_status(self, workspace_folder: str, status: DevcontainerStatus) -> None:
        """Move a running operation on (``stopping`` → ``deleting``); clears the error."""
        entry = self._known.get(workspace_folder)
        if entry is not None:
            entry.status = status
            entry.error = ""

    def fail(self, workspace_folder: str, error: str, now: datetime) -> None:
        """An operation failed: status ``error`` with ``error`` until a container newer than
        ``now`` appears."""
        entry = self._known.get(workspace_folder)
        if entry is not None:
            entry.status = DevcontainerStatus.ERROR
            entry.error = error
            entry.error_at = now
            entry.error_container = ""

    def forget(self, workspace_folder: str) -> None:
        """Drop the dev container (deleted)."""
        self._known.pop(workspace_folder, None)
