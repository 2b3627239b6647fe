"""The wire after authorization (protocol/clearing.py) with software keys: every request and
response round-trips through its treatment and wrapper; CapTokens ride as signed baggage (a
swapped token breaks the linkage); the header's RRPID must be the body's."""

from __future__ import annotations

import functools

import pytest

from protocol import clearing, codec, ids
from protocol.certreq import pop_signer
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import SUITES
from protocol.messages import (
    AuthCode,
    AuthReqData,
    AuthReqPayload,
    AuthResBaggage,
    AuthResPayload,
    AuthRevCode,
    AuthRevReqData,
    AuthRevResData,
    AuthTags,
    BAStatus,
    BatchAdminReqData,
    BatchAdminResData,
    BatchOperation,
    CapCode,
    CapItem,
    CapPayload,
    CapReqData,
    CapResData,
    CapResItem,
    CapResPayload,
    CurrAmt,
    MerTermIDs,
    ResponseData,
    RRTags,
    TokenSeq,
    TransIDs,
)
from protocol.treatments import Baggaged
from protocol.wrapper import decode_message, make_header
from tests.softkeys import SoftKey

SUITE = SUITES["p256"]
NOW = 1_700_000_000_000


@functools.cache
def party(name: str) -> tuple[SoftKey, bytes]:
    key = SoftKey(SUITE, label=f"clearing-{name}")
    return key, pop_signer(key.public_key())


def trans() -> TransIDs:
    return TransIDs(b"lid-c", b"lid-m", ids.new_xid(), NOW, None, "en")


def tags() -> RRTags:
    return RRTags(ids.new_rrpid(), MerTermIDs("M-1", None, None), NOW)


async def request(pair: clearing.Pair, data: object, tokens: list[bytes]) -> bytes:
    m_sig, m_thumb = party("merchant-sig")
    p_kx, p_thumb = party("gateway-kx")
    return await clearing.build_request(
        pair, m_sig, m_thumb, SUITE, p_kx.public_key(), p_thumb, data, tokens, [b"c"], NOW
    )


async def opened(pair: clearing.Pair, wrapped: bytes) -> tuple[object, list[bytes], bytes]:
    p_kx, p_thumb = party("gateway-kx")
    m_sig, _ = party("merchant-sig")
    decoded = decode_message(wrapped, now_ms=NOW)
    data, tokens, signer = await clearing.open_request(
        pair, p_kx, p_thumb, decoded.body, m_sig.public_key()
    )
    clearing.check_header(decoded.header, data)
    return data, tokens, signer


async def test_capture_round_trip_with_its_tokens() -> None:
    items = [CapItem(trans(), ids.new_rrpid(), CapPayload(NOW, CurrAmt("JPY", n), None))
             for n in (100, 200)]  # fmt: skip
    data = CapReqData(tags(), items)
    wrapped = await request(clearing.CAPTURE, data, [b"token-1", b"token-2"])
    got, tokens, signer = await opened(clearing.CAPTURE, wrapped)
    assert got == data and tokens == [b"token-1", b"token-2"]
    assert signer == party("merchant-sig")[1]


async def test_a_swapped_token_breaks_the_linkage() -> None:
    data = CapReqData(tags(), [CapItem(trans(), ids.new_rrpid(),
                                       CapPayload(NOW, CurrAmt("JPY", 1), None))])  # fmt: skip
    wrapped = await request(clearing.CAPTURE, data, [b"mine"])
    decoded = decode_message(wrapped, now_ms=NOW)
    outer = codec.decode(Baggaged, decoded.body.enc)
    swapped_bag = codec.encode(TokenSeq([b"someone else's"]))
    body = type(decoded.body)(codec.encode(Baggaged(outer.envelope, swapped_bag)), [])
    p_kx, p_thumb = party("gateway-kx")
    with pytest.raises(ProtocolError) as err:
        await clearing.open_request(
            clearing.CAPTURE, p_kx, p_thumb, body, party("merchant-sig")[0].public_key()
        )
    assert err.value.code is ErrorCode.LINKAGE_FAILURE


async def test_header_rrpid_must_be_the_bodys() -> None:
    data = BatchAdminReqData(tags(), 3, [], BatchOperation.CLOSE, True, None, None)
    wrapped = await request(clearing.BATCH_ADMIN, data, [])
    got, tokens, _ = await opened(clearing.BATCH_ADMIN, wrapped)
    assert got == data and tokens == []
    with pytest.raises(ProtocolError) as err:
        clearing.check_header(make_header(NOW, rrpid=ids.new_rrpid()), data)
    assert err.value.code is ErrorCode.WRAPPER_MSG_MISMATCH


async def test_auth_reversal_carries_one_token_and_answers_a_new_one() -> None:
    t = trans()
    auth_tags = AuthTags(ids.new_rrpid(), MerTermIDs("M-1", None, None), NOW, t)
    original = AuthReqData(
        AuthTags(ids.new_rrpid(), MerTermIDs("M-1", None, None), NOW, t), None,
        AuthReqPayload(False, CurrAmt("JPY", 900), None, None, None), False, None,
    )  # fmt: skip
    payload = AuthResPayload(
        CurrAmt("JPY", 900), AuthCode.APPROVED, ResponseData(None, None, None, None)
    )
    data = AuthRevReqData(auth_tags, original, payload, CurrAmt("JPY", 400))
    got, tokens, _ = await opened(
        clearing.AUTH_REVERSAL, await request(clearing.AUTH_REVERSAL, data, [b"cap-token"])
    )
    assert got == data and tokens == [b"cap-token"]
    p_sig, p_thumb = party("gateway-sig")
    m_kx, m_kx_thumb = party("merchant-kx")
    res = AuthRevResData(auth_tags, AuthRevCode.APPROVED, CurrAmt("JPY", 400), None)
    wrapped = await clearing.build_response(
        clearing.AUTH_REVERSAL, p_sig, p_thumb, SUITE, m_kx.public_key(), m_kx_thumb, res,
        [b"g"], NOW, baggage=AuthResBaggage(b"new cap token", None, None),
    )  # fmt: skip
    decoded = decode_message(wrapped, now_ms=NOW)
    back, baggage = await clearing.open_response(
        clearing.AUTH_REVERSAL, m_kx, m_kx_thumb, decoded.body, p_sig.public_key()
    )
    assert back == res and baggage == AuthResBaggage(b"new cap token", None, None)
    clearing.check_header(decoded.header, back)


async def test_responses_open_only_for_the_merchant() -> None:
    p_sig, p_thumb = party("gateway-sig")
    m_kx, m_kx_thumb = party("merchant-kx")
    rr = tags()
    item = CapResItem(
        trans(), ids.new_rrpid(), CapResPayload(CapCode.SUCCESS, CurrAmt("JPY", 5), 1, 1)
    )
    for pair, data in (
        (clearing.CAPTURE, CapResData(rr, [item], [])),
        (clearing.BATCH_ADMIN, BatchAdminResData(rr, 1, BAStatus.SUCCESS, None, None, None, None)),
    ):
        wrapped = await clearing.build_response(
            pair, p_sig, p_thumb, SUITE, m_kx.public_key(), m_kx_thumb, data, [b"g"], NOW
        )
        decoded = decode_message(wrapped, now_ms=NOW)
        back, baggage = await clearing.open_response(
            pair, m_kx, m_kx_thumb, decoded.body, p_sig.public_key()
        )
        assert back == data and baggage is None
        other, other_thumb = party("another-merchant-kx")
        with pytest.raises(ProtocolError):
            await clearing.open_response(pair, other, other_thumb, decoded.body, p_sig.public_key())
