"""What the wire shows of a response, field by field, and how two responses to the same request
differ (the regression replay's comparison).

Rule 1: only what a wire observer can decode is read: the wrapper header (type, XID, LID-C,
LID-M, RRPID), an Error's code and the ids of the message it refused, and the body record
with every signed content (SignedData: its content type, signer thumbprint and content,
decoded by content type when ``protocol.messages`` has its record) and every EncB baggage
(``AuthResBaggage``: which tokens travel). Encrypted parts are opaque: compared by presence.
Signatures are never verified here.
Rule 2: normalised, because they legitimately differ between two runs of the same request:
 - every date (the wrapper's ``date``, any field named ``date``/``*_date``/``*_ms``): the
   responder's clock at the time it answered;
 - every signature (RSA-PSS draws a fresh salt, ECDSA a fresh nonce) and every ciphertext,
   wrapped key and nonce of an encryption (fresh keys each time): compared by presence;
 - an id the responder made fresh (a field named ``xid``, ``rrpid``, ``lid_*``, ``chall_*``,
   ``*_nonce``): equal if the request carries it (an echo), otherwise only both fresh (a value
   that appears in neither request: it cannot be the same twice, ``protocol.ids`` Rule 1).
Everything else must be equal: types, codes, echoed ids, amounts, statuses, certificate and
CRL thumbprints, the presence of each token.
Rule 3: a difference names its field by path (``body.enc.baggage.cap_token``) with the
recorded and the replayed value, so a report says what changed, not only that it did.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from actors.trace.wire import parse_wrapper
from protocol import codec
from protocol import messages as msgs
from protocol.errors import ProtocolError
from protocol.messages import MESSAGE_CLASSES, AuthResBaggage, Error
from protocol.messages import MessageType as M
from protocol.set_error import read_error
from protocol.signed import SignedData
from protocol.treatments import Baggaged
from protocol.wrapper import MessageHeader

NORMALISED = "(normalised)"
FRESH = "(fresh)"
PRESENT, ABSENT = "present", "absent"
OPAQUE_OVER = 64  # bytes longer than this that decode as nothing known are opaque
MAX_ITEMS = 16
_FRESH_NAMES = ("xid", "rrpid", "lid_", "chall", "nonce")
_THUMBED = ("certs", "crls")


@dataclass(frozen=True, slots=True)
class Leaf:
    """One field of a response: its path, its shown value, and the raw id bytes when the
    field is an id the responder may have made fresh (Rule 2)."""

    path: str
    value: str
    fresh_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class Difference:
    """One field that differs (Rule 3)."""

    path: str
    recorded: str
    replayed: str

    def __str__(self) -> str:
        return f"{self.path}: recorded {self.recorded} | replayed {self.replayed}"


def _is_date(name: str) -> bool:
    return name == "date" or name.endswith(("_date", "_ms")) or name.startswith("date_")


def _is_fresh_name(name: str) -> bool:
    return any(part in name for part in _FRESH_NAMES)


def _content_class(content_type: str) -> type | None:
    for name in (f"{content_type}Data", content_type, f"{content_type}TBS"):
        cls = getattr(msgs, name, None)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            return cls
    return None


def _bytes(path: str, name: str, value: bytes) -> Iterator[Leaf]:
    if name in ("signature", "error_nonce"):
        yield Leaf(path, NORMALISED)
        return
    if len(value) <= OPAQUE_OVER:
        if _is_fresh_name(name):
            yield Leaf(path, value.hex(), fresh_id=value)
        else:
            yield Leaf(path, value.hex())
        return
    try:
        signed = codec.decode(SignedData, value)
    except ProtocolError:
        pass
    else:
        yield Leaf(f"{path}.content_type", signed.content_type)
        yield Leaf(f"{path}.signer", signed.signer.hex())
        cls = _content_class(signed.content_type)
        if cls is not None:
            try:
                yield from _walk(f"{path}.content", codec.decode(cls, signed.content))
                return
            except ProtocolError:
                pass
        yield Leaf(f"{path}.content", f"sha256:{hashlib.sha256(signed.content).hexdigest()[:16]}")
        return
    try:
        baggaged = codec.decode(Baggaged, value)
    except ProtocolError:
        pass
    else:
        yield Leaf(f"{path}.envelope", f"{PRESENT} (encrypted)")
        try:
            yield from _walk(f"{path}.baggage", codec.decode(AuthResBaggage, baggaged.baggage))
        except ProtocolError:
            yield Leaf(f"{path}.baggage", PRESENT if baggaged.baggage else ABSENT)
        return
    yield Leaf(path, f"{PRESENT} (opaque)")


def _walk(path: str, value: Any, name: str = "") -> Iterator[Leaf]:
    if value is None:
        yield Leaf(path, ABSENT)
    elif _is_date(name):
        yield Leaf(path, NORMALISED)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _walk(f"{path}.{f.name}", getattr(value, f.name), f.name)
    elif isinstance(value, bytes):
        yield from _bytes(path, name, value)
    elif isinstance(value, list):
        if name in _THUMBED:
            thumbs = sorted(hashlib.sha256(v).hexdigest()[:16] for v in value)
            yield Leaf(path, ",".join(thumbs) or "[]")
            return
        yield Leaf(f"{path}.len", str(len(value)))
        for i, item in enumerate(value[:MAX_ITEMS]):
            yield from _walk(f"{path}[{i}]", item, name)
    elif isinstance(value, enum.Enum):
        yield Leaf(path, value.name)
    else:
        yield Leaf(path, repr(value))


def _header(path: str, header: MessageHeader) -> Iterator[Leaf]:
    ids = header.message_ids
    for name in ("xid", "lid_c", "lid_m"):
        value = getattr(ids, name) if ids is not None else None
        yield Leaf(f"{path}.{name}", value.hex() if value is not None else ABSENT,
                   fresh_id=value)  # fmt: skip
    rrpid = header.rrpid
    yield Leaf(f"{path}.rrpid", rrpid.hex() if rrpid is not None else ABSENT, fresh_id=rrpid)
    yield Leaf(f"{path}.date", NORMALISED)


def leaves(body: bytes) -> list[Leaf]:
    """Every field of the response ``body`` that the wire shows (Rule 1)."""
    try:
        header, msg_type, inner = parse_wrapper(body)
    except ProtocolError as exc:
        return [Leaf("type", f"not a SET wrapper ({exc.code.name})")]
    out = [Leaf("type", msg_type.name), *_header("header", header)]
    if msg_type is M.ERROR:
        try:
            tbs, _ = read_error(codec.decode(Error, inner), 0)
        except ProtocolError as exc:
            return [*out, Leaf("error", f"unreadable ({exc.code.name})")]
        out.append(Leaf("error.code", tbs.code.name))
        try:
            refused = codec.decode(MessageHeader, tbs.error_msg) if tbs.error_msg else None
        except ProtocolError:
            refused = None
        if refused is not None:
            out += list(_header("error.refused", refused))
        return out
    try:
        record = codec.decode(MESSAGE_CLASSES[msg_type], inner)
    except (ProtocolError, KeyError) as exc:
        name = exc.code.name if isinstance(exc, ProtocolError) else "unknown type"
        return [*out, Leaf("body", f"undecodable ({name})")]
    return [*out, *_walk("body", record)]


def compare(recorded: bytes, replayed: bytes, request: bytes) -> list[Difference]:
    """The fields in which ``replayed`` differs from ``recorded`` as answers to ``request``,
    after Rule 2's normalisation; empty: the same answer."""
    if recorded == replayed:
        return []
    old = {leaf.path: leaf for leaf in leaves(recorded)}
    new = {leaf.path: leaf for leaf in leaves(replayed)}
    found = []
    for path in [*old, *(p for p in new if p not in old)]:
        a, b = old.get(path), new.get(path)
        if a is not None and b is not None and a.value == b.value:
            continue
        if (a is not None and b is not None and a.fresh_id is not None
                and b.fresh_id is not None and a.fresh_id not in request
                and b.fresh_id not in request):  # fmt: skip
            continue  # both made fresh by the responder (Rule 2)
        found.append(Difference(path, a.value if a else ABSENT, b.value if b else ABSENT))
    return found
