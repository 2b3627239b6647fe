"""The versioned message wrapper: header, message type, exact body bytes, extensions.

Rule 1: receivers check in the order of set-protocol.md §3.2: size (``messageTooBig``), strict
msgpack, version/revision (``versionTooOld``/``versionTooNew``), message type
(``messageNotSupported``), the wrapper's shape (``decodingFailure``), critical extensions
(``unrecognizedExtension``), date window (``messageTooOld``/``messageTooNew``), then the body
record (``decodingFailure``). Any bad input raises ``ProtocolError``, never another type.
Rule 2: the header is unsigned. Ids it repeats (XID, LIDs, RRPID) must equal the copies in
the body; unprotected bodies are checked here, protected ones by the caller through
``check_header_ids`` once the body is opened (``wrapperMsgMismatch``).
Rule 3: the body travels as the exact encoded record (``bytes``), so a trace or a dead-letter
record can keep it byte for byte, and protected parts inside it are never re-encoded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

from protocol import codec, ids
from protocol.codec import MaxLen, Nonce, Range, Timestamp
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (
    MESSAGE_CLASSES,
    MESSAGE_TYPES,
    CardCInitReq,
    LocalID,
    MeAqCInitReq,
    MessageType,
    PInitReq,
    SWIdent,
    TransIDs,
)

VERSION = 1
REVISION = 0
SW_IDENT = "setpay/0.1"
MAX_EXTENSIONS = 16

Oid = Annotated[str, MaxLen(64)]


@dataclass(frozen=True, slots=True)
class MessageIDs:
    """The ids a header repeats from the body (all optional; absent = not yet assigned)."""

    lid_c: LocalID | None
    lid_m: LocalID | None
    xid: Nonce | None


@dataclass(frozen=True, slots=True)
class MessageHeader:
    version: Annotated[int, Range(0, 255)]
    revision: Annotated[int, Range(0, 255)]
    date: Timestamp  # ms since the Unix epoch, set by the sender
    message_ids: MessageIDs | None
    rrpid: Nonce | None
    sw_ident: SWIdent


@dataclass(frozen=True, slots=True)
class Extension:
    """A wrapper extension; a receiver refuses a critical one it does not know."""

    oid: Oid
    critical: bool
    value: Annotated[bytes, MaxLen(65_536)]


@dataclass(frozen=True, slots=True)
class MessageWrapper:
    header: MessageHeader
    msg_type: MessageType
    body: Annotated[bytes, MaxLen(codec.MAX_MESSAGE_BYTES)]  # the exact encoded body record
    extensions: Annotated[list[Extension], MaxLen(MAX_EXTENSIONS)]


codec.validate_schema(MessageWrapper)


class Decoded(NamedTuple):
    """What ``decode_message`` returns: the header, the type and the decoded body record."""

    header: MessageHeader
    msg_type: MessageType
    body: Any


def amqp_type(msg_type: MessageType) -> str:
    """The AMQP ``type`` property a message of ``msg_type`` travels under: its decimal number
    (the runtime refuses a message whose AMQP type disagrees with its wrapper)."""
    return str(int(msg_type))


def make_header(
    now_ms: int,
    *,
    xid: bytes | None = None,
    lid_c: bytes | None = None,
    lid_m: bytes | None = None,
    rrpid: bytes | None = None,
    sw_ident: str = SW_IDENT,
) -> MessageHeader:
    """A current-version header dated ``now_ms``; ids given are repeated from the body."""
    no_ids = xid is None and lid_c is None and lid_m is None
    message_ids = None if no_ids else MessageIDs(lid_c, lid_m, xid)
    return MessageHeader(VERSION, REVISION, now_ms, message_ids, rrpid, sw_ident)


def encode_message(header: MessageHeader, body: Any, extensions: Iterable[Extension] = ()) -> bytes:
    """Wrap a body record of the catalogue; its class decides the message type."""
    msg_type = MESSAGE_TYPES.get(type(body))
    if msg_type is None:
        raise ProtocolError(
            ErrorCode.MESSAGE_NOT_SUPPORTED, f"{type(body).__name__} is not a message"
        )
    wrapper = MessageWrapper(header, msg_type, codec.encode(body), list(extensions))
    return codec.encode(wrapper)


def _check_version(raw: Any) -> None:
    # Looked at before the full shape check: a future version may change the shape, and its
    # sender deserves versionTooNew rather than decodingFailure.
    if not (isinstance(raw, list) and raw and isinstance(raw[0], list) and len(raw[0]) >= 2):
        return
    version, revision = raw[0][0], raw[0][1]
    if type(version) is not int or type(revision) is not int:
        return
    if version < VERSION:
        raise ProtocolError(ErrorCode.VERSION_TOO_OLD, f"version {version}")
    if version > VERSION or revision > REVISION:
        raise ProtocolError(ErrorCode.VERSION_TOO_NEW, f"version {version}.{revision}")


def _check_type(raw: Any) -> None:
    if not (isinstance(raw, list) and len(raw) >= 2) or type(raw[1]) is not int:
        return
    if raw[1] not in MessageType._value2member_map_:
        raise ProtocolError(ErrorCode.MESSAGE_NOT_SUPPORTED, f"message type {raw[1]}")


def _check_extensions(extensions: list[Extension], known: frozenset[str]) -> None:
    oids = [e.oid for e in extensions]
    if len(set(oids)) != len(oids):
        raise ProtocolError(ErrorCode.DECODING_FAILURE, "duplicate extension")
    for ext in extensions:
        if ext.critical and ext.oid not in known:
            raise ProtocolError(ErrorCode.UNRECOGNIZED_EXTENSION, f"critical extension {ext.oid}")


def decode_message(
    data: bytes,
    *,
    now_ms: int,
    max_size: int = codec.MAX_MESSAGE_BYTES,
    window_ms: int = ids.DEFAULT_WINDOW_MS,
    known_extensions: frozenset[str] = frozenset(),
) -> Decoded:
    """Run the §3.2 step-1/2 checks on a wrapped message and decode its body record."""
    raw = codec.unpackb(data, max_size=max_size)
    _check_version(raw)
    _check_type(raw)
    wrapper = codec.from_wire(MessageWrapper, raw)
    header = wrapper.header
    _check_extensions(wrapper.extensions, known_extensions)
    ids.check_date(header.date, now_ms, window_ms)
    body = codec.decode(MESSAGE_CLASSES[wrapper.msg_type], wrapper.body, max_size=max_size)
    _check_unprotected(header, body)
    return Decoded(header, wrapper.msg_type, body)


def peek_header(data: bytes, max_size: int = codec.MAX_MESSAGE_BYTES) -> MessageHeader | None:
    """The header of a message, if it decodes at all (for the ErrorMsg of an Error reply)."""
    try:
        raw = codec.unpackb(data, max_size=max_size)
        if not isinstance(raw, list) or not raw:
            return None
        return codec.from_wire(MessageHeader, raw[0])
    except ProtocolError:
        return None


_UNSET: Any = object()


def check_header_ids(
    header: MessageHeader,
    *,
    xid: bytes | None = _UNSET,
    lid_c: bytes | None = _UNSET,
    lid_m: bytes | None = _UNSET,
    rrpid: bytes | None = _UNSET,
) -> None:
    """Each id given (None = the body has none) must equal the header's copy, else
    ``wrapperMsgMismatch``. Ids not given are not compared."""
    mids = header.message_ids or MessageIDs(None, None, None)
    pairs = (("xid", xid, mids.xid), ("lid_c", lid_c, mids.lid_c), ("lid_m", lid_m, mids.lid_m))
    for name, body_value, header_value in (*pairs, ("rrpid", rrpid, header.rrpid)):
        if body_value is not _UNSET and body_value != header_value:
            raise ProtocolError(ErrorCode.WRAPPER_MSG_MISMATCH, f"header {name} differs from body")


def check_header_trans_ids(header: MessageHeader, trans_ids: TransIDs, rrpid: bytes) -> None:
    """Header ids against the TransIDs and RRPID found inside an opened body."""
    check_header_ids(
        header, xid=trans_ids.xid, lid_c=trans_ids.lid_c, lid_m=trans_ids.lid_m, rrpid=rrpid
    )


def _check_unprotected(header: MessageHeader, body: Any) -> None:
    # Unprotected bodies can be compared right away; protected ones once they are opened.
    if isinstance(body, PInitReq):
        check_header_ids(header, lid_c=body.lid_c, lid_m=body.lid_m, rrpid=body.rrpid)
    elif isinstance(body, CardCInitReq | MeAqCInitReq):
        check_header_ids(header, rrpid=body.rrpid)
