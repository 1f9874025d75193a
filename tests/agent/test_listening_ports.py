"""Listening ports (agent-api.md §8) against the real /proc, and against a built procfs tree."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentconn.agent.api.listening import ListeningPortsApi
from agentconn.agent.api.router import Router
from agentconn.agent.options import AgentOptions

SELF_COMM = Path("/proc/self/comm").read_text().rstrip("\n")


async def _api(make_api: Any, options: AgentOptions | None = None, **kwargs: Any) -> Any:
    router = Router()
    ListeningPortsApi(options or AgentOptions(), **kwargs).register(router)
    return await make_api(router)


async def _ports(api: Any) -> dict[int, str]:
    r = await api.call("GET", "/api/v0/listening-ports")
    assert r.status == 200, r.body
    entries = r.json()["ports"]
    assert all(e["network"] == "tcp" for e in entries)
    ports = {e["port"]: e["process_name"] for e in entries}
    assert len(ports) == len(entries), "ports must be de-duplicated"
    return ports


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s
    s.close()


async def test_own_listener_with_process_name(make_api: Any, listener: socket.socket) -> None:
    api = await _api(make_api)
    port = listener.getsockname()[1]
    ports = await _ports(api)
    assert ports[port] == SELF_COMM
    r = await api.call("GET", "/api/v0/listening-ports")
    assert r.headers["content-type"] == "application/json; charset=utf-8"


async def test_listener_in_another_process(make_api: Any) -> None:
    code = (
        "import socket, sys\n"
        "open('/proc/self/comm', 'w').write('portowner')\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        port = int(await child.stdout.readline())
        api = await _api(make_api)
        assert (await _ports(api))[port] == "portowner"
    finally:
        child.kill()
        await child.wait()


async def test_closed_listener_disappears_after_cache(make_api: Any) -> None:
    api = await _api(make_api, cache_duration=0.5)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    assert port in await _ports(api)
    s.close()
    await asyncio.sleep(0.6)
    assert port not in await _ports(api)
    # A new listener shows up once the cached scan is stale.
    s2 = socket.socket()
    s2.bind(("127.0.0.1", 0))
    s2.listen()
    try:
        await asyncio.sleep(0.6)
        assert s2.getsockname()[1] in await _ports(api)
    finally:
        s2.close()


async def test_result_is_cached(make_api: Any) -> None:
    api = await _api(make_api, cache_duration=3600)
    before = await _ports(api)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        assert await _ports(api) == before
        assert s.getsockname()[1] not in before
    finally:
        s.close()


async def test_ignore_ports(make_api: Any, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    api = await _api(make_api, AgentOptions(ignore_ports=frozenset({port})))
    assert port not in await _ports(api)


async def test_ipv6_only_listener(make_api: Any) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::1", 0))
    s.listen()
    try:
        port = s.getsockname()[1]
        assert (await _ports(await _api(make_api)))[port] == SELF_COMM
    finally:
        s.close()


async def test_udp_and_unlistened_tcp_are_not_listed(make_api: Any) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    bound = socket.socket()  # bound but never listening
    bound.bind(("127.0.0.1", 0))
    try:
        ports = await _ports(await _api(make_api))
        assert udp.getsockname()[1] not in ports
        assert bound.getsockname()[1] not in ports
    finally:
        udp.close()
        bound.close()


# -- a procfs tree built on disk: exact filtering, ordering and owner mapping -----------------

TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
              "  timeout inode\n")


def _row(sl: int, port: int, state: str, inode: int, v6: bool = False) -> str:
    addr = ("0" * 32 if v6 else "0100007F") + f":{port:04X}"
    remote = ("0" * 32 if v6 else "00000000") + ":0000"
    return (f"   {sl}: {addr} {remote} {state} 00000000:00000000 00:00000000 00000000  1000"
            f"        0 {inode} 1 0000000000000000 100 0 0 10 0\n")


def _build_proc(root: Path) -> None:
    (root / "net").mkdir(parents=True)
    (root / "net" / "tcp").write_text(TCP_HEADER + "".join([
        _row(0, 7, "0A", 101),        # below 9: the agent's own ports
        _row(1, 9, "0A", 102),        # 9 is the first user port
        _row(2, 3000, "01", 103),     # ESTABLISHED, not listening
        _row(3, 8080, "0A", 104),
        _row(4, 5432, "0A", 0),       # no inode (e.g. another namespace): no owner
        _row(5, 8, "0A", 105),
    ]))
    (root / "net" / "tcp6").write_text(TCP_HEADER + "".join([
        _row(0, 8080, "0A", 201, v6=True),   # duplicate of the v4 entry: first wins
        _row(1, 4000, "0A", 202, v6=True),
        _row(2, 4001, "0A", 203, v6=True),   # held by a process whose comm is unreadable
        _row(3, 4002, "0A", 204, v6=True),   # nobody holds it
    ]))

    def proc(pid: int, comm: str | None, links: dict[str, str]) -> None:
        (root / str(pid) / "fd").mkdir(parents=True)
        if comm is not None:
            (root / str(pid) / "comm").write_text(comm + "\n")
        for fd, target in links.items():
            os.symlink(target, root / str(pid) / "fd" / fd)

    proc(12, "node", {"0": "/dev/null", "3": "socket:[104]", "4": "pipe:[99]"})
    proc(7, "sshd", {"5": "socket:[102]", "6": "socket:[201]"})
    proc(30, "node-child", {"3": "socket:[104]"})  # inherited: the lower pid wins
    proc(31, None, {"9": "socket:[203]"})
    proc(40, "postgres", {"1": "socket:[202]"})
    (root / "self").mkdir()  # non-pid entries are skipped


async def test_scan_of_built_proc_tree(make_api: Any, tmp_path: Path) -> None:
    _build_proc(tmp_path)
    api = await _api(make_api, AgentOptions(ignore_ports=frozenset({4002})),
                     proc_root=str(tmp_path))
    r = await api.call("GET", "/api/v0/listening-ports")
    assert r.json() == {"ports": [
        {"process_name": "sshd", "network": "tcp", "port": 9},
        {"process_name": "node", "network": "tcp", "port": 8080},
        {"process_name": "", "network": "tcp", "port": 5432},
        {"process_name": "postgres", "network": "tcp", "port": 4000},
        {"process_name": "", "network": "tcp", "port": 4001},
    ]}


async def test_ipv4_only_and_empty(make_api: Any, tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(TCP_HEADER + _row(0, 3, "0A", 1))
    api = await _api(make_api, proc_root=str(tmp_path))
    r = await api.call("GET", "/api/v0/listening-ports")
    assert (r.status, r.body) == (200, b'{"ports":[]}\n')


async def test_scan_failure(make_api: Any, tmp_path: Path) -> None:
    api = await _api(make_api, proc_root=str(tmp_path))
    r = await api.call("GET", "/api/v0/listening-ports")
    assert r.status == 500
    body = r.json()
    assert body["message"] == "Could not scan for listening ports."
    assert "net/tcp" in body["detail"]
    # Failures are not cached: a table that appears is read on the next request.
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(TCP_HEADER + _row(0, 8000, "0A", 0))
    r = await api.call("GET", "/api/v0/listening-ports")
    assert r.json() == {"ports": [{"process_name": "", "network": "tcp", "port": 8000}]}
