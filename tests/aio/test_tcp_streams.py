"""TCP on the userspace stack (Tunnel.open_connection/start_server/create_connection/
create_server) between two Tunnels over loopback UDP, on stdlib asyncio and on uvloop.

The asyncio contract: the transport is a real asyncio.Transport (StreamReader/StreamWriter and
plain Protocols run on it unchanged); callbacks come in asyncio's order; data is coalesced into
few data_received calls; backpressure works both ways (pause_writing/resume_writing against
the write-buffer limits, pause_reading closing the receive window until the peer's writer
stalls); errors are the ones asyncio raises. No assertion depends on timing: wait_for bounds
only keep a broken build from hanging.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from test_tunnel_loopback import LOOPS, run, started_pair

from agentconn import NoRouteError, Tunnel, TunnelClosedError
from agentconn.aio.streams import TcpTransport
from agentconn.net.udp import EPHEMERAL_PORTS

FAMILIES = {"ipv4": ("10.55.0.1", "10.55.0.2"), "ipv6": ("fd55::1", "fd55::2")}
MB = 1 << 20


def addr(host: str, port: int) -> tuple[Any, ...]:
    """What asyncio's get_extra_info gives for an address: 2-tuple IPv4, 4-tuple IPv6."""
    return (host, port, 0, 0) if ":" in host else (host, port)


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes (a corrupted or reordered chunk shows)."""
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest() * 2048        # 64 KiB
    out = bytearray()
    i = 0
    while len(out) < size:
        out += i.to_bytes(4, "big") + block[: 65536 - 4]
        i += 1
    return bytes(out[:size])


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll the loop until `predicate()` holds (bounded only to avoid hanging)."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.002)
    await asyncio.wait_for(poll(), timeout)


async def handshake(a: Tunnel, b: Tunnel) -> None:
    await a.ping("10.55.0.2", timeout=5)
    await b.ping("10.55.0.1", timeout=5)


def conn_stats(tunnel: Tunnel, local_port: int) -> dict[str, Any]:
    """The stats()["tcp"]["connections"] entry whose local port is `local_port`."""
    found: list[dict[str, Any]] = [
        c for c in tunnel.stats()["tcp"]["connections"] if c["local"][1] == local_port]
    assert len(found) == 1, tunnel.stats()["tcp"]["connections"]
    return found[0]


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


class Recorder(asyncio.Protocol):
    """Records callbacks in order ('made', 'data', 'eof', 'lost', 'pause', 'resume')."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.events: list[str] = []
        self.data = bytearray()
        self.data_calls = 0
        self.transport: TcpTransport | None = None
        self.made: asyncio.Future[None] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[Exception | None] = loop.create_future()
        self.paused: asyncio.Future[int] = loop.create_future()
        self.resumed: asyncio.Future[int] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")
        assert isinstance(transport, TcpTransport)
        self.transport = transport
        if not self.made.done():
            self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        assert data
        self.events.append("data")
        self.data_calls += 1
        self.data += data

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        if not self.eof.done():
            self.eof.set_result(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.events.append("pause")
        assert self.transport is not None
        if not self.paused.done():
            self.paused.set_result(self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self.events.append("resume")
        assert self.transport is not None
        if not self.resumed.done():
            self.resumed.set_result(self.transport.get_write_buffer_size())

    def order(self) -> list[str]:
        """Callback names with repeats collapsed (data, data, data -> data)."""
        out: list[str] = []
        for event in self.events:
            if event in ("pause", "resume"):
                continue
            if not out or out[-1] != event:
                out.append(event)
        return out


class Servers:
    """A protocol factory that remembers every protocol it made (in accept order)."""

    def __init__(self, cls: type[Recorder] = Recorder) -> None:
        self.cls = cls
        self.made: asyncio.Queue[Recorder] = asyncio.Queue()

    def __call__(self) -> Recorder:
        proto = self.cls()
        self.made.put_nowait(proto)
        return proto

    async def next(self) -> Any:
        proto = await asyncio.wait_for(self.made.get(), 10)
        await asyncio.wait_for(proto.made, 10)
        return proto


async def connect(tunnel: Tunnel, host: str, port: int) -> tuple[TcpTransport, Recorder]:
    transport, protocol = await tunnel.create_connection(Recorder, host, port)
    assert isinstance(protocol, Recorder)
    return transport, protocol


def with_pair(loop_name: str, body: Callable[[Tunnel, Tunnel], Awaitable[None]]) -> None:
    async def main() -> None:
        a, b = await started_pair()
        try:
            await handshake(a, b)
            await body(a, b)
        finally:
            await a.close()
            await b.close()
    run(loop_name, main())


# -- streams -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("loop_name", LOOPS)
def test_stream_echo_20mb_each_way(loop_name: str, family: str) -> None:
    """open_connection/start_server echo, 20 MB each direction, sha256-exact; addresses."""
    a_ip, b_ip = FAMILIES[family]
    size = 20 * MB
    payload = os.urandom(size)

    async def body(a: Tunnel, b: Tunnel) -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            await echo_handler(reader, writer)

        server = await b.start_server(handler, 7000)
        reader, writer = await a.open_connection(b_ip, 7000)
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        assert transport.get_extra_info("peername") == addr(b_ip, 7000)
        sockname = transport.get_extra_info("sockname")
        assert sockname[0] == a_ip and len(sockname) == len(addr(a_ip, 0))
        assert sockname[1] in EPHEMERAL_PORTS

        async def send() -> None:
            view = memoryview(payload)
            for off in range(0, size, 256 * 1024):
                writer.write(view[off:off + 256 * 1024])
                await writer.drain()
            assert writer.can_write_eof()
            writer.write_eof()

        async def receive() -> tuple[int, str]:
            digest, n = hashlib.sha256(), 0
            while data := await reader.read(1 << 20):
                digest.update(data)
                n += len(data)
            return n, digest.hexdigest()

        _, (n, got) = await asyncio.wait_for(asyncio.gather(send(), receive()), 50)
        assert n == size
        assert got == sha(payload)
        # the server side saw the mirror image of the addresses
        assert len(accepted) == 1
        server_transport = accepted[0].transport
        assert isinstance(server_transport, asyncio.Transport)
        assert server_transport.get_extra_info("sockname") == addr(b_ip, 7000)
        assert server_transport.get_extra_info("peername") == sockname
        assert server_transport.get_extra_info("socket") is None
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 10)
        assert transport.is_closing()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)
        # nothing was lost on the way: no retransmission was needed on loopback, or if one
        # was, the data still arrived exactly (checked above); counters add up
        ca = a.stats()["tcp"]
        assert ca["segments_out"] > size // 1420 and ca["segments_in"] > size // 1420

    with_pair(loop_name, body)


# -- protocol callbacks ----------------------------------------------------------------------


class HalfCloseServer(Recorder):
    """On the client's FIN: writes a reply larger than the send ring, then close()s at once —
    close() must flush what is still buffered in the transport before the FIN."""

    reply = pattern(6 * MB, seed=7)
    buffered_at_close = -1
    closing_after_close = False

    def eof_received(self) -> bool | None:
        super().eof_received()
        assert self.transport is not None
        assert not self.transport.is_closing()
        self.transport.write(self.reply[:MB])
        self.transport.writelines([self.reply[MB:3 * MB], self.reply[3 * MB:]])
        self.buffered_at_close = self.transport.get_write_buffer_size()
        self.transport.close()
        self.closing_after_close = self.transport.is_closing()
        self.transport.close()                         # idempotent
        return True


@pytest.mark.parametrize("loop_name", LOOPS)
def test_protocol_order_coalescing_half_close(loop_name: str) -> None:
    request = pattern(10 * MB, seed=1)

    async def body(a: Tunnel, b: Tunnel) -> None:
        servers = Servers(HalfCloseServer)
        server = await b.create_server(servers, 7001, "10.55.0.2")
        assert server.sockets == [("10.55.0.2", 7001)]
        transport, client = await connect(a, "10.55.0.2", 7001)
        assert isinstance(transport, asyncio.Transport) and isinstance(client, Recorder)
        assert client.transport is transport
        assert client.events == ["made"]
        assert not transport.is_closing() and transport.is_reading()
        assert transport.get_protocol() is client
        transport.write(request[:MB])
        transport.writelines([request[MB:2 * MB], memoryview(request)[2 * MB:5 * MB]])
        transport.writelines(request[off:off + MB] for off in range(5 * MB, 10 * MB, MB))
        transport.write(b"")
        assert transport.can_write_eof()
        transport.write_eof()
        assert not transport.is_closing()               # half-closed, still reading
        with pytest.raises(RuntimeError):
            transport.write(b"after eof")
        proto = await servers.next()
        await asyncio.wait_for(proto.lost, 20)
        # server: everything the client sent, then EOF, then its own close
        assert proto.order() == ["made", "data", "eof", "lost"]
        assert proto.lost.result() is None
        assert sha(proto.data) == sha(request)
        # coalesced: 10 MB is ~7700 segments at MTU 1420; data_received is called per batch
        assert proto.data_calls < 1000, proto.data_calls
        assert proto.buffered_at_close > 0            # close() really had data to flush
        assert proto.closing_after_close
        # client: the whole reply (sent after our write_eof), then EOF, then lost(None)
        await asyncio.wait_for(client.lost, 20)
        assert client.order() == ["made", "data", "eof", "lost"]
        assert client.lost.result() is None
        assert len(client.data) == len(HalfCloseServer.reply)
        assert sha(client.data) == sha(HalfCloseServer.reply)
        assert client.data_calls < 1000, client.data_calls
        assert transport.is_closing()
        transport.write(b"ignored after close")         # dropped like asyncio does, no raise
        async with server:
            pass
        assert not server.is_serving()

    with_pair(loop_name, body)


class AbortOnData(Recorder):
    closing_after_abort = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.transport is not None
        self.transport.abort()
        self.closing_after_abort = self.transport.is_closing()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_abort_resets_the_peer(loop_name: str) -> None:
    async def body(a: Tunnel, b: Tunnel) -> None:
        # 1. the client aborts: the server's protocol gets connection_lost(ConnectionResetError)
        servers = Servers()
        server = await b.create_server(servers, 7002)
        transport, client = await connect(a, "10.55.0.2", 7002)
        transport.write(b"x" * 1000)
        proto = await servers.next()
        await until(lambda: len(proto.data) == 1000)
        transport.write(b"y" * (8 * MB))                # some of it still buffered: dropped
        transport.abort()
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        assert await asyncio.wait_for(client.lost, 10) is None
        exc = await asyncio.wait_for(proto.lost, 10)
        assert isinstance(exc, ConnectionResetError), exc
        assert proto.order()[-1] == "lost" and "eof" not in proto.order()
        transport.abort()                               # idempotent

        # 2. the server aborts: the client's StreamReader.read raises ConnectionResetError
        servers2 = Servers(AbortOnData)
        server2 = await b.create_server(servers2, 7003)
        reader, writer = await a.open_connection("10.55.0.2", 7003)
        writer.write(b"hello")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 10)
        proto2 = await servers2.next()
        assert proto2.closing_after_abort
        assert await asyncio.wait_for(proto2.lost, 10) is None
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(writer.wait_closed(), 10)
        for s in (server, server2):
            s.close()
            await asyncio.wait_for(s.wait_closed(), 10)

    with_pair(loop_name, body)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_abort_idle_connection_resets_the_peer(loop_name: str) -> None:
    """abort() on a connection with nothing in flight: the RST alone must still go out."""
    async def body(a: Tunnel, b: Tunnel) -> None:
        servers = Servers()
        server = await b.create_server(servers, 7006)
        transport, client = await connect(a, "10.55.0.2", 7006)
        proto = await servers.next()
        await until(lambda: conn_stats(b, 7006)["state"] == "ESTABLISHED")
        await asyncio.sleep(0.1)                          # every ACK went out: stack is idle
        transport.abort()
        assert await asyncio.wait_for(client.lost, 10) is None
        exc = await asyncio.wait_for(proto.lost, 10)
        assert isinstance(exc, ConnectionResetError), exc
        server.close()

    with_pair(loop_name, body)


# -- backpressure ----------------------------------------------------------------------------


@pytest.mark.parametrize("loop_name", LOOPS)
def test_pause_resume_writing(loop_name: str) -> None:
    """A fast writer with set_write_buffer_limits gets pause_writing, then resume_writing at
    or below the low-water mark; get_write_buffer_size reports the bytes buffered."""
    high, low = 512 * 1024, 128 * 1024
    chunk = pattern(256 * 1024, seed=3)

    async def body(a: Tunnel, b: Tunnel) -> None:
        servers = Servers()
        server = await b.create_server(servers, 7004)
        transport, client = await connect(a, "10.55.0.2", 7004)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)   # asyncio's
        transport.set_write_buffer_limits(high=high, low=low)
        assert transport.get_write_buffer_limits() == (low, high)
        with pytest.raises(ValueError):
            transport.set_write_buffer_limits(high=1, low=2)
        assert transport.get_write_buffer_size() == 0
        sent = hashlib.sha256()
        total = 0
        while not client.paused.done():                 # synchronous, like asyncio
            assert total < 256 * MB, "pause_writing never came"
            transport.write(chunk)
            sent.update(chunk)
            total += len(chunk)
        buffered = client.paused.result()
        assert buffered > high
        assert transport.get_write_buffer_size() == buffered
        # more writes while paused are buffered, and the size says so exactly
        transport.write(chunk)
        sent.update(chunk)
        total += len(chunk)
        assert transport.get_write_buffer_size() == buffered + len(chunk)
        at_resume = await asyncio.wait_for(client.resumed, 20)
        assert at_resume <= low
        assert client.events.count("pause") == 1 and client.events.count("resume") == 1
        transport.write_eof()
        proto = await servers.next()
        await asyncio.wait_for(proto.eof, 20)
        assert len(proto.data) == total
        assert hashlib.sha256(proto.data).hexdigest() == sent.hexdigest()
        assert transport.get_write_buffer_size() == 0
        transport.close()
        server.close()

    with_pair(loop_name, body)


class PausedAtStart(Recorder):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()                       # type: ignore[attr-defined]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_paused_reader_closes_window_and_stalls_writer(loop_name: str) -> None:
    high, low = 256 * 1024, 64 * 1024
    chunk = pattern(256 * 1024, seed=5)

    async def body(a: Tunnel, b: Tunnel) -> None:
        servers = Servers(PausedAtStart)
        server = await b.create_server(servers, 7005)
        transport, client = await connect(a, "10.55.0.2", 7005)
        transport.set_write_buffer_limits(high=high, low=low)
        proto = await servers.next()
        assert proto.transport is not None and not proto.transport.is_reading()
        local_port = transport.get_extra_info("sockname")[1]
        sent = hashlib.sha256()
        total = 0

        def write() -> None:
            nonlocal total
            transport.write(chunk)
            sent.update(chunk)
            total += len(chunk)

        # Keep writing while the loop runs, until the writer is paused and stays paused.
        while not client.paused.done():
            assert total < 64 * MB, "the writer was never paused"
            write()
            await asyncio.sleep(0)
        # The window closes: the sender sees a zero window. (The receiver's "rcv_wnd" counter
        # is its free ring space, which stays below one segment: window scaling rounds the
        # advertised window down to 0 and the receiver does not offer a silly window.)
        await until(lambda: conn_stats(a, local_port)["snd_wnd"] == 0
                    and conn_stats(b, 7005)["rcv_wnd"] < conn_stats(b, 7005)["mss"])
        # the receiving side holds what its window allowed; nothing reached the protocol
        receiver = conn_stats(b, 7005)
        assert proto.data_calls == 0 and proto.events == ["made"]
        assert receiver["bytes_read"] == 0
        assert 0 < receiver["bytes_received"] <= receiver["receive_buffer"]
        sender = conn_stats(a, local_port)
        assert sender["in_flight"] <= receiver["receive_buffer"]
        assert sender["bytes_acked"] <= receiver["bytes_received"]
        buffered = transport.get_write_buffer_size()
        assert buffered > high
        assert transport.get_write_buffer_size() + sender["bytes_acked"] < total
        # let the stack run (window probes, delayed ACKs): still nothing moves
        for _ in range(5):
            await asyncio.sleep(0.05)
            write()
            buffered += len(chunk)
            assert transport.get_write_buffer_size() == buffered     # grows only by our writes
            now_rx = conn_stats(b, 7005)
            assert now_rx["rcv_wnd"] < now_rx["mss"] and now_rx["bytes_read"] == 0
            assert conn_stats(a, local_port)["snd_wnd"] == 0
            assert now_rx["bytes_received"] <= receiver["receive_buffer"] + 1   # a probe byte
            assert conn_stats(a, local_port)["in_flight"] <= receiver["receive_buffer"] + 1
        assert proto.data_calls == 0
        assert client.events.count("pause") == 1 and not client.resumed.done()
        # resume: everything arrives intact, the writer resumes
        transport.write_eof()
        proto.transport.resume_reading()
        assert proto.transport.is_reading()
        await asyncio.wait_for(proto.eof, 30)
        assert len(proto.data) == total
        assert hashlib.sha256(proto.data).hexdigest() == sent.hexdigest()
        assert await asyncio.wait_for(client.resumed, 10) <= low
        assert proto.order()[:3] == ["made", "data", "eof"]
        transport.close()
        server.close()

    with_pair(loop_name, body)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_resumed_reader_reopens_window_without_probe(loop_name: str) -> None:
    """A StreamReader that pauses its transport (buffer over its limit while the app is busy)
    and then resumes must send the window update at once: the writer never has to wait for its
    persist timer. (Before the fix the update waited for the next socket event, so every pause
    cost a zero-window probe and >= 200 ms.)"""
    data = pattern(4 * MB, seed=11)

    async def body(a: Tunnel, b: Tunnel) -> None:
        got = hashlib.sha256()
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            n = 0
            while chunk := await reader.read(256 * 1024):
                got.update(chunk)
                n += len(chunk)
                await asyncio.sleep(0.02)       # the app is busy; the reader buffer fills
            writer.close()
            done.set_result(n)

        server = await b.start_server(slow_reader, 7011, limit=16 * 1024)
        reader, writer = await a.open_connection("10.55.0.2", 7011)
        local_port = writer.get_extra_info("sockname")[1]
        for off in range(0, len(data), MB):
            writer.write(data[off:off + MB])
            await writer.drain()
        writer.write_eof()
        assert await asyncio.wait_for(done, 60) == len(data)
        assert got.hexdigest() == sha(data)
        sender = conn_stats(a, local_port)
        assert sender["window_probes"] == 0 and sender["timeouts"] == 0, sender
        writer.close()
        server.close()

    with_pair(loop_name, body)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_catch_all_listener_takes_ports_without_their_own(loop_name: str) -> None:
    """Port 0 is the catch-all (the agent forwards such connections to its loopback): it gets
    SYNs for every port without a listener; a port's own listener still wins."""
    async def body(a: Tunnel, b: Tunnel) -> None:
        seen: list[tuple[str, int]] = []

        def handler(tag: str) -> Callable[..., Awaitable[None]]:
            async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                seen.append((tag, writer.get_extra_info("sockname")[1]))
                writer.write(tag.encode())
                writer.close()
            return serve

        catch_all = await b.start_server(handler("any"), 0)
        own = await b.start_server(handler("own"), 7020)
        with pytest.raises(ValueError):
            await b.start_server(handler("x"), 0, host="10.55.0.2")
        for port, want in ((7020, b"own"), (7777, b"any"), (80, b"any")):
            reader, writer = await a.open_connection("10.55.0.2", port)
            assert await asyncio.wait_for(reader.read(), 10) == want
            writer.close()
        assert seen == [("own", 7020), ("any", 7777), ("any", 80)]
        catch_all.close()
        with pytest.raises(ConnectionRefusedError):
            await a.open_connection("10.55.0.2", 7777)
        own.close()

    with_pair(loop_name, body)


# -- errors and server lifecycle -------------------------------------------------------------


@pytest.mark.parametrize("loop_name", LOOPS)
def test_connect_refused_without_listener(loop_name: str) -> None:
    """A SYN to a port nobody listens on is answered with RST: ConnectionRefusedError."""
    async def body(a: Tunnel, b: Tunnel) -> None:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(a.open_connection("10.55.0.2", 9), 10)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(a.create_connection(Recorder, "fd55::2", 9), 10)
        assert a.stats()["tcp"]["connections"] == []     # nothing left behind
        assert b.stats()["tcp"]["drops"]["no_socket"] == 2

    with_pair(loop_name, body)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_connect_refused_after_server_close(loop_name: str) -> None:
    async def body(a: Tunnel, b: Tunnel) -> None:
        for host in (None, "10.55.0.2"):
            server = await b.start_server(echo_handler, 7014, host)
            reader, writer = await a.open_connection("10.55.0.2", 7014)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 10)
            server.close()
            await asyncio.wait_for(server.wait_closed(), 10)
            await until(lambda: all(c["state"] in ("TIME_WAIT", "CLOSED")
                                    for c in b.stats()["tcp"]["connections"]))
            await asyncio.sleep(0.1)                      # let every ACK go: nothing to send
            with pytest.raises(ConnectionRefusedError):
                await asyncio.wait_for(a.open_connection("10.55.0.2", 7014), 10)

    with_pair(loop_name, body)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_connect_errors(loop_name: str) -> None:
    async def body(a: Tunnel, b: Tunnel) -> None:
        with pytest.raises(NoRouteError):
            await a.open_connection("10.99.0.1", 80)
        with pytest.raises(NoRouteError):
            await a.open_connection("fd99::1", 80)
        with pytest.raises(ValueError):
            await a.open_connection("example.com", 80)
        with pytest.raises(ValueError):
            await a.open_connection("localhost", 80)
        with pytest.raises(ValueError):
            await a.create_connection(Recorder, "10.55.0.2", 0)
        with pytest.raises(ValueError):
            await a.create_connection(Recorder, "10.55.0.2", 65536)
        assert a.stats()["tcp"]["connections"] == []      # nothing was opened

    with_pair(loop_name, body)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_server_errors_and_lifecycle(loop_name: str) -> None:
    async def body(a: Tunnel, b: Tunnel) -> None:
        server = await b.start_server(echo_handler, 7010)
        assert server.is_serving()
        assert server.sockets == [("", 7010)]
        assert isinstance(server.get_loop(), asyncio.AbstractEventLoop)
        with pytest.raises(OSError) as info:
            await b.start_server(echo_handler, 7010)
        assert info.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError) as info:
            await b.create_server(Recorder, 7010, "10.55.0.2")
        assert info.value.errno == errno.EADDRINUSE
        with pytest.raises(ValueError):
            await b.start_server(echo_handler, 7011, "10.55.0.1")      # A's address, not B's
        with pytest.raises(ValueError):
            await b.start_server(echo_handler, 7011, "10.99.0.1")
        listeners = b.stats()["tcp"]["listeners"]
        assert [(l["address"], l["port"]) for l in listeners] == [("", 7010)]

        # an open connection survives server.close(); wait_closed waits for it
        reader, writer = await a.open_connection("10.55.0.2", 7010)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        server.close()
        assert not server.is_serving() and server.sockets == []
        server.close()                                   # idempotent
        waiter = asyncio.ensure_future(server.wait_closed())
        writer.write(b"still here")
        assert await asyncio.wait_for(reader.readexactly(10), 10) == b"still here"
        assert not waiter.done()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        await asyncio.wait_for(waiter, 10)
        await asyncio.wait_for(server.wait_closed(), 10)    # again: returns at once
        assert b.stats()["tcp"]["listeners"] == []

        # the port is free again; async with closes the server
        async with await b.start_server(echo_handler, 7010, "10.55.0.2") as server2:
            assert server2.sockets == [("10.55.0.2", 7010)]
            reader, writer = await a.open_connection("10.55.0.2", 7010)
            writer.write(b"abc")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b"abc"
            writer.close()
        assert not server2.is_serving() and server2.sockets == []
        assert b.stats()["tcp"]["listeners"] == []

        # serve_forever: cancelled -> closed
        server3 = await b.start_server(echo_handler, 7012)
        task = asyncio.ensure_future(server3.serve_forever())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert not server3.is_serving()

    with_pair(loop_name, body)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_close_tunnel_while_connect_pending(loop_name: str) -> None:
    async def main() -> None:
        a, b = await started_pair()
        try:
            await handshake(a, b)
            await b.close()                               # nobody will answer the SYN now
            task = asyncio.ensure_future(a.open_connection("10.55.0.2", 80))
            await until(lambda: len(a.stats()["tcp"]["connections"]) == 1)
            assert a.stats()["tcp"]["connections"][0]["state"] == "SYN_SENT"
            assert not task.done()
            await a.close()
            with pytest.raises(TunnelClosedError):
                await asyncio.wait_for(task, 10)
            with pytest.raises(TunnelClosedError):
                await a.open_connection("10.55.0.2", 80)
            with pytest.raises(TunnelClosedError):
                await a.start_server(echo_handler, 80)
        finally:
            await a.close()
            await b.close()
    run(loop_name, main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_close_tunnel_with_open_connections(loop_name: str) -> None:
    """Closing a Tunnel ends its connections (connection_lost) and resets the peer's."""
    async def main() -> None:
        a, b = await started_pair()
        try:
            await handshake(a, b)
            servers = Servers()
            await b.create_server(servers, 7013)
            transport, client = await connect(a, "10.55.0.2", 7013)
            proto = await servers.next()
            await a.close()
            await asyncio.wait_for(client.lost, 10)
            exc = await asyncio.wait_for(proto.lost, 10)
            assert isinstance(exc, ConnectionResetError), exc
            assert transport.is_closing()
        finally:
            await a.close()
            await b.close()
    run(loop_name, main())


# -- scale, stats, misbehaving protocols -------------------------------------------------------


@pytest.mark.parametrize("loop_name", LOOPS)
def test_100_concurrent_connections(loop_name: str) -> None:
    async def body(a: Tunnel, b: Tunnel) -> None:
        server = await b.start_server(echo_handler, 7020)

        async def one(i: int) -> None:
            data = pattern(100 * 1000, seed=i)
            host = "fd55::2" if i % 2 else "10.55.0.2"
            reader, writer = await a.open_connection(host, 7020)
            writer.write(data)
            writer.write_eof()
            got = await reader.read()
            assert len(got) == len(data) and got == data, i
            writer.close()
            await writer.wait_closed()

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(100))), 50)
        conns = a.stats()["tcp"]["connections"]
        # the client sent the first FIN, so all 100 sit in TIME_WAIT, each its own 4-tuple
        assert len(conns) == 100 and {c["state"] for c in conns} == {"TIME_WAIT"}
        assert len({(c["local"], c["remote"]) for c in conns}) == 100
        assert b.stats()["tcp"]["listeners"][0]["accepted"] == 100
        server.close()
        await asyncio.wait_for(server.wait_closed(), 20)

    with_pair(loop_name, body)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_stats_tcp(loop_name: str) -> None:
    async def body(a: Tunnel, b: Tunnel) -> None:
        server = await b.start_server(echo_handler, 7030)
        reader, writer = await a.open_connection("10.55.0.2", 7030)
        data = pattern(2 * MB, seed=9)
        writer.write(data)
        assert await asyncio.wait_for(reader.readexactly(len(data)), 20) == data
        port = writer.get_extra_info("sockname")[1]
        # the last (possibly delayed) ACKs settle
        await until(lambda: conn_stats(a, port)["bytes_acked"] == len(data)
                    and conn_stats(b, 7030)["bytes_acked"] == len(data))
        stats = a.stats()["tcp"]
        for key in ("segments_in", "segments_out", "resets_sent", "connections_opened",
                    "non_tcp", "drops", "connections", "listeners"):
            assert key in stats, key
        assert stats["segments_out"] > 0 and stats["segments_in"] > 0
        assert stats["connections_opened"] >= 1
        assert isinstance(stats["drops"], dict)
        assert stats["listeners"] == []
        (conn,) = stats["connections"]
        assert conn["state"] == "ESTABLISHED"
        assert conn["local"] == ("10.55.0.1", port) and conn["remote"] == ("10.55.0.2", 7030)
        assert conn["cwnd"] > 0 and conn["srtt"] > 0
        assert conn["retransmits"] >= 0
        assert conn["bytes_sent"] >= len(data) and conn["bytes_acked"] == len(data)
        assert conn["bytes_received"] == len(data) and conn["bytes_read"] == len(data)
        assert conn["mss"] > 0 and conn["rcv_wnd"] > 0
        served = conn_stats(b, 7030)
        assert served["state"] == "ESTABLISHED"
        assert served["remote"] == ("10.55.0.1", port)
        assert served["bytes_received"] == len(data) and served["bytes_acked"] == len(data)
        (listener,) = b.stats()["tcp"]["listeners"]
        assert listener["address"] == "" and listener["port"] == 7030
        assert listener["accepted"] == 1 and listener["pending"] == 0
        assert listener["half_open"] == 0 and listener["syn_received"] >= 1
        writer.close()
        await writer.wait_closed()
        await until(lambda: all(c["state"] != "ESTABLISHED"
                                for c in a.stats()["tcp"]["connections"]))
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)

    with_pair(loop_name, body)


class RaisesOnBoom(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if b"boom" in data:
            raise RuntimeError("protocol bug")
        assert self.transport is not None
        self.transport.write(data)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_protocol_exception_aborts_only_that_connection(
        loop_name: str, caplog: pytest.LogCaptureFixture) -> None:
    async def body(a: Tunnel, b: Tunnel) -> None:
        servers = Servers(RaisesOnBoom)
        server = await b.create_server(servers, 7040)
        good_r, good_w = await a.open_connection("10.55.0.2", 7040)
        good_w.write(b"one")
        assert await asyncio.wait_for(good_r.readexactly(3), 10) == b"one"
        bad_r, bad_w = await a.open_connection("10.55.0.2", 7040)
        bad_w.write(b"boom")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(bad_r.read(100), 10)
        good_proto = await servers.next()
        bad_proto = await servers.next()
        assert await asyncio.wait_for(bad_proto.lost, 10) is None
        assert not good_proto.lost.done()
        # the other connection, the server and the tunnel carry on
        good_w.write(b"two")
        assert await asyncio.wait_for(good_r.readexactly(3), 10) == b"two"
        r3, w3 = await a.open_connection("10.55.0.2", 7040)
        w3.write(b"three")
        assert await asyncio.wait_for(r3.readexactly(5), 10) == b"three"
        assert any("protocol bug" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
        for w in (good_w, w3):
            w.close()
        server.close()

    with caplog.at_level(logging.ERROR, logger="agentconn.tcp"):
        with_pair(loop_name, body)
