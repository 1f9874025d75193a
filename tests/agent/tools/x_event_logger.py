"""A tiny X client for the desktop tests: one full-screen window that logs input as JSON lines.

Run with DISPLAY and XAUTHORITY of the desktop. It maps an override-redirect window covering
the screen (no window manager needed), prints ``{"ready": true}`` once mapped, then one line
per event (the keyboard focus stays the server's default, PointerRoot: keys go to the window
under the pointer, so a test can also type into a window stacked above this one):

  {"type": "key", "press": true, "keysym": 99, "char": "c", "state": 4, "time": 1234}
  {"type": "button", "press": true, "button": 1, "x": 201, "y": 101, "time": 1240}
  {"type": "motion", "x": 10, "y": 20}

``char`` is what the key types under the current keyboard mapping (Shift respected), ``""``
for keys that type nothing. It follows keymap changes (MappingNotify), as real clients do.
"""

from __future__ import annotations

import json
import sys

from Xlib import XK, X, display


def keysym_char(keysym: int) -> str:
    if keysym & 0xFF000000 == 0x01000000:  # Unicode keysym
        return chr(keysym & 0xFFFFFF)
    if 0x20 <= keysym <= 0x7E or 0xA0 <= keysym <= 0xFF:
        return chr(keysym)
    return {XK.XK_Return: "\n", XK.XK_Tab: "\t"}.get(keysym, "")


def main() -> None:
    d = display.Display()
    screen = d.screen()
    win = screen.root.create_window(
        0, 0, screen.width_in_pixels, screen.height_in_pixels, 0, screen.root_depth,
        X.InputOutput, X.CopyFromParent, background_pixel=screen.white_pixel,
        override_redirect=True,
        event_mask=(X.KeyPressMask | X.KeyReleaseMask | X.ButtonPressMask
                    | X.ButtonReleaseMask | X.PointerMotionMask | X.StructureNotifyMask))
    win.map()
    out = sys.stdout
    while True:
        e = d.next_event()
        if e.type == X.MapNotify:
            print(json.dumps({"ready": True}), file=out, flush=True)
        elif e.type == X.MappingNotify:
            d.refresh_keyboard_mapping(e)
        elif e.type in (X.KeyPress, X.KeyRelease):
            shifted = bool(e.state & X.ShiftMask)
            keysym = d.keycode_to_keysym(e.detail, 1 if shifted else 0)
            if not keysym:
                keysym = d.keycode_to_keysym(e.detail, 0)
            print(json.dumps({"type": "key", "press": e.type == X.KeyPress, "keysym": keysym,
                              "char": keysym_char(keysym), "state": e.state,
                              "time": e.time}), file=out, flush=True)
        elif e.type in (X.ButtonPress, X.ButtonRelease):
            print(json.dumps({"type": "button", "press": e.type == X.ButtonPress,
                              "button": e.detail, "x": e.root_x, "y": e.root_y,
                              "time": e.time}), file=out, flush=True)
        elif e.type == X.MotionNotify:
            print(json.dumps({"type": "motion", "x": e.root_x, "y": e.root_y}), file=out,
                  flush=True)


if __name__ == "__main__":
    main()
