"""A real Docker engine for the container tests, started and always stopped by the tests.

:func:`docker_daemon` (a session fixture, imported by each container test module) starts
Debian's ``dockerd`` with everything under one temporary directory: data root, exec root
(with its managed containerd), pid file and the API socket ``unix://<dir>/docker.sock``.
Networking is off (``--bridge=none --iptables=false --ip6tables=false``): every container
runs with ``--network none``, and nothing touches the host's firewall. Storage is ``vfs``
(no overlay mounts to leak; the images are 2 MB). No registry is reachable, so the test
image ``agentconn-test:busybox`` is ``docker import``-ed from a rootfs made of Debian's
``busybox-static`` (``/bin/busybox`` + one symlink per applet).

Prerequisites: root, ``dockerd``, ``docker`` and a busybox binary; without them the tests
skip, and fail under ``CI=true``. The daemon is stopped (SIGTERM, then SIGKILL), its
containerd, the shims and the containers' processes with it, leftover mounts under the
directory unmounted and the directory removed at the end of the session, whatever happened;
an ``atexit`` hook does the same if pytest exits first, and a SIGTERM handler before the
signal ends the process.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

IMAGE = "agentconn-test:busybox"
#: Where the engine's directory goes: on disk (tmpfs has no immutable flag, which the delete
#: failure test sets), short enough for the unix socket paths inside.
DAEMON_PARENT = "/var/tmp" if os.path.isdir("/var/tmp") else tempfile.gettempdir()
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


def _busybox() -> str | None:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            return path
    return shutil.which("busybox")


def _is_static(path: str) -> bool:
    """True when the ELF file has no PT_INTERP program header (needs no dynamic loader:
    it runs alone in an empty image)."""
    import struct

    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
            return False
        endian = "<" if head[5] == 1 else ">"
        phoff, = struct.unpack_from(endian + "Q", head, 0x20)
        phentsize, phnum = struct.unpack_from(endian + "HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from(endian + "I", table, i * phentsize)[0] != 3
               for i in range(phnum))


def missing_prerequisites() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (dockerd)")
    for cmd, pkg in (("dockerd", "docker.io"), ("docker", "docker.io")):
        if shutil.which(cmd) is None and not os.path.exists(f"/usr/sbin/{cmd}"):
            missing.append(f"{cmd} (apt {pkg})")
    busybox = _busybox()
    if busybox is None or not _is_static(busybox):
        missing.append("a static busybox (apt busybox-static)")
    return missing


def require_docker() -> None:
    """Skip when the engine cannot run here; fail instead under CI=true."""
    missing = missing_prerequisites()
    if missing:
        msg = "container tests need " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " (CI=true: failing instead of skipping)", pytrace=False)
        pytest.skip(msg)


@dataclass
class DockerDaemon:
    """A running test engine: ``host`` is its ``DOCKER_HOST``; :meth:`env` the environment
    for processes (the agent, the docker CLI) that should use it."""

    root: Path
    process: subprocess.Popen[bytes] | None = None
    users: int = 0
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "dockerd.log"

    @property
    def host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["DOCKER_HOST"] = self.host
        env.pop("DOCKER_CONTEXT", None)
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
        return env

    def docker(self, *args: str, check: bool = True, timeout: float = 120.0,
               input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine (the test's own hands on Docker)."""
        r = subprocess.run(["docker", *args], env=self.env(), capture_output=True,
                           timeout=timeout, input=input, check=False)
        out = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                          r.stderr.decode(errors="replace"))
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: exit {r.returncode}: {out.stderr}")
        return out

    def start(self) -> None:
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        log = open(self.log, "wb")  # noqa: SIM115 - dockerd writes it until stopped
        self.process = subprocess.Popen(
            [dockerd, "--data-root", str(self.root / "data"),
             "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "docker.pid"),
             "-H", self.host, "--bridge=none", "--iptables=false", "--ip6tables=false",
             "--storage-driver=vfs", "--log-level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=self.env())
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.process.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            if self.docker("version", check=False, timeout=30).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within {START_TIMEOUT:g} s: "
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        self.docker("import", "-", IMAGE, input=busybox_rootfs_tar())

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False, timeout=60)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # Its containerd lives in dockerd's session; the shims (and the containers under
        # them) have sessions of their own but name our directory: nothing may survive.
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        _kill_leftovers(self.root)
        for mount in reversed(_mounts_under(self.root)):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_leftovers(root: Path) -> None:
    """SIGKILL every process whose command line names ``root`` (containerd, its shims) and
    all their descendants (the containers' processes)."""
    marker = str(root).encode()
    parents: dict[int, int] = {}
    named: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        if marker in cmdline and int(entry) != os.getpid():
            named.append(int(entry))
    doomed = set(named)
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in doomed} - doomed
        doomed |= more
        grew = bool(more)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    return [f.split()[1] for f in lines if len(f.split()) > 1 and f.split()[1].startswith(prefix)]


def busybox_rootfs_tar() -> bytes:
    """A tar of a minimal root file system: /bin/busybox, a symlink per applet, /tmp,
    /etc/passwd and /etc/group."""
    busybox = _busybox()
    assert busybox is not None
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "etc", "root", "workspaces"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for name in applets:
            if name == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{name}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                           ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


_daemon: DockerDaemon | None = None


def _stop_at_exit() -> None:
    if _daemon is not None:
        _daemon.stop()


atexit.register(_stop_at_exit)


def _stop_then_terminate(signum: int, frame: object) -> None:
    _stop_at_exit()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[DockerDaemon]:
    """The session's engine (started by the first module that asks, stopped after the last)."""
    global _daemon
    require_docker()
    if _daemon is None:
        # A SIGTERM (a CI timeout) stops the engine and its containers before it ends us.
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _stop_then_terminate)
        daemon = DockerDaemon(Path(tempfile.mkdtemp(prefix="acdk-", dir=DAEMON_PARENT)))
        try:
            daemon.start()
        except BaseException:
            daemon.stop()
            raise
        _daemon = daemon
    daemon = _daemon
    daemon.users += 1
    try:
        yield daemon
    finally:
        daemon.users -= 1
        if daemon.users == 0:
            daemon.stop()
            _daemon = None
