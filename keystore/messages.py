"""Keystore request and response records, encoded with ``protocol.codec``.

Rule 1: a request is ``Request(op, body)``; ``body`` is the msgpack of the op's own record
and the answer's ``body`` that of its response record (both named by the op's object in
``keystore.operations``). Both are decoded strictly; anything malformed is a ``BadRequest``,
never another exception.
Rule 2: the caller's identity is never a field here: it is the AMQP ``user_id`` RabbitMQ
validated. Labels are ``<owner>/<name>``; the owner part is checked against that identity.
Rule 3: errors travel as ``Response(fault, text, b"")``: a code and a short reason, no data.
Rule 4: no secret in clear. A record that must carry card data, a PAN or a PIN (``Hmac``,
``Seal``, ``PinIssue``) carries it only as its last field ``secret``, a ``Sealed`` made to
the keystore's transport key (keystore/transport.py); a record whose answer holds a secret
(``Open``: card data; ``Decrypt``, ``Derive``, ``Batch``: key material and a PI's or
CertReq's account part; ``OpenPiAccount``: PANData) seals there a fresh reply key, and its
answer is a ``SealedReply``. There is no clear variant of these records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Annotated, Any, TypeVar

from keystore.errors import BadRequest, Fault
from protocol import codec
from protocol.codec import Bytes32, MaxLen, Range, Size, Timestamp
from protocol.errors import ProtocolError
from protocol.messages import PIKind

Label = Annotated[str, MaxLen(160)]
Text = Annotated[str, MaxLen(200)]
MAX_BATCH = 256
BATCH_ITEM_BYTES = 512  # a batch item's digest or ciphertext, at most
LABEL_RE = re.compile(
    r"^(?P<owner>[a-z][a-z0-9_-]{0,31}\.[A-Za-z0-9_-]{1,63})/[A-Za-z0-9._-]{1,64}$"
)


class Op(IntEnum):
    CREATE = 1
    PUBLIC_KEY = 2
    SIGN = 3
    DECRYPT = 4
    DERIVE = 5
    HMAC = 6
    SEAL = 7
    OPEN = 8
    LIST = 9
    BATCH = 10
    OPEN_PI_ACCOUNT = 11  # gateway: open a PI's wrap, PIN block translated to the ZPK
    PIN_PVV = 12  # issuer: PVV of a format 4 block under the ZPK
    PIN_VERIFY = 13  # issuer: does a format 4 block under the ZPK match a PVV
    PIN_ISSUE = 14  # PIN issuance (seeding): the PVV of a new PIN; no PIN block comes back
    TRANSPORT_KEY = 15  # the public half of the keystore's transport key (Rule 4)


class KeyKind(StrEnum):
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    P256 = "p256"
    HMAC256 = "hmac-sha256"
    AES256 = "aes256"

    @property
    def asymmetric(self) -> bool:
        return self in (KeyKind.RSA2048, KeyKind.RSA3072, KeyKind.P256)


class KeyUsage(StrEnum):
    """What a key may do; the token enforces it through CKA_SIGN/DECRYPT/DERIVE/ENCRYPT."""

    SIGN = "sign"  # RSA-PSS or ECDSA signatures
    EXCHANGE = "exchange"  # key transport: RSA-OAEP decrypt, or ECDH derive
    SECRET = "secret"  # HMAC or AES-GCM secret key  # noqa: S105 - a usage name, not a secret


class OaepHash(StrEnum):
    SHA1 = "sha1"
    SHA256 = "sha256"


@dataclass(frozen=True, slots=True)
class Request:
    op: Op
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    fault: Fault
    text: Text
    body: bytes


@dataclass(frozen=True, slots=True)
class CreateKey:
    label: Label
    kind: KeyKind
    usage: KeyUsage


@dataclass(frozen=True, slots=True)
class KeyRef:
    label: Label


@dataclass(frozen=True, slots=True)
class Sign:
    label: Label
    digest: Bytes32


@dataclass(frozen=True, slots=True)
class Decrypt:
    label: Label
    ciphertext: Annotated[bytes, MaxLen(512)]
    oaep_hash: OaepHash
    secret: Sealed  # the reply key (Rule 4)


@dataclass(frozen=True, slots=True)
class Derive:
    label: Label
    peer_public: Annotated[bytes, MaxLen(133)]
    info: Annotated[bytes, MaxLen(1024)]
    length: Annotated[int, Range(16, 64)]
    secret: Sealed  # the reply key (Rule 4)


SEALED_MAX = 65_536  # largest secret a ``Sealed`` carries


@dataclass(frozen=True, slots=True)
class Sealed:
    """A secret sealed to the keystore's transport key (Rule 4, keystore/transport.py): an
    AES-256-GCM content key wrapped by RSA-OAEP, the secret under it; the AAD binds the
    operation, the caller's identity, the record's other fields, ``request_id`` and
    ``not_after_ms`` (after which the keystore refuses it as stale)."""

    request_id: Annotated[bytes, Size(16)]
    not_after_ms: Timestamp
    wrapped_key: Annotated[bytes, MaxLen(512)] = field(repr=False)
    nonce: Annotated[bytes, Size(12)] = field(repr=False)
    ciphertext: Annotated[bytes, MaxLen(SEALED_MAX + 16)] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Hmac:
    """HMAC-SHA256 under ``label`` of the data sealed in ``secret`` (e.g. a PAN index)."""

    label: Label
    secret: Sealed


@dataclass(frozen=True, slots=True)
class Seal:
    """AES-256-GCM at rest under ``label`` of the plaintext sealed in ``secret``."""

    label: Label
    aad: Annotated[bytes, MaxLen(1024)]
    secret: Sealed


@dataclass(frozen=True, slots=True)
class Open:
    """Open what ``Seal`` made; ``secret`` seals a fresh 32-byte reply key, and the answer is
    the plaintext's ``Blob`` under it (Rule 4)."""

    label: Label
    sealed: Annotated[bytes, MaxLen(65_536 + 28)]
    aad: Annotated[bytes, MaxLen(1024)]
    secret: Sealed


@dataclass(frozen=True, slots=True)
class TransportKeyRequest:
    pass


@dataclass(frozen=True, slots=True)
class TransportKey:
    """The transport key's public half (DER SPKI in ``info``) and the OAEP hash it takes."""

    info: KeyInfo
    oaep_hash: OaepHash


Account = Annotated[str, MaxLen(19)]  # the digits a PIN block binds to
# ISO 9564 format 4 under the ZPK: 16 bytes. Empty decodes, so that a request without its
# block is answered as the specific format fault (PinBlockMissing), never as a wrong PIN.
PinBlock4 = Annotated[bytes, MaxLen(16)]


@dataclass(frozen=True, slots=True)
class OpenPiAccount:
    """Open the wrap of a PI envelope with key-exchange key ``label``; the PIN seal the PI
    names is opened and its block translated to format 4 under ``zpk_label``.
    ``use_key`` (e.g. H(XID, RRPID)) lets the same caller re-open the same PIN-bearing PI
    for the same transaction after a crash."""

    label: Label
    zpk_label: Label | None
    kind: PIKind
    envelope: Annotated[bytes, MaxLen(65_536)]
    oaep_hash: OaepHash
    use_key: Bytes32 | None
    pin_seal: Annotated[bytes, MaxLen(4096)] | None  # OPE: the thin client's seal
    secret: Sealed  # the reply key (Rule 4)


@dataclass(frozen=True, slots=True)
class PinPvv:
    label: Label  # the PVK (the caller's own hmac-sha256 key)
    zpk_label: Label
    account: Account = field(repr=False)
    pin_block: PinBlock4 = field(repr=False)


@dataclass(frozen=True, slots=True)
class PinVerify:
    label: Label  # the PVK
    zpk_label: Label
    account: Account = field(repr=False)
    pin_block: PinBlock4 = field(repr=False)
    pvv: Annotated[bytes, Size(8)] = field(repr=False)


@dataclass(frozen=True, slots=True)
class PinIssue:
    label: Label  # the PVK
    secret: Sealed  # an ``IssuedPin``


@dataclass(frozen=True, slots=True)
class IssuedPin:
    """What a ``PinIssue`` seals: the account digits and the new PIN."""

    account: Account = field(repr=False)
    pin: Annotated[str, MaxLen(12)] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool


@dataclass(frozen=True, slots=True)
class ListKeys:
    pass


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One sign (``data`` = digest) or decrypt (``data`` = ciphertext) of a batch."""

    op: Op
    label: Label
    data: Annotated[bytes, MaxLen(BATCH_ITEM_BYTES)]
    oaep_hash: OaepHash | None


@dataclass(frozen=True, slots=True)
class Batch:
    items: Annotated[list[BatchItem], MaxLen(MAX_BATCH)]
    secret: Sealed  # the reply key (Rule 4)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    label: Label
    kind: KeyKind
    usage: KeyUsage
    public_key: Annotated[bytes, MaxLen(1024)]  # DER SubjectPublicKeyInfo; empty for secrets


@dataclass(frozen=True, slots=True)
class Blob:
    data: Annotated[bytes, MaxLen(65_536 + 28)]


@dataclass(frozen=True, slots=True)
class SealedReply:
    """An answer holding a secret: its record under the request's reply key (Rule 4)."""

    data: Annotated[bytes, MaxLen(MAX_BATCH * 600 + 65_536 + 28)]


@dataclass(frozen=True, slots=True)
class KeyList:
    keys: Annotated[list[KeyInfo], MaxLen(4096)]


@dataclass(frozen=True, slots=True)
class ItemResult:
    fault: Fault
    text: Text
    data: Annotated[bytes, MaxLen(512)]


@dataclass(frozen=True, slots=True)
class BatchResult:
    results: Annotated[list[ItemResult], MaxLen(MAX_BATCH)]


# The op records are validated where the operations are declared (keystore.operations).
for _cls in (Request, Response, ItemResult, BatchItem, IssuedPin, SealedReply):
    codec.validate_schema(_cls)

T = TypeVar("T")


def decode(cls: type[T], data: bytes) -> T:
    """Strictly decode ``data`` as ``cls``; any defect raises ``BadRequest``."""
    try:
        return codec.decode(cls, data)
    except ProtocolError as exc:
        raise BadRequest(f"malformed {cls.__name__}: {exc.detail or exc}") from None


def encode_request(op: Op, record: Any) -> bytes:
    return codec.encode(Request(op, codec.encode(record)))


def ok_response(record: Any) -> bytes:
    return codec.encode(Response(Fault.OK, "", codec.encode(record)))


def error_response(fault: Fault, text: str) -> bytes:
    return codec.encode(Response(fault, text[:200], b""))


def owner_of(label: str) -> str:
    """The owner identity a label names; raises ``BadRequest`` for a malformed label."""
    match = LABEL_RE.match(label)
    if match is None:
        raise BadRequest("key label must be <role>.<instance>/<name>")
    return match.group("owner")
