"""The link's journal (actors/iso8583/saf.py) on SQLite and on PostgreSQL, without a host: a
reversal is journalled in the same transaction that gives up on its original, stays pending
until acknowledged, and the journal keeps no sensitive field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.iso8583 import spec
from actors.iso8583.saf import STAN_BLOCK, Journal
from setpay.store import IntegrityError
from tests.fixtures_store import store_target  # noqa: F401 - the fixture


@pytest.fixture
def journal(store_target: str | Path) -> Iterator[Journal]:  # noqa: F811 - the imported fixture
    """A fresh journal on each backend, at a fixed clock."""
    opened = Journal(store_target, clock=lambda: 1_700_000_000.0)
    yield opened
    opened.close()


def request(journal: Journal, rrn: str) -> spec.Message:
    return {
        "t": spec.AUTH_REQUEST,
        "2": "4111111111111111",
        "3": "000000",
        "4": "000000001000",
        "7": "1124130000",
        "11": journal.next_stan(),
        "32": "4321",
        "37": rrn,
        "41": "SETPAYGW",
        "49": "392",
        "52": "00" * 8,
    }


def test_timeout_queues_one_reversal_that_stays_until_acked(journal: Journal) -> None:
    sent = request(journal, "RRN000000001")
    journal.record_sent("RRN000000001", sent)
    with pytest.raises(IntegrityError):  # the RRN is the key: journalled once
        journal.record_sent("RRN000000001", sent)
    assert journal.unanswered() == ["RRN000000001"]
    fields = journal.fields("RRN000000001")
    assert fields is not None and "2" not in fields and "52" not in fields
    assert journal.time_out("RRN000000001", journal.next_stan(), "1124130100")
    assert not journal.time_out("RRN000000001", journal.next_stan(), "1124130100")
    assert journal.unanswered() == [] and journal.pending_count() == 1
    entry = journal.next_pending()
    assert entry is not None and entry.mti == spec.REVERSAL_ADVICE and entry.rrn == "RRN000000001"
    assert "2" not in entry.message and entry.message["90"].startswith(spec.AUTH_REQUEST)
    journal.attempted(entry.id)  # sent, not acknowledged: still pending
    assert journal.next_pending() == type(entry)(entry.id, entry.rrn, entry.mti, entry.message, 1)
    journal.settle(entry.id, "00", acked=True)
    assert journal.pending_count() == 0 and journal.next_pending() is None
    assert journal.saf_entries("RRN000000001") == [(spec.REVERSAL_ADVICE, "acked", 2)]
    got = journal.get("RRN000000001")
    assert got is not None and got.state == "timed_out"


def test_reversal_of_an_answered_request_only(journal: Journal) -> None:
    assert not journal.enqueue_reversal("RRN000000002", journal.next_stan(), "1124130200")
    journal.record_sent("RRN000000002", request(journal, "RRN000000002"))
    assert not journal.enqueue_reversal("RRN000000002", journal.next_stan(), "1124130200")
    journal.record_answer("RRN000000002", "00", "123456")
    got = journal.get("RRN000000002")
    assert got is not None and (got.state, got.response_code, got.approval_code) == (
        "answered",
        "00",
        "123456",
    )
    assert journal.enqueue_reversal("RRN000000002", journal.next_stan(), "1124130200")
    first = journal.next_pending()
    assert first is not None and first.mti == spec.REVERSAL_REQUEST
    journal.settle(first.id, "96", acked=False)
    assert journal.next_pending() is None
    assert journal.saf_entries("RRN000000002") == [(spec.REVERSAL_REQUEST, "failed", 1)]


def test_forget_drops_only_what_never_left(journal: Journal) -> None:
    journal.record_sent("RRN000000003", request(journal, "RRN000000003"))
    journal.forget("RRN000000003")
    assert journal.get("RRN000000003") is None


def test_stans_are_not_reused_across_a_reopen(store_target: str | Path) -> None:  # noqa: F811
    first = Journal(store_target)
    seen = {first.next_stan() for _ in range(STAN_BLOCK + 1)}
    first.close()
    second = Journal(store_target)
    try:
        again = {second.next_stan() for _ in range(STAN_BLOCK)}
    finally:
        second.close()
    assert len(seen) == STAN_BLOCK + 1 and not seen & again


def test_keyed_advice_is_queued_once_and_names_its_original(journal: Journal) -> None:
    """saf.py Rule 5: a completion queued twice under one key is one entry; its field 90 names
    the answered request; a reversal of it names the advice; no account field is copied."""
    original = request(journal, "RRNKEYED0001")
    journal.record_sent("RRNKEYED0001", original)
    journal.record_answer("RRNKEYED0001", "00", "ABC123")
    extra = {"3": spec.CARD_PROCESSING, "4": "000000000600", "48": "M-1:1"}
    for _ in range(2):
        assert journal.enqueue_keyed(
            "cap:1", "RRNKEYED0001", spec.ADVICE, journal.next_stan(), "1124130500", extra
        )
    assert journal.saf_entries("RRNKEYED0001") == [(spec.ADVICE, "pending", 0)]
    entry = journal.next_pending()
    assert entry is not None
    assert entry.message["90"][:4] == spec.AUTH_REQUEST
    assert (entry.message["4"], entry.message["48"]) == ("000000000600", "M-1:1")
    assert not {"2", "14", "52", "102"} & set(entry.message)
    assert journal.enqueue_keyed(
        "caprev:1", "RRNKEYED0001", spec.REVERSAL_ADVICE, journal.next_stan(), "1124130600", {},
        original_key="cap:1",
    )  # fmt: skip
    entries = journal.saf_entries("RRNKEYED0001")
    assert [e[0] for e in entries] == [spec.ADVICE, spec.REVERSAL_ADVICE]
    assert journal.keyed("caprev:1") == (spec.REVERSAL_ADVICE, "pending", 0)
    # an original never answered, or an unknown key: nothing queued
    assert not journal.enqueue_keyed(
        "cap:2", "RRNUNKNOWN01", spec.ADVICE, journal.next_stan(), "1124130700", extra
    )
    assert not journal.enqueue_keyed(
        "x:1", "RRNKEYED0001", spec.REVERSAL_ADVICE, journal.next_stan(), "1124130700", {},
        original_key="nope",
    )  # fmt: skip
