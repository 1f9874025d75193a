"""TCP header (RFC 9293 §3.1) with its options, and sequence-number arithmetic (§3.4).

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |          Source Port          |       Destination Port        |
    |                        Sequence Number                        |
    |                    Acknowledgment Number                      |
    |  Data |       |C|E|U|A|P|R|S|F|                               |
    | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
    |       |       |R|E|G|K|H|T|N|N|                               |
    |           Checksum            |         Urgent Pointer        |
    |                           [Options]                           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Options (RFC 9293 §3.2) are a kind byte, then for every kind but End of Option List (0) and
No-Operation (1) a length byte counting kind and length, then the value. We understand MSS
(kind 2, RFC 9293 §3.7.1), Window Scale (3, RFC 7323 §2), SACK-Permitted (4, RFC 2018 §2),
SACK (5, RFC 2018 §3) and Timestamps (8, RFC 7323 §3). Other kinds are skipped by their length
(RFC 9293 §3.2: "a TCP implementation MUST ignore without error any TCP option it does not
implement"). An option with a length below 2, one that runs past the header, and a known
option of the wrong length are malformed (RFC 9293 §3.2: be "prepared to handle an illegal
option length"); the segment is rejected with :class:`WireError`.

Flag combinations (SYN with FIN, say) and values that only make sense in some states (an MSS
outside a SYN, an empty SACK block) are *not* judged here: they are valid on the wire, and the
state machine applies RFC 9293 §3.10.7 to them. The four reserved bits are ignored on receive
and sent as zero (RFC 9293 §3.1, "Rsrvd").
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntFlag
from ipaddress import IPv4Address, IPv6Address
from typing import TypeAlias

from agentconn.net.wire import WireError
from agentconn.net.wire.checksum import Buffer, checksum, ones_sum, pseudo_sum

__all__ = [
    "HEADER_LEN",
    "MAX_HEADER_LEN",
    "MAX_OPTIONS_LEN",
    "MAX_SACK_BLOCKS",
    "MAX_SEGMENT_LEN",
    "MAX_WINDOW_SCALE",
    "OPTION_EOL",
    "OPTION_MSS",
    "OPTION_NOP",
    "OPTION_SACK",
    "OPTION_SACK_PERMITTED",
    "OPTION_TIMESTAMPS",
    "OPTION_WINDOW_SCALE",
    "PROTOCOL_TCP",
    "SEQ_MODULUS",
    "TcpFlags",
    "TcpPacket",
    "TcpRepr",
    "seq_add",
    "seq_ge",
    "seq_gt",
    "seq_le",
    "seq_lt",
    "seq_sub",
]

PROTOCOL_TCP = 6
"""IPv4 protocol / IPv6 Next Header number of TCP (IANA)."""

HEADER_LEN = 20
"""Length of the header without options (RFC 9293 §3.1, Data Offset 5)."""

MAX_HEADER_LEN = 60
"""Largest header: Data Offset is 4 bits of 32-bit words (RFC 9293 §3.1)."""

MAX_OPTIONS_LEN = MAX_HEADER_LEN - HEADER_LEN
"""Room for options: 40 bytes."""

MAX_SEGMENT_LEN = 0xFFFF
"""Largest header plus payload that an IPv4 or (non-jumbo) IPv6 packet can carry."""

MAX_WINDOW_SCALE = 14
"""Largest shift count (RFC 7323 §2.3)."""

MAX_SACK_BLOCKS = 4
"""A SACK option of 4 blocks is 34 bytes, the most that fits in 40 (RFC 2018 §3)."""

SEQ_MODULUS = 1 << 32
"""Sequence numbers are taken modulo 2**32 (RFC 9293 §3.4)."""

_SEQ_MASK = SEQ_MODULUS - 1
_SEQ_HALF = 1 << 31

# Option kinds (IANA "TCP Option Kind Numbers").
OPTION_EOL = 0  # RFC 9293 §3.2
OPTION_NOP = 1  # RFC 9293 §3.2
OPTION_MSS = 2  # RFC 9293 §3.2, §3.7.1
OPTION_WINDOW_SCALE = 3  # RFC 7323 §2.2
OPTION_SACK_PERMITTED = 4  # RFC 2018 §2
OPTION_SACK = 5  # RFC 2018 §3
OPTION_TIMESTAMPS = 8  # RFC 7323 §3.2

# Total length (kind + length + value) of the fixed-size options we understand.
_OPTION_LEN = {
    OPTION_MSS: 4,
    OPTION_WINDOW_SCALE: 3,
    OPTION_SACK_PERMITTED: 2,
    OPTION_TIMESTAMPS: 10,
}
_SACK_BLOCK_LEN = 8

# Field offsets (RFC 9293 §3.1).
_SRC_PORT = slice(0, 2)
_DST_PORT = slice(2, 4)
_SEQ = slice(4, 8)
_ACK = slice(8, 12)
_DATA_OFFSET = 12  # high nibble; low nibble is Rsrvd
_FLAGS = 13
_WINDOW = slice(14, 16)
_CHECKSUM = slice(16, 18)
_URGENT = slice(18, 20)

_HEADER = struct.Struct("!HHIIBBHHH")
_U16 = struct.Struct("!H")
_U32_PAIR = struct.Struct("!II")

Address: TypeAlias = IPv4Address | IPv6Address


class TcpFlags(IntFlag):
    """The control bits of RFC 9293 §3.1; ECE and CWR are RFC 3168 §6.1."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


def _check_family(src: Address, dst: Address) -> None:
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        return
    if isinstance(src, IPv6Address) and isinstance(dst, IPv6Address):
        return
    raise ValueError(f"TCP: mixed address families {src} and {dst}")


def _walk_options(area: memoryview) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(kind, value)`` for each option in *area* other than NOP and EOL.

    Stops at EOL or at the end of the area. Raises :class:`WireError` (lazily, when the
    iteration reaches it) on a malformed option.
    """
    offset = 0
    end = len(area)
    while offset < end:
        kind = area[offset]
        if kind == OPTION_EOL:
            return
        if kind == OPTION_NOP:
            offset += 1
            continue
        if offset + 1 >= end:
            raise WireError(f"TCP: option kind {kind} at offset {offset} has no length byte")
        length = area[offset + 1]
        if length < 2:
            raise WireError(f"TCP: option kind {kind} has length {length} (< 2)")
        if offset + length > end:
            raise WireError(
                f"TCP: option kind {kind} of length {length} at offset {offset} overruns "
                f"the {end}-byte option area"
            )
        expected = _OPTION_LEN.get(kind)
        if expected is not None and length != expected:
            raise WireError(f"TCP: option kind {kind} has length {length}, expected {expected}")
        if kind == OPTION_SACK:
            blocks, rest = divmod(length - 2, _SACK_BLOCK_LEN)
            if rest or not 1 <= blocks <= MAX_SACK_BLOCKS:
                raise WireError(f"TCP: SACK option has length {length}, expected 2 + 8n (n 1..4)")
        yield kind, area[offset + 2 : offset + length]
        offset += length


class TcpPacket:
    """A read-only view over a TCP segment whose header and option area are well-formed.

    Build it with :meth:`new_checked`; after that no accessor can fail. Use it to peek at a
    field (ports for demultiplexing, say) without building a :class:`TcpRepr`.
    """

    __slots__ = ("buffer",)

    def __init__(self, buffer: memoryview) -> None:
        self.buffer = buffer

    @classmethod
    def new_checked(cls, data: Buffer) -> TcpPacket:
        """Wrap the segment *data* (the IP payload) after checking its structure once.

        Raises :class:`WireError` if *data* is shorter than 20 bytes, if Data Offset is below 5
        or points past the end of *data*, or if the option area is malformed (see the module
        docstring). The checksum is not checked here; :meth:`TcpRepr.parse` does that.
        """
        if len(data) < HEADER_LEN:
            raise WireError(f"TCP: truncated header ({len(data)} < {HEADER_LEN} bytes)")
        packet = cls(memoryview(data))
        header_len = packet.header_len
        if header_len < HEADER_LEN:
            raise WireError(f"TCP: bad data offset {header_len // 4} (< 5)")
        if header_len > len(data):
            raise WireError(
                f"TCP: data offset {header_len // 4} ({header_len} bytes) exceeds "
                f"{len(data)}-byte segment"
            )
        for _ in _walk_options(packet.options):
            pass
        return packet

    @property
    def src_port(self) -> int:
        """Source port."""
        return int.from_bytes(self.buffer[_SRC_PORT], "big")

    @property
    def dst_port(self) -> int:
        """Destination port."""
        return int.from_bytes(self.buffer[_DST_PORT], "big")

    @property
    def seq_number(self) -> int:
        """Sequence number field."""
        return int.from_bytes(self.buffer[_SEQ], "big")

    @property
    def ack_number(self) -> int:
        """Acknowledgment number field, as stored (meaningful only when ACK is set)."""
        return int.from_bytes(self.buffer[_ACK], "big")

    @property
    def header_len(self) -> int:
        """Header length in bytes (Data Offset × 4), options included."""
        return (self.buffer[_DATA_OFFSET] >> 4) * 4

    @property
    def reserved(self) -> int:
        """The four Rsrvd bits (RFC 9293 §3.1), ignored on receive."""
        return self.buffer[_DATA_OFFSET] & 0x0F

    @property
    def flags(self) -> TcpFlags:
        """The eight control bits."""
        return TcpFlags(self.buffer[_FLAGS])

    @property
    def window_len(self) -> int:
        """Window field as on the wire: not yet shifted by the window scale."""
        return int.from_bytes(self.buffer[_WINDOW], "big")

    @property
    def checksum(self) -> int:
        """Checksum field as stored."""
        return int.from_bytes(self.buffer[_CHECKSUM], "big")

    @property
    def urgent_pointer(self) -> int:
        """Urgent pointer field (meaningful only when URG is set)."""
        return int.from_bytes(self.buffer[_URGENT], "big")

    @property
    def options(self) -> memoryview:
        """The raw option area, including any NOP/EOL padding."""
        return self.buffer[HEADER_LEN : self.header_len]

    def option_items(self) -> Iterator[tuple[int, memoryview]]:
        """Yield ``(kind, value)`` for each option other than NOP and EOL, in wire order.

        *value* excludes the kind and length bytes. Its length is already checked for the
        kinds we understand; unknown kinds are yielded as they are.
        """
        return _walk_options(self.options)

    @property
    def payload(self) -> memoryview:
        """The bytes after the header."""
        return self.buffer[self.header_len :]


@dataclass(frozen=True, slots=True)
class TcpRepr:
    """A parsed TCP header and the options we understand.

    Fields:

    - ``src_port``, ``dst_port``: 16-bit ports.
    - ``seq``: sequence number (32-bit).
    - ``ack``: acknowledgment number, or ``None`` exactly when ``TcpFlags.ACK`` is clear in
      ``flags`` (RFC 9293 §3.1: the field is meaningful only with ACK).
    - ``flags``: the control bits as :class:`TcpFlags`.
    - ``window``: the 16-bit Window field as on the wire; the receiver shifts it by the
      peer's window scale, except in a SYN (RFC 7323 §2.2).
    - ``urgent_pointer``: 16-bit, kept as on the wire whether or not URG is set.
    - ``mss``: Maximum Segment Size option value in bytes (RFC 9293 §3.7.1), or ``None``.
    - ``window_scale``: shift count 0..14 (RFC 7323 §2.2), or ``None`` when absent.
    - ``sack_permitted``: whether the SACK-Permitted option is present (RFC 2018 §2).
    - ``sack_blocks``: up to 4 ``(left_edge, right_edge)`` 32-bit pairs (RFC 2018 §3), as
      on the wire; the state machine ignores blocks that make no sense.
    - ``timestamps``: ``(TSval, TSecr)`` (RFC 7323 §3.2), or ``None``.

    Construction raises :class:`ValueError` for out-of-range fields, for ``ack`` disagreeing
    with the ACK flag, and for options that cannot fit in the 40-byte option area.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int | None
    flags: TcpFlags
    window: int
    urgent_pointer: int = 0
    mss: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamps: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name, value, high in (
            ("src_port", self.src_port, 0xFFFF),
            ("dst_port", self.dst_port, 0xFFFF),
            ("seq", self.seq, _SEQ_MASK),
            ("flags", int(self.flags), 0xFF),
            ("window", self.window, 0xFFFF),
            ("urgent_pointer", self.urgent_pointer, 0xFFFF),
        ):
            if not 0 <= value <= high:
                raise ValueError(f"TcpRepr: {name} must be 0..{high}, got {value}")
        object.__setattr__(self, "flags", TcpFlags(self.flags))
        has_ack_flag = TcpFlags.ACK in self.flags
        if has_ack_flag != (self.ack is not None):
            raise ValueError(
                f"TcpRepr: ack must be set exactly when the ACK flag is "
                f"(flags {self.flags!r}, ack {self.ack!r})"
            )
        if self.ack is not None and not 0 <= self.ack <= _SEQ_MASK:
            raise ValueError(f"TcpRepr: ack must be 0..{_SEQ_MASK}, got {self.ack}")
        if self.mss is not None and not 0 <= self.mss <= 0xFFFF:
            raise ValueError(f"TcpRepr: mss must be 0..65535, got {self.mss}")
        if self.window_scale is not None and not 0 <= self.window_scale <= MAX_WINDOW_SCALE:
            raise ValueError(
                f"TcpRepr: window_scale must be 0..{MAX_WINDOW_SCALE}, got {self.window_scale}"
            )
        blocks = tuple((left, right) for left, right in self.sack_blocks)
        object.__setattr__(self, "sack_blocks", blocks)
        if len(blocks) > MAX_SACK_BLOCKS:
            raise ValueError(f"TcpRepr: at most {MAX_SACK_BLOCKS} SACK blocks, got {len(blocks)}")
        edges = [edge for block in blocks for edge in block]
        if self.timestamps is not None:
            tsval, tsecr = self.timestamps
            object.__setattr__(self, "timestamps", (tsval, tsecr))
            edges += [tsval, tsecr]
        for value in edges:
            if not 0 <= value <= _SEQ_MASK:
                raise ValueError(
                    f"TcpRepr: SACK edges and timestamps must be 0..{_SEQ_MASK}, got {value}"
                )
        length = self._options_len()
        if length > MAX_OPTIONS_LEN:
            raise ValueError(f"TcpRepr: options need {length} bytes, at most {MAX_OPTIONS_LEN} fit")

    @classmethod
    def parse(
        cls, data: Buffer, src: Address, dst: Address, *, verify_checksum: bool = True
    ) -> tuple[TcpRepr, memoryview]:
        """Parse the TCP segment *data* carried from *src* to *dst* (the IP header's addresses).

        Returns the header and a zero-copy view of the payload. The checksum covers the
        IPv4 (RFC 9293 §3.1) or IPv6 (RFC 8200 §8.1) pseudo-header; pass
        ``verify_checksum=False`` only when it was verified already. A window scale above 14
        is read as 14 (RFC 7323 §2.3); if an option appears twice, the last one wins.

        Raises :class:`WireError` on a truncated segment, a bad data offset, a malformed
        option, a segment longer than 65535 bytes, or a bad checksum; :class:`ValueError`
        if *src* and *dst* differ in family.
        """
        _check_family(src, dst)
        if len(data) > MAX_SEGMENT_LEN:
            raise WireError(f"TCP: segment of {len(data)} bytes exceeds {MAX_SEGMENT_LEN}")
        packet = TcpPacket.new_checked(data)
        if verify_checksum:
            initial = pseudo_sum(src, dst, PROTOCOL_TCP, len(data))
            if checksum(packet.buffer, initial) != 0:
                raise WireError(f"TCP: bad checksum {packet.checksum:#06x}")
        mss: int | None = None
        window_scale: int | None = None
        sack_permitted = False
        sack_blocks: tuple[tuple[int, int], ...] = ()
        timestamps: tuple[int, int] | None = None
        for kind, value in packet.option_items():
            if kind == OPTION_MSS:
                mss = _U16.unpack(value)[0]
            elif kind == OPTION_WINDOW_SCALE:
                # RFC 7323 §2.3: a shift above 14 MUST be used as 14.
                window_scale = min(value[0], MAX_WINDOW_SCALE)
            elif kind == OPTION_SACK_PERMITTED:
                sack_permitted = True
            elif kind == OPTION_SACK:
                sack_blocks = tuple(_U32_PAIR.iter_unpack(value))
            elif kind == OPTION_TIMESTAMPS:
                timestamps = _U32_PAIR.unpack(value)
        flags = packet.flags
        repr_ = cls(
            src_port=packet.src_port,
            dst_port=packet.dst_port,
            seq=packet.seq_number,
            ack=packet.ack_number if TcpFlags.ACK in flags else None,
            flags=flags,
            window=packet.window_len,
            urgent_pointer=packet.urgent_pointer,
            mss=mss,
            window_scale=window_scale,
            sack_permitted=sack_permitted,
            sack_blocks=sack_blocks,
            timestamps=timestamps,
        )
        return repr_, packet.payload

    def _options_len(self) -> int:
        """Length of :meth:`_emit_options` without building it."""
        sack = 2 + _SACK_BLOCK_LEN * len(self.sack_blocks) if self.sack_blocks else 0
        linux = (
            (4 if self.mss is not None else 0)
            + (12 if self.timestamps is not None else 4 if self.sack_permitted else 0)
            + (4 if self.window_scale is not None else 0)
            + (2 + sack if sack else 0)
        )
        if linux <= MAX_OPTIONS_LEN:
            return linux
        packed = (
            (4 if self.mss is not None else 0)
            + (2 if self.sack_permitted else 0)
            + (10 if self.timestamps is not None else 0)
            + (3 if self.window_scale is not None else 0)
            + sack
        )
        return packed + -packed % 4

    def _emit_options(self) -> bytes:
        """The option area, laid out as Linux ``tcp_options_write`` does when that fits.

        Linux order: MSS; Timestamps preceded by SACK-Permitted (or two NOPs); SACK-Permitted
        alone behind two NOPs; Window Scale behind a NOP; SACK behind two NOPs. Every piece
        is a multiple of 4 bytes. If that exceeds 40 bytes (only for combinations Linux never
        sends, such as MSS with SACK blocks), the options are packed without NOPs and padded
        with zeros (EOL) to a 32-bit boundary, as RFC 9293 §3.1 allows.
        """
        pieces: list[bytes] = []
        if self.mss is not None:
            pieces.append(struct.pack("!BBH", OPTION_MSS, 4, self.mss))
        if self.timestamps is not None:
            lead = (
                bytes((OPTION_SACK_PERMITTED, 2))
                if self.sack_permitted
                else bytes((OPTION_NOP, OPTION_NOP))
            )
            pieces.append(lead + struct.pack("!BBII", OPTION_TIMESTAMPS, 10, *self.timestamps))
        elif self.sack_permitted:
            pieces.append(bytes((OPTION_NOP, OPTION_NOP, OPTION_SACK_PERMITTED, 2)))
        if self.window_scale is not None:
            pieces.append(bytes((OPTION_NOP, OPTION_WINDOW_SCALE, 3, self.window_scale)))
        sack = b""
        if self.sack_blocks:
            sack = bytes((OPTION_SACK, 2 + _SACK_BLOCK_LEN * len(self.sack_blocks)))
            sack += b"".join(_U32_PAIR.pack(*block) for block in self.sack_blocks)
            pieces.append(bytes((OPTION_NOP, OPTION_NOP)) + sack)
        linux = b"".join(pieces)
        if len(linux) <= MAX_OPTIONS_LEN:
            return linux
        packed = b""
        if self.mss is not None:
            packed += struct.pack("!BBH", OPTION_MSS, 4, self.mss)
        if self.sack_permitted:
            packed += bytes((OPTION_SACK_PERMITTED, 2))
        if self.timestamps is not None:
            packed += struct.pack("!BBII", OPTION_TIMESTAMPS, 10, *self.timestamps)
        if self.window_scale is not None:
            packed += bytes((OPTION_WINDOW_SCALE, 3, self.window_scale))
        packed += sack
        return packed + bytes(-len(packed) % 4)

    def header_len(self) -> int:
        """Length in bytes of the emitted header, options included (a multiple of 4)."""
        return HEADER_LEN + self._options_len()

    def emit(self, payload: Buffer, src: Address, dst: Address) -> bytes:
        """Return the segment (header, options, *payload*) to be carried from *src* to *dst*.

        The checksum covers the pseudo-header of the addresses' family. Raises
        :class:`ValueError` if *src* and *dst* differ in family or the segment would exceed
        65535 bytes.
        """
        _check_family(src, dst)
        options = self._emit_options()
        header_len = HEADER_LEN + len(options)
        length = header_len + len(payload)
        if length > MAX_SEGMENT_LEN:
            raise ValueError(f"TcpRepr.emit: segment of {length} bytes exceeds {MAX_SEGMENT_LEN}")
        fields = (
            self.src_port,
            self.dst_port,
            self.seq,
            0 if self.ack is None else self.ack,
            (header_len // 4) << 4,
            int(self.flags),
            self.window,
        )
        header = _HEADER.pack(*fields, 0, self.urgent_pointer) + options
        # The header is a multiple of 4 bytes, so its sum and the payload's combine.
        initial = ones_sum(header, pseudo_sum(src, dst, PROTOCOL_TCP, length))
        total = checksum(payload, initial)
        return _HEADER.pack(*fields, total, self.urgent_pointer) + options + bytes(payload)


# --- sequence-number arithmetic (RFC 9293 §3.4, in the manner of RFC 1982 §3) ---------------
#
# Sequence numbers live on a circle of 2**32. a < b means b is less than 2**31 ahead of a.
# At a distance of exactly 2**31 neither is before the other (RFC 1982 §3.2 leaves it
# undefined); TCP never meets that case, since a window is at most 2**30 (RFC 7323 §2.3).


def seq_add(seq: int, n: int) -> int:
    """Return ``seq + n`` modulo 2**32; *n* may be negative."""
    return (seq + n) & _SEQ_MASK


def seq_sub(a: int, b: int) -> int:
    """Return the signed distance ``a - b`` modulo 2**32, in -2**31..2**31-1.

    ``seq_sub(a, b) > 0`` exactly when ``seq_gt(a, b)``.
    """
    distance = (a - b) & _SEQ_MASK
    return distance - SEQ_MODULUS if distance >= _SEQ_HALF else distance


def seq_lt(a: int, b: int) -> bool:
    """Whether sequence number *a* comes before *b* (RFC 9293 §3.4's "<")."""
    return 0 < ((b - a) & _SEQ_MASK) < _SEQ_HALF


def seq_le(a: int, b: int) -> bool:
    """Whether *a* equals *b* modulo 2**32 or comes before it."""
    return ((b - a) & _SEQ_MASK) < _SEQ_HALF


def seq_gt(a: int, b: int) -> bool:
    """Whether *a* comes after *b*."""
    return seq_lt(b, a)


def seq_ge(a: int, b: int) -> bool:
    """Whether *a* equals *b* modulo 2**32 or comes after it."""
    return seq_le(b, a)
