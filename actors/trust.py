"""A party's revocation cache: the current BCI of each brand and the CRLs it names (a store).

Rule 1: a BCI is taken only after its Brand CA certificate validates to the trusted root and
the BCI verifies under it (``protocol.revocation.open_bci``); a forged or expired one raises
``ProtocolError`` and changes nothing, not even the CRLs offered beside it.
Rule 2: a verified BCI with a higher sequence than the one held replaces it (and the CRLs the
new one does not name are dropped); a lower or equal sequence is stale and ignored. CRLs are
kept only when the held BCI names their number; each is verified under its issuer when a path
uses it (``RevocationState.check``), and a named CRL not held is ``missingCertificate``.
Rule 3: everything arrives through ``offer`` — from CA responses (``refresh_from_ca``, the
operator's path), and from certificates/CRLs/BCIs attached to SET messages; the cache is
stored with its thumbprints (SHA-256 of the exact bytes) so peers can be told what is held.
Rule 4: ``state`` re-reads the database when its generation moved (every change, from any
connection — the operator's CLI included — bumps ``trust_generation`` in the same
transaction; portable, unlike SQLite's ``data_version``), and checks the BCI's validity
window at every use.
Rule 5 (push): the CA publishes every new BCI of a brand, with its Brand CA certificate and
the CRLs it names, as a one-way ``BCIDistribution`` on the SET exchange under routing key
``revocation.<brand>``, which `broker init` binds to the instance queues of the roles that
hold revocation data (gateway, merchant). ``RevocationFeed.on_distribution`` takes it only
from a CA broker identity (the broker-validated sender, else ``unauthorizedSender``) and only
what verifies (Rule 1); an older one changes nothing (Rule 2). Nothing is answered.
Rule 6 (schedule): at start and every ``revocation_refresh_seconds`` the feed looks at the BCI
of each of the party's own brands; one past three quarters of its window (the CA renews at
half, so a push was missed), or none held, is pulled from the CA (``refresh_from_ca``), well
before it expires.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from cryptography import x509

from actors.entrypoint import sender
from protocol import codec, primitives
from protocol.certs import (
    CertType,
    KeyUse,
    cert_thumbprint,
    certificate_der,
    load_certificate,
    set_extension,
)
from protocol.chain import Expect, validate_path
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import Clock, to_dt
from protocol.messages import BCIDistribution, EntityKind, IDData
from protocol.requester import CAClient, me_aq_init
from protocol.revocation import Bci, RevocationState, bci_thumbprint, crl_number, open_bci
from protocol.signed import SignedData
from protocol.trustview import load_all
from protocol.wrapper import Decoded
from setpay.lifecycle import Periodic
from setpay.logs import get_logger
from setpay.store import Connection, Schema, open_store

log = get_logger(component="trust")

# A gateway's refusal for one of these is the standing of a certificate of the purchase (the
# merchant's, the cardholder's) or of the revocation data: the merchant answers the PReq with
# the same SET Error, so the cardholder learns why, instead of a bare orderRejected.
CERTIFICATE_STANDING: Final = frozenset({
    ErrorCode.REVOKED_CERTIFICATE, ErrorCode.EXPIRED_CERTIFICATE, ErrorCode.MISSING_CERTIFICATE,
    ErrorCode.STALE_REVOCATION_DATA,
})  # fmt: skip
REVOCATION_KEYS: Final = "revocation.*"  # what gateways and merchants are bound to (Rule 5)
PULL_AT: Final = 0.75  # fraction of a held BCI's window after which it is pulled (Rule 6)
MAX_CRLS_PER_BRAND: Final = 64  # the BCI names one per CA; room for bad copies, bounded
_MD = sa.MetaData()
TRUST_BCI: Final = sa.Table(
    "trust_bci", _MD,
    sa.Column("brand", sa.String(64), primary_key=True),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("thumb", sa.LargeBinary, nullable=False),
    sa.Column("bci", sa.LargeBinary, nullable=False),
    sa.Column("brand_cert", sa.LargeBinary, nullable=False),
    sa.Column("updated", sa.BigInteger, nullable=False),
)  # fmt: skip
TRUST_CRL: Final = sa.Table(
    "trust_crl", _MD,
    sa.Column("thumb", sa.LargeBinary, primary_key=True),
    sa.Column("brand", sa.String(64), nullable=False),
    sa.Column("number", sa.BigInteger, nullable=False),
    sa.Column("crl", sa.LargeBinary, nullable=False),
    sa.Column("added", sa.BigInteger, nullable=False),
)  # fmt: skip
TRUST_GENERATION: Final = sa.Table(
    "trust_generation", _MD,
    sa.Column("id", sa.Integer, sa.CheckConstraint("id = 1"), primary_key=True,
              autoincrement=False),
    sa.Column("n", sa.BigInteger, nullable=False),
)  # fmt: skip
SCHEMA: Final = Schema("trust", _MD)
_GENERATION: Final = sa.select(TRUST_GENERATION.c.n).where(TRUST_GENERATION.c.id == 1)
_BUMP: Final = (
    sa.update(TRUST_GENERATION).where(TRUST_GENERATION.c.id == 1).values(n=TRUST_GENERATION.c.n + 1)
)


class Offered(Enum):
    """What ``offer`` did with a BCI."""

    REPLACED = "replaced"  # newer than the one held (or the first one): now current
    CURRENT = "current"  # the very BCI held
    STALE = "stale"  # older or same sequence, other bytes: ignored
    NONE = "none"  # no BCI offered (CRLs only)


@dataclass(frozen=True)
class Held:
    """The current BCI of one brand, its Brand CA certificate and the CRLs held for it."""

    brand: str
    sequence: int
    bci: bytes
    brand_cert: x509.Certificate
    crls: tuple[bytes, ...]

    def thumbs(self) -> list[bytes]:
        """Thumbprints of the BCI and CRLs held (for a request's ``Thumbs``)."""
        return [bci_thumbprint(self.bci), *(primitives.thumbprint(c) for c in self.crls)]


def _signed_content(bci: bytes) -> bytes:
    return codec.decode(SignedData, bci).content


def _signer_of(bci: bytes) -> bytes:
    return codec.decode(SignedData, bci).signer


def _crl_number_of(der: bytes) -> int | None:
    try:
        return crl_number(x509.load_der_x509_crl(der))
    except (ValueError, ProtocolError):
        return None  # garbage cannot be a CRL a BCI names


class RevocationCache:
    """Current BCI + CRLs per brand for one party, in SQLite (Rules 1-4)."""

    def __init__(self, path: Path, root: x509.Certificate) -> None:
        self.path = path
        self.root = root
        self.db = open_store(path, [SCHEMA])
        with self.db.transaction() as db:
            db.execute(self.db.insert_ignore(TRUST_GENERATION), {"id": 1, "n": 0})
        self._states: dict[str, tuple[int, RevocationState]] = {}
        self._held: dict[str, tuple[int, Held | None]] = {}

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> AbstractContextManager[Connection]:
        """One atomic change (setpay/store.py): committed on exit, rolled back on error.
        Callers bump the generation inside it (Rule 4)."""
        return self.db.transaction()

    # -- reading --------------------------------------------------------------------------------

    def brands(self) -> list[str]:
        """The brands a BCI is held for."""
        return sorted(str(r[0]) for r in self.db.all(sa.select(TRUST_BCI.c.brand)))

    def held(self, brand: str) -> Held | None:
        """The BCI and CRLs held for ``brand``, or None. Read again only when the generation
        moved (Rule 4): a message's look-up is then one small query."""
        b, c = TRUST_BCI.c, TRUST_CRL.c
        with self.db.read() as db:  # one read transaction: the BCI and its CRLs agree
            version = int(db.execute(_GENERATION).scalar_one())
            cached = self._held.get(brand)
            if cached is not None and cached[0] == version:
                return cached[1]
            row = db.execute(
                sa.select(b.sequence, b.bci, b.brand_cert).where(b.brand == brand)
            ).first()
            if row is None:
                self._held[brand] = (version, None)
                return None
            crls = tuple(
                bytes(r[0])
                for r in db.execute(
                    sa.select(c.crl).where(c.brand == brand).order_by(c.added, c.thumb)
                )
            )
        held = Held(brand, int(row[0]), bytes(row[1]), load_certificate(bytes(row[2])), crls)
        self._held[brand] = (version, held)
        return held

    def state(self, brand: str, now_ms: int) -> RevocationState | None:
        """The revocation view of ``brand`` for chain validation; None if no BCI is held.
        An expired BCI raises ``ProtocolError(expiredCertificate)`` (refresh it)."""
        version = int(self.db.scalar(_GENERATION))
        cached = self._states.get(brand)
        if cached is not None and cached[0] == version:
            bci = cached[1].bci
            if not bci.not_before <= now_ms <= bci.not_after:
                raise ProtocolError(ErrorCode.EXPIRED_CERTIFICATE, "BCI outside its validity")
            return cached[1]
        held = self.held(brand)
        if held is None:
            return None
        state = RevocationState.load(held.bci, held.brand_cert, held.crls, to_dt(now_ms))
        self._states[brand] = (version, state)
        return state

    # -- offering -------------------------------------------------------------------------------

    def _brand_cert(
        self, bci: bytes, candidates: Iterable[x509.Certificate], now_ms: int
    ) -> x509.Certificate:
        signer = _signer_of(bci)
        for cert in candidates:
            if cert_thumbprint(cert) != signer:
                continue
            ext = set_extension(cert)
            validate_path(
                cert,
                [],
                root=self.root,
                now=to_dt(now_ms),
                expect=Expect(CertType.BRAND, KeyUse.SIGNATURE, ext.brand),
                revocation=None,
            )
            return cert
        raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "Brand CA certificate of the BCI absent")

    def offer(
        self,
        certs: Iterable[x509.Certificate],
        bci: bytes | None,
        crls: Iterable[bytes],
        now_ms: int,
    ) -> Offered:
        """Take what a message or CA response brought (Rules 1, 2). ``certs``: certificates
        that came with it (the Brand CA certificate of the BCI among them, or already held).
        Raises ``ProtocolError`` for a BCI that does not verify; nothing is stored then."""
        crl_list = list(crls)
        if bci is None:
            for brand in [r[0] for r in self.db.all(sa.select(TRUST_BCI.c.brand))]:
                held = self.held(brand)
                assert held is not None
                self._add_crls(held, crl_list, now_ms)
            return Offered.NONE
        # The very BCI held (the same bytes, verified when taken, still in its window):
        # nothing to verify again; only CRLs not held yet are looked at.
        try:
            record = codec.decode(Bci, _signed_content(bci))
            same = self.held(record.brand)
        except ProtocolError:
            same = None  # garbage: refused by the checks below
        if (
            same is not None
            and bci_thumbprint(same.bci) == bci_thumbprint(bci)
            and record.not_before <= now_ms <= record.not_after
        ):
            self._add_crls(same, crl_list, now_ms)
            return Offered.CURRENT
        candidates = list(certs)
        signer = _signer_of(bci)
        for row in self.db.all(sa.select(TRUST_BCI.c.brand_cert)):
            cert = load_certificate(bytes(row[0]))
            if cert_thumbprint(cert) == signer:
                candidates.append(cert)
        brand_cert = self._brand_cert(bci, candidates, now_ms)
        new = open_bci(bci, brand_cert, to_dt(now_ms))  # forged or expired: raises, no change
        held = self.held(new.brand)
        if held is not None and bci_thumbprint(held.bci) == bci_thumbprint(bci):
            self._add_crls(held, crl_list, now_ms)
            return Offered.CURRENT
        if held is not None and new.sequence <= held.sequence:
            log.info("trust_bci_stale", brand=new.brand, offered=new.sequence, held=held.sequence)
            self._add_crls(held, crl_list, now_ms)
            return Offered.STALE
        self._replace(new, bci, brand_cert, crl_list, now_ms)
        log.info(
            "trust_bci_replaced",
            brand=new.brand,
            sequence=new.sequence,
            previous=None if held is None else held.sequence,
        )
        return Offered.REPLACED

    def _replace(
        self, new: Bci, bci: bytes, brand_cert: x509.Certificate, crls: list[bytes], now_ms: int
    ) -> None:
        numbers = {entry.number for entry in new.crls}
        values = {
            "brand": new.brand, "sequence": new.sequence, "thumb": bci_thumbprint(bci),
            "bci": bci, "brand_cert": certificate_der(brand_cert), "updated": now_ms,
        }  # fmt: skip
        c = TRUST_CRL.c
        with self._tx() as db:
            db.execute(_BUMP)
            db.execute(self.db.upsert(TRUST_BCI, values))
            db.execute(sa.delete(TRUST_CRL).where(c.brand == new.brand, c.number.not_in(numbers)))
            self._insert_crls(db, new.brand, numbers, crls, now_ms)

    def _add_crls(self, held: Held, crls: list[bytes], now_ms: int) -> int:
        have = {primitives.thumbprint(c) for c in held.crls}
        crls = [c for c in crls if primitives.thumbprint(c) not in have]
        if not crls:
            return 0  # all held already: no write transaction
        bci = codec.decode(Bci, codec.decode(SignedData, held.bci).content)  # verified on entry
        with self._tx() as db:
            added = self._insert_crls(db, held.brand, {e.number for e in bci.crls}, crls, now_ms)
            if added:
                db.execute(_BUMP)
        return added

    def _insert_crls(
        self, db: Connection, brand: str, numbers: set[int], crls: list[bytes], now_ms: int
    ) -> int:
        c = TRUST_CRL.c
        count = int(db.execute(sa.select(sa.func.count()).where(c.brand == brand)).scalar() or 0)
        insert = self.db.insert_ignore(TRUST_CRL)
        added = 0
        for der in crls:
            number = _crl_number_of(der)
            if number is None or number not in numbers or count >= MAX_CRLS_PER_BRAND:
                continue
            row = {
                "thumb": primitives.thumbprint(der), "brand": brand, "number": number,
                "crl": der, "added": now_ms,
            }  # fmt: skip
            if db.execute(insert, row).first() is not None:
                added += 1
                count += 1
        return added


async def refresh_from_ca(
    client: CAClient,
    cache: RevocationCache,
    *,
    brand: str,
    requester: EntityKind,
    id_data: IDData,
) -> Offered:
    """The operator's refresh: ask the brand's MCA/PCA (Me-AqCInit) for its current BCI and
    CRLs, checked to the root by the requester, and offer them to ``cache``."""
    view, _ = await me_aq_init(
        client, root=cache.root, brand=brand, requester=requester, id_data=id_data
    )
    return cache.offer([view.brand_cert], view.bci, view.crls, client.clock.now_ms())


def revocation_key(brand: str) -> str:
    """Routing key of ``brand``'s BCIDistribution on the SET exchange (Rule 5)."""
    return f"revocation.{brand}"


def login_prefix(login: str, identity: str) -> str:
    """What precedes ``identity`` (``role.instance``) in this deployment's broker login."""
    return login[: -len(identity)] if login.endswith(identity) else ""


def window_of(bci: bytes) -> tuple[int, int]:
    """(not_before, not_after) of a BCI already verified on entry (Rule 1)."""
    record = codec.decode(Bci, _signed_content(bci))
    return record.not_before, record.not_after


Pull = Callable[[RevocationCache, str], Awaitable[Offered]]


class RevocationFeed:
    """Keeps a party's revocation caches current while it runs (Rules 5, 6)."""

    def __init__(
        self,
        caches: Callable[[], list[RevocationCache]],
        *,
        prefix: str,
        clock: Clock,
        brands: Callable[[], Iterable[str]],
        pull: Pull | None = None,
        refresh_seconds: float = 600.0,
    ) -> None:
        self.caches = caches
        self.brands = brands  # the brands this party holds revocation data for
        self.ca_prefix = f"{prefix}ca."
        self.clock = clock
        self.pull = pull
        self.refresh_seconds = refresh_seconds
        # a round at start too: a party restarted weeks later pulls at once
        self._rounds = Periodic("trust_refresh", self.refresh_due, refresh_seconds)

    async def on_distribution(self, decoded: Decoded) -> None:
        """The SET handler of BCIDistribution (Rule 5): verify, offer, no reply."""
        who = sender()
        if who is None or not who.startswith(self.ca_prefix):
            log.warning("trust_push_refused", sender=who)
            raise ProtocolError(ErrorCode.UNAUTHORIZED_SENDER, "revocation data not from a CA")
        body: BCIDistribution = decoded.body
        brand = codec.decode(Bci, _signed_content(body.bci)).brand  # not trusted: a filter only
        if brand not in set(self.brands()):
            log.info("trust_push_ignored", brand=brand)  # another brand's: nothing to keep
            return None
        certs = load_all(body.certs)
        now_ms = self.clock.now_ms()
        outcomes: list[Offered] = []
        failure: ProtocolError | None = None
        for cache in self.caches():
            try:
                outcomes.append(cache.offer(certs, body.bci, body.crls, now_ms))
            except ProtocolError as exc:  # e.g. another root's hierarchy: not this cache's
                failure = failure or exc
        if not outcomes:
            log.warning("trust_push_refused", code=None if failure is None else failure.code.name)
            raise failure or ProtocolError(ErrorCode.MISSING_CERTIFICATE, "no cache to take it")
        log.info("trust_push_taken", outcomes=sorted({o.value for o in outcomes}))
        return None

    # -- schedule (Rule 6) ----------------------------------------------------------------------

    def due(self, cache: RevocationCache, brand: str, now_ms: int) -> bool:
        """Whether ``brand``'s BCI is to be pulled: none held, or past ``PULL_AT`` of its
        window."""
        held = cache.held(brand)
        if held is None:
            return True
        start, end = window_of(held.bci)
        return now_ms >= start + int((end - start) * PULL_AT)

    async def refresh_due(self) -> int:
        """Pull every held BCI that is due; the number pulled. A failure is logged and left
        for the next round."""
        if self.pull is None:
            return 0
        pulled = 0
        wanted = sorted(set(self.brands()))
        for cache in self.caches():
            for brand in wanted:
                if not self.due(cache, brand, self.clock.now_ms()):
                    continue
                try:
                    outcome = await self.pull(cache, brand)
                except Exception as exc:  # CA away or refusing, a bad answer: next round
                    log.warning("trust_pull_failed", brand=brand, error=type(exc).__name__)
                    continue
                pulled += 1
                log.info("trust_pulled", brand=brand, outcome=outcome.value)
        return pulled

    def start(self) -> None:
        """Run the schedule in the background until ``stop``."""
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()
