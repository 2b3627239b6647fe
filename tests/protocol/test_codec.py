"""The msgpack codec: typed records, strict decoding, only ProtocolError on bad input."""

from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated

import msgpack
import pytest

from protocol import codec
from protocol.codec import Amount, MaxLen, Nonce
from protocol.errors import ErrorCode, ProtocolError


class Colour(IntEnum):
    RED = 1
    BLUE = 2


@dataclass(frozen=True, slots=True)
class Inner:
    nonce: Nonce
    colour: Colour


@dataclass(frozen=True, slots=True)
class Outer:
    count: int
    blob: bytes
    name: Annotated[str, MaxLen(8)]
    maybe: str | None
    items: list[Inner]
    amount: Amount
    flag: bool


SAMPLE = Outer(3, b"\x00\xff", "abc", None, [Inner(b"n" * 32, Colour.BLUE)], 1999, True)


def test_round_trip_is_exact() -> None:
    """encode → decode gives back an equal record, and encoding is deterministic."""
    data = codec.encode(SAMPLE)
    assert codec.decode(Outer, data) == SAMPLE
    assert codec.encode(codec.decode(Outer, data)) == data


@pytest.mark.parametrize(
    "wire",
    [
        [3, b"", "abc", None, [], 1, True, "extra"],  # too many fields
        [3, b"", "abc", None, [], 1],  # too few
        ["3", b"", "abc", None, [], 1, True],  # str for int
        [3, "blob", "abc", None, [], 1, True],  # str for bytes
        [3, b"", "abcdefghi", None, [], 1, True],  # too long
        [3, b"", "abc", None, [[b"short", 1]], 1, True],  # nonce of wrong size
        [3, b"", "abc", None, [[b"n" * 32, 7]], 1, True],  # unknown enum value
        [3, b"", "abc", None, [], -1, True],  # negative amount
        [3, b"", "abc", None, [], 1, 1],  # int for bool
        [True, b"", "abc", None, [], 1, True],  # bool for int
        {"count": 3},  # map instead of array
    ],
)
def test_wrong_shapes_are_decoding_failures(wire: object) -> None:
    """Every type and length check refuses with decodingFailure."""
    with pytest.raises(ProtocolError) as info:
        codec.decode(Outer, msgpack.packb(wire, use_bin_type=True))
    assert info.value.code is ErrorCode.DECODING_FAILURE


@pytest.mark.parametrize(
    "raw",
    [
        codec.encode(SAMPLE) + b"\x00",  # trailing bytes
        codec.encode(SAMPLE)[:-1],  # truncated
        b"\xc1",  # reserved byte
        msgpack.packb(1.5),  # float
        msgpack.packb(msgpack.ExtType(1, b"x")),  # extension type
        b"\x82\xa1a\x01\xa1a\x02",  # duplicate map key
        b"",
    ],
)
def test_malformed_msgpack_is_refused(raw: bytes) -> None:
    """Only ProtocolError(decodingFailure) for malformed bytes, never another exception."""
    with pytest.raises(ProtocolError) as info:
        codec.decode(Outer, raw)
    assert info.value.code is ErrorCode.DECODING_FAILURE


def test_oversize_is_message_too_big() -> None:
    """The size limit is checked before any parsing."""
    with pytest.raises(ProtocolError) as info:
        codec.unpackb(b"\x00" * 101, max_size=100)
    assert info.value.code is ErrorCode.MESSAGE_TOO_BIG


def test_unsupported_field_type_fails_at_definition() -> None:
    """A record with a type the codec cannot check is refused early, not at runtime."""

    @dataclass(frozen=True)
    class Bad:
        x: float

    with pytest.raises(TypeError):
        codec.validate_schema(Bad)
