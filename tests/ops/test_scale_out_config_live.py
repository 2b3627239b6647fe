"""The whole test environment in its scale-out configuration: every store on PostgreSQL
(setpay/store.py Rule 6) and every durable queue a quorum queue (broker/topology.py Rule 8).
`setpay demo` with ``SETPAY_STORE_URL`` and ``SETPAY_BROKER_QUEUE_TYPE=quorum`` runs every row
as expected, every party's store is a schema of the one database (no SQLite file is made), the
vhost's SET, RPC and dead-letter queues are quorum queues, and the merchant's, wallet's and
gateway's schemas hold no PAN in any form, as the SQLite files do not (tests/demo)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from actors.environment import LOAD_PANS
from tests.broker.test_quorum import queue_types
from tests.fixtures_store import PG_ADMIN
from tests.ops.environments import Env, new_env, remove_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PANS = (LOAD_PANS[0], "4000000000000002", "4000000000000010", "4000000000000028")


@pytest.fixture(scope="module")
def pg_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, str, str]]:
    """(environment, database URL, demo output) of one `setpay demo` on a fresh database."""
    name = f"setpay_test_env_{secrets.token_hex(4)}"
    url = sa.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    env = new_env(tmp_path_factory.mktemp("pg-var"), "pg", SETPAY_STORE_URL=url,
                  SETPAY_BROKER_QUEUE_TYPE="quorum")
    try:
        proc = env.setpay("demo", timeout=900)
        yield env, url, proc.stdout + "\n--stderr--\n" + proc.stderr
    finally:
        try:
            remove_env(env)
        finally:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tables(url: str) -> dict[str, list[str]]:
    """schema -> its tables, in the environment's database."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')").fetchall()
    out: dict[str, list[str]] = {}
    for schema, table in rows:
        out.setdefault(schema, []).append(table)
    return out


def test_the_demo_runs_every_row_as_expected_on_postgresql_and_quorum_queues(pg_demo: tuple[Env, str, str]) -> None:
    env, url, out = pg_demo
    assert "rows as expected" in out, out
    assert "<-- expected" not in out
    found = tables(url)
    for schema in ("merchant_pos1", "wallet_main", "gateway_pg1_ledger", "gateway_pg1_link",
                   "ca_ca", "keystore_used_pi"):
        assert schema in found, sorted(found)
    with psycopg.connect(url) as conn:
        orders = conn.execute("SELECT count(*) FROM merchant_pos1.orders").fetchone()
    assert orders is not None and orders[0] >= 7  # one per purchase row of the demo
    made = [p for p in Path(env.data_dir).rglob("*.sqlite*")]
    assert made == [], made  # every store went to the server
    types = queue_types(env.vars["SETPAY_BROKER_VHOST"])
    durable = {n: t for n, (t, _a) in types.items()  # not the exclusive ones: inboxes, the lock
               if not n.startswith("reply.") and n != "setpay.environment.lock"}
    assert {"set.merchant.pos1", "set.gateway.pg1", "keystore.rpc", "setpay.dead"} <= set(durable)
    assert set(durable.values()) == {"quorum"}, durable


def test_no_pan_in_the_merchant_wallet_or_gateway_schemas(pg_demo: tuple[Env, str, str]) -> None:
    _, url, out = pg_demo
    assert "rows as expected" in out
    dumped: list[str] = []
    with psycopg.connect(url) as conn:
        for schema, names in tables(url).items():
            if not schema.startswith(("merchant", "wallet", "gateway")):
                continue
            for table in names:
                rows = conn.execute(f'SELECT t::text FROM "{schema}"."{table}" t').fetchall()
                dumped += [r[0] for r in rows]
    assert len(dumped) > 20  # the rows were read
    blob = "\n".join(dumped)
    for pan in PANS:  # as text, and as bytea's hex
        for form in (pan, pan[4:], pan.encode().hex(), pan.encode("utf-16-le").hex()):
            assert form not in blob
