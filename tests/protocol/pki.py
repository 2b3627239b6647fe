"""Test PKI: root → 2 brands → CCA/MCA/PCA → cardholder, merchant and gateway certificates.

Keys are ``tests.softkeys.SoftKey`` (tests of ``protocol/`` only); every certificate is issued
through ``protocol.certs.issue_certificate``, i.e. signed the external (HSM) way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protocol import pan
from protocol.certs import (
    CertType,
    GatewayCaps,
    KeyUse,
    MerchantData,
    SetExtension,
    issue_certificate,
    set_extension,
    spki_hash,
)
from protocol.keys import SUITES
from protocol.revocation import certificate_crl_id, issue_bci, issue_crl
from tests.softkeys import SoftKey

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
YEAR = timedelta(days=365)
BRANDS = ("visa", "jcb")
CARD_PAN = "4111111111111111"
CARD_EXPIRY = "2812"


@dataclass
class Party:
    key: SoftKey
    cert: x509.Certificate


@dataclass
class Brand:
    name: str
    brand: Party
    cca: Party
    mca: Party
    pca: Party
    cardholder: Party
    merchant_sig: Party
    merchant_kx: Party
    gateway_sig: Party
    gateway_kx: Party
    pan_secret: bytes
    account: pan.Account

    def chain_for(self, leaf: Party) -> list[x509.Certificate]:
        """The intermediates a sender attaches: its CA and the Brand CA."""
        ca = {
            CertType.CARDHOLDER: self.cca,
            CertType.MERCHANT: self.mca,
            CertType.GATEWAY: self.pca,
        }
        return [ca[set_extension(leaf.cert).cert_type].cert, self.brand.cert]


@dataclass
class Pki:
    suite: str
    root: Party
    next_root_key: SoftKey
    brands: dict[str, Brand] = field(default_factory=dict)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


async def issue(
    issuer: Party | None,
    ext: SetExtension,
    name: str,
    suite: str,
    *,
    not_before: datetime = NOW - timedelta(days=1),
    not_after: datetime = NOW + YEAR,
    key: SoftKey | None = None,
) -> Party:
    """A new key (unless given) and its certificate, issued by ``issuer`` (None: self-signed)."""
    key = key or SoftKey(SUITES[suite], label=name)
    cert = await issue_certificate(
        issuer_key=key if issuer is None else issuer.key,
        issuer_cert=None if issuer is None else issuer.cert,
        subject_public_key=key.public_key(),
        common_name=name,
        ext=ext,
        not_before=not_before,
        not_after=not_after,
    )
    return Party(key, cert)


def ext(
    cert_type: CertType, brand: str, use: KeyUse = KeyUse.SIGNATURE, **kw: object
) -> SetExtension:
    return SetExtension(1, cert_type, brand, use, **kw)  # type: ignore[arg-type]


async def build_brand(root: Party, name: str, suite: str) -> Brand:
    brand = await issue(root, ext(CertType.BRAND, name), f"{name} Brand CA", suite)
    cca = await issue(brand, ext(CertType.CCA, name), f"{name} CCA", suite)
    mca = await issue(brand, ext(CertType.MCA, name), f"{name} MCA", suite)
    pca = await issue(brand, ext(CertType.PCA, name), f"{name} PCA", suite)
    account = pan.Account(pan.AccountKind.CARD, CARD_PAN)
    secret = pan.pan_secret(pan.new_secret(), pan.new_secret())
    cardholder = await issue(
        cca,
        ext(
            CertType.CARDHOLDER,
            name,
            account_hash=pan.account_hash(secret, account, CARD_EXPIRY),
        ),
        "ch-0001",
        suite,
    )
    merchant = MerchantData("M-1001", "Example Books", "5942")
    merchant_sig = await issue(
        mca, ext(CertType.MERCHANT, name, merchant=merchant), "M-1001 sig", suite
    )
    merchant_kx = await issue(
        mca,
        ext(CertType.MERCHANT, name, KeyUse.KEY_EXCHANGE, merchant=merchant),
        "M-1001 kx",
        suite,
    )
    caps = GatewayCaps(["JPY", "USD"], pin_debit=True, sale=True)
    gateway_sig = await issue(pca, ext(CertType.GATEWAY, name, gateway=caps), "P-1 sig", suite)
    gateway_kx = await issue(
        pca, ext(CertType.GATEWAY, name, KeyUse.KEY_EXCHANGE, gateway=caps), "P-1 kx", suite
    )
    return Brand(
        name, brand, cca, mca, pca, cardholder, merchant_sig, merchant_kx, gateway_sig,
        gateway_kx, secret, account,
    )  # fmt: skip


async def build_pki(suite: str) -> Pki:
    next_root_key = SoftKey(SUITES[suite], label="next root")
    root = await issue(
        None,
        ext(CertType.ROOT, "setpay-root", hashed_root=spki_hash(next_root_key.public_key())),
        "setpay Root CA",
        suite,
        not_after=NOW + 10 * YEAR,
    )
    pki = Pki(suite, root, next_root_key)
    for name in BRANDS:
        pki.brands[name] = await build_brand(root, name, suite)
    return pki


_built: dict[str, Pki] = {}


async def shared_pki(suite: str) -> Pki:
    """One hierarchy per suite per test session (RSA key generation is the slow part)."""
    if suite not in _built:
        _built[suite] = await build_pki(suite)
    return _built[suite]


async def revocation_material(
    pki: Pki,
    brand_name: str,
    *,
    revoked_by_pca: Sequence[int] = (),
    revoked_by_brand: Sequence[int] = (),
    sequence: int = 1,
) -> tuple[bytes, list[bytes]]:
    """A BCI of ``brand_name`` naming CRL 1 of root, brand CA and PCA, and those CRLs."""
    brand = pki.brands[brand_name]
    crls: list[bytes] = []
    ids = []
    issuers: tuple[tuple[Party, Sequence[int]], ...] = (
        (pki.root, ()),
        (brand.brand, revoked_by_brand),
        (brand.pca, revoked_by_pca),
    )
    for issuer, revoked in issuers:
        crls.append(
            await issue_crl(
                issuer_key=issuer.key,
                issuer_cert=issuer.cert,
                number=sequence,
                revoked=[(serial, NOW - timedelta(hours=1)) for serial in revoked],
                this_update=NOW - timedelta(hours=1),
                next_update=NOW + timedelta(days=7),
            )
        )
        ids.append(certificate_crl_id(issuer.cert, sequence))
    bci = await issue_bci(
        brand_key=brand.brand.key,
        brand_cert=brand.brand.cert,
        sequence=sequence,
        crls=ids,
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=7),
    )
    return bci, crls
