"""The store layer (setpay/store.py) on SQLite and on a throw-away PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.operations import Operations

from setpay.store import (
    REPLIES,
    IntegrityError,
    ReplyConflict,
    ReplyStore,
    Schema,
    SchemaError,
    Store,
    StoreError,
    open_store,
    widen,
)
from tests.fixtures_store import store_target  # noqa: F401 - the fixture


@pytest.fixture
def target(store_target: str | Path) -> str | Path:  # noqa: F811 - the imported fixture
    """Each test runs on SQLite and on a throw-away PostgreSQL database."""
    return store_target


def items_v1() -> tuple[Schema, sa.Table]:
    md = sa.MetaData()
    t = sa.Table(
        "items",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(40), nullable=False),
    )
    return Schema("items", md), t


def add_flag(op: Operations) -> None:
    op.add_column("items", sa.Column("flag", sa.Integer, nullable=False, server_default="7"))
    op.execute("INSERT INTO step_log (step) VALUES ('add_flag')")


def items_v2() -> tuple[Schema, sa.Table]:
    md = sa.MetaData()
    t = sa.Table(
        "items",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("flag", sa.Integer, nullable=False, server_default="7"),
    )
    return Schema("items", md, steps=(add_flag,)), t


def step_log() -> tuple[Schema, sa.Table]:
    md = sa.MetaData()
    t = sa.Table("step_log", md, sa.Column("step", sa.String(40), nullable=False))
    return Schema("step_log", md), t


def names(store: Store, t: sa.Table) -> list[str]:
    return [r.name for r in store.all(sa.select(t.c.name).order_by(t.c.id))]


def test_files_0600_in_a_0700_directory_wal_and_shm_too(tmp_path: Path) -> None:
    path = tmp_path / "data" / "actor" / "x.sqlite"
    schema, t = items_v1()
    store = open_store(path, [schema])
    try:
        with store.transaction() as db:
            db.execute(sa.insert(t).values(id=1, name="a"))
        wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
        assert wal.exists() and shm.exists()  # WAL mode, the connection still open
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        for p in (path, wal, shm):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    finally:
        store.close()


def test_existing_loose_modes_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "loose" / "x.sqlite"
    path.parent.mkdir(mode=0o755)
    os.chmod(path.parent, 0o755)
    sqlite3.connect(path).close()
    os.chmod(path, 0o644)
    store = open_store(path, [items_v1()[0]])
    store.close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.sqlite", [items_v1()[0]])
    try:
        with store.read() as db:
            pragma = {
                p: db.exec_driver_sql(f"PRAGMA {p}").scalar()
                for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
        expected = {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1}  # 2: FULL
        assert pragma == {**expected, "busy_timeout": 10_000}
    finally:
        store.close()


def test_migrations_applied_once_and_idempotent_on_reopen(target: str | Path) -> None:
    log_schema, log = step_log()
    v1, t1 = items_v1()
    store = open_store(target, [log_schema, v1])
    with store.transaction() as db:
        db.execute(sa.insert(t1).values(id=1, name="a"))
    assert store.versions() == {"step_log": 1, "items": 1}
    store.close()
    v2, t2 = items_v2()
    for _ in range(2):  # upgraded by the first reopen, untouched by the second
        store = open_store(target, [log_schema, v2])
        try:
            assert store.versions() == {"step_log": 1, "items": 2}
            assert store.all(sa.select(log.c.step)) == [("add_flag",)]
            assert store.all(sa.select(t2.c.name, t2.c.flag)) == [("a", 7)]
        finally:
            store.close()


def test_an_older_schema_is_upgraded_by_a_new_step(target: str | Path) -> None:
    log_schema, _ = step_log()
    v1, t1 = items_v1()
    store = open_store(target, [log_schema, v1])
    with store.transaction() as db:
        db.execute(sa.insert(t1).values(id=1, name="old"))
    store.close()
    v2, t2 = items_v2()
    store = open_store(target, [log_schema, v2])
    try:
        with store.transaction() as db:
            db.execute(sa.insert(t2).values(id=2, name="new", flag=1))
        rows = store.all(sa.select(t2.c.name, t2.c.flag).order_by(t2.c.id))
        assert rows == [("old", 7), ("new", 1)]
    finally:
        store.close()


def test_a_fresh_database_is_created_at_the_latest_version(target: str | Path) -> None:
    log_schema, log = step_log()
    v2, t2 = items_v2()
    store = open_store(target, [log_schema, v2])
    try:
        assert store.versions() == {"step_log": 1, "items": 2}
        assert store.all(sa.select(log.c.step)) == []  # created from metadata, not stepped
        with store.transaction() as db:
            db.execute(sa.insert(t2).values(id=1, name="a"))
        assert store.all(sa.select(t2.c.flag)) == [(7,)]
    finally:
        store.close()


def test_newer_refused_unversioned_adopted_only_in_shape(target: str | Path) -> None:
    log_schema, _ = step_log()
    store = open_store(target, [log_schema, items_v2()[0]])
    store.close()
    with pytest.raises(SchemaError, match="version 2"):
        open_store(target, [log_schema, items_v1()[0]])
    other = sa.MetaData()
    legacy = sa.Table("legacy", other, sa.Column("k", sa.Integer, primary_key=True))
    store = open_store(target, [Schema("probe", sa.MetaData())])
    with store.transaction() as db:
        other.create_all(db)  # tables made outside the layer: no version row
        db.execute(sa.insert(legacy).values(k=7))
    store.close()
    # Not in the component's shape (a column it needs is missing): refused, nothing touched.
    wider = sa.MetaData()
    sa.Table("legacy", wider, sa.Column("k", sa.Integer, primary_key=True),
             sa.Column("v", sa.Integer))  # fmt: skip
    with pytest.raises(SchemaError, match="before the store layer"):
        open_store(target, [Schema("legacy", wider)])
    # In its version-1 shape: adopted as version 1, its rows kept.
    store = open_store(target, [Schema("legacy", other)])
    try:
        assert store.versions()["legacy"] == 1
        assert store.scalar(sa.select(legacy.c.k)) == 7
    finally:
        store.close()


def test_transaction_commits_and_rolls_back_on_exception(target: str | Path) -> None:
    schema, t = items_v1()
    store = open_store(target, [schema])
    try:
        with store.transaction() as db:
            db.execute(sa.insert(t).values(id=1, name="kept"))
        with pytest.raises(ZeroDivisionError):
            with store.transaction() as db:
                db.execute(sa.insert(t).values(id=2, name="lost"))
                assert names(store, t) == ["kept", "lost"]  # reads see the open transaction
                _ = 1 / 0
        assert names(store, t) == ["kept"]
        with store.transaction() as db:  # the store is usable afterwards
            db.execute(sa.insert(t).values(id=3, name="after"))
        assert names(store, t) == ["kept", "after"]
    finally:
        store.close()


async def test_transaction_rolls_back_on_cancellation(target: str | Path) -> None:
    schema, t = items_v1()
    store = open_store(target, [schema])
    inside = asyncio.Event()

    async def writer() -> None:
        with store.transaction() as db:
            db.execute(sa.insert(t).values(id=1, name="cancelled"))
            inside.set()
            await asyncio.Event().wait()  # never set: only cancellation ends this

    try:
        task = asyncio.create_task(writer())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert names(store, t) == []
        with store.transaction() as db:
            db.execute(sa.insert(t).values(id=1, name="next"))
        assert names(store, t) == ["next"]
    finally:
        store.close()


def test_write_lock_is_taken_up_front(target: str | Path) -> None:
    """Before the first statement of a transaction, another writer is already shut out."""
    schema, _ = items_v1()
    store = open_store(target, [schema])
    try:
        with store.transaction():
            if store.dialect == "sqlite":
                other = sqlite3.connect(str(target), timeout=0, isolation_level=None)
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
                other.close()
            else:
                key = sa.func.pg_try_advisory_xact_lock(store.lock_key)
                engine = sa.create_engine(store.engine.url)
                with engine.connect() as other:
                    assert other.execute(sa.select(key)).scalar() is False
                engine.dispose()
        with pytest.raises(StoreError, match="already open"):
            with store.transaction():
                with store.transaction():
                    pass
    finally:
        store.close()


def test_insert_ignore_and_upsert(target: str | Path) -> None:
    schema, t = items_v1()
    store = open_store(target, [schema])
    try:
        with store.transaction() as db:
            assert db.execute(store.insert_ignore(t), {"id": 1, "name": "a"}).all() == [(1,)]
            assert db.execute(store.insert_ignore(t), {"id": 1, "name": "b"}).all() == []
            db.execute(store.upsert(t, {"id": 1, "name": "c"}))
            db.execute(store.upsert(t, {"id": 2, "name": "d"}))
        assert names(store, t) == ["c", "d"]
    finally:
        store.close()


def test_reply_store_refuses_same_id_with_other_digest(target: str | Path) -> None:
    store = open_store(target, [REPLIES])
    replies = ReplyStore(store)
    try:
        assert replies.lookup(b"rrpid-1", b"digest-A") is None
        with store.transaction() as db:
            replies.save(db, b"rrpid-1", b"digest-A", "PRes", b"\x00reply", 1_700)
        stored = replies.lookup(b"rrpid-1", b"digest-A")
        assert stored is not None
        assert (stored.reply_type, stored.reply, stored.created_at) == ("PRes", b"\x00reply", 1_700)
        with pytest.raises(ReplyConflict):
            replies.lookup(b"rrpid-1", b"digest-B")
        with pytest.raises(ReplyConflict):  # a second answer: refused, rolled back
            with store.transaction() as db:
                replies.save(db, b"rrpid-1", b"digest-B", "PRes", b"other", 1_800)
        assert replies.get(b"rrpid-1") == stored
        assert replies.count() == 1
    finally:
        store.close()


def test_insert_ignore_skips_only_the_primary_key(target: str | Path) -> None:
    md = sa.MetaData()
    t = sa.Table(
        "uniq",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token", sa.LargeBinary, unique=True),
    )
    store = open_store(target, [Schema("uniq", md)])
    try:
        with store.transaction() as db:
            db.execute(store.insert_ignore(t), {"id": 1, "token": b"a"})
        with pytest.raises(IntegrityError):  # another key, a taken unique value: refused
            with store.transaction() as db:
                db.execute(store.insert_ignore(t), {"id": 2, "token": b"a"})
        assert store.all(sa.select(t.c.id, t.c.token)) == [(1, b"a")]
    finally:
        store.close()


def test_prepared_statements_bind_fixed_values_and_raise_integrity_errors(
    target: str | Path,
) -> None:
    schema, t = items_v1()
    store = open_store(target, [schema])
    insert = store.prepare(sa.insert(t).values(id=sa.bindparam("id"), name=sa.bindparam("name")))
    rename = store.prepare(
        sa.update(t).where(t.c.id == sa.bindparam("key")).values(name="fixed").returning(t.c.id)
    )
    get = store.prepare(sa.select(t.c.id, t.c.name).where(t.c.id == sa.bindparam("key")))
    try:
        with store.transaction() as db:
            assert insert.run(db, {"id": 1, "name": "a"})[1] == 1
            assert rename.run(db, {"key": 1})[0] == [(1,)]
        with store.read() as db:
            assert get.run(db, {"key": 1})[0] == [(1, "fixed")]
            assert get.run(db, {"key": 2})[0] == []
        with pytest.raises(IntegrityError):
            with store.transaction() as db:
                insert.run(db, {"id": 1, "name": "again"})
        assert names(store, t) == ["fixed"]
    finally:
        store.close()


def test_widen_lengthens_a_column_where_the_backend_enforces_lengths(target: str | Path) -> None:
    md1 = sa.MetaData()
    sa.Table("kinds", md1, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("kind", sa.String(4), nullable=False))  # fmt: skip
    open_store(target, [Schema("kinds", md1)]).close()
    md2 = sa.MetaData()
    kinds = sa.Table("kinds", md2, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("kind", sa.String(16), nullable=False))  # fmt: skip

    def longer(op: Operations) -> None:
        widen(op, "kinds", "kind", sa.String(4), sa.String(16))

    store = open_store(target, [Schema("kinds", md2, steps=(longer,))])
    try:
        with store.transaction() as db:
            db.execute(sa.insert(kinds).values(id=1, kind="key_exchange"))
        assert store.scalar(sa.select(kinds.c.kind)) == "key_exchange"
        assert store.versions()["kinds"] == 2
    finally:
        store.close()
