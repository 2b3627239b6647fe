"""Revocation: numbered X.509 CRLs per CA and the signed Brand CRL Identifier (BCI).

Rule 1: a BCI is a ``SignedData`` (content type "BCI") by the Brand CA over an encoded ``Bci``
record; it is trusted only after its signature verifies under the brand certificate of the
chain being checked, and only between its ``not_before`` and ``not_after``.
Rule 2: a CRL counts only if the current BCI names it (issuer thumbprint + CRL number) and it
verifies under that issuer; a CRL the BCI names but the holder lacks is ``missingCertificate``
(the peer must fetch it by thumbprint), never silently skipped.
Rule 3: thumbprints of CRLs and BCIs are SHA-256 of their exact bytes; CRLs are signed like
certificates, through the injected ``PrivateKey`` (see ``protocol.certs``).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Annotated

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protocol import codec, primitives
from protocol.certs import (
    CertType,
    cert_thumbprint,
    certificate_der,
    draft_signing_args,
    public_key_of,
    set_extension,
    sign_externally,
)
from protocol.codec import Bytes32, MaxLen, Range, ShortStr, Timestamp
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PrivateKey
from protocol.signed import SignedData, open_signed, sign_data

BCI_CONTENT_TYPE = "BCI"
BCI_VERSION = 1


@dataclass(frozen=True, slots=True)
class CrlId:
    """Names one CRL: the issuing CA's certificate thumbprint and the CRL number."""

    issuer: Bytes32
    number: Annotated[int, Range(0, 2**63 - 1)]


@dataclass(frozen=True, slots=True)
class Bci:
    """The Brand CRL Identifier: which CRL of each CA in the brand is current."""

    version: int
    sequence: int
    brand: ShortStr
    not_before: Timestamp  # ms since the Unix epoch
    not_after: Timestamp
    crls: Annotated[list[CrlId], MaxLen(256)]  # one per CA of the brand (and the root)


codec.validate_schema(Bci)


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


# --- CRLs ---------------------------------------------------------------------------------


async def issue_crl(
    *,
    issuer_key: PrivateKey,
    issuer_cert: x509.Certificate,
    number: int,
    revoked: Iterable[tuple[int, datetime]],
    this_update: datetime,
    next_update: datetime,
) -> bytes:
    """A DER X.509 CRL numbered ``number`` listing ``(serial, revocation date)`` pairs."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key_of(issuer_cert)),
            critical=False,
        )
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    draft = builder.sign(**draft_signing_args(issuer_key))  # type: ignore[arg-type]
    der = await sign_externally(
        draft.public_bytes(serialization.Encoding.DER), draft.tbs_certlist_bytes, issuer_key
    )
    load_crl(der, issuer_cert)  # the re-assembled CRL must verify before it leaves
    return der


def load_crl(der: bytes, issuer_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """Parse a CRL and check it is ``issuer_cert``'s. Raises ``ProtocolError``."""
    try:
        crl = x509.load_der_x509_crl(der)
        valid = crl.is_signature_valid(public_key_of(issuer_cert))  # type: ignore[arg-type]
    except ValueError:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "CRL is not valid DER") from None
    if crl.issuer != issuer_cert.subject or not valid:
        raise ProtocolError(ErrorCode.SIGNATURE_FAILURE, "CRL does not verify under its issuer")
    return crl


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "CRL without a CRL number") from None


# --- BCI ----------------------------------------------------------------------------------


async def issue_bci(
    *,
    brand_key: PrivateKey,
    brand_cert: x509.Certificate,
    sequence: int,
    crls: Sequence[CrlId],
    not_before: datetime,
    not_after: datetime,
) -> bytes:
    """Encoded ``SignedData`` of a BCI by the Brand CA. Its thumbprint is SHA-256 of these."""
    ext = set_extension(brand_cert)
    if ext.cert_type is not CertType.BRAND:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "only a Brand CA signs a BCI")
    bci = Bci(BCI_VERSION, sequence, ext.brand, _ms(not_before), _ms(not_after), list(crls))
    signed = await sign_data(
        brand_key, cert_thumbprint(brand_cert), BCI_CONTENT_TYPE, codec.encode(bci)
    )
    return codec.encode(signed)


def open_bci(data: bytes, brand_cert: x509.Certificate, now: datetime) -> Bci:
    """Verify a BCI under ``brand_cert`` and check its window at ``now``. Raises ``ProtocolError``.

    ``brand_cert`` must itself have been validated up to the trusted root by the caller.
    """
    signed = codec.decode(SignedData, data)
    if signed.signer != cert_thumbprint(brand_cert):
        raise ProtocolError(ErrorCode.SIGNATURE_FAILURE, "BCI not signed by this Brand CA")
    ext = set_extension(brand_cert)
    if ext.cert_type is not CertType.BRAND:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "BCI signer is not a Brand CA")
    bci = codec.decode(Bci, open_signed(signed, public_key_of(brand_cert), BCI_CONTENT_TYPE))
    if bci.version != BCI_VERSION:
        raise ProtocolError(ErrorCode.VERSION_TOO_NEW, "unknown BCI version")
    if bci.brand != ext.brand:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "BCI of another brand")
    if not bci.not_before <= _ms(now) <= bci.not_after:
        raise ProtocolError(ErrorCode.EXPIRED_CERTIFICATE, "BCI outside its validity")
    return bci


def bci_thumbprint(data: bytes) -> bytes:
    return primitives.thumbprint(data)


# --- the revocation view chain validation uses ----------------------------------------------


STATE_CACHE_SIZE = 64  # verified revocation views remembered per process


@dataclass(frozen=True)
class RevocationState:
    """A verified BCI of one brand and the CRLs held for it, parsed once.

    ``load`` remembers the views it verified (bounded, by the exact BCI bytes, the Brand CA
    certificate and the CRL bytes), so a party that rebuilds its view per message verifies
    the BCI and each named CRL once, not per message; the BCI's window is checked at every
    ``load`` all the same. ``fingerprint`` names the view for the path cache
    (``protocol.chain`` Rule 4): another BCI or another set of CRLs is another fingerprint."""

    bci: Bci
    brand_thumbprint: bytes  # the Brand CA certificate the BCI verified under
    crls: tuple[tuple[bytes, x509.CertificateRevocationList], ...] = ()
    # Thumbprints of CRLs already verified under their issuer (a cache, not state).
    _verified: set[tuple[bytes, bytes]] = field(default_factory=set, compare=False, repr=False)

    @classmethod
    def load(
        cls,
        bci_data: bytes,
        brand_cert: x509.Certificate,
        crls: Iterable[bytes],
        now: datetime,
    ) -> RevocationState:
        """Verify the BCI (see ``open_bci``) and parse the CRLs for ``check``."""
        crl_list = list(crls)
        key = (
            primitives.thumbprint(bci_data),
            cert_thumbprint(brand_cert),
            tuple(primitives.thumbprint(der) for der in crl_list),
        )
        with _STATES_LOCK:
            found = _STATES.get(key)
            if found is not None:
                _STATES.move_to_end(key)
        if found is not None and found.bci.not_before <= _ms(now) <= found.bci.not_after:
            return found
        bci = open_bci(bci_data, brand_cert, now)  # outside its window: raises here
        parsed = []
        for der in crl_list:
            try:
                parsed.append((der, x509.load_der_x509_crl(der)))
            except ValueError:
                continue  # garbage cannot be a CRL the BCI names; a named one stays missing
        state = cls(bci, key[1], tuple(parsed))
        with _STATES_LOCK:
            _STATES[key] = state
            while len(_STATES) > STATE_CACHE_SIZE:
                _STATES.popitem(last=False)
        return state

    @cached_property
    def fingerprint(self) -> bytes:
        """SHA-256 over the Brand CA thumbprint, the BCI record and the CRLs' thumbprints."""
        digest = hashlib.sha256(self.brand_thumbprint)
        digest.update(codec.encode(self.bci))
        for der, _ in self.crls:
            digest.update(primitives.thumbprint(der))
        return digest.digest()

    @property
    def sequence(self) -> int:
        return self.bci.sequence

    def required(self) -> dict[bytes, int]:
        """CRL number the BCI names for each issuer thumbprint."""
        return {entry.issuer: entry.number for entry in self.bci.crls}

    def check(self, cert: x509.Certificate, issuer_cert: x509.Certificate) -> None:
        """Refuse ``cert`` if the CRL the BCI names for its issuer lists it."""
        number = self.required().get(cert_thumbprint(issuer_cert))
        if number is None:
            return  # the BCI names no CRL for this CA: nothing it issued is revoked by CRL
        issuer_thumb = cert_thumbprint(issuer_cert)
        forged = False
        for der, crl in self.crls:
            try:
                if crl.issuer != issuer_cert.subject or crl_number(crl) != number:
                    continue
            except (ValueError, ProtocolError):
                continue
            key = (primitives.thumbprint(der), issuer_thumb)
            if key not in self._verified:
                try:
                    load_crl(der, issuer_cert)  # the named CRL must verify under the issuer
                except ProtocolError:
                    forged = True  # a bad copy must not hide a good one held beside it
                    continue
                self._verified.add(key)
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise ProtocolError(ErrorCode.REVOKED_CERTIFICATE, "certificate is revoked")
            return
        if forged:
            raise ProtocolError(ErrorCode.SIGNATURE_FAILURE, "named CRL does not verify")
        raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "CRL named by the BCI is not held")


_STATES: OrderedDict[tuple[bytes, bytes, tuple[bytes, ...]], RevocationState] = OrderedDict()
_STATES_LOCK = threading.Lock()


def certificate_crl_id(issuer_cert: x509.Certificate, number: int) -> CrlId:
    """The ``CrlId`` naming ``issuer_cert``'s CRL number ``number``."""
    return CrlId(primitives.thumbprint(certificate_der(issuer_cert)), number)
