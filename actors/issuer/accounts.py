"""The issuer's SQLite (WAL) store: card and bank accounts, holds, postings, reversals.

Rule 1: no PAN, account number or PIN is stored: accounts are keyed by ``pan_index`` (keyed
HMAC from the security module) and keep the last four digits for display; PINs exist only
as a PVV.
Rule 2: every request is keyed by its transmission key (acquirer, time, STAN, RRN)
and applied at most once: ``process`` runs the lookup, the decision and the write in one
``BEGIN IMMEDIATE`` transaction; a repeat with the same fingerprint gets the stored answer, a
different request under a used key gets 94 and changes nothing.
Rule 3: a reversal releases the hold or restores the posting of its original exactly once;
a reversal whose original never arrived leaves a tombstone so a late original is refused.
Rule 4: amounts are integers in minor units. Card ``balance`` is what the cardholder owes
(available = limit - balance - holds); bank ``balance`` is the money on the account
(available = balance - holds).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

from actors.iso8583.codes import ResponseCode
from actors.issuer.errors import StoreError
from setpay.sqlite import transaction

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    pan_index BLOB PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('card', 'bank')),
    brand TEXT NOT NULL,
    last4 TEXT NOT NULL,
    expiry TEXT,
    credit_limit INTEGER NOT NULL CHECK (credit_limit >= 0),
    balance INTEGER NOT NULL,
    stolen INTEGER NOT NULL DEFAULT 0,
    pvv BLOB,
    pin_tries INTEGER NOT NULL DEFAULT 0,
    velocity_count INTEGER NOT NULL CHECK (velocity_count > 0),
    velocity_window INTEGER NOT NULL CHECK (velocity_window > 0)
);
CREATE TABLE IF NOT EXISTS transactions (
    tx_key TEXT PRIMARY KEY,
    rrn TEXT NOT NULL,
    mti TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    pan_index BLOB,
    amount INTEGER NOT NULL,
    effect TEXT NOT NULL,
    state TEXT NOT NULL,
    response_code TEXT NOT NULL,
    approval_code TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transactions_velocity ON transactions (pan_index, created_at);
CREATE TABLE IF NOT EXISTS reversals (
    tx_key TEXT PRIMARY KEY,
    original_key TEXT NOT NULL,
    restored INTEGER NOT NULL,
    created_at REAL NOT NULL
);
"""


class Effect(StrEnum):
    NONE = "none"
    HOLD = "hold"  # authorization: reduces what is available until reversed
    POSTING = "posting"  # financial: moves the balance at once
    TOMBSTONE = "tombstone"  # reversed before it arrived


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
    """The account store. Calls are synchronous and short (local SQLite, one transaction)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)
        self.db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One atomic change (setpay/sqlite.py): committed on exit, rolled back on error."""
        return transaction(self.db)

    # -- accounts ---------------------------------------------------------------------------

    def put_account(self, record: AccountRecord) -> None:
        """Create or replace an account (seeding and administration only)."""
        if record.kind not in ("card", "bank") or len(record.last4) != 4:
            raise StoreError("account kind must be card or bank, last4 four characters")
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO accounts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.pan_index,
                    record.kind,
                    record.brand,
                    record.last4,
                    record.expiry,
                    record.credit_limit,
                    record.balance,
                    int(record.stolen),
                    record.pvv,
                    record.pin_tries,
                    record.velocity_count,
                    record.velocity_window,
                ),
            )

    def account(self, pan_index: bytes) -> AccountRecord | None:
        row = self.db.execute("SELECT * FROM accounts WHERE pan_index = ?", (pan_index,)).fetchone()
        return None if row is None else _account(row)

    def snapshot(self, pan_index: bytes) -> Snapshot | None:
        """The account with its held amount and recent approvals, or None if unknown."""
        account = self.account(pan_index)
        if account is None:
            return None
        (held,) = self.db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM transactions "
            "WHERE pan_index = ? AND effect = 'hold' AND state = 'active'",
            (pan_index,),
        ).fetchone()
        since = self.clock() - account.velocity_window
        (recent,) = self.db.execute(
            "SELECT COUNT(*) FROM transactions WHERE pan_index = ? AND response_code = '00' "
            "AND state = 'active' AND created_at >= ?",
            (pan_index, since),
        ).fetchone()
        return Snapshot(account, int(held), int(recent))

    # -- requests ---------------------------------------------------------------------------

    def stored(self, tx: TxRequest) -> Outcome | None:
        """The stored answer for ``tx``'s key, or None if the key is new (read-only)."""
        row = self.db.execute(
            "SELECT fingerprint, effect, response_code, approval_code, pan_index "
            "FROM transactions WHERE tx_key = ?",
            (tx.key,),
        ).fetchone()
        if row is None:
            return None
        fingerprint, effect, code, approval, pan_index = row
        if effect == Effect.TOMBSTONE:
            return Outcome(ResponseCode.INVALID_TRANSACTION, duplicate=True)
        if fingerprint != tx.fingerprint:
            return Outcome(ResponseCode.DUPLICATE_TRANSMISSION, duplicate=True)
        account = self.account(pan_index) if pan_index else None
        last4 = account.last4 if account else ""
        return Outcome(ResponseCode(code), approval, duplicate=True, last4=last4)

    def process(
        self,
        tx: TxRequest,
        decide: Callable[[Snapshot | None], Decision],
        approval_code: Callable[[], str],
    ) -> Outcome:
        """Decide ``tx`` against a consistent snapshot and record it, at most once per key."""
        with self._tx() as db:
            previous = self.stored(tx)
            if previous is not None:
                return previous
            snap = self.snapshot(tx.pan_index)
            decision = decide(snap)
            approval = approval_code() if decision.code.approved else ""
            if snap is not None and decision.pin_tries is not None:
                db.execute(
                    "UPDATE accounts SET pin_tries = ? WHERE pan_index = ?",
                    (decision.pin_tries, tx.pan_index),
                )
            if decision.effect is Effect.POSTING:
                assert snap is not None  # a decision on an unknown account never posts
                sign = 1 if snap.account.kind == "card" else -1
                db.execute(
                    "UPDATE accounts SET balance = balance + ? WHERE pan_index = ?",
                    (sign * tx.amount, tx.pan_index),
                )
            db.execute(
                "INSERT INTO transactions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    tx.key,
                    tx.rrn,
                    tx.mti,
                    tx.fingerprint,
                    tx.pan_index,
                    tx.amount,
                    str(decision.effect),
                    "active",
                    str(decision.code),
                    approval,
                    self.clock(),
                ),
            )
            last4 = snap.account.last4 if snap else ""
            return Outcome(decision.code, approval, last4=last4)

    def reverse(self, reversal_key: str, original_key: str, rrn: str) -> bool:
        """Undo the original's effect once; True if this call restored funds."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM reversals WHERE tx_key = ?", (reversal_key,)).fetchone():
                return False
            row = db.execute(
                "SELECT pan_index, amount, effect, state FROM transactions WHERE tx_key = ?",
                (original_key,),
            ).fetchone()
            restored = False
            if row is None:
                # The original may still be in flight: refuse it when it arrives.
                db.execute(
                    "INSERT INTO transactions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        original_key,
                        rrn,
                        "",
                        b"",
                        None,
                        0,
                        str(Effect.TOMBSTONE),
                        "reversed",
                        str(ResponseCode.INVALID_TRANSACTION),
                        "",
                        self.clock(),
                    ),
                )
            elif row[3] == "active":
                pan_index, amount, effect, _ = row
                if effect == Effect.POSTING:
                    kind = db.execute(
                        "SELECT kind FROM accounts WHERE pan_index = ?", (pan_index,)
                    ).fetchone()[0]
                    sign = -1 if kind == "card" else 1
                    db.execute(
                        "UPDATE accounts SET balance = balance + ? WHERE pan_index = ?",
                        (sign * amount, pan_index),
                    )
                db.execute(
                    "UPDATE transactions SET state = 'reversed' WHERE tx_key = ?",
                    (original_key,),
                )
                restored = effect in (Effect.HOLD, Effect.POSTING)
            db.execute(
                "INSERT INTO reversals VALUES (?,?,?,?)",
                (reversal_key, original_key, int(restored), self.clock()),
            )
            return restored

    def reversal_count(self, original_key: str) -> int:
        """How many distinct reversals named ``original_key`` (for audits and tests)."""
        (n,) = self.db.execute(
            "SELECT COUNT(*) FROM reversals WHERE original_key = ?", (original_key,)
        ).fetchone()
        return int(n)


def _account(row: tuple[object, ...]) -> AccountRecord:
    return AccountRecord(
        pan_index=bytes(row[0]),  # type: ignore[arg-type]
        kind=str(row[1]),
        brand=str(row[2]),
        last4=str(row[3]),
        expiry=None if row[4] is None else str(row[4]),
        credit_limit=int(row[5]),  # type: ignore[call-overload]
        balance=int(row[6]),  # type: ignore[call-overload]
        stolen=bool(row[7]),
        pvv=None if row[8] is None else bytes(row[8]),  # type: ignore[arg-type]
        pin_tries=int(row[9]),  # type: ignore[call-overload]
        velocity_count=int(row[10]),  # type: ignore[call-overload]
        velocity_window=int(row[11]),  # type: ignore[call-overload]
    )
