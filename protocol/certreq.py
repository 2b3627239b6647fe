"""Wire conventions of certificate requests shared by the CA and requesters.

Rule 1: a CertReq is signed with the *new* signature key (proof of possession); its signer id
is SHA-256 of that key's SubjectPublicKeyInfo DER (``pop_signer``), since no certificate for
it exists yet. The CA takes the key from the request and accepts it only if the signature
verifies under it and the id matches.
Rule 2: a renewal additionally carries the request signed with the *old* key: the Enc content
is an encoded ``SignedData`` (content type ``RENEWAL_CONTENT``) over the ``CertReqData``
bytes, signer = the old certificate's thumbprint; ``CertReq.certs`` carries the old chain.
Rule 3: a CertInq answer is EncK under a key derived from the CABackKey and the inquiry's
RRPID (``inquiry_key``), so no EncK key protects more than one message.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol import codec, primitives
from protocol.envelope import unseal
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PrivateKey, PublicKey, suite_for_public_key
from protocol.messages import CertReqData, KeyUse, PublicKeyInfo
from protocol.signed import SignedData, open_signed, sign_data
from protocol.treatments import EncContent, Opened
from protocol.treatments import check_body as check_enc_body

CERT_REQ = "CertReq"
RENEWAL_CONTENT = "CertReq/renewal"
_INQUIRY_INFO = b"setpay/v1/CertInqRes/EncK"


def spki_der(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pop_signer(public_key: PublicKey) -> bytes:
    """Signer id of a proof-of-possession signature (Rule 1)."""
    return primitives.thumbprint(spki_der(public_key))


def load_spki(info: PublicKeyInfo) -> PublicKey:
    try:
        key = serialization.load_der_public_key(info.spki_der)
    except (ValueError, TypeError):
        raise ProtocolError(ErrorCode.DECODING_FAILURE, "public key is not SPKI DER") from None
    suite_for_public_key(key)  # raises UNSUPPORTED_ALGORITHM for other key kinds
    return key  # type: ignore[return-value]


async def renewal_content(old_key: PrivateKey, old_thumb: bytes, data: bytes) -> bytes:
    """The Enc content of a renewal: ``data`` signed with the old key (Rule 2)."""
    return codec.encode(await sign_data(old_key, old_thumb, RENEWAL_CONTENT, data))


@dataclass(frozen=True)
class OpenedCertReq:
    """A CertReq opened and its proof of possession verified."""

    data: CertReqData
    data_bytes: bytes
    signature_key: PublicKey
    keys: dict[KeyUse, PublicKey]
    renewal: SignedData | None  # Rule 2: verified by the caller against the old cert
    extra: bytes | None


async def open_cert_req(
    key: PrivateKey, recipient: bytes, enc: bytes, *, extra: bool, renewal: bool
) -> OpenedCertReq:
    """Unseal an Enc/EncX CertReq, find the new signature key inside, verify the PoP signature.

    Raises ``ProtocolError`` (decryption, decoding, signature, linkage)."""
    treatment = "EncX" if extra else "Enc"
    bulk, _, p = await unseal(key, recipient, enc, treatment, CERT_REQ, with_extra=extra)
    # The key that must have signed is inside the signed content (it has no certificate
    # yet): read it first, then verify everything with it before using anything else.
    signed = codec.decode(SignedData, bulk)
    body = codec.decode(EncContent, signed.content)
    nested = codec.decode(SignedData, body.content) if renewal else None
    data_bytes = nested.content if nested is not None else body.content
    data = codec.decode(CertReqData, data_bytes)
    keys: dict[KeyUse, PublicKey] = {}
    for info in data.public_keys:
        if info.use in keys:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "two public keys of the same use")
        keys[info.use] = load_spki(info)
    sig_key = keys.get(KeyUse.SIGNATURE)
    if sig_key is None:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "no signature key to certify")
    if signed.signer != pop_signer(sig_key):
        raise ProtocolError(ErrorCode.SIGNATURE_FAILURE, "CertReq not signed by the new key")
    opened: Opened = check_enc_body(bulk, sig_key, CERT_REQ, recipient, p, None)
    if opened.content != body.content:  # pragma: no cover - same bytes, verified above
        raise ProtocolError(ErrorCode.SIGNATURE_FAILURE, "CertReq content changed")
    return OpenedCertReq(data, data_bytes, sig_key, keys, nested, p)


def open_renewal(nested: SignedData, old_public: PublicKey) -> bytes:
    """Verify the old-key signature of a renewal; returns the signed CertReqData bytes."""
    return open_signed(nested, old_public, RENEWAL_CONTENT)


def inquiry_key(back_key: bytes, inquiry_rrpid: bytes) -> bytes:
    """The EncK key of the CertInqRes answering inquiry ``inquiry_rrpid`` (Rule 3)."""
    return HKDF(hashes.SHA256(), 32, salt=inquiry_rrpid, info=_INQUIRY_INFO).derive(back_key)
