"""The used-PI register (keystore/register.py) on SQLite and on PostgreSQL, without a token: a
PI opens once, only its own crash-retry may reopen it, and the database itself refuses a
second entry for one PI, also between workers racing on it."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from keystore.errors import PiPreviouslyUsed, TokenUnavailable
from keystore.register import SCHEMA, USED_PI, UsedPiRegister
from setpay.store import IntegrityError, open_store
from tests.fixtures_store import store_target  # noqa: F401 - the fixture

PI = b"\x11" * 32
KEY = b"\x01" * 32


@pytest.fixture
def register(store_target: str | Path) -> Iterator[UsedPiRegister]:  # noqa: F811 - the fixture
    opened = UsedPiRegister(store_target)
    yield opened
    opened.close()


def test_a_pi_opens_once_unless_its_own_retry(register: UsedPiRegister) -> None:
    register.claim(PI, "gateway.a", KEY)
    register.claim(PI, "gateway.a", KEY)  # the same transaction retried after a crash
    for caller, key in (("gateway.a", None), ("gateway.a", b"\x02" * 32), ("gateway.b", KEY)):
        with pytest.raises(PiPreviouslyUsed):
            register.claim(PI, caller, key)
    register.claim(b"\x22" * 32, "gateway.a", None)
    with pytest.raises(PiPreviouslyUsed):  # no use key: no retry either
        register.claim(b"\x22" * 32, "gateway.a", None)
    assert register.count() == 2


def test_the_database_refuses_a_second_entry(
    register: UsedPiRegister,
    store_target: str | Path,  # noqa: F811 - the fixture
) -> None:
    register.claim(PI, "gateway.a", None)
    store = open_store(store_target, [SCHEMA])  # another writer, past the register's code
    try:
        with pytest.raises(IntegrityError), store.transaction() as db:
            db.execute(sa.insert(USED_PI).values(digest=PI, caller="gateway.b", used_at=0.0))
    finally:
        store.close()
    assert register.count() == 1


def test_racing_workers_one_wins(store_target: str | Path) -> None:  # noqa: F811 - the fixture
    """Four registers on one database (as four worker processes would hold) claim one PI:
    exactly one claim succeeds. Each opens its store first, one after the other: what races
    here is the claim, not the creation of a fresh SQLite file."""
    workers = [UsedPiRegister(store_target) for _ in range(4)]
    assert [w.count() for w in workers] == [0, 0, 0, 0]

    def claim(i: int) -> bool:
        try:
            workers[i].claim(PI, f"gateway.{i}", bytes([i]) * 32)
        except PiPreviouslyUsed:
            return False
        return True

    try:
        with ThreadPoolExecutor(4) as pool:
            won = list(pool.map(claim, range(4)))
        assert won.count(True) == 1 and workers[0].count() == 1
    finally:
        for w in workers:
            w.close()


def test_file_is_private_and_an_unusable_register_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "data" / "used-pi.sqlite"
    register = UsedPiRegister(path)
    register.claim(PI, "gateway.a", None)
    register.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    (tmp_path / "not-a-dir").write_bytes(b"")
    broken = UsedPiRegister(tmp_path / "not-a-dir" / "used-pi.sqlite")
    with pytest.raises(TokenUnavailable):
        broken.claim(PI, "gateway.a", None)
