"""protocol/payment.py: AuthReq/AuthRes build and open round trips, tamper and key checks."""

from __future__ import annotations

import functools
import secrets

import pytest

from protocol import codec, ids
from protocol import payment as pw
from protocol.certreq import pop_signer
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import SUITES
from protocol.messages import (
    AuthCode,
    AuthReqData,
    AuthReqPayload,
    AuthResBaggage,
    AuthResData,
    AuthResPayload,
    AuthTags,
    CheckDigests,
    CurrAmt,
    MerTermIDs,
    ResponseData,
    TransIDs,
)
from protocol.treatments import Baggaged
from protocol.wrapper import decode_message
from tests.softkeys import SoftKey

SUITE = SUITES["p256"]  # software EC keys: fast to make


@functools.cache
def party(name: str) -> tuple[SoftKey, bytes]:
    key = SoftKey(SUITE, label=f"wire-{name}")
    return key, pop_signer(key.public_key())


def auth_req_data(amount: int = 1500) -> AuthReqData:
    trans = TransIDs(b"lid-c", b"lid-m", ids.new_xid(), 1_700_000_000_000, None, "en")
    tags = AuthTags(ids.new_rrpid(), MerTermIDs("M-1", None, None), 1_700_000_000_000, trans)
    payload = AuthReqPayload(False, CurrAmt("JPY", amount), None, None, None)
    return AuthReqData(
        tags, CheckDigests(secrets.token_bytes(32), secrets.token_bytes(32)), payload, False, None
    )


async def make_req(data: AuthReqData, pi: bytes = b"the PI, sealed to P"):
    m_sig, m_thumb = party("merchant-sig")
    p_kx, p_thumb = party("gateway-kx")
    return await pw.build_auth_req(
        m_sig, m_thumb, SUITE, p_kx.public_key(), p_thumb, data, pi, [b"cert-a", b"cert-b"]
    )


async def test_auth_req_round_trip_names_the_signer() -> None:
    data = auth_req_data()
    req = await make_req(data)
    assert req.certs == [b"cert-a", b"cert-b"]
    p_kx, p_thumb = party("gateway-kx")
    m_sig, m_thumb = party("merchant-sig")
    seen: list[bytes] = []

    def resolve(thumb: bytes):
        seen.append(thumb)
        return m_sig.public_key()

    got, pi, signer = await pw.open_auth_req(p_kx, p_thumb, req, resolve)
    assert got == data
    assert pi == b"the PI, sealed to P"
    assert signer == m_thumb and seen == [m_thumb]


async def test_auth_req_tampered_baggage_or_wrong_key_is_refused() -> None:
    req = await make_req(auth_req_data())
    p_kx, p_thumb = party("gateway-kx")
    m_sig, _ = party("merchant-sig")
    env = codec.decode(Baggaged, req.enc)
    swapped = type(req)(codec.encode(Baggaged(env.envelope, b"another PI")), req.certs)
    with pytest.raises(ProtocolError) as err:
        await pw.open_auth_req(p_kx, p_thumb, swapped, m_sig.public_key())
    assert err.value.code is ErrorCode.LINKAGE_FAILURE
    other, _ = party("not-the-merchant")
    with pytest.raises(ProtocolError) as err:
        await pw.open_auth_req(p_kx, p_thumb, req, other.public_key())
    assert err.value.code is ErrorCode.SIGNATURE_FAILURE
    stranger, stranger_thumb = party("other-gateway")
    with pytest.raises(ProtocolError):
        await pw.open_auth_req(stranger, stranger_thumb, req, m_sig.public_key())


async def test_auth_res_round_trip_and_wrapping() -> None:
    data = auth_req_data()
    p_sig, p_thumb = party("gateway-sig")
    m_kx, m_kx_thumb = party("merchant-kx")
    res_data = AuthResData(
        data.auth_tags,
        None,
        AuthResPayload(
            CurrAmt("JPY", 1500), AuthCode.APPROVED, ResponseData("123456", None, None, "LOG1")
        ),
        None,
        None,
    )
    baggage = AuthResBaggage(b"cap token", None, None)
    res = await pw.build_auth_res(
        p_sig, p_thumb, SUITE, m_kx.public_key(), m_kx_thumb, res_data, baggage, [b"gw-cert"]
    )
    got, got_baggage = await pw.open_auth_res(m_kx, m_kx_thumb, res, p_sig.public_key())
    assert got == res_data and got_baggage == baggage
    now = ids.SystemClock().now_ms()
    decoded = decode_message(pw.wrap_auth_res(now, res, res_data), now_ms=now)
    assert decoded.body == res
    pw.check_auth_header(decoded.header, res_data.auth_tags)
    req = await make_req(data)
    decoded = decode_message(pw.wrap_auth_req(now, req, data), now_ms=now)
    assert decoded.body == req
    with pytest.raises(ProtocolError) as err:
        pw.check_auth_header(decoded.header, auth_req_data().auth_tags)
    assert err.value.code is ErrorCode.WRAPPER_MSG_MISMATCH
