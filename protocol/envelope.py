"""E, EH, EX, EXH: digital envelopes to a recipient's key-exchange key.

Rule 1: the bulk part is AES-256-GCM under a single-use key (random 96-bit nonce); its AAD
binds the treatment, the content type, the recipient's certificate thumbprint and an optional
caller context (e.g. the RRPID). The key travels in a wrap (``protocol.keywrap``).
Rule 2: EH/EXH seal H(t) inside the wrap, so t stays bound even if the bulk key is released;
EX/EXH seal p inside the wrap and put DD(p) beside t in the bulk part (L(t, p)), so p is
readable only with the private key and t and p are bound.
Rule 3: ``open_*`` returns the exact inner bytes; every failure is a ``ProtocolError``
(DECODING_FAILURE, DECRYPTION_FAILURE or LINKAGE_FAILURE), never another exception.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from protocol import codec, keywrap, linkage
from protocol.codec import Bytes32, MaxLen, Size
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PrivateKey, PublicKey, Suite
from protocol.signed import ContentType


@dataclass(frozen=True, slots=True)
class Envelope:
    """One enveloped content: for whom, the wrapped key, and the AEAD-sealed bulk part."""

    content_type: ContentType
    recipient: Bytes32  # thumbprint of the recipient's key-exchange certificate
    ephemeral: Annotated[bytes, MaxLen(keywrap.EC_POINT_BYTES)]  # EC: ephemeral point; RSA: b""
    key_block: Annotated[bytes, MaxLen(1024)]  # RSA: OAEP ciphertext; EC: sealed {[H], [p]}
    nonce: Annotated[bytes, Size(keywrap.NONCE_BYTES)]
    ciphertext: bytes


def context_bytes(treatment: str, content_type: str, recipient: bytes, context: bytes) -> bytes:
    """What the wrap and the AEAD bind: treatment, content type, recipient, caller context."""
    return codec.packb(["setpay/v1/" + treatment, content_type, recipient, context])


async def seal(
    suite: Suite,
    recipient_public: PublicKey,
    recipient: bytes,
    treatment: str,
    content_type: str,
    bulk: bytes,
    digest: bytes | None = None,
    extra: bytes | None = None,
    context: bytes = b"",
) -> bytes:
    """Encoded envelope of ``bulk`` for ``recipient`` with ``digest``/``extra`` in the wrap."""
    ctx = context_bytes(treatment, content_type, recipient, context)
    key, ephemeral, block = keywrap.wrap(suite, recipient_public, ctx, digest, extra)
    nonce, ciphertext = keywrap.aead_seal(key, bulk, ctx)
    return codec.encode(Envelope(content_type, recipient, ephemeral, block, nonce, ciphertext))


async def unseal(
    key: PrivateKey,
    recipient: bytes,
    data: bytes,
    treatment: str,
    content_type: str,
    with_digest: bool = False,
    with_extra: bool = False,
    context: bytes = b"",
) -> tuple[bytes, bytes | None, bytes | None]:
    """Open an encoded envelope addressed to ``recipient``: (bulk, digest, extra)."""
    env = codec.decode(Envelope, data)
    if env.content_type != content_type:
        raise ProtocolError(
            ErrorCode.DECODING_FAILURE,
            f"expected content type {content_type}, got {env.content_type}",
        )
    if not hmac.compare_digest(env.recipient, recipient):
        raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "envelope is for another recipient")
    ctx = context_bytes(treatment, content_type, recipient, context)
    opened = await keywrap.unwrap(key, ctx, env.ephemeral, env.key_block, with_digest, with_extra)
    bulk = keywrap.aead_open(opened.key, env.nonce, env.ciphertext, ctx)
    return bulk, opened.digest, opened.extra


def recipient_of(data: bytes) -> bytes:
    """The recipient thumbprint of an encoded envelope (to pick the key, or to check routing)."""
    return codec.decode(Envelope, data).recipient


def extra_label(content_type: str) -> str:
    """Label of the digest that links a content to its extra-encrypted part (EX/EncX)."""
    return content_type + "/extra"


def hash_label(content_type: str) -> str:
    """Label of H(t) sealed in the wrap block (EH/EXH)."""
    return content_type + "/enveloped"


# --- E / EH -----------------------------------------------------------------------------


async def make_e(
    suite: Suite,
    recipient_public: PublicKey,
    recipient: bytes,
    content_type: str,
    content: bytes,
    context: bytes = b"",
) -> bytes:
    """E(r, t): confidentiality only."""
    return await seal(
        suite, recipient_public, recipient, "E", content_type, content, context=context
    )


async def open_e(
    key: PrivateKey, recipient: bytes, data: bytes, content_type: str, context: bytes = b""
) -> bytes:
    """Open E(r, t); return t."""
    bulk, _, _ = await unseal(key, recipient, data, "E", content_type, context=context)
    return bulk


async def make_eh(
    suite: Suite,
    recipient_public: PublicKey,
    recipient: bytes,
    content_type: str,
    content: bytes,
    context: bytes = b"",
) -> bytes:
    """EH(r, t): E with H(t) sealed in the wrap."""
    digest = linkage.digest_of(hash_label(content_type), content)
    return await seal(
        suite, recipient_public, recipient, "EH", content_type, content, digest, context=context
    )


async def open_eh(
    key: PrivateKey, recipient: bytes, data: bytes, content_type: str, context: bytes = b""
) -> bytes:
    """Open EH(r, t), checking H(t) from the wrap; return t."""
    bulk, digest, _ = await unseal(
        key, recipient, data, "EH", content_type, with_digest=True, context=context
    )
    assert digest is not None  # unseal enforces the block's shape
    linkage.check_digest(digest, hash_label(content_type), bulk, "enveloped content")
    return bulk


# --- EX / EXH ---------------------------------------------------------------------------


async def make_ex(
    suite: Suite,
    recipient_public: PublicKey,
    recipient: bytes,
    content_type: str,
    content: bytes,
    extra: bytes,
    context: bytes = b"",
) -> bytes:
    """EX(r, t, p): bulk part L(t, p), p extra-encrypted in the wrap."""
    bulk = linkage.make_linked(content, extra_label(content_type), extra)
    return await seal(
        suite, recipient_public, recipient, "EX", content_type, bulk, extra=extra, context=context
    )


async def open_ex(
    key: PrivateKey, recipient: bytes, data: bytes, content_type: str, context: bytes = b""
) -> tuple[bytes, bytes]:
    """Open EX(r, t, p), checking DD(p); return (t, p)."""
    bulk, _, extra = await unseal(
        key, recipient, data, "EX", content_type, with_extra=True, context=context
    )
    assert extra is not None
    return _open_bulk_link(bulk, content_type, extra), extra


async def make_exh(
    suite: Suite,
    recipient_public: PublicKey,
    recipient: bytes,
    content_type: str,
    content: bytes,
    extra: bytes,
    context: bytes = b"",
) -> bytes:
    """EXH(r, t, p): EX with H(t) also sealed in the wrap (integrity without a signature)."""
    bulk = linkage.make_linked(content, extra_label(content_type), extra)
    digest = linkage.digest_of(hash_label(content_type), content)
    return await seal(
        suite, recipient_public, recipient, "EXH", content_type, bulk, digest, extra, context
    )


async def open_exh(
    key: PrivateKey, recipient: bytes, data: bytes, content_type: str, context: bytes = b""
) -> tuple[bytes, bytes]:
    """Open EXH(r, t, p), checking H(t) and DD(p); return (t, p)."""
    bulk, digest, extra = await unseal(
        key, recipient, data, "EXH", content_type, True, True, context
    )
    assert digest is not None and extra is not None
    content = _open_bulk_link(bulk, content_type, extra)
    linkage.check_digest(digest, hash_label(content_type), content, "enveloped content")
    return content, extra


def _open_bulk_link(bulk: bytes, content_type: str, extra: bytes) -> bytes:
    return linkage.open_linked(bulk, extra_label(content_type), extra).content


codec.validate_schema(Envelope)
