"""X.509 v3 certificates for SET roles, signed by a ``PrivateKey`` held elsewhere (the HSM).

Rule 1: CA keys never enter this process. ``cryptography`` builders need an in-process key,
so a certificate (or CRL) is built with a *throwaway* key of the same type and signature
parameters, only its to-be-signed bytes are kept, SHA-256 of them is signed through the
injected ``PrivateKey`` and the DER {tbs, algorithm, signature} is re-assembled. The result is
checked against the issuer before it is returned.
Rule 2: SET data lives in one non-critical private extension (``SET_EXTENSION_OID``): a DER
SEQUENCE {UTF8String summary, OCTET STRING msgpack ``SetExtension``}. The summary makes
``openssl x509 -text`` show the role; only the msgpack record is authoritative.
Rule 3: a cardholder certificate carries the account hash (``protocol.pan.account_hash``),
never the PAN; subject names are opaque identifiers chosen by the CA.
Rule 4: parsing anything received raises ``ProtocolError`` (``invalidCertificate``), never a
``cryptography`` or ``ValueError`` exception.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from functools import cache, lru_cache
from typing import Annotated

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from protocol import codec
from protocol.codec import Bytes32, MaxLen, ShortStr
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PSS_SALT_LENGTH, PrivateKey, PublicKey

# UUID arc (ITU-T X.667): 2.25.<uuid c1a13452-2488-4f0c-9a77-ea771ec7c902 as an integer>.
SETPAY_ARC = "2.25.257378024174027834339645610900528285954"
SET_EXTENSION_OID = x509.ObjectIdentifier(SETPAY_ARC + ".1")
SET_EXTENSION_VERSION = 1
SUMMARY_PREFIX = "setpay "


class CertType(IntEnum):
    """SET certType: the role a certificate's key plays."""

    CARDHOLDER = 1
    MERCHANT = 2
    GATEWAY = 3
    CCA = 4
    MCA = 5
    PCA = 6
    BRAND = 7
    ROOT = 8


class KeyUse(IntEnum):
    """What the certified key does: sign, or receive encrypted keys (key exchange)."""

    SIGNATURE = 1
    KEY_EXCHANGE = 2


CA_TYPES = frozenset({CertType.ROOT, CertType.BRAND, CertType.CCA, CertType.MCA, CertType.PCA})
# The issuer's certType for each certType (root is self-issued).
ISSUER_TYPE: dict[CertType, CertType] = {
    CertType.CARDHOLDER: CertType.CCA,
    CertType.MERCHANT: CertType.MCA,
    CertType.GATEWAY: CertType.PCA,
    CertType.CCA: CertType.BRAND,
    CertType.MCA: CertType.BRAND,
    CertType.PCA: CertType.BRAND,
    CertType.BRAND: CertType.ROOT,
    CertType.ROOT: CertType.ROOT,
}
# Which key uses each type may be certified for (SET Book 1 table: cardholders only sign).
ALLOWED_USES: dict[CertType, frozenset[KeyUse]] = {
    CertType.CARDHOLDER: frozenset({KeyUse.SIGNATURE}),
    CertType.ROOT: frozenset({KeyUse.SIGNATURE}),
    CertType.BRAND: frozenset({KeyUse.SIGNATURE}),
}
_BOTH = frozenset({KeyUse.SIGNATURE, KeyUse.KEY_EXCHANGE})
# Path length below each CA certificate (root → brand → CCA/MCA/PCA → end entity).
PATH_LENGTH: dict[CertType, int] = {CertType.ROOT: 2, CertType.BRAND: 1}


def allowed_uses(cert_type: CertType) -> frozenset[KeyUse]:
    return ALLOWED_USES.get(cert_type, _BOTH)


def is_ca_cert(cert_type: CertType, key_use: KeyUse) -> bool:
    """A CA's signature certificate signs certificates and CRLs; its key-exchange one does not."""
    return cert_type in CA_TYPES and key_use is KeyUse.SIGNATURE


@dataclass(frozen=True, slots=True)
class MerchantData:
    """SET merchData: who the merchant is, as the acquirer registered it."""

    merchant_id: ShortStr
    name: ShortStr
    category: Annotated[str, MaxLen(4)]  # ISO 18245 merchant category code


@dataclass(frozen=True, slots=True)
class GatewayCaps:
    """What a payment gateway offers (SET PGWYcapabilities, plus OPE PIN debit)."""

    currencies: Annotated[list[Annotated[str, MaxLen(3)]], MaxLen(64)]  # ISO 4217 alpha
    pin_debit: bool  # accepts OPE PIN blocks
    sale: bool  # accepts authorization with immediate capture


@dataclass(frozen=True, slots=True)
class SetExtension:
    """The SET data of a certificate (one private extension)."""

    version: int
    cert_type: CertType
    brand: ShortStr
    key_use: KeyUse
    merchant: MerchantData | None = None
    account_hash: Bytes32 | None = None  # cardholder: HMAC(PANSecret, account, expiry)
    gateway: GatewayCaps | None = None
    hashed_root: Bytes32 | None = None  # root: SHA-256 of the next root's public key info

    def summary(self) -> str:
        """The human-readable line ``openssl x509 -text`` shows; never holds secrets."""
        parts = [
            f"certType={self.cert_type.name.lower()}",
            f"brand={self.brand}",
            f"keyUse={self.key_use.name.lower().replace('_', '-')}",
        ]
        if self.merchant is not None:
            parts.append(f"merchantId={self.merchant.merchant_id}")
        return SUMMARY_PREFIX + " ".join(parts)


codec.validate_schema(SetExtension)


# --- minimal DER ------------------------------------------------------------------------


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def _der_read(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """One TLV at ``pos``: (tag, content, next position). Raises ``ValueError`` if malformed."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos:end], end


def _sequence_items(der: bytes) -> list[tuple[int, bytes, bytes]]:
    """Items of one DER SEQUENCE as (tag, content, full TLV bytes)."""
    tag, content, end = _der_read(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("not one DER SEQUENCE")
    items, pos = [], 0
    while pos < len(content):
        item_tag, item_content, nxt = _der_read(content, pos)
        items.append((item_tag, item_content, content[pos:nxt]))
        pos = nxt
    return items


def encode_set_extension(ext: SetExtension) -> bytes:
    """DER value of the private extension: SEQUENCE {UTF8String summary, OCTET STRING record}."""
    return _der(0x30, _der(0x0C, ext.summary().encode()) + _der(0x04, codec.encode(ext)))


def decode_set_extension(value: bytes) -> SetExtension:
    """Parse the private extension's DER value. Raises ``ProtocolError``."""
    try:
        items = _sequence_items(value)
    except ValueError:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "SET extension is not DER") from None
    if len(items) != 2 or items[0][0] != 0x0C or items[1][0] != 0x04:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "SET extension has the wrong shape")
    try:
        ext = codec.decode(SetExtension, items[1][1])
    except ProtocolError as exc:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, f"SET extension: {exc.detail}") from None
    if ext.version != SET_EXTENSION_VERSION:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "unknown SET extension version")
    return ext


# --- external signing -------------------------------------------------------------------


@cache
def _throwaway_key(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    # Signs nothing that is kept: only its to-be-signed bytes survive (Rule 1). One per
    # process, because RSA key generation costs ~100 ms.
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP256R1())


def _builder_args(issuer_public: PublicKey) -> dict[str, object]:
    if isinstance(issuer_public, rsa.RSAPublicKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)
        return {"private_key": _throwaway_key("rsa"), "rsa_padding": pss}
    if isinstance(issuer_public, ec.EllipticCurvePublicKey):
        return {"private_key": _throwaway_key("ec")}
    raise ProtocolError(ErrorCode.UNSUPPORTED_ALGORITHM, "issuer key of no supported type")


def _bit_string(signature: bytes) -> bytes:
    return _der(0x03, b"\x00" + signature)


async def sign_externally(draft_der: bytes, tbs: bytes, key: PrivateKey) -> bytes:
    """Replace the throwaway signature of a certificate or CRL ``draft_der`` with ``key``'s."""
    items = _sequence_items(draft_der)
    algorithm = items[1][2]  # identical to the one inside tbs: same key type, same params
    signature = await key.sign_digest(hashlib.sha256(tbs).digest())
    return _der(0x30, tbs + algorithm + _bit_string(signature))


def draft_signing_args(key: PrivateKey) -> dict[str, object]:
    """Arguments for a ``cryptography`` builder's ``sign`` that yield ``key``'s algorithm."""
    args = _builder_args(key.public_key())
    args["algorithm"] = hashes.SHA256()
    return args


# --- issuing ----------------------------------------------------------------------------


def _key_usage(ext: SetExtension, public_key: PublicKey) -> x509.KeyUsage:
    ca = is_ca_cert(ext.cert_type, ext.key_use)
    sign = ext.key_use is KeyUse.SIGNATURE
    exchange = ext.key_use is KeyUse.KEY_EXCHANGE
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=exchange and is_rsa,
        data_encipherment=False,
        key_agreement=exchange and not is_rsa,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def subject_name(common_name: str, ext: SetExtension) -> x509.Name:
    """Subject of a SET certificate: CN, the brand as O and the role as OU."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ext.brand),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ext.cert_type.name.lower()),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def check_profile(ext: SetExtension) -> None:
    """The SET data is consistent with the role. Raises ``ProtocolError(invalidCertificate)``."""
    if ext.key_use not in allowed_uses(ext.cert_type):
        raise ProtocolError(
            ErrorCode.INVALID_CERTIFICATE,
            f"{ext.cert_type.name.lower()} cannot hold a {ext.key_use.name.lower()} key",
        )
    needs = {
        "merchant": ext.cert_type is CertType.MERCHANT,
        "account_hash": ext.cert_type is CertType.CARDHOLDER,
        "gateway": ext.cert_type is CertType.GATEWAY,
    }
    for name, required in needs.items():
        if (getattr(ext, name) is not None) != required:
            state = "missing" if required else "not allowed"
            raise ProtocolError(
                ErrorCode.INVALID_CERTIFICATE,
                f"{name} {state} in a {ext.cert_type.name.lower()} certificate",
            )
    if ext.hashed_root is not None and ext.cert_type is not CertType.ROOT:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "hashed_root only in a root")
    if not ext.brand:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "empty brand")


async def issue_certificate(
    *,
    issuer_key: PrivateKey,
    issuer_cert: x509.Certificate | None,
    subject_public_key: PublicKey,
    common_name: str,
    ext: SetExtension,
    not_before: datetime,
    not_after: datetime,
    serial: int | None = None,
) -> x509.Certificate:
    """Issue a SET certificate signed by ``issuer_key``; ``issuer_cert=None`` self-signs a root."""
    check_profile(ext)
    if (issuer_cert is None) != (ext.cert_type is CertType.ROOT):
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "only a root is self-signed")
    subject = subject_name(common_name, ext)
    issuer = subject if issuer_cert is None else issuer_cert.subject
    issuer_public = issuer_key.public_key()
    ca = is_ca_cert(ext.cert_type, ext.key_use)
    path_length = PATH_LENGTH.get(ext.cert_type, 0) if ca else None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(_key_usage(ext, subject_public_key), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
        )
        .add_extension(
            x509.UnrecognizedExtension(SET_EXTENSION_OID, encode_set_extension(ext)),
            critical=False,  # critical would make every non-setpay verifier refuse it
        )
    )
    draft = builder.sign(**draft_signing_args(issuer_key))  # type: ignore[arg-type]
    der = await sign_externally(
        draft.public_bytes(serialization.Encoding.DER), draft.tbs_certificate_bytes, issuer_key
    )
    cert = x509.load_der_x509_certificate(der)
    check_issued_by(cert, cert if issuer_cert is None else issuer_cert)
    return cert


# --- reading ----------------------------------------------------------------------------


def load_certificate(der: bytes) -> x509.Certificate:
    """Parse a certificate received as DER. Raises ``ProtocolError(invalidCertificate)``.

    Parsed certificates are immutable and remembered by their exact bytes (bounded, least
    recently used first out): the same chain arrives with every message of a purchase."""
    return _parse_certificate(bytes(der))


@lru_cache(maxsize=2048)
def _parse_certificate(der: bytes) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(der)
        # cryptography parses lazily; touch every part now so malformed input fails here.
        _ = (cert.subject, cert.issuer, cert.extensions, cert.not_valid_before_utc)
        _ = (cert.not_valid_after_utc, cert.signature_algorithm_parameters, cert.serial_number)
        public_key_of(cert)
    except (
        ValueError,
        UnsupportedAlgorithm,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ):
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "certificate is not valid DER") from None
    return cert


def set_extension(cert: x509.Certificate) -> SetExtension:
    """The SET data of ``cert``. Raises ``ProtocolError`` if it is missing or malformed."""
    try:
        value = cert.extensions.get_extension_for_oid(SET_EXTENSION_OID).value
    except x509.ExtensionNotFound:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "no SET extension") from None
    except ValueError:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "malformed extensions") from None
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "SET extension of the wrong kind")
    ext = decode_set_extension(value.value)
    check_profile(ext)
    return ext


@lru_cache(maxsize=4096)
def certificate_der(cert: x509.Certificate) -> bytes:
    """``cert``'s DER, remembered per certificate (a purchase asks for the same few
    certificates' bytes over a hundred times: thumbprints, path cache keys, messages)."""
    return cert.public_bytes(serialization.Encoding.DER)


@lru_cache(maxsize=4096)
def cert_thumbprint(cert: x509.Certificate) -> bytes:
    """SHA-256 of the certificate DER (``primitives.thumbprint`` convention)."""
    return hashlib.sha256(certificate_der(cert)).digest()


def public_key_of(cert: x509.Certificate) -> PublicKey:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ProtocolError(ErrorCode.UNSUPPORTED_ALGORITHM, "certificate key of no suite")
    return key


def check_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """``cert`` names ``issuer`` and carries its valid signature. Raises ``ProtocolError``."""
    if cert.issuer != issuer.subject:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "issuer name mismatch")
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        # Wrong key type for the algorithm, bad signature encoding or a bad signature: the
        # issuer's key did not sign this certificate.
        raise ProtocolError(ErrorCode.SIGNATURE_FAILURE, "certificate signature") from None


def spki_hash(public_key: PublicKey) -> bytes:
    """SHA-256 of a public key's SubjectPublicKeyInfo DER (for ``hashed_root``)."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def check_root_rollover(current_root: x509.Certificate, new_root: x509.Certificate) -> None:
    """Accept ``new_root`` only if ``current_root`` committed to its key (SET hashedRoot)."""
    current = set_extension(current_root)
    new = set_extension(new_root)
    if new.cert_type is not CertType.ROOT or current.hashed_root is None:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "not a root rollover")
    if spki_hash(public_key_of(new_root)) != current.hashed_root:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "new root key not committed")
    check_issued_by(new_root, new_root)
