"""The one wire codec: msgpack, with typed, strictly checked records.

Rule 1: a record is a frozen dataclass; on the wire it is a msgpack array of its fields in
declaration order (no field names, no floats, no extension types, no trailing bytes).
Rule 2: decoding checks every field's type and length; anything off raises ``ProtocolError``
(``decodingFailure``, or ``messageTooBig`` for oversize input), never another exception.
Rule 3: signed content travels as the exact bytes that were signed (``bytes`` fields); the
receiver verifies those bytes before it decodes them. Nothing is re-encoded to verify.

Rule 4 (bounded decode): before msgpack builds any object, ``scan`` walks the headers of the
input (of a payload it only asks whether a str is ASCII) and charges every value to budgets
computed from the input's size ``n`` (at most ``max_size``, 1 MiB by default):

- memory: the heap decoding allocates is at most ``memory_budget(n)`` =
  ``DECODE_MEMORY_FACTOR * n + DECODE_MEMORY_SLACK`` = **8 x n + 64 KiB** (a conservative
  model of CPython 3.11's object sizes is charged against 15/16 of that less 32 KiB, the
  rest being headroom for the allocator's own bookkeeping; tests fill messages to the edge
  of the budget with the costliest values and check tracemalloc's peak against it);
- values: containers, map keys and scalars number at most
  ``DECODE_VALUE_SLACK + n // DECODE_BYTES_PER_VALUE`` = **4,096 + n / 4**, which bounds
  the work of the scan and of msgpack (measured on a shared 2-core machine: under 80 ms
  for the worst 1 MiB input accepted, where a 1 MiB bomb took 0.4-1.6 s before);
- nesting: at most ``MAX_DEPTH`` (32) levels; maps take only ``str``/``bytes`` keys.

A container is charged in full when its header is read, so a bomb (a million empty arrays
or maps in 1 MiB, which would otherwise build 64-83 MB and hold the event loop for a second)
is refused at its first header, in microseconds, having allocated nothing. So ``unpackb``
costs at most 8 x n + 64 KiB of heap and O(min(values, 4,096 + n / 4)) steps, and a
``decode`` at most twice that (the records mirror the tree they are built from). A budget
overrun is ``messageTooBig``; a malformed encoding (truncated, trailing bytes, reserved
byte, float, ext type, a count larger than the bytes left, nesting too deep) is
``decodingFailure``. Every caller of ``decode``/``unpackb`` gets these bounds, the
keystore's RPC records included.

Field types understood: ``bytes``, ``str``, ``int``, ``bool``, ``IntEnum``/``StrEnum``
subclasses, nested records, ``list[T]``, ``T | None``, and ``Annotated[T, Size(n)]`` /
``Annotated[T, MaxLen(n)]`` / ``Annotated[int, Range(lo, hi)]`` for limits.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import struct
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgpack

from protocol.errors import ErrorCode, ProtocolError

MAX_MESSAGE_BYTES = 1_048_576
DEFAULT_MAX_BYTES = 262_144
DEFAULT_MAX_STR = 4_096
DEFAULT_MAX_ITEMS = 1_024
MAX_DEPTH = 32
# The decode budget (see the module docstring): heap <= 8 x size + 64 KiB, and at most one
# value per 4 bytes beyond the first 4,096 values.
DECODE_MEMORY_FACTOR = 8
DECODE_MEMORY_SLACK = 65_536
DECODE_BYTES_PER_VALUE = 4
DECODE_VALUE_SLACK = 4_096

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Size:
    """Exact length of a ``bytes``/``str`` field."""

    n: int


@dataclass(frozen=True, slots=True)
class MaxLen:
    """Largest length of a ``bytes``/``str``/``list`` field."""

    n: int


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds of an ``int`` field."""

    lo: int
    hi: int


# Common field shapes.
Bytes32 = Annotated[bytes, Size(32)]
Digest = Bytes32  # SHA-256
Nonce = Bytes32  # challenges, XID, RRPID, EXNonce, CardSecret …
Amount = Annotated[int, Range(0, 10**15)]  # minor units
Timestamp = Annotated[int, Range(0, 2**42)]  # milliseconds since the Unix epoch
ShortStr = Annotated[str, MaxLen(256)]


def _fail(detail: str) -> ProtocolError:
    return ProtocolError(ErrorCode.DECODING_FAILURE, detail)


# --- raw msgpack ------------------------------------------------------------------------


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_wire(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


_packer_kwargs = {"use_bin_type": True, "default": _default, "strict_types": False}


def packb(obj: Any) -> bytes:
    """Encode a record (or plain msgpack-able value) to bytes."""
    try:
        return msgpack.packb(obj, **_packer_kwargs)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(ErrorCode.UNSPECIFIED_FAILURE, f"cannot encode: {exc}") from None


def _no_ext(code: int, data: bytes) -> Any:
    raise _fail("msgpack extension types are not allowed")


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _fail("duplicate map key")
    return out


def unpackb(data: bytes, max_size: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode raw msgpack strictly: size limit, decode budget, depth, no trailing bytes, no ext
    types, no floats. Raises only ``ProtocolError``; the budget is checked before any object
    is built (see the module docstring)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fail("input is not bytes")
    if len(data) > max_size:
        raise ProtocolError(ErrorCode.MESSAGE_TOO_BIG, f"{len(data)} bytes > {max_size}")
    if isinstance(data, memoryview):
        data = data.tobytes()  # the scan indexes single bytes; a view may not be of bytes
    scan(data)
    max_values = value_budget(len(data))
    try:
        # The caps repeat the scan's limits inside msgpack itself: a second line, not the first.
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_no_ext,
            object_pairs_hook=_pairs,
            max_array_len=max_values,
            max_map_len=max_values // 2,
        )
    except ProtocolError:
        raise
    except msgpack.ExtraData:
        raise _fail("trailing bytes after the value") from None
    except Exception as exc:  # msgpack raises many types; all mean the same thing here
        raise _fail(f"not valid msgpack ({type(exc).__name__})") from None


# --- the decode budget --------------------------------------------------------------------

# Bytes of Python heap (CPython 3.11, 64-bit, pymalloc rounding) that msgpack allocates per
# decoded value, measured with tracemalloc: a list is 56 plus 8 per slot (the slot is the
# child's only cost when the child is a cached object: None, bools, -5..256, b"", one-byte
# bytes, one-character latin-1 str); a map through ``_pairs`` peaks at the pairs list, its
# tuples and the growing dict together; ints are 32 (40 from 2**60); bytes 33 + n; an ASCII
# str 49 + n; a non-ASCII str is decoded through a wider buffer, up to about 5.3 n.
_LIST_COST = 56
_SLOT_COST = 8
_MAP_COST = 200
_MAP_ENTRY_COST = 144
_INT_COST = 32
_INT64_COST = 40
_BIN_COST = 40
_ASCII_STR_COST = 56
_WIDE_STR_COST = 88
_WIDE_STR_FACTOR = 6

_NON_ASCII = re.compile(rb"[\x80-\xff]")
_U8 = struct.Struct(">B").unpack_from
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
# Scalars of fixed size after their first byte (0xc0..0xdf), with their heap cost.
_FIXED: dict[int, tuple[int, int]] = {
    0xC0: (1, 0),  # nil
    0xC2: (1, 0),  # false
    0xC3: (1, 0),  # true
    0xCC: (2, 0),  # uint 8: always a cached int
    0xCD: (3, _INT_COST),
    0xCE: (5, _INT_COST),
    0xCF: (9, _INT64_COST),
    0xD0: (2, _INT_COST),
    0xD1: (3, _INT_COST),
    0xD2: (5, _INT_COST),
    0xD3: (9, _INT64_COST),
}
_FLOATS = frozenset({0xCA, 0xCB})
_EXTS = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})


def memory_budget(size: int) -> int:
    """The most heap, in bytes, that decoding ``size`` bytes of msgpack may allocate."""
    return DECODE_MEMORY_FACTOR * size + DECODE_MEMORY_SLACK


def value_budget(size: int) -> int:
    """The most values (containers, keys and scalars) ``size`` bytes of msgpack may hold."""
    return DECODE_VALUE_SLACK + size // DECODE_BYTES_PER_VALUE


def _modelled_budget(size: int) -> int:
    # The model sees objects, not the allocator's own bookkeeping: obmalloc maps each new
    # arena in a radix tree whose 32 KiB nodes it allocates, through the traced allocator,
    # when an arena lands in a fresh address range (measured: up to 47 KB while decoding
    # 100,000 values). So the objects get 1/16 less, and 32 KiB less, than the guarantee.
    budget = memory_budget(size)
    return budget - budget // 16 - 32_768


def _str_cost(data: bytes, start: int, length: int) -> int:
    if length == 0:
        return 0
    if _NON_ASCII.search(data, start, start + length) is None:
        return 0 if length == 1 else _ASCII_STR_COST + length
    return _WIDE_STR_COST + _WIDE_STR_FACTOR * length


def _too_big(what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MESSAGE_TOO_BIG, f"decoded form too large: {what}")


def scan(data: bytes) -> None:
    """Walk the msgpack headers of ``data`` without building anything, and refuse it
    (``ProtocolError``) unless it is one well-formed value (no floats, no ext types, nesting
    at most ``MAX_DEPTH``) of at most ``value_budget`` values whose decoding allocates at
    most ``memory_budget`` bytes. A container's whole count is charged when its header is
    read, so a bomb is refused at its first oversized header; the walk takes
    O(min(values, value_budget)) steps.
    """
    size = len(data)
    try:
        _scan(data, value_budget(size), _modelled_budget(size))
    except struct.error:
        raise _fail("not valid msgpack (truncated)") from None


def _scan(data: bytes, max_values: int, max_memory: int) -> None:
    end = len(data)
    pos = 0
    values = 1  # the top value; a container adds its children when its header is read
    memory = 0
    remaining = 1  # values still to read in the innermost open container
    stack: list[int] = []  # ``remaining`` of each enclosing container
    while True:
        if not remaining:
            if not stack:
                break
            remaining = stack.pop()
            continue
        remaining -= 1
        if pos >= end:
            raise _fail("not valid msgpack (truncated)")
        b = data[pos]
        if b < 0x80:  # positive fixint: cached
            pos += 1
            continue
        if b == 0xC4:  # bin 8, the commonest header in our records (digests, nonces)
            length = data[pos + 1] if pos + 1 < end else end
            pos += 2
            if length > end - pos:
                raise _fail("not valid msgpack (truncated)")
            if length > 1:
                memory += _BIN_COST + length
            pos += length
            continue
        if b >= 0xE0:  # negative fixint: -5..-1 cached
            pos += 1
            if b < 0xFB:
                memory += _INT_COST
            continue
        if b < 0xA0:  # fixmap / fixarray
            count = b & 0x0F
            is_map = b < 0x90
            pos += 1
        elif b < 0xC0:  # fixstr
            length = b & 0x1F
            pos += 1
            if length > end - pos:
                raise _fail("not valid msgpack (truncated)")
            memory += _str_cost(data, pos, length)
            pos += length
            continue
        elif b in _FIXED:
            size, cost = _FIXED[b]
            pos += size
            memory += cost
            continue
        elif b in (0xC5, 0xC6, 0xD9, 0xDA, 0xDB):  # bin / str with a 1-, 2- or 4-byte length
            width = 1 << (b - 0xC4 if b < 0xC7 else b - 0xD9)
            length = (_U8 if width == 1 else _U16 if width == 2 else _U32)(data, pos + 1)[0]
            pos += 1 + width
            if length > end - pos:
                raise _fail("not valid msgpack (truncated)")
            if b < 0xC7:
                memory += 0 if length <= 1 else _BIN_COST + length
            else:
                memory += _str_cost(data, pos, length)
            pos += length
            continue
        elif b in (0xDC, 0xDE):
            count = _U16(data, pos + 1)[0]
            is_map = b == 0xDE
            pos += 3
        elif b in (0xDD, 0xDF):
            count = _U32(data, pos + 1)[0]
            is_map = b == 0xDF
            pos += 5
        elif b in _FLOATS:
            raise _fail("floats are not allowed")
        elif b in _EXTS:
            raise _fail("msgpack extension types are not allowed")
        else:  # 0xc1, never used
            raise _fail("not valid msgpack (reserved byte)")
        # A container of ``count`` entries: charge all of it now, before reading any child.
        children = 2 * count if is_map else count
        if children > end - pos:  # every value takes at least one byte
            raise _fail("not valid msgpack (count exceeds the remaining bytes)")
        values += children
        memory += _MAP_COST + _MAP_ENTRY_COST * count if is_map else _LIST_COST + _SLOT_COST * count
        if values > max_values:
            raise _too_big(f"more than {max_values} values")
        if memory > max_memory:
            raise _too_big(f"more than {max_memory} bytes")
        if children:
            if len(stack) >= MAX_DEPTH:
                raise _fail("nesting too deep")
            stack.append(remaining)
            remaining = children
    if pos > end:  # a fixed-size scalar cut short
        raise _fail("not valid msgpack (truncated)")
    if pos < end:
        raise _fail("trailing bytes after the value")
    if memory > max_memory:  # scalars are charged as read; containers at their header
        raise _too_big(f"more than {max_memory} bytes")


# --- records ----------------------------------------------------------------------------

Checker = Callable[[Any, str], Any]
_checkers: dict[type, list[tuple[str, Checker]]] = {}


def _limits(extras: tuple[Any, ...]) -> tuple[Size | None, MaxLen | None, Range | None]:
    size = next((e for e in extras if isinstance(e, Size)), None)
    maxlen = next((e for e in extras if isinstance(e, MaxLen)), None)
    rng = next((e for e in extras if isinstance(e, Range)), None)
    return size, maxlen, rng


def _checker_for(tp: Any) -> Checker:
    extras: tuple[Any, ...] = ()
    if typing.get_origin(tp) is Annotated:
        tp, *rest = typing.get_args(tp)
        extras = tuple(rest)
    size, maxlen, rng = _limits(extras)
    origin = typing.get_origin(tp)

    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"only Optional unions are supported, not {tp}")
        inner = _checker_for(args[0])

        def check_optional(v: Any, where: str) -> Any:
            return None if v is None else inner(v, where)

        return check_optional

    if origin is list:
        (item_tp,) = typing.get_args(tp)
        item = _checker_for(item_tp)
        limit = maxlen.n if maxlen else DEFAULT_MAX_ITEMS

        def check_list(v: Any, where: str) -> Any:
            if not isinstance(v, list):
                raise _fail(f"{where}: expected an array")
            if len(v) > limit:
                raise _fail(f"{where}: more than {limit} items")
            return [item(x, f"{where}[{i}]") for i, x in enumerate(v)]

        return check_list

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        record = tp

        def check_record(v: Any, where: str) -> Any:
            return _from_wire(record, v, where)

        return check_record

    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enum_tp = tp
        base = int if issubclass(tp, int) else str

        def check_enum(v: Any, where: str) -> Any:
            if type(v) is not base:
                raise _fail(f"{where}: expected {enum_tp.__name__}")
            try:
                return enum_tp(v)
            except ValueError:
                raise _fail(f"{where}: unknown {enum_tp.__name__} value") from None

        return check_enum

    if tp is bool:

        def check_bool(v: Any, where: str) -> Any:
            if type(v) is not bool:
                raise _fail(f"{where}: expected a boolean")
            return v

        return check_bool

    if tp is int:
        lo, hi = (rng.lo, rng.hi) if rng else (-(2**63), 2**64 - 1)

        def check_int(v: Any, where: str) -> Any:
            if type(v) is not int:
                raise _fail(f"{where}: expected an integer")
            if not lo <= v <= hi:
                raise _fail(f"{where}: integer out of range")
            return v

        return check_int

    if tp in (bytes, str):
        kind = tp
        default = DEFAULT_MAX_BYTES if tp is bytes else DEFAULT_MAX_STR
        hi_len = size.n if size else (maxlen.n if maxlen else default)
        lo_len = size.n if size else 0

        def check_blob(v: Any, where: str) -> Any:
            if type(v) is not kind:
                raise _fail(f"{where}: expected {kind.__name__}")
            if not lo_len <= len(v) <= hi_len:
                raise _fail(f"{where}: bad length {len(v)}")
            return v

        return check_blob

    raise TypeError(f"unsupported field type {tp!r}")


def _fields_of(cls: type) -> list[tuple[str, Checker]]:
    cached = _checkers.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        cached = [(f.name, _checker_for(hints[f.name])) for f in dataclasses.fields(cls)]
        _checkers[cls] = cached
    return cached


def _from_wire(cls: type[T], value: Any, where: str) -> T:
    fields = _fields_of(cls)
    if not isinstance(value, list):
        raise _fail(f"{where}: expected a {cls.__name__} array")
    if len(value) != len(fields):
        raise _fail(f"{where}: {cls.__name__} has {len(fields)} fields, got {len(value)}")
    pairs = zip(fields, value, strict=True)
    kwargs = {name: check(v, f"{where}.{name}") for (name, check), v in pairs}
    return cls(**kwargs)


def to_wire(record: Any) -> list[Any]:
    """A record as the plain list msgpack encodes (nested records become nested lists)."""
    out: list[Any] = []
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = to_wire(value)
        elif isinstance(value, list):
            value = [to_wire(v) if dataclasses.is_dataclass(v) else v for v in value]
        elif isinstance(value, enum.Enum):
            value = value.value
        out.append(value)
    return out


def from_wire(cls: type[T], value: Any) -> T:
    """Check a decoded msgpack value against ``cls`` and build the record."""
    return _from_wire(cls, value, cls.__name__)


def encode(record: Any) -> bytes:
    """Encode a record to msgpack bytes."""
    return packb(to_wire(record))


def decode(cls: type[T], data: bytes, max_size: int = MAX_MESSAGE_BYTES) -> T:
    """Decode and check msgpack bytes as a ``cls`` record. Raises only ``ProtocolError``."""
    return from_wire(cls, unpackb(data, max_size=max_size))


def validate_schema(cls: type) -> None:
    """Fail at import time (``TypeError``) if a record uses an unsupported field type."""
    _fields_of(cls)
