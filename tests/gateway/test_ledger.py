"""The gateway ledger (actors/gateway/ledger.py) on SQLite and on PostgreSQL, without services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.gateway.ledger import Ledger, NewAuth, Outcome, PiUsed
from tests.fixtures_store import store_target  # noqa: F401 - the fixture


@pytest.fixture
def ledger(store_target: str | Path) -> Iterator[Ledger]:  # noqa: F811 - the imported fixture
    """A fresh ledger on each backend, at a fixed clock."""
    opened = Ledger(store_target, clock=lambda: 1_700_000_000.0)
    yield opened
    opened.close()


def new(rrpid: bytes, pi: bytes | None = b"pi-1") -> NewAuth:
    return NewAuth(rrpid, b"digest-" + rrpid, b"xid-1", pi, "m1", "JPY", 1_200, False, "000001")


def answer(reply: bytes, *, release: bool = False) -> Outcome:
    return Outcome(0, 1_200, "00", "123456", "AuthRes", reply, release_pi=release)


def test_reserve_finish_and_redelivery(ledger: Ledger) -> None:
    first = ledger.reserve(new(b"r1"))
    assert (first.state, first.reply) == ("pending", None)
    assert ledger.reserve(new(b"r1")) == first  # a redelivery resumes the same entry
    done = ledger.finish(b"r1", answer(b"reply-1"))
    assert (done.state, done.reply_type, done.reply) == ("done", "AuthRes", b"reply-1")
    assert ledger.finish(b"r1", answer(b"reply-2")) == done  # the first answer stands
    assert ledger.get(b"r1") == done
    assert ledger.reserve(new(b"r1")) == done
    stored = ledger.replies.get(b"r1")
    assert stored is not None and stored.reply == b"reply-1" and stored.digest == b"digest-r1"
    assert ledger.count() == 1


def test_a_pi_is_used_once_unless_released(ledger: Ledger) -> None:
    ledger.reserve(new(b"r1"))
    with pytest.raises(PiUsed):
        ledger.reserve(new(b"r2"))
    assert ledger.get(b"r2") is None and ledger.count() == 1
    ledger.finish(b"r1", answer(b"host unreachable", release=True))
    assert ledger.reserve(new(b"r2")).state == "pending"  # released: a retry may use it
    assert ledger.get(b"r1") is not None and ledger.get(b"r1").reply == b"host unreachable"
