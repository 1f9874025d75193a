"""Network-namespace harness for interop tests against real WireGuard software.

Plain Python, stdlib only (plus pytest for `require_interop`). Everything here runs real
programs (`ip`, `wireguard-go`, `wg`) in network namespaces this module creates and always
removes; the only addresses used are loopback and addresses inside those namespaces.

Pieces:

- `Namespace`: `ip netns add` with a unique name, `lo` up, `run`/`popen` inside it via
  `ip netns exec`, `enter()` to move the *calling thread* into it (sockets created meanwhile
  stay in the namespace for their whole life), and a cleanup that always kills every process
  in it and deletes it.
- `WireGuardGo`: a `wireguard-go` interface inside a `Namespace`, configured with `wg set` and
  `ip -n`; `show()` parses `wg show`.
- `UdpRelay`: a thread forwarding UDP between two endpoints (possibly in two different
  namespaces) with seeded loss, duplication, reordering and delay.
- `veth_pair()`: a veth link created directly inside two namespaces (never in the root one).
- `wg_pair()`: the common topology "wireguard-go in NS at 10.77.0.1 / fd77::1, our peer at
  10.77.0.2 / fd77::2 in the same NS over its loopback", with a wg-quick config for our side.

Gotchas handled here (see also docs in spec/wireguard.md §15):

- wireguard-go's control socket is `/var/run/wireguard/<iface>.sock`, shared by all
  namespaces, so interface names are unique per process *and* checked against existing
  sockets. We run it in the foreground (`-f`) so the PID is ours and its log is captured; the
  namespace cleanup also kills anything left in the namespace (`ip netns pids`).
- `ip netns pids` lists the *test process itself* while its main thread is inside the
  namespace (`Namespace.enter()`), so cleanup never signals our own PID.
- Sockets keep the namespace they were created in, and a namespace stays alive (nameless)
  after `ip netns del` as long as such a socket is open: close relay/test sockets.
- IPv6 addresses are added with `nodad` so they are usable immediately (no timed waits).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import dataclasses
import errno
import heapq
import ipaddress
import itertools
import os
import random
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "IFACE_PREFIX",
    "NS_PREFIX",
    "Faults",
    "InteropError",
    "Namespace",
    "UdpRelay",
    "WgPair",
    "WireGuardGo",
    "genkey",
    "genpsk",
    "leaked_resources",
    "prerequisites",
    "pubkey",
    "reap_stale_namespaces",
    "require_interop",
    "veth_pair",
    "wg_pair",
]

WG_RUN_DIR = Path("/var/run/wireguard")
NETNS_RUN_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000

_PID = os.getpid()
# Namespaces are named "agct<pid>-<counter><rand>"; the pid lets us find leftovers of a
# crashed run (pid gone) and tell our namespaces apart from a concurrent run's.
NS_PREFIX = "agct"
# Interface names: "wgt<pid%10000><n>" (≤ 15 chars as long as n < 10**8).
IFACE_PREFIX = f"wgt{_PID % 10000}"
_counter = itertools.count(1)
_live_namespaces: set[Namespace] = set()
_live_lock = threading.Lock()

DEFAULT_TIMEOUT = 30.0


class InteropError(RuntimeError):
    """A harness command failed; the message includes the command and its output."""


# ---------------------------------------------------------------------------------------------
# prerequisites


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _ip() -> str:
    return _which("ip") or "ip"


_probe_result: str | None | bool = False  # False = not probed yet


def _probe_netns() -> str | None:
    """Try `ip netns add`/`del` once; return an error string or None."""
    global _probe_result
    if not isinstance(_probe_result, bool):
        return _probe_result
    name = f"{NS_PREFIX}{_PID}-probe{secrets.token_hex(2)}"
    try:
        r = subprocess.run(
            [_ip(), "netns", "add", name],
            capture_output=True,
            text=True,
            timeout=DEFAULT_TIMEOUT,
            check=False,
        )
        if r.returncode != 0:
            _probe_result = f"`ip netns add` is not permitted: {r.stderr.strip()}"
        else:
            subprocess.run(
                [_ip(), "netns", "del", name],
                capture_output=True,
                timeout=DEFAULT_TIMEOUT,
                check=False,
            )
            _probe_result = None
    except (OSError, subprocess.SubprocessError) as e:
        _probe_result = f"`ip netns add` failed: {e}"
    assert not isinstance(_probe_result, bool)
    return _probe_result


def prerequisites(tools: Sequence[str] = ()) -> list[str]:
    """What is missing to run interop tests (empty list = all good).

    `tools`: extra programs a test needs (e.g. "ping", "iperf3").
    """
    missing: list[str] = []
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        missing.append("not running as root (network namespaces need root)")
    for prog, pkg in (
        ("ip", "iproute2"),
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
        *((t, t) for t in tools),
    ):
        if _which(prog) is None:
            missing.append(f"`{prog}` not found (apt-get install {pkg})")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        os.close(fd)
    except OSError as e:
        missing.append(f"/dev/net/tun is not usable: {e}")
    if not missing:  # the probe needs root and ip
        err = _probe_netns()
        if err:
            missing.append(err)
    return missing


def require_interop(*tools: str) -> None:
    """Skip (or, when CI == "true", fail) the calling test if interop cannot run here."""
    import pytest

    missing = prerequisites(tools)
    if not missing:
        return
    reason = "interop prerequisites missing: " + "; ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------
# small helpers


def _run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
    input: str | bytes | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    try:
        r = subprocess.run(
            list(cmd), capture_output=True, text=text, input=input, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise InteropError(
            f"timed out after {timeout}s: {' '.join(cmd)}\n"
            f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}"
        ) from None
    if check and r.returncode != 0:
        raise InteropError(
            f"command failed (exit {r.returncode}): {' '.join(cmd)}\n"
            f"stdout: {r.stdout!r}\nstderr: {r.stderr!r}"
        )
    return r


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _kill_pids(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Never signals ourselves."""
    pids = [p for p in pids if p != os.getpid()]
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_pid_alive(p) and not _is_zombie(p) for p in pids):
        time.sleep(0.02)
    for p in pids:
        if _pid_alive(p) and not _is_zombie(p):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


_libc: Any = None


def _setns(fd: int, nstype: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, nstype)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def netns_inode(pid_or_self: str = "thread-self") -> int:
    """Inode of a network namespace (`/proc/<x>/ns/net`); default: the calling thread's."""
    return os.stat(f"/proc/{pid_or_self}/ns/net").st_ino


# ---------------------------------------------------------------------------------------------
# Namespace


class Namespace:
    """A network namespace created for a test (context manager; `close()` is idempotent)."""

    def __init__(self, tag: str = "") -> None:
        n = next(_counter)
        self.name = f"{NS_PREFIX}{_PID}-{n}{tag}{secrets.token_hex(2)}"
        self._procs: list[subprocess.Popen[Any]] = []
        self._cleanups: list[Callable[[], None]] = []
        self._closed = False
        self._created = False
        _run([_ip(), "netns", "add", self.name])
        self._created = True
        with _live_lock:
            _live_namespaces.add(self)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return NETNS_RUN_DIR / self.name

    # -- commands ---------------------------------------------------------------------------

    def exec_prefix(self) -> list[str]:
        return [_ip(), "netns", "exec", self.name]

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = DEFAULT_TIMEOUT,
        input: str | bytes | None = None,
        text: bool = True,
    ) -> subprocess.CompletedProcess[Any]:
        """Run `cmd` inside the namespace; raise InteropError on non-zero exit if `check`."""
        return _run(
            [*self.exec_prefix(), *cmd], check=check, timeout=timeout, input=input, text=text
        )

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `cmd` inside the namespace; it is killed when the namespace is closed.

        `ip netns exec` execs the command, so `proc.pid` is the command's own PID.
        """
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen([*self.exec_prefix(), *cmd], **kwargs)
        self._procs.append(proc)
        return proc

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[Any]:
        """`ip -n <ns> ...`"""
        return _run([_ip(), "-n", self.name, *args], check=check)

    def pids(self) -> list[int]:
        r = _run([_ip(), "netns", "pids", self.name], check=False)
        return [int(x) for x in r.stdout.split() if x.isdigit()]

    # -- configuration ----------------------------------------------------------------------

    def add_address(self, dev: str, cidr: str) -> None:
        """Add an address; IPv6 ones with `nodad` so they are usable immediately."""
        iface = ipaddress.ip_interface(cidr)
        extra = ["nodad"] if iface.version == 6 else []
        self.ip("addr", "add", cidr, "dev", dev, *extra)

    def link_up(self, dev: str, mtu: int | None = None) -> None:
        args = ["link", "set", "dev", dev]
        if mtu is not None:
            args += ["mtu", str(mtu)]
        self.ip(*args, "up")

    def add_route(self, cidr: str, dev: str | None = None, via: str | None = None) -> None:
        args = ["route", "add", cidr]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        self.ip(*(["-6"] if ipaddress.ip_network(cidr, strict=False).version == 6 else []), *args)

    def on_close(self, fn: Callable[[], None]) -> None:
        """Register a cleanup to run (LIFO) before the namespace's processes are killed."""
        self._cleanups.append(fn)

    # -- entering ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def enter(self) -> Iterator[Namespace]:
        """Move the calling thread into this namespace for the `with` block, then back.

        setns(2) affects only the calling thread. Sockets created inside the block belong to
        this namespace for their whole life (also after the block), so e.g. an asyncio
        endpoint created here keeps working after leaving. The original namespace is restored
        even if the body raises.
        """
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target, CLONE_NEWNET)
            finally:
                os.close(target)
            try:
                yield self
            finally:
                _setns(saved, CLONE_NEWNET)
        finally:
            os.close(saved)

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM, proto: int = 0
    ) -> socket.socket:
        """A socket that lives in this namespace (created from inside via `enter()`)."""
        with self.enter():
            return socket.socket(family, type, proto)

    # -- cleanup ----------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - keep cleaning up, report at the end
                errors.append(f"cleanup {fn!r}: {e}")
        self._cleanups.clear()
        if self._created:
            # Everything still in the namespace, plus what we started (even if it already
            # left the namespace somehow).
            for _ in range(3):
                pids = set(self.pids()) | {p.pid for p in self._procs if p.poll() is None}
                pids.discard(os.getpid())
                if not pids:
                    break
                _kill_pids(sorted(pids))
        for p in self._procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        if self._created:
            last = None
            for _ in range(20):
                r = _run([_ip(), "netns", "del", self.name], check=False)
                if r.returncode == 0 or not self.path.exists():
                    last = None
                    break
                last = r.stderr.strip()
                time.sleep(0.05)
            if last:
                errors.append(f"ip netns del {self.name}: {last}")
        with _live_lock:
            _live_namespaces.discard(self)
        if errors:
            raise InteropError("; ".join(errors))


@atexit.register
def _close_all_namespaces() -> None:
    with _live_lock:
        live = list(_live_namespaces)
    for ns in live:
        with contextlib.suppress(Exception):
            ns.close()


def _our_namespaces() -> list[str]:
    r = _run([_ip(), "netns", "list"], check=False)
    names = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"{NS_PREFIX}{_PID}-")]


def _our_wireguard_go_pids() -> list[int]:
    """wireguard-go processes (any namespace) running one of this process's interfaces."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        args = _cmdline(int(d.name))
        if (
            args
            and os.path.basename(args[0]) == "wireguard-go"
            and any(a.startswith(IFACE_PREFIX) for a in args[1:])
        ):
            found.append(int(d.name))
    return found


def leaked_resources() -> list[str]:
    """Namespaces / wireguard-go processes / control sockets of this process still around."""
    leaks = [f"namespace {n}" for n in _our_namespaces()]
    leaks += [f"wireguard-go pid {p} ({' '.join(_cmdline(p))})" for p in _our_wireguard_go_pids()]
    if WG_RUN_DIR.is_dir():
        leaks += [f"socket {s}" for s in WG_RUN_DIR.glob(f"{IFACE_PREFIX}*.sock")]
    return leaks


def reap_stale_namespaces() -> list[str]:
    """Delete namespaces named by this harness whose creating process is gone (a crashed run)."""
    r = _run([_ip(), "netns", "list"], check=False)
    reaped = []
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(NS_PREFIX):
            continue
        pid_s = name[len(NS_PREFIX) :].partition("-")[0]
        if not pid_s.isdigit() or int(pid_s) == _PID or _pid_alive(int(pid_s)):
            continue
        pids = _run([_ip(), "netns", "pids", name], check=False).stdout.split()
        _kill_pids([int(p) for p in pids if p.isdigit()])
        _run([_ip(), "netns", "del", name], check=False)
        reaped.append(name)
    return reaped


def veth_pair(
    ns_a: Namespace, ns_b: Namespace, cidr_a: str | None = None, cidr_b: str | None = None
) -> tuple[str, str]:
    """A veth link whose ends are created directly inside `ns_a` and `ns_b` (never in the
    root namespace); optionally addressed and up. Deleted with either namespace."""
    n = next(_counter)
    a, b = f"vt{_PID % 10000}{n}a", f"vt{_PID % 10000}{n}b"
    _run(
        [
            _ip(),
            "link",
            "add",
            a,
            "netns",
            ns_a.name,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            ns_b.name,
        ]
    )
    for ns, dev, cidr in ((ns_a, a, cidr_a), (ns_b, b, cidr_b)):
        if cidr:
            ns.add_address(dev, cidr)
        ns.link_up(dev)
    return a, b


# ---------------------------------------------------------------------------------------------
# keys


def genkey() -> str:
    return str(_run(["wg", "genkey"]).stdout).strip()


def pubkey(private_key: str) -> str:
    return str(_run(["wg", "pubkey"], input=private_key + "\n").stdout).strip()


def genpsk() -> str:
    return str(_run(["wg", "genpsk"]).stdout).strip()


def key_bytes(b64: str) -> bytes:
    raw = base64.b64decode(b64)
    if len(raw) != 32:
        raise ValueError("WireGuard keys are 32 bytes")
    return raw


# ---------------------------------------------------------------------------------------------
# wireguard-go


def _unique_iface() -> str:
    while True:
        name = f"{IFACE_PREFIX}{next(_counter)}"
        if len(name) > 15:
            raise InteropError(f"interface name too long: {name}")
        if not (WG_RUN_DIR / f"{name}.sock").exists():
            return name


class WireGuardGo:
    """A wireguard-go interface inside `ns`.

    `start()` launches it (foreground, log captured), waits for its control socket, sets the
    private key and listen port (0 = let it choose; read back into `listen_port`).
    `stop()` is idempotent and is also registered with the namespace's cleanup.
    """

    def __init__(
        self,
        ns: Namespace,
        *,
        private_key: str | None = None,
        listen_port: int = 0,
        iface: str | None = None,
        log_level: str = "verbose",
    ) -> None:
        self.ns = ns
        self.iface = iface or _unique_iface()
        self.private_key = private_key or genkey()
        self.public_key = pubkey(self.private_key)
        self.listen_port = listen_port
        self.log_level = log_level
        self._dir = Path(tempfile.mkdtemp(prefix=f"{self.iface}-"))
        self.log_path = self._dir / "wireguard-go.log"
        self._proc: subprocess.Popen[Any] | None = None
        self._log: Any = None
        self._stopped = False
        ns.on_close(self.stop)

    def __repr__(self) -> str:
        return f"WireGuardGo({self.iface!r} in {self.ns.name!r}, port={self.listen_port})"

    def __enter__(self) -> WireGuardGo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def socket_path(self) -> Path:
        return WG_RUN_DIR / f"{self.iface}.sock"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 10.0) -> WireGuardGo:
        if self._proc is not None:
            raise InteropError("already started")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._proc = self.ns.popen(
            [
                "env",
                "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
                f"LOG_LEVEL={self.log_level}",
                "wireguard-go",
                "-f",
                self.iface,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if self._proc.poll() is not None:
                raise InteropError(
                    f"wireguard-go exited with {self._proc.returncode}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise InteropError(f"wireguard-go did not create {self.socket_path}:\n{self.log()}")
            time.sleep(0.01)
        self._write_key("private.key", self.private_key)
        self.wg(
            "set",
            self.iface,
            "private-key",
            str(self._dir / "private.key"),
            "listen-port",
            str(self.listen_port),
        )
        self.listen_port = int(self.wg("show", self.iface, "listen-port").strip())
        return self

    def _write_key(self, name: str, key: str) -> Path:
        path = self._dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return path

    def wg(self, *args: str) -> str:
        """Run `wg ...` inside the namespace and return stdout."""
        return str(self.ns.run(["wg", *args]).stdout)

    # -- configuration ----------------------------------------------------------------------

    def set_peer(
        self,
        public_key: str,
        *,
        allowed_ips: Sequence[str] = (),
        endpoint: str | None = None,
        preshared_key: str | None = None,
        persistent_keepalive: int | None = None,
    ) -> None:
        args = ["set", self.iface, "peer", public_key]
        if preshared_key is not None:
            path = self._write_key(f"psk-{secrets.token_hex(4)}.key", preshared_key)
            args += ["preshared-key", str(path)]
        args += ["allowed-ips", ",".join(allowed_ips)]
        if endpoint is not None:
            args += ["endpoint", endpoint]
        if persistent_keepalive is not None:
            args += ["persistent-keepalive", str(persistent_keepalive)]
        self.wg(*args)

    def remove_peer(self, public_key: str) -> None:
        self.wg("set", self.iface, "peer", public_key, "remove")

    def add_address(self, cidr: str) -> None:
        self.ns.add_address(self.iface, cidr)

    def up(self, mtu: int = 1420, timeout: float = 10.0) -> None:
        self.ns.link_up(self.iface, mtu)
        # wireguard-go binds its UDP port when it sees the TUN device go up (an asynchronous
        # event); until then `listen-port` may read 0. Wait for the real port, so callers never
        # send to port 0 (EINVAL) on a busy machine.
        deadline = time.monotonic() + timeout
        while True:
            port = int(self.wg("show", self.iface, "listen-port").strip())
            if port:
                self.listen_port = port
                break
            if time.monotonic() > deadline:
                raise InteropError(f"wireguard-go did not bind a UDP port:\n{self.log()}")
            time.sleep(0.01)

    def add_route(self, cidr: str) -> None:
        self.ns.add_route(cidr, dev=self.iface)

    # -- inspection -------------------------------------------------------------------------

    def show(self, field: str = "dump") -> Any:
        """Parsed `wg show <iface> <field>`.

        latest-handshakes → {peer: unix seconds (0 = never)}; transfer → {peer: (rx, tx)};
        endpoints → {peer: "ip:port" | None}; allowed-ips → {peer: [cidr, ...]};
        persistent-keepalive → {peer: int | None}; listen-port → int; public-key/private-key →
        str; dump → {"interface": {...}, "peers": {peer: {...}}}.
        """
        out = self.wg("show", self.iface, field)
        rows = [line.split("\t") for line in out.splitlines() if line]
        if field == "latest-handshakes":
            return {r[0]: int(r[1]) for r in rows}
        if field == "transfer":
            return {r[0]: (int(r[1]), int(r[2])) for r in rows}
        if field == "endpoints":
            return {r[0]: (None if r[1] == "(none)" else r[1]) for r in rows}
        if field == "allowed-ips":
            return {r[0]: [] if r[1] == "(none)" else r[1].split() for r in rows}
        if field == "persistent-keepalive":
            return {r[0]: None if r[1] == "off" else int(r[1]) for r in rows}
        if field == "listen-port":
            return int(out.strip())
        if field in ("public-key", "private-key", "fwmark"):
            return out.strip()
        if field == "dump":

            def opt(v: str) -> str | None:
                return None if v in ("(none)", "off") else v

            iface = rows[0]
            result: dict[str, Any] = {
                "interface": {
                    "private_key": opt(iface[0]),
                    "public_key": opt(iface[1]),
                    "listen_port": int(iface[2]),
                    "fwmark": opt(iface[3]),
                },
                "peers": {},
            }
            for r in rows[1:]:
                result["peers"][r[0]] = {
                    "preshared_key": opt(r[1]),
                    "endpoint": opt(r[2]),
                    "allowed_ips": [] if r[3] == "(none)" else r[3].split(","),
                    "latest_handshake": int(r[4]),
                    "rx": int(r[5]),
                    "tx": int(r[6]),
                    "persistent_keepalive": None if r[7] == "off" else int(r[7]),
                }
            return result
        return out

    # -- lifecycle --------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """PIDs of this interface's wireguard-go (found via `ip netns pids`)."""
        found = set()
        for pid in self.ns.pids() if self.ns.path.exists() else []:
            args = _cmdline(pid)
            if args and os.path.basename(args[0]) == "wireguard-go" and self.iface in args[1:]:
                found.add(pid)
        if self._proc is not None and self._proc.poll() is None:
            found.add(self._proc.pid)
        return sorted(found)

    @property
    def running(self) -> bool:
        return bool(self.pids())

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            _kill_pids(self.pids())
            if self._proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=5)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            if self._log is not None:
                self._log.close()
            shutil.rmtree(self._dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the common topology: wireguard-go and our peer in one namespace, over its loopback


@dataclasses.dataclass
class WgPair:
    """wireguard-go (`wg`) at 10.77.0.1 / fd77::1 and "our" peer at 10.77.0.2 / fd77::2.

    Our code runs inside the same namespace (`ns.enter()` or `ip netns exec`) and reaches
    wireguard-go at `endpoint` (127.0.0.1:<wg listen port>) over the namespace's loopback.
    """

    ns: Namespace
    wg: WireGuardGo
    our_private_key: str
    our_public_key: str
    our_port: int | None
    preshared_key: str | None
    their_addresses: tuple[str, str] = ("10.77.0.1", "fd77::1")
    our_addresses: tuple[str, str] = ("10.77.0.2", "fd77::2")
    # Link MTU of both sides; None: wireguard-go's link at 1420 and no MTU line in our config
    # (so our side uses its default, also 1420).
    mtu: int | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.wg.listen_port}"

    @property
    def their_public_key(self) -> str:
        return self.wg.public_key

    def wg_quick_config(
        self, persistent_keepalive: int | None = None, mtu: int | None = None
    ) -> str:
        """A wg-quick style config for our side (`mtu` defaults to the pair's)."""
        lines = [
            "[Interface]",
            f"PrivateKey = {self.our_private_key}",
            f"Address = {self.our_addresses[0]}/32, {self.our_addresses[1]}/128",
        ]
        mtu = mtu if mtu is not None else self.mtu
        if mtu is not None:
            lines.append(f"MTU = {mtu}")
        if self.our_port is not None:
            lines.append(f"ListenPort = {self.our_port}")
        lines += ["", "[Peer]", f"PublicKey = {self.their_public_key}"]
        if self.preshared_key is not None:
            lines.append(f"PresharedKey = {self.preshared_key}")
        lines += [
            f"Endpoint = {self.endpoint}",
            f"AllowedIPs = {self.their_addresses[0]}/32, {self.their_addresses[1]}/128",
        ]
        if persistent_keepalive is not None:
            lines.append(f"PersistentKeepalive = {persistent_keepalive}")
        return "\n".join(lines) + "\n"


def wg_pair(
    ns: Namespace,
    *,
    our_port: int | None = None,
    preshared_key: bool | str = False,
    our_private_key: str | None = None,
    their_private_key: str | None = None,
    persistent_keepalive: int | None = None,
    mtu: int | None = None,
) -> WgPair:
    """Start wireguard-go in `ns` configured for one peer: us.

    `our_port`: if given, wireguard-go gets `endpoint 127.0.0.1:<our_port>` for us (so it can
    initiate); otherwise it learns our endpoint from our first authenticated packet.
    `preshared_key`: True to generate one, or a base64 key.
    `mtu`: link MTU of wireguard-go's interface and of our config (default: 1420 and no MTU
    line in our config).
    """
    wg = WireGuardGo(ns, private_key=their_private_key).start()
    our_priv = our_private_key or genkey()
    psk = genpsk() if preshared_key is True else (preshared_key or None)
    pair = WgPair(
        ns=ns,
        wg=wg,
        our_private_key=our_priv,
        our_public_key=pubkey(our_priv),
        our_port=our_port,
        preshared_key=psk,
        mtu=mtu,
    )
    wg.add_address(f"{pair.their_addresses[0]}/24")
    wg.add_address(f"{pair.their_addresses[1]}/64")
    wg.up(mtu if mtu is not None else 1420)
    wg.set_peer(
        pair.our_public_key,
        allowed_ips=[f"{pair.our_addresses[0]}/32", f"{pair.our_addresses[1]}/128"],
        endpoint=f"127.0.0.1:{our_port}" if our_port else None,
        preshared_key=psk,
        persistent_keepalive=persistent_keepalive,
    )
    return pair


# ---------------------------------------------------------------------------------------------
# UDP relay with fault injection


@dataclasses.dataclass
class Faults:
    """Per-direction faults. Probabilities in [0, 1]; times in seconds.

    loss: drop the datagram. duplicate: send it twice. reorder: hold it back and send it
    after the next datagram (or after `reorder_hold` if none comes). delay + uniform jitter:
    send it later (this also reorders when jitter > gap between datagrams).
    drop_if: optional predicate on the payload; True drops it (e.g. lambda d: d[0] == 1 to
    drop WireGuard handshake initiations).
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    reorder_hold: float = 0.05
    drop_if: Callable[[bytes], bool] | None = None


@dataclasses.dataclass
class RelayStats:
    received: int = 0
    sent: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0


def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


class UdpRelay:
    """Forward UDP between peer A and peer B with seeded fault injection.

    Two sockets: `a_addr` (bound in `a_ns`, the address peer A is told peer B lives at) and
    `b_addr` (bound in `b_ns`, the address B is told A lives at). A datagram arriving on the A
    socket goes out of the B socket to `b_target`, and vice versa to `a_target`. A target left
    as None is learned from the first datagram received on that side.

    The namespaces may differ: the relay then bridges two namespaces without any veth. Bind
    addresses must be loopback or addresses inside the given namespace, never the root
    namespace's non-loopback addresses.

    Runs in a daemon thread (start()/close(), or use as a context manager). Deterministic for
    a given `seed` and arrival order.
    """

    def __init__(
        self,
        *,
        a_target: tuple[str, int] | None = None,
        b_target: tuple[str, int] | None = None,
        a_ns: Namespace | None = None,
        b_ns: Namespace | None = None,
        a_bind: tuple[str, int] = ("127.0.0.1", 0),
        b_bind: tuple[str, int] = ("127.0.0.1", 0),
        a_to_b: Faults | None = None,
        b_to_a: Faults | None = None,
        seed: int = 0,
    ) -> None:
        for (
            ns,
            (host, _),
        ) in ((a_ns, a_bind), (b_ns, b_bind)):
            if ns is None and not _is_loopback(host):
                raise ValueError(f"relay outside a test namespace must bind loopback, not {host}")
        for ns, target in ((b_ns, b_target), (a_ns, a_target)):
            if target is not None and ns is None and not _is_loopback(target[0]):
                raise ValueError(
                    f"relay target outside a test namespace must be loopback: {target}"
                )
        self.a_to_b = a_to_b or Faults()
        self.b_to_a = b_to_a or Faults()
        self.stats = {"a_to_b": RelayStats(), "b_to_a": RelayStats()}
        self._rng = {
            "a_to_b": random.Random(f"{seed}-a_to_b"),
            "b_to_a": random.Random(f"{seed}-b_to_a"),
        }
        self._sock_a = self._make_socket(a_ns, a_bind)
        self._sock_b = self._make_socket(b_ns, b_bind)
        self.a_addr: tuple[str, int] = self._sock_a.getsockname()[:2]
        self.b_addr: tuple[str, int] = self._sock_b.getsockname()[:2]
        self.a_target = a_target
        self.b_target = b_target
        self._heap: list[tuple[float, int, socket.socket, bytes, tuple[str, int]]] = []
        self._seq = itertools.count()
        self._held: dict[str, tuple[float, bytes] | None] = {"a_to_b": None, "b_to_a": None}
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _make_socket(ns: Namespace | None, bind: tuple[str, int]) -> socket.socket:
        family = socket.AF_INET6 if ipaddress.ip_address(bind[0]).version == 6 else socket.AF_INET
        s = ns.socket(family, socket.SOCK_DGRAM) if ns else socket.socket(family, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind(bind)
        return s

    @staticmethod
    def endpoint(addr: tuple[str, int]) -> str:
        host, port = addr[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def __enter__(self) -> UdpRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> UdpRelay:
        self._thread = threading.Thread(target=self._loop, name="UdpRelay", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for s in (self._sock_a, self._sock_b, self._wake_r, self._wake_w):
            s.close()

    def _emit(
        self, out: socket.socket, data: bytes, dest: tuple[str, int] | None, st: RelayStats
    ) -> None:
        if dest is None:
            st.dropped += 1
            return
        try:
            out.sendto(data, dest)
            st.sent += 1
        except OSError as e:
            if e.errno not in (
                errno.ECONNREFUSED,
                errno.EAGAIN,
                errno.ENETUNREACH,
                errno.EHOSTUNREACH,
            ):
                raise
            st.dropped += 1

    def _schedule(
        self,
        when: float,
        out: socket.socket,
        data: bytes,
        dest: tuple[str, int] | None,
        st: RelayStats,
    ) -> None:
        if dest is None:
            st.dropped += 1
            return
        heapq.heappush(self._heap, (when, next(self._seq), out, data, dest))

    def _handle(self, direction: str, data: bytes, now: float) -> None:
        faults = self.a_to_b if direction == "a_to_b" else self.b_to_a
        st = self.stats[direction]
        rng = self._rng[direction]
        out, dest = (
            (self._sock_b, self.b_target)
            if direction == "a_to_b"
            else (self._sock_a, self.a_target)
        )
        st.received += 1
        # Draw every random number every time so one fault's setting does not shift another's.
        r_loss, r_dup, r_reo, r_jit = rng.random(), rng.random(), rng.random(), rng.random()
        if (faults.drop_if is not None and faults.drop_if(data)) or r_loss < faults.loss:
            st.dropped += 1
            return
        copies = 2 if r_dup < faults.duplicate else 1
        st.duplicated += copies - 1
        delay = faults.delay + faults.jitter * r_jit
        if delay > 0:
            st.delayed += 1
        held = self._held[direction]
        if held is None and r_reo < faults.reorder:
            st.reordered += 1
            self._held[direction] = (now + max(delay, faults.reorder_hold), data)
            copies -= 1  # the held copy is sent later
        for _ in range(copies):
            self._schedule(now + delay, out, data, dest, st)
        if held is not None:  # release the held datagram after this one
            self._held[direction] = None
            self._schedule(now + delay, out, held[1], dest, st)  # same time, later seq: after

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock_a, selectors.EVENT_READ, "a_to_b")
        sel.register(self._sock_b, selectors.EVENT_READ, "b_to_a")
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                # held (reorder) datagrams whose hold time expired
                for direction, held in list(self._held.items()):
                    if held is not None and held[0] <= now:
                        self._held[direction] = None
                        out, dest = (
                            (self._sock_b, self.b_target)
                            if direction == "a_to_b"
                            else (self._sock_a, self.a_target)
                        )
                        self._schedule(now, out, held[1], dest, self.stats[direction])
                while self._heap and self._heap[0][0] <= now:
                    _, _, out, data, dest = heapq.heappop(self._heap)
                    direction = "a_to_b" if out is self._sock_b else "b_to_a"
                    self._emit(out, data, dest, self.stats[direction])
                deadlines = [h[0] for h in self._held.values() if h is not None]
                if self._heap:
                    deadlines.append(self._heap[0][0])
                timeout = max(0.0, min(deadlines) - now) if deadlines else None
                for key, _ in sel.select(timeout):
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                        continue
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    while True:
                        try:
                            data, src = sock.recvfrom(65535)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:  # e.g. ICMP port unreachable reported on the socket
                            break
                        if key.data == "a_to_b" and self.a_target is None:
                            self.a_target = src[:2]
                        elif key.data == "b_to_a" and self.b_target is None:
                            self.b_target = src[:2]
                        self._handle(key.data, data, time.monotonic())
        finally:
            sel.close()


async def ns_curl(ns: Namespace, *args: str, max_time: float = 60.0) -> tuple[int, bytes]:
    """Run ``curl -sS -g ARGS`` inside ``ns``; (HTTP status, body). curl itself must succeed."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *ns.exec_prefix(), "curl", "-sS", "-g", "--max-time", f"{max_time:g}",
        "-w", "\n%{http_code}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), max_time + 10)
    assert proc.returncode == 0, err
    body, _, status = out.rpartition(b"\n")
    return int(status), body
