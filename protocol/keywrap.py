"""Key transport (wrap/unwrap) and the AES-256-GCM helpers every envelope uses.

Rule 1: unwrapping goes through the recipient's ``PrivateKey`` (``decrypt`` for RSA-OAEP,
``derive`` for ECDH-ES); raw RSA is never unpadded here.
Rule 2: the wrap block is {k, [H(t)], [p]}. RSA: the whole block is OAEP-encrypted (hash and
MGF1 = ``suite.oaep_hash``, no label) with a fresh random k. EC: an ephemeral P-256 key and
HKDF-SHA-256 give two keys, k_bulk (the bulk key) and k_extra, which seals {[H(t)], [p]} —
so p is readable only with the private key, never with the bulk key alone.
Rule 3: the HKDF info binds the treatment, content type, recipient thumbprint and ephemeral
point; the GCM AAD of every part binds the same context.
Rule 4: any failure to unwrap or open raises ``ProtocolError(DECRYPTION_FAILURE)``; a block too
large for the recipient's key raises ``INVALID_FIELD`` before anything is sent.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol import codec
from protocol.codec import Digest, MaxLen
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import KeyType, PrivateKey, PublicKey, Suite

KEY_BYTES = 32
NONCE_BYTES = 12
EC_POINT_BYTES = 65  # X9.62 uncompressed P-256 point
MAX_EXTRA_BYTES = 512
# Each k_extra is derived for one message only, so a fixed nonce never repeats under a key.
_EXTRA_NONCE = bytes(NONCE_BYTES)


@dataclass(frozen=True, slots=True)
class KeyBlock:
    """What the wrap protects: k (RSA only; EC derives it), [H(t)], [p]."""

    key: Annotated[bytes, MaxLen(KEY_BYTES)]
    digest: Digest | None
    extra: Annotated[bytes, MaxLen(MAX_EXTRA_BYTES)] | None


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """The bulk key and the sealed parts, as the recipient recovered them."""

    key: bytes
    digest: bytes | None
    extra: bytes | None


def _fail(detail: str) -> ProtocolError:
    return ProtocolError(ErrorCode.DECRYPTION_FAILURE, detail)


# --- AES-256-GCM ------------------------------------------------------------------------


def aead_seal(key: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """Encrypt under a single-use ``key`` with a random 96-bit nonce; return (nonce, ct)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_open(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Decrypt and authenticate. Raises ``ProtocolError(DECRYPTION_FAILURE)``."""
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError):
        raise _fail("authenticated decryption failed") from None


# --- wrap / unwrap ----------------------------------------------------------------------


def oaep_capacity(suite: Suite, key_size: int) -> int:
    """Largest OAEP plaintext for a ``key_size``-bit RSA key under ``suite``'s OAEP hash."""
    return key_size // 8 - 2 * suite.oaep_hash_algorithm().digest_size - 2


def _check_key(suite: Suite, public_key: PublicKey) -> None:
    ok = (
        isinstance(public_key, rsa.RSAPublicKey)
        if suite.key_type is KeyType.RSA
        else isinstance(public_key, ec.EllipticCurvePublicKey)
        and isinstance(public_key.curve, ec.SECP256R1)
    )
    if not ok:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_ALGORITHM, f"recipient key does not fit suite {suite.name}"
        )


def _info(context: bytes, ephemeral: bytes) -> bytes:
    return codec.packb(["setpay/v1/ECDH-ES", context, ephemeral])


def wrap(
    suite: Suite,
    recipient_public: PublicKey,
    context: bytes,
    digest: bytes | None = None,
    extra: bytes | None = None,
) -> tuple[bytes, bytes, bytes]:
    """Make a bulk key and wrap it with {[digest], [extra]}; return (k, ephemeral, block).

    ``context`` names treatment, content type and recipient thumbprint (see the module rules).
    """
    _check_key(suite, recipient_public)
    if extra is not None and len(extra) > MAX_EXTRA_BYTES:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"extra part > {MAX_EXTRA_BYTES} bytes")
    if isinstance(recipient_public, rsa.RSAPublicKey):
        key = secrets.token_bytes(KEY_BYTES)
        block = codec.encode(KeyBlock(key, digest, extra))
        capacity = oaep_capacity(suite, recipient_public.key_size)
        if len(block) > capacity:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"wrap block of {len(block)} bytes exceeds the {capacity}-byte OAEP capacity "
                f"of suite {suite.name} with a {recipient_public.key_size}-bit key",
            )
        h = suite.oaep_hash_algorithm()
        wrapped = recipient_public.encrypt(
            block, padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)
        )
        return key, b"", wrapped
    assert isinstance(recipient_public, ec.EllipticCurvePublicKey)  # _check_key guarantees it
    eph = ec.generate_private_key(ec.SECP256R1())
    point = eph.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    keys = _hkdf_pair(eph.exchange(ec.ECDH(), recipient_public), _info(context, point))
    k_bulk, k_extra = keys[:KEY_BYTES], keys[KEY_BYTES:]
    if digest is None and extra is None:
        return k_bulk, point, b""
    sealed = AESGCM(k_extra).encrypt(
        _EXTRA_NONCE, codec.encode(KeyBlock(b"", digest, extra)), context
    )
    return k_bulk, point, sealed


def _hkdf_pair(shared: bytes, info: bytes) -> bytes:
    # Same derivation as PrivateKey.derive (keys.py): HKDF-SHA-256, empty salt.
    return HKDF(hashes.SHA256(), 2 * KEY_BYTES, salt=None, info=info).derive(shared)


def check_wrap_shape(key_type: KeyType, ephemeral: bytes) -> None:
    """Refuse a wrap whose ephemeral part does not fit the recipient's key type."""
    if key_type is KeyType.RSA:
        if ephemeral:
            raise _fail("unexpected ephemeral key for an RSA recipient")
    elif len(ephemeral) != EC_POINT_BYTES:
        raise _fail("ephemeral key missing or of the wrong length")


def ec_info(context: bytes, ephemeral: bytes) -> bytes:
    """The HKDF info an EC recipient derives its two keys with (Rule 3)."""
    return _info(context, ephemeral)


async def unwrap(
    key: PrivateKey,
    context: bytes,
    ephemeral: bytes,
    block: bytes,
    with_digest: bool,
    with_extra: bool,
) -> Unwrapped:
    """Recover the bulk key and sealed parts; their presence must match ``with_*``."""
    key_type = key.suite.key_type
    check_wrap_shape(key_type, ephemeral)
    if key_type is KeyType.RSA:
        secret = await key.decrypt(block)
    else:
        secret = await key.derive(ephemeral, _info(context, ephemeral), 2 * KEY_BYTES)
    return finish_unwrap(key_type, context, block, secret, with_digest, with_extra)


def finish_unwrap(
    key_type: KeyType,
    context: bytes,
    block: bytes,
    secret: bytes,
    with_digest: bool,
    with_extra: bool,
) -> Unwrapped:
    """The half of ``unwrap`` after the private-key step; ``secret`` is the OAEP plaintext
    (RSA) or the 2 x 32 HKDF output (EC). The keystore runs it with the token's answer."""
    if key_type is KeyType.RSA:
        inner = _decode_block(secret)
        if len(inner.key) != KEY_BYTES:
            raise _fail("wrapped bulk key has the wrong length")
        bulk = inner.key
    else:
        if len(secret) != 2 * KEY_BYTES:
            raise _fail("derived key material has the wrong length")
        bulk, k_extra = secret[:KEY_BYTES], secret[KEY_BYTES:]
        if not (with_digest or with_extra):
            if block:
                raise _fail("unexpected sealed block")
            return Unwrapped(bulk, None, None)
        inner = _decode_block(aead_open(k_extra, _EXTRA_NONCE, block, context))
        if inner.key:
            raise _fail("unexpected key in the sealed block")
    if (inner.digest is not None) != with_digest or (inner.extra is not None) != with_extra:
        raise _fail("wrap block does not have the parts this treatment needs")
    return Unwrapped(bulk, inner.digest, inner.extra)


def decode_key_block(plain: bytes) -> KeyBlock | None:
    """An OAEP plaintext as a ``KeyBlock``, or None if it is not one (keystore guards)."""
    try:
        return codec.decode(KeyBlock, plain)
    except ProtocolError:
        return None


def _decode_block(plain: bytes) -> KeyBlock:
    try:
        return codec.decode(KeyBlock, plain)
    except ProtocolError:
        # Only a holder of the private key could have produced this: report it as what it is.
        raise _fail("wrap block is malformed") from None


codec.validate_schema(KeyBlock)
