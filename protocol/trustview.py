"""Certificate trust of one brand: the root, the brand certificate and the current BCI/CRLs.

Rule 1: the brand certificate is validated to the trusted root before the BCI is verified
under it; every other certificate is validated through ``protocol.chain`` against the root
with the role it must have and the revocation state of the BCI.
Rule 2: a received certificate is used only when picked by the thumbprint a signature names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509

from protocol.certs import CertType, KeyUse, cert_thumbprint, load_certificate, set_extension
from protocol.chain import Expect, ValidatedPath, validate_path
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import to_dt
from protocol.revocation import RevocationState


def load_all(ders: Iterable[bytes]) -> list[x509.Certificate]:
    """Parse received certificates (``invalidCertificate`` on garbage)."""
    return [load_certificate(d) for d in ders]


def pick(certs: Iterable[x509.Certificate], thumb: bytes) -> x509.Certificate:
    """The certificate whose thumbprint is ``thumb``, else ``missingCertificate``."""
    for cert in certs:
        if cert_thumbprint(cert) == thumb:
            return cert
    raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "certificate named by thumbprint absent")


def brand_cert_of(certs: Iterable[x509.Certificate], brand: str) -> x509.Certificate:
    for cert in certs:
        ext = set_extension(cert)
        if ext.cert_type is CertType.BRAND and ext.brand == brand:
            return cert
    raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "brand certificate absent")


@dataclass(frozen=True)
class Trust:
    """What one party trusts for one brand (Rule 1)."""

    root: x509.Certificate
    brand: str
    brand_cert: x509.Certificate
    revocation: RevocationState

    @classmethod
    def load(
        cls,
        root: x509.Certificate,
        brand: str,
        certs: Iterable[x509.Certificate],
        bci: bytes | None,
        crls: Iterable[bytes],
        now_ms: int,
    ) -> Trust:
        """Validate the brand certificate among ``certs`` and verify the BCI under it."""
        if bci is None:
            raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "no BCI for the brand")
        brand_cert = brand_cert_of(certs, brand)
        now = to_dt(now_ms)
        validate_path(
            brand_cert,
            [],
            root=root,
            now=now,
            expect=Expect(CertType.BRAND, KeyUse.SIGNATURE, brand),
            revocation=None,
        )
        return cls(root, brand, brand_cert, RevocationState.load(bci, brand_cert, crls, now))

    def validate(
        self,
        leaf: x509.Certificate,
        others: Iterable[x509.Certificate],
        cert_type: CertType,
        key_use: KeyUse,
        now_ms: int,
    ) -> ValidatedPath:
        """Validate ``leaf`` to the root as a ``cert_type``/``key_use`` cert of this brand."""
        return validate_path(
            leaf,
            [*others, self.brand_cert],
            root=self.root,
            now=to_dt(now_ms),
            expect=Expect(cert_type, key_use, self.brand),
            revocation=self.revocation,
        )
