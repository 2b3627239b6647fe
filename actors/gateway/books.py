"""The gateway's books after authorization: payments, batches and batch items, one store per
gateway instance (setpay/store.py) beside the authorization ledger.

Rule 1: a payment (one authorization, keyed by its AuthReq RRPID) carries its state in the
gateway's transaction table (protocol/states.py ``GATEWAY_TRANSACTION``) and its money:
``authorized`` (what the hold still covers), ``captured``, ``credited``. A batch carries its
state in ``GATEWAY_BATCH``. Nothing else moves them.
Rule 2 (money invariants, checked on every write by ``check``): 0 <= captured <= authorized
at capture; 0 <= credited <= captured; a reversal item moves no money of its own (it only
marks its target dead); an item joins only an open batch; a closed batch changes no more;
a batch settles once.
Rule 3: a request's effects (payments, batch, items) and its stored reply (the shared reply
store, under the request's RRPID) commit in one transaction, so a redelivered request finds
its answer and nothing twice. Every ISO 8583 message an effect owes the issuer host (a
completion, refund or reversal) is an ``OUTBOX`` row written in that same transaction;
``queued`` turns true once the link's journal holds it, and ``unqueued`` lists those a crash
left behind (queued again at start; the journal queues one message per key, saf.py Rule 5).
Rule 4: never a PAN, expiry or secret: ids, amounts, codes, states.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic.operations import Operations

from actors.gateway.errors import GatewayError
from protocol.messages import BatchItemKind
from protocol.states import GatewayBatch, GatewayTransaction
from setpay.store import REPLIES, Connection, ReplyStore, Schema, StoredReply, open_store

_MD = sa.MetaData()
B, T, I = sa.LargeBinary, sa.String, sa.BigInteger  # noqa: E741 - column type shorthands
PAYMENTS: Final = sa.Table(
    "payments", _MD,
    sa.Column("auth_rrpid", B, primary_key=True),
    sa.Column("merchant_id", T(64), nullable=False, index=True),
    sa.Column("xid", B, nullable=False),
    sa.Column("trans_ids", B, nullable=False),
    sa.Column("currency", T(8), nullable=False),
    sa.Column("rrn", T(12), nullable=False),
    sa.Column("state", T(32), nullable=False),
    sa.Column("authorized", I, nullable=False),
    sa.Column("captured", I, nullable=False),
    sa.Column("credited", I, nullable=False),
    sa.Column("capture_item", sa.Integer),  # the live capture, while there is one
    sa.Column("updated", I, nullable=False),
    sa.CheckConstraint("captured >= 0 AND credited >= 0 AND credited <= captured",
                       name="payments_money"),
)  # fmt: skip
BATCHES: Final = sa.Table(
    "batches", _MD,
    sa.Column("merchant_id", T(64), primary_key=True),
    sa.Column("batch_id", I, primary_key=True),
    sa.Column("state", T(16), nullable=False),
    sa.Column("currency", T(8), nullable=False),
    sa.Column("opened", I, nullable=False),
    sa.Column("closed", I),
    sa.Column("closed_by", B),  # the RRPID of the BatchAdminReq that closed it
    sa.Column("settled", I),
    sa.Column("host_code", T(4)),  # the issuer host's 0510 answer
    sa.Column("next_seq", I, nullable=False),
)  # fmt: skip
ITEMS: Final = sa.Table(
    "items", _MD,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("merchant_id", T(64), nullable=False),
    sa.Column("batch_id", I, nullable=False),
    sa.Column("seq", I, nullable=False),
    sa.Column("auth_rrpid", B, nullable=False),
    sa.Column("kind", sa.Integer, nullable=False),
    sa.Column("amount", I, nullable=False),
    sa.Column("live", sa.Boolean, nullable=False),  # False once reversed
    sa.Column("reverses", sa.Integer),
    sa.Column("request", B, nullable=False),
    sa.Column("advice_key", T(96), unique=True),  # the host message it owes (OUTBOX key)
    sa.Column("created", I, nullable=False),
    sa.UniqueConstraint("merchant_id", "batch_id", "seq", name="items_seq"),
    sa.Index("items_batch", "merchant_id", "batch_id"),
    sa.Index("items_payment", "auth_rrpid"),
    sqlite_autoincrement=True,
)  # fmt: skip
OUTBOX: Final = sa.Table(
    "outbox", _MD,
    sa.Column("key", T(96), primary_key=True),
    sa.Column("rrn", T(12), nullable=False),
    sa.Column("mti", T(4), nullable=False),
    sa.Column("fields", sa.Text, nullable=False),  # JSON of the non-sensitive fields it sets
    sa.Column("original_key", T(96)),  # an advice it reverses, else the authorization's RRN
    sa.Column("queued", sa.Boolean, nullable=False),
    sa.Column("created", I, nullable=False),
    sa.Index("outbox_queued", "queued"),
)  # fmt: skip


def _index_outbox_queued(op: Operations) -> None:
    op.create_index("outbox_queued", "outbox", ["queued"])


SCHEMA: Final = Schema("gateway_books", _MD, steps=(_index_outbox_queued,))


def books_path(data_dir: Path, instance: str) -> Path:
    """Beside the authorization ledger and the link journal of the instance."""
    return data_dir / "gateway" / instance / "books.sqlite"


class BooksError(GatewayError):
    """A write that would break a money invariant (a bug, never a merchant's mistake)."""


@dataclass
class Payment:
    auth_rrpid: bytes
    merchant_id: str
    xid: bytes
    trans_ids: bytes
    currency: str
    rrn: str
    state: str
    authorized: int
    captured: int
    credited: int
    capture_item: int | None
    updated: int


@dataclass
class Batch:
    merchant_id: str
    batch_id: int
    state: str
    currency: str
    opened: int
    closed: int | None = None
    closed_by: bytes | None = None
    settled: int | None = None
    host_code: str | None = None
    next_seq: int = 1


@dataclass
class Item:
    merchant_id: str
    batch_id: int
    seq: int
    auth_rrpid: bytes
    kind: BatchItemKind
    amount: int
    live: bool
    reverses: int | None
    request: bytes
    advice_key: str | None
    created: int
    id: int | None = None


@dataclass
class Advice:
    """One host message owed (Rule 3)."""

    key: str
    rrn: str
    mti: str
    fields: str
    original_key: str | None
    queued: bool
    created: int


@dataclass(frozen=True, slots=True)
class Totals:
    """A batch's totals by transaction type (live items; reversed ones are out)."""

    captures: tuple[int, int] = (0, 0)  # (count, amount)
    capture_reversals: tuple[int, int] = (0, 0)
    credits: tuple[int, int] = (0, 0)
    credit_reversals: tuple[int, int] = (0, 0)

    @property
    def debit(self) -> tuple[int, int]:
        """What settles as debits: captures not reversed."""
        return self.captures

    @property
    def credit(self) -> tuple[int, int]:
        return self.credits


def check(p: Payment) -> None:
    """Rule 2 on one payment."""
    if not (0 <= p.credited <= p.captured) or p.authorized < 0:
        raise BooksError(f"money invariant broken for payment {p.auth_rrpid[:4].hex()}")
    if p.state == GatewayTransaction.AUTHORIZED and p.captured:
        raise BooksError("an authorized payment holds no capture")


@dataclass
class Work:
    """The rows one request reads and changes, flushed in one transaction (Rule 3)."""

    payments: dict[bytes, Payment] = field(default_factory=dict)
    batches: dict[tuple[str, int], Batch] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)  # new items
    outbox: list[Advice] = field(default_factory=list)
    dead: dict[int, Item] = field(default_factory=dict)  # existing items marked reversed
    dirty_payments: set[bytes] = field(default_factory=set)
    dirty_batches: set[tuple[str, int]] = field(default_factory=set)


def _row(cls: type, row: Any) -> Any:
    values = dict(row._mapping)
    if cls is Item:
        values["kind"] = BatchItemKind(values["kind"])
        values["request"] = bytes(values["request"])
        values["auth_rrpid"] = bytes(values["auth_rrpid"])
    if cls is Payment:
        for k in ("auth_rrpid", "xid", "trans_ids"):
            values[k] = bytes(values[k])
    if cls is Batch and values.get("closed_by") is not None:
        values["closed_by"] = bytes(values["closed_by"])
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


class Books:
    """The gateway's books (Rules 1-4); synchronous, short transactions."""

    def __init__(self, path: Path | str) -> None:
        self.db = open_store(path, [SCHEMA, REPLIES])
        self.replies = ReplyStore(self.db)

    def close(self) -> None:
        self.db.close()

    # -- reads ----------------------------------------------------------------------------------

    def reply(self, rrpid: bytes) -> StoredReply | None:
        return self.replies.get(rrpid)

    def payment(self, auth_rrpid: bytes) -> Payment | None:
        row = self.db.one(sa.select(PAYMENTS).where(PAYMENTS.c.auth_rrpid == auth_rrpid))
        return None if row is None else _row(Payment, row)

    def batch(self, merchant_id: str, batch_id: int) -> Batch | None:
        b = BATCHES.c
        row = self.db.one(
            sa.select(BATCHES).where(b.merchant_id == merchant_id, b.batch_id == batch_id)
        )
        return None if row is None else _row(Batch, row)

    def open_batch(self, merchant_id: str, currency: str) -> Batch | None:
        """The merchant's newest open batch in ``currency``, or None."""
        b = BATCHES.c
        row = self.db.one(
            sa.select(BATCHES)
            .where(b.merchant_id == merchant_id, b.state == GatewayBatch.OPEN,
                   b.currency == currency)
            .order_by(b.batch_id.desc())
            .limit(1)
        )  # fmt: skip
        return None if row is None else _row(Batch, row)

    def next_batch_id(self, merchant_id: str) -> int:
        b = BATCHES.c
        top = self.db.scalar(sa.select(sa.func.max(b.batch_id)).where(b.merchant_id == merchant_id))
        return int(top or 0) + 1

    def item(self, item_id: int) -> Item | None:
        row = self.db.one(sa.select(ITEMS).where(ITEMS.c.id == item_id))
        return None if row is None else _row(Item, row)

    def items_of(self, merchant_id: str, batch_id: int) -> list[Item]:
        i = ITEMS.c
        rows = self.db.all(
            sa.select(ITEMS).where(i.merchant_id == merchant_id, i.batch_id == batch_id)
            .order_by(i.seq)
        )  # fmt: skip
        return [_row(Item, r) for r in rows]

    def live_credits(self, auth_rrpid: bytes) -> list[Item]:
        """The payment's credits not reversed, newest first."""
        i = ITEMS.c
        rows = self.db.all(
            sa.select(ITEMS)
            .where(i.auth_rrpid == auth_rrpid, i.kind == int(BatchItemKind.CREDIT), i.live)
            .order_by(i.id.desc())
        )
        return [_row(Item, r) for r in rows]

    def totals(self, merchant_id: str, batch_id: int) -> Totals:
        i = ITEMS.c
        rows = self.db.all(
            sa.select(i.kind, sa.func.count(), sa.func.coalesce(sa.func.sum(i.amount), 0))
            .where(i.merchant_id == merchant_id, i.batch_id == batch_id, i.live)
            .group_by(i.kind)
        )
        by = {BatchItemKind(k): (int(n), int(s)) for k, n, s in rows}
        return Totals(
            by.get(BatchItemKind.CAPTURE, (0, 0)),
            by.get(BatchItemKind.CAPTURE_REVERSAL, (0, 0)),
            by.get(BatchItemKind.CREDIT, (0, 0)),
            by.get(BatchItemKind.CREDIT_REVERSAL, (0, 0)),
        )

    def unqueued(self) -> list[Advice]:
        o = OUTBOX.c
        rows = self.db.all(sa.select(OUTBOX).where(sa.not_(o.queued)).order_by(o.created))
        return [_row(Advice, r) for r in rows]

    def unqueued_count(self) -> int:
        """Host messages committed and not yet in the link's journal (Rule 3)."""
        o = OUTBOX.c
        return int(self.db.scalar(sa.select(sa.func.count()).where(sa.not_(o.queued))))

    def advice_keys(self, merchant_id: str, batch_id: int) -> list[str]:
        """Every host message key the batch's items owe (their reversals' included)."""
        i = ITEMS.c
        rows = self.db.all(
            sa.select(i.advice_key).where(
                i.merchant_id == merchant_id, i.batch_id == batch_id, i.advice_key.is_not(None)
            )
        )
        return [str(r[0]) for r in rows]

    def report(self, brand: str, merchant_id: str | None = None) -> list[dict[str, Any]]:
        """Settlement totals per batch, by brand and transaction type (what ``setpay gateway
        batches`` prints): counts and amounts of live captures, capture reversals, credits
        and credit reversals, the net, the state and the issuer host's reconciliation code."""
        b = BATCHES.c
        stmt = sa.select(BATCHES).order_by(b.merchant_id, b.batch_id)
        if merchant_id is not None:
            stmt = stmt.where(b.merchant_id == merchant_id)
        out = []
        for row in self.db.all(stmt):
            batch = _row(Batch, row)
            t = self.totals(batch.merchant_id, batch.batch_id)
            out.append({
                "merchant": batch.merchant_id, "batch": batch.batch_id, "brand": brand,
                "state": batch.state, "currency": batch.currency,
                "captures": list(t.captures), "capture_reversals": list(t.capture_reversals),
                "credits": list(t.credits), "credit_reversals": list(t.credit_reversals),
                "net": t.debit[1] - t.credit[1], "host": batch.host_code,
            })  # fmt: skip
        return out

    def count(self, table: sa.Table) -> int:
        return int(self.db.scalar(sa.select(sa.func.count()).select_from(table)))

    # -- writes ---------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.db.transaction() as db:
            yield db

    def commit(
        self,
        work: Work,
        rrpid: bytes,
        digest: bytes,
        reply_type: str,
        reply: bytes,
        now_ms: int,
    ) -> list[Item]:
        """Write ``work`` and the reply in one transaction (Rule 3); the new items, with ids."""
        for key in work.dirty_payments:
            check(work.payments[key])
        written: list[Item] = []
        with self._tx() as db:
            for key in work.dirty_batches:
                b = work.batches[key]
                db.execute(self.db.upsert(BATCHES, _values(b)))
            for item in work.items:
                values = _values(item)
                values.pop("id")
                values["kind"] = int(item.kind)
                new_id = db.execute(sa.insert(ITEMS).values(values)).inserted_primary_key[0]
                written.append(replace(item, id=int(new_id)))
            # a reversal names the item it reverses; a capture's payment names its item
            for item in written:
                p = work.payments.get(item.auth_rrpid)
                if item.kind is BatchItemKind.CAPTURE and p is not None:
                    p.capture_item = item.id
            for item_id in work.dead:
                db.execute(sa.update(ITEMS).where(ITEMS.c.id == item_id).values(live=False))
            for key in work.dirty_payments:
                db.execute(self.db.upsert(PAYMENTS, _values(work.payments[key])))
            for advice in work.outbox:
                db.execute(sa.insert(OUTBOX).values(_values(advice)))
            self.replies.save(db, rrpid, digest, reply_type, reply, now_ms)
        return written

    def save_batch(self, batch: Batch) -> None:
        with self._tx() as db:
            db.execute(self.db.upsert(BATCHES, _values(batch)))

    def save_batch_with_reply(
        self, batch: Batch, rrpid: bytes, digest: bytes, reply_type: str, reply: bytes, now: int
    ) -> None:
        with self._tx() as db:
            db.execute(self.db.upsert(BATCHES, _values(batch)))
            self.replies.save(db, rrpid, digest, reply_type, reply, now)

    def save_reply(
        self, rrpid: bytes, digest: bytes, reply_type: str, reply: bytes, now: int
    ) -> None:
        with self._tx() as db:
            self.replies.save(db, rrpid, digest, reply_type, reply, now)

    def mark_queued(self, key: str) -> None:
        with self._tx() as db:
            db.execute(sa.update(OUTBOX).where(OUTBOX.c.key == key).values(queued=True))


def _values(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}
