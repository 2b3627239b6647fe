"""Pended merchant requests: CertRes requestPended, CertInq, operator approval or rejection."""

from __future__ import annotations

import argparse

import pytest

from actors.ca import cli
from actors.ca.requester import (
    CARequestError,
    build_me_aq_cert_req,
    check_me_aq_cert_res,
    inquire,
    me_aq_init,
)
from actors.ca.wire import pop_signer
from protocol import codec, ids
from protocol.certs import CertType, set_extension
from protocol.errors import ErrorCode
from protocol.messages import (
    CertInqReq,
    CertInqReqData,
    CertRes,
    CertStatusCode,
    EntityKind,
    IDData,
)
from protocol.signed import sign_data
from tests.ca.conftest import CAEnv, new_key

REVIEWED = {"merchant_id": "M-7995", "merchant_name": "Lucky Bets", "mcc": "7995"}


async def pended(ca_env: CAEnv, identity: str) -> tuple:
    client, keystore = await ca_env.requester(identity)
    ca, init = await me_aq_init(
        client, root=ca_env.root, brand="alpha", requester=EntityKind.MERCHANT,
        id_data=IDData("M-7995", None, None),
    )  # fmt: skip
    sig, kx = await new_key(keystore, "sig"), await new_key(keystore, "kx", exchange=True)
    assert init.form is not None
    req, data = await build_me_aq_cert_req(
        ca, init.form.reg_form_id, sig_key=sig, kx_key=kx, values=REVIEWED
    )
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
    client, _, ca, data, sig, kx = await pended(ca_env, "merchant.pend2")
    assert decide(ca_env, "reject", data.rrpid) == 0
    from setpay.cli import CommandError

    with pytest.raises(CommandError, match="is pending"):
        decide(ca_env, "approve", data.rrpid)
    with pytest.raises(CARequestError) as info:
        await inquire(client, data, ca, CertType.MERCHANT, sig, kx)
    assert info.value.status is CertStatusCode.REJECTED_BY_AGENT
