"""Placement (setpay/store.py Rule 6): with a server database configured, every store under
the data dir lives in that database, one schema per store path, shared by every opener."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from setpay import store
from setpay.config import ConfigError, load
from setpay.store import REPLIES, ReplyStore, namespace_of, open_store, store_exists
from tests.fixtures_store import PG_ADMIN
from tests.setpay.test_store import items_v1

pytestmark = pytest.mark.integration


@pytest.fixture
def placed(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A throw-away PostgreSQL database that the stores under ``tmp_path/var`` go to."""
    name = f"setpay_test_{tmp_path.name[-12:].replace('-', '_').lower()}_placed"
    data_dir = tmp_path / "var"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
        url = sa.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
        store.use_database(url, data_dir)
        try:
            yield url, data_dir
        finally:
            store.use_database("", data_dir)
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def schemas(url: str) -> dict[str, set[str]]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")).all()
    finally:
        engine.dispose()
    out: dict[str, set[str]] = {}
    for ns, table in rows:
        out.setdefault(ns, set()).add(table)
    return out


def test_each_store_path_is_a_schema_of_its_own_in_the_server_database(
    placed: tuple[str, Path],
) -> None:
    url, data_dir = placed
    schema, items = items_v1()
    pos1, pos2 = data_dir / "merchant" / "pos1.sqlite", data_dir / "merchant" / "pos2.sqlite"
    assert not store_exists(pos1)
    a = open_store(pos1, [schema, REPLIES])
    b = open_store(pos2, [schema, REPLIES])
    try:
        with a.transaction() as db:
            db.execute(sa.insert(items).values(id=1, name="only in pos1"))
        assert b.all(sa.select(items)) == []  # same table names, another schema
        assert a.path is None and a.dialect == "postgresql"
    finally:
        a.close()
        b.close()
    assert not pos1.exists() and not pos1.parent.exists()  # no file was made
    assert store_exists(pos1) and store_exists(pos2)
    found = schemas(url)
    assert found["merchant_pos1"] >= {"items", "replies", "setpay_schema"}
    assert found["merchant_pos2"] >= {"items", "replies", "setpay_schema"}
    # another opener of the same path (a replica, a CLI) meets the same rows
    again = open_store(data_dir / "merchant" / "pos1.sqlite", [schema, REPLIES])
    try:
        assert [r.name for r in again.all(sa.select(items.c.name))] == ["only in pos1"]
        replies = ReplyStore(again)
        with again.transaction() as db:
            replies.save(db, b"rid", b"digest", "Ack", b"reply", 0)
        assert replies.lookup(b"rid", b"digest") is not None
    finally:
        again.close()


def test_a_path_outside_the_data_dir_stays_a_sqlite_file(
    placed: tuple[str, Path], tmp_path: Path,
) -> None:
    schema, _ = items_v1()
    outside = tmp_path / "elsewhere" / "x.sqlite"
    s = open_store(outside, [schema])
    try:
        assert s.dialect == "sqlite" and outside.is_file()
    finally:
        s.close()


def test_namespaces_are_valid_schema_names(tmp_path: Path) -> None:
    data = tmp_path / "var"
    assert namespace_of(data / "gateway" / "pg1" / "ledger.sqlite", data) == "gateway_pg1_ledger"
    assert namespace_of(data / "keystore-used-pi.sqlite", data) == "keystore_used_pi"
    long = namespace_of(data / ("x" * 80) / "store.sqlite", data)
    assert len(long) <= 63 and long != namespace_of(data / ("x" * 81) / "store.sqlite", data)


def test_config_takes_only_a_postgresql_url_without_a_password() -> None:
    assert load({"SETPAY_CONFIG": "", "SETPAY_STORE_URL": "postgresql://u@db/setpay"}).store_url
    with pytest.raises(ConfigError, match="postgresql://"):
        load({"SETPAY_CONFIG": "", "SETPAY_STORE_URL": "mysql://u@db/setpay"})
    with pytest.raises(ConfigError, match="password") as refused:
        load({"SETPAY_CONFIG": "", "SETPAY_STORE_URL": "postgresql://u:hunter2@db/setpay"})
    assert "hunter2" not in str(refused.value)
