"""Enc, EncB, EncX, EncBX, EncK: signed-then-encrypted treatments, with baggage and extras.

Rule 1: the signer signs an ``EncContent`` = {recipient thumbprint, t, [DD(p)], [DD(b)]}: the
signature names the intended recipient (fixes SET's explicitness gap) and binds the extra
part p and the baggage b by their digests.
Rule 2: sign first, then envelope (``protocol.envelope.seal``): Enc = E(r, S(s, ·)); EncX puts p
in the wrap; EncB/EncBX carry b (already protected for someone else) beside the envelope.
EncK encrypts S(s, ·) under a key the recipient supplied earlier, with the caller's context
(e.g. the RRPID) in the AAD; the caller keeps such keys single-use.
Rule 3: the opener verifies everything (unwrap, AEAD, signature, recipient, digests) before it
returns the exact inner bytes; failures are ``ProtocolError`` (DECODING_FAILURE,
DECRYPTION_FAILURE, SIGNATURE_FAILURE, LINKAGE_FAILURE, THUMBS_MISMATCH), nothing else.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from protocol import codec, keywrap, linkage, primitives
from protocol.codec import Bytes32, Size
from protocol.envelope import extra_label, seal, unseal
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PrivateKey, PublicKey, Suite
from protocol.linkage import DigestedData
from protocol.signed import ContentType, SignedData, open_signed, sign_data

# The sender's public key, or a resolver from the signer's certificate thumbprint to it (which
# raises ProtocolError, e.g. MISSING_CERTIFICATE, when it knows no such certificate).
SenderKey = PublicKey | Callable[[bytes], PublicKey]


@dataclass(frozen=True, slots=True)
class EncContent:
    """The signed body of every Enc-family treatment."""

    recipient: Bytes32
    content: bytes
    extra: DigestedData | None
    baggage: DigestedData | None


@dataclass(frozen=True, slots=True)
class Baggaged:
    """EncB / EncBX on the wire: the envelope and the baggage travelling beside it."""

    envelope: bytes
    baggage: bytes


@dataclass(frozen=True, slots=True)
class SymEnvelope:
    """EncK on the wire: AES-256-GCM under a key the recipient supplied earlier."""

    content_type: ContentType
    nonce: Annotated[bytes, Size(keywrap.NONCE_BYTES)]
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class Opened:
    """What an opener returns: exact signed content, signer thumbprint, [p], [b]."""

    content: bytes
    signer: bytes
    extra: bytes | None = None
    baggage: bytes | None = None


def _baggage_label(content_type: str) -> str:
    return content_type + "/baggage"


async def _signed_body(
    key: PrivateKey,
    signer: bytes,
    content_type: str,
    recipient: bytes,
    content: bytes,
    extra: bytes | None,
    baggage: bytes | None,
) -> bytes:
    body = EncContent(
        recipient,
        content,
        None if extra is None else linkage.dd(extra_label(content_type), extra),
        None if baggage is None else linkage.dd(_baggage_label(content_type), baggage),
    )
    return codec.encode(await sign_data(key, signer, content_type, codec.encode(body)))


def check_body(
    signed_bytes: bytes,
    sender: SenderKey,
    content_type: str,
    recipient: bytes,
    extra: bytes | None,
    baggage: bytes | None,
) -> Opened:
    signed = codec.decode(SignedData, signed_bytes)
    public = sender(signed.signer) if callable(sender) else sender
    body = codec.decode(EncContent, open_signed(signed, public, content_type))
    if not hmac.compare_digest(body.recipient, recipient):
        raise ProtocolError(ErrorCode.THUMBS_MISMATCH, "signed for another recipient")
    for what, link, data, label in (
        ("extra part", body.extra, extra, extra_label(content_type)),
        ("baggage", body.baggage, baggage, _baggage_label(content_type)),
    ):
        if (link is None) != (data is None):
            raise ProtocolError(ErrorCode.LINKAGE_FAILURE, f"{what} presence does not match")
        if link is not None and data is not None:
            linkage.check_dd(link, label, data, what)
    return Opened(body.content, signed.signer, extra, baggage)


# --- Enc / EncX -------------------------------------------------------------------------


async def make_enc(
    key: PrivateKey,
    signer: bytes,
    suite: Suite,
    recipient_public: PublicKey,
    recipient: bytes,
    content_type: str,
    content: bytes,
    context: bytes = b"",
) -> bytes:
    """Enc(s, r, t) = E(r, S(s, t)), the signature naming ``recipient``."""
    body = await _signed_body(key, signer, content_type, recipient, content, None, None)
    return await seal(
        suite, recipient_public, recipient, "Enc", content_type, body, context=context
    )


async def open_enc(
    key: PrivateKey,
    recipient: bytes,
    data: bytes,
    sender: SenderKey,
    content_type: str,
    context: bytes = b"",
) -> Opened:
    """Open and verify Enc(s, r, t)."""
    bulk, _, _ = await unseal(key, recipient, data, "Enc", content_type, context=context)
    return check_body(bulk, sender, content_type, recipient, None, None)


async def make_encx(
    key: PrivateKey,
    signer: bytes,
    suite: Suite,
    recipient_public: PublicKey,
    recipient: bytes,
    content_type: str,
    content: bytes,
    extra: bytes,
    context: bytes = b"",
) -> bytes:
    """EncX(s, r, t, p): the signature covers t and DD(p); p is extra-encrypted in the wrap."""
    body = await _signed_body(key, signer, content_type, recipient, content, extra, None)
    return await seal(
        suite,
        recipient_public,
        recipient,
        "EncX",
        content_type,
        body,
        extra=extra,
        context=context,
    )


async def open_encx(
    key: PrivateKey,
    recipient: bytes,
    data: bytes,
    sender: SenderKey,
    content_type: str,
    context: bytes = b"",
) -> Opened:
    """Open and verify EncX(s, r, t, p); ``Opened.extra`` is p."""
    bulk, _, extra = await unseal(
        key, recipient, data, "EncX", content_type, with_extra=True, context=context
    )
    return check_body(bulk, sender, content_type, recipient, extra, None)


# --- EncB / EncBX -----------------------------------------------------------------------


async def make_encb(
    key: PrivateKey,
    signer: bytes,
    suite: Suite,
    recipient_public: PublicKey,
    recipient: bytes,
    content_type: str,
    content: bytes,
    baggage: bytes,
    context: bytes = b"",
) -> bytes:
    """EncB(s, r, t, b) = {Enc(s, r, L(t, b)), b}."""
    body = await _signed_body(key, signer, content_type, recipient, content, None, baggage)
    env = await seal(
        suite, recipient_public, recipient, "EncB", content_type, body, context=context
    )
    return codec.encode(Baggaged(env, baggage))


async def open_encb(
    key: PrivateKey,
    recipient: bytes,
    data: bytes,
    sender: SenderKey,
    content_type: str,
    context: bytes = b"",
) -> Opened:
    """Open and verify EncB; ``Opened.baggage`` is b, checked against the signed DD(b)."""
    outer = codec.decode(Baggaged, data)
    bulk, _, _ = await unseal(key, recipient, outer.envelope, "EncB", content_type, context=context)
    return check_body(bulk, sender, content_type, recipient, None, outer.baggage)


async def make_encbx(
    key: PrivateKey,
    signer: bytes,
    suite: Suite,
    recipient_public: PublicKey,
    recipient: bytes,
    content_type: str,
    content: bytes,
    extra: bytes,
    baggage: bytes,
    context: bytes = b"",
) -> bytes:
    """EncBX(s, r, t, p, b) = {EncX(s, r, L(t, b), p), b}."""
    body = await _signed_body(key, signer, content_type, recipient, content, extra, baggage)
    env = await seal(
        suite,
        recipient_public,
        recipient,
        "EncBX",
        content_type,
        body,
        extra=extra,
        context=context,
    )
    return codec.encode(Baggaged(env, baggage))


async def open_encbx(
    key: PrivateKey,
    recipient: bytes,
    data: bytes,
    sender: SenderKey,
    content_type: str,
    context: bytes = b"",
) -> Opened:
    """Open and verify EncBX; ``Opened.extra`` is p and ``Opened.baggage`` is b."""
    outer = codec.decode(Baggaged, data)
    bulk, _, extra = await unseal(
        key, recipient, outer.envelope, "EncBX", content_type, with_extra=True, context=context
    )
    return check_body(bulk, sender, content_type, recipient, extra, outer.baggage)


# --- EncK -------------------------------------------------------------------------------


def _key_commitment(shared_key: bytes) -> bytes:
    # Stands in for the recipient thumbprint: names exactly one key, reveals nothing of it.
    return primitives.labelled_digest("EncK/key", shared_key)


def _enck_aad(content_type: str, context: bytes) -> bytes:
    return codec.packb(["setpay/v1/EncK", content_type, context])


def _check_shared_key(shared_key: bytes) -> None:
    if len(shared_key) != keywrap.KEY_BYTES:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "EncK key must be 32 bytes")


async def make_enck(
    shared_key: bytes,
    key: PrivateKey,
    signer: bytes,
    content_type: str,
    content: bytes,
    context: bytes = b"",
) -> bytes:
    """EncK(k, s, t) = EK(k, S(s, t)) with ``context`` (e.g. the RRPID) in the AAD."""
    _check_shared_key(shared_key)
    body = await _signed_body(
        key, signer, content_type, _key_commitment(shared_key), content, None, None
    )
    nonce, ciphertext = keywrap.aead_seal(shared_key, body, _enck_aad(content_type, context))
    return codec.encode(SymEnvelope(content_type, nonce, ciphertext))


def open_enck(
    shared_key: bytes, data: bytes, sender: SenderKey, content_type: str, context: bytes = b""
) -> Opened:
    """Open and verify EncK(k, s, t) with the key this party supplied."""
    _check_shared_key(shared_key)
    env = codec.decode(SymEnvelope, data)
    if env.content_type != content_type:
        raise ProtocolError(
            ErrorCode.DECODING_FAILURE,
            f"expected content type {content_type}, got {env.content_type}",
        )
    body = keywrap.aead_open(
        shared_key, env.nonce, env.ciphertext, _enck_aad(content_type, context)
    )
    return check_body(body, sender, content_type, _key_commitment(shared_key), None, None)


for _record in (EncContent, Baggaged, SymEnvelope):
    codec.validate_schema(_record)
