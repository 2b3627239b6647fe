"""Pended merchant and cardholder requests: CertRes requestPended, CertInq, operator approval
or rejection; a pended cardholder's reply key is kept only sealed."""

from __future__ import annotations

import argparse

import pytest

from actors.ca import cli
from actors.ca.vault import open_held
from protocol import codec, ids, pan
from protocol.certreq import pop_signer
from protocol.certs import CertType, cert_thumbprint, set_extension
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (
    CertInqReq,
    CertInqReqData,
    CertInqRes,
    CertRes,
    CertStatusCode,
    EntityKind,
    IDData,
    RegFormRes,
)
from protocol.requester import (
    CARequestError,
    build_cardholder_cert_req,
    build_me_aq_cert_req,
    build_reg_form_req,
    card_cinit,
    check_cardholder_cert_res,
    check_me_aq_cert_res,
    check_reg_form_res,
    inquire,
    inquire_cardholder,
    me_aq_init,
)
from protocol.signed import sign_data
from tests.fixtures_ca import CAEnv, files_bytes, new_key

REVIEWED = {"merchant_id": "M-7995", "merchant_name": "Lucky Bets", "mcc": "7995"}


async def pended(ca_env: CAEnv, identity: str, merchant_id: str = "M-7995") -> tuple:
    client, keystore = await ca_env.requester(identity)
    ca, init = await me_aq_init(
        client, root=ca_env.root, brand="alpha", requester=EntityKind.MERCHANT,
        id_data=IDData(merchant_id, None, None),
    )  # fmt: skip
    sig, kx = await new_key(keystore, "sig"), await new_key(keystore, "kx", exchange=True)
    assert init.form is not None
    req, data = await build_me_aq_cert_req(
        ca, init.form.reg_form_id, sig_key=sig, kx_key=kx,
        values={**REVIEWED, "merchant_id": merchant_id},
    )  # fmt: skip
    res = await client.request(req, data.rrpid, CertRes)
    with pytest.raises(CARequestError) as info:
        check_me_aq_cert_res(res, data, ca, CertType.MERCHANT, sig, kx, client.clock.now_ms())
    assert info.value.status is CertStatusCode.REQUEST_PENDED
    return client, keystore, ca, data, sig, kx


def decide(ca_env: CAEnv, verb: str, rrpid: bytes) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["ca", verb, rrpid.hex()])
    return int(args.func(args, ca_env.settings))


async def test_pended_then_approved(ca_env: CAEnv) -> None:
    client, keystore, ca, data, sig, kx = await pended(ca_env, "merchant.pend1")
    before = len(ca_env.store.certs())
    with pytest.raises(CARequestError) as info:
        await inquire(client, data, ca, CertType.MERCHANT, sig, kx)
    assert info.value.status is CertStatusCode.REQUEST_PENDED
    # Only the holder of the new key may inquire.
    other = await new_key(keystore, "other")
    inq = CertInqReqData(ids.new_rrpid(), data.lid_ee, ids.new_challenge())
    signed = await sign_data(other, pop_signer(other.public_key()), "CertInqReq", codec.encode(inq))
    with pytest.raises(CARequestError) as info:
        await client.request(CertInqReq(codec.encode(signed), []), inq.rrpid, CertRes)
    assert info.value.code is ErrorCode.SIGNATURE_FAILURE
    # An unknown LID-EE.
    inq = CertInqReqData(ids.new_rrpid(), ids.new_lid(), ids.new_challenge())
    signed = await sign_data(sig, pop_signer(sig.public_key()), "CertInqReq", codec.encode(inq))
    with pytest.raises(CARequestError) as info:
        await client.request(CertInqReq(codec.encode(signed), []), inq.rrpid, CertRes)
    assert info.value.code is ErrorCode.UNKNOWN_LID
    assert len(ca_env.store.certs()) == before

    assert decide(ca_env, "approve", data.rrpid) == 0
    reg = await inquire(client, data, ca, CertType.MERCHANT, sig, kx)
    assert set_extension(reg.sig_cert).merchant.category == "7995"  # type: ignore[union-attr]
    assert len(ca_env.store.certs()) == before + 2
    again = await inquire(client, data, ca, CertType.MERCHANT, sig, kx)
    assert again.sig_cert == reg.sig_cert and len(ca_env.store.certs()) == before + 2


async def test_pended_then_rejected(ca_env: CAEnv) -> None:
    client, _, ca, data, sig, kx = await pended(ca_env, "merchant.pend2", "M-7996")
    assert decide(ca_env, "reject", data.rrpid) == 0
    from setpay.cli import CommandError

    with pytest.raises(CommandError, match="is pending"):
        decide(ca_env, "approve", data.rrpid)
    with pytest.raises(CARequestError) as info:
        await inquire(client, data, ca, CertType.MERCHANT, sig, kx)
    assert info.value.status is CertStatusCode.REJECTED_BY_AGENT


# --- cardholders: a BIN the issuer reviews (beta 520000) -------------------------------------

CH_PAN = "5200000000000007"
CH_EXPIRY = "3105"
CH_FORM = {"name": "Hanako Review", "postal_code": "060-0001"}


def db_bytes(ca_env: CAEnv) -> bytes:
    """Everything the CA database holds on disk, WAL included."""
    return b"".join(files_bytes(ca_env.store.path.parent))


async def pended_cardholder(ca_env: CAEnv, identity: str) -> tuple:
    client, keystore = await ca_env.requester(identity)
    key = await new_key(keystore, "card")
    account = pan.Account(pan.AccountKind.CARD, CH_PAN)
    lid = ids.new_lid()
    ca = await card_cinit(client, ca_env.root, "beta", lid)
    req2, data2 = await build_reg_form_req(ca, lid, account)
    form = check_reg_form_res(await client.request(req2, data2.rrpid, RegFormRes, ca=ca), data2, ca)
    pending = await build_cardholder_cert_req(
        ca, form, key=key, account=account, expiry=CH_EXPIRY, values=CH_FORM, lid=lid
    )
    res = await client.request(pending.req, pending.data.rrpid, CertRes, ca=ca)
    with pytest.raises(CARequestError) as info:
        check_cardholder_cert_res(
            res, pending, ca, key=key, account=account, expiry=CH_EXPIRY,
            now_ms=client.clock.now_ms(),
        )  # fmt: skip
    assert info.value.status is CertStatusCode.REQUEST_PENDED
    return client, keystore, ca, pending, key, account


async def test_cardholder_pended_then_approved(ca_env: CAEnv) -> None:
    client, keystore, ca, pending, key, account = await pended_cardholder(ca_env, "wallet.pend1")
    before = len(ca_env.store.certs())
    kw = {"key": key, "account": account, "expiry": CH_EXPIRY}
    with pytest.raises(CARequestError) as info:
        await inquire_cardholder(client, pending, ca, **kw)
    assert info.value.status is CertStatusCode.REQUEST_PENDED
    # A CertInq about this LID-EE signed by another key: a SET Error signed by the beta CCA.
    other = await new_key(keystore, "other")
    inq = CertInqReqData(ids.new_rrpid(), pending.data.lid_ee, ids.new_challenge())
    signed = await sign_data(other, pop_signer(other.public_key()), "CertInqReq", codec.encode(inq))
    with pytest.raises(CARequestError) as info:
        await client.request(CertInqReq(codec.encode(signed), []), inq.rrpid, CertInqRes, ca=ca)
    assert info.value.code is ErrorCode.SIGNATURE_FAILURE and info.value.verified

    # At rest: the reply key, CardSecret and PAN are nowhere in the database.
    disk = db_bytes(ca_env)
    assert pending.back_key not in disk and pending.card_secret not in disk
    assert CH_PAN.encode() not in disk
    (rrpid_hex,) = [r.hex() for r, s, _ in ca_env.store.pending_list() if r == pending.data.rrpid]
    sealed = ca_env.store.held(pending.data.rrpid)
    assert sealed is not None
    # The seal opens only with the CCA's key in the token, and only for its own request.
    kx = await ca_env.hierarchy.key("beta.cca.kx")
    thumb = cert_thumbprint(ca_env.hierarchy.cert("beta.cca.kx"))
    held = await open_held(kx, thumb, pending.data.rrpid, sealed)
    assert held.back_key == pending.back_key
    with pytest.raises(ProtocolError) as err:
        await open_held(kx, thumb, ids.new_rrpid(), sealed)
    assert err.value.code is ErrorCode.DECRYPTION_FAILURE

    assert decide(ca_env, "approve", bytes.fromhex(rrpid_hex)) == 0
    reg = await inquire_cardholder(client, pending, ca, **kw)
    assert set_extension(reg.cert).cert_type is CertType.CARDHOLDER
    assert len(ca_env.store.certs()) == before + 1
    again = await inquire_cardholder(client, pending, ca, **kw)
    assert again.cert == reg.cert and again.pan_secret == reg.pan_secret
    assert len(ca_env.store.certs()) == before + 1
    nonce_cca = bytes(a ^ b for a, b in zip(reg.pan_secret, pending.card_secret, strict=True))
    disk = db_bytes(ca_env)
    for secret in (pending.back_key, pending.card_secret, nonce_cca, reg.pan_secret):
        assert secret not in disk
    assert CH_PAN.encode() not in disk


async def test_cardholder_pended_then_rejected(ca_env: CAEnv) -> None:
    client, _, ca, pending, key, account = await pended_cardholder(ca_env, "wallet.pend2")
    before = len(ca_env.store.certs())
    assert decide(ca_env, "reject", pending.data.rrpid) == 0
    with pytest.raises(CARequestError) as info:
        await inquire_cardholder(client, pending, ca, key=key, account=account, expiry=CH_EXPIRY)
    assert info.value.status is CertStatusCode.REJECTED_BY_AGENT
    assert len(ca_env.store.certs()) == before
