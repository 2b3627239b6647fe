"""Several gateway replicas sharing one ISO 8583 journal (actors/iso8583/link.py Rule 6,
saf.py Rules 6-8), on SQLite and on PostgreSQL, against the real issuer host: STANs never
shared, another process's requests reversed only when stale, a late answer after that
reversal never approves, one SAF queue drained by two processes settles each entry once and
in RRN order, and a dead process's lease passes to the other when it runs out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from actors.iso8583 import spec
from actors.iso8583.codes import ResponseCode
from actors.iso8583.link import IsoLink, LinkRequest
from actors.iso8583.saf import REQUESTS, SAF, STAN_BLOCK, Journal
from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost
from setpay.store import Schema, open_store
from tests.fixtures_store import store_target  # noqa: F401 - the fixture
from tests.issuer.conftest import RawClient
from tests.issuer.softsecurity import SoftIssuerSecurity

A, B = "gateway.pg1@1", "gateway.pg1@2"
T0 = 1_800_000_000.0


class Clock:
    """The journals' clock, moved by the test (link.py ``journal_clock``)."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def rrn(n: int) -> str:
    return f"RP{n:010d}"


def make_link(port: int, target: str | Path, owner: str, clock: Clock, **kw) -> IsoLink:
    kw.setdefault("deadline", 2.0)
    kw.setdefault("saf_retry_interval", 0.05)
    kw.setdefault("saf_poll_interval", 0.05)
    kw.setdefault("recovery_interval", 0.05)
    return IsoLink("127.0.0.1", port, target, owner=owner, journal_clock=clock, **kw)


async def until(check: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``check()`` holds: the other replica's background round ran."""
    async with asyncio.timeout(10):
        while not check():
            await asyncio.sleep(0.02)
    assert check(), what


async def held(store: Store, security: SoftIssuerSecurity, reference: str) -> int:
    snap = store.snapshot(await security.pan_index(reference))
    assert snap is not None
    return snap.held


def sent_row(journal: Journal, n: int, reference: str) -> spec.Message:
    """An 0100 as a link journals it before writing it (sensitive fields are not kept)."""
    message: spec.Message = {
        "t": spec.AUTH_REQUEST, "2": reference, "3": spec.CARD_PROCESSING,
        "4": "000000001000", "7": "1124130000", "11": journal.next_stan(), "32": "4321",
        "37": rrn(n), "41": "SETPAYGW", "49": "392",
    }  # fmt: skip
    journal.record_sent(rrn(n), message)
    return message


def allocate(target: str, count: int) -> list[str]:
    """``count`` STANs from a journal of this process (run in a child process)."""
    journal = Journal(target)
    try:
        return [journal.next_stan() for _ in range(count)]
    finally:
        journal.close()


async def test_two_processes_allocating_at_once_never_share_a_stan(
    store_target: str | Path,  # noqa: F811 - the imported fixture
) -> None:
    """Four processes reserve twenty blocks each from one counter at the same time."""
    Journal(store_target).close()  # created (and migrated) once, before the race
    count = 20 * STAN_BLOCK
    with ProcessPoolExecutor(4, mp_context=get_context("spawn")) as pool:
        loop = asyncio.get_running_loop()
        runs = [loop.run_in_executor(pool, allocate, str(store_target), count) for _ in range(4)]
        lists = await asyncio.gather(*runs)
    every = [stan for stans in lists for stan in stans]
    assert all(len(set(stans)) == count for stans in lists)
    assert len(set(every)) == len(every) == 4 * count


async def test_two_links_on_one_store_never_share_a_stan(
    host: IssuerHost,
    accounts,
    store_target: str | Path,  # noqa: F811
) -> None:
    """Two replicas ask the host forty authorizations at once: forty STANs, all answered
    (twenty approved, then the card's velocity limit declines the rest)."""
    clock = Clock()
    links = [make_link(host.port, store_target, owner, clock) for owner in (A, B)]
    for link in links:
        await link.start()
    try:
        visa = accounts["visa-ok"]
        asks = [
            links[i % 2].request(LinkRequest(rrn(i), visa.reference, 10 + i)) for i in range(40)
        ]
        results = await asyncio.gather(*asks)
        assert not [r for r in results if r.timed_out or r.retryable or r.duplicate]
        assert sum(r.approved for r in results) == 20
        assert len({r.stan for r in results}) == 40
        owners = links[0].journal.db.all(
            sa.select(REQUESTS.c.owner, sa.func.count()).group_by(REQUESTS.c.owner)
        )
        assert dict(owners) == {A: 20, B: 20}
    finally:
        for link in links:
            await link.close()


async def test_one_rrn_asked_of_two_replicas_at_once_reaches_the_host_once(
    host: IssuerHost,
    accounts,
    store: Store,
    security: SoftIssuerSecurity,
    store_target: str | Path,  # noqa: F811
) -> None:
    """The RRN is the journal's key: the replica that finds it journalled and unanswered
    sends the same transmission again (link.py Rule 7: same STAN and F7), the host answers it
    from its books, and both replicas answer the one approval; the host holds the amount
    once and the journal keeps one answer."""
    clock, mc = Clock(), accounts["mc-ok"]
    links = [make_link(host.port, store_target, owner, clock) for owner in (A, B)]
    for link in links:
        await link.start()
    try:
        host.hold_answers()  # the first one stays in flight while the second asks
        ask = LinkRequest(rrn(5), mc.reference, 2_500)
        first = asyncio.create_task(links[0].request(ask))
        await until(lambda: host.handled >= 1, "the first replica's request reached the host")
        second = asyncio.create_task(links[1].request(ask))
        await until(lambda: host.handled >= 2, "the second replica's repeat reached the host")
        host.release_answers()
        one, two = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert one.approved and two.approved and two.duplicate
        assert (one.stan, one.approval_code) == (two.stan, two.approval_code)
        assert await held(store, security, mc.reference) == 2_500
        row = links[0].journal.get(rrn(5))
        assert row is not None and row.state == "answered"
    finally:
        host.release_answers()
        for link in links:
            await link.close()


async def test_a_replica_recovers_its_own_rows_and_others_only_when_stale(
    host: IssuerHost,
    accounts,
    store: Store,
    security: SoftIssuerSecurity,
    store_target: str | Path,  # noqa: F811
) -> None:
    """Rows left ``sent``: B's own (its previous life) is reversed when B starts; A's fresh one
    is left to A; once A's row is older than ``stale_after`` B's recovery round reverses it,
    and the host refuses A's original when it turns up late."""
    clock, visa = Clock(), accounts["visa-ok"]
    a_journal = Journal(store_target, clock=clock, owner=A)
    b_old = Journal(store_target, clock=clock, owner=B)
    try:
        sent_row(b_old, 1, visa.reference)
        clock.t += 50  # A's request is sent later: fresh when B starts
        original = sent_row(a_journal, 2, visa.reference)
    finally:
        b_old.close()
    b = make_link(host.port, store_target, B, clock, stale_after=60.0)
    await b.start()
    try:
        assert b.journal.get(rrn(1)).state == "timed_out"  # type: ignore[union-attr]
        await asyncio.wait_for(b.saf_idle(), 10)
        assert a_journal.get(rrn(2)).state == "sent"  # type: ignore[union-attr]
        assert b.journal.unanswered() == [rrn(2)]
        clock.t += 30  # 30 s old: still fresh
        await asyncio.sleep(0.2)  # several recovery rounds of B
        assert a_journal.get(rrn(2)).state == "sent"  # type: ignore[union-attr]
        clock.t += 31  # 61 s old: A is gone
        await until(lambda: a_journal.get(rrn(2)).state == "timed_out", "A's row reversed")  # type: ignore[union-attr]
        await asyncio.wait_for(b.saf_idle(), 10)
        assert [e[:2] for e in b.journal.saf_entries(rrn(2))] == [(spec.REVERSAL_ADVICE, "acked")]
    finally:
        await b.close()
        a_journal.close()
    late = await _send(host.port, original)
    assert late["39"] == ResponseCode.INVALID_TRANSACTION
    assert await held(store, security, visa.reference) == 0


async def _send(port: int, message: spec.Message) -> spec.Message:
    raw = await RawClient.connect(port)
    try:
        return await raw.request(message)
    finally:
        await raw.close()


async def test_a_late_answer_after_a_stale_reversal_does_not_approve(
    host: IssuerHost,
    accounts,
    store: Store,
    security: SoftIssuerSecurity,
    store_target: str | Path,  # noqa: F811
) -> None:
    """A's request is held at the host (approved there, answer not sent) until B judges it
    stale and reverses it; the approval then reaches A, which answers its caller with the
    retryable decline: the reversal stands and nothing stays held."""
    clock, mc = Clock(), accounts["mc-ok"]
    a = make_link(host.port, store_target, A, clock, deadline=10.0)
    b = make_link(host.port, store_target, B, clock, deadline=10.0)
    await a.start()
    await b.start()
    try:
        host.hold_answers()
        asked = asyncio.create_task(a.request(LinkRequest(rrn(10), mc.reference, 7_000)))
        await until(lambda: a.journal.get(rrn(10)) is not None, "A's request journalled")
        await until(lambda: host.handled >= 1, "the host applied it")
        assert await held(store, security, mc.reference) == 7_000
        clock.t += b.stale_after + 1
        await until(lambda: a.journal.get(rrn(10)).state == "timed_out", "B reversed it")  # type: ignore[union-attr]
        with capture_logs() as events:
            host.release_answers()
            result = await asyncio.wait_for(asked, 10)
        assert result.code is ResponseCode.ISSUER_UNAVAILABLE and result.timed_out
        assert not result.approved
        assert any(e["event"] == "answer_after_reversal" for e in events)
        row = a.journal.get(rrn(10))
        assert row is not None and (row.state, row.response_code) == ("timed_out", None)
        await asyncio.wait_for(a.saf_idle(), 15)
        assert [e[:2] for e in a.journal.saf_entries(rrn(10))] == [(spec.REVERSAL_ADVICE, "acked")]
        assert await held(store, security, mc.reference) == 0
        again = await a.request(LinkRequest(rrn(10), mc.reference, 7_000))
        assert again.duplicate and not again.approved  # the RRN stays declined
    finally:
        host.release_answers()
        await a.close()
        await b.close()


async def _approved(link: IsoLink, accounts, numbers: range) -> None:
    visa = accounts["visa-ok"]
    for n in numbers:
        assert (await link.request(LinkRequest(rrn(n), visa.reference, 1_000))).approved


async def test_two_replicas_drain_one_saf_queue_once_in_rrn_order(
    host: IssuerHost,
    accounts,
    store: Store,
    security: SoftIssuerSecurity,
    store_target: str | Path,  # noqa: F811
) -> None:
    """Per RRN a completion, its reversal and a reversal of the authorization are queued (in
    that order); two replicas forward the queue together: the host receives each entry once
    and each RRN's entries in order (a completion's reversal before the completion would
    leave the completion refused), and every entry is acknowledged."""
    clock, visa = Clock(), accounts["visa-ok"]
    first = make_link(host.port, store_target, A, clock)
    await first.start()
    await _approved(first, accounts, range(20, 28))
    await first.close()
    journal = Journal(store_target, clock=clock, owner=A)
    try:
        extra = {"3": spec.CARD_PROCESSING, "4": "000000000600", "48": "M-1:1"}
        for n in range(20, 28):
            f7 = "1124130000"
            assert journal.enqueue_keyed(
                f"cap:{n}", rrn(n), spec.ADVICE, journal.next_stan(), f7, extra
            )
            assert journal.enqueue_keyed(
                f"caprev:{n}", rrn(n), spec.REVERSAL_ADVICE, journal.next_stan(), f7, {},
                original_key=f"cap:{n}",
            )  # fmt: skip
            assert journal.enqueue_reversal(rrn(n), journal.next_stan(), f7)
        assert journal.pending_count() == 24
    finally:
        journal.close()
    handled = host.handled
    links = [make_link(host.port, store_target, owner, clock) for owner in (A, B)]
    with capture_logs() as events:
        await asyncio.gather(*(link.start() for link in links))
        try:
            await asyncio.wait_for(asyncio.gather(*(link.saf_idle() for link in links)), 20)
        finally:
            for link in links:
                await link.close()
        check = Journal(store_target, clock=clock)
        try:
            for n in range(20, 28):
                assert check.saf_entries(rrn(n)) == [
                    (spec.ADVICE, "acked", 1),
                    (spec.REVERSAL_ADVICE, "acked", 1),
                    (spec.REVERSAL_REQUEST, "acked", 1),
                ]
            forwarded = check.db.all(sa.select(SAF.c.claimed_by).distinct())
        finally:
            check.close()
    assert host.handled - handled == 24  # each entry sent once
    assert {row[0] for row in forwarded} == {A, B}  # both replicas did part of the work
    at_host = [(e["rrn"], e["mti"]) for e in events if e["event"] in ("advised", "reversed")]
    for n in range(20, 28):
        mine = [mti for r, mti in at_host if r == rrn(n)]
        assert mine == [spec.ADVICE, spec.REVERSAL_ADVICE, spec.REVERSAL_REQUEST]
    assert await held(store, security, visa.reference) == 0
    assert not [e for e in events if e["event"] == "saf_refused"]


async def test_an_expired_lease_lets_the_other_replica_take_over(
    host: IssuerHost,
    accounts,
    store: Store,
    security: SoftIssuerSecurity,
    store_target: str | Path,  # noqa: F811
) -> None:
    """A claims a queued reversal and dies before sending it: B leaves it alone while A's lease
    runs, forwards it once the lease is over, and A's settle coming late changes nothing."""
    clock, visa = Clock(), accounts["visa-ok"]
    first = make_link(host.port, store_target, A, clock)
    await first.start()
    await _approved(first, accounts, range(30, 31))
    await first.close()
    a_journal = Journal(store_target, clock=clock, owner=A)
    try:
        assert a_journal.enqueue_reversal(rrn(30), a_journal.next_stan(), "1124130000")
        entry = a_journal.claim(A, 40.0)
        assert entry is not None and entry.rrn == rrn(30)
        b = make_link(host.port, store_target, B, clock, saf_lease=40.0)
        await b.start()
        try:
            await asyncio.sleep(0.2)  # several SAF polls of B
            assert b.journal.saf_entries(rrn(30)) == [(spec.REVERSAL_REQUEST, "pending", 0)]
            assert await held(store, security, visa.reference) == 1_000
            clock.t += 41
            await asyncio.wait_for(b.saf_idle(), 10)
            assert b.journal.saf_entries(rrn(30)) == [(spec.REVERSAL_REQUEST, "acked", 1)]
            assert await held(store, security, visa.reference) == 0
        finally:
            await b.close()
        assert not a_journal.settle(entry.id, "00", acked=True)  # settled once, by B
        assert a_journal.saf_entries(rrn(30)) == [(spec.REVERSAL_REQUEST, "acked", 1)]
    finally:
        a_journal.close()


def test_claims_keep_rrn_order_and_respect_live_leases(
    store_target: str | Path,  # noqa: F811
) -> None:
    """saf.py Rule 8 on the journal alone: an entry behind an older pending one of its RRN is
    not taken; another process's live lease is not taken; an expired one is; a failed send
    gives the lease back; settle closes an entry once."""
    clock = Clock()
    a = Journal(store_target, clock=clock, owner=A)
    b = Journal(store_target, clock=clock, owner=B)
    try:
        for n in (40, 41):
            sent_row(a, n, "4111111111111111")
            assert a.record_answer(rrn(n), "00", "ABC123")
        assert a.enqueue_reversal(rrn(40), a.next_stan(), "1124130000")
        assert a.enqueue_reversal(rrn(40), a.next_stan(), "1124130001")
        assert a.enqueue_reversal(rrn(41), a.next_stan(), "1124130002")
        first = a.claim(A, 10.0)
        assert first is not None and first.rrn == rrn(40)
        other = b.claim(B, 10.0)
        assert other is not None and other.rrn == rrn(41)  # rrn(40)'s second waits its turn
        assert b.claim(B, 10.0) == other  # its own lease: taken again (a restarted B)
        b.attempted(other.id)  # a failed send: the lease is given back
        again = a.claim(A, 10.0)
        assert again is not None and again.id == first.id  # A's own, still the oldest
        clock.t += 11
        taken = b.claim(B, 10.0)
        assert taken is not None and taken.id == first.id  # A's lease ran out
        assert b.settle(first.id, "00", acked=True)
        assert not a.settle(first.id, "00", acked=True)  # the race's loser changes nothing
        nxt = a.claim(A, 10.0)  # rrn(40)'s second, free now that its first is settled
        assert nxt is not None and nxt.rrn == rrn(40) and nxt.id != first.id
        assert a.settle(nxt.id, "00", acked=True)
        last = a.claim(A, 10.0)
        assert last is not None and last.rrn == rrn(41) and last.attempts == 1
        assert a.settle(last.id, "00", acked=True)
        assert a.claim(A, 10.0) is None and a.pending_count() == 0
    finally:
        a.close()
        b.close()


def test_answer_and_time_out_change_only_a_sent_row(
    store_target: str | Path,  # noqa: F811
) -> None:
    """saf.py Rule 7: whichever of the answer and the time-out comes first wins; the other
    says so and changes nothing (no second reversal, no approval over a reversal)."""
    clock = Clock()
    a = Journal(store_target, clock=clock, owner=A)
    b = Journal(store_target, clock=clock, owner=B)
    try:
        sent_row(a, 50, "4111111111111111")
        assert b.time_out(rrn(50), b.next_stan(), "1124130000")
        assert not a.record_answer(rrn(50), "00", "ABC123")
        assert not a.time_out(rrn(50), a.next_stan(), "1124130000")
        row = a.get(rrn(50))
        assert row is not None and (row.state, row.approval_code) == ("timed_out", None)
        assert a.pending_count() == 1
        sent_row(a, 51, "4111111111111111")
        assert a.record_answer(rrn(51), "00", "ABC123")
        assert not b.time_out(rrn(51), b.next_stan(), "1124130000")
        assert a.pending_count() == 1 and a.get(rrn(51)).state == "answered"  # type: ignore[union-attr]
    finally:
        a.close()
        b.close()


def test_a_journal_of_the_previous_version_is_upgraded(
    store_target: str | Path,  # noqa: F811
) -> None:
    """A store made by the single-process journal (schema version 3) gains owners, leases and
    the indexes; its unanswered row has no owner, so a replica reverses it only when stale."""
    old_md = sa.MetaData()
    sa.Table(
        "meta", old_md,
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("value", sa.String(), nullable=False),
    )  # fmt: skip
    old_requests = sa.Table(
        "requests", old_md,
        *(sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
          for c in REQUESTS.columns if c.name != "owner"),
    )  # fmt: skip
    sa.Table(
        "saf", old_md,
        *(sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
          for c in SAF.columns if c.name not in ("claimed_by", "lease_until")),
        sqlite_autoincrement=True,
    )  # fmt: skip
    old = open_store(store_target, [Schema("iso8583_journal", old_md, steps=(_noop, _noop))])
    try:
        with old.transaction() as db:
            db.execute(
                sa.insert(old_requests).values(
                    rrn=rrn(60), mti="0100", stan="000001", fields="{}", state="sent",
                    updated_at=T0,
                )
            )  # fmt: skip
    finally:
        old.close()
    clock = Clock()
    journal = Journal(store_target, clock=clock, owner=A)
    try:
        assert journal.db.versions()["iso8583_journal"] == 4
        assert journal.unanswered(owner=A) == []
        assert journal.unanswered(older_than=T0) == []
        assert journal.unanswered(older_than=T0 + 1) == [rrn(60)]
        with journal.db.read() as db:
            indexes = {
                ix["name"] for t in ("requests", "saf") for ix in sa.inspect(db).get_indexes(t)
            }
        assert {"requests_state_updated_ix", "saf_rrn_ix"} <= indexes
    finally:
        journal.close()


def _noop(_op: object) -> None:
    """An upgrade step already applied (the old store is recorded at its version)."""


def test_link_options_are_checked() -> None:
    """A lease or a staleness shorter than a request's time in flight is refused."""
    for bad in ({"saf_lease": 3.0}, {"stale_after": 2.0}):
        with pytest.raises(ValueError, match="exceed deadline"):
            IsoLink("127.0.0.1", 1, Path("/nonexistent/j.sqlite"), deadline=2.0, **bad)  # type: ignore[arg-type]


async def test_a_dead_replicas_unanswered_request_is_finished_by_the_next_caller(
    host: IssuerHost,
    accounts,
    store: Store,
    security: SoftIssuerSecurity,
    store_target: str | Path,  # noqa: F811
) -> None:
    """A journalled its 0100, the host applied it, and A died before it read the answer. The
    merchant's AuthReq again reaches B: B sends the same transmission (link.py Rule 7), the
    host answers it from its books, and the cardholder gets the approval - held once, no
    reversal queued."""
    clock, visa = Clock(), accounts["visa-ok"]
    a_journal = Journal(store_target, clock=clock, owner=A)
    try:
        original = sent_row(a_journal, 30, visa.reference)
        first = await _send(host.port, {**original, "4": "000000001000"})
        assert first["39"] == ResponseCode.APPROVED
    finally:
        a_journal.close()
    b = make_link(host.port, store_target, B, clock, stale_after=60.0)
    await b.start()
    try:
        result = await b.request(LinkRequest(rrn(30), visa.reference, 1_000))
        assert result.approved and result.duplicate
        assert result.approval_code == first.get("38")
        row = b.journal.get(rrn(30))
        assert row is not None and row.state == "answered"
        assert b.journal.saf_entries(rrn(30)) == []
        assert await held(store, security, visa.reference) == 1_000
    finally:
        await b.close()
