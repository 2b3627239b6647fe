"""The POS after authorization as the tests drive it: a ``MerchantService`` over its own store
for the gateway package's merchant (tests/gateway/conftest.py), talking to the running gateway
actor over the merchant's peer link; and readers of the gateway's books and the issuer host's
accounts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.merchant.service import MerchantService
from actors.merchant.store import MerchantRow, MerchantStore
from protocol import codec, ids
from protocol.certs import certificate_der
from protocol.messages import AuthCode, CurrAmt
from protocol.states import merchant_order
from tests.gateway.conftest import BRAND, MERCHANT_ID, GatewayEnv


@dataclass
class Pos:
    env: GatewayEnv
    service: MerchantService
    store: MerchantStore

    async def authorized(
        self, amount: int, card: str = "after", *, sale: bool = False, first: int | None = None
    ) -> bytes:
        """One purchase authorized at the gateway (``sale``: and captured at once; ``first``:
        only its first shipment, with an AuthToken for the rest), recorded as the POS's PReq
        flow does."""
        p = await self.env.purchase(card, amount, capture_now=sale, auth_amount=first)
        data, baggage = await self.env.authorize(p, card)
        assert data.payload.auth_code is AuthCode.APPROVED
        trans = p.data.auth_tags.trans_ids
        lid_m = trans.lid_m
        assert lid_m is not None
        now = ids.SystemClock().now_ms()
        self.store.add_order(
            lid_m, MERCHANT_ID, "two books", CurrAmt("JPY", amount), sale,
            merchant_order().to_bytes(), now, first,
        )  # fmt: skip
        with self.store.transaction() as db:
            self.store.update_order(
                db, lid_m, now, xid=trans.xid, trans_ids=codec.encode(trans),
                auth_rrpid=p.data.auth_tags.rrpid, auth_code=int(AuthCode.APPROVED),
                auth_amount=first or amount, cap_token=baggage.cap_token,
                auth_token=baggage.auth_token,
                cap_amount=amount if sale else None,
            )  # fmt: skip
        return lid_m

    async def settled(self) -> None:
        """Until the gateway's link has forwarded every host message."""
        link = self.env.actor.link
        assert link is not None
        await link.saf_idle()


def card(env: GatewayEnv, name: str = "after") -> tuple[int, int]:
    """(balance, active holds) of the card at the issuer host."""
    last4 = env.cards[name].number[-4:]
    with sqlite3.connect(env.issuer_store_path) as db:
        index, balance = db.execute(
            "SELECT pan_index, balance FROM accounts WHERE last4 = ?", (last4,)
        ).fetchone()
        held = db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM transactions "
            "WHERE pan_index = ? AND effect = 'hold' AND state = 'active'",
            (index,),
        ).fetchone()[0]
    return int(balance), int(held)


def books(env: GatewayEnv) -> Any:
    assert env.actor.books is not None
    return env.actor.books


@pytest.fixture(scope="module", name="pos")
async def pos_fixture(
    gateway_env: GatewayEnv, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pos]:
    env = gateway_env
    store = MerchantStore.open(Path(tmp_path_factory.mktemp("pos")), "p1")
    keys = {"sig": env.m_sig, "kx": env.m_kx}

    async def key(label: str) -> Any:
        return keys[label]

    identity = env.identity
    store.save_merchant(
        MerchantRow(
            MERCHANT_ID, BRAND, "sig", "kx", certificate_der(env.m_certs[0]),
            certificate_der(env.m_certs[1]), [certificate_der(c) for c in env.m_certs[2:]],
            certificate_der(env.ca.root), identity.bci, list(identity.crls),
        ),
        ids.SystemClock().now_ms(),
    )  # fmt: skip
    service = MerchantService(store, key, env.client)
    service.add_gateway(BRAND, identity.kx_cert, list(identity.chain))
    try:
        yield Pos(env, service, store)
    finally:
        service.close()
        store.close()


async def restart_gateway(env: GatewayEnv) -> None:
    """Stop the gateway actor and start a new one on the same data dir, keys and host: what a
    crash-free restart of the process keeps is what its stores hold."""
    from actors.gateway.actor import GatewayActor

    old = env.actor
    new = GatewayActor(
        old.settings, old.instance, url=old.url, keystore_queue=old.keystore_queue,
        issuer_port=old.issuer_port,
    )  # fmt: skip
    await old.stop()
    await new.start()
    env.actor = new
