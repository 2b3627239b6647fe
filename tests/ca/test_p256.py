"""Registration end to end with the p256 suite: a CA whose keys are P-256 in SoftHSM2 (ECDSA
signatures, ECDH key exchange through the keystore's derive), and requesters with P-256 keys.

Rule 1: the deployment has its own vhost and keystore worker, so this CA never takes requests
meant for the session's RSA CA (both serve the role queue ``ca``); all is removed after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from actors.ca.hierarchy import pem
from keystore.messages import KeyKind
from protocol import pan
from protocol.certs import CertType, public_key_of, set_extension
from protocol.messages import EntityKind, IDData
from protocol.requester import register_cardholder, register_entity
from setpay.config import Settings
from tests.ca.test_registration import GATEWAY_FORM, MERCHANT_FORM, openssl_verify
from tests.fixtures_broker import make_vhost
from tests.fixtures_ca import CAEnv, files_bytes, new_key, start_ca, stop_ca
from tests.fixtures_keystore import start_deployment

PAN = "5555555555554444"  # beta BIN 555555
EXPIRY = "3111"


@pytest.fixture(scope="module")
async def p256_env(
    keystore_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[CAEnv]:
    vhost = make_vhost()
    try:
        deployment = await start_deployment(
            vhost, keystore_settings, tmp_path_factory.mktemp("ks-p256"), queue="keystore.rpc",
            workers=1,
        )  # fmt: skip
        try:
            settings = keystore_settings.replace(
                data_dir=tmp_path_factory.mktemp("ca-p256"), suite="p256", issuer_host="",
                ca_verify_cards=False,
            )
            env = await start_ca(deployment, settings)
            try:
                yield env
            finally:
                await stop_ca(env)
        finally:
            await deployment.close()
            await deployment.pool.stop()
    finally:
        vhost.cleanup()


async def test_p256_registrations_end_to_end(p256_env: CAEnv, tmp_path: Path) -> None:
    env = p256_env
    for name in ("root", "beta.brand", "beta.cca", "beta.cca.kx", "alpha.mca.kx"):
        assert isinstance(public_key_of(env.hierarchy.cert(name)), ec.EllipticCurvePublicKey)

    client, keystore = await env.requester("wallet.p256")
    key = await new_key(keystore, "card", kind=KeyKind.P256)
    account = pan.Account(pan.AccountKind.CARD, PAN)
    reg = await register_cardholder(
        client, root=env.root, brand="beta", account=account, expiry=EXPIRY, key=key,
        values={"name": "Ec Test", "postal_code": "900-0001"},
    )  # fmt: skip
    assert isinstance(public_key_of(reg.cert), ec.EllipticCurvePublicKey)
    assert set_extension(reg.cert).account_hash == pan.account_hash(reg.pan_secret, account, EXPIRY)
    openssl_verify(tmp_path, env, pem(reg.cert), "beta", "cca")

    for identity, kind, id_data, form, ca, cert_type in (
        ("merchant.p256", EntityKind.MERCHANT, IDData("M-2001", "555555", None), MERCHANT_FORM,
         "mca", CertType.MERCHANT),
        ("gateway.p256", EntityKind.GATEWAY, IDData(None, "411111", "acq-1"), GATEWAY_FORM,
         "pca", CertType.GATEWAY),
    ):  # fmt: skip
        client, keystore = await env.requester(identity)
        sig = await new_key(keystore, "sig", kind=KeyKind.P256)
        kx = await new_key(keystore, "kx", exchange=True, kind=KeyKind.P256)
        entity = await register_entity(
            client, root=env.root, brand="alpha", requester=kind,
            id_data=id_data,
            sig_key=sig, kx_key=kx, values=form,
        )  # fmt: skip
        assert set_extension(entity.sig_cert).cert_type is cert_type
        for cert in (entity.sig_cert, entity.kx_cert):
            openssl_verify(tmp_path, env, pem(cert), "alpha", ca)
    disk = b"".join(files_bytes(env.store.path.parent))
    assert PAN.encode() not in disk and reg.pan_secret not in disk
