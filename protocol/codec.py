"""The one wire codec: msgpack, with typed, strictly checked records.

Rule 1: a record is a frozen dataclass; on the wire it is a msgpack array of its fields in
declaration order (no field names, no floats, no extension types, no trailing bytes).
Rule 2: decoding checks every field's type and length; anything off raises ``ProtocolError``
(``decodingFailure``, or ``messageTooBig`` for oversize input), never another exception.
Rule 3: signed content travels as the exact bytes that were signed (``bytes`` fields); the
receiver verifies those bytes before it decodes them. Nothing is re-encoded to verify.

Field types understood: ``bytes``, ``str``, ``int``, ``bool``, ``IntEnum``/``StrEnum``
subclasses, nested records, ``list[T]``, ``T | None``, and ``Annotated[T, Size(n)]`` /
``Annotated[T, MaxLen(n)]`` / ``Annotated[int, Range(lo, hi)]`` for limits.
"""

from __future__ import annotations

import dataclasses
import enum
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
    """Decode raw msgpack strictly: size limit, no trailing bytes, no ext types, no floats."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fail("input is not bytes")
    if len(data) > max_size:
        raise ProtocolError(ErrorCode.MESSAGE_TOO_BIG, f"{len(data)} bytes > {max_size}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_no_ext,
            object_pairs_hook=_pairs,
        )
    except ProtocolError:
        raise
    except msgpack.ExtraData:
        raise _fail("trailing bytes after the value") from None
    except Exception as exc:  # msgpack raises many types; all mean the same thing here
        raise _fail(f"not valid msgpack ({type(exc).__name__})") from None
    _reject_floats(value, 0)
    return value


def _reject_floats(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _fail("nesting too deep")
    if isinstance(value, float):
        raise _fail("floats are not allowed")
    if isinstance(value, list):
        for item in value:
            _reject_floats(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            _reject_floats(item, depth + 1)


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
