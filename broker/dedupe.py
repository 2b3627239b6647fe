"""Exactly-once effects on at-least-once delivery: an idempotency store.

Rule 1: a handler commits its effect and the message's dedupe key in ONE transaction, then
the message is acked; a redelivered duplicate finds its key and gets the stored result
without running the effect again.
Rule 2: the interface (``IdempotencyStore``) hides the database; ``SqliteStore`` (WAL) is the
embedded default, a PostgreSQL store can implement the same protocol.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

Effect = Callable[[sqlite3.Connection], bytes | None]

SCHEMA_VERSION = 1


class IdempotencyStore(Protocol):
    """Runs an effect at most once per key and remembers its result."""

    def once(self, key: str, effect: Effect) -> tuple[bool, bytes | None]:
        """Run ``effect`` unless ``key`` was committed; return (ran now, stored result)."""
        ...

    def seen(self, key: str) -> bool:
        """Whether ``key`` has been committed."""
        ...

    def close(self) -> None: ...


class SqliteStore:
    """SQLite (WAL) idempotency store; ``effect`` runs inside the same transaction as the key."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS setpay_dedupe ("
            " key TEXT PRIMARY KEY, result BLOB, committed_at REAL DEFAULT (unixepoch('subsec')))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS setpay_schema (name TEXT PRIMARY KEY, version INTEGER)"
        )
        self._db.execute(
            "INSERT OR IGNORE INTO setpay_schema VALUES ('dedupe', ?)", (SCHEMA_VERSION,)
        )

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection, for effects' own tables (use inside ``once`` only)."""
        return self._db

    def once(self, key: str, effect: Effect) -> tuple[bool, bytes | None]:
        """Run ``effect`` and record ``key`` atomically, unless ``key`` is already recorded."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT result FROM setpay_dedupe WHERE key = ?", (key,)
                ).fetchone()
                if row is not None:
                    self._db.execute("ROLLBACK")
                    return False, row[0]
                result = effect(self._db)
                self._db.execute(
                    "INSERT INTO setpay_dedupe (key, result) VALUES (?, ?)", (key, result)
                )
                self._db.execute("COMMIT")
                return True, result
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def seen(self, key: str) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM setpay_dedupe WHERE key = ?", (key,)).fetchone()
                is not None
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
