"""The issuer's account store (actors/issuer/accounts.py) on SQLite and on PostgreSQL: a
transmission key is applied once, a reversal restores once, a late original is refused."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.iso8583.codes import ResponseCode
from actors.issuer.accounts import AccountRecord, Decision, Effect, Snapshot, Store, TxRequest
from tests.fixtures_store import store_target  # noqa: F401 - the fixture

CARD = b"pan-index-card"
BANK = b"pan-index-bank"


@pytest.fixture
def store(store_target: str | Path) -> Iterator[Store]:  # noqa: F811 - the imported fixture
    """A fresh account store on each backend with one card and one bank account."""
    opened = Store(store_target, clock=lambda: 1_700_000_000.0)
    opened.put_account(AccountRecord(CARD, "card", "visa", "1111", "3012", 10_000, 0))
    opened.put_account(AccountRecord(BANK, "bank", "bank", "2222", None, 0, 5_000))
    yield opened
    opened.close()


def approve(effect: Effect) -> Callable[[Snapshot | None], Decision]:
    """A decision function that approves a known account with ``effect``."""

    def decide(snap: Snapshot | None) -> Decision:
        assert snap is not None
        return Decision(ResponseCode.APPROVED, effect, pin_tries=0)

    return decide


def tx(key: str, pan_index: bytes, amount: int, fingerprint: bytes = b"fp") -> TxRequest:
    return TxRequest(key, "RRN000000001", "0100", fingerprint, pan_index, amount)


def test_a_key_is_applied_once_and_a_reversal_restores_once(store: Store) -> None:
    first = store.process(tx("k1", CARD, 3_000), approve(Effect.HOLD), lambda: "123456")
    assert (first.code, first.approval_code, first.last4) == (
        ResponseCode.APPROVED,
        "123456",
        "1111",
    )
    snap = store.snapshot(CARD)
    assert snap is not None and (snap.held, snap.available, snap.recent_approvals) == (
        3_000,
        7_000,
        1,
    )
    again = store.process(tx("k1", CARD, 3_000), approve(Effect.HOLD), lambda: "999999")
    assert again.duplicate and again.approval_code == "123456"  # the stored answer
    other = store.process(tx("k1", CARD, 1, b"other"), approve(Effect.HOLD), lambda: "1")
    assert other.code is ResponseCode.DUPLICATE_TRANSMISSION
    assert store.snapshot(CARD).held == 3_000  # type: ignore[union-attr]
    assert store.reverse("rev1", "k1", "RRN000000001") is True
    assert store.reverse("rev1", "k1", "RRN000000001") is False  # a redelivered reversal
    assert store.reverse("rev2", "k1", "RRN000000001") is False  # already reversed
    assert store.snapshot(CARD).held == 0  # type: ignore[union-attr]
    assert store.reversal_count("k1") == 2


def test_postings_move_balances_and_reverse(store: Store) -> None:
    store.process(tx("d1", BANK, 1_200), approve(Effect.POSTING), lambda: "000001")
    assert store.account(BANK).balance == 3_800  # type: ignore[union-attr]
    assert store.reverse("rd1", "d1", "RRN000000001") is True
    assert store.account(BANK).balance == 5_000  # type: ignore[union-attr]


def test_a_reversal_before_its_original_refuses_the_original(store: Store) -> None:
    assert store.reverse("rev9", "late", "RRN000000009") is False
    late = store.process(tx("late", CARD, 100), approve(Effect.HOLD), lambda: "1")
    assert late.code is ResponseCode.INVALID_TRANSACTION and late.duplicate
    assert store.snapshot(CARD).held == 0  # type: ignore[union-attr]


def test_put_account_replaces(store: Store) -> None:
    store.put_account(AccountRecord(CARD, "card", "visa", "1111", "3012", 20_000, 0, stolen=True))
    account = store.account(CARD)
    assert account is not None and account.credit_limit == 20_000 and account.stolen
    assert store.account(b"unknown") is None
