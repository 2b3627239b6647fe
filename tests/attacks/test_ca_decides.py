"""The CA decides, not the requester: insiders with one party's broker login against a running
CA (real RabbitMQ, SoftHSM2, keystore) and a real ISO 8583 issuer host.

A rogue merchant or a compromised server wallet holding a gateway certificate could have
cardholders seal their payment instructions and OPE PIN blocks to its own key. So: merchant and
gateway certificates wait for the operator (this CA has no auto-approve policy) and carry the
operator's grant; only ``merchant.*``/``gateway.*`` logins may ask for them; a merchant id is
bound to the login that first asked; a card the issuer host does not know is not certified.

Rule 1: the CA runs in its own vhost and keystore worker, so it never takes requests meant for
the session's CA (both serve the role queue ``ca``); its issuer host is seeded with the
catalogue of tests/issuer (``environment_accounts``).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from actors.ca import cli
from actors.environment import _luhn_complete
from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost
from actors.issuer.seed import environment_accounts, seed
from protocol import ids, pan
from protocol.certs import CertType, set_extension
from protocol.errors import ErrorCode
from protocol.messages import (
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
    me_aq_init,
)
from setpay.config import Settings
from tests.fixtures_broker import make_vhost
from tests.fixtures_ca import CAEnv, new_key, start_ca, stop_ca
from tests.fixtures_keystore import start_deployment
from tests.issuer.softsecurity import SoftIssuerSecurity

pytestmark = pytest.mark.integration

KNOWN_PAN = "4111111111111111"  # visa-ok in the issuer's catalogue, alpha BIN 411111
UNKNOWN_PAN = _luhn_complete("411111999999999")  # Luhn-valid, alpha BIN, not on file
EXPIRY = f"{(datetime.now(UTC).year + 2) % 100:02d}12"
CH_FORM = {"name": "Taro Insider", "postal_code": "100-0001"}


@dataclass
class Strict:
    ca: CAEnv
    issuer: IssuerHost


@pytest.fixture(scope="module")
async def strict(
    keystore_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Strict]:
    """A CA with no auto-approve policy that verifies cards with a live issuer host."""
    security = SoftIssuerSecurity()
    issuer_store = Store(tmp_path_factory.mktemp("issuer") / "issuer.sqlite")
    await seed(issuer_store, security, environment_accounts(datetime.now(UTC)), security.pin_block)
    host = IssuerHost(issuer_store, security)
    await host.start()
    vhost = make_vhost()
    try:
        deployment = await start_deployment(
            vhost, keystore_settings, tmp_path_factory.mktemp("ks-strict"), queue="keystore.rpc",
            workers=1,
        )  # fmt: skip
        try:
            settings = keystore_settings.replace(
                data_dir=tmp_path_factory.mktemp("ca-strict"), suite="rsa2048",
                issuer_host="127.0.0.1", issuer_port=host.port, ca_verify_cards=True,
            )  # fmt: skip
            env = await start_ca(deployment, settings, auto_approve="")
            try:
                yield Strict(env, host)
            finally:
                await stop_ca(env)
        finally:
            await deployment.close()
            await deployment.pool.stop()
    finally:
        vhost.cleanup()
        await host.stop()
        issuer_store.close()


_LOGINS: dict[str, tuple[Any, Any]] = {}


async def login(env: CAEnv, identity: str) -> tuple[Any, Any]:
    """One CA client and keystore client per broker login (one reply queue each)."""
    if identity not in _LOGINS:
        _LOGINS[identity] = await env.requester(identity)
    return _LOGINS[identity]


def operator(env: CAEnv, *argv: str) -> int:
    """``setpay ca ARGV`` as the operator runs it, on the CA's database."""
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["ca", *argv])
    return int(args.func(args, env.settings))


async def ask(
    env: CAEnv,
    identity: str,
    kind: EntityKind,
    values: dict[str, str],
    *,
    init_as: str | None = None,
) -> tuple[Any, Any, Any, Any, Any, CertRes]:
    """A merchant or gateway CertReq sent by broker login ``identity`` (the Me-AqCInit by
    ``init_as``, default the same login); (client, ca, data, sig, kx, CertRes)."""
    client, keystore = await login(env, identity)
    init_client = client if init_as is None else (await login(env, init_as))[0]
    entity_id = values.get("merchant_id") or values["gateway_id"]
    id_data = (
        IDData(entity_id, None, None)
        if kind is EntityKind.MERCHANT
        else IDData(None, "411111", entity_id)
    )
    ca, init = await me_aq_init(
        init_client, root=env.root, brand="alpha", requester=kind, id_data=id_data
    )
    tag = ids.new_rrpid().hex()[:8]
    sig = await new_key(keystore, f"sig-{tag}")
    kx = await new_key(keystore, f"kx-{tag}", exchange=True)
    assert init.form is not None
    req, data = await build_me_aq_cert_req(
        ca, init.form.reg_form_id, sig_key=sig, kx_key=kx, values=values
    )
    res = await client.request(req, data.rrpid, CertRes)
    return client, ca, data, sig, kx, res


def pended(res: CertRes, data: Any, ca: Any, cert_type: CertType, sig: Any, kx: Any) -> None:
    with pytest.raises(CARequestError) as info:
        check_me_aq_cert_res(res, data, ca, cert_type, sig, kx, ids.SystemClock().now_ms())
    assert info.value.status is CertStatusCode.REQUEST_PENDED


def gateway_form(gateway_id: str, currencies: str, pin_debit: str, sale: str) -> dict[str, str]:
    return {"gateway_id": gateway_id, "currencies": currencies, "pin_debit": pin_debit,
            "sale": sale}  # fmt: skip


async def test_gateway_waits_for_the_operator_and_carries_its_grant(strict: Strict) -> None:
    """A gateway login's request is pended, CertInq says so, nothing is issued; once the
    operator approves, CertInq returns certificates with the operator's capabilities."""
    env = strict.ca
    before = len(env.store.certs())
    form = gateway_form("P-100", "JPY", "no", "no")
    client, ca, data, sig, kx, res = await ask(env, "gateway.g100", EntityKind.GATEWAY, form)
    pended(res, data, ca, CertType.GATEWAY, sig, kx)
    with pytest.raises(CARequestError) as info:
        await inquire(client, data, ca, CertType.GATEWAY, sig, kx)
    assert info.value.status is CertStatusCode.REQUEST_PENDED
    assert len(env.store.certs()) == before

    assert operator(env, "approve", data.rrpid.hex(), "--currencies", "JPY,USD", "--sale",
                    "--no-pin-debit") == 0  # fmt: skip
    reg = await inquire(client, data, ca, CertType.GATEWAY, sig, kx)
    for cert in (reg.sig_cert, reg.kx_cert):
        caps = set_extension(cert).gateway
        assert caps is not None
        assert (caps.currencies, caps.pin_debit, caps.sale) == (["JPY", "USD"], False, True)
    assert len(env.store.certs()) == before + 2


async def test_capability_the_operator_did_not_grant_is_refused(strict: Strict) -> None:
    """A gateway asking for OPE PIN debit the operator does not grant gets no certificate."""
    env = strict.ca
    form = gateway_form("P-200", "JPY", "yes", "yes")
    client, ca, data, sig, kx, res = await ask(env, "gateway.g200", EntityKind.GATEWAY, form)
    pended(res, data, ca, CertType.GATEWAY, sig, kx)
    before = len(env.store.certs())
    assert operator(env, "approve", data.rrpid.hex(), "--currencies", "JPY", "--sale") == 0
    for _ in range(2):  # the refusal stands; nothing is issued on asking again
        with pytest.raises(CARequestError) as info:
            await inquire(client, data, ca, CertType.GATEWAY, sig, kx)
        assert info.value.status is CertStatusCode.REJECTED_BY_CA
    assert len(env.store.certs()) == before


async def test_duplicate_merchant_id_from_another_login_is_refused(strict: Strict) -> None:
    """M-500 is bound to the merchant login that asked first: another merchant login asking
    for it is refused with a SET Error, before and after the first is approved."""
    env = strict.ca
    values = {"merchant_id": "M-500", "merchant_name": "First Shop", "mcc": "5942"}
    client, ca, data, sig, kx, res = await ask(env, "merchant.first", EntityKind.MERCHANT, values)
    pended(res, data, ca, CertType.MERCHANT, sig, kx)
    pending_before = len(env.store.pending_list())
    rogue = {**values, "merchant_name": "Rogue Shop"}
    for approved in (False, True):
        if approved:
            assert operator(env, "approve", data.rrpid.hex()) == 0
            reg = await inquire(client, data, ca, CertType.MERCHANT, sig, kx)
            merchant = set_extension(reg.sig_cert).merchant
            assert merchant is not None and merchant.name == "First Shop"
        certs = len(env.store.certs())
        with pytest.raises(CARequestError) as info:
            await ask(env, "merchant.rogue", EntityKind.MERCHANT, rogue)
        assert info.value.code is ErrorCode.UNAUTHORIZED_SENDER
        assert len(env.store.pending_list()) == pending_before
        assert len(env.store.certs()) == certs
    # The rogue login cannot ask about the first's pended request either (it lacks its key,
    # and its login is not the requester's).
    rogue_client, _k = await login(env, "merchant.rogue")
    with pytest.raises(CARequestError) as info:
        await inquire(rogue_client, data, ca, CertType.MERCHANT, sig, kx)
    assert info.value.code is ErrorCode.UNAUTHORIZED_SENDER


async def test_wallet_login_cannot_obtain_a_gateway_certificate(strict: Strict) -> None:
    """A compromised server wallet (and a merchant) asking for a gateway certificate is
    refused at Me-AqCInit and, sending the CertReq directly, at CertReq."""
    env = strict.ca
    form = gateway_form("P-666", "JPY", "yes", "yes")
    before = (len(env.store.certs()), len(env.store.pending_list()))
    for login in ("wallet.main", "merchant.pos1"):
        with pytest.raises(CARequestError) as info:
            await ask(env, login, EntityKind.GATEWAY, form)
        assert info.value.code is ErrorCode.UNAUTHORIZED_SENDER
        # The PCA's key-exchange certificate learnt through a gateway login's init: the CertReq
        # itself, sent by the wallet login, is refused all the same.
        with pytest.raises(CARequestError) as info:
            await ask(env, login, EntityKind.GATEWAY, form, init_as="gateway.helper")
        assert info.value.code is ErrorCode.UNAUTHORIZED_SENDER
    assert (len(env.store.certs()), len(env.store.pending_list())) == before


async def register_card(env: CAEnv, identity: str, number: str) -> tuple[Any, Any]:
    """A cardholder CertReq for ``number``; (the pending request, its CertRes)."""
    client, keystore = await login(env, identity)
    key = await new_key(keystore, f"card-{ids.new_rrpid().hex()[:8]}")
    account = pan.Account(pan.AccountKind.CARD, number)
    lid = ids.new_lid()
    ca = await card_cinit(client, env.root, "alpha", lid)
    req2, data2 = await build_reg_form_req(ca, lid, account)
    form = check_reg_form_res(await client.request(req2, data2.rrpid, RegFormRes, ca=ca), data2, ca)
    request = await build_cardholder_cert_req(
        ca, form, key=key, account=account, expiry=EXPIRY, values=CH_FORM, lid=lid
    )
    res = await client.request(request.req, request.data.rrpid, CertRes, ca=ca)
    check = dict(key=key, account=account, expiry=EXPIRY, now_ms=client.clock.now_ms())
    return request, (res, ca, check)


async def test_card_unknown_to_the_issuer_gets_no_certificate(strict: Strict) -> None:
    """The CCA asks the issuer host first: an unknown card is refused (rejectedByIssuer) and
    nothing is stored; a card on file is certified."""
    env = strict.ca
    before = len(env.store.certs())
    request, (res, ca, check) = await register_card(env, "wallet.main", UNKNOWN_PAN)
    with pytest.raises(CARequestError) as info:
        check_cardholder_cert_res(res, request, ca, **check)
    assert info.value.status is CertStatusCode.REJECTED_BY_ISSUER
    assert len(env.store.certs()) == before
    assert env.store.reply_for(request.data.rrpid) is None
    assert env.store.pending_by_lid(request.data.lid_ee) is None
    chall = env.store.challenge(request.data.chall_ca)
    assert chall is not None and chall[3] is None  # the Chall-CA is not even consumed

    request, (res, ca, check) = await register_card(env, "wallet.main", KNOWN_PAN)
    reg = check_cardholder_cert_res(res, request, ca, **check)
    assert set_extension(reg.cert).cert_type is CertType.CARDHOLDER
    assert len(env.store.certs()) == before + 1
