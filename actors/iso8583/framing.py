"""Length-prefixed frames over a TCP stream: 2-byte big-endian length, then the message.

Rule 1: a frame is 1..65535 bytes; an empty frame is a framing error (the stream is out of
step and the connection must be closed).
Rule 2: ``read_frame`` returns None on a clean end of stream between frames and raises
``FramingError`` when the stream ends inside one.
"""

from __future__ import annotations

import asyncio
import struct

from actors.iso8583.errors import FramingError

MAX_FRAME = 0xFFFF
_PREFIX = struct.Struct(">H")


def frame(payload: bytes) -> bytes:
    """``payload`` with its length prefix. Raises ``FramingError`` if empty or too long."""
    if not 0 < len(payload) <= MAX_FRAME:
        raise FramingError(f"frame length {len(payload)} outside 1..{MAX_FRAME}")
    return _PREFIX.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's payload, or None at a clean end of stream."""
    try:
        prefix = await reader.readexactly(_PREFIX.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FramingError("stream ended inside a length prefix") from None
    (length,) = _PREFIX.unpack(prefix)
    if length == 0:
        raise FramingError("empty frame")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise FramingError("stream ended inside a frame") from None


def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    """Queue one frame on ``writer`` in a single write, so concurrent frames never interleave."""
    writer.write(frame(payload))
