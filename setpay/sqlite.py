"""Superseded by setpay/store.py; kept only for the issuer's stores until they move onto it.

Remaining users: actors/issuer/accounts.py and actors/issuer/saf.py (being restructured on
another branch; the conversion steps are in setpay/store.py's docstring). Delete this module
with their conversion. New code uses ``setpay.store``.

Rule 1: connections run in autocommit mode (``isolation_level=None``) with WAL; every change
goes through ``transaction``, which takes the write lock up front (``BEGIN IMMEDIATE``) so
a read-decide-write sequence cannot interleave with another writer.
Rule 2: any exception, cancellation included, rolls back; nothing is half-committed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One atomic change: committed on normal exit, rolled back on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
