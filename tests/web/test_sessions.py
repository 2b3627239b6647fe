"""Sessions and lockout rows in a party's store (SQLite and PostgreSQL): they survive a
reopen (a restart of the service), only a token's hash is stored, and expiry and the lock
hold by the clock."""

from __future__ import annotations

import hashlib
from pathlib import Path

import sqlalchemy as sa

from actors.web.sessions import SESSIONS, SESSIONS_TABLE, SessionStore
from setpay.store import open_store
from tests.fixtures_store import store_target  # noqa: F401 - the fixture


def _sessions(target: str | Path) -> tuple[SessionStore, object]:
    db = open_store(target, [SESSIONS])
    return SessionStore(db, lifetime_s=60, max_failures=3, lockout_s=30), db


def test_sessions_and_locks_survive_a_reopen_and_only_hashes_are_stored(
    store_target: str | Path,  # noqa: F811
) -> None:
    sessions, db = _sessions(store_target)
    now = 1_000_000
    made = sessions.create("alice", "", now)
    for _ in range(3):
        sessions.failed("mallory", now)
    db.close()  # type: ignore[attr-defined]
    sessions, db = _sessions(store_target)  # the service restarted
    try:
        again = sessions.get(made.token, now + 1)
        assert again is not None and again.principal == "alice"
        assert again.csrf_matches(made.csrf) and not again.csrf_matches("x")
        assert sessions.locked("mallory", now + 1)
        assert not sessions.locked("mallory", now + 30_001)  # the lock ends
        stored = db.all(sa.select(SESSIONS_TABLE.c.token_hash))  # type: ignore[attr-defined]
        assert [r[0] for r in stored] == [hashlib.sha256(made.token.encode()).digest()]
        assert sessions.get(made.token, now + 60_000) is None  # expired: refused and gone
        assert db.all(sa.select(SESSIONS_TABLE)) == []  # type: ignore[attr-defined]
        other = sessions.create("bob", "M-1", now)
        sessions.end(other.token)
        assert sessions.get(other.token, now) is None
    finally:
        db.close()  # type: ignore[attr-defined]


def test_failures_count_within_the_window_and_quiet_names_are_forgotten(tmp_path: Path) -> None:
    sessions, db = _sessions(tmp_path / "s.sqlite")
    try:
        now = 5_000_000
        assert not sessions.failed("eve", now) and not sessions.failed("eve", now + 1)
        assert not sessions.failed("eve", now + 30_002)  # quiet for the window: counts anew
        assert not sessions.failed("eve", now + 30_003)
        assert sessions.failed("eve", now + 30_004)  # the third in the window locks
        assert sessions.locked("eve", now + 30_005)
        sessions.succeeded("eve")
        assert not sessions.locked("eve", now + 30_006)
    finally:
        db.close()  # type: ignore[attr-defined]
