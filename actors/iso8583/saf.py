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
Rule 6 (replicas): several processes of one gateway identity share one journal. STANs are
reserved in blocks from one counter row, created once and then read ``FOR UPDATE`` under the
store's write lock (SQLite: ``BEGIN IMMEDIATE``), so two processes never hold the same STAN.
Each request row names its ``owner`` (the process that sent it, setpay.config.process_name);
``unanswered(owner=, older_than=)`` finds a process's own rows or anyone's stale ones.
Rule 7 (compare-and-set): ``record_answer`` and ``time_out`` change only a row still ``sent``
and say whether they did: an answer arriving after another process timed the row out (and
queued its reversal) is late, and never turns the row into an approval.
Rule 8 (SAF leases): ``claim(owner, lease)`` takes the oldest pending entry that no live lease
of another process holds and whose RRN has no older pending entry (an RRN's advices and
reversals reach the host in the order queued); ``settle`` closes an entry only while it is
pending, so two processes racing on one entry settle it once; ``attempted`` counts a failed
send and gives the lease back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

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
    sa.Column("owner", sa.String()),  # Rule 6: the process that sent it (None: before replicas)
    sa.CheckConstraint("state IN ('sent', 'answered', 'timed_out')", name="requests_state"),
    sa.Index("requests_state_updated_ix", "state", "updated_at"),  # stale rows without a scan
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
    sa.Column("claimed_by", sa.String()),  # Rule 8: the process forwarding it
    sa.Column("lease_until", sa.Float),  # Rule 8: after it, another process may take over
    sa.CheckConstraint("state IN ('pending', 'acked', 'failed')", name="saf_state"),
    sa.Index("saf_state_ix", "state"),  # what is still owed, counted without a scan
    sa.Index("saf_rrn_ix", "rrn", "id"),  # an RRN's older pending entry (Rule 8)
    sqlite_autoincrement=True,  # ids are never reused: the queue's order is the id's
)


def _add_saf_key(op: Operations) -> None:
    with op.batch_alter_table("saf") as batch:
        batch.add_column(sa.Column("key", sa.String()))
        batch.create_unique_constraint("uq_saf_key", ["key"])


def _index_saf_state(op: Operations) -> None:
    op.create_index("saf_state_ix", "saf", ["state"])


def _add_replicas(op: Operations) -> None:
    """Rules 6-8: request owners, SAF leases, and the indexes their queries use."""
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("owner", sa.String()))
    op.create_index("requests_state_updated_ix", "requests", ["state", "updated_at"])
    with op.batch_alter_table("saf") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String()))
        batch.add_column(sa.Column("lease_until", sa.Float))
    op.create_index("saf_rrn_ix", "saf", ["rrn", "id"])


SCHEMA: Final = Schema(
    "iso8583_journal", _MD, steps=(_add_saf_key, _index_saf_state, _add_replicas)
)
DEFAULT_OWNER: Final = "link"  # a journal used by one process only
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


_ENTRY: Final = (SAF.c.id, SAF.c.rrn, SAF.c.mti, SAF.c.message, SAF.c.attempts)


def _entry(row: sa.Row[Any]) -> SafEntry:
    return SafEntry(row.id, row.rrn, row.mti, json.loads(row.message), row.attempts)


class Journal:
    """The link's persistent state; synchronous, short transactions."""

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        group_commit: bool = False,
        owner: str = DEFAULT_OWNER,
    ) -> None:
        """Open (creating or migrating) the journal at ``path``, or at a ``postgresql://`` URL.
        ``group_commit``: setpay/store.py Rule 5 (the link then awaits the barrier before it
        writes to the host). ``owner``: the process name its request rows carry (Rule 6)."""
        self.clock = clock
        self.owner = owner
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
        skips the rest of a block, which only leaves a gap. Processes sharing the journal
        reserve disjoint blocks (Rule 6)."""
        if not self._stans:
            self._stans = self._reserve_stans()[::-1]
        return f"{self._stans.pop():06d}"

    def _reserve_stans(self) -> list[int]:
        """The next ``STAN_BLOCK`` STANs, taken from the counter row under its row lock."""
        m = META.c
        with self._tx() as db:
            db.execute(self.db.insert_ignore(META).values(key="stan", value="0"))
            value = db.execute(
                sa.select(m.value).where(m.key == "stan").with_for_update()
            ).scalar_one()
            block = [(int(value) + i) % 999_999 + 1 for i in range(STAN_BLOCK)]
            db.execute(sa.update(META).where(m.key == "stan").values(value=str(block[-1])))
        return block

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
                    owner=self.owner,
                )
            )

    def forget(self, rrn: str) -> None:
        """Drop a journalled request that never left (the write failed)."""
        r = REQUESTS.c
        with self._tx() as db:
            db.execute(sa.delete(REQUESTS).where(r.rrn == rrn, r.state == "sent"))

    def record_answer(self, rrn: str, code: str, approval: str) -> bool:
        """Record the host's answer to ``rrn`` if it is still ``sent`` (Rule 7); False when the
        row was settled meanwhile (timed out and reversed, maybe by another process)."""
        r = REQUESTS.c
        with self._tx() as db:
            done = db.execute(
                sa.update(REQUESTS)
                .where(r.rrn == rrn, r.state == "sent")
                .values(
                    state="answered",
                    response_code=code,
                    approval_code=approval,
                    updated_at=self.clock(),
                )
            )
            return bool(done.rowcount)

    def time_out(self, rrn: str, reversal_stan: str, f7: str) -> bool:
        """Mark ``rrn`` unanswered and queue its reversal advice, only while it is still
        ``sent`` (Rule 7); False if already settled (answered, or timed out elsewhere)."""
        r = REQUESTS.c
        with self._tx() as db:
            fields = db.execute(
                sa.select(r.fields).where(r.rrn == rrn, r.state == "sent").with_for_update()
            ).scalar()
            if fields is None:
                return False
            original: dict[str, str] = json.loads(fields)
            db.execute(
                sa.update(REQUESTS)
                .where(r.rrn == rrn, r.state == "sent")
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

    def unanswered(self, *, owner: str | None = None, older_than: float | None = None) -> list[str]:
        """RRNs journalled as sent but never settled (a crash happened in between), oldest
        first; only ``owner``'s rows, and only rows last changed before ``older_than``, when
        given (Rule 6)."""
        r = REQUESTS.c
        stmt = sa.select(r.rrn).where(r.state == "sent").order_by(r.updated_at)
        if owner is not None:
            stmt = stmt.where(r.owner == owner)
        if older_than is not None:
            stmt = stmt.where(r.updated_at < older_than)
        return [row.rrn for row in self.db.all(stmt)]

    def next_pending(self) -> SafEntry | None:
        """The oldest reversal not yet settled, or None (whoever holds it)."""
        q = SAF.c
        row = self.db.one(sa.select(*_ENTRY).where(q.state == "pending").order_by(q.id).limit(1))
        return None if row is None else _entry(row)

    def claim(self, owner: str, lease: float) -> SafEntry | None:
        """Take the oldest pending entry for ``owner`` until ``lease`` seconds from now (Rule
        8): one no other process's live lease holds, whose RRN has no older pending entry.
        None when there is none to take."""
        q, older = SAF.c, SAF.alias("older").c
        now = self.clock()
        earlier_pending = (
            sa.select(older.id)
            .where(older.rrn == q.rrn, older.state == "pending", older.id < q.id)
            .exists()
        )
        free = sa.or_(q.claimed_by.is_(None), q.claimed_by == owner, q.lease_until <= now)
        with self._tx() as db:
            row = db.execute(
                sa.select(*_ENTRY)
                .where(q.state == "pending", free, ~earlier_pending)
                .order_by(q.id)
                .limit(1)
                .with_for_update()
            ).first()
            if row is None:
                return None
            db.execute(
                sa.update(SAF)
                .where(q.id == row.id)
                .values(claimed_by=owner, lease_until=now + lease)
            )
        return _entry(row)

    def attempted(self, entry_id: int) -> None:
        """Count one more send of entry ``entry_id`` (it stays pending) and give its lease
        back (Rule 8): any process may try it next."""
        q = SAF.c
        with self._tx() as db:
            db.execute(
                sa.update(SAF)
                .where(q.id == entry_id, q.state == "pending")
                .values(attempts=q.attempts + 1, claimed_by=None, lease_until=None)
            )

    def settle(self, entry_id: int, code: str, *, acked: bool) -> bool:
        """Close entry ``entry_id`` with the host's answer: acked, or failed for good; only
        while it is pending (Rule 8). False when another process settled it first."""
        q = SAF.c
        with self._tx() as db:
            done = db.execute(
                sa.update(SAF)
                .where(q.id == entry_id, q.state == "pending")
                .values(
                    state="acked" if acked else "failed",
                    response_code=code,
                    attempts=q.attempts + 1,
                    done_at=self.clock(),
                )
            )
            return bool(done.rowcount)

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
