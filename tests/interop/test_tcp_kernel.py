"""Our userspace TCP against the Linux kernel's TCP, through real wireguard-go.

Topology (netns.wg_pair, MTU 1280 on both sides as in Coder's tailnet): one namespace the test
creates; wireguard-go's TUN has 10.77.0.1 / fd77::1 and the kernel's TCP behind it; our
userspace peer is 10.77.0.2 / fd77::2 with its UDP socket inside that namespace. For the lossy
cases a netns.UdpRelay (2% loss and 2% reordering each way, seeded) sits between our UDP socket
and wireguard-go on the namespace's loopback.

Far side (all run inside the namespace): `python -m http.server`, `curl`, `iperf3 -c`, and two
helpers in tools/: tcpserver.py (UP / DOWN / ECHO, sha256 over everything) and rawtcp.py (raw
IPv4/IPv6 TCP packets: malformed ones, and a SYN flood).

Every payload is checked by sha256 end to end. Waits have generous bounds (they fail the test
with a message if the condition never comes); nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import Faults, Namespace, UdpRelay, WgPair, require_interop, wg_pair

from agentconn import Tunnel

TOOLS = Path(__file__).parent / "tools"
MTU = 1280
THEIRS4, THEIRS6 = "10.77.0.1", "fd77::1"
OURS4, OURS6 = "10.77.0.2", "fd77::2"
MB = 1 << 20
CHUNK = 1 << 16

# the relay's faults for the "lossy" cases, each direction
LOSSY = Faults(loss=0.02, reorder=0.02)


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
def wgpair1280(netns: Namespace) -> Iterator[WgPair]:
    """As conftest's `wgpair`, with MTU 1280 on wireguard-go's link and in our config."""
    pair = wg_pair(netns, mtu=MTU)
    try:
        yield pair
    finally:
        pair.wg.stop()


@pytest.fixture(scope="session")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], tuple[Path, str]]:
    """blob(size) -> (file of `size` seeded random bytes, its sha256 hex); made once each."""
    directory = tmp_path_factory.mktemp("tcp_kernel_blobs")
    made: dict[int, tuple[Path, str]] = {}

    def make(size: int) -> tuple[Path, str]:
        if size not in made:
            data = random.Random(size).randbytes(size)
            path = directory / f"blob-{size}"
            path.write_bytes(data)
            made[size] = (path, hashlib.sha256(data).hexdigest())
        return made[size]

    return make


def _bound_socket(ns: Namespace) -> socket.socket:
    with ns.enter():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def _tunnel(
    pair: WgPair, *, faults: Faults | None = None
) -> AsyncIterator[tuple[Tunnel, UdpRelay | None]]:
    """Our Tunnel (MTU from the pair), handshake done by a ping before the body runs.

    With `faults`, the Tunnel talks to wireguard-go through a UdpRelay on the namespace's
    loopback; the faults are switched on only after the handshake.
    """
    config = pair.wg_quick_config()
    relay = None
    if faults is not None:
        relay = UdpRelay(
            a_ns=pair.ns, b_ns=pair.ns, b_target=("127.0.0.1", pair.wg.listen_port), seed=1280
        )
        relay.start()
        config = config.replace(
            f"Endpoint = {pair.endpoint}", f"Endpoint = {UdpRelay.endpoint(relay.a_addr)}"
        )
    try:
        tunnel = Tunnel.from_config(config, sock=_bound_socket(pair.ns))
        await tunnel.start()
        try:
            await tunnel.ping(THEIRS4, timeout=10)
            if relay is not None and faults is not None:
                relay.a_to_b = relay.b_to_a = faults
            yield tunnel, relay
        finally:
            await tunnel.close()
    finally:
        if relay is not None:
            relay.close()


def _assert_faults_happened(relay: UdpRelay | None) -> None:
    if relay is None:
        return
    for direction, st in relay.stats.items():
        assert st.dropped > 0 and st.reordered > 0, (direction, st)


async def _run_in(ns: Namespace, *cmd: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run `cmd` in the namespace; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *ns.exec_prefix(), *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{' '.join(cmd)} did not finish within {timeout}s") from None
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


@contextlib.asynccontextmanager
async def _process_in(
    ns: Namespace, *cmd: str, ready: tuple[str, int] | None = None, ready_line: str | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A long-running program in the namespace, stopped on exit.

    Ready when it prints `ready_line`, or when a kernel TCP connect to `ready` (host, port)
    from inside the namespace succeeds.
    """
    proc = await asyncio.create_subprocess_exec(
        *ns.exec_prefix(),
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if ready_line else asyncio.subprocess.DEVNULL,
    )
    try:
        if ready_line is not None:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.decode().strip() == ready_line, (cmd, line)
        if ready is not None:
            await _wait_listening(ns, *ready, proc=proc)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_listening(
    ns: Namespace, host: str, port: int, proc: asyncio.subprocess.Process | None = None
) -> None:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = loop.time() + 30
    while True:
        sock = ns.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
            return
        except ConnectionRefusedError:
            if proc is not None and proc.returncode is not None:
                raise AssertionError(f"server exited with {proc.returncode}") from None
            if loop.time() > deadline:
                raise AssertionError(f"nothing listens on {host}:{port} in the namespace") from None
            await asyncio.sleep(0.05)
        finally:
            sock.close()


async def _eventually(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"still not true after {timeout}s: {what}")
        await asyncio.sleep(0.05)


def _url(host: str, port: int, path: str) -> str:
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tcp_stats(tunnel: Tunnel) -> dict[str, Any]:
    tcp: dict[str, Any] = tunnel.stats()["tcp"]
    return tcp


def _drop_total(tunnel: Tunnel) -> tuple[int, int]:
    """(TCP drops, every other drop counter of the tunnel)."""
    stats = tunnel.stats()
    return sum(stats["tcp"]["drops"].values()), sum(stats["drops"].values())


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _read_headers(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    first, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return first, headers


class _HttpServer:
    """A minimal HTTP/1.1 server on our stack, for curl (every response is Connection: close).

    PUT/POST: reads Content-Length bytes (after a 100 Continue if asked), answers 200 with the
    sha256 hex of the body. GET: serves `files[path]` (bytes or a file). Records every request
    and, when the client has closed after a response, a snapshot of the tunnel's TCP stats.
    """

    def __init__(self, tunnel: Tunnel, files: dict[str, bytes | Path] | None = None) -> None:
        self.tunnel = tunnel
        self.files = files or {}
        self.requests: list[tuple[str, str, int, str]] = []  # method, path, body bytes, sha256
        self.peers: list[tuple[str, int]] = []
        self.snapshots: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.peers.append(writer.get_extra_info("peername"))
            first, headers = await _read_headers(reader)
            method, path, _ = first.split(" ", 2)
            if method in ("PUT", "POST"):
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                remaining = int(headers["content-length"])
                digest, size = hashlib.sha256(), 0
                while remaining:
                    chunk = await reader.read(min(remaining, CHUNK))
                    if not chunk:
                        raise EOFError(f"{method}: EOF with {remaining} bytes missing")
                    digest.update(chunk)
                    size += len(chunk)
                    remaining -= len(chunk)
                self.requests.append((method, path, size, digest.hexdigest()))
                body = digest.hexdigest().encode() + b"\n"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                    % len(body)
                    + body
                )
            elif method == "GET" and path in self.files:
                content = self.files[path]
                size = len(content) if isinstance(content, bytes) else content.stat().st_size
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                    b"Content-Type: application/octet-stream\r\n"
                    b"Connection: close\r\n\r\n" % size
                )
                if isinstance(content, bytes):
                    writer.write(content)
                else:
                    with open(content, "rb") as f:  # noqa: ASYNC230 - page-cache reads
                        while chunk := f.read(4 * CHUNK):
                            writer.write(chunk)
                            await writer.drain()
                self.requests.append((method, path, size, ""))
            else:
                writer.write(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            await writer.drain()
            # The client closes once it has the whole response: everything we sent is acked.
            await reader.read()
            self.snapshots.append(_tcp_stats(self.tunnel))
        except Exception as e:
            self.errors.append(e)
            raise
        finally:
            await _close(writer)


async def _http_get(
    tunnel: Tunnel, host: str, port: int, path: str
) -> tuple[int, int, str, dict[str, Any]]:
    """HTTP/1.0 GET over our stack: (Content-Length, body bytes read, body sha256, TCP stats
    snapshot taken after the server's EOF, before we close)."""
    reader, writer = await tunnel.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        status, headers = await _read_headers(reader)
        assert status.split()[1] == "200", status
        digest, size = hashlib.sha256(), 0
        while chunk := await reader.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        return int(headers["content-length"]), size, digest.hexdigest(), _tcp_stats(tunnel)
    finally:
        await _close(writer)


# (link, family, size): the same transfer direct and through the lossy relay
CASES = [
    pytest.param("direct", 4, 100 * MB, id="direct-v4-100MB"),
    pytest.param("direct", 6, 10 * MB, id="direct-v6-10MB"),
    pytest.param("lossy", 4, 20 * MB, id="lossy-v4-20MB"),
    pytest.param("lossy", 6, 5 * MB, id="lossy-v6-5MB"),
]


# ---------------------------------------------------------------------------------------------
# (a) our client downloads from the kernel: python -m http.server in the namespace


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("link", "family", "size"), CASES)
async def test_we_download_from_kernel_http_server(
    wgpair1280: WgPair,
    blob: Callable[[int], tuple[Path, str]],
    link: str,
    family: int,
    size: int,
) -> None:
    path, sha = blob(size)
    server_ip = THEIRS4 if family == 4 else THEIRS6
    async with (
        _tunnel(wgpair1280, faults=LOSSY if link == "lossy" else None) as (tunnel, relay),
        _process_in(
            wgpair1280.ns,
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            server_ip,
            "--directory",
            str(path.parent),
            "8000",
            ready=(server_ip, 8000),
        ),
    ):
        length, got, digest, tcp = await _http_get(tunnel, server_ip, 8000, f"/{path.name}")
        assert (length, got) == (size, size)
        assert digest == sha
        assert any(c["bytes_received"] >= size for c in tcp["connections"]), tcp["connections"]
        _assert_faults_happened(relay)


# ---------------------------------------------------------------------------------------------
# (b) curl in the namespace uploads to, and downloads from, a server on our stack


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("link", "family", "size"), CASES)
async def test_curl_uploads_to_our_server(
    wgpair1280: WgPair,
    blob: Callable[[int], tuple[Path, str]],
    link: str,
    family: int,
    size: int,
) -> None:
    require_interop("curl")
    path, sha = blob(size)
    ours = OURS4 if family == 4 else OURS6
    async with _tunnel(wgpair1280, faults=LOSSY if link == "lossy" else None) as (tunnel, relay):
        http = _HttpServer(tunnel)
        async with await tunnel.start_server(http.handle, 8080):
            if family == 4:  # PUT with `Expect: 100-continue` (curl's default for big bodies)
                body = ["-T", str(path)]
            else:  # POST, no Expect: the body follows the headers at once
                body = [
                    "-H",
                    "Expect:",
                    "-H",
                    "Content-Type: application/octet-stream",
                    "--data-binary",
                    f"@{path}",
                ]
            code, out, err = await _run_in(
                wgpair1280.ns,
                "curl",
                "-sS",
                "--fail",
                "-g",
                "--max-time",
                "800",
                *body,
                _url(ours, 8080, "/upload"),
                timeout=850,
            )
            assert code == 0, (code, err, http.errors)
            assert out.strip() == sha
            assert [(size, sha)] == [(n, d) for _, _, n, d in http.requests]
            assert http.peers[0][0] == (THEIRS4 if family == 4 else THEIRS6)
            await _eventually(lambda: len(http.snapshots) == 1, "the server saw curl close")
            conns = http.snapshots[0]["connections"]
            assert any(c["bytes_received"] >= size for c in conns), conns
        assert http.errors == []
        _assert_faults_happened(relay)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("link", "family", "size"), CASES)
async def test_curl_downloads_from_our_server(
    wgpair1280: WgPair,
    blob: Callable[[int], tuple[Path, str]],
    tmp_path: Path,
    link: str,
    family: int,
    size: int,
) -> None:
    require_interop("curl")
    path, sha = blob(size)
    ours = OURS4 if family == 4 else OURS6
    out_file = tmp_path / "downloaded"
    async with _tunnel(wgpair1280, faults=LOSSY if link == "lossy" else None) as (tunnel, relay):
        http = _HttpServer(tunnel, {"/blob": path})
        async with await tunnel.start_server(http.handle, 8080):
            code, _, err = await _run_in(
                wgpair1280.ns,
                "curl",
                "-sS",
                "--fail",
                "-g",
                "--max-time",
                "800",
                "-o",
                str(out_file),
                _url(ours, 8080, "/blob"),
                timeout=850,
            )
            assert code == 0, (code, err, http.errors)
            assert out_file.stat().st_size == size
            assert _sha256_file(out_file) == sha
            await _eventually(lambda: len(http.snapshots) == 1, "the server saw curl close")
            conns = http.snapshots[0]["connections"]
            ours_sent = [c for c in conns if c["bytes_sent"] >= size]
            assert ours_sent, conns
            if link == "lossy":  # 2% of our segments were dropped: we must have resent some
                assert max(c["retransmits"] for c in ours_sent) > 0, ours_sent
        assert http.errors == []
        _assert_faults_happened(relay)


# ---------------------------------------------------------------------------------------------
# flow control: full receive windows, ours and the kernel's


@pytest.mark.timeout(600)
async def test_we_stall_reading_while_the_kernel_sends(
    wgpair1280: WgPair, blob: Callable[[int], tuple[Path, str]]
) -> None:
    """Our reader stops for a while, twice: our receive buffer fills, our window closes, the
    kernel must wait (zero-window probes) and resume when we read again; no byte is lost,
    repeated or stale."""
    size = 20 * MB
    path, sha = blob(size)
    async with (
        _tunnel(wgpair1280) as (tunnel, _),
        _process_in(
            wgpair1280.ns,
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            THEIRS4,
            "--directory",
            str(path.parent),
            "8000",
            ready=(THEIRS4, 8000),
        ),
    ):
        reader, writer = await tunnel.open_connection(THEIRS4, 8000)
        try:
            writer.write(f"GET /{path.name} HTTP/1.0\r\n\r\n".encode())
            await writer.drain()
            status, _ = await _read_headers(reader)
            assert status.split()[1] == "200", status
            digest, got, stalls = hashlib.sha256(), 0, [1 * MB, 9 * MB]
            while chunk := await reader.read(CHUNK):
                digest.update(chunk)
                got += len(chunk)
                if stalls and got >= stalls[0]:
                    stalls.pop(0)
                    await asyncio.sleep(2)  # not measured: long enough for the window to fill
            assert got == size
            assert digest.hexdigest() == sha
        finally:
            await _close(writer)


@pytest.mark.timeout(600)
async def test_curl_reads_slowly_from_our_server(
    wgpair1280: WgPair, blob: Callable[[int], tuple[Path, str]], tmp_path: Path
) -> None:
    """curl --limit-rate reads slower than we send: the kernel's window closes on our sender
    (persist timer, window probes) and reopens; the file arrives intact."""
    require_interop("curl")
    size = 8 * MB
    path, sha = blob(size)
    out_file = tmp_path / "downloaded"
    async with _tunnel(wgpair1280) as (tunnel, _):
        http = _HttpServer(tunnel, {"/blob": path})
        async with await tunnel.start_server(http.handle, 8080):
            code, _, err = await _run_in(
                wgpair1280.ns,
                "curl",
                "-sS",
                "--fail",
                "--limit-rate",
                "2M",
                "--max-time",
                "300",
                "-o",
                str(out_file),
                _url(OURS4, 8080, "/blob"),
                timeout=330,
            )
            assert code == 0, (code, err, http.errors)
            assert _sha256_file(out_file) == sha
        assert http.errors == []


# ---------------------------------------------------------------------------------------------
# (d) 200 concurrent connections, 1 MB each, half up and half down, over IPv4 and IPv6


@pytest.mark.timeout(900)
async def test_200_concurrent_connections_to_kernel_server(wgpair1280: WgPair) -> None:
    n, size = 200, MB
    async with (
        _tunnel(wgpair1280) as (tunnel, _),
        _process_in(
            wgpair1280.ns,
            sys.executable,
            str(TOOLS / "tcpserver.py"),
            "7000",
            THEIRS4,
            THEIRS6,
            ready_line="ready",
        ) as server,
    ):

        async def one(i: int) -> None:
            host = THEIRS4 if i % 4 < 2 else THEIRS6
            data = random.Random(i).randbytes(size)
            reader, writer = await tunnel.open_connection(host, 7000)
            try:
                if i % 2 == 0:  # we send 1 MB, the kernel hashes it
                    writer.write(b"UP %d\n" % size)
                    for k in range(0, size, CHUNK):
                        writer.write(data[k : k + CHUNK])
                        await writer.drain()
                    line = await reader.readline()
                    assert line.decode().strip() == hashlib.sha256(data).hexdigest(), i
                    assert await reader.read() == b""
                else:  # the kernel sends 1 MB, we hash it
                    writer.write(b"DOWN %d %d\n" % (size, i))
                    await writer.drain()
                    digest, got = hashlib.sha256(), 0
                    while chunk := await reader.read(CHUNK):
                        digest.update(chunk)
                        got += len(chunk)
                    assert got == size, (i, got)
                    assert digest.hexdigest() == hashlib.sha256(data).hexdigest(), i
            finally:
                await _close(writer)

        results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        failures = {i: repr(r) for i, r in enumerate(results) if isinstance(r, BaseException)}
        assert failures == {}, f"{len(failures)} of {n} failed: {dict(list(failures.items())[:10])}"
        server.terminate()
        _, err = await server.communicate()
        assert err.decode().strip() == "", err.decode()[:2000]


# ---------------------------------------------------------------------------------------------
# (e) iperf3 -c in the namespace against a minimal iperf3 server on our stack


class _Iperf3Server:
    """The server side of iperf3's control protocol (3.x, TCP, client sending), just enough for
    `iperf3 -c` to run a test to the end.

    Control connection: the client sends a 37-byte cookie; server PARAM_EXCHANGE; client its
    parameters (4-byte big-endian length + JSON); server CREATE_STREAMS; the client opens
    `parallel` data connections, each starting with the same cookie; server TEST_START and
    TEST_RUNNING; the client sends for `time` seconds, then TEST_END; server EXCHANGE_RESULTS;
    the client sends its results (length + JSON), the server its own; server DISPLAY_RESULTS;
    the client sends IPERF_DONE and closes. (esnet/iperf src/iperf_api.h, iperf_client_api.c,
    iperf_server_api.c; checked against iperf 3.12 on the wire.)

    Unlike iperf3's server, which reports what it had read when TEST_END came, this one waits
    until the streams have delivered every byte the client says it sent, so the numbers the
    client prints must equal the client's own.
    """

    COOKIE_SIZE = 37
    TEST_START, TEST_RUNNING, TEST_END = 1, 2, 4
    PARAM_EXCHANGE, CREATE_STREAMS = 9, 10
    EXCHANGE_RESULTS, DISPLAY_RESULTS, IPERF_DONE = 13, 14, 16
    ACCESS_DENIED = 0xFF  # -1 as a signed char

    def __init__(self) -> None:
        self.cookie: bytes | None = None
        self.params: dict[str, Any] = {}
        self.received: list[int] = []  # per data connection, in arrival order
        self.client_results: dict[str, Any] = {}
        self.done = False
        self.errors: list[BaseException] = []
        self._progress = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            cookie = await reader.readexactly(self.COOKIE_SIZE)
            if self.cookie is None:
                self.cookie = cookie
                await self._control(reader, writer)
            elif cookie == self.cookie:
                await self._data(reader)
            else:
                writer.write(bytes([self.ACCESS_DENIED]))
        except Exception as e:
            self.errors.append(e)
            raise
        finally:
            await _close(writer)

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._progress.clear()
            await self._progress.wait()

    async def _data(self, reader: asyncio.StreamReader) -> None:
        index = len(self.received)
        self.received.append(0)
        self._progress.set()
        while chunk := await reader.read(4 * CHUNK):
            self.received[index] += len(chunk)
            self._progress.set()

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def read_json() -> Any:
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            return json.loads(await reader.readexactly(length))

        def state(*states: int) -> None:
            writer.write(bytes(states))

        state(self.PARAM_EXCHANGE)
        self.params = await read_json()
        if (
            not self.params.get("tcp")
            or self.params.get("reverse")
            or self.params.get("bidirectional")
        ):
            raise ValueError(f"only TCP with the client sending is supported: {self.params}")
        state(self.CREATE_STREAMS)
        parallel = int(self.params.get("parallel", 1))
        await self._until(lambda: len(self.received) >= parallel)
        state(self.TEST_START, self.TEST_RUNNING)
        end = await reader.readexactly(1)
        if end[0] != self.TEST_END:
            raise ValueError(f"expected TEST_END, got {end!r}")
        state(self.EXCHANGE_RESULTS)
        self.client_results = await read_json()
        streams = self.client_results["streams"]
        sent = sum(s["bytes"] for s in streams)
        await self._until(lambda: sum(self.received) >= sent)
        # Streams in the client's (creation) order are our data connections in arrival order.
        results = {
            "cpu_util_total": 0,
            "cpu_util_user": 0,
            "cpu_util_system": 0,
            "sender_has_retransmits": -1,
            "streams": [
                {
                    "id": s["id"],
                    "bytes": got,
                    "retransmits": -1,
                    "jitter": 0,
                    "errors": 0,
                    "packets": 0,
                    "start_time": 0,
                    "end_time": s.get("end_time", 0),
                }
                for s, got in zip(streams, self.received)
            ],
        }
        data = json.dumps(results).encode()
        writer.write(struct.pack("!I", len(data)) + data)
        state(self.DISPLAY_RESULTS)
        await writer.drain()
        done = await reader.read(1)
        if done != bytes([self.IPERF_DONE]):
            raise ValueError(f"expected IPERF_DONE, got {done!r}")
        self.done = True


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("family", "parallel"), [(4, 2), (6, 1)], ids=["v4-P2", "v6-P1"])
async def test_iperf3_client_against_our_server(
    wgpair1280: WgPair, family: int, parallel: int
) -> None:
    require_interop("iperf3")
    ours = OURS4 if family == 4 else OURS6
    async with _tunnel(wgpair1280) as (tunnel, _):
        iperf = _Iperf3Server()
        async with await tunnel.start_server(iperf.handle, 5201):
            code, out, err = await _run_in(
                wgpair1280.ns,
                "iperf3",
                "-c",
                ours,
                "-p",
                "5201",
                "-t",
                "3",
                "-P",
                str(parallel),
                "-J",
                timeout=120,
            )
            assert code == 0, (code, out[-3000:], err, iperf.errors)
            report = json.loads(out)
            assert "error" not in report, report["error"]
            await _eventually(lambda: iperf.done, "the iperf3 control connection finished")
        assert iperf.errors == []
        end = report["end"]
        assert len(iperf.received) == parallel
        received = sum(iperf.received)
        assert received > 0
        assert end["sum_sent"]["bytes"] == received
        assert end["sum_received"]["bytes"] == received


# ---------------------------------------------------------------------------------------------
# (f) malformed TCP packets from the namespace (raw sockets), then everything still works


@pytest.mark.timeout(300)
async def test_malformed_tcp_packets_are_dropped_and_counted(wgpair1280: WgPair) -> None:
    require_interop("curl")
    ns = wgpair1280.ns
    async with (
        _tunnel(wgpair1280) as (tunnel, _),
        _process_in(
            ns,
            sys.executable,
            str(TOOLS / "tcpserver.py"),
            "7000",
            THEIRS4,
            THEIRS6,
            ready_line="ready",
        ) as server,
    ):
        http = _HttpServer(tunnel, {"/hello": b"hello\n"})
        async with await tunnel.start_server(http.handle, 8080):
            # a live connection (ours -> kernel echo); bad-checksum segments aim at it too
            reader, writer = await tunnel.open_connection(THEIRS4, 7000)
            writer.write(b"ECHO\nbefore")
            assert await reader.readexactly(6) == b"before"
            our_port = writer.get_extra_info("sockname")[1]

            rx_before = tunnel.stats()["rx_packets"]
            tcp_before, other_before = _drop_total(tunnel)
            spec = {
                "seed": 5,
                "count": 3000,
                "src4": THEIRS4,
                "dst4": OURS4,
                "src6": THEIRS6,
                "dst6": OURS6,
                "ports": [8080, our_port],
                "conn": [7000, our_port],
            }
            code, out, err = await _run_in(
                ns, sys.executable, str(TOOLS / "rawtcp.py"), "garbage", json.dumps(spec)
            )
            assert code == 0, err
            sent = json.loads(out)
            kinds = sent["kinds"]
            assert sent["sent"] == 3000 and kinds["bad_checksum"] > 500, sent
            # every packet went through wireguard-go to us (plus the kernel's RSTs to our
            # SYN-ACKs/RSTs): wait until the tunnel has decrypted at least that many
            await _eventually(
                lambda: tunnel.stats()["rx_packets"] - rx_before >= sent["sent"],
                "the tunnel received the raw packets",
            )
            tcp_after, other_after = _drop_total(tunnel)
            assert tcp_after - tcp_before >= kinds["bad_checksum"], _tcp_stats(tunnel)["drops"]
            must_drop = kinds["bad_checksum"] + kinds["short_header"] + kinds["bad_data_offset"]
            assert (tcp_after - tcp_before) + (other_after - other_before) >= must_drop, (
                kinds,
                tunnel.stats()["drops"],
                _tcp_stats(tunnel)["drops"],
            )

            # the live connection is untouched
            writer.write(b"after")
            await writer.drain()
            assert await reader.readexactly(5) == b"after"
            writer.write_eof()
            assert await reader.read() == b""
            await _close(writer)

            # new connections both ways
            reader, writer = await tunnel.open_connection(THEIRS6, 7000)
            writer.write(b"DOWN 100000 9\n")
            assert await reader.read() == random.Random(9).randbytes(100000)
            await _close(writer)
            for url in (_url(OURS4, 8080, "/hello"), _url(OURS6, 8080, "/hello")):
                code, out, err = await _run_in(
                    ns, "curl", "-sS", "--fail", "-g", "--max-time", "60", url
                )
                assert (code, out) == (0, "hello\n"), (code, out, err)
        assert http.errors == []
        server.terminate()
        _, server_err = await server.communicate()
        assert server_err.decode().strip() == ""


# ---------------------------------------------------------------------------------------------
# (g) SYN flood at our listener, then a legitimate connection is accepted


@pytest.mark.timeout(300)
async def test_syn_flood_then_legitimate_connection_is_accepted(wgpair1280: WgPair) -> None:
    require_interop("curl")
    ns = wgpair1280.ns
    async with _tunnel(wgpair1280) as (tunnel, _):
        http = _HttpServer(tunnel, {"/hello": b"hello\n"})
        async with await tunnel.start_server(http.handle, 8080):
            rx_before = tunnel.stats()["rx_packets"]
            spec = {"seed": 6, "count": 10000, "src": THEIRS4, "dst": OURS4, "dport": 8080}
            code, out, err = await _run_in(
                ns, sys.executable, str(TOOLS / "rawtcp.py"), "synflood", json.dumps(spec)
            )
            assert code == 0, err
            assert json.loads(out)["sent"] == 10000
            # the SYNs reached us (and the kernel's RSTs to our SYN-ACKs come back too)
            await _eventually(
                lambda: tunnel.stats()["rx_packets"] - rx_before >= 10000,
                "the tunnel received the SYN flood",
            )
            assert http.peers == []  # no flood SYN became an accepted connection

            # legitimate clients, right after the flood: kernel TCP via curl, v4 and v6
            for url in (_url(OURS4, 8080, "/hello"), _url(OURS6, 8080, "/hello")):
                code, out, err = await _run_in(
                    ns, "curl", "-sS", "--fail", "-g", "--max-time", "120", url, timeout=150
                )
                assert (code, out) == (0, "hello\n"), (code, out, err)
            assert [r[:2] for r in http.requests] == [("GET", "/hello")] * 2
            assert [p[0] for p in http.peers] == [THEIRS4, THEIRS6]
            assert "listeners" in _tcp_stats(tunnel)
        assert http.errors == []
