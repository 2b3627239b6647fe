"""A gateway deployment of its own for one test module: its own vhost, keystore workers,
CA actor (``ca.main``), issuer host on 127.0.0.1, gateway actor ``gateway.gw1``, a registered
merchant and one cardholder, every key in SoftHSM2.

Rule 1: nothing is shared with the session's ``ca_env``/``gateway_env`` (tests/gateway/
conftest.py): its queues live in another vhost, so both may run in one session.
Rule 2: ``clock`` is every party's time (the CA's, the gateway's, the merchant link's).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.gateway.actor import GatewayActor
from actors.gateway.identity import identity_path, ledger_path, register
from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost
from actors.issuer.seed import seed
from broker.peer import PeerLink
from keystore.keyring import KeyRing
from protocol import ids, pan
from protocol import payment as pw
from protocol.keys import get_suite
from protocol.messages import EntityKind, IDData
from protocol.requester import CAClient, register_cardholder, register_entity
from setpay.config import Settings
from tests.fixtures_broker import make_vhost
from tests.fixtures_ca import CAEnv, new_key, start_ca, stop_ca
from tests.fixtures_keystore import start_deployment
from tests.gateway import conftest
from tests.gateway.conftest import ACCOUNTS, BRAND, MERCHANT_ID, Card, GatewayEnv


@contextlib.asynccontextmanager
async def isolated_gateway(
    keystore_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    tag: str,
    clock: ids.Clock | None = None,
) -> AsyncIterator[GatewayEnv]:
    """Everything of the module docstring, removed on exit."""
    clock = clock or ids.SystemClock()
    vhost = make_vhost()
    deployment = await start_deployment(
        vhost, keystore_settings, tmp_path_factory.mktemp(f"ks-{tag}"), queue="keystore.rpc",
        workers=1,
    )  # fmt: skip
    from tests.issuer.softsecurity import SoftIssuerSecurity

    security = SoftIssuerSecurity()
    data_dir = tmp_path_factory.mktemp(f"{tag}-var")
    issuer_store = Store(data_dir / "issuer.sqlite")
    await seed(issuer_store, security, list(ACCOUNTS.values()), security.pin_block)
    host = IssuerHost(issuer_store, security)
    await host.start()
    settings = keystore_settings.replace(
        data_dir=tmp_path_factory.mktemp(f"ca-{tag}"), suite="rsa2048", issuer_host="",
        ca_verify_cards=False,
    )  # fmt: skip
    ca: CAEnv = await start_ca(deployment, settings, clock=clock)
    closers: list[Any] = []
    try:
        gw_client, gw_keys = await ca.requester("gateway.gw1")
        identity = await register(
            gw_client, KeyRing(gw_keys, get_suite("rsa2048")), root=ca.root, brand=BRAND,
            gateway_id="P-3001", acquirer_bin="411111",
        )  # fmt: skip
        await gw_client.close()
        await gw_keys.close()
        identity.save(identity_path(data_dir, "gw1"))
        actor = GatewayActor(
            settings.replace(data_dir=data_dir), "gw1", url=deployment.url_for("gateway.gw1"),
            keystore_queue=deployment.queue, issuer_port=host.port, clock=clock,
        )  # fmt: skip
        await actor.start()
        closers.append(actor.stop)
        m_client, m_keys = await ca.requester("merchant.m1")
        closers.append(m_keys.close)
        m_sig, m_kx = await new_key(m_keys, "sig"), await new_key(m_keys, "kx", exchange=True)
        m_reg = await register_entity(
            m_client, root=ca.root, brand=BRAND, requester=EntityKind.MERCHANT,
            id_data=IDData(MERCHANT_ID, "411111", None), sig_key=m_sig, kx_key=m_kx,
            values={"merchant_id": MERCHANT_ID, "merchant_name": "Example Books", "mcc": "5942"},
        )  # fmt: skip
        await m_client.close()
        to_gateway = CAClient(
            await PeerLink(m_keys.rpc.bus, "merchant", "m1", target=pw.GATEWAY_ROLE).start(),
            clock=clock,
        )
        closers.append(to_gateway.close)
        w_client, w_keys = await ca.requester("wallet.w1")
        closers.append(w_keys.close)
        account = ACCOUNTS["ok"]
        key = await new_key(w_keys, "card-ok")
        reg = await register_cardholder(
            w_client, root=ca.root, brand=BRAND,
            account=pan.Account(pan.AccountKind.CARD, account.reference), expiry=conftest.VALID,
            key=key, values={"name": "Hanako Isolated", "postal_code": "100-0001"},
        )  # fmt: skip
        await w_client.close()
        cards = {"ok": Card(key, reg.cert, list(reg.chain), account.reference, conftest.VALID,
                            reg.pan_secret)}  # fmt: skip
        env = GatewayEnv(
            ca, actor, identity, data_dir / "issuer.sqlite", ledger_path(data_dir, "gw1"),
            to_gateway, m_sig, m_kx, [m_reg.sig_cert, m_reg.kx_cert, *m_reg.chain], cards,
        )  # fmt: skip
        yield env
    finally:
        for close in reversed(closers):
            await close()
        await stop_ca(ca)
        await host.stop()
        issuer_store.close()
        await deployment.close()
        await deployment.pool.stop()
        vhost.cleanup()
