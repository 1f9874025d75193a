"""The agent's X connection to its desktop: input through XTEST, pixels through GetImage.

Theory of operation: one :class:`XDisplay` holds the agent's only python-xlib connection to
the Xvnc server. python-xlib is blocking and not thread-safe, so the object is used from one
dedicated thread (:class:`~agentconn.agent.desktop.session.DesktopSession` owns it and funnels
every call through a single-worker executor, which serialises them like a lock); each method
ends with a round trip (``sync``) so an X error surfaces as :class:`XError` from the call
that caused it, never later.

* Input is injected with the XTEST extension's ``FakeInput``: real key, button and motion
  events, indistinguishable from a physical device (unlike ``SendEvent``, which many clients,
  xterm among them, ignore).
* Keys: a keysym is produced by a keycode that carries it unshifted, or shifted with Shift
  held around it. A keysym no keycode carries (``€`` on a US keymap) is typed the way xdotool
  does it: a spare keycode (one with no keysym) is borrowed with ``ChangeKeyboardMapping``,
  pressed, and given back afterwards. Clients re-read the mapping lazily after the
  ``MappingNotify`` that precedes the key event, so the mapping is restored only after
  :data:`RESTORE_DELAY`; borrowed keycodes are used round-robin so one action typing several
  such characters never rewrites a keycode whose event may still be in flight.
* Pixels: ``GetImage`` in ZPixmap format, in horizontal strips of about 256 KiB (python-xlib
  concatenates reply buffers, so one 8 MB reply costs more than thirty small ones). The
  desktop runs at depth 24, whose pixels are 32-bit ``BGRX`` (LSB-first servers) in memory.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from Xlib import X, display, error
from Xlib.ext import xtest

from agentconn.agent.desktop.keys import XK_SHIFT_L, Keymap

__all__ = ["RESTORE_DELAY", "XDisplay", "XError", "write_xauthority"]

#: Seconds a borrowed keycode keeps its keysym after its last key event (see module doc).
RESTORE_DELAY = 0.1
#: Bytes per GetImage request when capturing the screen.
_STRIP_BYTES = 256 * 1024

_FAMILY_LOCAL = 256  # Xauth families (X11 Xauth.h): a unix-socket host, and "any address"
_FAMILY_WILD = 0xFFFF
_COOKIE_NAME = b"MIT-MAGIC-COOKIE-1"

# python-xlib reads $XAUTHORITY while connecting; the process environment is shared, so the
# override below is serialised.
_XAUTHORITY_LOCK = threading.Lock()


class XError(RuntimeError):
    """The X server refused a request or the connection to it broke."""


def write_xauthority(path: str, cookie: bytes) -> None:
    """Write an Xauthority file granting ``cookie`` (MIT-MAGIC-COOKIE-1) on any display.

    Two entries, both with an empty display number (any display): one for any address (what
    Xvnc's ``-auth`` and libXau clients such as ffmpeg match) and one for this host's unix
    sockets (what python-xlib matches). Created with mode 0600.
    """
    def entry(family: int, address: bytes) -> bytes:
        fields = (address, b"", _COOKIE_NAME, cookie)
        return struct.pack(">H", family) + b"".join(
            struct.pack(">H", len(f)) + f for f in fields)

    data = entry(_FAMILY_WILD, b"") + entry(_FAMILY_LOCAL, socket.gethostname().encode())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@contextmanager
def _xauthority(path: str) -> Iterator[None]:
    with _XAUTHORITY_LOCK:
        old = os.environ.get("XAUTHORITY")
        os.environ["XAUTHORITY"] = path
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("XAUTHORITY", None)
            else:
                os.environ["XAUTHORITY"] = old


class XDisplay:
    """The connection to display ``name`` (``":N"``) authorised by the file ``xauthority``.

    Use it from one thread only. Every method raises :class:`XError` on failure.
    """

    def __init__(self, name: str, xauthority: str) -> None:
        try:
            with _xauthority(xauthority):
                self._d = display.Display(name)
        except (error.DisplayError, OSError) as e:
            raise XError(f"cannot connect to X display {name}: {e}") from e
        self._errors: list[str] = []
        self._d.set_error_handler(self._on_error)
        if not self._d.has_extension("XTEST"):
            self._d.close()
            raise XError(f"X display {name} lacks the XTEST extension")
        screen = self._d.screen()
        self._root = screen.root
        self.width: int = screen.width_in_pixels
        self.height: int = screen.height_in_pixels
        if screen.root_depth != 24:
            self._d.close()
            raise XError(f"X display {name} has depth {screen.root_depth}, not 24")
        lsb = self._d.display.info.image_byte_order == X.LSBFirst
        #: Pillow's raw mode for the 32-bit pixels GetImage returns.
        self.pixel_mode = "BGRX" if lsb else "XRGB"
        info = self._d.display.info
        count = info.max_keycode - info.min_keycode + 1
        self._keymap = Keymap(info.min_keycode,
                              self._d.get_keyboard_mapping(info.min_keycode, count))
        self._spares = self._keymap.spare_keycodes()
        self._next_spare = 0
        self._borrowed: dict[int, int] = {}       # keycode → keysym lent to it
        self._borrowed_at: dict[int, float] = {}  # keycode → monotonic time of its last use
        self._down: dict[int, tuple[int, bool]] = {}  # keysym → (keycode, shifted) held down

    def _on_error(self, err: error.XError, request: object = None) -> None:
        self._errors.append(str(err))

    def _sync(self) -> None:
        """Round-trip: raise the first X error since the last sync; drop queued events."""
        try:
            self._d.sync()
            while self._d.pending_events():
                self._d.next_event()  # MappingNotify after our keymap changes; nothing else
        except (error.ConnectionClosedError, OSError) as e:
            raise XError(f"X connection lost: {e}") from e
        if self._errors:
            errors, self._errors = self._errors, []
            raise XError("X request failed: " + "; ".join(errors))

    def close(self) -> None:
        """Give back borrowed keycodes (best effort) and close the connection."""
        try:
            self.restore_keycodes(wait=False)
        except XError:
            pass
        try:
            self._d.close()
        except (error.ConnectionClosedError, OSError):
            pass

    # -- pointer ------------------------------------------------------------------------------

    def pointer(self) -> tuple[int, int]:
        """The pointer's position in native pixels."""
        try:
            reply = self._root.query_pointer()
        except (error.ConnectionClosedError, OSError) as e:
            raise XError(f"X connection lost: {e}") from e
        return int(reply.root_x), int(reply.root_y)

    def move(self, x: int, y: int) -> None:
        """Move the pointer to (``x``, ``y``) (native pixels)."""
        xtest.fake_input(self._d, X.MotionNotify, x=x, y=y)
        self._sync()

    def button(self, button: int, *, press: bool = True, release: bool = True,
               count: int = 1) -> None:
        """Press and/or release ``button`` (1 left, 2 middle, 3 right, 4-7 wheel), ``count``
        times."""
        for _ in range(count):
            if press:
                xtest.fake_input(self._d, X.ButtonPress, button)
            if release:
                xtest.fake_input(self._d, X.ButtonRelease, button)
        self._sync()

    def drag(self, start: tuple[int, int], end: tuple[int, int], steps: int = 8) -> None:
        """Press the left button at ``start``, move in ``steps`` to ``end``, release there."""
        xtest.fake_input(self._d, X.MotionNotify, x=start[0], y=start[1])
        xtest.fake_input(self._d, X.ButtonPress, 1)
        for i in range(1, steps + 1):
            x = start[0] + (end[0] - start[0]) * i // steps
            y = start[1] + (end[1] - start[1]) * i // steps
            xtest.fake_input(self._d, X.MotionNotify, x=x, y=y)
        xtest.fake_input(self._d, X.ButtonRelease, 1)
        self._sync()

    # -- keys ---------------------------------------------------------------------------------

    def _keycode(self, keysym: int) -> tuple[int, bool]:
        found = self._keymap.lookup(keysym)
        if found is not None:
            return found
        for keycode, lent in self._borrowed.items():
            if lent == keysym:
                return keycode, False
        return self._borrow(keysym), False

    def _borrow(self, keysym: int) -> int:
        held = {keycode for keycode, _ in self._down.values()}
        free = [k for k in self._spares if k not in held]
        if not free:
            raise XError(f"no spare keycode to type keysym 0x{keysym:x}")
        keycode = free[self._next_spare % len(free)]
        self._next_spare += 1
        last = self._borrowed_at.get(keycode)
        if last is not None:  # its previous keysym's event may still be in flight
            time.sleep(max(0.0, last + RESTORE_DELAY - time.monotonic()))
        row = [keysym, keysym] + [X.NoSymbol] * (self._keymap.keysyms_per_keycode - 2)
        self._d.change_keyboard_mapping(keycode, [row])
        self._keymap.set_row(keycode, row)
        self._borrowed[keycode] = keysym
        return keycode

    def _fake_key(self, keycode: int, press: bool) -> None:
        xtest.fake_input(self._d, X.KeyPress if press else X.KeyRelease, keycode)
        if keycode in self._borrowed:
            self._borrowed_at[keycode] = time.monotonic()

    def key(self, keysyms: Sequence[int], *, press: bool = True, release: bool = True) -> None:
        """Press ``keysyms`` in order and/or release them in reverse (one combo).

        A keysym on a keycode's shifted level gets Shift around it unless the combo holds
        Shift already. Keys pressed without release stay down (``key_down``) until a release
        of the same keysyms.
        """
        shift = self._keymap.lookup(XK_SHIFT_L)
        if shift is None:
            raise XError("the keyboard mapping has no Shift_L")
        plan: list[tuple[int, int, bool]] = []  # (keysym, keycode, shifted) in press order
        for keysym in keysyms:
            keycode, shifted = self._down.get(keysym) or self._keycode(keysym)
            if shifted and XK_SHIFT_L not in [k for k, _, _ in plan]:
                plan.append((XK_SHIFT_L, shift[0], False))
            plan.append((keysym, keycode, shifted))
        if press:
            for keysym, keycode, shifted in plan:
                self._fake_key(keycode, True)
                if not release:
                    self._down[keysym] = (keycode, shifted)
        if release:
            for keysym, keycode, _ in reversed(plan):
                self._fake_key(keycode, False)
                self._down.pop(keysym, None)
        self._sync()

    def type_keysyms(self, keysyms: Sequence[int]) -> None:
        """Type each keysym in turn (press and release), Shift as needed."""
        for keysym in keysyms:
            self.key((keysym,))

    def restore_keycodes(self, *, wait: bool = True) -> None:
        """Give borrowed keycodes not held down back their empty mapping.

        ``wait``: first let :data:`RESTORE_DELAY` pass since their last key event.
        """
        held = {keycode for keycode, _ in self._down.values()}
        idle = [k for k in self._borrowed if k not in held]
        if not idle:
            return
        if wait:
            last = max(self._borrowed_at.get(k, 0.0) for k in idle)
            time.sleep(max(0.0, last + RESTORE_DELAY - time.monotonic()))
        empty = [X.NoSymbol] * self._keymap.keysyms_per_keycode
        for keycode in idle:
            self._d.change_keyboard_mapping(keycode, [empty])
            self._keymap.set_row(keycode, empty)
            del self._borrowed[keycode]
        self._sync()

    # -- pixels -------------------------------------------------------------------------------

    def capture(self) -> tuple[bytes, str]:
        """The whole screen as 32-bit pixels, row after row, and their Pillow raw mode
        (:attr:`pixel_mode`)."""
        rows = max(1, _STRIP_BYTES // (self.width * 4))
        strips: list[bytes] = []
        try:
            for y in range(0, self.height, rows):
                image = self._root.get_image(0, y, self.width, min(rows, self.height - y),
                                             X.ZPixmap, 0xFFFFFFFF)
                strips.append(image.data)
        except (error.ConnectionClosedError, OSError) as e:
            raise XError(f"X connection lost: {e}") from e
        except error.XError as e:
            raise XError(f"GetImage failed: {e}") from e
        return b"".join(strips), self.pixel_mode
