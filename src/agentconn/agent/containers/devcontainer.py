"""Dev container configurations: finding them, reading them, and bringing one up.

Theory of operation
-------------------
*Finding.* :func:`discover` walks the agent's directory (breadth first, at most
:data:`DISCOVERY_MAX_DEPTH` levels and :data:`DISCOVERY_MAX_ENTRIES` directory entries,
skipping ``.git``, ``node_modules`` and other dependency or cache trees) for
``.devcontainer/devcontainer.json`` and ``.devcontainer.json``; each names a workspace folder
(the directory holding it), as in the Go agent's project discovery.

*Reading.* :func:`load_config` parses the file as JSONC (:mod:`.jsonc`), substitutes the
spec's variables (``${localWorkspaceFolder}``, ``${localWorkspaceFolderBasename}``,
``${containerWorkspaceFolder}``, ``${containerWorkspaceFolderBasename}``,
``${localEnv:NAME[:default]}``, ``${devcontainerId}``) and checks it against the subset
:func:`up_with_docker` implements; anything else raises :class:`UpError` naming the
property (``features``, ``dockerComposeFile``, ``initializeCommand`` … need the real
``devcontainer`` CLI).

*Bringing up.* :func:`up` uses the ``devcontainer`` CLI (``@devcontainers/cli``) when it is
on the PATH, exactly as the Go agent runs it (``devcontainer up --log-format json
--workspace-folder F --config C --remove-existing-container``, last stdout line = the
outcome). Without it, :func:`up_with_docker` does the same for the common subset with the
``docker`` CLI: build the image (``build.dockerfile`` + ``context`` + ``args`` + ``target``)
or use ``image``; remove the containers already labelled with the workspace folder; ``docker
run -d`` with the labels ``devcontainer.local_folder`` / ``devcontainer.config_file`` (how
dev containers are recognised), the workspace mount (``workspaceMount`` or a bind of the
folder on ``/workspaces/<name>``), ``mounts``, ``containerEnv``, ``containerUser``,
``privileged``/``init``/``capAdd``/``securityOpt``, ``appPort``, ``runArgs`` and, unless
``overrideCommand`` is false, a shell that sleeps so the container stays up; then the
lifecycle commands ``onCreateCommand``, ``updateContentCommand``, ``postCreateCommand``,
``postStartCommand`` (string: ``sh -c``; array: argv; object: each entry) with ``docker
exec`` in the container's workspace folder as ``remoteUser`` with ``remoteEnv``. A lifecycle
failure still returns the container (:class:`UpError` with ``container_id``), as the CLI
does; every other failure leaves no container id.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from agentconn.agent.containers.docker import (
    CommandError,
    DockerCli,
    find_executable,
    run_command,
)
from agentconn.agent.containers.jsonc import JsoncError, loads
from agentconn.errors import AgentConnError

__all__ = [
    "CONFIG_FILE_LABEL",
    "LOCAL_FOLDER_LABEL",
    "TEST_RUN_LABEL",
    "DevcontainerConfig",
    "UpError",
    "discover",
    "load_config",
    "parse_cli_outcome",
    "up",
    "up_with_docker",
]

#: The labels the devcontainer CLI puts on a dev container (and how the agent finds them).
LOCAL_FOLDER_LABEL = "devcontainer.local_folder"
CONFIG_FILE_LABEL = "devcontainer.config_file"
METADATA_LABEL = "devcontainer.metadata"
#: Containers of the CLI's own test runs, ignored (Go ``DevcontainerIsTestRunLabel``).
TEST_RUN_LABEL = "devcontainer.is_test_run"

#: Where a devcontainer.json lives relative to its workspace folder.
CONFIG_NAMES = (os.path.join(".devcontainer", "devcontainer.json"), ".devcontainer.json")
DISCOVERY_MAX_DEPTH = 4
DISCOVERY_MAX_ENTRIES = 20_000
#: Directories never searched: VCS data, dependency trees, caches.
DISCOVERY_SKIP = frozenset({".git", ".hg", ".svn", "node_modules", ".venv", "venv",
                            "__pycache__", ".cache", ".tox", ".mypy_cache", "target",
                            "vendor"})
MAX_CONFIG_SIZE = 1 << 20

BUILD_TIMEOUT = 1800.0
RUN_TIMEOUT = 300.0
LIFECYCLE_TIMEOUT = 1800.0
CLI_UP_TIMEOUT = 3600.0
#: Output kept of a build or lifecycle command, for the error message.
LOG_TAIL = 64 << 10

#: Properties up_with_docker implements (the rest of the spec's properties need the CLI).
SUPPORTED = frozenset({
    "$schema", "name", "image", "build", "dockerFile", "context", "workspaceFolder",
    "workspaceMount", "mounts", "containerEnv", "remoteEnv", "runArgs", "overrideCommand",
    "containerUser", "remoteUser", "privileged", "init", "capAdd", "securityOpt", "appPort",
    "onCreateCommand", "updateContentCommand", "postCreateCommand", "postStartCommand",
    # Properties about tools attached to the container: nothing to do when creating it.
    "customizations", "forwardPorts", "portsAttributes", "otherPortsAttributes",
    "postAttachCommand", "shutdownAction", "waitFor", "userEnvProbe", "updateRemoteUserUID",
    "hostRequirements",
})
BUILD_SUPPORTED = frozenset({"dockerfile", "dockerFile", "context", "args", "target"})
LIFECYCLE = ("onCreateCommand", "updateContentCommand", "postCreateCommand",
             "postStartCommand")
#: The command that keeps a container up when overrideCommand is true (the CLI's own idea:
#: a shell that sleeps and exits on SIGTERM).
KEEP_ALIVE = ("echo Container started; trap 'exit 0' TERM; "
              "while sleep 1000 & wait $!; do :; done")


class UpError(AgentConnError):
    """Bringing a dev container up failed. ``container_id`` is set when the container was
    created but a lifecycle command failed (the container stays, as with the CLI)."""

    def __init__(self, message: str, container_id: str | None = None) -> None:
        self.container_id = container_id
        super().__init__(message)


# -- discovery -------------------------------------------------------------------------------


def discover(root: str, *, max_depth: int = DISCOVERY_MAX_DEPTH,
             max_entries: int = DISCOVERY_MAX_ENTRIES) -> dict[str, str]:
    """Workspace folder → config path of every dev container configuration under ``root``
    (``root`` itself included). Bounded: ``max_depth`` levels below ``root``, ``max_entries``
    directory entries read in all; symlinked directories are not followed."""
    found: dict[str, str] = {}
    queue: deque[tuple[str, int]] = deque([(os.path.abspath(root), 0)])
    budget = max_entries
    while queue and budget > 0:
        folder, depth = queue.popleft()
        for name in CONFIG_NAMES:
            path = os.path.join(folder, name)
            if folder not in found and os.path.isfile(path):
                found[folder] = path
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    budget -= 1
                    if budget <= 0:
                        break
                    if depth < max_depth and entry.name not in DISCOVERY_SKIP \
                            and entry.name != ".devcontainer" \
                            and entry.is_dir(follow_symlinks=False):
                        queue.append((entry.path, depth + 1))
        except OSError:
            continue
    return found


# -- configuration ---------------------------------------------------------------------------


_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def devcontainer_id(workspace_folder: str, config_path: str) -> str:
    """``${devcontainerId}``: stable for a folder and config (the spec leaves the method to
    the implementation; this is a hash of the two labels)."""
    return hashlib.sha256(f"{workspace_folder}\0{config_path}".encode()).hexdigest()[:32]


def _substitute(value: Any, variables: Mapping[str, str], environ: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name.startswith(("localEnv:", "env:")):
                _, _, rest = name.partition(":")
                var, _, default = rest.partition(":")
                return environ.get(var, default)
            return variables.get(name, m.group(0))  # unknown (e.g. containerEnv): kept
        return _VARIABLE.sub(one, value)
    if isinstance(value, list):
        return [_substitute(v, variables, environ) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, environ) for k, v in value.items()}
    return value


Command = str | list[str] | dict[str, str | list[str]]


@dataclass(frozen=True, slots=True)
class DevcontainerConfig:
    """The parts of a devcontainer.json that :func:`up_with_docker` acts on (variables
    substituted, paths absolute)."""

    workspace_folder: str  #: on the agent's machine (the ``devcontainer.local_folder``)
    config_path: str
    container_workspace_folder: str
    image: str = ""
    dockerfile: str = ""  #: absolute path when building
    context: str = ""
    build_args: dict[str, str] = field(default_factory=dict)
    build_target: str = ""
    workspace_mount: str | None = None  #: ``--mount`` text; "" means none
    mounts: list[str] = field(default_factory=list)
    container_env: dict[str, str] = field(default_factory=dict)
    remote_env: dict[str, str] = field(default_factory=dict)
    run_args: list[str] = field(default_factory=list)
    override_command: bool = True
    container_user: str = ""
    remote_user: str = ""
    privileged: bool = False
    init: bool = False
    cap_add: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)
    app_ports: list[str] = field(default_factory=list)
    lifecycle: list[tuple[str, Command]] = field(default_factory=list)


def _bad(path: str, what: str) -> UpError:
    return UpError(f"{path}: {what}")


def _str(cfg: Mapping[str, Any], key: str, path: str) -> str:
    value = cfg.get(key, "")
    if not isinstance(value, str):
        raise _bad(path, f'"{key}" must be a string')
    return value


def _str_list(cfg: Mapping[str, Any], key: str, path: str) -> list[str]:
    value = cfg.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(path, f'"{key}" must be an array of strings')
    return list(value)


def _str_map(cfg: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    value = cfg.get(key, {})
    if not isinstance(value, dict):
        raise _bad(path, f'"{key}" must be an object')
    out: dict[str, str] = {}
    for k, v in value.items():
        if v is None:
            continue  # remoteEnv: null unsets a variable
        if not isinstance(v, (str, int, float, bool)):
            raise _bad(path, f'"{key}.{k}" must be a string')
        out[str(k)] = v if isinstance(v, str) else orjson.dumps(v).decode()
    return out


def _mount_text(value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("target"), str):
        parts = [f"type={value.get('type', 'bind')}"]
        if value.get("source"):
            parts.append(f"source={value['source']}")
        parts.append(f"target={value['target']}")
        return ",".join(parts)
    raise _bad(path, '"mounts" entries must be strings or {"type","source","target"} objects')


def _command(value: Any, key: str, path: str) -> Command:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, dict):
        out: dict[str, str | list[str]] = {}
        for name, sub in value.items():
            one = _command(sub, f"{key}.{name}", path)
            if isinstance(one, dict):
                raise _bad(path, f'"{key}.{name}" must be a string or an array of strings')
            out[str(name)] = one
        return out
    raise _bad(path, f'"{key}" must be a string, an array of strings or an object')


def load_config(workspace_folder: str, config_path: str, environ: Mapping[str, str]
                ) -> DevcontainerConfig:
    """Read and check ``config_path`` for ``workspace_folder`` (without one: its
    ``.devcontainer/devcontainer.json``, else its ``.devcontainer.json``). Raises :class:`UpError`
    naming the file and the problem (unreadable, not JSONC, unsupported property, bad
    type)."""
    path = config_path or next(
        (p for p in (os.path.join(workspace_folder, n) for n in CONFIG_NAMES)
         if os.path.isfile(p)), os.path.join(workspace_folder, CONFIG_NAMES[0]))
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_SIZE + 1)
    except OSError as e:
        raise UpError(f"read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_SIZE:
        raise _bad(path, f"larger than {MAX_CONFIG_SIZE} bytes")
    try:
        cfg = loads(raw)
    except JsoncError as e:
        raise _bad(path, f"not valid JSONC: {e}") from None
    if not isinstance(cfg, dict):
        raise _bad(path, "must hold a JSON object")
    _check_supported(cfg, path)

    local = os.path.abspath(workspace_folder)
    base = os.path.basename(local.rstrip("/")) or "workspace"
    variables = {"localWorkspaceFolder": local, "localWorkspaceFolderBasename": base,
                 "devcontainerId": devcontainer_id(local, path)}
    container_folder = _substitute(_str(cfg, "workspaceFolder", path), variables, environ) \
        or f"/workspaces/{base}"
    variables["containerWorkspaceFolder"] = container_folder
    variables["containerWorkspaceFolderBasename"] = os.path.basename(
        container_folder.rstrip("/"))
    cfg = _substitute(cfg, variables, environ)

    config_dir = os.path.dirname(os.path.abspath(path))
    build = cfg.get("build") or {}
    if not isinstance(build, dict):
        raise _bad(path, '"build" must be an object')
    dockerfile = build.get("dockerfile") or build.get("dockerFile") or cfg.get("dockerFile", "")
    context = build.get("context") or cfg.get("context") or "."
    image = _str(cfg, "image", path)
    if not image and not dockerfile:
        raise _bad(path, 'needs "image" or "build.dockerfile" (or "dockerComposeFile", '
                         'which needs the devcontainer CLI)')
    if not isinstance(dockerfile, str) or not isinstance(context, str):
        raise _bad(path, '"build.dockerfile" and "build.context" must be strings')
    workspace_mount: str | None = None
    if "workspaceMount" in cfg:
        workspace_mount = _str(cfg, "workspaceMount", path)
    mounts = cfg.get("mounts", [])
    if not isinstance(mounts, list):
        raise _bad(path, '"mounts" must be an array')
    app_port = cfg.get("appPort", [])
    app_ports = [str(p) for p in (app_port if isinstance(app_port, list) else [app_port])]
    if not all(re.fullmatch(r"[0-9.:a-zA-Z/\[\]-]+", p) for p in app_ports):
        raise _bad(path, '"appPort" must be a port, a "host:container" string or an array')
    override = cfg.get("overrideCommand", True)
    lifecycle = [(key, _command(cfg[key], key, path)) for key in LIFECYCLE if key in cfg]
    return DevcontainerConfig(
        workspace_folder=local,
        config_path=os.path.abspath(path),
        container_workspace_folder=container_folder,
        image=image,
        dockerfile=os.path.join(config_dir, dockerfile) if dockerfile else "",
        context=os.path.normpath(os.path.join(config_dir, context)),
        build_args=_str_map(build, "args", path),
        build_target=_str(build, "target", path),
        workspace_mount=workspace_mount,
        mounts=[_mount_text(m, path) for m in mounts],
        container_env=_str_map(cfg, "containerEnv", path),
        remote_env=_str_map(cfg, "remoteEnv", path),
        run_args=_str_list(cfg, "runArgs", path),
        override_command=override is not False,
        container_user=_str(cfg, "containerUser", path),
        remote_user=_str(cfg, "remoteUser", path),
        privileged=cfg.get("privileged") is True,
        init=cfg.get("init") is True,
        cap_add=_str_list(cfg, "capAdd", path),
        security_opt=_str_list(cfg, "securityOpt", path),
        app_ports=app_ports,
        lifecycle=lifecycle,
    )


def _check_supported(cfg: Mapping[str, Any], path: str) -> None:
    unsupported = [k for k in cfg if k not in SUPPORTED]
    if "features" in cfg and not cfg["features"]:
        unsupported.remove("features")  # "features": {} asks for nothing
    build = cfg.get("build")
    if isinstance(build, dict):
        unsupported += [f"build.{k}" for k in build if k not in BUILD_SUPPORTED]
    if unsupported:
        names = ", ".join(f'"{k}"' for k in unsupported)
        raise UpError(f"{path}: unsupported devcontainer.json "
                      f"propert{'ies' if len(unsupported) > 1 else 'y'} {names}: without the "
                      f"devcontainer CLI (npm install -g @devcontainers/cli) the agent "
                      f"supports image, build (dockerfile, context, args, target), "
                      f"workspaceFolder, workspaceMount, mounts, containerEnv, remoteEnv, "
                      f"runArgs, overrideCommand, containerUser, remoteUser, privileged, init, "
                      f"capAdd, securityOpt, appPort and the lifecycle commands "
                      f"onCreateCommand to postStartCommand")


# -- up --------------------------------------------------------------------------------------


def image_tag(config: DevcontainerConfig) -> str:
    """The tag of a built image: ``agentconn-devcontainer-<folder>-<hash>``."""
    base = re.sub(r"[^a-z0-9]+", "-", os.path.basename(config.workspace_folder).lower())
    digest = hashlib.sha256(config.config_path.encode()).hexdigest()[:12]
    return f"agentconn-devcontainer-{base.strip('-') or 'workspace'}-{digest}"


def _tail(result_out: bytes, err: str) -> str:
    text = (err or result_out.decode("utf-8", "replace")).strip()
    return text[-2000:]


async def up_with_docker(docker: DockerCli, config: DevcontainerConfig, *,
                         remove_existing: bool = True) -> str:
    """Create and start the dev container of ``config`` with the docker CLI; its id.
    Raises :class:`UpError` (with ``container_id`` when only a lifecycle command failed)."""
    image = config.image
    if config.dockerfile:
        image = image_tag(config)
        args = ["build", "-f", config.dockerfile, "-t", image]
        for name, value in sorted(config.build_args.items()):
            args += ["--build-arg", f"{name}={value}"]
        if config.build_target:
            args += ["--target", config.build_target]
        try:
            built = await docker.run(*args, config.context, timeout=BUILD_TIMEOUT,
                                     max_stdout=LOG_TAIL, keep_tail=True)
        except CommandError as e:
            raise UpError(f"build image: {e}") from None
        if built.returncode != 0:
            raise UpError(f"build image from {config.dockerfile}: exit status "
                          f"{built.returncode}: {_tail(built.stdout, built.stderr_text)}")
    if remove_existing:
        try:
            found = (await docker.run(
                "ps", "--all", "--quiet", "--no-trunc", "--filter",
                f"label={LOCAL_FOLDER_LABEL}={config.workspace_folder}",
                timeout=60.0)).check("list existing containers")
            for old in found.stdout.decode().split():
                await docker.remove(old, force=True)
        except CommandError as e:
            raise UpError(f"remove existing container: {e}") from None

    run = ["run", "-d",
           "--label", f"{LOCAL_FOLDER_LABEL}={config.workspace_folder}",
           "--label", f"{CONFIG_FILE_LABEL}={config.config_path}"]
    metadata: dict[str, Any] = {}
    if config.remote_user:
        metadata["remoteUser"] = config.remote_user
    if config.remote_env:
        metadata["remoteEnv"] = config.remote_env
    if metadata:
        run += ["--label", f"{METADATA_LABEL}={orjson.dumps([metadata]).decode()}"]
    mount = config.workspace_mount
    if mount is None:
        mount = (f"type=bind,source={config.workspace_folder},"
                 f"target={config.container_workspace_folder}")
    if mount:
        run += ["--mount", mount]
    for m in config.mounts:
        run += ["--mount", m]
    for name, value in sorted(config.container_env.items()):
        run += ["-e", f"{name}={value}"]
    if config.container_user:
        run += ["-u", config.container_user]
    if config.privileged:
        run.append("--privileged")
    if config.init:
        run.append("--init")
    for cap in config.cap_add:
        run += ["--cap-add", cap]
    for opt in config.security_opt:
        run += ["--security-opt", opt]
    for port in config.app_ports:
        run += ["-p", port if ":" in port else f"{port}:{port}"]
    run += config.run_args
    if config.override_command:
        run += ["--entrypoint", "/bin/sh", image, "-c", KEEP_ALIVE]
    else:
        run.append(image)
    try:
        started = await docker.run(*run, timeout=RUN_TIMEOUT)
    except CommandError as e:
        raise UpError(f"start container: {e}") from None
    container_id = started.stdout.decode("utf-8", "replace").strip().splitlines()[-1:] \
        if started.returncode == 0 else []
    if not container_id:
        raise UpError(f"start container: exit status {started.returncode}: "
                      f"{_tail(started.stdout, started.stderr_text)}")
    cid = container_id[0]
    for key, command in config.lifecycle:
        await _lifecycle(docker, config, cid, key, command)
    return cid


async def _lifecycle(docker: DockerCli, config: DevcontainerConfig, cid: str, key: str,
                     command: Command) -> None:
    steps: list[tuple[str, list[str]]]
    if isinstance(command, dict):
        steps = [(f"{key}.{name}", ["/bin/sh", "-c", c] if isinstance(c, str) else c)
                 for name, c in command.items()]
    else:
        steps = [(key, ["/bin/sh", "-c", command] if isinstance(command, str) else command)]
    base = ["exec", "-w", config.container_workspace_folder]
    if config.remote_user:
        base += ["-u", config.remote_user]
    for name, value in sorted(config.remote_env.items()):
        base += ["-e", f"{name}={value}"]
    for name, argv in steps:
        try:
            done = await docker.run(*base, cid, *argv, timeout=LIFECYCLE_TIMEOUT,
                                    max_stdout=LOG_TAIL, keep_tail=True)
        except CommandError as e:
            raise UpError(f"{name}: {e}", container_id=cid) from None
        if done.returncode != 0:
            raise UpError(f"{name} failed with exit code {done.returncode}: "
                          f"{_tail(done.stdout, done.stderr_text)}", container_id=cid)


def parse_cli_outcome(stdout: bytes) -> tuple[str | None, str]:
    """(container id, error text) from ``devcontainer up --log-format json`` output: the last
    JSON line with an ``outcome``. ``("", "")``-style results: an id and no error on
    success; the error (``message: description``) and the id if one was created."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith(b"{"):
            continue
        try:
            result = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(result, dict) or "outcome" not in result:
            continue
        cid = result.get("containerId") or None
        if result["outcome"] == "success":
            return (str(cid) if cid else None), ""
        message = str(result.get("message") or "devcontainer up failed")
        if result.get("description"):
            message += f": {result['description']}"
        return (str(cid) if cid else None), message
    return None, "devcontainer up: no outcome in its output"


async def up(docker: DockerCli, workspace_folder: str, config_path: str, *,
             environ: Mapping[str, str], remove_existing: bool = True) -> str:
    """Bring the dev container of ``workspace_folder`` up: with the ``devcontainer`` CLI
    when it is on the PATH of ``environ``, else :func:`up_with_docker`. Returns the container
    id; raises :class:`UpError`."""
    if find_executable("devcontainer", environ) is not None:
        argv: list[str] = ["devcontainer", "up", "--log-format", "json",
                           "--workspace-folder", workspace_folder]
        if config_path:
            argv += ["--config", config_path]
        if remove_existing:
            argv.append("--remove-existing-container")
        try:
            result = await run_command(argv, environ=environ, timeout=CLI_UP_TIMEOUT,
                                       max_stdout=LOG_TAIL, keep_tail=True,
                                       cwd=workspace_folder)
        except CommandError as e:
            raise UpError(str(e)) from None
        cid, error = parse_cli_outcome(result.stdout)
        if error or cid is None:
            raise UpError(error or "devcontainer up: no container id", container_id=cid)
        return cid
    config = load_config(workspace_folder, config_path, environ)
    return await up_with_docker(docker, config, remove_existing=remove_existing)
