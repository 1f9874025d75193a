"""Reconnecting-PTY wire format on tailnet TCP port 2 (agent-api.md §5.1), for both roles.

Theory of operation
-------------------
1. The client writes one **init frame**: a 2-byte little-endian length ``L`` and ``L`` bytes of
   JSON, Go's ``json.Marshal`` of ``workspacesdk.AgentReconnectingPTYInit``. The struct has no
   JSON tags, so the keys are the Go field names in field order (``ID``, ``Height``, ``Width``,
   ``Command``, ``Container``, ``ContainerUser``, ``BackendType``); HTML characters are escaped
   and there is no trailing newline. Decoders match keys case-insensitively, as Go does.
2. Then the client writes a stream of ``{"data","height","width"}`` objects
   (``ReconnectingPTYRequest``, every key ``omitempty``) with no separators required; the agent
   reads them with a streaming JSON decoder (:class:`RequestDecoder` here).
3. Everything the agent sends back is raw terminal output.

Sans-IO: :meth:`ReconnectingPtyInit.emit`/:meth:`~ReconnectingPtyInit.parse`,
:meth:`ReconnectingPtyRequest.emit` and :class:`RequestDecoder` (``receive_data`` then
``next_request``). Bad input raises :class:`~agentconn.proto.errors.ProtocolError`.
"""
from __future__ import annotations

import json
import re
import reprlib
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from agentconn.proto.errors import ProtocolError

__all__ = [
    "INIT_HEADER_SIZE",
    "MAX_INIT_SIZE",
    "MAX_REQUEST_SIZE",
    "RING_BUFFER_SIZE",
    "ReconnectingPtyInit",
    "ReconnectingPtyRequest",
    "RequestDecoder",
    "go_marshal",
]

INIT_HEADER_SIZE = 2          #: the little-endian uint16 length before the init JSON (§5.1)
MAX_INIT_SIZE = 0xFFFF        #: the largest init JSON a uint16 length can announce
MAX_REQUEST_SIZE = 4 << 20    #: our cap on one pending request object (bytes); Go has none
RING_BUFFER_SIZE = 64 * 1024  #: buffered backend: output kept for replay on attach (§5.2)
UINT16_MAX = 0xFFFF

_INIT_KEYS = {"id": "id", "height": "height", "width": "width", "command": "command",
              "container": "container", "containeruser": "container_user",
              "backendtype": "backend_type"}
_REQUEST_KEYS = {"data": "data", "height": "height", "width": "width"}


def _fold(name: str) -> str:
    # Go's encoding/json folds keys with Unicode simple folding (so "ContainerUſer" with a long
    # s and the Kelvin sign K match too); casefold() agrees for every key we look up.
    return name.casefold()


def _go_string(text: str) -> str:
    """``text`` as Go holds it: lone surrogates (impossible in Go strings) become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def go_marshal(obj: dict[str, str | int]) -> bytes:
    """Go ``json.Marshal`` of a flat object of strings and ints, keys in the given order.

    Compact, UTF-8, no trailing newline; ``<``, ``>``, ``&``, U+2028 and U+2029 escaped as Go
    does; control characters as ``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\f`` or ``\\u00XX``.
    """
    clean = {k: _go_string(v) if isinstance(v, str) else v for k, v in obj.items()}
    text = json.dumps(clean, ensure_ascii=False, separators=(",", ":"))
    text = (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return text.encode("utf-8")


def _loads(raw: bytes) -> Any:
    """One JSON value; invalid UTF-8 inside strings becomes U+FFFD as in Go (not an error)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw.decode("utf-8", "replace"))
    except ValueError as exc:
        raise ProtocolError(f"invalid JSON {raw[:80]!r}: {exc}") from None
    except RecursionError:  # deeper than orjson's 1024 levels and Python's stack
        raise ProtocolError(f"invalid JSON {raw[:80]!r}: nested too deeply") from None


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 3, 80, 80


def _brief(value: object) -> str:
    """A bounded repr for error texts: a deeply nested value must not recurse (hostile JSON)."""
    return _BRIEF.repr(value)


def _uint16(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT16_MAX:
        raise ProtocolError(f"{key}: expected an integer 0-{UINT16_MAX}, got {_brief(value)}")
    return value


def _string(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{key}: expected a string, got {_brief(value)}")
    return _go_string(value)


_UUID36 = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}")


def _uuid(value: object, key: str) -> uuid.UUID:
    """google/uuid ``Parse``: canonical, ``{canonical}``, ``urn:uuid:canonical`` or 32 hex."""
    if not isinstance(value, str):
        raise ProtocolError(f"{key}: expected a UUID string, got {_brief(value)}")
    text = value
    if len(text) == 45 and text[:9].lower() == "urn:uuid:":
        text = text[9:]
    elif len(text) == 38 and text[0] == "{" and text[-1] == "}":
        text = text[1:-1]
    if len(text) == 36 and _UUID36.fullmatch(text):
        return uuid.UUID(text)
    if len(text) == 32 and all(c in "0123456789abcdefABCDEF" for c in text):
        return uuid.UUID(hex=text)
    raise ProtocolError(f"{key}: invalid UUID {value!r}")


def _fields(obj: object, keys: dict[str, str], what: str) -> dict[str, object]:
    """Attribute name → JSON value for the keys of ``obj`` that name a field (case-folded;
    the last of duplicates wins, and ``null`` leaves the field alone, as in Go)."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    out: dict[str, object] = {}
    for name, value in obj.items():
        attr = keys.get(_fold(name))
        if attr is not None and value is not None:
            out[attr] = value
    return out


@dataclass(frozen=True, slots=True)
class ReconnectingPtyInit:
    """The init frame (Go ``AgentReconnectingPTYInit``).

    ``id`` keys the session; ``height``/``width`` (rows/columns, 0-65535) size the PTY on
    attach; ``command`` empty means the login shell; ``container``/``container_user`` target a
    dev container; ``backend_type`` is ``""``, ``"screen"`` or ``"buffered"``.
    """

    id: uuid.UUID
    height: int = 0
    width: int = 0
    command: str = ""
    container: str = ""
    container_user: str = ""
    backend_type: str = ""

    def __post_init__(self) -> None:
        _uint16(self.height, "Height")
        _uint16(self.width, "Width")

    def to_json(self) -> bytes:
        """The JSON body exactly as Go's ``json.Marshal`` writes it."""
        return go_marshal({"ID": str(self.id), "Height": self.height, "Width": self.width,
                           "Command": self.command, "Container": self.container,
                           "ContainerUser": self.container_user,
                           "BackendType": self.backend_type})

    def emit(self) -> bytes:
        """The whole frame: 2-byte little-endian length, then :meth:`to_json`.

        Raises ValueError when the JSON is longer than 65535 bytes (Go would silently send a
        truncated length)."""
        body = self.to_json()
        if len(body) > MAX_INIT_SIZE:
            raise ValueError(f"reconnecting PTY init frame is {len(body)} bytes, more than "
                             f"the {MAX_INIT_SIZE} a 16-bit length can carry")
        return len(body).to_bytes(INIT_HEADER_SIZE, "little") + body

    @staticmethod
    def parse_length(header: bytes) -> int:
        """The JSON length announced by the 2 header bytes."""
        if len(header) != INIT_HEADER_SIZE:
            raise ProtocolError(f"init header must be {INIT_HEADER_SIZE} bytes, got {len(header)}")
        return int.from_bytes(header, "little")

    @classmethod
    def parse(cls, body: bytes) -> ReconnectingPtyInit:
        """Decode the init JSON (keys case-insensitive, unknown keys ignored, absent keys
        zero). Raises ProtocolError for invalid JSON, a non-object or a wrongly typed field."""
        fields = _fields(_loads(body), _INIT_KEYS, "init frame")
        return cls(
            id=_uuid(fields["id"], "ID") if "id" in fields else uuid.UUID(int=0),
            height=_uint16(fields.get("height", 0), "Height"),
            width=_uint16(fields.get("width", 0), "Width"),
            command=_string(fields.get("command", ""), "Command"),
            container=_string(fields.get("container", ""), "Container"),
            container_user=_string(fields.get("container_user", ""), "ContainerUser"),
            backend_type=_string(fields.get("backend_type", ""), "BackendType"),
        )


@dataclass(frozen=True, slots=True)
class ReconnectingPtyRequest:
    """One client message (Go ``ReconnectingPTYRequest``): ``data`` to type into the PTY,
    then a resize to ``height`` × ``width`` when **both** are non-zero."""

    data: str = ""
    height: int = 0
    width: int = 0

    def __post_init__(self) -> None:
        _uint16(self.height, "height")
        _uint16(self.width, "width")

    @property
    def resize(self) -> tuple[int, int] | None:
        """(rows, columns) to apply, or None when either is zero."""
        return (self.height, self.width) if self.height and self.width else None

    def emit(self) -> bytes:
        """Go ``json.Marshal`` (every key ``omitempty``; no separator after it)."""
        obj: dict[str, str | int] = {}
        if self.data:
            obj["data"] = self.data
        if self.height:
            obj["height"] = self.height
        if self.width:
            obj["width"] = self.width
        return go_marshal(obj)

    @classmethod
    def from_value(cls, value: object) -> ReconnectingPtyRequest:
        """From one decoded JSON value (``null`` is an empty request, as in Go)."""
        fields = _fields(value, _REQUEST_KEYS, "request")
        return cls(data=_string(fields.get("data", ""), "data"),
                   height=_uint16(fields.get("height", 0), "height"),
                   width=_uint16(fields.get("width", 0), "width"))


_WS = b" \t\r\n"
_OBJECT_TOKENS = re.compile(rb'[{}"]')
_STRING_TOKENS = re.compile(rb'["\\]')


class RequestDecoder:
    """Streaming decoder for the concatenated request objects after the init frame.

    Feed bytes with :meth:`receive_data` and pull :class:`ReconnectingPtyRequest` values with
    :meth:`next_request` (None when no complete value is buffered). Values may be separated by
    JSON whitespace or nothing. Anything but an object or ``null`` at the top level, a value
    that is not valid JSON, or one longer than ``max_size`` bytes raises ProtocolError (after
    which the decoder is unusable, as Go's ``json.Decoder`` is after an error).
    """

    def __init__(self, max_size: int = MAX_REQUEST_SIZE) -> None:
        self._buf = bytearray()
        self._max_size = max_size
        self._pos = 0          # how far the current value has been scanned
        self._depth = 0        # object/array nesting at _pos (0 before the value starts)
        self._in_string = False
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a request."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Append bytes from the connection."""
        if self._failed is not None:
            raise self._failed
        self._buf += data

    def next_request(self) -> ReconnectingPtyRequest | None:
        """The next complete request, or None until more bytes arrive."""
        if self._failed is not None:
            raise self._failed
        try:
            end = self._scan()
            if end is None:
                if len(self._buf) > self._max_size:
                    raise ProtocolError(f"request object longer than {self._max_size} bytes")
                return None
            raw = bytes(self._buf[:end])
            del self._buf[:end]
            self._pos = 0
            return ReconnectingPtyRequest.from_value(_loads(raw))
        except ProtocolError as exc:
            self._failed = exc
            raise

    def _scan(self) -> int | None:
        """End offset of the first complete value in the buffer, or None."""
        buf = self._buf
        if self._depth == 0:
            start = 0
            while start < len(buf) and buf[start] in _WS:
                start += 1
            del buf[:start]
            if not buf:
                return None
            first = buf[0]
            if first == ord("n"):
                if len(buf) < 4:
                    if not b"null".startswith(bytes(buf)):
                        raise ProtocolError(f"invalid request value {bytes(buf)!r}")
                    return None
                if buf[:4] != b"null":
                    raise ProtocolError(f"invalid request value {bytes(buf[:16])!r}")
                return 4
            if first != ord("{"):
                raise ProtocolError(f"expected a request object, got {bytes(buf[:16])!r}")
            self._depth, self._pos, self._in_string = 1, 1, False
        pos = self._pos
        while True:
            if self._in_string:
                m = _STRING_TOKENS.search(buf, pos)
                if m is None:
                    self._pos = len(buf)
                    return None
                if m.group() == b"\\":
                    if m.end() >= len(buf):  # the escaped character has not arrived yet
                        self._pos = m.start()
                        return None
                    pos = m.end() + 1
                    continue
                self._in_string = False
                pos = m.end()
                continue
            m = _OBJECT_TOKENS.search(buf, pos)
            if m is None:
                self._pos = len(buf)
                return None
            token, pos = m.group(), m.end()
            if token == b'"':
                self._in_string = True
            elif token == b"{":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._pos = 0
                    return pos
