"""Tailscale ``net/speedtest`` version 2, as Coder agents serve it on tailnet TCP port 3.

Spec: tailnet.md §6, agent-api.md §7. Shared by the client (``client/speedtest.py``) and the
agent (``agent/services/speedtest.py``), which add the connection handling around it and run
the data phase with :mod:`agentconn.aio.relay`.

Theory of operation
-------------------
1. The client writes one JSON config line, ``{"version":2,"time":<ns>,"direction":0|1}\\n``
   (``direction`` from the client's point of view: 0 download, 1 upload).
2. The server answers ``{}\\n``, or ``{"error":"<text>"}\\n`` and closes (bad JSON, wrong
   version; ours also rejects directions other than 0 and 1, see §6.5 item 5).
3. Data phase, raw bytes only: the side that sends writes one random 2 MiB block over and over
   until more than ``time`` has passed since it started, then closes; the other side reads to
   EOF (deadline 4 × ``time``). Nothing else crosses the wire; each side measures itself.

Sans-IO part: :class:`SpeedtestConfig` (emit/parse), :func:`emit_response`/
:func:`parse_response`, :func:`parse_config_prefix` (incremental, Go ``json.Decoder`` error
texts for the common cases) and :class:`IntervalMeter` (the Go ``doTest`` result bookkeeping,
fed bytes and a ``now``). Nothing here does I/O or reads a clock.
"""
from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentconn.errors import AgentConnError

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_DURATION",
    "DEFAULT_PORT",
    "INCREMENT",
    "MAX_DURATION",
    "MIN_DURATION",
    "MIN_INTERVAL",
    "VERSION",
    "Direction",
    "IntervalMeter",
    "SpeedtestConfig",
    "SpeedtestConfigError",
    "SpeedtestError",
    "SpeedtestInterval",
    "SpeedtestResult",
    "emit_response",
    "parse_config_prefix",
    "parse_response",
]

# tailnet.md §6.1 (Tailscale net/speedtest/speedtest.go)
VERSION = 2                     #: ``version``
BLOCK_SIZE = 2 * 1024 * 1024    #: ``blockSize``: one write / one ReadFull
INCREMENT = 1.0                 #: ``increment``: result interval, seconds
MIN_INTERVAL = 0.010            #: ``minInterval``: shorter trailing intervals are dropped
MIN_DURATION = 5.0              #: ``MinDuration`` (enforced by callers, not the server)
DEFAULT_DURATION = MIN_DURATION  #: ``DefaultDuration``
MAX_DURATION = 30.0             #: ``MaxDuration``
DEFAULT_PORT = 20333            #: Tailscale's standalone port (Coder uses tailnet port 3)
RECEIVE_DEADLINE_FACTOR = 4     #: the receiver's read deadline: duration + 3 × duration

# Implementation constants (not in the spec).
CONFIG_LIMIT = 64 * 1024        #: longest config we buffer before calling it garbage
WRITE_SLICE = 256 * 1024        #: a block is handed to the transport in slices of this size
READ_SIZE = 1024 * 1024         #: largest single read in the receive loop

_NS = 1_000_000_000


class SpeedtestError(AgentConnError):
    """A speedtest failed: the server refused the config (``server_error`` holds its text),
    the connection broke, or the receive deadline passed."""

    def __init__(self, message: str, *, server_error: str | None = None) -> None:
        super().__init__(message)
        self.server_error = server_error


class SpeedtestConfigError(ValueError):
    """The client's config line is unusable; ``str(exc)`` is the text sent back as
    ``{"error": ...}`` (Go's own text where the Go server would send one)."""


class Direction(enum.IntEnum):
    """``speedtest.Direction``, always from the client's point of view."""

    DOWNLOAD = 0    # server sends, client receives
    UPLOAD = 1      # client sends, server receives

    @classmethod
    def from_name(cls, name: str) -> Direction:
        """``"down"``/``"download"`` or ``"up"``/``"upload"`` (raises ValueError otherwise)."""
        value = {"down": cls.DOWNLOAD, "download": cls.DOWNLOAD,
                 "up": cls.UPLOAD, "upload": cls.UPLOAD}.get(name.lower())
        if value is None:
            raise ValueError(f"invalid direction {name!r}: expected 'up' or 'down'")
        return value

    def reversed(self) -> Direction:
        """The server's role for this client direction (``Direction.Reverse``)."""
        return Direction.UPLOAD if self is Direction.DOWNLOAD else Direction.DOWNLOAD

    @property
    def label(self) -> str:
        """``Direction.String()``: "download" or "upload"."""
        return "download" if self is Direction.DOWNLOAD else "upload"


# ---------------------------------------------------------------------------------------------
# control messages (§6.2)


@dataclass(frozen=True, slots=True)
class SpeedtestConfig:
    """The client's config: ``version``, ``time_ns`` (Go ``time.Duration``), ``direction``.

    ``direction`` stays an ``int`` because a parsed config may carry any value; the server
    checks it (:meth:`checked_direction`).
    """

    version: int = VERSION
    time_ns: int = 5 * _NS
    direction: int = Direction.DOWNLOAD

    @classmethod
    def for_test(cls, direction: Direction, duration: float) -> SpeedtestConfig:
        """The config a client sends for ``duration`` seconds in ``direction``."""
        return cls(VERSION, round(duration * _NS), int(direction))

    @property
    def duration(self) -> float:
        """``time`` in seconds."""
        return self.time_ns / _NS

    def emit(self) -> bytes:
        """The exact bytes of Go's ``json.Encoder`` (key order, no spaces, trailing LF)."""
        return (b'{"version":%d,"time":%d,"direction":%d}\n'
                % (self.version, self.time_ns, self.direction))

    def check(self) -> Direction:
        """The client direction of an acceptable config; raises SpeedtestConfigError with the
        reply text otherwise (§6.5 items 3 and 5)."""
        if self.version != VERSION:
            raise SpeedtestConfigError(f"version mismatch! Server is version {VERSION}, "
                                       f"client is version {self.version}")
        if self.direction not in (Direction.DOWNLOAD, Direction.UPLOAD):
            raise SpeedtestConfigError(f"invalid direction {self.direction}: expected "
                                       f"0 (download) or 1 (upload)")
        return Direction(self.direction)


def emit_response(error: str | None = None) -> bytes:
    """``{}\\n`` to accept, ``{"error":"..."}\\n`` to refuse (Go ``configResponse``)."""
    if not error:
        return b"{}\n"
    # Go's encoder escapes <, > and & as \u003c etc.; json.dumps keeps them, which any JSON
    # reader treats the same.
    return b'{"error":' + json.dumps(error, ensure_ascii=False).encode() + b"}\n"


def parse_response(line: bytes) -> str | None:
    """The error text of a server's response line, or None when it accepted.

    Raises :class:`SpeedtestError` when the line is not a JSON object.
    """
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise SpeedtestError(f"speedtest server sent an invalid response {line[:200]!r}: "
                             f"{exc}") from None
    if not isinstance(value, dict):
        raise SpeedtestError(f"speedtest server sent {line[:200]!r}, expected a JSON object")
    error = value.get("error")
    return str(error) if error else None


# Go (encoding/json) decoding, as far as a config line needs it -----------------------------

_GO_SPACE = b" \t\r\n"
_VALUE_START = frozenset(b'{["-0123456789tfn')
_LITERALS = {ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}
_FIELD_TYPES = {"version": "int", "time": "time.Duration", "direction": "speedtest.Direction"}


def _quote_char(c: int) -> str:
    """Go ``encoding/json.quoteChar``."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    s = json.dumps(chr(c)) if c < 0x80 else repr(chr(c))[1:-1]
    return "'" + s.strip('"') + "'"


class _Number(str):
    """A JSON number that is not an integer literal, kept as its source text."""


def _go_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, _Number)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


_DECODER = json.JSONDecoder(parse_float=_Number, parse_constant=_reject_constant)


def _syntax_error(msg: str, char: int) -> SpeedtestConfigError:
    """Go's ``SyntaxError`` text for Python's decode error ``msg`` at byte ``char``."""
    if msg.startswith("Expecting property name"):
        context = "looking for beginning of object key string"
    elif msg.startswith("Expecting ':'"):
        context = "after object key"
    elif msg.startswith("Expecting ','"):
        context = "after object key:value pair"
    else:
        context = "looking for beginning of value"
    return SpeedtestConfigError(f"invalid character {_quote_char(char)} {context}")


def parse_config_prefix(data: bytes, eof: bool) -> tuple[SpeedtestConfig, int] | None:
    """Decode the first JSON value of ``data`` like Go's ``json.Decoder`` into a config.

    Returns ``(config, bytes consumed)``, or None when more bytes are needed (``eof`` false).
    Raises :class:`SpeedtestConfigError` whose text is the reply's ``error``: Go's syntax and
    type-error texts for the usual cases ("invalid character 'o' in literal null (expecting
    'u')", "json: cannot unmarshal array into Go value of type speedtest.config", "EOF").
    Like Go: unknown keys are ignored, keys match case-insensitively, missing keys and
    ``null`` are zero (so a missing version fails the version check).
    """
    start = len(data) - len(data.lstrip(_GO_SPACE))
    if start == len(data):
        if eof:
            raise SpeedtestConfigError("EOF")
        if len(data) > CONFIG_LIMIT:
            raise SpeedtestConfigError("config too long")
        return None
    first = data[start]
    if first not in _VALUE_START:
        raise SpeedtestConfigError(
            f"invalid character {_quote_char(first)} looking for beginning of value")
    literal = _LITERALS.get(first)
    if literal is not None:
        got = data[start:start + len(literal)]
        for i in range(1, len(got)):
            if got[i] != literal[i]:
                raise SpeedtestConfigError(
                    f"invalid character {_quote_char(got[i])} in literal "
                    f"{literal.decode()} (expecting {_quote_char(literal[i])})")
        if len(got) < len(literal):
            if eof:
                raise SpeedtestConfigError("unexpected EOF")
            return None
        end = start + len(literal)
        value: object = None if literal == b"null" else literal == b"true"
    else:
        # surrogateescape keeps one character per invalid byte, so the byte count of what
        # was decoded is exact ("replace" turns 1 bad byte into a 3-byte U+FFFD).
        text = data[start:].decode("utf-8", "surrogateescape")
        try:
            value, length = _DECODER.raw_decode(text)
        except json.JSONDecodeError as exc:
            pos, msg = exc.pos, exc.msg
            incomplete = pos >= len(text) or msg.startswith("Unterminated string")
            if incomplete:
                if eof:
                    raise SpeedtestConfigError("unexpected EOF") from None
                if len(data) > CONFIG_LIMIT:
                    raise SpeedtestConfigError("config too long") from None
                return None
            char = ord(text[pos])
            raise _syntax_error(msg, 0xFFFD if 0xDC80 <= char <= 0xDCFF else char) from None
        except RecursionError:      # deep nesting: Go's decoder stops at 10000 levels
            raise SpeedtestConfigError("exceeded max depth") from None
        except ValueError as exc:     # NaN / Infinity / -Infinity, refused by _reject_constant
            name = str(exc)
            context = ("in numeric literal" if name.startswith("-")
                       else "looking for beginning of value")
            raise SpeedtestConfigError(
                f"invalid character {_quote_char(ord(name.lstrip('-')[0]))} {context}") from None
        end = start + len(text[:length].encode("utf-8", "surrogateescape"))
        # Go's decoder needs the byte after a number before it can end the value.
        is_number = isinstance(value, (int, _Number)) and not isinstance(value, bool)
        if is_number and end == len(data) and not eof:
            return None
    return _config_from_value(value), end


def _config_from_value(value: object) -> SpeedtestConfig:
    if value is None:
        return SpeedtestConfig(0, 0, 0)     # Go: null into a struct is a no-op
    if not isinstance(value, dict):
        raise SpeedtestConfigError(f"json: cannot unmarshal {_go_kind(value)} into Go value "
                                   f"of type speedtest.config")
    fields = {"version": 0, "time": 0, "direction": 0}
    for raw_key, item in value.items():
        name = raw_key if raw_key in fields else raw_key.lower()
        if name not in fields or item is None:
            continue
        if isinstance(item, int) and not isinstance(item, bool) and -2**63 <= item < 2**63:
            fields[name] = item
            continue
        shown = _go_kind(item)
        if shown == "number":
            shown = f"number {item}"
        raise SpeedtestConfigError(f"json: cannot unmarshal {shown} into Go struct field "
                                   f"config.{name} of type {_FIELD_TYPES[name]}")
    return SpeedtestConfig(fields["version"], fields["time"], fields["direction"])


# ---------------------------------------------------------------------------------------------
# results (§6.3)


@dataclass(frozen=True, slots=True)
class SpeedtestInterval:
    """One ``speedtest.Result``: ``bytes`` moved between ``start`` and ``end``, in seconds
    from the start of the data phase. ``total`` marks the whole-test row."""

    start: float
    end: float
    bytes: int
    total: bool = False

    @property
    def seconds(self) -> float:
        """``Interval()``: the interval's length."""
        return self.end - self.start

    @property
    def throughput(self) -> float:
        """Bits per second over the interval."""
        return self.bytes * 8 / self.seconds if self.seconds > 0 else 0.0

    def mbits_per_second(self) -> float:
        """Go ``MBitsPerSecond``: decimal megabits per second."""
        return self.bytes / 1_000_000.0 * 8.0 / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "bytes": self.bytes,
                "throughput": self.throughput, "mbits_per_second": self.mbits_per_second()}


@dataclass(frozen=True, slots=True)
class SpeedtestResult:
    """What one side measured: ``intervals`` (~1 s each, maybe a short trailing one) and the
    ``total`` row (None when the whole test took ≤ 10 ms, as in Go).

    ``direction`` is the client's direction; ``duration`` the requested seconds.
    """

    direction: Direction
    duration: float
    intervals: tuple[SpeedtestInterval, ...]
    total: SpeedtestInterval | None

    @property
    def bytes(self) -> int:
        """All bytes this side moved (the total row's count)."""
        return self.total.bytes if self.total is not None else 0

    @property
    def results(self) -> list[SpeedtestInterval]:
        """The Go-shaped list: the intervals, then the total row."""
        return [*self.intervals, *([self.total] if self.total is not None else [])]

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction.label, "duration": self.duration,
                "intervals": [i.to_json() for i in self.intervals],
                "total": self.total.to_json() if self.total is not None else None}


@dataclass(slots=True)
class IntervalMeter:
    """The result bookkeeping of Go's ``doTest``, fed ``add(nbytes, now)`` after every block
    written or chunk read (``now``: monotonic seconds).

    ``add`` closes an interval once ``now - last >= INCREMENT`` and returns it. ``finish``
    adds the trailing interval when it is longer than ``MIN_INTERVAL`` and the total row when
    the test lasted longer than that. As in Go, the end of the test is the last ``add``, and
    bytes of a dropped (≤ 10 ms) trailing interval still count in the total.
    """

    start: float
    last: float = field(init=False)
    now: float = field(init=False)
    interval_bytes: int = 0
    total_bytes: int = 0
    intervals: list[SpeedtestInterval] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.last = self.now = self.start

    @property
    def bytes(self) -> int:
        """Every byte added so far."""
        return self.total_bytes + self.interval_bytes

    @property
    def elapsed(self) -> float:
        """Seconds from ``start`` to the last ``add``."""
        return self.now - self.start

    def add(self, nbytes: int, now: float) -> SpeedtestInterval | None:
        self.interval_bytes += nbytes
        self.now = now
        if now - self.last < INCREMENT:
            return None
        interval = SpeedtestInterval(self.last - self.start, now - self.start,
                                     self.interval_bytes)
        self.intervals.append(interval)
        self.last = now
        self.total_bytes += self.interval_bytes
        self.interval_bytes = 0
        return interval

    def finish(self, direction: Direction, duration: float) -> SpeedtestResult:
        if self.now - self.last > MIN_INTERVAL:
            self.intervals.append(SpeedtestInterval(self.last - self.start,
                                                    self.now - self.start,
                                                    self.interval_bytes))
        total_bytes = self.total_bytes + self.interval_bytes
        total = None
        if self.now - self.start > MIN_INTERVAL:
            total = SpeedtestInterval(0.0, self.now - self.start, total_bytes, total=True)
        return SpeedtestResult(direction, duration, tuple(self.intervals), total)


#: Called with each interval as it closes (progress output).
OnInterval = Callable[[SpeedtestInterval], object]
