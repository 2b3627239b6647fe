"""Group commit (setpay/durability.py, setpay/store.py Rule 5): commits of an opted-in store
reach the disk in shared rounds, and nothing leaves the process before its round: a publish
waits, a consumed message is acked only after the handler's commit is on disk, a sync that
fails is retried, closing syncs. Against a real SQLite file and the real RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.connection import connect
from broker.consumer import Delivery, consume
from broker.topology import SET_EXCHANGE, declare_actor
from setpay.durability import GROUP
from setpay.store import Schema, Store, open_store
from tests.broker.test_delivery import role_name

MD = sa.MetaData()
ITEMS = sa.Table("items", MD, sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("name", sa.String(40), nullable=False))  # fmt: skip
SCHEMA = Schema("items", MD)


class SlowSync:
    """Wraps a store's ``sync_to_disk`` (the real fdatasync) with a delay, recording rounds."""

    def __init__(self, store: Store, delay: float, fail: int = 0) -> None:
        self.store, self.delay, self.fail = store, delay, fail
        self.real = store.sync_to_disk
        self.done_at: list[float] = []
        self.observed: list[object] = []  # what a test wants to see while the disk works
        self.watch = lambda: None
        store.sync_to_disk = self  # type: ignore[method-assign]

    def __call__(self) -> None:
        self.observed.append(self.watch())
        time.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise OSError("disk away")
        self.real()
        self.done_at.append(time.monotonic())


def insert(store: Store, n: int) -> int:
    with store.transaction() as db:
        db.execute(sa.insert(ITEMS).values(id=n, name=f"item {n}"))
    return GROUP._committed  # the number of this commit (one loop, no interleaving)


def synchronous(store: Store) -> int:
    with store.read() as db:
        return int(db.exec_driver_sql("PRAGMA synchronous").scalar())


async def test_an_opted_in_store_commits_unsynced_until_the_barrier(tmp_path: Path) -> None:
    plain = open_store(tmp_path / "plain.sqlite", [SCHEMA])
    store = open_store(tmp_path / "group.sqlite", [SCHEMA], group_commit=True)
    try:
        assert synchronous(plain) == 2  # FULL: every other store syncs at each commit
        assert synchronous(store) == 1  # NORMAL: the barrier syncs
        await GROUP.barrier()
        rounds = GROUP.rounds
        insert(plain, 1)
        assert not GROUP.pending()  # a FULL store reports nothing
        n = insert(store, 1)
        assert GROUP.pending()
        await GROUP.barrier()
        assert GROUP.synced >= n and not GROUP.pending()
        # at least this store's round (the suite's session-scoped actors commit meanwhile)
        assert GROUP.rounds >= rounds + 1
        rounds, synced = GROUP.rounds, GROUP.synced
        await GROUP.barrier()  # nothing new of ours: a round only for another store's commit
        assert GROUP.rounds == rounds or GROUP.synced > synced
    finally:
        plain.close()
        store.close()


async def test_commits_made_while_a_round_runs_share_the_next(tmp_path: Path) -> None:
    store = open_store(tmp_path / "group.sqlite", [SCHEMA], group_commit=True)
    slow = SlowSync(store, 0.05)
    try:
        await GROUP.barrier()  # the migration's commit
        rounds, synced_before = GROUP.rounds, len(slow.done_at)

        async def one(n: int) -> None:
            await asyncio.sleep(0.001 * (n % 7))
            number = insert(store, n)
            await GROUP.barrier()
            assert GROUP.synced >= number  # never answered before its own commit is on disk

        await asyncio.gather(*(one(n) for n in range(40)))
        assert 1 <= GROUP.rounds - rounds <= 5  # 40 commits, a handful of fdatasyncs
        assert len(slow.done_at) - synced_before == GROUP.rounds - rounds
        with store.read() as db:
            assert db.execute(sa.select(sa.func.count()).select_from(ITEMS)).scalar() == 40
    finally:
        store.close()


async def test_a_failed_sync_raises_and_the_store_stays_due(tmp_path: Path) -> None:
    store = open_store(tmp_path / "group.sqlite", [SCHEMA], group_commit=True)
    await GROUP.barrier()  # the migration's commit
    slow = SlowSync(store, 0.0, fail=1)
    try:
        n = insert(store, 1)
        with pytest.raises(OSError):
            await GROUP.barrier()
        assert GROUP.pending() and GROUP.synced < n
        await GROUP.barrier()  # the next round syncs it
        assert GROUP.synced >= n and len(slow.done_at) == 1
    finally:
        store.close()


async def test_closing_syncs_what_was_committed(tmp_path: Path) -> None:
    store = open_store(tmp_path / "group.sqlite", [SCHEMA], group_commit=True)
    await GROUP.barrier()  # the migration's commit
    slow = SlowSync(store, 0.0)
    n = insert(store, 1)
    store.close()
    assert GROUP.synced >= n and len(slow.done_at) == 1
    reopened = open_store(tmp_path / "group.sqlite", [SCHEMA])
    try:
        with reopened.read() as db:
            assert db.execute(sa.select(ITEMS.c.name)).scalar() == "item 1"
    finally:
        reopened.close()


@pytest.mark.integration
async def test_publish_and_ack_wait_for_the_round(broker_vhost, tmp_path: Path) -> None:
    store = open_store(tmp_path / "group.sqlite", [SCHEMA], group_commit=True)
    await GROUP.barrier()  # the migration's commit
    slow = SlowSync(store, 0.3)
    bus = await connect(broker_vhost.url, name="t")
    role = role_name()
    channel = await bus.channel()
    await declare_actor(channel, role, "main")
    received: list[float] = []
    handled_commits: list[int] = []

    async def handler(delivery: Delivery) -> None:
        received.append(time.monotonic())
        if delivery.body == b"commit in the handler":
            handled_commits.append(insert(store, 2))

    consumer = await consume(bus, f"set.{role}", handler)
    try:
        # A publish after a commit leaves only once the commit is on disk.
        insert(store, 1)
        await bus.publish(role, bus.message(b"after a commit"), exchange=SET_EXCHANGE)
        for _ in range(500):
            if received:
                break
            await asyncio.sleep(0.01)
        assert received and slow.done_at and received[0] >= slow.done_at[0]
        # A handler's commit is synced before its message is acked: while the disk works
        # the consumer has not counted (acked) it yet.
        slow.watch = lambda: consumer.handled
        before = consumer.handled
        await bus.publish(role, bus.message(b"commit in the handler"), exchange=SET_EXCHANGE)
        for _ in range(500):
            if consumer.handled > before:
                break
            await asyncio.sleep(0.01)
        assert consumer.handled == before + 1
        assert handled_commits and GROUP.synced >= handled_commits[0]
        assert slow.observed[-1] == before  # the round ran before the ack
    finally:
        await consumer.stop()
        await bus.close()
        store.close()


async def test_commits_reach_the_disk_across_files_in_the_order_they_were_made(
    tmp_path: Path,
) -> None:
    ledger = open_store(tmp_path / "ledger.sqlite", [SCHEMA], group_commit=True)
    journal = open_store(tmp_path / "journal.sqlite", [SCHEMA], group_commit=True)
    full = open_store(tmp_path / "full.sqlite", [SCHEMA])
    await GROUP.barrier()  # the migrations' commits
    slow = SlowSync(ledger, 0.0)
    try:
        first = insert(ledger, 1)
        insert(ledger, 2)  # the same file: no sync needed between its own commits
        assert GROUP.pending() and not slow.done_at
        # A transaction on another group-commit file syncs the ledger's commits first ...
        second = insert(journal, 1)
        assert len(slow.done_at) == 1 and GROUP.synced >= first
        assert GROUP.synced < second  # ... its own waits for the barrier
        # ... and so does one on a store that syncs at every commit.
        insert(ledger, 3)
        insert(full, 1)
        assert len(slow.done_at) == 2 and not GROUP.pending()
    finally:
        for store in (ledger, journal, full):
            store.close()
