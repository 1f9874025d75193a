"""The Go yamux peer (``yamux_peer/main.go``) as an asyncio helper, and its test pattern."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from agentconn.coder.yamux import Config, Role
from agentconn.coder.yamux_aio import YamuxSession, YamuxStream, yamux_over_streams

PERIOD = 65521
_BLOCK = bytes((i * i * 7 + i * 13) % 251 for i in range(PERIOD))


def pattern(n: int) -> bytes:
    """The peer's deterministic bytes: ``(i*i*7 + i*13) % 251`` over 65521, repeated."""
    reps, rest = divmod(n, PERIOD)
    return _BLOCK * reps + _BLOCK[:rest]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class SessionPair:
    """Our yamux client and server sessions over one connection."""

    client: YamuxSession
    server: YamuxSession


class GoPeer:
    """Runs the Go peer against one of our sessions.

    ``our_role`` CLIENT: the Go program listens (yamux.Server) and we dial.
    ``our_role`` SERVER: we listen and the Go program dials (yamux.Client).
    """

    def __init__(
        self,
        binary: Path,
        our_role: Role,
        *,
        keepalive: str = "30s",
        config: Config | None = None,
    ) -> None:
        self.binary = binary
        self.our_role = our_role
        self.keepalive = keepalive
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.session: YamuxSession | None = None
        self.stderr = b""

    async def __aenter__(self) -> Self:
        args = [str(self.binary), "-keepalive", self.keepalive]
        if self.our_role is Role.CLIENT:
            self.proc = await asyncio.create_subprocess_exec(
                *args,
                "server",
                "127.0.0.1:0",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert self.proc.stdout is not None
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 10)).decode()
            host, port = line.split()[1].rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            self.session = yamux_over_streams(reader, writer, Role.CLIENT, self.config)
        else:
            accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
                asyncio.get_running_loop().create_future()
            )

            async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                if not accepted.done():
                    accepted.set_result((r, w))

            server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            self.proc = await asyncio.create_subprocess_exec(
                *args,
                "client",
                f"127.0.0.1:{port}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                reader, writer = await asyncio.wait_for(accepted, 10)
            finally:
                server.close()
            self.session = yamux_over_streams(reader, writer, Role.SERVER, self.config)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
            assert self.proc.stderr is not None
            self.stderr = await self.proc.stderr.read()

    async def command(self, line: str) -> YamuxStream:
        """Open a stream and send the command line; returns the stream."""
        assert self.session is not None
        stream = await self.session.open_stream()
        stream.write(line.encode() + b"\n")
        await stream.drain()
        return stream

    async def ask(self, line: str) -> str:
        """Send a command, half-close, return the whole answer as text."""
        stream = await self.command(line)
        stream.write_eof()
        answer = await asyncio.wait_for(stream.read(), 20)
        return answer.decode()
