"""A tiny RFB 3.8 client (RFC 6143) for tests and benchmarks, over any asyncio stream pair.

Just enough of a VNC viewer: security type None, 32-bit true-colour little-endian pixels
(red at bit 16, so the bytes are B, G, R, X), the Raw encoding, and the Cursor pseudo-encoding
(so the server does not paint its pointer into the framebuffer and captures compare equal to
an X GetImage of the same screen).
"""

from __future__ import annotations

import asyncio
import struct

from PIL import Image

# RFC 6143 §7.5/§7.6 message types and §7.7 encodings.
SET_PIXEL_FORMAT, SET_ENCODINGS, FB_UPDATE_REQUEST, KEY_EVENT, POINTER_EVENT = 0, 2, 3, 4, 5
FB_UPDATE, SET_COLOUR_MAP, BELL, SERVER_CUT_TEXT = 0, 1, 2, 3
RAW, CURSOR = 0, -239
SECURITY_NONE = 1
# 32 bpp, depth 24, little-endian, true colour, 255/255/255, shifts 16/8/0 (§7.4).
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)


class RfbError(RuntimeError):
    pass


class RfbClient:
    """``await RfbClient.open(reader, writer)``: handshake done, Raw + Cursor negotiated."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.width = self.height = 0
        self.name = ""
        self.framebuffer = bytearray()
        self.bytes_received = 0

    @classmethod
    async def open(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   *, shared: bool = True) -> RfbClient:
        client = cls(reader, writer)
        await client._handshake(shared)
        return client

    async def _exactly(self, n: int) -> bytes:
        data = await self.reader.readexactly(n)
        self.bytes_received += n
        return data

    async def _handshake(self, shared: bool) -> None:
        version = await self._exactly(12)
        if not version.startswith(b"RFB 003."):
            raise RfbError(f"not an RFB server: {version!r}")
        self.writer.write(b"RFB 003.008\n")
        count = (await self._exactly(1))[0]
        if count == 0:
            raise RfbError(await self._reason())
        types = await self._exactly(count)
        if SECURITY_NONE not in types:
            raise RfbError(f"server offers security types {list(types)}, not None")
        self.writer.write(bytes([SECURITY_NONE]))
        (result,) = struct.unpack(">I", await self._exactly(4))
        if result != 0:
            raise RfbError(await self._reason())
        self.writer.write(bytes([1 if shared else 0]))  # ClientInit
        self.width, self.height = struct.unpack(">HH", await self._exactly(4))
        await self._exactly(16)  # the server's pixel format
        (name_len,) = struct.unpack(">I", await self._exactly(4))
        self.name = (await self._exactly(name_len)).decode("utf-8", "replace")
        self.framebuffer = bytearray(self.width * self.height * 4)
        self.writer.write(struct.pack(">B3x", SET_PIXEL_FORMAT) + PIXEL_FORMAT)
        self.writer.write(struct.pack(">BxHii", SET_ENCODINGS, 2, RAW, CURSOR))
        await self.writer.drain()

    async def _reason(self) -> str:
        (n,) = struct.unpack(">I", await self._exactly(4))
        return (await self._exactly(n)).decode("utf-8", "replace")

    def request(self, *, incremental: bool = False) -> None:
        """Ask for an update of the whole screen (written, not drained)."""
        self.writer.write(struct.pack(">BBHHHH", FB_UPDATE_REQUEST, int(incremental), 0, 0,
                                      self.width, self.height))

    async def read_update(self) -> int:
        """Read server messages up to and including one FramebufferUpdate; apply its Raw
        rectangles to :attr:`framebuffer`. Returns the pixel bytes it carried."""
        while True:
            kind = (await self._exactly(1))[0]
            if kind == FB_UPDATE:
                break
            if kind == BELL:
                continue
            if kind == SERVER_CUT_TEXT:
                await self._exactly(3)
                await self._exactly(struct.unpack(">I", await self._exactly(4))[0])
                continue
            if kind == SET_COLOUR_MAP:
                _, _, n = struct.unpack(">xHH", await self._exactly(5))
                await self._exactly(6 * n)
                continue
            raise RfbError(f"unexpected server message type {kind}")
        (rects,) = struct.unpack(">xH", await self._exactly(3))
        pixels = 0
        stride = self.width * 4
        for _ in range(rects):
            x, y, w, h, encoding = struct.unpack(">HHHHi", await self._exactly(12))
            if encoding == RAW:
                data = await self._exactly(w * h * 4)
                pixels += len(data)
                row = w * 4
                if x == 0 and w == self.width:  # whole rows: one copy
                    self.framebuffer[y * stride:(y + h) * stride] = data
                    continue
                view = memoryview(data)
                for i in range(h):
                    at = (y + i) * stride + x * 4
                    self.framebuffer[at:at + row] = view[i * row:(i + 1) * row]
            elif encoding == CURSOR:
                await self._exactly(w * h * 4 + (w + 7) // 8 * h)
            else:
                raise RfbError(f"unexpected encoding {encoding}")
        return pixels

    async def capture(self) -> Image.Image:
        """One full, non-incremental update, as an RGB image."""
        self.request(incremental=False)
        await self.writer.drain()
        await self.read_update()
        return self.image()

    def image(self) -> Image.Image:
        return Image.frombuffer("RGB", (self.width, self.height), bytes(self.framebuffer),
                                "raw", "BGRX", 0, 1)

    def pointer(self, x: int, y: int, buttons: int = 0) -> None:
        self.writer.write(struct.pack(">BBHH", POINTER_EVENT, buttons, x, y))

    def key(self, keysym: int, down: bool) -> None:
        self.writer.write(struct.pack(">BBxxI", KEY_EVENT, int(down), keysym))

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
