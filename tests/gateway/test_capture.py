"""After authorization, end to end over the real bus, keystore and issuer host: the POS's
``MerchantService.after`` (actors/merchant/after.py) sends capture, reversals, credits and
batch administration to the running gateway actor (actors/gateway/capture.py, batch.py),
which completes, releases and refunds at the issuer host through its store-and-forward link.

Each test authorizes its own purchases (tests/gateway/conftest.py), records the order as the
POS's PReq flow does, then drives the POS; it checks the answers, the POS's and the gateway's
books, and the issuer host's accounts (balance and holds of the card, read from its database).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from actors.gateway.books import ITEMS, PAYMENTS
from actors.merchant.payments import PAYMENTS as PAYMENTS_M
from actors.merchant.payments import REQUESTS
from actors.merchant.service import MerchantService
from actors.merchant.store import MerchantStore
from protocol import clearing, codec, ids
from protocol.certs import certificate_der
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (
    BAStatus,
    BatchItemKind,
    BatchOperation,
    BatchStatus,
    CapItem,
    CapPayload,
    CapReqData,
    CurrAmt,
    MerTermIDs,
    RRTags,
    TransIDs,
    TransmissionStatus,
)
from protocol.states import merchant_order
from tests.gateway.after_fixtures import (  # noqa: F401 - the fixture
    Pos,
    books,
    card,
    pos_fixture,
    restart_gateway,
)
from tests.gateway.conftest import BRAND, MERCHANT_ID, error_code_or_none


async def test_partial_capture_completes_the_hold_at_the_host(pos: Pos) -> None:
    before = card(pos.env)
    lid = await pos.authorized(10_000)
    assert card(pos.env) == (before[0], before[1] + 10_000)  # the authorization holds
    [result] = await pos.service.after.capture([lid], [6_000])
    assert result.code == "SUCCESS" and result.amount == 6_000 and result.batch_id
    assert result.state == "captured"
    await pos.settled()
    # the completion posted 6,000 and released the whole hold, the remainder included
    assert card(pos.env) == (before[0] + 6_000, before[1])
    p = books(pos.env).payment(pos.store.order(lid).auth_rrpid)  # type: ignore[union-attr]
    assert (p.state, p.authorized, p.captured) == ("captured", 10_000, 6_000)


async def test_capture_of_many_in_one_request(pos: Pos) -> None:
    before = card(pos.env)
    lids = [await pos.authorized(a) for a in (1_000, 2_000, 3_000)]
    results = await pos.service.after.capture(lids)
    assert [r.code for r in results] == ["SUCCESS"] * 3
    assert [r.amount for r in results] == [1_000, 2_000, 3_000]
    assert len({r.batch_id for r in results}) == 1
    assert len({r.batch_seq for r in results}) == 3
    await pos.settled()
    assert card(pos.env) == (before[0] + 6_000, before[1])


async def test_over_capture_and_second_capture_are_refused_without_effect(pos: Pos) -> None:
    lid = await pos.authorized(5_000)
    before = card(pos.env)
    [over] = await pos.service.after.capture([lid], [5_001])
    assert (over.code, over.amount, over.state) == ("AMOUNT_ERROR", 0, "authorized")
    auth_rrpid = pos.store.order(lid).auth_rrpid  # type: ignore[union-attr]
    assert books(pos.env).payment(auth_rrpid) is None  # a refused item records nothing
    [ok] = await pos.service.after.capture([lid], [5_000])
    assert ok.code == "SUCCESS"
    # the merchant's own table refuses a second capture before anything is sent
    with pytest.raises(ProtocolError) as refused:
        await pos.service.after.capture([lid])
    assert refused.value.code is ErrorCode.STATE_VIOLATION
    await pos.settled()
    assert card(pos.env) == (before[0] + 5_000, before[1] - 5_000)


async def test_replayed_capture_gets_the_stored_answer_and_no_second_effect(pos: Pos) -> None:
    lid = await pos.authorized(4_000)
    [ok] = await pos.service.after.capture([lid])
    assert ok.code == "SUCCESS"
    await pos.settled()
    after_first = card(pos.env)
    with pos.store.db.read() as db:
        request = db.execute(
            sa.select(REQUESTS.c.request).order_by(REQUESTS.c.created.desc()).limit(1)
        ).scalar_one()
    items = books(pos.env).count(ITEMS)
    first = second = None
    for _ in range(2):  # a redelivery: the same bytes twice
        _, reply = await pos.env.client.request_raw(str(14), bytes(request))
        assert error_code_or_none(reply) is None
        first, second = second, reply
    assert first == second
    await pos.settled()
    assert books(pos.env).count(ITEMS) == items
    assert card(pos.env) == after_first


async def test_another_request_under_a_used_rrpid_is_a_replay(pos: Pos) -> None:
    after = pos.service.after
    lid = await pos.authorized(1_800)
    order = pos.store.order(lid)
    assert order is not None and order.auth_rrpid is not None and order.trans_ids is not None
    m = pos.store.merchant(MERCHANT_ID)
    assert m is not None
    tags = RRTags(ids.new_rrpid(), MerTermIDs(MERCHANT_ID, None, None), ids.SystemClock().now_ms())
    trans = codec.decode(TransIDs, order.trans_ids)

    def capture(amount: int) -> CapReqData:
        payload = CapPayload(tags.date, CurrAmt("JPY", amount), None)
        return CapReqData(tags, [CapItem(trans, order.auth_rrpid, payload)])  # type: ignore[arg-type]

    first = await after._build(clearing.CAPTURE, m, capture(800), [order.cap_token])
    _, reply = await pos.env.client.request_raw(clearing.CAPTURE.req_amqp, first)
    assert error_code_or_none(reply) is None
    await pos.settled()
    before = card(pos.env)
    other = await after._build(clearing.CAPTURE, m, capture(1_800), [order.cap_token])
    _, reply = await pos.env.client.request_raw(clearing.CAPTURE.req_amqp, other)
    assert error_code_or_none(reply) is ErrorCode.REPLAY
    await pos.settled()
    assert card(pos.env) == before
    p = books(pos.env).payment(order.auth_rrpid)
    assert (p.state, p.captured) == ("captured", 800)


async def test_tampered_cap_token_is_refused(pos: Pos) -> None:
    """A bit flipped in the CapToken's wrapped key, its sealed body or its tag, or a token
    that is not one: ``invalidCapToken`` for the item, nothing recorded, nothing at the host."""
    lid = await pos.authorized(2_500)
    order = pos.store.order(lid)
    assert order is not None and order.cap_token is not None
    good = order.cap_token
    before = card(pos.env)
    for where in (60, len(good) // 2, len(good) - 5, None):
        if where is None:
            token = b"not a token at all"
        else:
            flipped = bytearray(good)
            flipped[where] ^= 0x01
            token = bytes(flipped)
        with pos.store.transaction() as db:  # the order's token, and the payment's once made
            pos.store.update_order(db, lid, 1, cap_token=token)
            db.execute(
                sa.update(PAYMENTS_M).where(PAYMENTS_M.c.lid_m == lid).values(cap_token=token)
            )
        p = pos.service.after.payment(lid)
        assert p is not None and p.cap_token == token
        [r] = await pos.service.after.capture([lid])
        assert (r.code, r.state) == ("INVALID_CAP_TOKEN", "authorized"), where
    assert books(pos.env).payment(order.auth_rrpid) is None  # nothing recorded
    await pos.settled()
    assert card(pos.env) == before


async def test_authorization_reversal_partial_then_full(pos: Pos) -> None:
    before = card(pos.env)
    lid = await pos.authorized(9_000)
    r = await pos.service.after.reverse_authorization(lid, 4_000)
    assert (r.code, r.amount, r.state) == ("APPROVED", 4_000, "authorized")
    await pos.settled()
    assert card(pos.env) == (before[0], before[1] + 4_000)  # the hold now covers 4,000
    [over] = await pos.service.after.capture([lid], [4_500])  # with the new CapToken
    assert over.code == "AMOUNT_ERROR"
    same = await pos.service.after.reverse_authorization(lid, 4_000)
    assert same.code == "AMOUNT_ERROR"  # not below what stays authorized
    full = await pos.service.after.reverse_authorization(lid, 0)
    assert (full.code, full.state) == ("APPROVED", "reversed")
    await pos.settled()
    assert card(pos.env) == before  # released
    with pytest.raises(ProtocolError) as refused:
        await pos.service.after.capture([lid])
    assert refused.value.code is ErrorCode.STATE_VIOLATION


async def test_credits_up_to_the_capture_and_their_reversal(pos: Pos) -> None:
    before = card(pos.env)
    lid = await pos.authorized(8_000)
    [cap] = await pos.service.after.capture([lid])
    assert cap.code == "SUCCESS"
    one = await pos.service.after.credit(lid, 3_000)
    two = await pos.service.after.credit(lid, 5_000)
    assert (one.code, two.code, two.state) == ("SUCCESS", "SUCCESS", "credited")
    over = await pos.service.after.credit(lid, 1)
    assert (over.code, over.amount) == ("AMOUNT_EXCEEDED", 0)
    await pos.settled()
    assert card(pos.env) == before  # 8,000 posted, 8,000 refunded
    rev = await pos.service.after.reverse_credit(lid, 5_000)
    assert (rev.code, rev.state) == ("SUCCESS", "credited")
    await pos.settled()
    assert card(pos.env) == (before[0] + 5_000, before[1])
    p = books(pos.env).payment(pos.store.order(lid).auth_rrpid)  # type: ignore[union-attr]
    assert (p.captured, p.credited, p.state) == (8_000, 3_000, "credited")
    rev2 = await pos.service.after.reverse_credit(lid, 3_000)
    assert (rev2.code, rev2.state) == ("SUCCESS", "captured")
    capr = await pos.service.after.reverse_capture(lid)
    assert (capr.code, capr.state) == ("SUCCESS", "authorized")
    await pos.settled()
    # the capture undone: nothing posted, the authorization holds again
    assert card(pos.env) == (before[0], before[1] + 8_000)
    full = await pos.service.after.reverse_authorization(lid, 0)
    assert full.code == "APPROVED"
    await pos.settled()
    assert card(pos.env) == before


async def test_batch_close_settles_with_the_host_and_then_changes_no_more(pos: Pos) -> None:
    after = pos.service.after
    opened = await after.batch(MERCHANT_ID, BatchOperation.OPEN)
    assert opened.ba_status is BAStatus.SUCCESS
    batch = opened.batch_id
    again = await after.batch(MERCHANT_ID, BatchOperation.OPEN, batch)
    assert again.ba_status is BAStatus.BATCH_ALREADY_OPEN
    a, b, c = [await pos.authorized(x) for x in (7_000, 2_000, 1_500)]
    caps = await after.capture([a, b, c], batch_id=batch)
    assert [r.batch_id for r in caps] == [batch] * 3
    assert (await after.credit(a, 2_500, batch_id=batch)).code == "SUCCESS"
    assert (await after.reverse_capture(c)).code == "SUCCESS"
    summary = await after.batch(MERCHANT_ID, None, batch, detail=(0, 10))
    st = summary.batch_status
    assert st is not None and (st.debit_count, st.debit_amount) == (2, 9_000)
    assert (st.credit_count, st.credit_amount) == (1, 2_500)
    assert summary.details is not None
    kinds = [i.kind for i in summary.details.items]
    assert kinds.count(BatchItemKind.CAPTURE) == 3 and BatchItemKind.CAPTURE_REVERSAL in kinds
    wrong = BatchStatus(st.open_date_time, None, "JPY", 1, 2_500, 2, 9_001)
    unbalanced = await after.batch(MERCHANT_ID, BatchOperation.CLOSE, batch, totals=wrong)
    assert unbalanced.ba_status is BAStatus.TOTALS_OUT_OF_BALANCE
    closed = await after.batch(MERCHANT_ID, BatchOperation.CLOSE, batch, totals=st)
    assert closed.ba_status is BAStatus.SUCCESS
    assert closed.transmission_status is TransmissionStatus.SUCCESS
    assert closed.settlement is not None and closed.settlement.amount.amount == 9_000 - 2_500
    assert books(pos.env).batch(MERCHANT_ID, batch).host_code == "00"
    # the host's own totals for the batch are the gateway's
    with sqlite3.connect(pos.env.issuer_store_path) as db:
        host = dict(
            db.execute(
                "SELECT effect, SUM(amount) FROM transactions WHERE batch = ? AND state = 'active'"
                " GROUP BY effect",
                (f"{MERCHANT_ID}:{batch}",),
            ).fetchall()
        )
    assert host == {"completion": 9_000, "credit": 2_500}
    # and the operator's print of it says the same (setpay gateway batches)
    out = subprocess.run(
        [sys.executable, "-m", "cli", "gateway", "batches", "--id", pos.env.actor.instance,
         "--merchant", MERCHANT_ID, "--json"],
        capture_output=True, text=True, check=True, timeout=120,
        env={**os.environ, "SETPAY_DATA_DIR": str(pos.env.actor.settings.data_dir),
             "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    [row] = [r for r in json.loads(out.stdout) if r["batch"] == batch]
    assert (row["state"], row["brand"], row["host"]) == ("settled", BRAND, "00")
    assert (row["captures"], row["capture_reversals"], row["credits"]) == (
        [2, 9_000], [1, 1_500], [1, 2_500],
    )  # fmt: skip
    assert row["net"] == 9_000 - 2_500
    # a closed batch changes no more
    assert (await after.reverse_capture(b)).code == "BATCH_CLOSED"
    assert (await after.reverse_credit(a, 2_500)).code == "BATCH_CLOSED"
    d = await pos.authorized(1_000)
    [late] = await after.capture([d], batch_id=batch)
    assert late.code == "BATCH_CLOSED"
    twice = await after.batch(MERCHANT_ID, BatchOperation.CLOSE, batch)
    assert twice.ba_status is BAStatus.BATCH_CLOSED
    assert books(pos.env).count(PAYMENTS) >= 3


async def test_pcert_brings_the_gateway_certificates_to_a_pos_that_has_none(
    pos: Pos, tmp_path: Path
) -> None:
    env = pos.env
    store = MerchantStore.open(tmp_path, "fresh")
    row = pos.store.merchant(MERCHANT_ID)
    assert row is not None
    store.save_merchant(row, ids.SystemClock().now_ms())
    fresh = MerchantService(store, pos.service.keys, env.client)
    try:
        assert store.gateway(BRAND) is None
        kx = await fresh.after.fetch_gateway_certs(MERCHANT_ID)
        assert kx == env.identity.kx_cert
        held = store.gateway(BRAND)
        assert held is not None and held[0] == certificate_der(env.identity.kx_cert)
        # and the POS can work with what it fetched: a capture through it succeeds
        lid = await pos.authorized(700)
        order = pos.store.order(lid)
        assert order is not None
        store.add_order(lid, MERCHANT_ID, "a pen", CurrAmt("JPY", 700), False,
                        merchant_order().to_bytes(), 1)  # fmt: skip
        with store.transaction() as db:
            store.update_order(
                db, lid, 1, xid=order.xid, trans_ids=order.trans_ids,
                auth_rrpid=order.auth_rrpid, auth_code=0, auth_amount=700,
                cap_token=order.cap_token,
            )  # fmt: skip
        [ok] = await fresh.after.capture([lid])
        assert ok.code == "SUCCESS"
    finally:
        fresh.close()
        store.close()


async def test_purge_reverses_what_an_open_batch_holds(pos: Pos) -> None:
    after = pos.service.after
    opened = await after.batch(MERCHANT_ID, BatchOperation.OPEN)
    batch = opened.batch_id
    before = card(pos.env)
    a, b = [await pos.authorized(x) for x in (3_000, 2_000)]
    caps = await after.capture([a, b], batch_id=batch)
    assert [r.code for r in caps] == ["SUCCESS", "SUCCESS"]
    assert (await after.credit(a, 1_000, batch_id=batch)).code == "SUCCESS"
    await pos.settled()
    assert card(pos.env) == (before[0] + 4_000, before[1])
    purged = await after.batch(MERCHANT_ID, BatchOperation.PURGE, batch)
    assert purged.ba_status is BAStatus.SUCCESS
    st = purged.batch_status
    assert st is not None and (st.debit_count, st.credit_count) == (0, 0)
    await pos.settled()
    # the captures and the credit undone at the host: both authorizations hold again
    assert card(pos.env) == (before[0], before[1] + 5_000)
    for lid in (a, b):
        p = books(pos.env).payment(pos.store.order(lid).auth_rrpid)  # type: ignore[union-attr]
        assert (p.state, p.captured, p.credited) == ("authorized", 0, 0)
    assert books(pos.env).batch(MERCHANT_ID, batch).state == "open"


async def test_host_messages_committed_before_a_crash_reach_the_host_once(
    pos: Pos, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the books committed a capture and before the link's journal took its
    completion: the restarted gateway queues it from the outbox, once."""
    clearing = pos.env.actor.clearing
    assert clearing is not None
    lid = await pos.authorized(3_300)
    before = card(pos.env)

    async def crash(_outbox: object) -> None:
        raise RuntimeError("crash between commit and forward")

    monkeypatch.setattr(clearing, "forward", crash)
    # the failed delivery is redelivered and answered from the books: the capture stands
    [r] = await pos.service.after.capture([lid])
    assert r.code == "SUCCESS"
    monkeypatch.undo()
    assert len(books(pos.env).unqueued()) == 1
    await pos.settled()
    assert card(pos.env) == before  # the host has not heard of it
    await restart_gateway(pos.env)
    await restart_gateway(pos.env)  # twice: the second start finds nothing left to queue
    await pos.settled()
    assert books(pos.env).unqueued() == []
    assert card(pos.env) == (before[0] + 3_300, before[1] - 3_300)


async def test_a_capture_unanswered_stays_pending_and_its_resend_captures_once(pos: Pos) -> None:
    """after.py Rule 2: the gateway is down when the POS captures; the request stays pending
    (the payment ``capture_sent``, nothing else can start); once the gateway is back, the POS
    sends the same bytes again and gets the one answer: one completion at the host."""
    from actors.gateway.actor import GatewayActor
    from actors.merchant.errors import MerchantError

    lid = await pos.authorized(2_200)
    await pos.settled()
    before = card(pos.env)
    old = pos.env.actor
    await old.stop()
    try:
        with pytest.raises(MerchantError):
            await pos.service.after.capture([lid])
        p = pos.service.after.payment(lid)
        assert p is not None and p.state == "capture_sent" and p.pending is not None
        rrpid = p.pending
        assert rrpid in pos.service.after.pending()
        with pytest.raises(ProtocolError) as busy:
            await pos.service.after.capture([lid])
        assert busy.value.code is ErrorCode.STATE_VIOLATION
    finally:
        new = GatewayActor(
            old.settings, old.instance, url=old.url, keystore_queue=old.keystore_queue,
            issuer_port=old.issuer_port,
        )  # fmt: skip
        await new.start()
        pos.env.actor = new
    [r] = await pos.service.after.resend(rrpid)
    assert (r.code, r.state) == ("SUCCESS", "captured")
    await pos.settled()
    assert card(pos.env) == (before[0] + 2_200, before[1] - 2_200)
    assert rrpid not in pos.service.after.pending()


async def test_a_sale_is_refunded_but_has_no_capture_to_reverse(pos: Pos) -> None:
    """A sale (CaptureNow) posted at authorization (0200): credits refund it at the host; a
    capture reversal finds no capture (use a credit); a capture is a duplicate."""
    before = card(pos.env)
    lid = await pos.authorized(4_400, sale=True)
    await pos.settled()
    assert card(pos.env) == (before[0] + 4_400, before[1])
    p = pos.service.after.payment(lid)
    assert p is not None and (p.state, p.captured) == ("captured", 4_400)
    refund = await pos.service.after.credit(lid, 1_400)
    assert (refund.code, refund.state) == ("SUCCESS", "credited")
    await pos.settled()
    assert card(pos.env) == (before[0] + 3_000, before[1])
    back = await pos.service.after.reverse_credit(lid, 1_400)
    assert (back.code, back.state) == ("SUCCESS", "captured")
    undo = await pos.service.after.reverse_capture(lid)
    assert (undo.code, undo.state) == ("ORIGINAL_NOT_FOUND", "captured")
    await pos.settled()
    assert card(pos.env) == (before[0] + 4_400, before[1])
