"""Which of a VNC viewer's bytes are input, for the desktop's activity clock: sans-IO.

Theory of operation
-------------------
Recordings end after a period without desktop activity (agent-api.md §11.2–11.3: every action
counts). A person working through a VNC viewer is activity too, but a viewer that only watches
is not: it keeps asking for framebuffer updates all the same. So the VNC bridge, which copies the
viewer's RFB bytes to Xvnc without looking at them, lets :class:`RfbInputScanner` read along the
client→server half of RFB (RFC 6143 §7.1–7.5) and count the messages that are input:
KeyEvent, PointerEvent, ClientCutText, and QEMU's extended KeyEvent.

The scanner only tracks message boundaries: the ProtocolVersion (12 bytes; version 3.3 has no
security-type byte from the client), the security type (None; VncAuth's 16-byte response),
ClientInit (1 byte), then messages whose length it knows from their type (the RFC 6143 ones and
the registered extensions TigerVNC speaks: EnableContinuousUpdates, Fence, SetDesktopSize, xvp,
QEMU's key event). Bodies are skipped by count, never buffered: memory is one header (≤ 12
bytes) whatever the viewer sends. A message it cannot size (an unknown type or security type)
loses the boundaries for good; from then on every piece of the viewer's bytes counts as input,
erring on the side of keeping a recording that someone may be using.
"""

from __future__ import annotations

import enum

__all__ = ["RfbInputScanner"]

# RFC 6143 §7.5 client-to-server message types, and registered extensions (§7.7 / the RFB
# protocol community registry).
SET_PIXEL_FORMAT = 0
SET_ENCODINGS = 2
FRAMEBUFFER_UPDATE_REQUEST = 3
KEY_EVENT = 4
POINTER_EVENT = 5
CLIENT_CUT_TEXT = 6
ENABLE_CONTINUOUS_UPDATES = 150
CLIENT_FENCE = 248
SET_DESKTOP_SIZE = 251
XVP = 252
QEMU = 255
QEMU_EXTENDED_KEY_EVENT = 0

# RFC 6143 §7.2.1 security types.
SECURITY_NONE = 1
SECURITY_VNC_AUTH = 2


class _Phase(enum.Enum):
    VERSION = "version"        # ProtocolVersion, 12 bytes
    SECURITY = "security"      # the chosen security type, 1 byte (3.7 and later)
    VNC_AUTH = "vnc_auth"      # VncAuth's DES response, 16 bytes
    CLIENT_INIT = "client_init"  # shared flag, 1 byte
    MESSAGES = "messages"
    LOST = "lost"              # boundaries unknown: everything counts


#: Fixed-size messages: type -> (length, is input).
_FIXED = {
    SET_PIXEL_FORMAT: (20, False),
    FRAMEBUFFER_UPDATE_REQUEST: (10, False),
    KEY_EVENT: (8, True),
    POINTER_EVENT: (6, True),
    ENABLE_CONTINUOUS_UPDATES: (10, False),
    XVP: (4, False),
}


class RfbInputScanner:
    """Reads along a viewer's RFB byte stream; :meth:`receive_data` counts input messages."""

    __slots__ = ("_phase", "_head", "_skip", "inputs")

    def __init__(self) -> None:
        self._phase = _Phase.VERSION
        self._head = bytearray()  # the start of a message whose length is not known yet
        self._skip = 0            # bytes of the current message still to pass over
        #: Input messages seen so far.
        self.inputs = 0

    @property
    def lost(self) -> bool:
        """True once the message boundaries are lost (every byte counts from then on)."""
        return self._phase is _Phase.LOST

    def receive_data(self, data: bytes | bytearray | memoryview) -> int:
        """Scan the next bytes the viewer sent; returns how many input messages begin in them
        (a message counts once its type is known; 1 for any bytes once the boundaries are
        lost)."""
        view = memoryview(data)
        end = len(view)
        pos = 0
        found = 0
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                pos += step
                self._skip -= step
                continue
            if self._phase is _Phase.LOST:
                found += 1
                break
            self._head.append(view[pos])
            pos += 1
            size = self._measure()
            if size is None:
                if self.lost:  # this byte began a message we cannot size
                    found += 1
                    break
                continue  # more of the header is needed
            is_input, total = size
            self._skip = total - len(self._head)
            self._head.clear()
            if is_input:
                found += 1
        self.inputs += found
        return found

    def _measure(self) -> tuple[bool, int] | None:
        """(is input, total length) of the message starting in ``_head``, once known; moves
        through the handshake phases."""
        head, n = self._head, len(self._head)
        phase = self._phase
        if phase is _Phase.MESSAGES:
            kind = head[0]
            fixed = _FIXED.get(kind)
            if fixed is not None:
                return fixed[1], fixed[0]
            if kind == SET_ENCODINGS:
                return None if n < 4 else (False, 4 + 4 * int.from_bytes(head[2:4], "big"))
            if kind == CLIENT_CUT_TEXT:
                if n < 8:
                    return None
                # the Extended Clipboard pseudo-encoding sends a negative length
                length = abs(int.from_bytes(head[4:8], "big", signed=True))
                return True, 8 + length
            if kind == CLIENT_FENCE:
                return None if n < 9 else (False, 9 + head[8])
            if kind == SET_DESKTOP_SIZE:
                return None if n < 8 else (False, 8 + 16 * head[6])
            if kind == QEMU:
                if n < 2:
                    return None
                if head[1] == QEMU_EXTENDED_KEY_EVENT:
                    return True, 12
            self._lose()
            return None
        if phase is _Phase.VERSION:
            if n < 12:
                return None
            try:
                major, minor = int(head[4:7]), int(head[8:11])
            except ValueError:
                self._lose()
                return None
            # RFC 6143 §7.1.1: 3.3 (and the unofficial 3.5) have the server pick the type
            self._phase = (_Phase.CLIENT_INIT if (major, minor) < (3, 7) else _Phase.SECURITY)
            return False, 12
        if phase is _Phase.SECURITY:
            if head[0] == SECURITY_NONE:
                self._phase = _Phase.CLIENT_INIT
            elif head[0] == SECURITY_VNC_AUTH:
                self._phase = _Phase.VNC_AUTH
            else:
                self._lose()
                return None
            return False, 1
        if phase is _Phase.VNC_AUTH:
            self._phase = _Phase.CLIENT_INIT
            return False, 16
        assert phase is _Phase.CLIENT_INIT
        self._phase = _Phase.MESSAGES
        return False, 1

    def _lose(self) -> None:
        self._phase = _Phase.LOST
        self._head.clear()
