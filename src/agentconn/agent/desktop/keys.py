"""xdotool key syntax → X keysyms, and which keycode produces a keysym (agent-api.md §11.2).

The ``key``, ``key_down``, ``key_up`` and ``hold_key`` actions take ``text`` in xdotool's
syntax: one or more whitespace-separated combos, each a ``+``-joined list of key names pressed
in order and released in reverse (``ctrl+c``, ``Return``, ``shift+Tab``, ``super``, ``alt+F4``,
``ctrl+shift+t``). ``+`` alone, or last after ``+`` (``ctrl++``), is the plus key. A name is
resolved, first match wins, as

1. a modifier or common alias, case-insensitively: ``ctrl``/``control`` → ``Control_L``,
   ``shift``, ``alt``, ``super``/``win``/``cmd``, ``meta``, ``enter`` → ``Return``, ``esc``,
   ``backspace``, ``pageup``/``pagedown``, …;
2. an X keysym name, exactly (``Return``, ``a``, ``A``, ``F4``, ``XF86AudioMute``);
3. an X keysym name, ignoring case (``return``, ``f4``, ``page_down``);
4. a single character (``,``, ``é``, ``€``), through :func:`char_keysym`;

else :class:`KeyNameError`.

:class:`Keymap` is the keysym → keycode side: given the server's core keyboard mapping it
finds a keycode whose first (unshifted) or second (shifted) level carries the keysym, and
lists the spare keycodes (no keysym at all) that can be borrowed, as xdotool does, to type a
keysym the keyboard lacks.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from functools import cache

__all__ = [
    "KeyNameError",
    "Keymap",
    "char_keysym",
    "keysym_for_name",
    "parse_key_sequence",
    "text_keysyms",
]

#: The keysym groups of X11's keysymdef.h that python-xlib ships (name → keysym tables).
_KEYSYM_GROUPS = ("miscellany", "latin1", "latin2", "latin3", "latin4", "greek", "cyrillic",
                  "technical", "special", "publishing", "apl", "hebrew", "arabic", "thai",
                  "katakana", "korean", "xkb", "xf86")

#: Case-insensitive aliases (xdotool's own modifier aliases plus the names computer-use
#: models commonly emit).
_ALIASES = {
    "ctrl": "Control_L", "control": "Control_L", "shift": "Shift_L", "alt": "Alt_L",
    "meta": "Meta_L", "super": "Super_L", "win": "Super_L", "windows": "Super_L",
    "cmd": "Super_L", "command": "Super_L", "option": "Alt_L", "altgr": "ISO_Level3_Shift",
    "enter": "Return", "esc": "Escape", "del": "Delete", "backspace": "BackSpace",
    "pageup": "Prior", "pgup": "Prior", "pagedown": "Next", "pgdn": "Next", "ins": "Insert",
    "capslock": "Caps_Lock", "numlock": "Num_Lock", "printscreen": "Print",
    "arrowup": "Up", "arrowdown": "Down", "arrowleft": "Left", "arrowright": "Right",
}

# X11 keysyms for text (keysymdef.h, "Latin 1" and the Unicode mapping rule): printable
# Latin-1 characters are their own keysym; any other character is 0x01000000 + code point.
_UNICODE_KEYSYM = 0x01000000
_CONTROL_KEYSYMS = {"\n": 0xFF0D, "\r": 0xFF0D, "\t": 0xFF09, "\b": 0xFF08, "\x1b": 0xFF1B}

XK_SHIFT_L = 0xFFE1


class KeyNameError(ValueError):
    """A key name (or character) has no X keysym; the message names it."""


@cache
def _keysym_names() -> tuple[dict[str, int], dict[str, int]]:
    exact: dict[str, int] = {}
    folded: dict[str, int] = {}
    for group in _KEYSYM_GROUPS:
        module = importlib.import_module(f"Xlib.keysymdef.{group}")
        for attr, value in vars(module).items():
            if not (attr.startswith("XK_") and isinstance(value, int)):
                continue
            names = [attr[3:]]
            if names[0].startswith("XF86_"):  # python-xlib's spelling of X's XF86AudioMute
                names.append("XF86" + names[0][5:])
            for name in names:
                exact.setdefault(name, value)
                # Prefer the lower-case letter when case folding makes names collide (a/A).
                if name.lower() not in folded or name.islower():
                    folded[name.lower()] = value
    return exact, folded


def char_keysym(ch: str) -> int:
    """The keysym that types character ``ch`` (newline → Return, tab → Tab).

    Raises :class:`KeyNameError` for other control characters, which no key types.
    """
    if ch in _CONTROL_KEYSYMS:
        return _CONTROL_KEYSYMS[ch]
    cp = ord(ch)
    if 0x20 <= cp <= 0x7E or 0xA0 <= cp <= 0xFF:
        return cp
    if cp < 0x20 or 0x7F <= cp < 0xA0:
        raise KeyNameError(f"cannot type control character U+{cp:04X}")
    return _UNICODE_KEYSYM | cp


def keysym_for_name(name: str) -> int:
    """Resolve one xdotool key name (see the module doc); raises :class:`KeyNameError`."""
    alias = _ALIASES.get(name.lower())
    exact, folded = _keysym_names()
    if alias is not None:
        return exact[alias]
    if name in exact:
        return exact[name]
    if name.lower() in folded:
        return folded[name.lower()]
    if len(name) == 1:
        return char_keysym(name)
    raise KeyNameError(f"unknown key name {name!r}")


def _split_combo(combo: str) -> list[str]:
    # "+" alone and a trailing "++" ("ctrl++") name the plus key itself.
    if combo == "+":
        return ["+"]
    if combo.endswith("++"):
        return [*_split_combo(combo[:-2]), "+"] if combo[:-2] else ["+"]
    names = combo.split("+")
    if "" in names:
        raise KeyNameError(f"empty key name in {combo!r}")
    return names


def parse_key_sequence(text: str) -> list[list[int]]:
    """Parse xdotool key syntax: a list of combos, each a list of keysyms in press order.

    Raises :class:`KeyNameError` naming the first unknown key, or when ``text`` holds no key.
    """
    combos: list[list[int]] = []
    for combo in text.split():
        try:
            combos.append([keysym_for_name(n) for n in _split_combo(combo)])
        except KeyNameError as e:
            raise KeyNameError(f"{e} in {text!r}") from None
    if not combos:
        raise KeyNameError(f"no key in {text!r}")
    return combos


def text_keysyms(text: str) -> list[int]:
    """The keysyms that type ``text``, one per character (CRLF counts as one Return)."""
    return [char_keysym(ch) for ch in text.replace("\r\n", "\n")]


class Keymap:
    """The server's core keyboard mapping, searched by keysym.

    ``rows[i]`` are the keysyms of keycode ``min_keycode + i`` (level 1, level 2 (Shift), then
    further groups, which are ignored). Keep it current with :meth:`set_row` after changing a
    keycode's mapping.
    """

    def __init__(self, min_keycode: int, rows: Sequence[Sequence[int]]) -> None:
        self.min_keycode = min_keycode
        self.rows = [list(r) for r in rows]
        self.keysyms_per_keycode = max((len(r) for r in self.rows), default=1)

    def lookup(self, keysym: int) -> tuple[int, bool] | None:
        """(keycode, needs Shift) producing ``keysym``, preferring an unshifted keycode."""
        shifted: tuple[int, bool] | None = None
        for i, row in enumerate(self.rows):
            if row and row[0] == keysym:
                return self.min_keycode + i, False
            if shifted is None and len(row) > 1 and row[1] == keysym:
                shifted = (self.min_keycode + i, True)
        return shifted

    def spare_keycodes(self) -> list[int]:
        """Keycodes that carry no keysym (free to borrow)."""
        return [self.min_keycode + i for i, row in enumerate(self.rows) if not any(row)]

    def set_row(self, keycode: int, keysyms: Sequence[int]) -> None:
        """Record that ``keycode`` now carries ``keysyms``."""
        self.rows[keycode - self.min_keycode] = list(keysyms)
