"""The JSON machinery behind every agent API model.

Models are frozen, slotted, keyword-only dataclasses deriving from :class:`Model`. Each field is
declared with :func:`key`, which records the **exact JSON key** of the spec and its omission rule
(:class:`Omit`). The codec is compiled once per class from the field types:

``str``/``int``/``float``/``bool``; ``uuid.UUID`` (canonical text); ``datetime`` (Go
``time.Time`` = RFC 3339 with nanoseconds, see :func:`format_time`); ``str`` enums (strict);
``list[T]``/``dict[str, T]`` (JSON ``null`` decodes as empty, as a Go nil slice/map);
``tuple[int, int]`` (a fixed-length array); ``T | None`` (``null`` ↔ ``None``); nested models;
and :data:`JSON` (an arbitrary JSON value passed through untouched).

Decoding follows Go's ``encoding/json`` where the spec relies on it (unknown keys are ignored,
absent keys take the field's default) but is strict about types: a value of the wrong type is a
:class:`~agentconn.proto.errors.BadRequest` naming the field. A field declared without a default
is required.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from agentconn.proto.errors import BadRequest, ProtocolError

if TYPE_CHECKING:
    from typing import Self

__all__ = ["JSON", "Model", "Omit", "format_time", "go_json", "key", "parse_time"]

#: Any JSON value (object, array, string, number, bool or null), passed through as decoded by
#: orjson. Used only where the spec itself carries opaque JSON (MCP schemas and arguments,
#: tailscale ``net_info``, container labels are typed).
JSON = Any

Decoder = Callable[[object, str], Any]
Encoder = Callable[[Any], Any]


class Omit(enum.Enum):
    """When a field's key is left out of the encoded object."""

    NEVER = "never"  #: always emitted (Go: no ``omitempty``)
    EMPTY = "empty"  #: omitted when the value is Go's zero value ("", 0, false, [], {}, None)
    NONE = "none"  #: omitted only when the value is ``None`` (Go: pointer with ``omitempty``)


_MISSING: Any = dataclasses.MISSING


def key(
    name: str,
    *,
    omit: Omit = Omit.NEVER,
    default: Any = _MISSING,
    default_factory: Callable[[], Any] | None = None,
    enum: type[enum.Enum] | None = None,
) -> Any:
    """Declare a model field with JSON key ``name``.

    ``enum`` marks a ``str`` field as an *open* enum: values that are members of that enum
    decode to the member (which still compares equal to the string), anything else is kept as
    the raw string so the agent can produce the spec's own "unsupported value" message.
    """
    md = {"json": name, "omit": omit, "enum": enum}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    if default is not _MISSING:
        return dataclasses.field(default=default, metadata=md)
    return dataclasses.field(metadata=md)


# --------------------------------------------------------------------------------------------
# time.Time


_TIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp as Go's ``time.Time`` JSON encodes it.

    Fractions beyond microseconds (Go has nanoseconds) are truncated. Always tz-aware.
    """
    m = _TIME_RE.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    if tz in ("Z", "z"):
        tzinfo = UTC
    else:
        sign = 1 if tz[0] == "+" else -1
        off = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        tzinfo = UTC if not off else timezone(sign * off)
    return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, tzinfo=tzinfo)


def format_time(value: datetime) -> str:
    """Format like Go's ``time.RFC3339Nano``: trailing fraction zeros dropped, ``Z`` for UTC."""
    off = value.utcoffset()
    if off is None:
        raise ProtocolError("timestamps must be timezone-aware")
    # Not strftime: glibc's %Y drops the zero padding of years before 1000 (Go's zero time is
    # "0001-01-01T00:00:00Z").
    text = (f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
            f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}")
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    if not off:
        return text + "Z"
    sign = "-" if off < timedelta(0) else "+"
    minutes = abs(int(off.total_seconds())) // 60
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


# --------------------------------------------------------------------------------------------
# decoders / encoders built from type hints


def _typename(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _bad(path: str, want: str, value: object) -> BadRequest:
    return BadRequest(path, f"must be {want}, got {_typename(value)}")


def _dec_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, "a string", value)
    return value


def _dec_open_enum(cls: type[enum.Enum]) -> Decoder:
    members = {m.value: m for m in cls}

    def dec(value: object, path: str) -> str:
        s = _dec_str(value, path)
        member = members.get(s)
        return s if member is None else typing.cast(str, member)

    return dec


def _dec_bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(path, "a boolean", value)
    return value


def _dec_int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _bad(path, "an integer", value)
    return value


def _dec_float(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(path, "a number", value)
    return float(value)


def _dec_any(value: object, path: str) -> object:
    return value


def _dec_uuid(value: object, path: str) -> uuid.UUID:
    s = _dec_str(value, path)
    try:
        return uuid.UUID(s)
    except ValueError:
        raise BadRequest(path, f"must be a UUID, got {s!r}") from None


def _dec_time(value: object, path: str) -> datetime:
    s = _dec_str(value, path)
    try:
        return parse_time(s)
    except ValueError as e:
        raise BadRequest(path, str(e)) from None


def _dec_enum(cls: type[enum.Enum]) -> Decoder:
    members = {m.value: m for m in cls}
    allowed = ", ".join(repr(v) for v in members)

    def dec(value: object, path: str) -> enum.Enum:
        s = _dec_str(value, path)
        try:
            return members[s]
        except KeyError:
            raise BadRequest(path, f"must be one of {allowed}, got {s!r}") from None

    return dec


def _enc_identity(value: Any) -> Any:
    return value


def _enc_int(value: Any) -> int:
    """A Go integer field's JSON: digits only. Go's decoder rejects ``1.0``, ``1e3`` and
    ``true`` for an ``int``/``int64``/``uint16``, so an integral float is written as an int and
    anything else is a bug on our side (:class:`ProtocolError`), not a body Go cannot read."""
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise ProtocolError(f"an integer field (Go int) holds {value!r}")


def _enc_enum(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _codec_for(tp: Any) -> tuple[Decoder, Encoder]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1 or len(args) != 2:
            raise TypeError(f"unsupported union {tp!r}")
        idec, ienc = _codec_for(inner[0])

        def dec_opt(value: object, path: str) -> Any:
            return None if value is None else idec(value, path)

        def enc_opt(value: Any) -> Any:
            return None if value is None else ienc(value)

        return dec_opt, enc_opt
    if origin is list:
        edec, eenc = _codec_for(args[0])

        def dec_list(value: object, path: str) -> list[Any]:
            if value is None:
                return []
            if not isinstance(value, list):
                raise _bad(path, "an array", value)
            return [edec(v, f"{path}[{i}]") for i, v in enumerate(value)]

        def enc_list(value: Any) -> Any:
            return [eenc(v) for v in value]

        return dec_list, enc_list
    if origin is dict:
        if args[0] is not str:
            raise TypeError(f"unsupported dict key type in {tp!r}")
        vdec, venc = _codec_for(args[1])

        def dec_dict(value: object, path: str) -> dict[str, Any]:
            if value is None:
                return {}
            if not isinstance(value, dict):
                raise _bad(path, "an object", value)
            return {k: vdec(v, f"{path}.{k}") for k, v in value.items()}

        def enc_dict(value: Any) -> Any:
            return {k: venc(v) for k, v in value.items()}

        return dec_dict, enc_dict
    if origin is tuple:
        decs = [_codec_for(a) for a in args]
        n = len(decs)

        def dec_tuple(value: object, path: str) -> tuple[Any, ...]:
            if not isinstance(value, list) or len(value) != n:
                raise BadRequest(path, f"must be an array of {n} elements")
            return tuple(d(v, f"{path}[{i}]") for i, ((d, _), v) in enumerate(zip(decs, value)))

        def enc_tuple(value: Any) -> Any:
            return [e(v) for (_, e), v in zip(decs, value)]

        return dec_tuple, enc_tuple
    if tp is Any:
        return _dec_any, _enc_identity
    if tp is str:
        return _dec_str, _enc_identity
    if tp is bool:
        return _dec_bool, _enc_identity
    if tp is int:
        return _dec_int, _enc_int
    if tp is float:
        return _dec_float, _enc_identity
    if tp is uuid.UUID:
        return _dec_uuid, str
    if tp is datetime:
        return _dec_time, format_time
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _dec_enum(tp), _enc_enum
    if isinstance(tp, type) and issubclass(tp, Model):
        model = tp

        def dec_model(value: object, path: str) -> Any:
            return model.from_obj(value, path)

        def enc_model(value: Any) -> Any:
            return value.to_obj()

        return dec_model, enc_model
    raise TypeError(f"unsupported field type {tp!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    attr: str
    key: str
    omit: Omit
    required: bool
    decode: Decoder
    encode: Encoder
    default: Callable[[], Any]


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _compile(cls: type[Model]) -> tuple[_Field, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f.metadata.get("json")
        if name is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with key()")
        dec, enc = _codec_for(hints[f.name])
        open_enum = f.metadata.get("enum")
        if open_enum is not None:
            dec, enc = _dec_open_enum(open_enum), _enc_enum
        required = f.default is _MISSING and f.default_factory is _MISSING
        if f.default_factory is not _MISSING:
            default: Callable[[], Any] = typing.cast(Callable[[], Any], f.default_factory)
        else:
            default = _constant(f.default)
        out.append(_Field(f.name, name, f.metadata["omit"], required, dec, enc, default))
    return tuple(out)


class Model:
    """Base of every agent API JSON model (frozen, slotted dataclasses declared with :func:`key`).

    ``to_json`` gives compact JSON in field order with the spec's keys; ``from_json`` decodes
    and validates, raising :class:`~agentconn.proto.errors.BadRequest` naming the bad field.
    """

    __slots__ = ()
    _schemas: ClassVar[dict[type[Model], tuple[_Field, ...]]] = {}

    @classmethod
    def _schema(cls) -> tuple[_Field, ...]:
        schema = Model._schemas.get(cls)
        if schema is None:
            schema = Model._schemas[cls] = _compile(cls)
        return schema

    @classmethod
    def json_keys(cls) -> dict[str, str]:
        """Python attribute name → JSON key, in encoding order."""
        return {f.attr: f.key for f in cls._schema()}

    def to_obj(self) -> dict[str, Any]:
        """The JSON object (plain dicts/lists/str/int/...) for this model."""
        out: dict[str, Any] = {}
        for f in self._schema():
            value = getattr(self, f.attr)
            if f.omit is Omit.EMPTY and not value:
                continue
            if f.omit is Omit.NONE and value is None:
                continue
            out[f.key] = f.encode(value)
        return out

    def to_json(self) -> bytes:
        """Compact JSON bytes (no trailing newline; see :func:`go_json` for the wire form)."""
        return orjson.dumps(self.to_obj())

    @classmethod
    def from_obj(cls, obj: object, path: str = "") -> Self:
        """Build from an already-parsed JSON value; ``path`` prefixes field names in errors."""
        if not isinstance(obj, dict):
            raise _bad(path, "an object", obj)
        kwargs: dict[str, Any] = {}
        prefix = f"{path}." if path else ""
        for f in cls._schema():
            where = prefix + f.key
            if f.key in obj:
                kwargs[f.attr] = f.decode(obj[f.key], where)
            elif f.required:
                raise BadRequest(where, "is required")
            else:
                kwargs[f.attr] = f.default()
        return cls(**kwargs)

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview | str) -> Self:
        """Decode and validate a JSON body (an empty body is invalid JSON, as in Go)."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise BadRequest("", str(e)) from None
        return cls.from_obj(obj)


def go_json(data: bytes, *, html_escape: bool = True) -> bytes:
    """Turn :meth:`Model.to_json` output into what Go's ``json.Encoder`` writes.

    Appends the trailing ``\\n``; with ``html_escape`` (the agent's responses, §2.4) ``<``, ``>``
    and ``&`` become ``\\u003c``/``\\u003e``/``\\u0026``. Go always escapes U+2028/U+2029. Those
    characters can only occur inside JSON strings, so byte replacement is safe.
    """
    data = data.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    if html_escape:
        data = data.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")
    return data + b"\n"
