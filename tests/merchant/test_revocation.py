"""Revocation at the merchant POS over real RabbitMQ, SoftHSM2, the CA and the wallet.

The POS validates cardholder chains with its revocation cache (seeded with the BCI of its
registration): a cardholder the CA revoked is refused (SET Error revokedCertificate, order
untouched) once the running CA pushed the new BCI and CRL to the running POS (actors/trust.py
Rule 5; the operator's refresh then finds it held), and accepted before; a PInitRes hands out
the newest BCI held.
"""

from __future__ import annotations

import asyncio
import time

from actors.entrypoint import SetEntry
from actors.trust import Offered, refresh_from_ca
from actors.wallet.errors import WalletError
from protocol import ids, pan
from protocol.certs import load_certificate
from protocol.messages import (
    AccountKind,
    AuthCode,
    CompletionCode,
    CurrAmt,
    EntityKind,
    IDData,
    PInitReq,
    PInitRes,
)
from protocol.revocation import bci_thumbprint
from protocol.states import Machine, MerchantOrder
from protocol.wrapper import decode_message, encode_message, make_header
from tests.merchant.conftest import MERCHANT_ID, PurchaseEnv

USER, PASS = "taro-revoked", "a long enough passphrase"
ROUTE = "merchant.pos1"
PUSH_SECONDS = 10.0  # the README's bound
DESCRIPTION = "1 book: revocation in practice"


async def _buy(env: PurchaseEnv, card: str, amount: int) -> tuple[bytes, object]:
    service = env.merchant.service
    assert service is not None
    lid_m = service.create_order(MERCHANT_ID, DESCRIPTION, CurrAmt("JPY", amount))
    try:
        result: object = await env.wallet.buy(
            USER, card_id=card, merchant=ROUTE, lid_m=lid_m,
            description=DESCRIPTION, amount=CurrAmt("JPY", amount),
        )  # fmt: skip
    except WalletError as exc:
        result = exc
    return lid_m, result


async def test_revoked_cardholder_refused_after_refresh(purchase_env: PurchaseEnv) -> None:
    env = purchase_env
    service, store = env.merchant.service, env.merchant.store
    assert service is not None and store is not None
    env.wallet.register(USER, PASS)
    card = await env.wallet.enroll(
        USER, brand="alpha", account=pan.Account(pan.AccountKind.CARD, "4111111111111111"),
        expiry="3012", values={"name": "Taro Revoked", "postal_code": "100-0001"},
    )  # fmt: skip
    _, result = await _buy(env, card, 2_100)
    assert not isinstance(result, Exception)
    assert result.auth_code == AuthCode.APPROVED  # type: ignore[attr-defined]
    assert result.completion is CompletionCode.AUTHORIZATION_PERFORMED  # type: ignore[attr-defined]

    row = store.merchant(MERCHANT_ID)
    assert row is not None
    cache = service.trust_cache(load_certificate(row.root))
    seeded = cache.held("alpha")
    assert seeded is not None  # seeded from registration on first use
    cert = load_certificate(env.wallet.store.card(card).cert)  # type: ignore[union-attr]
    assert await env.ca.hierarchy.revoke(
        cert.serial_number, "keyCompromise", ids.SystemClock().now_ms()
    )

    # The running CA pushes the BCI naming the new CCA CRL to the running POS.
    deadline = time.monotonic() + PUSH_SECONDS
    while (cache.held("alpha") or seeded).sequence <= seeded.sequence:
        assert time.monotonic() < deadline, f"no BCI pushed within {PUSH_SECONDS:g}s"
        await asyncio.sleep(0.05)
    # The operator's refresh through the MCA finds it held already.
    m_client, m_keys = await env.ca.requester("merchant.pos1rev")
    try:
        offered = await refresh_from_ca(
            m_client, cache, brand="alpha", requester=EntityKind.MERCHANT,
            id_data=IDData(MERCHANT_ID, None, None),
        )  # fmt: skip
    finally:
        await m_client.close()
        await m_keys.close()
    assert offered is Offered.CURRENT
    newer = cache.held("alpha")
    assert newer is not None and newer.sequence > seeded.sequence

    sent_before = len(env.gateway.sent)
    lid_m, result = await _buy(env, card, 2_200)
    assert isinstance(result, WalletError)
    assert "REVOKED_CERTIFICATE" in str(result)
    # Nothing changed past PInit: no AuthReq sent, the order still waits for a PReq.
    assert len(env.gateway.sent) == sent_before
    order = store.order(lid_m)
    assert order is not None and order.auth_req is None and order.preq_digest is None
    assert Machine.from_bytes(order.state).state == MerchantOrder.PINIT_SENT
    assert bci_thumbprint(newer.bci) != bci_thumbprint(seeded.bci)


async def test_pinit_hands_out_the_newest_bci_held(purchase_env: PurchaseEnv) -> None:
    """A PInitRes carries the cache's BCI and CRLs, minus those the cardholder says it holds."""
    env = purchase_env
    service, store = env.merchant.service, env.merchant.store
    assert service is not None and store is not None
    row = store.merchant(MERCHANT_ID)
    assert row is not None
    held = service.trust_cache(load_certificate(row.root)).held("alpha")
    assert held is not None

    async def pinit(thumbs: list[bytes]) -> PInitRes:
        lid_m = service.create_order(MERCHANT_ID, DESCRIPTION, CurrAmt("JPY", 900))
        req = PInitReq(
            ids.new_rrpid(), "en", ids.new_lid(), lid_m, ids.new_challenge(), "alpha", "411111",
            AccountKind.CARD, thumbs,
        )  # fmt: skip
        now = ids.SystemClock().now_ms()
        _, reply = await SetEntry(service).handle(None,
            encode_message(make_header(now, lid_c=req.lid_c, lid_m=lid_m, rrpid=req.rrpid), req)
        )
        body = decode_message(reply, now_ms=now).body
        assert isinstance(body, PInitRes)
        return body

    full = await pinit([])
    assert full.bci == held.bci and set(full.crls) == set(held.crls)
    lean = await pinit(held.thumbs())
    assert lean.bci is None and lean.crls == []
