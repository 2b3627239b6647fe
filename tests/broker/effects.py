"""Exactly-once effects for the broker tests, on the store layer (setpay/store.py).

An effect row and the message id's entry in the shared reply store commit in one transaction;
a redelivered message id finds its entry and runs nothing (design principle 5).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import sqlalchemy as sa

from setpay.store import REPLIES, ReplyStore, Schema, open_store

_MD = sa.MetaData()
EFFECTS = sa.Table(  # no key on purpose: a second effect of one message must be countable
    "effects",
    _MD,
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("n", sa.BigInteger, nullable=False),
)
SCHEMA = Schema("broker_test_effects", _MD)


class Effects:
    """A handler's database: its effects and the ids of the messages that caused them."""

    def __init__(self, path: Path) -> None:
        self.store = open_store(path, [REPLIES, SCHEMA])
        self.replies = ReplyStore(self.store)

    def once(self, message_id: str, body: bytes, n: int) -> bool:
        """Record effect ``n`` of ``message_id`` unless already committed; True if it ran."""
        key, digest = message_id.encode(), hashlib.sha256(body).digest()
        with self.store.transaction() as db:
            if self.replies.lookup(key, digest) is not None:
                return False
            db.execute(sa.insert(EFFECTS).values(message_id=message_id, n=n))
            self.replies.save(db, key, digest, "ack", b"", 0)
        return True

    def totals(self) -> tuple[int, int, int]:
        """(effects, distinct message ids, sum of n)."""
        c = EFFECTS.c
        row = self.store.one(
            sa.select(sa.func.count(), sa.func.count(sa.distinct(c.message_id)), sa.func.sum(c.n))
        )
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2] or 0)

    def close(self) -> None:
        self.store.close()
