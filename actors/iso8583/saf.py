"""The link's journal (setpay/store.py): sent requests by RRN and the store-and-forward queue;
SQLite (WAL) by default, PostgreSQL given a URL.

Rule 1: a request is journalled as ``sent`` before its bytes leave, so a crash between
send and answer is found at the next start and turned into a reversal.
Rule 2: "no answer" and "queue the reversal" are one transaction: a timed-out request
always has its reversal stored; a queued reversal stays ``pending`` until the host's answer
settles it (acked or failed), so it is forwarded until acknowledged, across restarts.
Rule 3: only non-sensitive fields are journalled (no field 2, 14, 52, 102): the reversal is
located by field 90, so the journal never holds an account number or PIN block.
Rule 4: the RRN is the primary key of ``requests``: the database refuses a second journal
entry for one RRN.
Rule 5: an advice or reversal queued for a caller's own key (``enqueue_keyed``: completions,
refunds, partial reversals, reversals of advices) is queued once per key (``saf.key`` is
unique): a caller that queues again after a crash finds its entry instead of a second one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from alembic.operations import Operations

from actors.iso8583 import spec
from setpay.store import Connection, Schema, open_store

_MD = sa.MetaData()
META: Final = sa.Table(
    "meta",
    _MD,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("value", sa.String(), nullable=False),
)
REQUESTS: Final = sa.Table(
    "requests",
    _MD,
    sa.Column("rrn", sa.String(), primary_key=True),
    sa.Column("mti", sa.String(), nullable=False),
    sa.Column("stan", sa.String(), nullable=False),
    sa.Column("fields", sa.Text, nullable=False),  # JSON of the non-sensitive fields
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("response_code", sa.String()),
    sa.Column("approval_code", sa.String()),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.CheckConstraint("state IN ('sent', 'answered', 'timed_out')", name="requests_state"),
)
SAF: Final = sa.Table(
    "saf",
    _MD,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rrn", sa.String(), nullable=False),
    sa.Column("mti", sa.String(), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("response_code", sa.String()),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("done_at", sa.Float),
    sa.Column("key", sa.String(), unique=True),  # Rule 5: the caller's key, if it gave one
    sa.CheckConstraint("state IN ('pending', 'acked', 'failed')", name="saf_state"),
    sa.Index("saf_state_ix", "state"),  # what is still owed, counted without a scan
    sqlite_autoincrement=True,  # ids are never reused: the queue's order is the id's
)


def _add_saf_key(op: Operations) -> None:
    with op.batch_alter_table("saf") as batch:
        batch.add_column(sa.Column("key", sa.String()))
        batch.create_unique_constraint("uq_saf_key", ["key"])


def _index_saf_state(op: Operations) -> None:
    op.create_index("saf_state_ix", "saf", ["state"])


SCHEMA: Final = Schema("iso8583_journal", _MD, steps=(_add_saf_key, _index_saf_state))
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

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        group_commit: bool = False,
    ) -> None:
        """Open (creating or migrating) the journal at ``path``, or at a ``postgresql://`` URL.
        ``group_commit``: setpay/store.py Rule 5 (the link then awaits the barrier before it
        writes to the host)."""
        self.clock = clock
        self.db = open_store(path, [SCHEMA], group_commit=group_commit)
        self._stans: list[int] = []

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> AbstractContextManager[Connection]:
        """One atomic change (setpay/store.py): committed on exit, rolled back on error."""
        return self.db.transaction()

    def next_stan(self) -> str:
        """A STAN never reused within 999,999 requests, across restarts.

        STANs are reserved in blocks of ``STAN_BLOCK`` (one commit per block); a restart
        skips the rest of a block, which only leaves a gap."""
        if not self._stans:
            with self._tx() as db:
                value = db.execute(sa.select(META.c.value).where(META.c.key == "stan")).scalar()
                last = int(value) if value is not None else 0
                block = [(last + i) % 999_999 + 1 for i in range(STAN_BLOCK)]
                db.execute(self.db.upsert(META, {"key": "stan", "value": str(block[-1])}))
            self._stans = block[::-1]
        return f"{self._stans.pop():06d}"

    def get(self, rrn: str) -> Journalled | None:
        r = REQUESTS.c
        row = self.db.one(
            sa.select(r.rrn, r.mti, r.stan, r.state, r.response_code, r.approval_code).where(
                r.rrn == rrn
            )
        )
        return None if row is None else Journalled(*row)

    def fields(self, rrn: str) -> dict[str, str] | None:
        """The journalled (non-sensitive) fields of the request ``rrn``, or None."""
        value = self.db.scalar(sa.select(REQUESTS.c.fields).where(REQUESTS.c.rrn == rrn))
        return None if value is None else dict(json.loads(value))

    def record_sent(self, rrn: str, message: spec.Message) -> None:
        """Journal ``message`` (its non-sensitive fields) as sent, before it is written."""
        kept = {k: str(v) for k, v in message.items() if k not in spec.SENSITIVE_FIELDS}
        with self._tx() as db:
            db.execute(
                sa.insert(REQUESTS).values(
                    rrn=rrn,
                    mti=message["t"],
                    stan=message["11"],
                    fields=json.dumps(kept),
                    state="sent",
                    updated_at=self.clock(),
                )
            )

    def forget(self, rrn: str) -> None:
        """Drop a journalled request that never left (the write failed)."""
        r = REQUESTS.c
        with self._tx() as db:
            db.execute(sa.delete(REQUESTS).where(r.rrn == rrn, r.state == "sent"))

    def record_answer(self, rrn: str, code: str, approval: str) -> None:
        r = REQUESTS.c
        with self._tx() as db:
            db.execute(
                sa.update(REQUESTS)
                .where(r.rrn == rrn, r.state == "sent")
                .values(
                    state="answered",
                    response_code=code,
                    approval_code=approval,
                    updated_at=self.clock(),
                )
            )

    def time_out(self, rrn: str, reversal_stan: str, f7: str) -> bool:
        """Mark ``rrn`` unanswered and queue its reversal advice; False if already settled."""
        r = REQUESTS.c
        with self._tx() as db:
            fields = db.execute(sa.select(r.fields).where(r.rrn == rrn, r.state == "sent")).scalar()
            if fields is None:
                return False
            original: dict[str, str] = json.loads(fields)
            db.execute(
                sa.update(REQUESTS)
                .where(r.rrn == rrn)
                .values(state="timed_out", updated_at=self.clock())
            )
            self._enqueue(db, rrn, spec.REVERSAL_ADVICE, original, reversal_stan, f7)
            return True

    def enqueue_reversal(self, rrn: str, reversal_stan: str, f7: str) -> bool:
        """Queue a reversal (0400) of an answered request; False if unknown or not answered."""
        r = REQUESTS.c
        with self._tx() as db:
            fields = db.execute(
                sa.select(r.fields).where(r.rrn == rrn, r.state == "answered")
            ).scalar()
            if fields is None:
                return False
            self._enqueue(db, rrn, spec.REVERSAL_REQUEST, json.loads(fields), reversal_stan, f7)
            return True

    def _enqueue(
        self,
        db: Connection,
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
            sa.insert(SAF).values(
                rrn=rrn,
                mti=mti,
                message=json.dumps(message),
                state="pending",
                created_at=self.clock(),
            )
        )

    def enqueue_keyed(
        self,
        key: str,
        rrn: str,
        mti: str,
        stan: str,
        f7: str,
        extra: dict[str, str],
        *,
        original_key: str | None = None,
    ) -> bool:
        """Queue ``mti`` under ``key`` (Rule 5), naming in field 90 the answered request
        ``rrn`` or, with ``original_key``, the queued entry of that key; ``extra`` fields
        replace the copied ones. True if queued now or before; False if the original is
        unknown (or not answered)."""
        r, q = REQUESTS.c, SAF.c
        with self._tx() as db:
            if db.execute(sa.select(q.id).where(q.key == key)).first() is not None:
                return True
            if original_key is None:
                fields = db.execute(
                    sa.select(r.fields).where(r.rrn == rrn, r.state == "answered")
                ).scalar()
            else:
                fields = db.execute(sa.select(q.message).where(q.key == original_key)).scalar()
            if fields is None:
                return False
            original: dict[str, str] = json.loads(fields)
            message: spec.Message = {"t": mti, "7": f7, "11": stan}
            message.update({k: original[k] for k in REVERSAL_FIELDS if k in original})
            message["90"] = spec.original_data(
                original["t"], original["11"], original["7"], original["32"]
            )
            message.update(extra)
            db.execute(
                sa.insert(SAF).values(
                    rrn=rrn,
                    mti=mti,
                    message=json.dumps(message),
                    state="pending",
                    created_at=self.clock(),
                    key=key,
                )
            )
            return True

    def keyed(self, key: str) -> tuple[str, str, int] | None:
        """(MTI, state, attempts) of the entry queued under ``key``, or None."""
        q = SAF.c
        row = self.db.one(sa.select(q.mti, q.state, q.attempts).where(q.key == key))
        return None if row is None else (str(row[0]), str(row[1]), int(row[2]))

    def keyed_states(self, keys: list[str]) -> dict[str, str]:
        """The state of each entry queued under one of ``keys`` (absent keys are missing),
        in chunks of a few hundred keys per query."""
        q = SAF.c
        out: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            for key, state in self.db.all(sa.select(q.key, q.state).where(q.key.in_(chunk))):
                out[str(key)] = str(state)
        return out

    def unanswered(self) -> list[str]:
        """RRNs journalled as sent but never settled (a crash happened in between)."""
        r = REQUESTS.c
        return [row.rrn for row in self.db.all(sa.select(r.rrn).where(r.state == "sent"))]

    def next_pending(self) -> SafEntry | None:
        """The oldest reversal not yet settled, or None."""
        q = SAF.c
        row = self.db.one(
            sa.select(q.id, q.rrn, q.mti, q.message, q.attempts)
            .where(q.state == "pending")
            .order_by(q.id)
            .limit(1)
        )
        if row is None:
            return None
        return SafEntry(row.id, row.rrn, row.mti, json.loads(row.message), row.attempts)

    def attempted(self, entry_id: int) -> None:
        """Count one more send of entry ``entry_id`` (it stays pending)."""
        q = SAF.c
        with self._tx() as db:
            db.execute(sa.update(SAF).where(q.id == entry_id).values(attempts=q.attempts + 1))

    def settle(self, entry_id: int, code: str, *, acked: bool) -> None:
        """Close entry ``entry_id`` with the host's answer: acked, or failed for good."""
        q = SAF.c
        with self._tx() as db:
            db.execute(
                sa.update(SAF)
                .where(q.id == entry_id)
                .values(
                    state="acked" if acked else "failed",
                    response_code=code,
                    attempts=q.attempts + 1,
                    done_at=self.clock(),
                )
            )

    def unsettled_count(self) -> int:
        """Entries not acknowledged by the host: pending, or failed for good."""
        q = SAF.c
        return int(
            self.db.scalar(sa.select(sa.func.count()).where(q.state.in_(("pending", "failed"))))
        )

    def pending_count(self) -> int:
        q = SAF.c
        return int(self.db.scalar(sa.select(sa.func.count()).where(q.state == "pending")))

    def saf_entries(self, rrn: str) -> list[tuple[str, str, int]]:
        """(MTI, state, attempts) of every queued reversal of ``rrn``, oldest first."""
        q = SAF.c
        rows = self.db.all(sa.select(q.mti, q.state, q.attempts).where(q.rrn == rrn).order_by(q.id))
        return [(str(a), str(b), int(c)) for a, b, c in rows]
