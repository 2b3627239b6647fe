"""The trace file: a header record, then one record per SET envelope, each framed.

Rule 1: a file is ``MAGIC``, then frames; a frame is a 4-byte big-endian payload length, the
payload's 4-byte CRC-32, then the payload: strict codec msgpack (``protocol.codec``) of a
``TraceHeader`` (the first frame) or a ``TraceRecord`` (every later one).
Rule 2: the file is append-only and every frame is written with one ``write`` and flushed, so
a crash leaves it readable up to the last whole frame.
Rule 3: a short frame, a length over ``MAX_FRAME``, a CRC mismatch or a payload that is not a
record raises ``TraceCorrupt`` naming the byte offset of that frame; every frame before it
has been yielded already (readers stream: one frame in memory at a time).
Rule 4: a record holds what the wire showed: the envelope bytes as published (encrypted
parts stay encrypted) and the AMQP metadata; never anything the recorder decrypted.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, BinaryIO

from protocol import codec
from protocol.codec import MaxLen, Range, Size, Timestamp
from protocol.errors import ProtocolError

MAGIC = b"SETPAY-TRACE\x00\x01\r\n"
FORMAT_VERSION = 1
MAX_FRAME = codec.MAX_MESSAGE_BYTES + 8_192
_FRAME = struct.Struct(">II")

Name = Annotated[str, MaxLen(255)]  # AMQP shortstr


class TraceError(Exception):
    """A trace file that cannot be used (base of this package's errors)."""


class TraceCorrupt(TraceError):
    """The frame at ``offset`` is truncated or corrupted (Rule 3)."""

    def __init__(self, offset: int, what: str) -> None:
        super().__init__(f"trace corrupt at byte offset {offset}: {what}")
        self.offset = offset


@dataclass(frozen=True, slots=True)
class TraceHeader:
    """Format version, when recording began, where, and the environment's trust roots."""

    version: Annotated[int, Range(0, 255)]
    started_ms: Timestamp
    vhost: Name
    user_prefix: Name
    roots: Annotated[list[Annotated[bytes, Size(32)]], MaxLen(16)]  # SHA-256 thumbprints


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One SET envelope as published: ``t_ns`` is the recorder's monotonic clock at receipt,
    ``exchange`` the SET exchange it was published to, ``user_id`` the broker-validated
    login of its publisher."""

    t_ns: Annotated[int, Range(0, 2**63 - 1)]
    exchange: Name
    routing_key: Name
    msg_type: Name
    correlation_id: Name
    reply_to: Name
    user_id: Name
    body: Annotated[bytes, MaxLen(codec.MAX_MESSAGE_BYTES)]


codec.validate_schema(TraceHeader)
codec.validate_schema(TraceRecord)


def frame(payload: bytes) -> bytes:
    """One frame of ``payload`` (Rule 1)."""
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


class TraceWriter:
    """Appends records to a new trace file (Rule 2); ``bytes`` counts what was written."""

    def __init__(self, path: Path, header: TraceHeader) -> None:
        # "xb": a trace is never overwritten; a second recording goes to a new file.
        self._out: BinaryIO = path.open("xb")
        self.bytes = 0
        self.records = 0
        self._write(MAGIC)
        self._write(frame(codec.encode(header)))

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._out.flush()
        self.bytes += len(data)

    def append(self, record: TraceRecord) -> None:
        """Append one record, flushed."""
        self._write(frame(codec.encode(record)))
        self.records += 1

    def close(self) -> None:
        self._out.close()


def _read_frame(src: BinaryIO, offset: int) -> bytes | None:
    head = src.read(_FRAME.size)
    if not head:
        return None
    if len(head) < _FRAME.size:
        raise TraceCorrupt(offset, f"truncated frame header ({len(head)} of {_FRAME.size} bytes)")
    length, crc = _FRAME.unpack(head)
    if length > MAX_FRAME:
        raise TraceCorrupt(offset, f"frame length {length} over the limit {MAX_FRAME}")
    payload = src.read(length)
    if len(payload) < length:
        raise TraceCorrupt(offset, f"truncated record ({len(payload)} of {length} bytes)")
    if zlib.crc32(payload) != crc:
        raise TraceCorrupt(offset, "record checksum mismatch")
    return payload


class TraceReader:
    """Streams a trace: ``header`` on open, then ``records()`` as (offset, record) (Rule 3)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._src: BinaryIO = path.open("rb")
        magic = self._src.read(len(MAGIC))
        if magic != MAGIC:
            self._src.close()
            raise TraceCorrupt(0, "not a setpay trace (bad magic)")
        offset = len(MAGIC)
        payload = _read_frame(self._src, offset)
        if payload is None:
            self._src.close()
            raise TraceCorrupt(offset, "no header record")
        try:
            self.header = codec.decode(TraceHeader, payload)
        except ProtocolError as exc:
            self._src.close()
            raise TraceCorrupt(offset, f"bad header record ({exc.code.name})") from None
        if self.header.version != FORMAT_VERSION:
            self._src.close()
            raise TraceError(f"trace format {self.header.version} (this reads {FORMAT_VERSION})")
        self._offset = offset + _FRAME.size + len(payload)

    def records(self) -> Iterator[tuple[int, TraceRecord]]:
        """Every record with the byte offset of its frame; ``TraceCorrupt`` at the first bad
        frame, after the good ones before it."""
        try:
            while True:
                offset = self._offset
                payload = _read_frame(self._src, offset)
                if payload is None:
                    return
                try:
                    record = codec.decode(TraceRecord, payload, max_size=MAX_FRAME)
                except ProtocolError as exc:
                    raise TraceCorrupt(offset, f"bad record ({exc.code.name})") from None
                self._offset = offset + _FRAME.size + len(payload)
                yield offset, record
        finally:
            self._src.close()

    def close(self) -> None:
        self._src.close()


def read_trace(path: Path) -> tuple[TraceHeader, Iterator[tuple[int, TraceRecord]]]:
    """(header, records) of the trace at ``path``; raises ``TraceError`` if unusable."""
    try:
        reader = TraceReader(path)
    except OSError as exc:
        raise TraceError(f"cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    return reader.header, reader.records()
