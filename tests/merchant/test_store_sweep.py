"""The silent-authorization sweep reads only unanswered orders (merchant store, v4 index).

``unanswered_auths`` runs every gateway timeout on the POS's event loop. Without an index it
read the whole order history each time (14.5 ms at 3,000 orders of a bench run, growing with
every purchase); the partial index ``orders_unanswered`` holds only the orders whose AuthReq
is still unanswered, so the sweep's cost follows those, not the history.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from actors.merchant.store import (
    _UNANSWERED,
    ORDERS,
    STORE_SCHEMAS,
    MerchantRow,
    MerchantStore,
)
from protocol.messages import CurrAmt
from setpay.store import open_store
from tests.fixtures_store import roll_back_to, store_target  # noqa: F401 - the fixture


def open_pos(target: str | Path) -> MerchantStore:
    return MerchantStore(open_store(target, STORE_SCHEMAS), Path("unused"))


def seed(store: MerchantStore) -> None:
    store.save_merchant(MerchantRow("M-1", "alpha", "s", "k", b"c", b"c", [], b"r", None, []), 0)
    for i in range(30):  # answered, unanswered and not yet sent, updated at i ms
        lid = i.to_bytes(4, "big")
        store.add_order(lid, "M-1", f"order {i}", CurrAmt("JPY", 100), False, b"s", i)
        with store.transaction() as db:
            if i % 3 == 0:
                continue  # no AuthReq yet
            cols = {"auth_req": b"authreq"} | ({"completion": 1} if i % 3 == 1 else {})
            store.update_order(db, lid, i, **cols)


def test_the_sweep_finds_exactly_the_unanswered_orders_oldest_first(
    store_target: str | Path,  # noqa: F811
) -> None:
    store = open_pos(store_target)
    try:
        seed(store)
        unanswered = [i.to_bytes(4, "big") for i in range(30) if i % 3 == 2]
        assert store.unanswered_auths(before_ms=1_000, limit=100) == unanswered
        assert store.unanswered_auths(before_ms=1_000, limit=3) == unanswered[:3]
        assert store.unanswered_auths(before_ms=9, limit=100) == unanswered[:3]  # 2, 5, 8
        with store.transaction() as db:  # an answer takes the order out of the sweep
            store.update_order(db, unanswered[0], 40, completion=1)
        assert store.unanswered_auths(before_ms=1_000, limit=100) == unanswered[1:]
    finally:
        store.close()


def test_sqlite_answers_the_sweep_from_the_partial_index(tmp_path: Path) -> None:
    store = open_pos(tmp_path / "pos.sqlite")
    try:
        seed(store)
        # the query unanswered_auths runs, as SQLite plans it
        query = (sa.select(ORDERS.c.lid_m).where(_UNANSWERED, ORDERS.c.updated < 5)
                 .order_by(ORDERS.c.updated).limit(32))  # fmt: skip
        sql = str(query.compile(dialect=store.db.engine.dialect,
                                compile_kwargs={"literal_binds": True}))  # fmt: skip
        with store.db.engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        assert "USING INDEX orders_unanswered" in plan and "SCAN orders" not in plan, plan
    finally:
        store.close()


def test_a_v3_store_gets_the_index_when_opened(store_target: str | Path) -> None:  # noqa: F811
    store = open_pos(store_target)
    roll_back_to(store.db, "merchant", 3, "DROP INDEX orders_unanswered")
    store = open_pos(store_target)
    try:
        assert store.db.versions()["merchant"] == 4
        names = {i["name"] for i in sa.inspect(store.db.engine).get_indexes("orders")}
        assert "orders_unanswered" in names
        seed(store)
        assert len(store.unanswered_auths(before_ms=1_000, limit=100)) == 10
    finally:
        store.close()
