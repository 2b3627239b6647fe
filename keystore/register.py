"""The used-PI register: a PIN-bearing payment instruction opens once (piPreviouslyUsed).

Rule 1: an entry is the PI's DD(AccountPart) (salted by its fresh EXNonce, so it reveals
nothing), the caller and an optional use key; never the PIN, PAN or the PI itself.
Rule 2: one SQLite file (WAL) shared by every keystore worker process of a deployment;
``claim`` is one IMMEDIATE transaction, so two workers racing on one PI cannot both win.
Rule 3: a second claim is refused unless it comes from the same caller with the same non-empty
use key (the same transaction retried after a crash): exactly-once effects over at-least-once
delivery.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from keystore.errors import PiPreviouslyUsed, TokenUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS used_pi (
    digest BLOB PRIMARY KEY,
    caller TEXT NOT NULL,
    use_key BLOB,
    used_at REAL NOT NULL
) WITHOUT ROWID
"""


class UsedPiRegister:
    """Claims of PIN-bearing PIs, in ``path``; safe across processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=10, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(SCHEMA)
            self._db = db
        return self._db

    def claim(self, digest: bytes, caller: str, use_key: bytes | None) -> None:
        """Record the first use of PI ``digest``; ``PiPreviouslyUsed`` if it was used (Rule 3)."""
        with self._lock:
            try:
                db = self._conn()
                db.execute("BEGIN IMMEDIATE")
                try:
                    row = db.execute(
                        "SELECT caller, use_key FROM used_pi WHERE digest = ?", (digest,)
                    ).fetchone()
                    if row is None:
                        db.execute(
                            "INSERT INTO used_pi VALUES (?, ?, ?, ?)",
                            (digest, caller, use_key, time.time()),
                        )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise TokenUnavailable(
                    f"used-PI register unavailable ({type(exc).__name__})"
                ) from None
        if row is not None and not (use_key is not None and (caller, use_key) == tuple(row)):
            raise PiPreviouslyUsed("payment instruction was used before")

    def count(self) -> int:
        """How many PIs are registered (tests and health)."""
        with self._lock:
            return int(self._conn().execute("SELECT COUNT(*) FROM used_pi").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
