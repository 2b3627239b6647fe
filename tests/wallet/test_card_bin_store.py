"""Cards keep what PInitReq names (wallet store v4), on SQLite and on PostgreSQL: a card
enrolled now keeps its merchant BIN and kind, and a store of v3 opened by this code gains the
columns with its cards' left NULL (their purchases open the sealed card to start, as before:
actors/wallet/service.py ``start_purchase``)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from actors.wallet.store import SCHEMA, CardRow, WalletStore
from actors.web.sessions import SESSIONS
from protocol import pan
from setpay.store import open_store
from tests.fixtures_store import roll_back_to, store_target  # noqa: F401 - the fixture

PAN = "4111111111111111"


def opened(target: str | Path) -> WalletStore:
    return WalletStore(open_store(target, [SCHEMA, SESSIONS]), Path("unused"))


def card(card_id: str, **named: object) -> CardRow:
    return CardRow(card_id, "hanako", "alpha", PAN[-4:], f"wallet.main/card-{card_id}",
                   b"cert", [b"ca"], b"root", b"sealed", **named)  # type: ignore[arg-type]  # fmt: skip


def test_a_card_keeps_its_merchant_bin_and_kind_and_no_more(
    store_target: str | Path,  # noqa: F811
) -> None:
    store = opened(store_target)
    try:
        assert store.add_cardholder("hanako", b"salt", b"hash", 1, 0)
        account = pan.Account(pan.AccountKind.CARD, PAN)
        store.add_card(card("c1", merchant_bin=pan.merchant_bin(account),
                            kind=int(account.kind)), 0)  # fmt: skip
        got = store.card("c1")
        assert got is not None and (got.merchant_bin, got.kind) == ("411111", 1)
        row = store.db.one(sa.select(sa.text("*")).select_from(sa.table("cards")))
        assert row is not None and not any(PAN[:8] in str(v) for v in row)  # a BIN, not a PAN
    finally:
        store.close()


def test_a_v3_store_gains_the_columns_and_its_cards_start_as_before(
    store_target: str | Path,  # noqa: F811
) -> None:
    store = opened(store_target)
    assert store.add_cardholder("hanako", b"salt", b"hash", 1, 0)
    store.add_card(card("old"), 0)
    roll_back_to(store.db, "wallet", 3, "ALTER TABLE cards DROP COLUMN merchant_bin",
                 "ALTER TABLE cards DROP COLUMN kind")  # as a v3 store left it
    store = opened(store_target)
    try:
        assert store.db.versions()["wallet"] == 4
        old = store.card("old")
        assert old is not None and old.merchant_bin is None and old.kind is None
        store.add_card(card("new", merchant_bin="411111", kind=1), 1)
        new = store.card("new")
        assert new is not None and new.merchant_bin == "411111"
    finally:
        store.close()
