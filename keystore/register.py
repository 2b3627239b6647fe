"""The used-PI register: a PIN-bearing payment instruction opens once (piPreviouslyUsed).

Rule 1: an entry is the PI's DD(AccountPart) (salted by its fresh EXNonce, so it reveals
nothing), the caller and an optional use key; never the PIN, PAN or the PI itself.
Rule 2: one store (setpay/store.py) shared by every keystore worker process of a deployment:
a SQLite file (WAL) by default, a PostgreSQL database given a ``postgresql://`` URL. The
digest is the primary key, so the database itself refuses a second entry for one PI: two
workers racing on one PI cannot both insert, whatever the isolation; ``claim`` is one
``Store.transaction`` (write lock up front), so the loser reads the winner's row.
Rule 3: a second claim is refused unless it comes from the same caller with the same non-empty
use key (the same transaction retried after a crash): exactly-once effects over at-least-once
delivery.
Rule 4: a register that cannot be opened or written answers ``TokenUnavailable`` (retryable),
never "not used": a PI is opened only after its claim committed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Final

import sqlalchemy as sa

from keystore.errors import PiPreviouslyUsed, TokenUnavailable
from setpay.store import Prepared, Schema, Store, StoreError, open_store

_MD = sa.MetaData()
USED_PI: Final = sa.Table(
    "used_pi",
    _MD,
    sa.Column("digest", sa.LargeBinary, primary_key=True),
    sa.Column("caller", sa.String(), nullable=False),
    sa.Column("use_key", sa.LargeBinary),
    sa.Column("used_at", sa.Float, nullable=False),
    sqlite_with_rowid=False,
)
SCHEMA: Final = Schema("keystore_used_pi", _MD)
_BY_DIGEST: Final = sa.select(USED_PI.c.caller, USED_PI.c.use_key).where(
    USED_PI.c.digest == sa.bindparam("digest")
)
_COUNT: Final = sa.select(sa.func.count()).select_from(USED_PI)


class UsedPiRegister:
    """Claims of PIN-bearing PIs, in ``target`` (a path or a URL); safe across processes.

    The store is opened at the first claim, in the process that makes it (a worker)."""

    def __init__(self, target: Path | str) -> None:
        self.path = target
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._insert: Prepared  # compiled when the store opens
        self._get: Prepared

    def _open(self) -> Store:
        if self._store is None:
            store = open_store(self.path, [SCHEMA])
            self._insert = store.prepare(
                store.insert_ignore(USED_PI).values(
                    {k: sa.bindparam(k) for k in ("digest", "caller", "use_key", "used_at")}
                )
            )
            self._get = store.prepare(_BY_DIGEST)
            self._store = store
        return self._store

    def claim(self, digest: bytes, caller: str, use_key: bytes | None) -> None:
        """Record the first use of PI ``digest``; ``PiPreviouslyUsed`` if it was used (Rule 3),
        ``TokenUnavailable`` if the register cannot answer (Rule 4)."""
        with self._lock:
            try:
                store = self._open()
                with store.transaction() as db:
                    inserted, _ = self._insert.run(
                        db,
                        {
                            "digest": digest,
                            "caller": caller,
                            "use_key": use_key,
                            "used_at": time.time(),
                        },
                    )
                    rows = [] if inserted else self._get.run(db, {"digest": digest})[0]
            except (sa.exc.SQLAlchemyError, StoreError, OSError) as exc:
                raise TokenUnavailable(
                    f"used-PI register unavailable ({type(exc).__name__})"
                ) from None
        if inserted:
            return
        first_caller, first_key = rows[0]
        retry = use_key is not None and first_key is not None and bytes(first_key) == use_key
        if not (retry and first_caller == caller):
            raise PiPreviouslyUsed("payment instruction was used before")

    def count(self) -> int:
        """How many PIs are registered (tests and health)."""
        with self._lock:
            return int(self._open().scalar(_COUNT))

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
