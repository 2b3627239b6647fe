"""Length-prefixed frames over a real stream reader: boundaries and broken streams."""

from __future__ import annotations

import asyncio

import pytest

from actors.iso8583 import framing
from actors.iso8583.errors import FramingError


def reader_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_frames_read_back_in_order_then_none_at_a_clean_end() -> None:
    big = bytes(range(256)) * 255 + b"x" * 255  # exactly MAX_FRAME bytes
    assert len(big) == framing.MAX_FRAME
    reader = reader_of(framing.frame(b"one") + framing.frame(big))
    assert await framing.read_frame(reader) == b"one"
    assert await framing.read_frame(reader) == big
    assert await framing.read_frame(reader) is None


def test_frame_prefix_is_two_bytes_big_endian() -> None:
    assert framing.frame(b"\x01" * 258)[:2] == b"\x01\x02"


@pytest.mark.parametrize("size", [0, framing.MAX_FRAME + 1])
def test_frame_refuses_empty_or_oversized_payloads(size: int) -> None:
    with pytest.raises(FramingError):
        framing.frame(b"a" * size)


@pytest.mark.parametrize(
    "data",
    [b"\x00", b"\x00\x00", b"\x00\x05abc"],
    ids=["inside-prefix", "empty-frame", "inside-frame"],
)
async def test_broken_streams_raise_framing_error(data: bytes) -> None:
    with pytest.raises(FramingError):
        await framing.read_frame(reader_of(data))
