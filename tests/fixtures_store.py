"""Where a store under test lives: a SQLite file, or a throw-away PostgreSQL database.

``store_target`` is parametrized over both backends; the PostgreSQL database is created on
``SETPAY_TEST_POSTGRES`` (default: the local server, user postgres) and dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from setpay.store import Store

PG_ADMIN = os.environ.get("SETPAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | Path]:
    """A path under a fresh directory, or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield tmp_path / "data" / "store.sqlite"
        return
    name = f"setpay_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield sa.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def roll_back_to(store: Store, component: str, version: int, *undo: str) -> None:
    """Make ``store`` look as a store of ``component`` at ``version`` left it: run the ``undo``
    DDL of the later steps and record ``version``; then close it (the next open migrates)."""
    with store.transaction() as db:
        for statement in undo:
            db.execute(sa.text(statement))
        db.execute(sa.text("UPDATE setpay_schema SET version = :v WHERE component = :c"),
                   {"v": version, "c": component})  # fmt: skip
    store.close()
