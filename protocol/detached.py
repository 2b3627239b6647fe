"""SO(s, t): a signature whose content travels elsewhere (the PISignature of the dual signature).

Rule 1: the receiver supplies the content as the exact bytes it holds; nothing is re-encoded.
Rule 2: the signature covers the content type and the signer's certificate thumbprint, and is
domain-separated from S ("SO/<type>" vs "S/<type>"), so it cannot be lifted onto another
content type, another signer or the other treatment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from protocol import codec, primitives
from protocol.codec import Bytes32, MaxLen
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PrivateKey, PublicKey
from protocol.signed import ContentType


@dataclass(frozen=True, slots=True)
class DetachedSignature:
    """Who signed (certificate thumbprint), what kind of content, and the signature."""

    content_type: ContentType
    signer: Bytes32
    signature: Annotated[bytes, MaxLen(1024)]


def _tbs(content_type: str, signer: bytes, content: bytes) -> bytes:
    return codec.packb([content_type, signer, content])


async def sign_detached(
    key: PrivateKey, signer: bytes, content_type: str, content: bytes
) -> DetachedSignature:
    """Sign ``content`` (carried elsewhere) as ``content_type``; ``signer``: cert thumbprint."""
    signature = await primitives.sign(
        key, "SO/" + content_type, _tbs(content_type, signer, content)
    )
    return DetachedSignature(content_type, signer, signature)


def verify_detached(
    sig: DetachedSignature, public_key: PublicKey, content_type: str, content: bytes
) -> None:
    """Check ``sig`` over ``content`` as ``content_type``. Raises ``ProtocolError``."""
    if sig.content_type != content_type:
        raise ProtocolError(
            ErrorCode.DECODING_FAILURE,
            f"expected content type {content_type}, got {sig.content_type}",
        )
    primitives.verify(
        public_key, "SO/" + content_type, _tbs(content_type, sig.signer, content), sig.signature
    )


async def make_detached(key: PrivateKey, signer: bytes, content_type: str, content: bytes) -> bytes:
    """Encoded SO(key, content)."""
    return codec.encode(await sign_detached(key, signer, content_type, content))


def open_detached(data: bytes, public_key: PublicKey, content_type: str, content: bytes) -> bytes:
    """Decode and verify an encoded SO over ``content``; return the signer's thumbprint."""
    sig = codec.decode(DetachedSignature, data)
    verify_detached(sig, public_key, content_type, content)
    return sig.signer


codec.validate_schema(DetachedSignature)
