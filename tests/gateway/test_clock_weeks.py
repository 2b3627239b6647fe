"""Weeks past provisioning the gateway still authorizes: revocation data was refreshed in time.

A BCI lives 7 days (actors/ca/hierarchy.py ``CRL_LIFETIME``). Here a CA actor and a gateway
actor run (real RabbitMQ in their own vhost, every key in SoftHSM2 behind its own keystore
workers, a live issuer host) on one injected clock, the parties' ``clock``; the test's merchant
and cardholder messages are dated by it too. The clock is moved weeks ahead while they run:
- the CA actor renews the brand's BCI (past half its life) and pushes it; the gateway takes it
  and authorizes (without the push it would refuse: its BCI has expired);
- with the CA's push stopped, the gateway's own schedule pulls a BCI past three quarters of its
  window from the CA (Me-AqCInit over its own reply queue) and keeps authorizing; a gateway
  holding none (restarted after its registration BCI expired) pulls one at its next round.
Which clock: an injected one (``protocol.ids.Clock``) in every party, not libfaketime: see the
README (libfaketime under SoftHSM2 and the broker is not needed for this property).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from actors.gateway.actor import GatewayActor
from actors.gateway.identity import identity_path, ledger_path, register
from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost
from actors.issuer.seed import seed
from actors.trust import RevocationCache, window_of
from broker.peer import PeerLink
from keystore.keyring import KeyRing
from protocol import ids, pan
from protocol import payment as pw
from protocol.keys import get_suite
from protocol.messages import AuthCode, EntityKind, IDData
from protocol.requester import CAClient, register_cardholder, register_entity
from setpay.config import Settings
from tests.fixtures_broker import make_vhost
from tests.fixtures_ca import CAEnv, new_key, start_ca, stop_ca
from tests.fixtures_keystore import start_deployment
from tests.gateway import conftest
from tests.gateway.conftest import ACCOUNTS, BRAND, MERCHANT_ID, Card, GatewayEnv

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
WAIT_SECONDS = 30.0  # the CA polls every 2 s; a renewal signs 6 CRLs and a BCI in the HSM


class MovedClock:
    """The wall clock plus an offset the test moves: one clock for every party here."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return ids.SystemClock().now_ms() + self.offset_ms


@dataclass
class Moved:
    env: GatewayEnv
    clock: MovedClock


@pytest.fixture(scope="module")
async def moved(
    keystore_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Moved]:
    clock = MovedClock()
    vhost = make_vhost()
    deployment = await start_deployment(
        vhost, keystore_settings, tmp_path_factory.mktemp("ks-weeks"), queue="keystore.rpc",
        workers=1,
    )  # fmt: skip
    from tests.issuer.softsecurity import SoftIssuerSecurity

    security = SoftIssuerSecurity()
    data_dir = tmp_path_factory.mktemp("weeks-var")
    issuer_store = Store(data_dir / "issuer.sqlite")
    await seed(issuer_store, security, list(ACCOUNTS.values()), security.pin_block)
    host = IssuerHost(issuer_store, security)
    await host.start()
    settings = keystore_settings.replace(
        data_dir=tmp_path_factory.mktemp("ca-weeks"), suite="rsa2048", issuer_host="",
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
            key=key, values={"name": "Hanako Weeks", "postal_code": "100-0001"},
        )  # fmt: skip
        await w_client.close()
        cards = {"ok": Card(key, reg.cert, list(reg.chain), account.reference, conftest.VALID,
                            reg.pan_secret)}  # fmt: skip
        env = GatewayEnv(
            ca, actor, identity, data_dir / "issuer.sqlite", ledger_path(data_dir, "gw1"),
            to_gateway, m_sig, m_kx, [m_reg.sig_cert, m_reg.kx_cert, *m_reg.chain], cards,
        )  # fmt: skip
        yield Moved(env, clock)
    finally:
        for close in reversed(closers):
            await close()
        await stop_ca(ca)
        await host.stop()
        issuer_store.close()
        await deployment.close()
        await deployment.pool.stop()
        vhost.cleanup()


@pytest.fixture
def dated(moved: Moved, monkeypatch: pytest.MonkeyPatch) -> Moved:
    """The test's merchant and cardholder (tests/gateway/conftest.py) date by the moved clock."""
    shim = SimpleNamespace(**{n: getattr(ids, n) for n in dir(ids) if not n.startswith("__")})
    shim.SystemClock = lambda: moved.clock
    monkeypatch.setattr(conftest, "ids", shim)
    return moved


async def _approved(env: GatewayEnv) -> None:
    p = await env.purchase("ok", 1_500)
    res, _ = await env.authorize(p)
    assert res.payload.auth_code is AuthCode.APPROVED


def _held_window(env: GatewayEnv) -> tuple[int, int]:
    service = env.actor.service
    assert service is not None
    held = service.trust.held(BRAND)
    assert held is not None
    return window_of(held.bci)


async def _current_at(env: GatewayEnv, now_ms: int) -> float:
    """Seconds until the gateway holds a BCI in date at ``now_ms``."""
    start = time.monotonic()
    while True:
        start_ms, end_ms = _held_window(env)
        if start_ms <= now_ms <= end_ms:
            return time.monotonic() - start
        assert time.monotonic() - start < WAIT_SECONDS, "no BCI in date reached the gateway"
        await asyncio.sleep(0.1)


async def test_weeks_ahead_the_push_keeps_the_gateway_authorizing(dated: Moved) -> None:
    env, clock = dated.env, dated.clock
    await _approved(env)
    first = _held_window(env)
    for weeks in (3, 6, 9):
        clock.offset_ms = weeks * 7 * DAY_MS
        assert clock.now_ms() > first[1]  # what the gateway held at provisioning has expired
        took = await _current_at(env, clock.now_ms())
        print(f"{weeks} weeks ahead: a BCI in date held after {took:.1f} s")
        await _approved(env)


async def test_without_the_push_the_gateway_pulls_before_expiry(dated: Moved) -> None:
    env, clock = dated.env, dated.clock
    ca_actor = env.ca.actor
    assert ca_actor.publisher is not None and env.actor.feed is not None
    await ca_actor.publisher.stop()  # the CA's push is down (as if missed)
    try:
        start_ms, end_ms = _held_window(env)
        # Past three quarters of the window: due for the gateway's schedule, still in date.
        clock.offset_ms += (start_ms + (end_ms - start_ms) * 8 // 10) - clock.now_ms()
        assert env.actor.feed.due(env.actor.service.trust, BRAND, clock.now_ms())
        assert await env.actor.feed.refresh_due() == 1  # the scheduled round, run now
        new_start, new_end = _held_window(env)
        assert new_end > end_ms and new_start <= clock.now_ms() <= new_end
        clock.offset_ms += (end_ms - clock.now_ms()) + DAY_MS  # past the old BCI's end
        await _approved(env)
    finally:
        ca_actor.publisher.start()


async def test_a_gateway_holding_no_bci_pulls_one_at_its_next_round(
    dated: Moved, tmp_path: Path
) -> None:
    """A gateway restarted long after its registration (whose BCI is out of date) holds none:
    the round its feed runs at start pulls one (actors/trust.py Rule 6)."""
    env = dated.env
    service, feed = env.actor.service, env.actor.feed
    assert service is not None and feed is not None
    publisher = env.ca.actor.publisher
    assert publisher is not None
    await publisher.stop()  # only the gateway's own round may bring it
    cache = RevocationCache(tmp_path / "trust.sqlite", env.ca.root)
    saved, service.trust = service.trust, cache
    try:
        assert feed.due(cache, BRAND, dated.clock.now_ms())
        assert await feed.refresh_due() == 1
        start_ms, end_ms = _held_window(env)
        assert start_ms <= dated.clock.now_ms() <= end_ms
        await _approved(env)
    finally:
        service.trust = saved
        cache.close()
        publisher.start()
