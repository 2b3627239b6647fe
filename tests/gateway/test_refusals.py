"""The gateway refuses what §3.4 forbids, without state change, and keeps secrets out."""

from __future__ import annotations

import sqlite3

from structlog.testing import capture_logs

from actors.gateway.service import rrn_of
from protocol import codec, ids, pin
from protocol.errors import ErrorCode
from protocol.messages import AuthCode, AuthReq, AuthTags
from protocol.wrapper import decode_message
from tests.gateway.conftest import ORDER_DESC, GatewayEnv, error_code, error_code_or_none


def ledger_rows(env: GatewayEnv) -> int:
    with sqlite3.connect(env.ledger_path) as db:
        return int(db.execute("SELECT COUNT(*) FROM auths").fetchone()[0])


def retagged(p_tags: AuthTags) -> AuthTags:
    """The same purchase under a new RRPID (what a replaying merchant would send)."""
    return AuthTags(ids.new_rrpid(), p_tags.mer_term_ids, p_tags.date, p_tags.trans_ids)


async def test_duplicate_auth_req_gets_the_stored_answer_and_one_host_auth(
    gateway_env: GatewayEnv,
) -> None:
    p = await gateway_env.purchase("ok", 1_200)
    wrapped = await gateway_env.wrap(p.data, p.pi)
    _, first = await gateway_env.send(wrapped)
    _, second = await gateway_env.send(wrapped)
    assert first == second  # byte for byte: the stored AuthRes
    res, _ = await gateway_env.answer(second)
    assert res.payload.auth_code is AuthCode.APPROVED
    assert gateway_env.host_count(rrn_of(p.data.auth_tags.rrpid)) == 1
    # Same RRPID, other content (re-encrypted, so other bytes): a replay, not a second answer.
    _, other = await gateway_env.send(await gateway_env.wrap(p.data, p.pi))
    assert error_code(other) is ErrorCode.REPLAY


async def test_altered_byte_anywhere_is_an_error_and_changes_nothing(
    gateway_env: GatewayEnv,
) -> None:
    p = await gateway_env.purchase("ok", 1_300)
    wrapped = await gateway_env.wrap(p.data, p.pi)
    body = codec.encode(decode_message(wrapped, now_ms=ids.SystemClock().now_ms()).body)
    start = wrapped.index(body)
    rows = ledger_rows(gateway_env)
    step = max(1, len(body) // 16)
    for offset in range(0, len(body), step):
        altered = bytearray(wrapped)
        altered[start + offset] ^= 0x01
        _, reply = await gateway_env.send(bytes(altered))
        assert isinstance(error_code(reply), ErrorCode), offset
    assert ledger_rows(gateway_env) == rows
    assert gateway_env.host_count(rrn_of(p.data.auth_tags.rrpid)) == 0
    # The untouched request still goes through: no PI, RRPID or XID was consumed.
    _, reply = await gateway_env.send(wrapped)
    res, _ = await gateway_env.answer(reply)
    assert res.payload.auth_code is AuthCode.APPROVED


async def test_same_pi_under_a_new_rrpid_is_pi_previously_used(gateway_env: GatewayEnv) -> None:
    p = await gateway_env.purchase("ok", 1_400)
    first, _ = await gateway_env.authorize(p)
    assert first.payload.auth_code is AuthCode.APPROVED
    replay = type(p.data)(
        retagged(p.data.auth_tags), p.data.check_digests, p.data.payload, False, None
    )
    res, baggage = await gateway_env.answer(
        (await gateway_env.send(await gateway_env.wrap(replay, p.pi)))[1]
    )
    assert res.payload.auth_code is AuthCode.PI_PREVIOUSLY_USED
    assert baggage.cap_token is None
    assert gateway_env.host_count(rrn_of(replay.auth_tags.rrpid)) == 0


async def test_pi_swapped_between_purchases_is_refused(gateway_env: GatewayEnv) -> None:
    a = await gateway_env.purchase("ok", 1_500)
    b = await gateway_env.purchase("ok", 1_500)
    swapped = type(a.data)(
        retagged(a.data.auth_tags), a.data.check_digests, a.data.payload, False, None
    )
    res, _ = await gateway_env.answer(
        (await gateway_env.send(await gateway_env.wrap(swapped, b.pi)))[1]
    )
    assert res.payload.auth_code is AuthCode.PI_AUTH_MISMATCH
    assert gateway_env.host_count(rrn_of(swapped.auth_tags.rrpid)) == 0
    # Neither PI was consumed by the refusal.
    for p in (a, b):
        ok, _ = await gateway_env.authorize(p)
        assert ok.payload.auth_code is AuthCode.APPROVED


async def test_amount_above_purchase_amount_is_refused(gateway_env: GatewayEnv) -> None:
    p = await gateway_env.purchase("ok", 1_000, auth_amount=1_001)
    res, _ = await gateway_env.authorize(p)
    assert res.payload.auth_code is AuthCode.AMOUNT_ERROR
    assert gateway_env.host_count(rrn_of(p.data.auth_tags.rrpid)) == 0


async def test_gateway_never_sees_the_order_and_stores_no_pan(gateway_env: GatewayEnv) -> None:
    card = gateway_env.cards["ok"]
    p = await gateway_env.purchase("ok", 1_600)
    wrapped = await gateway_env.wrap(p.data, p.pi)
    assert ORDER_DESC not in wrapped and p.oi_data not in wrapped
    req = decode_message(wrapped, now_ms=ids.SystemClock().now_ms()).body
    assert isinstance(req, AuthReq) and ORDER_DESC not in req.enc
    with capture_logs() as logs:
        res, _ = await gateway_env.answer((await gateway_env.send(wrapped))[1])
    assert res.payload.auth_code is AuthCode.APPROVED
    assert logs, "the gateway logged the authorization"
    assert card.number not in repr(logs) and card.number[-10:] not in repr(logs)
    files = [gateway_env.ledger_path, *gateway_env.ledger_path.parent.glob("*.sqlite*")]
    for path in files:
        blob = path.read_bytes()
        assert card.number.encode() not in blob, path.name
        assert ORDER_DESC not in blob, path.name


async def test_pin_bearing_pi_never_authorizes_and_changes_nothing(gateway_env: GatewayEnv) -> None:
    """Without a zone PIN key the keystore will not open a PIN-bearing PI (Rule 4 of the
    service): no host request, no ledger row, no PIN block in the logs, no approval."""
    card = gateway_env.cards["ok"]
    block = pin.encode_format0("1234", card.number)
    p = await gateway_env.purchase("ok", 1_800, pin="1234")
    rows = ledger_rows(gateway_env)
    with capture_logs() as logs:
        _, reply = await gateway_env.send(await gateway_env.wrap(p.data, p.pi))
    decoded = decode_message(reply, now_ms=ids.SystemClock().now_ms())
    assert not isinstance(decoded.body, AuthReq)
    assert gateway_env.host_count(rrn_of(p.data.auth_tags.rrpid)) == 0
    assert block.hex() not in repr(logs) and block not in repr(logs).encode()
    assert error_code_or_none(reply) is None
    res, _ = await gateway_env.answer(reply)
    assert (res.payload.auth_code, res.payload.response.reason) == (
        AuthCode.INVALID_TRANSACTION,
        "pinDebitUnavailable",
    )
    assert ledger_rows(gateway_env) == rows + 1
