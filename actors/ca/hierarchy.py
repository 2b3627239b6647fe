"""The CA hierarchy: Root → Brand CA per brand → CCA, MCA, PCA; issuing, revoking, CRLs, BCIs.

Rule 1: every CA key is created in the HSM (``KeySource``); certificates, serials, CRLs and
BCIs are committed to the ``CAStore`` before they are used or shown.
Rule 2: ``init_hierarchy`` is idempotent: a CA that exists is kept, a missing one is made.
Rule 3: a revocation is one transaction: the certificate is marked, the issuer's next CRL and
every affected brand's next BCI are stored together; a restart never forgets it.
Rule 4: each brand's BCI names the current CRL of the root, the Brand CA and its CCA, MCA
and PCA, so a party holding the BCI knows exactly which CRLs to hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from actors.ca.brands import Brand
from actors.ca.errors import CAError
from actors.ca.store import CARow, CAStore
from keystore.keyring import KeySource
from protocol import codec
from protocol.certs import (
    CertType,
    GatewayCaps,
    KeyUse,
    MerchantData,
    SetExtension,
    cert_thumbprint,
    certificate_der,
    issue_certificate,
    set_extension,
    spki_hash,
)
from protocol.ids import to_dt, to_ms
from protocol.keys import PrivateKey, PublicKey
from protocol.revocation import Bci, certificate_crl_id, issue_bci, issue_crl
from protocol.signed import SignedData
from setpay.store import Connection

ROOT = "root"
ROOT_BRAND = "setpay-root"
YEAR = timedelta(days=365)
CA_LIFETIME = {CertType.ROOT: 10 * YEAR, CertType.BRAND: 5 * YEAR}
CA_DEFAULT_LIFETIME = 3 * YEAR
EE_LIFETIME = YEAR
CRL_LIFETIME = timedelta(days=7)
BACKDATE = timedelta(hours=1)  # tolerate clock skew between parties
SUB_CAS = {"cca": CertType.CCA, "mca": CertType.MCA, "pca": CertType.PCA}
EE_ISSUER = {CertType.CARDHOLDER: "cca", CertType.MERCHANT: "mca", CertType.GATEWAY: "pca"}
REASONS = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
)


def ca_name(brand: str, role: str, exchange: bool = False) -> str:
    """Store name of a CA: ``alpha.cca`` (signature) or ``alpha.cca.kx`` (key exchange)."""
    return f"{brand}.{role}" + (".kx" if exchange else "")


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issued:
    """A certificate just issued and committed."""

    serial: int
    cert: x509.Certificate


class Hierarchy:
    """The CA certificates of a store, parsed once, and the keys behind them."""

    def __init__(self, store: CAStore, keys: KeySource) -> None:
        self.store = store
        self.keys = keys
        self._certs: dict[int, x509.Certificate] = {}

    # -- reading ----------------------------------------------------------------------------

    def cert_of_serial(self, serial: int) -> x509.Certificate:
        cert = self._certs.get(serial)
        if cert is None:
            row = self.store.cert(serial)
            if row is None:
                raise CAError(f"no certificate with serial {serial}")
            cert = x509.load_der_x509_certificate(row.der)
            self._certs[serial] = cert
        return cert

    def ca_row(self, name: str) -> CARow:
        row = self.store.ca(name)
        if row is None:
            raise CAError(f"CA {name!r} does not exist (run `setpay ca init`)")
        return row

    def cert(self, name: str) -> x509.Certificate:
        return self.cert_of_serial(self.ca_row(name).serial)

    @property
    def root(self) -> x509.Certificate:
        return self.cert(ROOT)

    async def key(self, name: str) -> PrivateKey:
        return await self.keys.get(self.ca_row(name).key_label)

    def brands(self) -> list[str]:
        return [r.brand for r in self.store.cas() if r.role == "brand"]

    def chain(self, name: str) -> list[x509.Certificate]:
        """Certificates a party needs above an end entity of CA ``name``: the CA, its brand."""
        row = self.ca_row(name)
        if row.role == "root":
            return []
        if row.role == "brand":
            return [self.cert(name)]
        return [self.cert(name), self.cert(ca_name(row.brand, "brand"))]

    def ca_names_of_brand(self, brand: str) -> list[str]:
        """Signature CAs whose CRLs the brand's BCI names (Rule 4)."""
        return [ROOT, ca_name(brand, "brand"), *(ca_name(brand, r) for r in SUB_CAS)]

    def current_crls(self, brand: str) -> list[bytes]:
        """The CRLs the brand's current BCI names (Rule 4). Not simply each CA's latest: a
        CA shared by brands (the root) may have a newer CRL that another brand's BCI names."""
        data = self.current_bci(brand)
        if data is None:
            return []
        named = codec.decode(Bci, codec.decode(SignedData, data).content)  # our own, stored
        names = {cert_thumbprint(self.cert(n)): n for n in self.ca_names_of_brand(brand)}
        out = []
        for entry in named.crls:
            name = names.get(entry.issuer)
            der = None if name is None else self.store.crl(name, entry.number)
            if der is not None:
                out.append(der)
        return out

    def current_bci(self, brand: str) -> bytes | None:
        latest = self.store.latest_bci(brand)
        return None if latest is None else latest[1]

    # -- issuing ----------------------------------------------------------------------------

    async def issue(
        self,
        *,
        issuer: str | None,
        public_key: PublicKey,
        common_name: str,
        ext: SetExtension,
        now_ms: int,
        lifetime: timedelta,
        issuer_key: PrivateKey | None = None,
    ) -> tuple[Issued, dict[str, object]]:
        """Sign a certificate; returns it and the row to insert (``commit_cert``)."""
        serial = self.store.next_serial()
        now = to_dt(now_ms)
        if issuer is None:
            assert issuer_key is not None
            issuer_cert = None
            signer = issuer_key
            not_after = now + lifetime
        else:
            issuer_cert = self.cert(issuer)
            signer = await self.key(issuer)
            not_after = min(now + lifetime, issuer_cert.not_valid_after_utc)
        cert = await issue_certificate(
            issuer_key=signer,
            issuer_cert=issuer_cert,
            subject_public_key=public_key,
            common_name=common_name,
            ext=ext,
            not_before=now - BACKDATE,
            not_after=not_after,
            serial=serial,
        )
        self._certs[serial] = cert
        row: dict[str, object] = {
            "serial": serial,
            "issuer": issuer or ROOT,
            "subject": common_name,
            "cert_type": ext.cert_type.name.lower(),
            "brand": ext.brand,
            "key_use": ext.key_use.name.lower(),
            "thumb": cert_thumbprint(cert),
            "spki_hash": spki_hash(public_key),
            "not_after": to_ms(cert.not_valid_after_utc),
            "der": certificate_der(cert),
            "issued_at": now_ms,
        }
        return Issued(serial, cert), row

    def commit_cert(self, db: Connection, row: dict[str, object]) -> None:
        self.store.add_cert(db, **row)  # type: ignore[arg-type]

    async def issue_ee(
        self,
        cert_type: CertType,
        brand: str,
        key_use: KeyUse,
        public_key: PublicKey,
        common_name: str,
        now_ms: int,
        *,
        merchant: MerchantData | None = None,
        gateway: GatewayCaps | None = None,
        account_hash: bytes | None = None,
    ) -> tuple[Issued, dict[str, object]]:
        """Sign an end-entity certificate (the caller commits the row with its reply)."""
        ext = SetExtension(
            1,
            cert_type,
            brand,
            key_use,
            merchant=merchant,
            account_hash=account_hash,
            gateway=gateway,
        )
        return await self.issue(
            issuer=ca_name(brand, EE_ISSUER[cert_type]),
            public_key=public_key,
            common_name=common_name,
            ext=ext,
            now_ms=now_ms,
            lifetime=EE_LIFETIME,
        )

    # -- revocation -------------------------------------------------------------------------

    async def _next_crl(self, name: str, now_ms: int) -> tuple[int, bytes]:
        latest = self.store.latest_crl(name)
        number = 1 if latest is None else latest[0] + 1
        now = to_dt(now_ms)
        der = await issue_crl(
            issuer_key=await self.key(name),
            issuer_cert=self.cert(name),
            number=number,
            revoked=[(s, to_dt(t)) for s, t in self.store.revoked(name)],
            this_update=now - BACKDATE,
            next_update=now + CRL_LIFETIME,
        )
        return number, der

    async def _next_bci(
        self, brand: str, crl_numbers: dict[str, int], now_ms: int
    ) -> tuple[int, bytes]:
        latest = self.store.latest_bci(brand)
        seq = 1 if latest is None else latest[0] + 1
        ids = []
        for name in self.ca_names_of_brand(brand):
            number = crl_numbers.get(name)
            if number is None:
                current = self.store.latest_crl(name)
                if current is None:
                    continue
                number = current[0]
            ids.append(certificate_crl_id(self.cert(name), number))
        now = to_dt(now_ms)
        data = await issue_bci(
            brand_key=await self.key(ca_name(brand, "brand")),
            brand_cert=self.cert(ca_name(brand, "brand")),
            sequence=seq,
            crls=ids,
            not_before=now - BACKDATE,
            not_after=now + CRL_LIFETIME,
        )
        return seq, data

    async def publish_revocation(self, issuers: list[str], brands: list[str], now_ms: int) -> None:
        """New CRLs of ``issuers`` and new BCIs of ``brands``, committed together."""
        crls = {name: await self._next_crl(name, now_ms) for name in issuers}
        numbers = {name: n for name, (n, _) in crls.items()}
        bcis = {b: await self._next_bci(b, numbers, now_ms) for b in brands}
        with self.store.transaction() as db:
            for name, (number, der) in crls.items():
                self.store.add_crl(db, name, number, der, now_ms)
            for brand, (seq, data) in bcis.items():
                self.store.add_bci(db, brand, seq, data, now_ms)

    async def revoke(self, serial: int, reason: str, now_ms: int) -> bool:
        """Revoke ``serial`` and publish the issuer's CRL and the BCIs (Rule 3).

        Returns False if it was already revoked (nothing changes)."""
        if reason not in REASONS:
            raise CAError(f"unknown revocation reason {reason!r}; one of {', '.join(REASONS)}")
        row = self.store.cert(serial)
        if row is None:
            raise CAError(f"no certificate with serial {serial}")
        if row.issuer == ROOT and row.cert_type == "root":
            raise CAError("the root cannot be revoked by CRL; roll it over")
        if row.revoked_at is not None:
            return False
        issuer_row = self.ca_row(row.issuer)
        brands = self.brands() if issuer_row.role == "root" else [issuer_row.brand]
        # Sign first (HSM calls), then commit revocation, CRL and BCIs in one transaction.
        revoked = [*self.store.revoked(row.issuer), (serial, now_ms)]
        latest = self.store.latest_crl(row.issuer)
        number = 1 if latest is None else latest[0] + 1
        now = to_dt(now_ms)
        der = await issue_crl(
            issuer_key=await self.key(row.issuer),
            issuer_cert=self.cert(row.issuer),
            number=number,
            revoked=[(s, to_dt(t)) for s, t in revoked],
            this_update=now - BACKDATE,
            next_update=now + CRL_LIFETIME,
        )
        bcis = {b: await self._next_bci(b, {row.issuer: number}, now_ms) for b in brands}
        with self.store.transaction() as db:
            if not self.store.mark_revoked(db, serial, now_ms, reason):
                raise CAError(f"serial {serial} was revoked concurrently")
            self.store.add_crl(db, row.issuer, number, der, now_ms)
            for brand, (seq, data) in bcis.items():
                self.store.add_bci(db, brand, seq, data, now_ms)
        return True


# --- init ---------------------------------------------------------------------------------


async def _make_ca(
    h: Hierarchy,
    name: str,
    *,
    issuer: str | None,
    cert_type: CertType,
    brand: str,
    exchange: bool,
    common_name: str,
    now_ms: int,
    hashed_root: bytes | None = None,
) -> bool:
    """Create CA ``name`` unless it exists; True if it was created."""
    if h.store.ca(name) is not None:
        return False
    key = await h.keys.create(name, exchange)
    ext = SetExtension(
        1,
        cert_type,
        brand,
        KeyUse.KEY_EXCHANGE if exchange else KeyUse.SIGNATURE,
        hashed_root=hashed_root,
    )
    issued, row = await h.issue(
        issuer=issuer,
        public_key=key.public_key(),
        common_name=common_name,
        ext=ext,
        now_ms=now_ms,
        lifetime=CA_LIFETIME.get(cert_type, CA_DEFAULT_LIFETIME),
        issuer_key=key if issuer is None else None,
    )
    role = "root" if cert_type is CertType.ROOT else cert_type.name.lower()
    with h.store.transaction() as db:
        h.commit_cert(db, row)
        h.store.add_ca(
            db, CARow(name, brand, role, "kx" if exchange else "sig", key.key_id, issued.serial)
        )
    return True


async def init_hierarchy(h: Hierarchy, brands: tuple[Brand, ...], now_ms: int) -> list[str]:
    """Build whatever part of the hierarchy is missing (Rule 2); names of the CAs created."""
    created: list[str] = []
    if h.store.ca(ROOT) is None:
        next_root = await h.keys.create("root.next", False)
        if await _make_ca(
            h,
            ROOT,
            issuer=None,
            cert_type=CertType.ROOT,
            brand=ROOT_BRAND,
            exchange=False,
            common_name="setpay Root CA",
            now_ms=now_ms,
            hashed_root=spki_hash(next_root.public_key()),
        ):
            created.append(ROOT)
    for brand in brands:
        b = brand.name
        plan: list[tuple[str, str, CertType, bool, str]] = [
            (ca_name(b, "brand"), ROOT, CertType.BRAND, False, f"{b} Brand CA"),
        ]
        for role, cert_type in SUB_CAS.items():
            label = f"{b} {role.upper()}"
            plan.append((ca_name(b, role), ca_name(b, "brand"), cert_type, False, label))
            plan.append((ca_name(b, role, True), ca_name(b, "brand"), cert_type, True, label))
        for name, issuer, cert_type, exchange, cn in plan:
            if await _make_ca(
                h,
                name,
                issuer=issuer,
                cert_type=cert_type,
                brand=b,
                exchange=exchange,
                common_name=cn if not exchange else cn + " key exchange",
                now_ms=now_ms,
            ):
                created.append(name)
    # First CRLs and BCIs where none exist yet.
    missing_crls = [
        r.name for r in h.store.cas() if r.key_use == "sig" and h.store.latest_crl(r.name) is None
    ]
    missing_bcis = [b.name for b in brands if h.store.latest_bci(b.name) is None]
    if missing_crls or missing_bcis:
        await h.publish_revocation(missing_crls, missing_bcis, now_ms)
    return created


def export_pem(h: Hierarchy) -> dict[str, bytes]:
    """PEM of every CA certificate by file name (``root.pem``, ``alpha.cca.pem`` …)."""
    return {f"{row.name}.pem": pem(h.cert_of_serial(row.serial)) for row in h.store.cas()}


def describe(cert: x509.Certificate) -> str:
    ext = set_extension(cert)
    return f"{ext.cert_type.name.lower()} {ext.key_use.name.lower()} brand={ext.brand}"
