"""Split shipment with AuthTokens, end to end over the real bus, keystore and issuer host
(actors/gateway/service.py Rule 6, actors/merchant/after.py Rule 5): a purchase authorizes
its first shipment only; the AuthRes carries an AuthToken for the rest; the POS's
``authorize_next`` authorizes each next shipment with it (no PI, no cardholder), each a new
hold at the issuer host with its own CapToken, captured and refunded like any payment.
"""

from __future__ import annotations

import pytest

from protocol.errors import ErrorCode, ProtocolError
from tests.gateway.after_fixtures import (  # noqa: F401 - the fixture
    Pos,
    books,
    card,
    pos_fixture,
)

pytestmark = pytest.mark.integration


async def test_three_shipments_each_authorized_captured_and_settled(pos: Pos) -> None:
    before = card(pos.env)
    lid = await pos.authorized(10_000, first=4_000)
    order = pos.store.order(lid)
    assert order.auth_token is not None and order.auth_amount == 4_000
    assert card(pos.env) == (before[0], before[1] + 4_000)  # only the first shipment is held
    [first] = await pos.service.after.capture([lid])
    assert (first.code, first.amount) == ("SUCCESS", 4_000)

    second = await pos.service.after.authorize_next(lid, 3_500)
    assert (second.code, second.amount, second.more) == ("APPROVED", 3_500, True)
    assert second.lid_m is not None and second.lid_m != lid
    token2 = pos.store.order(lid).auth_token
    assert token2 is not None and token2 != order.auth_token
    await pos.settled()
    assert card(pos.env) == (before[0] + 4_000, before[1] + 3_500)
    [cap2] = await pos.service.after.capture([second.lid_m], [3_000])  # partial
    assert (cap2.code, cap2.amount) == ("SUCCESS", 3_000)

    third = await pos.service.after.authorize_next(lid, 2_500)  # what is left, exactly
    assert (third.code, third.amount, third.more) == ("APPROVED", 2_500, False)
    assert pos.store.order(lid).auth_token is None
    with pytest.raises(ProtocolError) as no_token:
        await pos.service.after.authorize_next(lid, 1)
    assert no_token.value.code is ErrorCode.STATE_VIOLATION
    [cap3] = await pos.service.after.capture([third.lid_m])
    assert cap3.code == "SUCCESS"
    refund = await pos.service.after.credit(third.lid_m, 500)
    assert (refund.code, refund.amount) == ("SUCCESS", 500)
    await pos.settled()
    # captured 4 000 + 3 000 + 2 500, refunded 500; no hold left
    assert card(pos.env) == (before[0] + 9_000, before[1])

    shipments = pos.service.after.shipments(lid)
    assert [(s.authorized, s.captured, s.credited) for s in shipments] == [
        (3_500, 3_000, 0), (2_500, 2_500, 500),
    ]  # fmt: skip
    b = books(pos.env)
    for s in shipments:
        assert s.auth_rrpid is not None
        p = b.payment(s.auth_rrpid)
        assert p is not None and p.xid == order.xid and p.captured == s.captured


async def test_a_next_shipment_above_the_token_is_refused_and_the_token_stays(pos: Pos) -> None:
    before = card(pos.env)
    lid = await pos.authorized(5_000, first=1_000)
    token = pos.store.order(lid).auth_token
    over = await pos.service.after.authorize_next(lid, 4_001)
    assert (over.code, over.amount, over.lid_m) == ("AMOUNT_ERROR", 0, None)
    assert pos.store.order(lid).auth_token == token
    await pos.settled()
    assert card(pos.env) == (before[0], before[1] + 1_000)
    ok = await pos.service.after.authorize_next(lid, 4_000)
    assert ok.ok and not ok.more
    # the shipment's authorization is reversed in part, then in full: holds released
    part = await pos.service.after.reverse_authorization(ok.lid_m, 1_500)
    assert (part.code, part.amount) == ("APPROVED", 1_500)
    full = await pos.service.after.reverse_authorization(ok.lid_m, 0)
    assert full.code == "APPROVED"
    await pos.settled()
    assert card(pos.env) == (before[0], before[1] + 1_000)


async def test_a_full_authorization_carries_no_auth_token(pos: Pos) -> None:
    lid = await pos.authorized(2_000)
    assert pos.store.order(lid).auth_token is None
