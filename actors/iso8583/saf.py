"""The link's SQLite (WAL) journal: sent requests by RRN and the store-and-forward queue.

Rule 1: a request is journalled as ``sent`` before its bytes leave, so a crash between
send and answer is found at the next start and turned into a reversal.
Rule 2: "no answer" and "queue the reversal" are one transaction: a timed-out request
always has its reversal stored.
Rule 3: only non-sensitive fields are journalled (no field 2, 14, 52, 102): the reversal is
located by field 90, so the journal never holds an account number or PIN block.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from actors.iso8583 import spec
from setpay.sqlite import transaction

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    rrn TEXT PRIMARY KEY,
    mti TEXT NOT NULL,
    stan TEXT NOT NULL,
    fields TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sent', 'answered', 'timed_out')),
    response_code TEXT,
    approval_code TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS saf (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rrn TEXT NOT NULL,
    mti TEXT NOT NULL,
    message TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'acked', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    response_code TEXT,
    created_at REAL NOT NULL,
    done_at REAL
);
"""
STAN_BLOCK: Final = 64
# Fields a reversal copies from its original; none is sensitive.
REVERSAL_FIELDS: Final = ("3", "4", "32", "37", "41", "42", "49")


@dataclass(frozen=True, slots=True)
class Journalled:
    rrn: str
    mti: str
    stan: str
    state: str
    response_code: str | None
    approval_code: str | None


@dataclass(frozen=True, slots=True)
class SafEntry:
    id: int
    rrn: str
    mti: str
    message: spec.Message
    attempts: int


class Journal:
    """The link's persistent state; synchronous, short transactions."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.db = sqlite3.connect(Path(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives the process dying (the failure SAF is for); an OS crash
        # may lose the last commits. Use FULL where the host OS itself is not trusted.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._stans: list[int] = []
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One atomic change (setpay/sqlite.py): committed on exit, rolled back on error."""
        return transaction(self.db)

    def next_stan(self) -> str:
        """A STAN never reused within 999,999 requests, across restarts.

        STANs are reserved in blocks of ``STAN_BLOCK`` (one commit per block); a restart
        skips the rest of a block, which only leaves a gap."""
        if not self._stans:
            with self._tx() as db:
                row = db.execute("SELECT value FROM meta WHERE key = 'stan'").fetchone()
                last = int(row[0]) if row else 0
                block = [(last + i) % 999_999 + 1 for i in range(STAN_BLOCK)]
                db.execute("INSERT OR REPLACE INTO meta VALUES ('stan', ?)", (str(block[-1]),))
            self._stans = block[::-1]
        return f"{self._stans.pop():06d}"

    def get(self, rrn: str) -> Journalled | None:
        row = self.db.execute(
            "SELECT rrn, mti, stan, state, response_code, approval_code FROM requests "
            "WHERE rrn = ?",
            (rrn,),
        ).fetchone()
        return None if row is None else Journalled(*row)

    def record_sent(self, rrn: str, message: spec.Message) -> None:
        """Journal ``message`` (its non-sensitive fields) as sent, before it is written."""
        kept = {k: str(v) for k, v in message.items() if k not in spec.SENSITIVE_FIELDS}
        with self._tx() as db:
            db.execute(
                "INSERT INTO requests VALUES (?,?,?,?,?,?,?,?)",
                (
                    rrn,
                    message["t"],
                    message["11"],
                    json.dumps(kept),
                    "sent",
                    None,
                    None,
                    self.clock(),
                ),
            )

    def forget(self, rrn: str) -> None:
        """Drop a journalled request that never left (the write failed)."""
        with self._tx() as db:
            db.execute("DELETE FROM requests WHERE rrn = ? AND state = 'sent'", (rrn,))

    def record_answer(self, rrn: str, code: str, approval: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE requests SET state = 'answered', response_code = ?, approval_code = ?, "
                "updated_at = ? WHERE rrn = ? AND state = 'sent'",
                (code, approval, self.clock(), rrn),
            )

    def time_out(self, rrn: str, reversal_stan: str, f7: str) -> bool:
        """Mark ``rrn`` unanswered and queue its reversal advice; False if already settled."""
        with self._tx() as db:
            row = db.execute(
                "SELECT fields FROM requests WHERE rrn = ? AND state = 'sent'", (rrn,)
            ).fetchone()
            if row is None:
                return False
            original: dict[str, str] = json.loads(row[0])
            db.execute(
                "UPDATE requests SET state = 'timed_out', updated_at = ? WHERE rrn = ?",
                (self.clock(), rrn),
            )
            self._enqueue(db, rrn, spec.REVERSAL_ADVICE, original, reversal_stan, f7)
            return True

    def enqueue_reversal(self, rrn: str, reversal_stan: str, f7: str) -> bool:
        """Queue a reversal (0400) of an answered request; False if unknown or not answered."""
        with self._tx() as db:
            row = db.execute(
                "SELECT fields FROM requests WHERE rrn = ? AND state = 'answered'", (rrn,)
            ).fetchone()
            if row is None:
                return False
            self._enqueue(db, rrn, spec.REVERSAL_REQUEST, json.loads(row[0]), reversal_stan, f7)
            return True

    def _enqueue(
        self,
        db: sqlite3.Connection,
        rrn: str,
        mti: str,
        original: dict[str, str],
        stan: str,
        f7: str,
    ) -> None:
        message: spec.Message = {"t": mti, "7": f7, "11": stan}
        message.update({k: original[k] for k in REVERSAL_FIELDS if k in original})
        message["90"] = spec.original_data(
            original["t"], original["11"], original["7"], original["32"]
        )
        db.execute(
            "INSERT INTO saf (rrn, mti, message, state, created_at) VALUES (?,?,?,?,?)",
            (rrn, mti, json.dumps(message), "pending", self.clock()),
        )

    def unanswered(self) -> list[str]:
        """RRNs journalled as sent but never settled (a crash happened in between)."""
        rows = self.db.execute("SELECT rrn FROM requests WHERE state = 'sent'").fetchall()
        return [r[0] for r in rows]

    def next_pending(self) -> SafEntry | None:
        row = self.db.execute(
            "SELECT id, rrn, mti, message, attempts FROM saf WHERE state = 'pending' "
            "ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return SafEntry(row[0], row[1], row[2], json.loads(row[3]), row[4])

    def attempted(self, entry_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE saf SET attempts = attempts + 1 WHERE id = ?", (entry_id,))

    def settle(self, entry_id: int, code: str, *, acked: bool) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE saf SET state = ?, response_code = ?, attempts = attempts + 1, "
                "done_at = ? WHERE id = ?",
                ("acked" if acked else "failed", code, self.clock(), entry_id),
            )

    def pending_count(self) -> int:
        (n,) = self.db.execute("SELECT COUNT(*) FROM saf WHERE state = 'pending'").fetchone()
        return int(n)

    def saf_entries(self, rrn: str) -> list[tuple[str, str, int]]:
        """(MTI, state, attempts) of every queued reversal of ``rrn``, oldest first."""
        rows = self.db.execute(
            "SELECT mti, state, attempts FROM saf WHERE rrn = ? ORDER BY id", (rrn,)
        ).fetchall()
        return [(str(a), str(b), int(c)) for a, b, c in rows]
