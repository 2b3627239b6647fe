"""Bounded decode: msgpack bombs are refused before anything is built, and whatever the codec
does accept costs at most ``memory_budget(len(data))`` (8 x n + 64 KiB) of heap to decode.

Memory is measured with ``tracemalloc`` (the peak of Python allocations during the call), so
the assertions hold however slow or loaded the machine is.
"""

from __future__ import annotations

import dataclasses
import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgpack
import pytest

from keystore import messages as km
from protocol import codec, wrapper
from protocol import messages as m
from protocol.codec import MaxLen
from protocol.errors import ErrorCode, ProtocolError
from tests.protocol.test_messages import BODY_SAMPLES, DATA_SAMPLES, NOW_MS, header_for

MIB = 1 << 20


def arr32(count: int) -> bytes:
    return b"\xdd" + struct.pack(">I", count)


def map32(count: int) -> bytes:
    return b"\xdf" + struct.pack(">I", count)


def bin32(payload: bytes) -> bytes:
    return b"\xc6" + struct.pack(">I", len(payload)) + payload


def padded(body: bytes, size: int) -> bytes:
    """``[padding bin, body]`` of exactly ``size`` bytes: a message whose budget is that of
    ``size`` bytes but whose structure is all in ``body``."""
    pad = size - len(body) - 6
    assert pad >= 0
    return b"\x92" + bin32(b"p" * pad) + body


def traced(call: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``call``; return its result (or the exception it raised) and the traced heap peak."""
    tracemalloc.start()
    try:
        try:
            result: Any = call()
        except Exception as exc:  # returned, so the caller asserts on its type
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


# --- bombs ------------------------------------------------------------------------------

_FILL = MIB - 5
BOMBS = {
    # the bomb: one array of a million empty arrays (64 MB and 0.4-1.6 s before)
    "nested empty arrays": arr32(_FILL) + b"\x90" * _FILL,
    "empty maps": arr32(_FILL) + b"\x80" * _FILL,
    "one-entry maps": arr32(_FILL // 3) + b"\x81\xa0\x90" * (_FILL // 3),
    "one big map": map32(_FILL // 7)
    + b"".join(b"\xa5" + b"%05x" % i + b"\x90" for i in range(_FILL // 7)),
    "arrays of fifteen empty arrays": arr32(_FILL // 16) + (b"\x9f" + b"\x90" * 15) * (_FILL // 16),
    "negative ints": arr32(_FILL) + b"\xe0" * _FILL,
    "a million nils": arr32(_FILL) + b"\xc0" * _FILL,
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_one_mib_bombs_are_refused_without_building_them(name: str) -> None:
    """Each 1 MiB bomb raises messageTooBig, and decoding it allocates under 8 x its size
    (in fact next to nothing: the scan refuses it before msgpack builds an object)."""
    data = BOMBS[name]
    assert len(data) <= codec.MAX_MESSAGE_BYTES
    error, peak = traced(lambda: codec.unpackb(data))
    assert isinstance(error, ProtocolError)
    assert error.code is ErrorCode.MESSAGE_TOO_BIG
    assert peak < 8 * len(data)
    assert peak < 64 * 1024, "nothing of the bomb should have been built"


def test_before_the_bound_msgpack_would_have_built_the_bomb() -> None:
    """The bomb is real: plain msgpack turns a 64 KiB slice of it into more than 32 x its
    size, which is what the bound prevents at 1 MiB."""
    small = arr32(65_536) + b"\x90" * 65_536
    _, peak = traced(lambda: msgpack.unpackb(small))
    assert peak > 32 * len(small)


@pytest.mark.parametrize("name", list(BOMBS))
def test_bombs_inside_a_record_or_a_wrapper_are_refused(name: str) -> None:
    """The same bounds hold through ``decode`` and ``decode_message`` (the bomb as a record
    field, and as the body of an otherwise valid wrapper)."""
    bomb = BOMBS[name]
    with pytest.raises(ProtocolError) as info:
        codec.decode(km.Request, bomb)
    assert info.value.code is ErrorCode.MESSAGE_TOO_BIG
    valid = msgpack.unpackb(wrapper.encode_message(header_for(_PRES), _PRES))
    valid[2] = bomb
    with pytest.raises(ProtocolError) as info:
        wrapper.decode_message(msgpack.packb(valid, use_bin_type=True), now_ms=NOW_MS)
    assert info.value.code is ErrorCode.MESSAGE_TOO_BIG


_PRES = BODY_SAMPLES[m.MessageType.PRES]


@pytest.mark.parametrize("depth", [codec.MAX_DEPTH + 1, 1_000, 100_000, MIB - 1])
def test_deep_nesting_is_refused(depth: int) -> None:
    """Arrays nested deeper than MAX_DEPTH are decodingFailure, however deep."""
    data = b"\x91" * depth + b"\xc0"
    error, peak = traced(lambda: codec.unpackb(data))
    assert isinstance(error, ProtocolError)
    assert error.code is ErrorCode.DECODING_FAILURE
    assert peak < 64 * 1024


def test_nesting_up_to_the_limit_is_accepted() -> None:
    """Exactly MAX_DEPTH levels decode (the limit is where the docstring says)."""
    data = b"\x91" * codec.MAX_DEPTH + b"\xc0"
    value = codec.unpackb(data)
    for _ in range(codec.MAX_DEPTH):
        value = value[0]
    assert value is None


@pytest.mark.parametrize(
    "data",
    [
        arr32(2**32 - 1) + b"\x90" * 16,  # count far beyond the bytes that follow
        map32(2**32 - 1) + b"\xa0\x90" * 16,
        b"\xdc\xff\xff" + b"\xc0" * 100,
        b"\xde\xff\xff" + b"\xa0\xc0" * 100,
        b"\xdb" + struct.pack(">I", 2**32 - 1) + b"x",  # str longer than the input
        b"\xc6" + struct.pack(">I", 2**31) + b"x",  # bin longer than the input
        b"\xdd\x00\x00",  # header cut short
        b"\x92\xcf\x00",  # fixed-size scalar cut short
    ],
)
def test_counts_and_lengths_beyond_the_input_are_malformed(data: bytes) -> None:
    """A count or length the input cannot hold is decodingFailure, allocating nothing."""
    error, peak = traced(lambda: codec.unpackb(data))
    assert isinstance(error, ProtocolError)
    assert error.code is ErrorCode.DECODING_FAILURE
    assert peak < 64 * 1024


def test_huge_flat_arrays_are_refused_by_count() -> None:
    """An array of more values than the value budget allows is messageTooBig, even when
    every value is a cached object (the count bounds the work, not just the memory)."""
    size = 512 * 1024
    count = codec.value_budget(size)  # with the array itself: one value over budget
    data = padded(arr32(count) + b"\xc0" * count, size)
    with pytest.raises(ProtocolError) as info:
        codec.unpackb(data)
    assert info.value.code is ErrorCode.MESSAGE_TOO_BIG
    under = padded(arr32(count - 8) + b"\xc0" * (count - 8), size)
    assert codec.unpackb(under)[1] == [None] * (count - 8)


def test_memoryview_and_bytearray_inputs_are_bounded_too() -> None:
    bomb = BOMBS["nested empty arrays"]
    for data in (bytearray(bomb), memoryview(bomb)):
        with pytest.raises(ProtocolError) as info:
            codec.unpackb(data)
        assert info.value.code is ErrorCode.MESSAGE_TOO_BIG
    assert codec.unpackb(memoryview(b"\x92\x01\xa1x")) == [1, "x"]


# --- the guarantee at the edge of the budget ---------------------------------------------

EDGE_SIZE = 192 * 1024
# The cheapest-to-send, costliest-to-build units (with a msgpack header, each one value or
# container): these are what an attacker fills a message with to reach the budget.
UNITS = {
    "[nil]": b"\x91\xc0",
    "[]": b"\x90",
    "{}": b"\x80",
    "{'': []}": b"\x81\xa0\x90",
    "{'a', 'b', 'c'}": b"\x83\xa1a\xc0\xa1b\xc0\xa1c\xc0",
    "-32": b"\xe0",
    "uint64": b"\xcf" + b"\xff" * 8,
    "'ab'": b"\xa2ab",
    "'€'": b"\xa3" + "€".encode(),
    "'😀'": b"\xa4" + "😀".encode(),
    "'a…a😀'": b"\xd9\x44" + ("a" * 64 + "😀").encode(),
    "'😀a…a'": b"\xd9\x44" + ("😀" + "a" * 64).encode(),
    "'éé'": b"\xa4" + "éé".encode(),
    "b'ab'": b"\xc4\x02ab",
    "[[], [], …]": b"\x9f" + b"\x90" * 15,
}


def _fits(unit: bytes, count: int) -> bool:
    data = padded(arr32(count) + unit * count, EDGE_SIZE)
    try:
        codec.scan(data)
    except ProtocolError:
        return False
    return True


def _most_that_fit(unit: bytes) -> int:
    lo, hi = 0, (EDGE_SIZE - 16) // len(unit)
    while lo < hi:  # largest count the budget accepts
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _fits(unit, mid) else (lo, mid - 1)
    return lo


@pytest.mark.parametrize("name", list(UNITS))
def test_the_most_the_budget_accepts_stays_within_it(name: str) -> None:
    """Fill a message with as many costly units as the budget accepts: decoding it really
    allocates no more than ``memory_budget`` (8 x n + 64 KiB): the cost model is an upper
    bound of CPython's allocations, not a guess. One more unit is refused."""
    unit = UNITS[name]
    count = _most_that_fit(unit)
    assert count > 0
    data = padded(arr32(count) + unit * count, EDGE_SIZE)
    value, peak = traced(lambda: codec.unpackb(data))
    assert isinstance(value, list) and len(value[1]) == count
    assert peak <= codec.memory_budget(len(data))
    if count < (EDGE_SIZE - 16) // len(unit):  # the budget, not the size, was the limit
        with pytest.raises(ProtocolError) as info:
            codec.unpackb(padded(arr32(count + 1) + unit * (count + 1), EDGE_SIZE))
        assert info.value.code is ErrorCode.MESSAGE_TOO_BIG


# --- legitimate large messages still decode ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bulk:
    label: str
    data: Annotated[bytes, MaxLen(MIB)]


def test_a_512_kib_bin_field_decodes_at_about_its_size() -> None:
    """A record carrying 512 KiB of bytes decodes; the heap it takes is the bytes object."""
    record = Bulk("bulk", bytes(range(256)) * 2048)
    data = codec.encode(record)
    value, peak = traced(lambda: codec.decode(Bulk, data))
    assert value == record
    assert peak < 2 * len(data)


def test_a_one_mib_message_of_bytes_decodes() -> None:
    """A message right at MAX_MESSAGE_BYTES made of byte strings decodes."""
    items = [bytes([i]) * 4000 for i in range(255)]
    data = codec.packb(items)
    assert len(data) <= codec.MAX_MESSAGE_BYTES
    assert codec.unpackb(data) == items


def test_every_sample_message_round_trips_through_the_bounded_path() -> None:
    """Every message type and data record of the protocol still decodes to itself."""
    for body in BODY_SAMPLES.values():
        data = wrapper.encode_message(header_for(body), body)
        assert wrapper.decode_message(data, now_ms=NOW_MS).body == body
    for content_type, record in DATA_SAMPLES.items():
        cls = m.DATA_RECORDS[content_type]
        assert codec.decode(cls, codec.encode(record)) == record


def test_the_largest_lists_the_schemas_allow_decode_within_twice_the_budget() -> None:
    """Dense legitimate records at their schemas' list limits decode, and ``decode`` (tree
    plus records) peaks under twice the tree's budget, as the codec's docstring states: a
    batch detail of 1,000 transactions, and a keystore key list of 4,096 secret keys."""
    sample = DATA_SAMPLES["BatchAdminRes"]
    item = sample.details.items[0]
    items = [dataclasses.replace(item, batch_seq=i) for i in range(1000)]
    detail = dataclasses.replace(sample, details=m.TransDetails(None, items))
    keys = km.KeyList(
        [
            km.KeyInfo(f"wallet.main/card-{i:05d}-dek", km.KeyKind.AES256, km.KeyUsage.SECRET, b"")
            for i in range(4096)
        ]
    )
    for cls, record in ((m.BatchAdminResData, detail), (km.KeyList, keys)):
        data = codec.encode(record)
        value, peak = traced(lambda cls=cls, data=data: codec.decode(cls, data))
        assert value == record
        assert peak <= 2 * codec.memory_budget(len(data))
