"""The issuer's account store (setpay/store.py): card and bank accounts, holds, postings,
reversals; SQLite (WAL) per host instance by default, PostgreSQL given a URL.

Rule 1: no PAN, account number or PIN is stored: accounts are keyed by ``pan_index`` (keyed
HMAC from the security module) and keep the last four digits for display; PINs exist only
as a PVV.
Rule 2: every request is keyed by its transmission key (acquirer, time, STAN, RRN)
and applied at most once: ``process`` runs the lookup, the decision and the write in one
``Store.transaction`` (write lock taken up front); ``tx_key`` is the primary key, so the
database itself refuses a second record under a key. A repeat with the same fingerprint gets
the stored answer, a different request under a used key gets 94 and changes nothing.
Rule 3: a reversal releases the hold or restores the posting of its original exactly once
(``reversals.tx_key`` is the primary key); a reversal whose original never arrived leaves a
tombstone so a late original is refused.
Rule 5 (after authorization): an advice (``advise``) is applied at most once per key, like a
request: a completion posts the captured amount and ends its original's hold (the rest of the
hold is released); a refund posts a credit against an original that moved money; a reversal of
either undoes it once (a completion's reversal restores the hold). A partial reversal
(``reverse(..., remaining=N)``) lowers an active hold to N. Every completion and refund names
its batch; ``batch_totals`` sums the live ones for the 0500 reconciliation.
Rule 4: amounts are integers in minor units. Card ``balance`` is what the cardholder owes
(available = limit - balance - holds); bank ``balance`` is the money on the account
(available = balance - holds).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic.operations import Operations

from actors.iso8583.codes import ResponseCode
from actors.issuer.errors import StoreError
from setpay.store import Connection, Schema, open_store

_MD = sa.MetaData()
ACCOUNTS: Final = sa.Table(
    "accounts",
    _MD,
    sa.Column("pan_index", sa.LargeBinary, primary_key=True),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("brand", sa.String(), nullable=False),
    sa.Column("last4", sa.String(), nullable=False),
    sa.Column("expiry", sa.String()),
    sa.Column("credit_limit", sa.BigInteger, nullable=False),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.Column("stolen", sa.Boolean, nullable=False, default=False),
    sa.Column("pvv", sa.LargeBinary),
    sa.Column("pin_tries", sa.Integer, nullable=False, default=0),
    sa.Column("velocity_count", sa.Integer, nullable=False),
    sa.Column("velocity_window", sa.Integer, nullable=False),
    sa.CheckConstraint("kind IN ('card', 'bank')", name="accounts_kind"),
    sa.CheckConstraint("credit_limit >= 0", name="accounts_credit_limit"),
    sa.CheckConstraint("velocity_count > 0", name="accounts_velocity_count"),
    sa.CheckConstraint("velocity_window > 0", name="accounts_velocity_window"),
)
TRANSACTIONS: Final = sa.Table(
    "transactions",
    _MD,
    sa.Column("tx_key", sa.String(), primary_key=True),
    sa.Column("rrn", sa.String(), nullable=False),
    sa.Column("mti", sa.String(), nullable=False),
    sa.Column("fingerprint", sa.LargeBinary, nullable=False),
    sa.Column("pan_index", sa.LargeBinary),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("effect", sa.String(), nullable=False),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("response_code", sa.String(), nullable=False),
    sa.Column("approval_code", sa.String(), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("batch", sa.String(), index=True),  # completions and refunds (Rule 5)
    sa.Index("transactions_velocity", "pan_index", "created_at"),
)
REVERSALS: Final = sa.Table(
    "reversals",
    _MD,
    sa.Column("tx_key", sa.String(), primary_key=True),
    sa.Column("original_key", sa.String(), nullable=False, index=True),
    sa.Column("restored", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


def _add_batch(op: Operations) -> None:
    op.add_column("transactions", sa.Column("batch", sa.String()))
    op.create_index("ix_transactions_batch", "transactions", ["batch"])


SCHEMA: Final = Schema("issuer_accounts", _MD, steps=(_add_batch,))


class Effect(StrEnum):
    NONE = "none"
    HOLD = "hold"  # authorization: reduces what is available until reversed
    POSTING = "posting"  # financial: moves the balance at once
    TOMBSTONE = "tombstone"  # reversed before it arrived
    COMPLETION = "completion"  # an advice: the captured part of a hold, posted
    CREDIT = "credit"  # an advice: a refund, posted back


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """One account as stored (no account number, no PIN)."""

    pan_index: bytes = field(repr=False)
    kind: str  # card | bank
    brand: str
    last4: str
    expiry: str | None  # YYMM, cards only
    credit_limit: int  # cards; 0 for bank accounts
    balance: int
    stolen: bool = False
    pvv: bytes | None = field(default=None, repr=False)
    pin_tries: int = 0
    velocity_count: int = 20  # at most this many approvals ...
    velocity_window: int = 3600  # ... within this many seconds


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An account and the facts a decision needs, read inside the deciding transaction."""

    account: AccountRecord
    held: int
    recent_approvals: int

    @property
    def available(self) -> int:
        a = self.account
        if a.kind == "card":
            return a.credit_limit - a.balance - self.held
        return a.balance - self.held


@dataclass(frozen=True, slots=True)
class Decision:
    code: ResponseCode
    effect: Effect = Effect.NONE
    pin_tries: int | None = None  # new value, or None to leave it


@dataclass(frozen=True, slots=True)
class TxRequest:
    """What the store needs of an authorization/financial request."""

    key: str  # transmission key: acquirer:MMDDhhmmss:STAN:RRN
    rrn: str
    mti: str
    fingerprint: bytes  # over the request's meaning, to tell a retry from a key collision
    pan_index: bytes = field(repr=False)
    amount: int


@dataclass(frozen=True, slots=True)
class Outcome:
    code: ResponseCode
    approval_code: str = ""
    duplicate: bool = False
    last4: str = ""


class Store:
    """The account store. Calls are synchronous and short (one transaction each)."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        """Open (creating or migrating) the store at ``path``, or at a ``postgresql://`` URL."""
        self.db = open_store(path, [SCHEMA])
        self.path = Path(path) if self.db.path is None else self.db.path
        self.clock = clock

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> AbstractContextManager[Connection]:
        """One atomic change (setpay/store.py): committed on exit, rolled back on error."""
        return self.db.transaction()

    # -- accounts ---------------------------------------------------------------------------

    def put_account(self, record: AccountRecord) -> None:
        """Create or replace an account (seeding and administration only)."""
        if record.kind not in ("card", "bank") or len(record.last4) != 4:
            raise StoreError("account kind must be card or bank, last4 four characters")
        values = {name: getattr(record, name) for name in _ACCOUNT_COLUMNS}
        with self._tx() as db:
            db.execute(self.db.upsert(ACCOUNTS, values))

    def account(self, pan_index: bytes) -> AccountRecord | None:
        """The account under ``pan_index``, or None (inside a transaction: as it sees it)."""
        row = self.db.one(_ACCOUNT.where(ACCOUNTS.c.pan_index == pan_index))
        return None if row is None else _account(row)

    def snapshot(self, pan_index: bytes) -> Snapshot | None:
        """The account with its held amount and recent approvals, or None if unknown."""
        account = self.account(pan_index)
        if account is None:
            return None
        t = TRANSACTIONS.c
        held = self.db.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(t.amount), 0)).where(
                t.pan_index == pan_index, t.effect == str(Effect.HOLD), t.state == "active"
            )
        )
        since = self.clock() - account.velocity_window
        recent = self.db.scalar(
            sa.select(sa.func.count()).where(
                t.pan_index == pan_index,
                t.response_code == str(ResponseCode.APPROVED),
                t.state == "active",
                t.effect.not_in((str(Effect.COMPLETION), str(Effect.CREDIT))),
                t.created_at >= since,
            )
        )
        return Snapshot(account, int(held), int(recent))

    # -- requests ---------------------------------------------------------------------------

    def stored(self, tx: TxRequest) -> Outcome | None:
        """The stored answer for ``tx``'s key, or None if the key is new (read-only)."""
        t = TRANSACTIONS.c
        row = self.db.one(
            sa.select(t.fingerprint, t.effect, t.response_code, t.approval_code, t.pan_index)
            .where(t.tx_key == tx.key)
        )  # fmt: skip
        if row is None:
            return None
        fingerprint, effect, code, approval, pan_index = row
        if effect == Effect.TOMBSTONE:
            return Outcome(ResponseCode.INVALID_TRANSACTION, duplicate=True)
        if bytes(fingerprint) != tx.fingerprint:
            return Outcome(ResponseCode.DUPLICATE_TRANSMISSION, duplicate=True)
        account = self.account(bytes(pan_index)) if pan_index else None
        last4 = account.last4 if account else ""
        return Outcome(ResponseCode(code), approval, duplicate=True, last4=last4)

    def process(
        self,
        tx: TxRequest,
        decide: Callable[[Snapshot | None], Decision],
        approval_code: Callable[[], str],
    ) -> Outcome:
        """Decide ``tx`` against a consistent snapshot and record it, at most once per key."""
        a = ACCOUNTS.c
        with self._tx() as db:
            previous = self.stored(tx)
            if previous is not None:
                return previous
            snap = self.snapshot(tx.pan_index)
            decision = decide(snap)
            approval = approval_code() if decision.code.approved else ""
            if snap is not None and decision.pin_tries is not None:
                db.execute(
                    sa.update(ACCOUNTS)
                    .where(a.pan_index == tx.pan_index)
                    .values(pin_tries=decision.pin_tries)
                )
            if decision.effect is Effect.POSTING:
                assert snap is not None  # a decision on an unknown account never posts
                sign = 1 if snap.account.kind == "card" else -1
                db.execute(
                    sa.update(ACCOUNTS)
                    .where(a.pan_index == tx.pan_index)
                    .values(balance=a.balance + sign * tx.amount)
                )
            db.execute(
                sa.insert(TRANSACTIONS).values(
                    tx_key=tx.key,
                    rrn=tx.rrn,
                    mti=tx.mti,
                    fingerprint=tx.fingerprint,
                    pan_index=tx.pan_index,
                    amount=tx.amount,
                    effect=str(decision.effect),
                    state="active",
                    response_code=str(decision.code),
                    approval_code=approval,
                    created_at=self.clock(),
                )
            )
            last4 = snap.account.last4 if snap else ""
            return Outcome(decision.code, approval, last4=last4)

    def reverse(
        self, reversal_key: str, original_key: str, rrn: str, *, remaining: int | None = None
    ) -> bool:
        """Undo the original's effect once (with ``remaining``: lower its hold to that);
        True if this call restored funds."""
        a, t, r = ACCOUNTS.c, TRANSACTIONS.c, REVERSALS.c
        with self._tx() as db:
            if db.execute(sa.select(r.tx_key).where(r.tx_key == reversal_key)).first():
                return False
            row = db.execute(
                sa.select(t.pan_index, t.amount, t.effect, t.state, t.rrn).where(
                    t.tx_key == original_key
                )
            ).first()
            restored = False
            if remaining is not None:
                if row is not None and row.state == "active" and row.effect == Effect.HOLD:
                    restored = remaining < row.amount
                    db.execute(
                        sa.update(TRANSACTIONS)
                        .where(t.tx_key == original_key)
                        .values(amount=sa.case((t.amount > remaining, remaining), else_=t.amount))
                    )
            elif row is None:
                # The original may still be in flight: refuse it when it arrives.
                db.execute(
                    sa.insert(TRANSACTIONS).values(
                        tx_key=original_key,
                        rrn=rrn,
                        mti="",
                        fingerprint=b"",
                        pan_index=None,
                        amount=0,
                        effect=str(Effect.TOMBSTONE),
                        state="reversed",
                        response_code=str(ResponseCode.INVALID_TRANSACTION),
                        approval_code="",
                        created_at=self.clock(),
                    )
                )
            elif row.state == "active":
                if row.effect in (Effect.POSTING, Effect.COMPLETION, Effect.CREDIT):
                    kind = db.execute(
                        sa.select(a.kind).where(a.pan_index == row.pan_index)
                    ).scalar_one()
                    sign = -1 if kind == "card" else 1
                    if row.effect == Effect.CREDIT:
                        sign = -sign
                    db.execute(
                        sa.update(ACCOUNTS)
                        .where(a.pan_index == row.pan_index)
                        .values(balance=a.balance + sign * row.amount)
                    )
                if row.effect == Effect.COMPLETION:  # the hold it ended holds again
                    db.execute(
                        sa.update(TRANSACTIONS)
                        .where(
                            t.rrn == row.rrn, t.effect == str(Effect.HOLD), t.state == "completed"
                        )
                        .values(state="active")
                    )
                db.execute(
                    sa.update(TRANSACTIONS).where(t.tx_key == original_key).values(state="reversed")
                )
                restored = row.effect != Effect.NONE
            db.execute(
                sa.insert(REVERSALS).values(
                    tx_key=reversal_key,
                    original_key=original_key,
                    restored=restored,
                    created_at=self.clock(),
                )
            )
            return restored

    def advise(
        self,
        tx_key: str,
        original_key: str,
        rrn: str,
        effect: Effect,
        amount: int,
        batch: str,
    ) -> ResponseCode:
        """Apply a completion or refund advice once per ``tx_key`` (Rule 5): 00, or 12 when
        its original cannot take it (no hold to complete, nothing posted to refund), 13
        when a completion exceeds the hold."""
        a, t = ACCOUNTS.c, TRANSACTIONS.c
        with self._tx() as db:
            done = db.execute(
                sa.select(t.response_code).where(t.tx_key == tx_key)
            ).scalar()  # fmt: skip
            if done is not None:
                return ResponseCode(done)
            row = db.execute(
                sa.select(t.pan_index, t.amount, t.effect, t.state).where(t.tx_key == original_key)
            ).first()
            code = ResponseCode.APPROVED
            if effect is Effect.COMPLETION:
                if row is None or row.effect != Effect.HOLD or row.state != "active":
                    code = ResponseCode.INVALID_TRANSACTION
                elif amount > row.amount:
                    code = ResponseCode.INVALID_AMOUNT
            elif row is None or row.effect not in (Effect.HOLD, Effect.POSTING):
                code = ResponseCode.INVALID_TRANSACTION
            if code.approved:
                assert row is not None
                kind = db.execute(
                    sa.select(a.kind).where(a.pan_index == row.pan_index)
                ).scalar_one()  # fmt: skip
                sign = 1 if kind == "card" else -1  # a card owes more, a bank account holds less
                if effect is Effect.CREDIT:
                    sign = -sign
                db.execute(
                    sa.update(ACCOUNTS)
                    .where(a.pan_index == row.pan_index)
                    .values(balance=a.balance + sign * amount)
                )
                if effect is Effect.COMPLETION:
                    db.execute(
                        sa.update(TRANSACTIONS)
                        .where(t.tx_key == original_key)
                        .values(state="completed")
                    )
            db.execute(
                sa.insert(TRANSACTIONS).values(
                    tx_key=tx_key,
                    rrn=rrn,
                    mti="0220",
                    fingerprint=b"",
                    pan_index=None if row is None else row.pan_index,
                    amount=amount,
                    effect=str(effect) if code.approved else str(Effect.NONE),
                    state="active",
                    response_code=str(code),
                    approval_code="",
                    created_at=self.clock(),
                    batch=batch if code.approved else None,
                )
            )
            return code

    def batch_totals(self, batch: str) -> tuple[int, int, int, int]:
        """(credit count, credit amount, debit count, debit amount) of ``batch``'s live
        completions (debits) and refunds (credits)."""
        t = TRANSACTIONS.c
        rows = self.db.all(
            sa.select(t.effect, sa.func.count(), sa.func.coalesce(sa.func.sum(t.amount), 0))
            .where(t.batch == batch, t.state == "active")
            .group_by(t.effect)
        )
        by = {str(e): (int(n), int(s)) for e, n, s in rows}
        credits = by.get(str(Effect.CREDIT), (0, 0))
        debits = by.get(str(Effect.COMPLETION), (0, 0))
        return credits[0], credits[1], debits[0], debits[1]

    def reversal_count(self, original_key: str) -> int:
        """How many distinct reversals named ``original_key`` (for audits and tests)."""
        r = REVERSALS.c
        return int(self.db.scalar(sa.select(sa.func.count()).where(r.original_key == original_key)))


_ACCOUNT_COLUMNS: Final = tuple(c.name for c in ACCOUNTS.columns)
_ACCOUNT: Final = sa.select(ACCOUNTS)


def _account(row: Any) -> AccountRecord:
    return AccountRecord(
        pan_index=bytes(row.pan_index),
        kind=str(row.kind),
        brand=str(row.brand),
        last4=str(row.last4),
        expiry=None if row.expiry is None else str(row.expiry),
        credit_limit=int(row.credit_limit),
        balance=int(row.balance),
        stolen=bool(row.stolen),
        pvv=None if row.pvv is None else bytes(row.pvv),
        pin_tries=int(row.pin_tries),
        velocity_count=int(row.velocity_count),
        velocity_window=int(row.velocity_window),
    )
