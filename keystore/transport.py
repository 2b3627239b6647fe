"""The keystore's transport key and the requests sealed to it: no secret crosses the bus in clear.

Rule 1: one transport key per token, ``TRANSPORT_LABEL`` (RSA-3072, key exchange: CKA_DECRYPT
only, sensitive, never extractable), generated inside the token by the first keystore worker
that starts (``ensure_key``). Its owner ``keystore.transport`` is no caller identity (the
``keystore`` role has no operation), so nothing but ``Opener`` here ever uses it.
It is RSA-OAEP whatever the suite: one mechanism the token runs in C_Decrypt with the
private key inside it, where a P-256 transport key would need the raw ECDH secret out of the
token (hsm.py Rule 4); RSA-3072 matches AES-256-GCM's 128-bit level. Its OAEP hash is the
suite's (SHA-1 on SoftHSM2 2.6, which offers no other; OAEP does not rest on collisions).
Clients read the public half with ``transport_key`` (any keystore role) and cache it.
Rule 2: a client seals a secret (``seal_request``) under an AES-256-GCM content key wrapped
to that key (Rule 3); the AAD binds the operation, the caller's broker identity (the one the
keystore sees as ``user_id``), the record's other fields (key label, at-rest AAD, ...), the
request id and the deadline. The keystore (``Opener.open``) refuses a request past its
deadline (``StaleRequest``) and one that does not open under its own operation, caller and
record (``SealInvalid``), before anything is done: a sealed blob cannot be replayed into
another operation, against another key, or by another identity. Each refusal is logged with
the request id and the reason, never data.
Rule 3: a content key is a session key: a client seals up to ``SESSION_USES`` requests (for
at most ``SESSION_SECONDS``) under one wrapped key, each with a fresh nonce and its own AAD,
and a keystore worker keeps the keys it unwrapped for a caller (``Opener``, at most
``SESSION_CACHE``, keyed by caller and wrapped key, kept only after a request opened with
it): the token's RSA decrypt is paid once per session, not per request.
Rule 4: a secret that comes back (``open``'s card data) travels under the 32-byte reply key
the request sealed (``seal_reply``/``open_reply``), bound to the request id; so an ``open``
replayed within its deadline answers under a key only its first caller holds, and any
other replay (same identity, same record) gains nothing that identity could not ask for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keystore import messages as m
from keystore.errors import (
    BadRequest,
    DecryptionFailed,
    KeyExists,
    NoSuchKey,
    SealInvalid,
    StaleRequest,
)
from keystore.hsm import Hsm
from protocol import codec
from setpay.logs import get_logger

TRANSPORT_LABEL: Final = "keystore.transport/rsa3072-oaep"
TRANSPORT_BITS: Final = 3072
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
SKEW_MS: Final = 5_000  # clocks of caller and keystore may differ this much
MAX_TTL_MS: Final = 300_000  # a deadline further away is refused: staleness stays bounded
SESSION_USES: Final = 1 << 20  # random 96-bit nonces: far below GCM's 2**32 per key
SESSION_SECONDS: Final = 3600.0
SESSION_CACHE: Final = 4096
_REQUEST_DOMAIN: Final = b"setpay/keystore/sealed-request/v1\x00"
_REPLY_DOMAIN: Final = b"setpay/keystore/sealed-reply/v1\x00"
# A record's ``secret`` before it is sealed: what the client binds (its value is never bound).
UNSEALED: Final = m.Sealed(bytes(16), 0, b"", bytes(NONCE_BYTES), b"")

R = TypeVar("R")


def now_ms() -> int:
    return int(time.time() * 1000)


def ensure_key(hsm: Hsm) -> m.KeyInfo:
    """The transport key's info, generating it inside the token if absent (Rule 1)."""
    try:
        return hsm.key_info(TRANSPORT_LABEL)
    except NoSuchKey:
        pass
    try:
        return hsm.create_key(TRANSPORT_LABEL, m.KeyKind.RSA3072, m.KeyUsage.EXCHANGE)
    except KeyExists:  # another worker made it first (under the token's write lock)
        return hsm.key_info(TRANSPORT_LABEL)


def binding(record: Any) -> bytes:
    """The bytes of ``record``'s fields but its last, ``secret``: what the AAD binds."""
    if dataclasses.fields(record)[-1].name != "secret":
        raise TypeError(f"{type(record).__name__} has no trailing secret field")
    return codec.packb(codec.to_wire(record)[:-1])


def _aad(op: m.Op, caller: str, record: Any, request_id: bytes, not_after_ms: int) -> bytes:
    return _REQUEST_DOMAIN + codec.packb(
        [op.name.lower(), caller, binding(record), request_id, not_after_ms]
    )


@dataclass(frozen=True, slots=True)
class TransportPublic:
    """The client's cached view of the transport key."""

    public: rsa.RSAPublicKey
    oaep_hash: m.OaepHash

    @classmethod
    def of(cls, answer: m.TransportKey) -> TransportPublic:
        public = serialization.load_der_public_key(answer.info.public_key)
        if not isinstance(public, rsa.RSAPublicKey) or public.key_size < TRANSPORT_BITS:
            raise BadRequest("the keystore's transport key is not RSA-3072")
        return cls(public, answer.oaep_hash)

    def _padding(self) -> padding.OAEP:
        h: hashes.HashAlgorithm = (
            hashes.SHA1() if self.oaep_hash is m.OaepHash.SHA1 else hashes.SHA256()  # noqa: S303
        )
        return padding.OAEP(padding.MGF1(h), h, None)

    def session(self) -> TransportSession:
        """A fresh content key and its wrap to the transport key (Rule 3)."""
        key = AESGCM.generate_key(bit_length=256)
        return TransportSession(key, self.public.encrypt(key, self._padding()), time.monotonic())


@dataclass(slots=True)
class TransportSession:
    """One client's content key (never sent but wrapped) and how much it was used."""

    key: bytes = field(repr=False)
    wrapped: bytes
    started: float
    uses: int = 0

    @property
    def spent(self) -> bool:
        return self.uses >= SESSION_USES or time.monotonic() - self.started > SESSION_SECONDS


def seal_request(
    transport: TransportPublic | TransportSession,
    op: m.Op,
    caller: str,
    record: R,
    plaintext: bytes,
    *,
    ttl_ms: int,
    now: int | None = None,
) -> R:
    """``record`` (its ``secret`` a placeholder) with ``plaintext`` sealed into ``secret``
    for ``op`` by ``caller``, refused by the keystore after ``ttl_ms`` (Rule 2); under the
    session given, or a one-time one."""
    if len(plaintext) > m.SEALED_MAX:
        raise BadRequest("secret too large to seal")
    session = transport.session() if isinstance(transport, TransportPublic) else transport
    session.uses += 1
    request_id = secrets.token_bytes(16)
    not_after = (now_ms() if now is None else now) + ttl_ms
    nonce = secrets.token_bytes(NONCE_BYTES)
    aad = _aad(op, caller, record, request_id, not_after)
    ct = AESGCM(session.key).encrypt(nonce, plaintext, aad)
    sealed = m.Sealed(request_id, not_after, session.wrapped, nonce, ct)
    return dataclasses.replace(record, secret=sealed)  # type: ignore[type-var]


class Opener:
    """The keystore side (Rules 2, 3b): opens sealed requests with the transport key, on the
    PKCS#11 thread only; keeps the session keys it unwrapped per caller."""

    def __init__(self, hsm: Hsm, oaep_hash: m.OaepHash, cache: int = SESSION_CACHE) -> None:
        self.hsm = hsm
        self.oaep_hash = oaep_hash
        self.unwraps = 0  # token decrypts made (tests and benchmarks read it)
        self._cache = cache
        self._keys: OrderedDict[tuple[str, bytes], bytes] = OrderedDict()

    def open(self, op: m.Op, caller: str, record: Any, now: int | None = None) -> bytes:
        """The secret ``record.secret`` seals for ``op`` by ``caller``; ``StaleRequest`` or
        ``SealInvalid`` (logged with the request id and the reason) otherwise."""
        sealed: m.Sealed = record.secret
        now = now_ms() if now is None else now
        if now > sealed.not_after_ms + SKEW_MS:
            raise _refuse(StaleRequest, sealed, op, caller, "past its deadline")
        if sealed.not_after_ms - now > MAX_TTL_MS + SKEW_MS:
            raise _refuse(SealInvalid, sealed, op, caller, "deadline too far ahead")
        slot = (caller, hashlib.sha256(sealed.wrapped_key).digest())
        key = self._keys.get(slot)
        if key is None:
            try:
                self.unwraps += 1
                key = self.hsm.decrypt(TRANSPORT_LABEL, sealed.wrapped_key, self.oaep_hash)
            except DecryptionFailed:
                raise _refuse(SealInvalid, sealed, op, caller, "content key does not unwrap"
                              ) from None  # fmt: skip
            if len(key) != KEY_BYTES:
                raise _refuse(SealInvalid, sealed, op, caller, "content key of the wrong size")
        aad = _aad(op, caller, record, sealed.request_id, sealed.not_after_ms)
        try:
            plaintext = AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, aad)
        except InvalidTag:
            raise _refuse(SealInvalid, sealed, op, caller,
                          "does not open for this operation, caller, record and request"
                          ) from None  # fmt: skip
        self._keys[slot] = key  # kept only once a request of this caller opened with it
        self._keys.move_to_end(slot)
        while len(self._keys) > self._cache:
            self._keys.popitem(last=False)
        return plaintext


def _refuse(
    exc: type[SealInvalid] | type[StaleRequest], sealed: m.Sealed, op: m.Op, caller: str,
    reason: str,
) -> Exception:  # fmt: skip
    rid = sealed.request_id.hex()
    get_logger(component="keystore.transport").warning(
        "keystore_sealed_request_refused", request=rid, op=op.name.lower(), caller=caller,
        reason=reason,
    )  # fmt: skip
    return exc(f"sealed request {rid}: {reason}")


def seal_reply(reply_key: bytes, request_id: bytes, plaintext: bytes) -> bytes:
    """``plaintext`` under the request's reply key (Rule 4): nonce || ciphertext || tag."""
    if len(reply_key) != KEY_BYTES:
        raise SealInvalid("a reply key is 32 bytes")
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(reply_key).encrypt(nonce, plaintext, _REPLY_DOMAIN + request_id)


def open_reply(reply_key: bytes, request_id: bytes, data: bytes) -> bytes:
    """What ``seal_reply`` made; ``DecryptionFailed`` if it does not open."""
    try:
        return AESGCM(reply_key).decrypt(
            data[:NONCE_BYTES], data[NONCE_BYTES:], _REPLY_DOMAIN + request_id
        )
    except (InvalidTag, ValueError):
        raise DecryptionFailed("the keystore's reply does not open") from None
