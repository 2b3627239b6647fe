"""Hashing, signing and verification primitives shared by every treatment.

Rule 1: every digest is domain-separated by a label naming its use ("PI-TBS", "BCI", …), so a
signature made for one purpose never verifies for another (fixes SET's explicitness gap).
Rule 2: signing goes through the injected ``PrivateKey``; verification uses ``cryptography``.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PSS_SALT_LENGTH, PrivateKey, PublicKey

DOMAIN = b"setpay/v1/"


def sha256(data: bytes) -> bytes:
    """Plain SHA-256 (thumbprints of certificates, CRLs and BCIs)."""
    return hashlib.sha256(data).digest()


def labelled_digest(label: str, data: bytes) -> bytes:
    """SHA-256 over ``setpay/v1/<label>\\0<data>``: the digest that gets signed or linked."""
    h = hashlib.sha256(DOMAIN)
    h.update(label.encode("ascii"))
    h.update(b"\0")
    h.update(data)
    return h.digest()


def thumbprint(data: bytes) -> bytes:
    """Thumbprint of a certificate's DER, or of the exact bytes of a CRL or BCI."""
    return sha256(data)


async def sign(key: PrivateKey, label: str, data: bytes) -> bytes:
    """Sign ``data`` for the purpose ``label`` with a private key held elsewhere."""
    return await key.sign_digest(labelled_digest(label, data))


def verify(public_key: PublicKey, label: str, data: bytes, signature: bytes) -> None:
    """Check a signature made by ``sign``. Raises ``ProtocolError(signatureFailure)``."""
    verify_digest(public_key, labelled_digest(label, data), signature)


def verify_digest(public_key: PublicKey, digest: bytes, signature: bytes) -> None:
    prehashed = utils.Prehashed(hashes.SHA256())
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(
                signature,
                digest,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH),
                prehashed,
            )
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, digest, ec.ECDSA(prehashed))
        else:
            raise ProtocolError(ErrorCode.UNSUPPORTED_ALGORITHM, "unsupported public key type")
    except InvalidSignature:
        raise ProtocolError(ErrorCode.SIGNATURE_FAILURE, "signature does not verify") from None
    except ValueError:  # malformed DER ECDSA signature, wrong length …
        raise ProtocolError(ErrorCode.SIGNATURE_FAILURE, "malformed signature") from None
