"""The gateway over real RabbitMQ, SoftHSM2 and the ISO 8583 issuer host: outcomes, sale."""

from __future__ import annotations

from actors.gateway.service import rrn_of
from actors.iso8583 import spec
from protocol.messages import AuthCode, CapCode
from tests.gateway.conftest import GatewayEnv


async def test_approved_authorization_carries_a_cap_token(gateway_env: GatewayEnv) -> None:
    p = await gateway_env.purchase("ok", 2_000)
    res, baggage = await gateway_env.authorize(p)
    assert res.payload.auth_code is AuthCode.APPROVED
    assert res.payload.auth_amt.amount == 2_000 and res.payload.auth_amt.currency == "JPY"
    assert res.payload.response.approval_code
    assert res.auth_tags == p.data.auth_tags
    assert res.cap_res_payload is None
    assert baggage.cap_token  # sealed to the gateway: opaque to the merchant
    assert gateway_env.host_count(rrn_of(p.data.auth_tags.rrpid)) == 1


async def test_sale_is_a_financial_request_with_capture_result(gateway_env: GatewayEnv) -> None:
    p = await gateway_env.purchase("ok", 3_000, capture_now=True)
    res, _ = await gateway_env.authorize(p)
    assert res.payload.auth_code is AuthCode.APPROVED
    assert res.cap_res_payload is not None
    assert res.cap_res_payload.cap_code is CapCode.SUCCESS
    assert res.cap_res_payload.cap_amt.amount == 3_000
    import sqlite3

    with sqlite3.connect(gateway_env.issuer_store_path) as db:
        (mti,) = db.execute(
            "SELECT mti FROM transactions WHERE rrn = ?", (rrn_of(p.data.auth_tags.rrpid),)
        ).fetchone()
    assert mti == spec.FINANCIAL_REQUEST


async def test_declines_from_the_host(gateway_env: GatewayEnv) -> None:
    cases = (
        ("low", 10_000, AuthCode.DECLINED, "insufficient_funds"),
        ("stolen", 1_000, AuthCode.DECLINED, "stolen_card"),
        ("expired", 1_000, AuthCode.EXPIRED_CARD, "expired_card"),
    )
    for card, amount, code, reason in cases:
        p = await gateway_env.purchase(card, amount)
        res, baggage = await gateway_env.authorize(p, card)
        assert (res.payload.auth_code, res.payload.response.reason) == (code, reason), card
        assert res.payload.auth_amt.amount == 0
        assert baggage.cap_token is None
        assert gateway_env.host_count(rrn_of(p.data.auth_tags.rrpid)) == 1
