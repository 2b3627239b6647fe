"""The wallet database: cardholders, their cards and purchases.

Rule 1: one store (setpay/store.py: SQLite, WAL, 0600) under
``<data_dir>/wallet/<instance>.sqlite``; the schema is Core metadata, versioned by the store
layer.
Rule 2: no PAN, account number, PANSecret, CardSecret or passphrase in clear: cards hold the
keystore-sealed ``CardSecrets``, a display hint (last four digits) and certificates;
cardholders hold an scrypt hash (actors/wallet/vault.py).
Rule 3: ``bci_floors`` holds the highest BCI sequence seen per root and brand; it only rises.
Rule 4: ``started_purchases`` holds each purchase between PInit and PReq (the checked offer,
the state machine, what the cardholder agreed to pay), so every wallet replica sharing this
store can finish a purchase another started, and a restart keeps it. ``claim_started`` takes
a row for one process at a time (a lease, taken in one write transaction under the store's
write lock): of two replicas finishing one purchase at once, one gets it; the other is told it
is in progress. Before its PReq leaves, the claimer stores it (``record_preq``): if the claimer
dies, the next claim after the lease resends those same bytes, which the merchant answers from
its reply store (no second authorization), so a purchase in flight in a killed replica is
finished, not lost and not done twice. The row goes when the purchase ends (``drop_started``).
Rows older than the caller's
bound are neither claimable nor kept; a cardholder holds at most ``keep`` of them. Nothing in
a row is secret: the offer is the merchant's signed PInitRes data and public certificates
(without the card's BIN: the first digits of the account stay in the sealed card), the card is
named by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic.operations import Operations

from actors.web.sessions import SESSIONS
from protocol import codec
from setpay.store import Schema, Store, open_store

_MD = sa.MetaData()
B, T, I = sa.LargeBinary, sa.String, sa.BigInteger  # noqa: E741 - column type shorthands
CARDHOLDERS: Final = sa.Table(
    "cardholders", _MD,
    sa.Column("user", T(128), primary_key=True),
    sa.Column("salt", B, nullable=False),
    sa.Column("hash", B, nullable=False),
    sa.Column("n", I, nullable=False),
    sa.Column("created", I, nullable=False),
)  # fmt: skip
CARDS: Final = sa.Table(
    "cards", _MD,
    sa.Column("card_id", T(64), primary_key=True),
    sa.Column("user", T(128), sa.ForeignKey("cardholders.user"), nullable=False),
    sa.Column("brand", T(64), nullable=False),
    sa.Column("hint", T(8), nullable=False),
    sa.Column("key_label", T(128), nullable=False),
    sa.Column("cert", B, nullable=False),
    sa.Column("chain", B, nullable=False),
    sa.Column("root", B, nullable=False),
    sa.Column("sealed", B, nullable=False),
    sa.Column("created", I, nullable=False),
    sa.Column("pin", sa.Boolean, nullable=False, server_default=sa.false()),
    # What a PInitReq tells the merchant about the account (protocol.pan.merchant_bin: the
    # issuer's six digits, or an OPE account's bank and branch; never an account digit) and
    # the account's kind, kept at enrolment so starting a purchase opens no sealed card.
    sa.Column("merchant_bin", T(16)),
    sa.Column("kind", I),
)  # fmt: skip
PURCHASES: Final = sa.Table(
    "purchases", _MD,
    sa.Column("xid", B, primary_key=True),
    sa.Column("card_id", T(64), sa.ForeignKey("cards.card_id"), nullable=False),
    sa.Column("merchant", T(128), nullable=False),
    sa.Column("trans_ids", B, nullable=False),
    sa.Column("merchant_cert", B, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("currency", T(8), nullable=False),
    sa.Column("amount", I, nullable=False),
    sa.Column("state", B, nullable=False),
    sa.Column("completion", I),
    sa.Column("auth_code", I),
    sa.Column("updated", I, nullable=False),
)  # fmt: skip
BCI_FLOORS: Final = sa.Table(
    "bci_floors", _MD,
    sa.Column("key", T(160), primary_key=True),  # <root thumbprint hex>/<brand>
    sa.Column("sequence", I, nullable=False),  # the highest BCI sequence seen
    sa.Column("updated", I, nullable=False),
)  # fmt: skip


STARTED: Final = sa.Table(
    "started_purchases", _MD,
    sa.Column("purchase_id", T(64), primary_key=True),
    sa.Column("user", T(128), nullable=False, index=True),
    sa.Column("card_id", T(64), nullable=False),
    sa.Column("merchant", T(128), nullable=False),
    sa.Column("offer", B, nullable=False),  # actors/wallet/purchase.py offer_to_bytes
    sa.Column("machine", B, nullable=False),  # the purchase's state machine
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("currency", T(8), nullable=False),
    sa.Column("amount", I, nullable=False),
    sa.Column("started", I, nullable=False),  # ms, the clock of setpay.clock
    sa.Column("claimed_by", T(160)),  # the process finishing it (setpay.config.process_name)
    sa.Column("lease_until", I),  # ms: after it, another process may take over
    sa.Column("preq", B),  # the PReq message as sent (encrypted PI: no clear account data)
    sa.Column("preq_check", B),  # what checks its PRes: RRPID, Chall-C, TransIDs
)  # fmt: skip


def _v2_bci_floors(op: Operations) -> None:
    """v1 -> v2: the highest BCI sequence seen per brand (purchase.BciFloor)."""
    op.create_table(
        "bci_floors",
        sa.Column("key", T(160), primary_key=True),
        sa.Column("sequence", I, nullable=False),
        sa.Column("updated", I, nullable=False),
    )


def _v3_started_purchases(op: Operations) -> None:
    """v2 -> v3: started purchases move from a process's memory into the store (Rule 4)."""
    op.create_table(
        "started_purchases",
        sa.Column("purchase_id", T(64), primary_key=True),
        sa.Column("user", T(128), nullable=False, index=True),
        sa.Column("card_id", T(64), nullable=False),
        sa.Column("merchant", T(128), nullable=False),
        sa.Column("offer", B, nullable=False),
        sa.Column("machine", B, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("currency", T(8), nullable=False),
        sa.Column("amount", I, nullable=False),
        sa.Column("started", I, nullable=False),
        sa.Column("claimed_by", T(160)),
        sa.Column("lease_until", I),
        sa.Column("preq", B),
        sa.Column("preq_check", B),
    )


def _v4_card_bin(op: Operations) -> None:
    """v3 -> v4: each card's merchant BIN and kind (cards enrolled before keep NULL: their
    purchases open the sealed card to start, as before)."""
    op.add_column("cards", sa.Column("merchant_bin", T(16)))
    op.add_column("cards", sa.Column("kind", I))


SCHEMA: Final = Schema(
    "wallet", _MD, steps=(_v2_bci_floors, _v3_started_purchases, _v4_card_bin)
)


@dataclass(frozen=True)
class CardRow:
    card_id: str
    user: str
    brand: str
    hint: str
    key_label: str
    cert: bytes
    chain: list[bytes]
    root: bytes
    sealed: bytes
    pin: bool = False  # an OPE PIN account: a purchase needs the thin client's PIN seal
    merchant_bin: str | None = None  # what PInitReq names (None: enrolled before v4)
    kind: int | None = None  # protocol.pan.AccountKind


@dataclass(frozen=True)
class PurchaseRow:
    xid: bytes
    card_id: str
    merchant: str
    trans_ids: bytes
    merchant_cert: bytes
    description: str
    currency: str
    amount: int
    state: bytes
    completion: int | None
    auth_code: int | None


@dataclass(frozen=True)
class StartedRow:
    """A purchase between PInit and PReq (Rule 4)."""

    purchase_id: str
    user: str
    card_id: str
    merchant: str
    offer: bytes
    machine: bytes
    description: str
    currency: str
    amount: int
    started: int
    preq: bytes | None = None
    preq_check: bytes | None = None


class WalletStore:
    """One wallet instance's database (Rules 1, 2)."""

    def __init__(self, db: Store, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, data_dir: Path, instance: str, *, group_commit: bool = False) -> WalletStore:
        """``group_commit``: the running wallet's (setpay/store.py Rule 5): every write of
        its hot path goes to this one file, and its publishes and HTTPS answers wait for the
        barrier."""
        path = Path(data_dir) / "wallet" / f"{instance}.sqlite"
        return cls(open_store(path, [SCHEMA, SESSIONS], group_commit=group_commit), path)

    def close(self) -> None:
        self.db.close()

    def add_cardholder(self, user: str, salt: bytes, digest: bytes, n: int, now_ms: int) -> bool:
        """False if ``user`` exists already."""
        values = {"user": user, "salt": salt, "hash": digest, "n": n, "created": now_ms}
        with self.db.transaction() as db:
            return db.execute(self.db.insert_ignore(CARDHOLDERS), values).first() is not None

    def cardholder(self, user: str) -> tuple[bytes, bytes, int] | None:
        c = CARDHOLDERS.c
        r = self.db.one(sa.select(c.salt, c.hash, c.n).where(c.user == user))
        return None if r is None else (r[0], r[1], r[2])

    def add_card(self, row: CardRow, now_ms: int) -> None:
        with self.db.transaction() as db:
            db.execute(
                sa.insert(CARDS).values(
                    card_id=row.card_id, user=row.user, brand=row.brand, hint=row.hint,
                    key_label=row.key_label, cert=row.cert, chain=codec.packb(row.chain),
                    root=row.root, sealed=row.sealed, created=now_ms, pin=row.pin,
                    merchant_bin=row.merchant_bin, kind=row.kind,
                )
            )  # fmt: skip

    def _card(self, r: Any) -> CardRow:
        return CardRow(
            r.card_id, r.user, r.brand, r.hint, r.key_label, r.cert,
            list(codec.unpackb(r.chain)), r.root, r.sealed, bool(r.pin), r.merchant_bin, r.kind,
        )  # fmt: skip

    def card(self, card_id: str) -> CardRow | None:
        r = self.db.one(sa.select(CARDS).where(CARDS.c.card_id == card_id))
        return None if r is None else self._card(r)

    def cards(self, user: str) -> list[CardRow]:
        c = CARDS.c
        rows = self.db.all(sa.select(CARDS).where(c.user == user).order_by(c.created, c.card_id))
        return [self._card(r) for r in rows]

    def save_purchase(self, row: PurchaseRow, now_ms: int) -> None:
        values = {
            "xid": row.xid, "card_id": row.card_id, "merchant": row.merchant,
            "trans_ids": row.trans_ids, "merchant_cert": row.merchant_cert,
            "description": row.description, "currency": row.currency, "amount": row.amount,
            "state": row.state, "completion": row.completion, "auth_code": row.auth_code,
            "updated": now_ms,
        }  # fmt: skip
        with self.db.transaction() as db:
            db.execute(self.db.upsert(PURCHASES, values))

    def purchase(self, xid: bytes) -> PurchaseRow | None:
        r = self.db.one(sa.select(PURCHASES).where(PURCHASES.c.xid == xid))
        if r is None:
            return None
        return PurchaseRow(
            r.xid, r.card_id, r.merchant, r.trans_ids, r.merchant_cert,
            r.description, r.currency, r.amount, r.state, r.completion, r.auth_code,
        )  # fmt: skip

    # -- BCI floors (Rule 3) --------------------------------------------------------------------

    def bci_floor(self, key: str) -> int:
        """The highest BCI sequence seen under ``key`` (0: none)."""
        f = BCI_FLOORS.c
        return int(self.db.scalar(sa.select(f.sequence).where(f.key == key)) or 0)

    def raise_bci_floor(self, key: str, sequence: int, now_ms: int) -> None:
        """Record ``sequence`` under ``key`` if it is higher than the one held."""
        f = BCI_FLOORS.c
        with self.db.transaction() as db:
            held = db.execute(sa.select(f.sequence).where(f.key == key)).scalar()
            if held is None or int(held) < sequence:
                values = {"key": key, "sequence": sequence, "updated": now_ms}
                db.execute(self.db.upsert(BCI_FLOORS, values))

    # -- started purchases (Rule 4) -------------------------------------------------------------

    def save_started(self, row: StartedRow, *, expire_before: int, keep: int) -> None:
        """Keep ``row``; drop rows started before ``expire_before`` (ms) and, beyond ``keep``
        per cardholder, the cardholder's oldest."""
        s = STARTED.c
        with self.db.transaction() as db:
            db.execute(sa.delete(STARTED).where(s.started < expire_before))
            held = db.execute(sa.select(s.purchase_id).where(s.user == row.user)
                              .order_by(s.started.desc(), s.purchase_id)).scalars().all()
            if len(held) >= keep:
                db.execute(sa.delete(STARTED).where(s.purchase_id.in_(held[keep - 1:])))
            db.execute(sa.insert(STARTED).values(
                purchase_id=row.purchase_id, user=row.user, card_id=row.card_id,
                merchant=row.merchant, offer=row.offer, machine=row.machine,
                description=row.description, currency=row.currency, amount=row.amount,
                started=row.started,
            ))  # fmt: skip

    def started(self, purchase_id: str, user: str, *, not_before: int) -> StartedRow | None:
        """The cardholder's started purchase, unless it started before ``not_before``."""
        s = STARTED.c
        r = self.db.one(sa.select(STARTED).where(
            s.purchase_id == purchase_id, s.user == user, s.started >= not_before))  # fmt: skip
        return None if r is None else self._started(r)

    def claim_started(self, purchase_id: str, user: str, *, not_before: int, owner: str,
                      now: int, lease_ms: int) -> StartedRow | str:  # fmt: skip
        """Take the started purchase for ``owner`` until ``now + lease_ms`` (Rule 4): the row,
        or ``"busy"`` while another process's lease runs, or ``"gone"`` (finished, expired,
        not the cardholder's)."""
        s = STARTED.c
        with self.db.transaction() as db:
            r = db.execute(sa.select(STARTED).where(
                s.purchase_id == purchase_id, s.user == user, s.started >= not_before)).first()
            if r is None:
                return "gone"
            if r.claimed_by is not None and (r.lease_until or 0) > now:
                return "busy"
            db.execute(sa.update(STARTED).where(s.purchase_id == purchase_id)
                       .values(claimed_by=owner, lease_until=now + lease_ms))  # fmt: skip
            return self._started(r)

    def record_preq(self, purchase_id: str, preq: bytes, check: bytes, machine: bytes) -> None:
        """The PReq about to leave, and what checks its answer (Rule 4)."""
        s = STARTED.c
        with self.db.transaction() as db:
            db.execute(sa.update(STARTED).where(s.purchase_id == purchase_id)
                       .values(preq=preq, preq_check=check, machine=machine))  # fmt: skip

    def release_started(self, purchase_id: str) -> None:
        """Give the claim back (its PReq got no answer): the next call finishes it (Rule 4)."""
        s = STARTED.c
        with self.db.transaction() as db:
            db.execute(sa.update(STARTED).where(s.purchase_id == purchase_id)
                       .values(claimed_by=None, lease_until=None))  # fmt: skip

    def drop_started(self, purchase_id: str) -> None:
        with self.db.transaction() as db:
            db.execute(sa.delete(STARTED).where(STARTED.c.purchase_id == purchase_id))

    def started_count(self) -> int:
        return int(self.db.scalar(sa.select(sa.func.count()).select_from(STARTED)) or 0)

    @staticmethod
    def _started(r: Any) -> StartedRow:
        return StartedRow(
            r.purchase_id, r.user, r.card_id, r.merchant, r.offer, r.machine, r.description,
            r.currency, int(r.amount), int(r.started), r.preq, r.preq_check,
        )  # fmt: skip
