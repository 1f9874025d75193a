"""A small proto3 binary codec: wire primitives and declarative messages.

Enough protobuf for Coder's tailnet messages (coder-control-plane.md §4.1) without the
``protobuf`` runtime: varints (int32/int64/uint/bool/enum, negatives as 10-byte two's
complement), zigzag (sint), fixed64 (double), length-delimited (string, bytes, nested
messages, maps), repeated fields. Messages are frozen dataclasses deriving from
:class:`Message` that list their fields in ``FIELDS``; :func:`encode_message` and
:func:`decode_message` walk that table.

Rules, as protobuf-go applies them:

* Encoding: proto3 implicit presence — zero scalars, ``""``, ``b""`` and empty repeated/map
  fields are left out (a ``-0.0`` double is written); a set sub-message is written even when
  empty (tag + ``00``); map entries always carry key and value; fields go out in number order,
  map entries sorted by key (Go's order is random, so only our own bytes are deterministic).
* Decoding: unknown field numbers, and known numbers with an unexpected wire type, are
  skipped — every wire type, including groups (3/4) with nesting; the last value of a
  singular scalar wins; several occurrences of a singular sub-message are merged (their
  encodings concatenated); strings must be valid UTF-8.
* Anything else — truncated input, wire types 6/7, field number 0 or above 2**29−1, a varint
  overflowing 64 bits (or longer than 10 bytes), an unbalanced group — raises
  :class:`ProtobufError`. Nothing else escapes a decoder.
"""

from __future__ import annotations

import builtins
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, ClassVar, Self, TypeVar

from .errors import ProtobufError

__all__ = [
    "Field",
    "FieldType",
    "Message",
    "ProtobufError",
    "WireType",
    "decode_message",
    "decode_varint",
    "encode_message",
    "encode_varint",
    "iter_fields",
    "zigzag_decode",
    "zigzag_encode",
]

_U64 = (1 << 64) - 1
_MAX_FIELD = (1 << 29) - 1
_DOUBLE = struct.Struct("<d")


class WireType(IntEnum):
    VARINT = 0
    I64 = 1
    LEN = 2
    SGROUP = 3
    EGROUP = 4
    I32 = 5


# --- primitives ----------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Base-128 varint of an unsigned 64-bit value (negative ints: pass ``v & (2**64-1)``)."""
    out = bytearray()
    _append_varint(out, value)
    return bytes(out)


def _append_varint(out: bytearray, value: int) -> None:
    if not 0 <= value <= _U64:
        raise ValueError(f"varint out of range: {value}")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def decode_varint(data: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """``(value, next_pos)`` of the varint at ``data[pos:]`` (protowire ``ConsumeVarint``).

    Raises :class:`ProtobufError` if truncated or above 2**64−1 (which covers more than 10
    bytes: the 10th may only be 0 or 1).
    """
    value = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        if shift == 63 and byte > 1:
            raise ProtobufError("varint overflows 64 bits")
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7  # the 10th byte (shift 63) is at most 1, so it always ends the varint


def zigzag_encode(value: int) -> int:
    """sint64 → unsigned (``(n << 1) ^ (n >> 63)``)."""
    return ((value << 1) ^ (value >> 63)) & _U64


def zigzag_decode(value: int) -> int:
    """unsigned → sint64."""
    return (value >> 1) ^ -(value & 1)


def _to_int64(value: int) -> int:
    value &= _U64
    return value - (1 << 64) if value >> 63 else value


def _to_int32(value: int) -> int:
    value &= 0xFFFFFFFF  # Go: int32(v), the low 32 bits
    return value - (1 << 32) if value >> 31 else value


def iter_fields(data: bytes | memoryview) -> Iterator[tuple[int, WireType, int | bytes]]:
    """Yield ``(field number, wire type, value)`` for each field of an encoded message.

    ``value`` is an int for VARINT, ``bytes`` for LEN and the raw 8/4 bytes for I64/I32.
    Groups are skipped whole. Raises :class:`ProtobufError` for malformed input.
    """
    view = memoryview(data) if not isinstance(data, memoryview) else data
    pos, end = 0, len(view)
    while pos < end:
        number, wire_type, pos = _read_tag(view, pos)
        if wire_type is WireType.SGROUP:
            pos = _skip_group(view, pos, number)
            continue
        if wire_type is WireType.EGROUP:
            raise ProtobufError(f"end group for field {number} without a start")
        value, pos = _read_value(view, pos, wire_type)
        yield number, wire_type, value


def _read_tag(view: memoryview, pos: int) -> tuple[int, WireType, int]:
    key, pos = decode_varint(view, pos)
    number, wire = key >> 3, key & 7
    if number == 0 or number > _MAX_FIELD:
        raise ProtobufError(f"invalid field number {number}")
    if wire > 5:
        raise ProtobufError(f"invalid wire type {wire} (field {number})")
    return number, WireType(wire), pos


def _read_value(view: memoryview, pos: int, wire_type: WireType) -> tuple[int | bytes, int]:
    if wire_type is WireType.VARINT:
        return decode_varint(view, pos)
    if wire_type is WireType.LEN:
        length, pos = decode_varint(view, pos)
        if length > len(view) - pos:
            raise ProtobufError(f"length {length} runs past the end ({len(view) - pos} left)")
        return bytes(view[pos : pos + length]), pos + length
    size = 8 if wire_type is WireType.I64 else 4
    if len(view) - pos < size:
        raise ProtobufError(f"truncated fixed{size * 8}")
    return bytes(view[pos : pos + size]), pos + size


def _skip_group(view: memoryview, pos: int, number: int) -> int:
    """Skip to after the EGROUP matching ``number`` (nested groups included)."""
    depth = 1
    stack = [number]
    while True:
        if pos >= len(view):
            raise ProtobufError(f"unterminated group (field {number})")
        n, wire_type, pos = _read_tag(view, pos)
        if wire_type is WireType.SGROUP:
            stack.append(n)
            depth += 1
            if depth > 64:
                raise ProtobufError("groups nested too deep")
        elif wire_type is WireType.EGROUP:
            if stack.pop() != n:
                raise ProtobufError(f"mismatched end group (field {n})")
            depth -= 1
            if depth == 0:
                return pos
        else:
            _, pos = _read_value(view, pos, wire_type)


# --- declarative messages ------------------------------------------------------------------


class FieldType(Enum):
    INT32 = "int32"
    INT64 = "int64"
    UINT32 = "uint32"
    UINT64 = "uint64"
    SINT64 = "sint64"
    BOOL = "bool"
    ENUM = "enum"
    DOUBLE = "double"
    STRING = "string"
    BYTES = "bytes"
    MESSAGE = "message"


_VARINT_TYPES = {
    FieldType.INT32,
    FieldType.INT64,
    FieldType.UINT32,
    FieldType.UINT64,
    FieldType.SINT64,
    FieldType.BOOL,
    FieldType.ENUM,
}
_WIRE_OF = {t: WireType.VARINT for t in _VARINT_TYPES} | {
    FieldType.DOUBLE: WireType.I64,
    FieldType.STRING: WireType.LEN,
    FieldType.BYTES: WireType.LEN,
    FieldType.MESSAGE: WireType.LEN,
}


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a message: ``number``, Python attribute ``name``, ``type``.

    ``repeated`` for repeated fields (a tuple). A map is ``map_key`` + ``type`` (the value
    type) and a dict. ``message`` is the :class:`Message` class of MESSAGE values; ``enum``
    the IntEnum of ENUM values (unknown numbers decode to plain ints, proto3 enums are open).
    """

    number: int
    name: str
    type: FieldType
    repeated: bool = False
    map_key: FieldType | None = None
    message: builtins.type[Message] | None = None
    enum: builtins.type[IntEnum] | None = None


M = TypeVar("M", bound="Message")


class Message:
    """Base of the message dataclasses: subclasses set ``FIELDS``."""

    __slots__ = ()
    FIELDS: ClassVar[tuple[Field, ...]] = ()

    def encode(self) -> bytes:
        """The binary protobuf encoding."""
        return encode_message(self)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Self:
        """Parse ``data``; raises :class:`ProtobufError` if it is malformed."""
        return decode_message(cls, data)


def _tag(out: bytearray, number: int, wire_type: WireType) -> None:
    _append_varint(out, (number << 3) | wire_type)


def _encode_value(out: bytearray, number: int, type_: FieldType, value: Any) -> None:
    """Write one value with its tag, whatever it is (no zero-skipping)."""
    _tag(out, number, _WIRE_OF[type_])
    if type_ in (FieldType.INT32, FieldType.INT64, FieldType.ENUM):
        _append_varint(out, int(value) & _U64)
    elif type_ in (FieldType.UINT32, FieldType.UINT64):
        _append_varint(out, value)
    elif type_ is FieldType.SINT64:
        _append_varint(out, zigzag_encode(value))
    elif type_ is FieldType.BOOL:
        out.append(1 if value else 0)
    elif type_ is FieldType.DOUBLE:
        out += _DOUBLE.pack(value)
    else:
        if type_ is FieldType.STRING:
            raw = value.encode()
        elif type_ is FieldType.MESSAGE:
            raw = encode_message(value)
        else:
            raw = bytes(value)
        _append_varint(out, len(raw))
        out += raw


def _is_default(type_: FieldType, value: Any) -> bool:
    if type_ is FieldType.MESSAGE:
        return value is None
    if type_ is FieldType.DOUBLE:
        return value == 0.0 and math.copysign(1.0, value) > 0  # -0.0 is written
    return not value


def encode_message(message: Message) -> bytes:
    """Encode a :class:`Message` dataclass by its ``FIELDS`` (rules in the module doc)."""
    out = bytearray()
    for field in message.FIELDS:
        value = getattr(message, field.name)
        if field.map_key is not None:
            for key in sorted(value):
                entry = bytearray()
                _encode_value(entry, 1, field.map_key, key)
                _encode_value(entry, 2, field.type, value[key])
                _tag(out, field.number, WireType.LEN)
                _append_varint(out, len(entry))
                out += entry
        elif field.repeated:
            for item in value:
                _encode_value(out, field.number, field.type, item)
        elif not _is_default(field.type, value):
            _encode_value(out, field.number, field.type, value)
    return bytes(out)


def _decode_scalar(field_type: FieldType, raw: int | bytes, enum: type[IntEnum] | None) -> Any:
    if field_type is FieldType.INT64:
        return _to_int64(raw)  # type: ignore[arg-type]
    if field_type is FieldType.INT32:
        return _to_int32(raw)  # type: ignore[arg-type]
    if field_type is FieldType.ENUM:
        number = _to_int32(raw)  # type: ignore[arg-type]
        if enum is not None:
            try:
                return enum(number)
            except ValueError:
                return number
        return number
    if field_type is FieldType.UINT32:
        return raw & 0xFFFFFFFF  # type: ignore[operator]
    if field_type is FieldType.UINT64:
        return raw
    if field_type is FieldType.SINT64:
        return zigzag_decode(raw)  # type: ignore[arg-type]
    if field_type is FieldType.BOOL:
        return raw != 0
    if field_type is FieldType.DOUBLE:
        return _DOUBLE.unpack(raw)[0]  # type: ignore[arg-type]
    if field_type is FieldType.STRING:
        try:
            return raw.decode()  # type: ignore[union-attr]
        except UnicodeDecodeError as exc:
            raise ProtobufError(f"string field is not valid UTF-8: {exc}") from None
    return raw  # BYTES


def _default(field: Field) -> Any:
    if field.map_key is not None:
        return {}
    if field.repeated:
        return ()
    return {
        FieldType.DOUBLE: 0.0,
        FieldType.STRING: "",
        FieldType.BYTES: b"",
        FieldType.BOOL: False,
        FieldType.MESSAGE: None,
    }.get(field.type, 0)


def _decode_value(field: Field, type_: FieldType, raw: int | bytes) -> Any:
    if type_ is FieldType.MESSAGE:
        assert field.message is not None
        return decode_message(field.message, raw)  # type: ignore[arg-type]
    return _decode_scalar(type_, raw, field.enum)


def _decode_map_entry(field: Field, raw: bytes) -> tuple[Any, Any]:
    assert field.map_key is not None
    key = _default(Field(1, "key", field.map_key))
    value_chunks: list[bytes] = []
    value = _default(Field(2, "value", field.type))
    for number, wire_type, item in iter_fields(raw):
        if number == 1 and wire_type is _WIRE_OF[field.map_key]:
            key = _decode_scalar(field.map_key, item, None)
        elif number == 2 and wire_type is _WIRE_OF[field.type]:
            if field.type is FieldType.MESSAGE:
                value_chunks.append(item)  # type: ignore[arg-type]
            else:
                value = _decode_value(field, field.type, item)
    if field.type is FieldType.MESSAGE:
        assert field.message is not None
        value = decode_message(field.message, b"".join(value_chunks))
    return key, value


def decode_message(cls: type[M], data: bytes | memoryview) -> M:
    """Decode ``data`` into the :class:`Message` dataclass ``cls`` (rules in the module doc)."""
    by_number = {field.number: field for field in cls.FIELDS}
    values: dict[str, Any] = {}
    message_chunks: dict[str, list[bytes]] = {}
    for number, wire_type, raw in iter_fields(data):
        field = by_number.get(number)
        if field is None:
            continue  # unknown field: skipped
        if field.map_key is not None:
            if wire_type is not WireType.LEN:
                continue
            key, value = _decode_map_entry(field, raw)  # type: ignore[arg-type]
            values.setdefault(field.name, {})[key] = value
            continue
        if wire_type is not _WIRE_OF[field.type]:
            continue  # protobuf-go keeps a mismatched wire type as an unknown field
        if field.repeated:
            values.setdefault(field.name, []).append(_decode_value(field, field.type, raw))
        elif field.type is FieldType.MESSAGE:
            message_chunks.setdefault(field.name, []).append(raw)  # type: ignore[arg-type]
        else:
            values[field.name] = _decode_value(field, field.type, raw)
    for name, chunks in message_chunks.items():
        field = next(f for f in cls.FIELDS if f.name == name)
        assert field.message is not None
        values[name] = decode_message(field.message, b"".join(chunks))
    for field in cls.FIELDS:
        if field.name not in values:
            values[field.name] = _default(field)
        elif field.repeated and field.map_key is None:
            values[field.name] = tuple(values[field.name])
    return cls(**values)
