"""The merchant POS database: hosted merchants, gateway certificates, orders, replies.

Rule 1: one store (setpay/store.py: SQLite, WAL, 0600) under
``<data_dir>/merchant/<instance>.sqlite``; the schema is Core metadata, versioned by the store
layer; each state change is one ``transaction()``.
Rule 2: never a PAN, account number, PIN, PANSecret or CardSecret: the merchant never has
them. It stores certificates, order text and amounts, ids, digests, its own signed replies
and the gateway's CapToken as opaque bytes.
Rule 3: replies are stored in the shared reply store (``setpay.store.ReplyStore``) under the
request's RRPID with the request digest: the same request again gets the same reply, another
request under that RRPID is a replay.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

import sqlalchemy as sa
from alembic.operations import Operations

from actors.merchant.operators import OPERATORS
from actors.merchant.payments import SCHEMA as PAYMENTS_SCHEMA
from actors.web.sessions import SESSIONS
from protocol import codec
from protocol.messages import CurrAmt
from setpay.store import REPLIES, Connection, Prepared, ReplyStore, Schema, Store, open_store

_MD = sa.MetaData()
B, T, I = sa.LargeBinary, sa.String, sa.BigInteger  # noqa: E741 - column type shorthands
MERCHANTS: Final = sa.Table(
    "merchants", _MD,
    sa.Column("merchant_id", T(64), primary_key=True),
    sa.Column("brand", T(64), nullable=False),
    sa.Column("sig_label", T(128), nullable=False),
    sa.Column("kx_label", T(128), nullable=False),
    sa.Column("sig_cert", B, nullable=False),
    sa.Column("kx_cert", B, nullable=False),
    sa.Column("chain", B, nullable=False),  # msgpack list of CA cert DERs (MCA, Brand)
    sa.Column("root", B, nullable=False),
    sa.Column("bci", B),
    sa.Column("crls", B, nullable=False),
    sa.Column("created", I, nullable=False),
)  # fmt: skip
GATEWAYS: Final = sa.Table(
    "gateways", _MD,
    sa.Column("brand", T(64), primary_key=True),
    sa.Column("kx_cert", B, nullable=False),
    sa.Column("chain", B, nullable=False),
    sa.Column("added", I, nullable=False),
)  # fmt: skip
ORDERS: Final = sa.Table(
    "orders", _MD,
    sa.Column("lid_m", B, primary_key=True),
    sa.Column("merchant_id", T(64), sa.ForeignKey("merchants.merchant_id"), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("currency", T(8), nullable=False),
    sa.Column("amount", I, nullable=False),
    sa.Column("sale", sa.Boolean, nullable=False),
    sa.Column("state", B, nullable=False),  # encoded protocol.states.MachineState
    sa.Column("xid", B, unique=True),
    *(sa.Column(c, B) for c in ("trans_ids", "chall_c", "chall_m", "pe_thumb")),
    sa.Column("brand", T(64)),
    sa.Column("bin", T(16)),
    *(sa.Column(c, B) for c in ("preq_digest", "cardholder_thumb", "auth_req", "auth_rrpid")),
    *(sa.Column(c, I) for c in ("completion", "auth_code", "auth_amount", "cap_amount")),
    sa.Column("cap_token", B),
    sa.Column("pres_data", B),
    sa.Column("created", I, nullable=False),
    sa.Column("updated", I, nullable=False),
    # split shipment: the first authorization asks only ``first_amount`` of the purchase; the
    # gateway's AuthToken for the rest is kept opaque, replaced at each next shipment
    sa.Column("first_amount", I),
    sa.Column("auth_token", B),
    # the PReq's OIData (order side only: no PAN), kept with the AuthReq so an authorization
    # the gateway left unanswered is finished later without the cardholder (service Rule 4)
    sa.Column("oi_data", B),
)  # fmt: skip


# The orders whose AuthReq is still unanswered, for the silent-authorization sweep (service
# Rule 4): a partial index, so the sweep reads only those and never scans the order history.
_UNANSWERED = sa.and_(ORDERS.c.auth_req.is_not(None), ORDERS.c.completion.is_(None))
sa.Index("orders_unanswered", ORDERS.c.updated, sqlite_where=_UNANSWERED,
         postgresql_where=_UNANSWERED)  # fmt: skip


def _v2_split_shipment(op: Operations) -> None:
    op.add_column("orders", sa.Column("first_amount", I))
    op.add_column("orders", sa.Column("auth_token", B))


def _v3_oi_data(op: Operations) -> None:
    op.add_column("orders", sa.Column("oi_data", B))


def _v4_unanswered_index(op: Operations) -> None:
    where = sa.text("auth_req IS NOT NULL AND completion IS NULL")
    op.create_index("orders_unanswered", "orders", ["updated"], sqlite_where=where,
                    postgresql_where=where)  # fmt: skip


SCHEMA: Final = Schema(
    "merchant", _MD, steps=(_v2_split_shipment, _v3_oi_data, _v4_unanswered_index)
)
# Every component the POS's one store holds.
STORE_SCHEMAS: Final = (SCHEMA, REPLIES, PAYMENTS_SCHEMA, SESSIONS, OPERATORS)


@dataclass(frozen=True)
class MerchantRow:
    merchant_id: str
    brand: str
    sig_label: str
    kx_label: str
    sig_cert: bytes
    kx_cert: bytes
    chain: list[bytes]
    root: bytes
    bci: bytes | None
    crls: list[bytes]


@dataclass(frozen=True)
class OrderRow:
    lid_m: bytes
    merchant_id: str
    description: str
    amount: CurrAmt
    sale: bool
    state: bytes
    xid: bytes | None
    trans_ids: bytes | None
    chall_c: bytes | None
    chall_m: bytes | None
    pe_thumb: bytes | None
    brand: str | None
    bin: str | None
    preq_digest: bytes | None
    cardholder_thumb: bytes | None
    auth_req: bytes | None
    auth_rrpid: bytes | None
    completion: int | None
    auth_code: int | None
    auth_amount: int | None
    cap_amount: int | None
    cap_token: bytes | None
    pres_data: bytes | None
    first_amount: int | None = None
    auth_token: bytes | None = None
    oi_data: bytes | None = None


_ORDER_COLUMNS: Final = tuple(c.name for c in ORDERS.columns)
_MERCHANT_COLUMNS: Final = tuple(c.name for c in MERCHANTS.columns)


def _list(data: bytes) -> list[bytes]:
    return list(codec.unpackb(bytes(data)))


def _bytes(data: bytes | memoryview | None) -> bytes | None:
    return None if data is None else bytes(data)


class MerchantStore:
    """One instance's database (Rules 1-3)."""

    def __init__(self, db: Store, path: Path) -> None:
        self.db = db
        self.path = path
        self.replies = ReplyStore(db)
        # The look-ups of every purchase message, compiled once (setpay/store.py Prepared).
        key = sa.bindparam("k")
        self._by_lid = db.prepare(sa.select(ORDERS).where(ORDERS.c.lid_m == key))
        self._by_xid = db.prepare(sa.select(ORDERS).where(ORDERS.c.xid == key))
        self._merchant = db.prepare(sa.select(MERCHANTS).where(MERCHANTS.c.merchant_id == key))
        self._gateway = db.prepare(
            sa.select(GATEWAYS.c.kx_cert, GATEWAYS.c.chain).where(GATEWAYS.c.brand == key)
        )

    def _one(self, query: Prepared, key: object) -> tuple[Any, ...] | None:
        with self.db.read() as db:
            rows, _ = query.run(db, {"k": key})
        return rows[0] if rows else None

    @classmethod
    def open(cls, data_dir: Path, instance: str, *, group_commit: bool = False) -> MerchantStore:
        """``group_commit``: the running POS's (setpay/store.py Rule 5): every write of its
        hot path goes to this one file, and its publishes, acks and HTTPS answers wait for
        the barrier."""
        path = Path(data_dir) / "merchant" / f"{instance}.sqlite"
        return cls(open_store(path, STORE_SCHEMAS, group_commit=group_commit), path)

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> AbstractContextManager[Connection]:
        """One atomic change (setpay/store.py): committed on exit, rolled back on error."""
        return self.db.transaction()

    # -- merchants and gateways ---------------------------------------------------------------

    def save_merchant(self, row: MerchantRow, now_ms: int) -> None:
        values = {
            "merchant_id": row.merchant_id, "brand": row.brand, "sig_label": row.sig_label,
            "kx_label": row.kx_label, "sig_cert": row.sig_cert, "kx_cert": row.kx_cert,
            "chain": codec.packb(row.chain), "root": row.root, "bci": row.bci,
            "crls": codec.packb(row.crls), "created": now_ms,
        }  # fmt: skip
        with self.transaction() as db:
            db.execute(self.db.upsert(MERCHANTS, values))

    def merchant(self, merchant_id: str) -> MerchantRow | None:
        found = self._one(self._merchant, merchant_id)
        if found is None:
            return None
        r = SimpleNamespace(**dict(zip(_MERCHANT_COLUMNS, found, strict=True)))
        return MerchantRow(
            r.merchant_id, r.brand, r.sig_label, r.kx_label, bytes(r.sig_cert),
            bytes(r.kx_cert), _list(r.chain), bytes(r.root), _bytes(r.bci), _list(r.crls),
        )  # fmt: skip

    def merchant_ids(self) -> list[str]:
        m = MERCHANTS.c
        return [r[0] for r in self.db.all(sa.select(m.merchant_id).order_by(m.merchant_id))]

    def save_gateway(self, brand: str, kx_cert: bytes, chain: list[bytes], now_ms: int) -> None:
        values = {"brand": brand, "kx_cert": kx_cert, "chain": codec.packb(chain), "added": now_ms}
        with self.transaction() as db:
            db.execute(self.db.upsert(GATEWAYS, values))

    def gateway(self, brand: str) -> tuple[bytes, list[bytes]] | None:
        r = self._one(self._gateway, brand)
        return None if r is None else (bytes(r[0]), _list(r[1]))

    # -- orders ---------------------------------------------------------------------------------

    def add_order(
        self, lid_m: bytes, merchant_id: str, description: str, amount: CurrAmt, sale: bool,
        state: bytes, now_ms: int, first_amount: int | None = None,
    ) -> None:  # fmt: skip
        with self.transaction() as db:
            db.execute(
                sa.insert(ORDERS).values(
                    lid_m=lid_m, merchant_id=merchant_id, description=description,
                    currency=amount.currency, amount=amount.amount, sale=sale, state=state,
                    created=now_ms, updated=now_ms, first_amount=first_amount,
                )
            )  # fmt: skip

    def _order(self, query: Prepared, key: bytes) -> OrderRow | None:
        found = self._one(query, key)
        if found is None:
            return None
        r = SimpleNamespace(**{
            k: bytes(v) if isinstance(v, memoryview) else v
            for k, v in zip(_ORDER_COLUMNS, found, strict=True)
        })  # fmt: skip
        return OrderRow(
            r.lid_m, r.merchant_id, r.description, CurrAmt(r.currency, r.amount),
            bool(r.sale), r.state, r.xid, r.trans_ids, r.chall_c, r.chall_m,
            r.pe_thumb, r.brand, r.bin, r.preq_digest, r.cardholder_thumb,
            r.auth_req, r.auth_rrpid, r.completion, r.auth_code, r.auth_amount,
            r.cap_amount, r.cap_token, r.pres_data, r.first_amount, r.auth_token, r.oi_data,
        )  # fmt: skip

    def order(self, lid_m: bytes) -> OrderRow | None:
        return self._order(self._by_lid, lid_m)

    def order_by_xid(self, xid: bytes) -> OrderRow | None:
        return self._order(self._by_xid, xid)

    def orders_of(self, merchant_id: str, limit: int = 100) -> list[OrderRow]:
        """The newest ``limit`` orders of one merchant (the POS console's list)."""
        o = ORDERS.c
        rows = self.db.all(sa.select(o.lid_m).where(o.merchant_id == merchant_id)
                           .order_by(o.created.desc(), o.lid_m).limit(limit))  # fmt: skip
        return [row for (lid,) in rows if (row := self.order(lid)) is not None]

    def unanswered_auths(self, before_ms: int, limit: int = 32) -> list[bytes]:
        """Orders whose committed AuthReq got no answer (no completion) and that have not
        changed since ``before_ms``, oldest first (service Rule 4)."""
        o = ORDERS.c
        query = (sa.select(o.lid_m)
                 .where(_UNANSWERED, o.updated < before_ms)
                 .order_by(o.updated).limit(limit))  # fmt: skip
        return [bytes(lid) for (lid,) in self.db.all(query)]

    def update_order(
        self, db: Connection, lid_m: bytes, now_ms: int, *,
        expect: Mapping[str, object] | None = None, **cols: object,
    ) -> bool:  # fmt: skip
        """Set ``cols`` of one order inside the caller's transaction; with ``expect`` only
        while those columns still hold those values (another replica may have moved the
        order on: a compare-and-set). True when the row changed."""
        o = ORDERS.c
        where = [o.lid_m == lid_m]
        for name, value in (expect or {}).items():
            where.append(o[name].is_(None) if value is None else o[name] == value)
        done = db.execute(sa.update(ORDERS).where(*where).values(**cols, updated=now_ms))
        return bool(done.rowcount == 1)

    # -- replies --------------------------------------------------------------------------------

    def reply_for(self, rrpid: bytes) -> tuple[bytes, str, bytes] | None:
        """(request digest, reply type, reply) stored under ``rrpid``."""
        r = self.replies.get(rrpid)
        return None if r is None else (r.digest, r.reply_type, r.reply)

    def save_reply(
        self, db: Connection, rrpid: bytes, digest: bytes, reply_type: str,
        reply: bytes, now_ms: int,
    ) -> None:  # fmt: skip
        self.replies.save(db, rrpid, digest, reply_type, reply, now_ms)
