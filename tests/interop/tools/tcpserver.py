"""A kernel-side TCP server for interop tests; runs inside a test namespace (`ip netns exec`).

usage: python tcpserver.py PORT HOST [HOST ...]

Each connection starts with one command line:

  UP <n>\\n followed by n bytes  -> replies "<sha256 hex of those n bytes>\\n", then closes
  DOWN <n> <seed>\\n             -> sends random.Random(seed).randbytes(n), then closes
  ECHO\\n                        -> echoes every byte until EOF, then closes

Prints "ready" once it listens on every HOST (backlog 1024), then serves until killed.
Errors are printed to stderr, one line per failed connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys

CHUNK = 1 << 16


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    try:
        command = (await reader.readline()).decode("ascii").split()
        if command[:1] == ["UP"]:
            remaining = int(command[1])
            digest = hashlib.sha256()
            while remaining:
                chunk = await reader.read(min(remaining, CHUNK))
                if not chunk:
                    raise EOFError(f"UP: EOF with {remaining} bytes missing")
                digest.update(chunk)
                remaining -= len(chunk)
            writer.write(digest.hexdigest().encode() + b"\n")
        elif command[:1] == ["DOWN"]:
            data = random.Random(int(command[2])).randbytes(int(command[1]))
            for i in range(0, len(data), CHUNK):
                writer.write(data[i : i + CHUNK])
                await writer.drain()
        elif command[:1] == ["ECHO"]:
            while chunk := await reader.read(CHUNK):
                writer.write(chunk)
                await writer.drain()
        else:
            raise ValueError(f"unknown command {command!r}")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    except Exception as e:  # noqa: BLE001 - report and go on serving the others
        print(f"{peer}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        writer.transport.abort()


async def main() -> None:
    port, hosts = int(sys.argv[1]), sys.argv[2:]
    servers = [
        await asyncio.start_server(handle, host, port, backlog=1024, reuse_address=True)
        for host in hosts
    ]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
