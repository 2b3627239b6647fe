"""S(s, t): signed data, the base treatment every other signed structure builds on.

Rule 1: the content is carried as the exact bytes that were signed; ``open_signed`` verifies
those bytes and returns them for the caller to decode. Nothing is re-encoded to verify.
Rule 2: the signature covers the content type and the signer's certificate thumbprint, so a
signature cannot be lifted onto another content type or attributed to another certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from protocol import codec, primitives
from protocol.codec import Bytes32, MaxLen
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PrivateKey, PublicKey

ContentType = Annotated[str, MaxLen(64)]


@dataclass(frozen=True, slots=True)
class SignedData:
    """A signed content: who signed (certificate thumbprint), what, and the signature."""

    content_type: ContentType
    signer: Bytes32  # SHA-256 thumbprint of the signer's certificate DER
    content: bytes  # the exact signed bytes (usually an encoded record)
    signature: Annotated[bytes, MaxLen(1024)]


def _tbs(content_type: str, signer: bytes, content: bytes) -> bytes:
    return codec.packb([content_type, signer, content])


async def sign_data(
    key: PrivateKey, signer: bytes, content_type: str, content: bytes
) -> SignedData:
    """Sign ``content`` as ``content_type`` with ``key``; ``signer`` is its cert thumbprint."""
    signature = await primitives.sign(key, "S/" + content_type, _tbs(content_type, signer, content))
    return SignedData(content_type, signer, content, signature)


def open_signed(signed: SignedData, public_key: PublicKey, content_type: str) -> bytes:
    """Verify ``signed`` under ``public_key``; return the signed bytes. Raises ``ProtocolError``."""
    if signed.content_type != content_type:
        raise ProtocolError(
            ErrorCode.DECODING_FAILURE,
            f"expected content type {content_type}, got {signed.content_type}",
        )
    primitives.verify(
        public_key,
        "S/" + content_type,
        _tbs(signed.content_type, signed.signer, signed.content),
        signed.signature,
    )
    return signed.content
