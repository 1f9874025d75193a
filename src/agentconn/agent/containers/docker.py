"""The Docker engine through the ``docker`` CLI, as the Go agent reaches it.

Theory of operation: every operation is one ``docker`` command run by :func:`run_command`
as a child of the agent (:class:`~agentconn.agent.children.Child`: its own process group,
reaped in the background), with the agent's environment, so ``PATH`` finds the CLI and
``DOCKER_HOST`` / ``DOCKER_CONTEXT`` choose the engine. Each command has a timeout (the
group is killed when it expires, or when the caller is cancelled) and bounded output: stdout
either fails the command beyond its limit or keeps its last bytes (build logs), stderr keeps
its first 64 KiB. Nothing is parsed from human-readable text except what the Go agent
parses too.

Listing follows the Go agent (``agent/agentcontainers/containers_dockercli.go``): ``docker
ps --all --quiet --no-trunc`` for the ids, then one ``docker inspect`` of all of them,
converted by :func:`convert_inspect` (name without its ``/``, ``Config.Image``, labels,
published ports deduplicated across loopback/unspecified host addresses, mounts as
``source → destination``, a status of ``running`` / ``exited successfully`` / ``exited with
code N[: error]``). stderr of either command becomes a warning; a container that vanished
between the two is left out. :meth:`DockerCli.events` follows ``docker events`` line by line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from agentconn.agent.children import DEVNULL, PIPE, Child
from agentconn.errors import AgentConnError
from agentconn.proto._codec import parse_time
from agentconn.proto.containers import Container, ContainerPort

__all__ = [
    "LIST_TIMEOUT",
    "STATE_ACTIONS",
    "CommandError",
    "CommandResult",
    "DockerCli",
    "convert_inspect",
    "inspect_status",
    "run_command",
]

_log = logging.getLogger("agentconn.agent.containers")

#: Go's ``defaultOperationTimeout``: listing (ps + inspect) must finish within this.
LIST_TIMEOUT = 15.0
#: ``docker stop`` waits 10 s for the container before SIGKILL; leave room for the engine.
STOP_TIMEOUT = 60.0
REMOVE_TIMEOUT = 60.0
#: The most a ``docker inspect`` of every container may print.
MAX_INSPECT_OUTPUT = 32 << 20
#: stderr kept per command (the rest is counted, not stored).
MAX_STDERR = 64 << 10
#: ``docker events`` actions that change what a listing shows (``exec_*``, ``attach``,
#: ``top``, ``resize`` … do not).
STATE_ACTIONS = frozenset({
    "create", "start", "restart", "stop", "die", "kill", "oom", "destroy", "pause",
    "unpause", "rename", "update", "health_status",
})


class CommandError(AgentConnError):
    """A command could not be started, timed out, printed more than allowed, or failed.

    ``argv`` is the command, ``returncode`` its exit code when it ran to the end (else None),
    ``stderr`` what it printed there (trimmed).
    """

    def __init__(self, message: str, argv: Sequence[str] = (), returncode: int | None = None,
                 stderr: str = "") -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A finished command: exit code, stdout (possibly only its tail, see
    :func:`run_command`) and stderr (its first :data:`MAX_STDERR` bytes)."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: bytes
    stderr: bytes

    @property
    def stderr_text(self) -> str:
        """stderr decoded (invalid UTF-8 replaced) and trimmed."""
        return self.stderr.decode("utf-8", "replace").strip()

    def check(self, what: str) -> CommandResult:
        """Self if the command exited 0, else :class:`CommandError` ``"<what>: exit status N:
        <stderr>"`` (Go's ``xerrors.Errorf("%s: %w: %s")`` shape)."""
        if self.returncode == 0:
            return self
        status = ("signal: killed" if self.returncode is None or self.returncode < 0
                  else f"exit status {self.returncode}")
        text = f"{what}: {status}"
        if self.stderr_text:
            text += f": {self.stderr_text}"
        raise CommandError(text, self.argv, self.returncode, self.stderr_text)


async def _collect(reader: asyncio.StreamReader | None, limit: int, *, keep_tail: bool = False,
                   stop_when_full: bool = False) -> tuple[bytes, bool]:
    """Read ``reader`` to EOF keeping at most ``limit`` bytes: the last ones with
    ``keep_tail``, else the first ones (and with ``stop_when_full``, stop reading once more
    came). Returns (bytes, whether anything was dropped)."""
    if reader is None:
        return b"", False
    buf = bytearray()
    dropped = False
    while chunk := await reader.read(1 << 16):
        if keep_tail:
            buf += chunk
            if len(buf) > limit:
                del buf[:len(buf) - limit]
                dropped = True
            continue
        room = limit - len(buf)
        if len(chunk) <= room:
            buf += chunk
            continue
        buf += chunk[:room]
        dropped = True
        if stop_when_full:
            break
    return bytes(buf), dropped


def find_executable(name: str, environ: Mapping[str, str]) -> str | None:
    """``name`` looked up on the ``PATH`` of ``environ`` (the agent's session environment)."""
    return shutil.which(name, path=environ.get("PATH", os.defpath))


async def run_command(argv: Sequence[str], *, environ: Mapping[str, str], timeout: float,
                      cwd: str = "/", max_stdout: int = 1 << 20, keep_tail: bool = False,
                      ) -> CommandResult:
    """Run ``argv`` to the end with ``environ`` in ``cwd``; returns whatever its exit code.

    stdout is bounded by ``max_stdout``: beyond it the command is killed and
    :class:`CommandError` raised, unless ``keep_tail`` (then only the last ``max_stdout``
    bytes are kept). Raises CommandError when the program cannot be started or ``timeout``
    seconds pass; the process group is killed then, and when the caller is cancelled.
    """
    exe = find_executable(argv[0], environ)
    if exe is None:
        raise CommandError(f'exec: "{argv[0]}": executable file not found in $PATH', argv)
    try:
        child = Child.spawn([exe, *argv[1:]], cwd=cwd, env=dict(environ), stdin=DEVNULL,
                            stdout=PIPE, stderr=PIPE)
    except (OSError, ValueError) as e:
        raise CommandError(f"start {argv[0]}: {e}", argv) from e
    finished = False
    err_task: asyncio.Task[tuple[bytes, bool]] | None = None
    try:
        _, out_r, err_r = await child.open_streams()
        err_task = asyncio.ensure_future(_collect(err_r, MAX_STDERR))
        try:
            async with asyncio.timeout(timeout):
                out, out_dropped = await _collect(out_r, max_stdout, keep_tail=keep_tail,
                                                  stop_when_full=True)
                if out_dropped and not keep_tail:
                    raise CommandError(
                        f"{' '.join(argv[:2])}: output exceeds {max_stdout} bytes", argv)
                err, _ = await err_task
                code = await child.wait()
        except TimeoutError:
            raise CommandError(f"{' '.join(argv[:2])}: timed out after {timeout:g} s",
                               argv) from None
        finished = True
        return CommandResult(tuple(argv), code, out, err)
    finally:
        if err_task is not None and not err_task.done():
            err_task.cancel()
        if not finished and child.running:
            with contextlib.suppress(OSError):
                child.signal_group(signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class ListResult:
    """What one listing saw: the containers and the warnings to show with them."""

    containers: list[Container]
    warnings: list[str]


def inspect_status(state: Mapping[str, Any]) -> str:
    """The Go agent's container status text from ``docker inspect``'s ``State``."""
    if state.get("Running"):
        return "running"
    code = state.get("ExitCode") or 0
    text = f"exited with code {code}" if code else "exited successfully"
    if state.get("Error"):
        text += f": {state['Error']}"
    return text


def _loopback_or_unspecified(text: str) -> bool:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _port_key(key: str) -> tuple[int, str]:
    number, _, network = key.partition("/")
    port = int(number)  # ValueError for junk: reported as a warning
    if not 0 <= port <= 65535:
        raise ValueError(f"invalid port format: {key}")
    return port, network or "tcp"


def convert_inspect(raw: bytes) -> tuple[list[Container], list[str]]:
    """Containers and warnings from the JSON array ``docker inspect`` prints.

    Raises ValueError when ``raw`` is not such an array. Entries without an id are skipped.
    """
    try:
        items = orjson.loads(raw) if raw.strip() else []
    except orjson.JSONDecodeError as e:
        raise ValueError(f"decode docker inspect output: {e}") from None
    if not isinstance(items, list):
        raise ValueError("decode docker inspect output: not a JSON array")
    warnings: list[str] = []
    out: list[Container] = []
    host_port_containers: dict[int, list[str]] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("Id"), str):
            continue
        config = item.get("Config") or {}
        state = item.get("State") or {}
        try:
            created = parse_time(str(item.get("Created", "")))
        except ValueError:
            created = datetime.fromtimestamp(0, UTC)
        ports: list[ContainerPort] = []
        seen_loopback: dict[int, int] = {}
        published = (item.get("NetworkSettings") or {}).get("Ports") or {}
        for key in sorted(published):
            for binding in published[key] or []:
                try:
                    container_port, network = _port_key(key)
                except ValueError:
                    warnings.append(f"convert docker port: invalid port format: {key}")
                    container_port, network = 0, "tcp"
                host_ip = str(binding.get("HostIp", ""))
                try:
                    host_port = int(binding.get("HostPort", ""))
                except ValueError:
                    warnings.append(f"convert docker host port: invalid host port "
                                    f"{binding.get('HostPort')!r}")
                    continue
                if not 1 <= host_port <= 65535:
                    warnings.append(f"convert docker host port: invalid host port {host_port}")
                    continue
                if _loopback_or_unspecified(host_ip):
                    if seen_loopback.get(host_port) == container_port:
                        continue  # the same port on 0.0.0.0 and [::]: shown once
                    seen_loopback[host_port] = container_port
                    host_port_containers.setdefault(host_port, []).append(item["Id"])
                ports.append(ContainerPort(port=container_port, network=network,
                                           host_ip=host_ip, host_port=host_port))
        mounts = sorted((m for m in item.get("Mounts") or [] if isinstance(m, dict)),
                        key=lambda m: str(m.get("Source", "")))
        labels = config.get("Labels") or {}
        out.append(Container(
            created_at=created,
            id=item["Id"],
            name=str(item.get("Name", "")).removeprefix("/"),
            image=str(config.get("Image", "")),
            labels={str(k): str(v) for k, v in labels.items()},
            running=bool(state.get("Running")),
            ports=ports,
            status=inspect_status(state),
            volumes={str(m.get("Source", "")): str(m.get("Destination", "")) for m in mounts},
        ))
    for host_port, ids in sorted(host_port_containers.items()):
        if len(ids) > 1:
            warnings.append(f"host port {host_port} is mapped to multiple containers on "
                            f"different interfaces: {', '.join(ids)}")
    return out, warnings


class DockerCli:
    """The ``docker`` CLI on the ``PATH`` of ``environ``, talking to the engine its
    ``DOCKER_HOST`` names (the local socket when unset)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = dict(environ)
        #: The pid of the running ``docker events`` (None while there is none).
        self.events_pid: int | None = None

    @property
    def available(self) -> bool:
        """Whether a ``docker`` executable is on the PATH."""
        return find_executable("docker", self.environ) is not None

    async def run(self, *args: str, timeout: float, max_stdout: int = 1 << 20,
                  keep_tail: bool = False, cwd: str = "/") -> CommandResult:
        """``docker ARGS…`` to the end (see :func:`run_command`)."""
        return await run_command(["docker", *args], environ=self.environ, timeout=timeout,
                                 max_stdout=max_stdout, keep_tail=keep_tail, cwd=cwd)

    async def list(self) -> ListResult:
        """Every container, running or not (the Go agent's ``List``). Raises CommandError
        when the engine cannot be asked (no CLI, no daemon, no permission)."""
        try:
            ps = await self.run("ps", "--all", "--quiet", "--no-trunc", timeout=LIST_TIMEOUT)
        except CommandError as e:  # not started or timed out: named as the Go agent does
            raise CommandError(f"run docker ps: {e}", e.argv) from None
        ps.check("run docker ps")
        ids = [line.strip() for line in ps.stdout.decode("utf-8", "replace").splitlines()
               if line.strip()]
        warnings = [ps.stderr_text] if ps.stderr_text else []
        if not ids:
            return ListResult([], warnings)
        try:
            inspect = await self.run("inspect", "--type", "container", *ids,
                                     timeout=LIST_TIMEOUT, max_stdout=MAX_INSPECT_OUTPUT)
        except CommandError as e:
            raise CommandError(f"run docker inspect: {e}", e.argv) from None
        if inspect.returncode != 0 and "No such" not in inspect.stderr_text:
            inspect.check("run docker inspect")
        if inspect.stderr_text and inspect.returncode == 0:
            warnings.append(inspect.stderr_text)
        try:
            containers, more = convert_inspect(inspect.stdout)
        except ValueError as e:
            raise CommandError(f"convert docker inspect output: {e}", inspect.argv) from None
        return ListResult(containers, warnings + more)

    async def stop(self, container_id: str) -> None:
        """``docker stop``; CommandError ``stop <id>: exit status 1: <stderr>`` on failure."""
        (await self.run("stop", container_id, timeout=STOP_TIMEOUT)).check(
            f"stop {container_id}")

    async def remove(self, container_id: str, *, force: bool = False) -> None:
        """``docker rm [-f]``; CommandError ``remove <id>: …`` on failure."""
        args = ("rm", "-f", container_id) if force else ("rm", container_id)
        (await self.run(*args, timeout=REMOVE_TIMEOUT)).check(f"remove {container_id}")

    async def events(self) -> AsyncIterator[str]:
        """The ``Action`` of each container event as ``docker events`` reports it, until
        the command ends (CommandError if it cannot start). Cancelling the iteration (or
        closing it) kills the command."""
        exe = find_executable("docker", self.environ)
        if exe is None:
            raise CommandError('exec: "docker": executable file not found in $PATH')
        argv = [exe, "events", "--format", "{{json .}}", "--filter", "type=container"]
        try:
            child = Child.spawn(argv, cwd="/", env=self.environ, stdin=DEVNULL, stdout=PIPE,
                                stderr=DEVNULL)
        except (OSError, ValueError) as e:
            raise CommandError(f"start docker events: {e}", argv) from e
        self.events_pid = child.pid
        try:
            _, out, _ = await child.open_streams()
            assert out is not None
            while True:
                try:
                    line = await out.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    raise CommandError("docker events: line too long", argv) from None
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    _log.debug("docker events: ignoring %r", line[:200])
                    continue
                if isinstance(event, dict):
                    yield str(event.get("Action") or event.get("status") or "")
        finally:
            self.events_pid = None
            if child.running:
                with contextlib.suppress(OSError):
                    child.signal_group(signal.SIGKILL)
