"""The purchase's protocol path under every suite the project offers, with software keys (the
only way to run ``rsa2048-oaep256`` here: SoftHSM2 2.6 refuses OAEP-SHA256): cardholder's
dual-signed PReq -> merchant's check -> AuthReq with the PI as baggage -> gateway opens it and
the PI -> AuthRes -> merchant opens it. The live processes run the same path in
tests/demo/test_suites_live.py for the suites SoftHSM2 can do.

A suite is one decision for every party: a key of another suite's OAEP hash does not open
what was sealed, so a party that guessed the peer's suite wrong fails loudly."""

from __future__ import annotations

import secrets

import pytest

from protocol import codec, dualsig, ids
from protocol import payment as pw
from protocol.certreq import pop_signer
from protocol.errors import ProtocolError
from protocol.keys import SUITES, Suite, suite_for_public_key
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
from tests.softkeys import SoftKey

ALL_SUITES = ("rsa2048", "rsa3072", "rsa2048-oaep256", "p256")


def _party(suite: Suite, name: str) -> tuple[SoftKey, bytes]:
    key = SoftKey(suite, label=f"{name}-{suite.name}")
    return key, pop_signer(key.public_key())


@pytest.mark.parametrize("name", ALL_SUITES)
async def test_a_purchase_runs_end_to_end_under_every_suite(name: str) -> None:
    suite = SUITES[name]
    card, card_thumb = _party(suite, "cardholder")
    m_sig, m_sig_thumb = _party(suite, "merchant-sig")
    m_kx, m_kx_thumb = _party(suite, "merchant-kx")
    g_sig, g_sig_thumb = _party(suite, "gateway-sig")
    g_kx, g_kx_thumb = _party(suite, "gateway-kx")
    # Every party reads its peers' keys under the deployment's suite (the key ring's rule).
    assert suite_for_public_key(g_kx.public_key(), suite.oaep_hash) == suite
    xid = ids.new_xid()
    pi_head = codec.packb(["PIHead", xid, 1500])
    oi_data = codec.packb(["OIData", xid, "two books"])
    pan_data = codec.packb(["4000000000000002", "203012", secrets.token_bytes(32)])
    # Cardholder -> merchant: the dual signature, the PI sealed to the gateway.
    parts = await dualsig.make_dual_signed(
        card, card_thumb, suite, g_kx.public_key(), g_kx_thumb, m_sig_thumb, pi_head, pan_data,
        oi_data,
    )  # fmt: skip
    seen = dualsig.verify_at_merchant(parts.pi, parts.oi, card.public_key(), m_sig_thumb,
                                      g_kx_thumb)  # fmt: skip
    assert seen.oi_data == oi_data
    # Merchant -> gateway: AuthReq, the PI as unopened baggage.
    trans = TransIDs(b"lid-c", b"lid-m", xid, 1_700_000_000_000, None, "en")
    tags = AuthTags(ids.new_rrpid(), MerTermIDs("M-1", None, None), 1_700_000_000_000, trans)
    data = AuthReqData(
        tags, CheckDigests(dualsig.oi_digest(oi_data), secrets.token_bytes(32)),
        AuthReqPayload(False, CurrAmt("JPY", 1500), None, None, None), False, None,
    )  # fmt: skip
    req = await pw.build_auth_req(
        m_sig, m_sig_thumb, suite, g_kx.public_key(), g_kx_thumb, data, parts.pi, [b"c"]
    )
    got, pi, signer = await pw.open_auth_req(g_kx, g_kx_thumb, req, lambda _t: m_sig.public_key())
    assert got == data and pi == parts.pi and signer == m_sig_thumb
    opened = await dualsig.open_at_gateway(
        pi, g_kx, g_kx_thumb, card.public_key(), m_sig_thumb, got.check_digests.hoi_data
    )
    assert opened.pi_head == pi_head and opened.pan_data == pan_data
    # Gateway -> merchant: AuthRes to the merchant's key-exchange key.
    payload = AuthResPayload(
        CurrAmt("JPY", 1500), AuthCode.APPROVED, ResponseData("123456", None, None, "LOG1")
    )
    res_data = AuthResData(tags, None, payload, None, None)
    res = await pw.build_auth_res(
        g_sig, g_sig_thumb, suite, m_kx.public_key(), m_kx_thumb, res_data,
        AuthResBaggage(b"cap token", None, None), [b"g"],
    )  # fmt: skip
    back, _ = await pw.open_auth_res(m_kx, m_kx_thumb, res, g_sig.public_key())
    assert back == res_data


async def test_a_peer_guessing_another_oaep_hash_cannot_open() -> None:
    """Sealed under OAEP-SHA256, opened by a key of the SHA-1 suite: refused, not garbage."""
    sealed_under, opened_by = SUITES["rsa2048-oaep256"], SUITES["rsa2048"]
    card, card_thumb = _party(sealed_under, "cardholder")
    g_kx, g_kx_thumb = _party(sealed_under, "gateway-kx")
    wrong = SoftKey(opened_by, label="gateway-kx-sha1")
    wrong._key = g_kx._key  # the same RSA key, used under the other OAEP hash
    parts = await dualsig.make_dual_signed(
        card, card_thumb, sealed_under, g_kx.public_key(), g_kx_thumb, b"m" * 32,
        codec.packb(["PIHead"]), codec.packb(["PAN"]), codec.packb(["OIData"]),
    )  # fmt: skip
    with pytest.raises(ProtocolError):
        await dualsig.open_at_gateway(parts.pi, wrong, g_kx_thumb, card.public_key(), b"m" * 32)
