"""Started purchases in the wallet's store (actors/wallet/store.py Rule 4), on SQLite and on
PostgreSQL: two wallet replicas opened on one store see each other's started purchases, a
purchase is claimed by one replica at a time however many race for it, a dead claimer's
purchase (and the PReq it stored) is taken over once its lease ran out, expired rows are neither
claimable nor kept, each cardholder holds a bounded number, and a reopened store (a restarted
wallet) keeps them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.wallet.store import SCHEMA, StartedRow, WalletStore
from actors.web.sessions import SESSIONS
from setpay.store import open_store
from tests.fixtures_store import store_target  # noqa: F401 - the fixture

NOW = 1_800_000_000_000


def opened(target: str | Path) -> WalletStore:
    return WalletStore(open_store(target, [SCHEMA, SESSIONS]), Path("unused"))


@pytest.fixture
def replicas(store_target: str | Path) -> Iterator[tuple[WalletStore, WalletStore]]:  # noqa: F811
    first, second = opened(store_target), opened(store_target)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def row(pid: str, user: str = "hanako", started: int = NOW) -> StartedRow:
    return StartedRow(pid, user, "card-1", "merchant.pos1", b"offer", b"machine",
                      "2 books", "JPY", 12_800, started)  # fmt: skip


def claim(store: WalletStore, pid: str, user: str = "hanako", *, owner: str = "wallet.main",
          now: int = NOW, not_before: int = NOW - 300_000) -> StartedRow | str:
    return store.claim_started(pid, user, not_before=not_before, owner=owner, now=now,
                               lease_ms=30_000)  # fmt: skip


def test_a_purchase_one_replica_started_is_finished_by_another_once(
    replicas: tuple[WalletStore, WalletStore],
) -> None:
    first, second = replicas
    first.save_started(row("p1"), expire_before=NOW - 300_000, keep=10)
    assert second.started("p1", "hanako", not_before=NOW - 300_000) == row("p1")
    assert second.started("p1", "mallory", not_before=NOW - 300_000) is None  # not theirs
    assert claim(second, "p1", "mallory") == "gone"
    assert claim(second, "p1", owner="wallet.main@1") == row("p1")
    assert claim(first, "p1") == "busy"  # the other replica holds it
    second.drop_started("p1")  # it finished
    assert claim(first, "p1") == "gone"
    assert first.started_count() == 0


def test_a_dead_claimers_purchase_is_taken_over_with_its_preq_after_the_lease(
    replicas: tuple[WalletStore, WalletStore],
) -> None:
    first, second = replicas
    first.save_started(row("p1"), expire_before=0, keep=10)
    assert claim(first, "p1", owner="wallet.main@1") == row("p1")
    first.record_preq("p1", b"the PReq as sent", b"check", b"machine after PReq")
    # the claimer dies here: nobody takes it while its lease runs
    assert claim(second, "p1", now=NOW + 29_000) == "busy"
    taken = claim(second, "p1", now=NOW + 31_000)
    assert isinstance(taken, StartedRow)
    assert (taken.preq, taken.preq_check, taken.machine) == \
        (b"the PReq as sent", b"check", b"machine after PReq")  # fmt: skip


def test_racing_replicas_claim_each_purchase_exactly_once(
    replicas: tuple[WalletStore, WalletStore],
) -> None:
    first, second = replicas
    for n in range(40):
        first.save_started(row(f"p{n}", user=f"u{n}"), expire_before=0, keep=10)
    won: list[tuple[str, str]] = []
    gate = threading.Barrier(2)

    def race(store: WalletStore, who: str) -> None:
        gate.wait()
        for n in range(40):
            if isinstance(claim(store, f"p{n}", f"u{n}", owner=who), StartedRow):
                won.append((who, f"p{n}"))

    threads = [threading.Thread(target=race, args=(s, w))
               for s, w in ((first, "a"), (second, "b"))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p for _, p in won) == sorted(f"p{n}" for n in range(40))  # each exactly once


def test_expired_rows_are_not_claimable_and_not_kept(
    replicas: tuple[WalletStore, WalletStore],
) -> None:
    first, second = replicas
    first.save_started(row("old", started=NOW - 400_000), expire_before=0, keep=10)
    assert claim(second, "old") == "gone"
    first.save_started(row("new"), expire_before=NOW - 300_000, keep=10)
    assert first.started_count() == 1  # the expired one was dropped


def test_each_cardholder_holds_a_bounded_number_oldest_dropped(
    replicas: tuple[WalletStore, WalletStore],
) -> None:
    first, _ = replicas
    for n in range(6):
        first.save_started(row(f"p{n}", started=NOW + n), expire_before=0, keep=4)
    first.save_started(row("other", user="taro"), expire_before=0, keep=4)
    kept = [f"p{n}" for n in range(6)
            if first.started(f"p{n}", "hanako", not_before=0) is not None]  # fmt: skip
    assert kept == ["p2", "p3", "p4", "p5"]
    assert first.started("other", "taro", not_before=0) is not None


def test_a_reopened_store_keeps_started_purchases(store_target: str | Path) -> None:  # noqa: F811
    store = opened(store_target)
    store.save_started(row("p1"), expire_before=0, keep=10)
    store.close()
    again = opened(store_target)
    try:
        assert claim(again, "p1") == row("p1")
    finally:
        again.close()
