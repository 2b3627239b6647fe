"""The gateway's durable authorization ledger (SQLite, WAL), one per gateway instance.

Rule 1: one row per AuthReq RRPID: the request digest, XID, PI id, merchant id, amounts, host
RRN and codes, and the exact AuthRes bytes answered. Never a PAN, expiry, PANSecret or PIN:
the PI id is a labelled digest of the PIHead (which holds no account data).
Rule 2: ``reserve`` is the one place a PI becomes used: inserting the row with its PI id
fails if another RRPID holds that PI (``PiUsed``); the same RRPID finds its own row again
(a redelivery resumes it). ``finish`` stores the answer once; later finishes keep the first.
Rule 3: a retryable outcome (host unreachable or late) releases the PI id, so the merchant
may try the same purchase again under a new RRPID; the old RRPID keeps its stored answer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from actors.gateway.errors import GatewayError
from setpay.sqlite import transaction

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS auths (
    rrpid BLOB PRIMARY KEY,
    request_digest BLOB NOT NULL,
    xid BLOB NOT NULL,
    pi_id BLOB UNIQUE,
    merchant_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    req_amount INTEGER NOT NULL,
    capture_now INTEGER NOT NULL,
    rrn TEXT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    auth_code INTEGER,
    auth_amount INTEGER,
    response_code TEXT,
    approval_code TEXT,
    reply_type TEXT,
    reply BLOB,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS auths_xid ON auths (xid);
"""


class PiUsed(GatewayError):
    """The PI was already used by another authorization request."""


@dataclass(frozen=True, slots=True)
class Entry:
    rrpid: bytes
    request_digest: bytes
    xid: bytes
    state: str
    rrn: str | None
    reply_type: str | None
    reply: bytes | None


@dataclass(frozen=True, slots=True)
class NewAuth:
    """What ``reserve`` records before the host is asked."""

    rrpid: bytes
    request_digest: bytes
    xid: bytes
    pi_id: bytes | None
    merchant_id: str
    currency: str
    req_amount: int
    capture_now: bool
    rrn: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``finish`` records: codes and the exact reply."""

    auth_code: int
    auth_amount: int
    response_code: str | None
    approval_code: str | None
    reply_type: str
    reply: bytes
    release_pi: bool = False


class Ledger:
    """Authorization records of one gateway instance."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an answered authorization survives a crash
        self._db.executescript(_SCHEMA)
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    def close(self) -> None:
        self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One atomic change (setpay/sqlite.py): committed on exit, rolled back on error."""
        return transaction(self._db)

    def get(self, rrpid: bytes) -> Entry | None:
        row = self._db.execute(
            "SELECT rrpid, request_digest, xid, state, rrn, reply_type, reply"
            " FROM auths WHERE rrpid = ?",
            (rrpid,),
        ).fetchone()
        return None if row is None else Entry(*row)

    def reserve(self, auth: NewAuth) -> Entry:
        """Record the request (Rule 2); the existing entry if this RRPID has one.
        Raises ``PiUsed`` when another RRPID holds the PI."""
        now = self.clock()
        with self._tx() as db:
            row = db.execute("SELECT 1 FROM auths WHERE rrpid = ?", (auth.rrpid,)).fetchone()
            if row is None:
                try:
                    db.execute(
                        "INSERT INTO auths (rrpid, request_digest, xid, pi_id, merchant_id,"
                        " currency, req_amount, capture_now, rrn, state, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                        (
                            auth.rrpid,
                            auth.request_digest,
                            auth.xid,
                            auth.pi_id,
                            auth.merchant_id,
                            auth.currency,
                            auth.req_amount,
                            int(auth.capture_now),
                            auth.rrn,
                            now,
                            now,
                        ),
                    )
                except sqlite3.IntegrityError:
                    raise PiUsed("PI already used by another request") from None
        entry = self.get(auth.rrpid)
        assert entry is not None
        return entry

    def finish(self, rrpid: bytes, outcome: Outcome) -> Entry:
        """Store the answer of a pending entry; an entry already done keeps its answer."""
        with self._tx() as db:
            db.execute(
                "UPDATE auths SET state = 'done', auth_code = ?, auth_amount = ?,"
                " response_code = ?, approval_code = ?, reply_type = ?, reply = ?,"
                " pi_id = CASE WHEN ? THEN NULL ELSE pi_id END, updated_at = ?"
                " WHERE rrpid = ? AND state = 'pending'",
                (
                    outcome.auth_code,
                    outcome.auth_amount,
                    outcome.response_code,
                    outcome.approval_code,
                    outcome.reply_type,
                    outcome.reply,
                    int(outcome.release_pi),
                    self.clock(),
                    rrpid,
                ),
            )
        entry = self.get(rrpid)
        assert entry is not None
        return entry

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM auths").fetchone()[0])
