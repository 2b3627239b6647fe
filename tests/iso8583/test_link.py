"""The gateway-side link against the real host over TCP: matching, deadlines, reversals
stored and forwarded across a restart of the link, journal hygiene."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from actors.iso8583 import spec
from actors.iso8583.codes import ResponseCode
from actors.iso8583.errors import MessageError
from actors.iso8583.link import IsoLink, LinkRequest
from actors.iso8583.saf import Journal
from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost, transmission_key
from tests.issuer.conftest import RawClient
from tests.issuer.softsecurity import SoftIssuerSecurity


async def held(store: Store, security: SoftIssuerSecurity, reference: str) -> int:
    snap = store.snapshot(await security.pan_index(reference))
    assert snap is not None
    return snap.held


async def balance(store: Store, security: SoftIssuerSecurity, reference: str) -> int:
    snap = store.snapshot(await security.pan_index(reference))
    assert snap is not None
    return snap.account.balance


def make_link(port: int, tmp_path: Path, **kw) -> IsoLink:
    kw.setdefault("deadline", 2.0)
    kw.setdefault("saf_retry_interval", 0.05)
    return IsoLink("127.0.0.1", port, tmp_path / "link.sqlite", **kw)


@pytest.fixture
async def link(host: IssuerHost, tmp_path: Path):
    lk = make_link(host.port, tmp_path)
    await lk.start()
    yield lk
    await lk.close()


def rrn(n: int) -> str:
    return f"GW{n:010d}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_approval_and_duplicate_rrn_answered_from_journal(
    link, host, accounts, store, security
):
    """An RRN asked twice: the second answer comes from the journal; the host saw one."""
    visa = accounts["visa-ok"]
    req = LinkRequest(rrn(1), visa.reference, 8_000, expiry=visa.expiry)
    first = await link.request(req)
    assert first.approved and len(first.approval_code) == 6 and not first.duplicate
    handled = host.handled
    second = await link.request(req)
    assert second.duplicate and second.code == first.code
    assert second.approval_code == first.approval_code
    assert host.handled == handled
    assert await held(store, security, visa.reference) == 8_000


async def test_concurrent_requests_are_matched_by_stan(link, accounts, security):
    """Thirty requests in flight at once on one connection each get their own answer."""
    expected = {
        "visa-ok": ResponseCode.APPROVED,
        "mc-ok": ResponseCode.APPROVED,
        "visa-expired": ResponseCode.EXPIRED_CARD,
        "mc-stolen": ResponseCode.STOLEN_CARD,
        "visa-low-limit": ResponseCode.INSUFFICIENT_FUNDS,
    }
    names = [name for name in expected for _ in range(6)]
    amount = {"visa-low-limit": 999_999}
    reqs = [
        LinkRequest(rrn(100 + i), accounts[n].reference, amount.get(n, 100 + i))
        for i, n in enumerate(names)
    ]
    results = await asyncio.gather(*(link.request(r) for r in reqs))
    assert [r.code for r in results] == [expected[n] for n in names]
    approvals = [r.approval_code for r in results if r.approved]
    assert len(approvals) == 12 and len(set(approvals)) == 12
    assert len({r.stan for r in results}) == 30


async def test_pin_debit_through_the_link(link, accounts, store, security):
    bank = accounts["bank-ok"]
    block = await security.pin_block(bank.binding, "739146")
    ok = await link.request(
        LinkRequest(rrn(200), bank.reference, 3_000, mti=spec.FINANCIAL_REQUEST, pin_block=block)
    )
    assert ok.approved
    wrong = await security.pin_block(bank.binding, "0000")
    bad = await link.request(
        LinkRequest(rrn(201), bank.reference, 3_000, mti=spec.FINANCIAL_REQUEST, pin_block=wrong)
    )
    assert bad.code is ResponseCode.WRONG_PIN and not bad.retryable
    assert await balance(store, security, bank.reference) == bank.balance - 3_000


async def test_unreachable_host_is_retryable_and_queues_nothing(tmp_path, accounts):
    """No host listening: nothing was sent, so 91 (retryable) and no reversal."""
    lk = make_link(free_port(), tmp_path, connect_timeout=1.0)
    await lk.start()
    try:
        result = await lk.request(LinkRequest(rrn(300), accounts["visa-ok"].reference, 100))
        assert result.code is ResponseCode.ISSUER_UNAVAILABLE and result.retryable
        assert not result.timed_out
        assert lk.journal.pending_count() == 0
        assert lk.journal.get(rrn(300)) is None  # a retry may send it afresh
    finally:
        await lk.close()


async def test_deadline_reversal_survives_link_restart(host, store, security, accounts, tmp_path):
    """The host posts a PIN debit but its answers are held: the caller gets 91 at the
    deadline and a reversal advice is journalled. The host applies that advice too, but its
    acknowledgement is also lost; the link restarts while the host is down; once the host is
    back the reversal is forwarded again (as a repeat, 0421), acknowledged, and the debit was
    credited back exactly once."""
    bank = accounts["bank-ok"]
    block = await security.pin_block(bank.binding, "739146")
    req = LinkRequest(rrn(400), bank.reference, 20_000, mti="0200", pin_block=block)
    port = host.port
    lk = make_link(port, tmp_path, deadline=0.2)
    await lk.start()
    host.hold_answers()
    result = await lk.request(req)
    assert result.code is ResponseCode.ISSUER_UNAVAILABLE
    assert result.retryable and result.timed_out
    assert lk.journal.saf_entries(rrn(400))[0][:2] == (spec.REVERSAL_ADVICE, "pending")
    again = await lk.request(req)
    assert again.timed_out and again.duplicate  # a timed-out RRN is not re-sent
    await lk.close()  # the gateway process goes away with the reversal unacknowledged

    await host.stop()  # the host goes down too, after finishing what it had received
    assert await balance(store, security, bank.reference) == bank.balance

    lk2 = make_link(port, tmp_path, deadline=0.5)
    await lk2.start()
    try:
        assert lk2.journal.pending_count() == 1
        with pytest.raises(TimeoutError):  # host down: the reversal stays queued
            await asyncio.wait_for(lk2.saf_idle(), 0.3)
        assert lk2.journal.pending_count() == 1
        host2 = IssuerHost(store, security)
        await host2.start(port=port)
        try:
            await asyncio.wait_for(lk2.saf_idle(), 10)
        finally:
            await host2.stop()
        [(mti, state, attempts)] = lk2.journal.saf_entries(rrn(400))
        assert (mti, state) == (spec.REVERSAL_ADVICE, "acked") and attempts >= 2
        assert await balance(store, security, bank.reference) == bank.balance
        f7 = (lk2.journal.fields(rrn(400)) or {})["7"]
        assert store.reversal_count(transmission_key("4321", f7, result.stan, rrn(400))) == 1
    finally:
        await lk2.close()


async def test_reversal_waits_for_the_host_after_a_restart(store, security, accounts, tmp_path):
    """A reversal queued while the host is down is forwarded by a restarted link once the
    host comes up, and releases the hold the original placed."""
    visa = accounts["visa-ok"]
    host = IssuerHost(store, security)
    await host.start()
    port = host.port
    lk = make_link(port, tmp_path)
    await lk.start()
    assert (await lk.request(LinkRequest(rrn(450), visa.reference, 6_000))).approved
    await host.stop()
    assert await lk.reverse(rrn(450))  # queued; the host is down
    await lk.close()
    assert await held(store, security, visa.reference) == 6_000
    lk2 = make_link(port, tmp_path)
    await lk2.start()
    host2 = IssuerHost(store, security)
    try:
        await host2.start(port=port)
        await asyncio.wait_for(lk2.saf_idle(), 10)
        assert await held(store, security, visa.reference) == 0
        assert lk2.journal.saf_entries(rrn(450))[0][:2] == (spec.REVERSAL_REQUEST, "acked")
    finally:
        await lk2.close()
        await host2.stop()


async def test_late_answer_is_dropped_and_reversal_forwarded(link, host, store, security, accounts):
    """A late answer after the deadline matches nobody; the reversal releases the hold."""
    mc = accounts["mc-ok"]
    link.deadline = 0.2
    host.hold_answers()
    result = await link.request(LinkRequest(rrn(500), mc.reference, 7_000))
    assert result.timed_out
    host.release_answers()
    await asyncio.wait_for(link.saf_idle(), 10)
    assert link.stray == 1
    assert await held(store, security, mc.reference) == 0


async def test_crash_between_send_and_answer_is_reversed_at_start(
    host, store, security, accounts, tmp_path
):
    """A request journalled as sent by a link that died is reversed when the link starts;
    the original, arriving late, is then refused (12)."""
    visa = accounts["visa-ok"]
    journal = Journal(tmp_path / "link.sqlite")
    original = {
        "t": "0100",
        "3": "000000",
        "4": "000000001000",
        "7": "1124130000",
        "11": journal.next_stan(),
        "32": "4321",
        "37": rrn(600),
        "41": "SETPAYGW",
        "49": "392",
        "2": visa.reference,
    }
    journal.record_sent(rrn(600), original)
    journal.close()
    lk = make_link(host.port, tmp_path)
    await lk.start()
    try:
        await asyncio.wait_for(lk.saf_idle(), 10)
        assert lk.journal.get(rrn(600)).state == "timed_out"
        assert lk.journal.saf_entries(rrn(600))[0][1] == "acked"
    finally:
        await lk.close()
    raw = await RawClient.connect(host.port)
    try:
        late = await raw.request(original)
    finally:
        await raw.close()
    assert late["39"] == ResponseCode.INVALID_TRANSACTION
    assert await held(store, security, visa.reference) == 0


async def test_explicit_reversal_restores_a_debit(link, accounts, store, security):
    bank = accounts["bank-ok"]
    block = await security.pin_block(bank.binding, "739146")
    req = LinkRequest(rrn(700), bank.reference, 4_000, mti="0200", pin_block=block)
    assert (await link.request(req)).approved
    assert await link.reverse(rrn(700))
    assert not await link.reverse(rrn(701))  # nothing answered under that RRN
    await asyncio.wait_for(link.saf_idle(), 10)
    assert await balance(store, security, bank.reference) == bank.balance
    assert link.journal.saf_entries(rrn(700)) == [(spec.REVERSAL_REQUEST, "acked", 1)]


async def test_echo(link):
    assert await link.echo() is ResponseCode.APPROVED


async def test_journal_and_logs_hold_no_pan_or_pin(link, accounts, security, tmp_path):
    """A card request, a PIN debit and its reversal: neither the journal files nor the log
    events of the link and the host contain the account number, the PIN or the PIN block."""
    visa, bank = accounts["visa-ok"], accounts["bank-ok"]
    block = await security.pin_block(bank.binding, "739146")
    with capture_logs() as events:
        await link.request(LinkRequest(rrn(800), visa.reference, 100))
        await link.request(LinkRequest(rrn(801), bank.reference, 100, mti="0200", pin_block=block))
        assert await link.reverse(rrn(801))
        await asyncio.wait_for(link.saf_idle(), 10)
    link.journal.db.checkpoint()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("link"))
    logged = repr(events)
    assert "answered" in logged and "decided" in logged
    for needle in (visa.reference, bank.reference, bank.binding, "739146"):
        assert needle.encode() not in blob, needle
        assert needle not in logged, needle
    for form in (block, block.hex(), block.hex().upper()):
        data = form if isinstance(form, bytes) else form.encode()
        assert data not in blob
        assert (form.hex() if isinstance(form, bytes) else form) not in logged


async def test_concurrent_requests_cannot_overdraw(link, accounts, store, security):
    """Ten concurrent authorizations each for the whole low limit: exactly one approved."""
    low = accounts["visa-low-limit"]
    reqs = [LinkRequest(rrn(900 + i), low.reference, low.credit_limit) for i in range(10)]
    results = await asyncio.gather(*(link.request(r) for r in reqs))
    assert (
        sorted(r.code for r in results)
        == [ResponseCode.APPROVED] + [ResponseCode.INSUFFICIENT_FUNDS] * 9
    )
    assert await held(store, security, low.reference) == low.credit_limit


@pytest.mark.parametrize(
    "bad",
    [
        {"rrn": "SHORT"},
        {"amount": 0},
        {"amount": 10**12},
        {"mti": "0400"},
    ],
)
async def test_bad_link_requests_are_refused_before_sending(link, host, accounts, bad):
    """A malformed request raises MessageError; nothing is journalled or sent."""
    fields = {"rrn": rrn(950), "account": accounts["visa-ok"].reference, "amount": 100}
    fields.update(bad)
    handled = host.handled
    with pytest.raises(MessageError):
        await link.request(LinkRequest(**fields))
    assert host.handled == handled
    assert link.journal.get(str(fields["rrn"])) is None
