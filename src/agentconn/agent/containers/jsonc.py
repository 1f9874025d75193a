"""JSON with comments, as ``devcontainer.json`` is written (the JSONC dialect of VS Code).

Theory of operation: one pass over the text with three states (in code, in a string, in a
comment) copies everything but ``//`` line comments, ``/* */`` block comments and the
trailing commas before ``]`` or ``}``; what is left is strict JSON for orjson. Strings are
copied untouched (``"http://x"`` keeps its ``//``), comments become a space so line numbers
stay right, and nothing is evaluated. Errors name the line and column.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["JsoncError", "loads", "strip"]


class JsoncError(ValueError):
    """The text is not JSONC: an unterminated comment or string, or invalid JSON after the
    comments and trailing commas are taken out. ``line`` and ``column`` are 1-based."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        self.line = line
        self.column = column
        where = f"line {line} column {column}: " if line else ""
        super().__init__(where + message)


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def strip(text: str) -> str:
    """``text`` with comments blanked out and trailing commas removed (same length or
    shorter, line breaks kept)."""
    out: list[str] = []
    i, n = 0, len(text)
    pending_comma = -1  # index in `out` of a comma that may turn out to be trailing
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise JsoncError("unterminated string", *_position(text, i))
            out.append(text[i:j + 1])
            pending_comma = -1
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" ")
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise JsoncError("unterminated comment", *_position(text, i))
            out.append(" " + "\n" * text.count("\n", i, j))
            i = j + 2
        elif c == ",":
            pending_comma = len(out)
            out.append(c)
            i += 1
        elif c in "]}":
            if pending_comma >= 0:
                out[pending_comma] = " "
            pending_comma = -1
            out.append(c)
            i += 1
        elif c in " \t\r\n":
            out.append(c)
            i += 1
        else:
            pending_comma = -1
            out.append(c)
            i += 1
    return "".join(out)


def loads(text: str | bytes) -> Any:
    """Decode JSONC ``text`` (UTF-8 bytes, a leading BOM allowed). Raises :class:`JsoncError`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsoncError(f"not UTF-8: {e}") from None
    text = text.removeprefix("\ufeff")
    stripped = strip(text)
    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError as e:
        line, column = _position(stripped, e.pos)
        raise JsoncError(e.msg, line, column) from None
