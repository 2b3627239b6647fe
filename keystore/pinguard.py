"""The PIN guard: window counts and the PIN lockout every PIN operation runs under.

Rule 1: PIN verification, PVV creation, PIN issuance and PIN translation each count per
caller identity and per account in fixed windows of ``WINDOW_S`` (3600 s); a call past its
limit is refused ``RateLimited`` before the token is touched. The limits per window:
  pin_verify      20 per account,  5,000 per caller
  pin_pvv         10 per account,  1,000 per caller
  pin_issue        3 per account,    200 per caller
  translation     60 per account, 50,000 per caller   (open_pi_account with a PIN)
Rule 2: lockout. ``PIN_TRY_LIMIT`` (3) consecutive failed verifications of one account lock
its PIN for ``LOCKOUT_S`` (86,400 s): while locked every ``pin_verify`` of that account, the
right PIN included, is refused ``PinLocked`` and counts nothing. A success resets the count.
A block that does not decode for its account is a failed verification (it was offered as
that account's PIN); a *missing* block is a format error (``PinBlockMissing``), refused
before the guard and never counted. So a 4-digit PIN falls to guessing at 3 tries a day.
Rule 3: the counts live in the keystore, in one store (``setpay.store``) shared by every
worker process of the deployment, and each guarded operation runs inside one write
transaction: two workers cannot both spend the last try, and a restart forgets nothing.
A refusal inside the operation (a block that does not decode) still commits its counts.
Rule 4: bounded. A row is a counter or a lock; rows untouched for ``LOCKOUT_S`` and not
locked are deleted on every write, so the table holds at most the rows the per-caller
limits admit in a day, per identity. Accounts are keyed by a SHA-256 of the account digits
(domain-separated), callers by their broker identity; no PIN, block or PAN is stored.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final, TypeVar

import sqlalchemy as sa

from keystore.errors import KeystoreError, PinLocked, RateLimited
from setpay.store import Schema, Store, open_store

WINDOW_S: Final = 3600
PIN_TRY_LIMIT: Final = 3
LOCKOUT_S: Final = 86_400
_ACCOUNT_DOMAIN: Final = b"setpay/keystore/pin-guard/account/v1\x00"

T = TypeVar("T")


class Guarded(StrEnum):
    """The PIN operations the guard counts, each in its own windows."""

    VERIFY = "pin_verify"
    PVV = "pin_pvv"
    ISSUE = "pin_issue"
    TRANSLATE = "translation"


@dataclass(frozen=True, slots=True)
class Limits:
    """Calls admitted per window: by one caller identity, and on one account."""

    per_account: int
    per_caller: int


LIMITS: Final[dict[Guarded, Limits]] = {
    Guarded.VERIFY: Limits(per_account=20, per_caller=5_000),
    Guarded.PVV: Limits(per_account=10, per_caller=1_000),
    Guarded.ISSUE: Limits(per_account=3, per_caller=200),
    Guarded.TRANSLATE: Limits(per_account=60, per_caller=50_000),
}

_MD = sa.MetaData()
_ROWS = sa.Table(
    "pin_guard",
    _MD,
    sa.Column("scope", sa.String(200), primary_key=True),
    sa.Column("window_start", sa.Integer, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("locked_until", sa.Integer, nullable=False),
    sa.Column("touched", sa.Integer, nullable=False),
)
SCHEMA: Final = Schema("keystore_pin_guard", _MD)


def account_key(account: str) -> str:
    """The guard's key for an account: a domain-separated SHA-256, never the digits."""
    return hashlib.sha256(_ACCOUNT_DOMAIN + account.encode("ascii", "replace")).hexdigest()


class PinGuard:
    """Rules 1-4 over the store at ``target`` (a path or a SQLAlchemy URL)."""

    def __init__(self, target: str | Path, clock: Callable[[], float] = time.time) -> None:
        self._store: Store = open_store(target, [SCHEMA], name="keystore_pin_guard")
        self._clock = clock

    def close(self) -> None:
        self._store.close()

    def run(
        self,
        kind: Guarded,
        caller: str,
        account: str,
        operation: Callable[[], T],
        verdict: Callable[[T], bool] | None = None,
    ) -> T:
        """Run ``operation`` if ``caller`` and ``account`` have calls left in ``kind``'s
        windows (and, with ``verdict``, the account's PIN is not locked); ``verdict`` tells
        a verification's success, counted toward the lockout (Rule 2)."""
        now = int(self._clock())
        key = account_key(account)
        limits = LIMITS[kind]
        failed: KeystoreError | None = None
        with self._store.transaction() as db:
            db.execute(
                sa.delete(_ROWS).where(
                    _ROWS.c.touched < now - LOCKOUT_S, _ROWS.c.locked_until <= now
                )
            )
            lock = _get(db, f"lock/{key}")
            if verdict is not None and lock is not None and lock.locked_until > now:
                raise PinLocked("this account's PIN is locked after failed verifications")
            self._count(db, f"{kind}/caller/{caller}", limits.per_caller, now, "caller")
            self._count(db, f"{kind}/account/{key}", limits.per_account, now, "account")
            try:
                result = operation()
            except KeystoreError as exc:  # a refusal still spends its calls (Rule 3)
                failed = exc
            if verdict is not None:
                ok = failed is None and verdict(result)
                failures = 0 if ok else (lock.failures if lock is not None else 0) + 1
                until = now + LOCKOUT_S if failures >= PIN_TRY_LIMIT else 0
                self._put(db, f"lock/{key}", 0, 0, 0 if until else failures, until, now)
        if failed is not None:
            raise failed
        return result

    def _count(self, db: sa.Connection, scope: str, limit: int, now: int, who: str) -> None:
        row = _get(db, scope)
        start, count = (row.window_start, row.count) if row is not None else (now, 0)
        if now >= start + WINDOW_S:
            start, count = now, 0
        if count >= limit:
            raise RateLimited(f"PIN operation limit per {who} reached for this window")
        self._put(db, scope, start, count + 1, 0, 0, now)

    def _put(
        self,
        db: sa.Connection,
        scope: str,
        start: int,
        count: int,
        failures: int,
        until: int,
        now: int,
    ) -> None:
        values = {
            "scope": scope,
            "window_start": start,
            "count": count,
            "failures": failures,
            "locked_until": until,
            "touched": now,
        }
        db.execute(self._store.upsert(_ROWS, values))


def _get(db: sa.Connection, scope: str) -> sa.Row | None:  # type: ignore[type-arg]
    return db.execute(sa.select(_ROWS).where(_ROWS.c.scope == scope)).one_or_none()
