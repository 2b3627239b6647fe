"""Revocation at the gateway over real RabbitMQ, SoftHSM2, the CA and the issuer host.

A certificate the CA revoked is refused (SET Error revokedCertificate, nothing stored) once the
gateway holds the BCI and CRL published with the revocation -- pushed by the running CA actor
within ``PUSH_SECONDS`` (actors/trust.py Rule 5), or pulled by the operator's refresh; a newer
BCI replaces an older one, an older or forged one changes nothing, and a CRL the BCI names but
the gateway lacks is missingCertificate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.ca.hierarchy import ca_name
from actors.gateway.service import rrn_of
from actors.trust import Offered, RevocationCache, refresh_from_ca
from protocol import codec, ids, pan
from protocol.certs import CertType, KeyUse, cert_thumbprint
from protocol.chain import Expect, validate_path
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import to_dt
from protocol.messages import AuthCode, EntityKind, IDData
from protocol.requester import CAClient, register_cardholder, register_entity
from protocol.revocation import BCI_CONTENT_TYPE, BCI_VERSION, Bci
from protocol.signed import sign_data
from protocol.wrapper import decode_message
from tests.fixtures_ca import new_key
from tests.gateway.conftest import ACCOUNTS, BRAND, MERCHANT_ID, Card, GatewayEnv, error_code
from tests.softkeys import SoftKey

PUSH_SECONDS = 10.0  # the README's bound: the CA polls its store every 2 s


def now_ms() -> int:
    return ids.SystemClock().now_ms()


async def pushed(trust: RevocationCache, sequence: int) -> float:
    """Seconds until ``trust`` holds a BCI of at least ``sequence`` (the CA's push)."""
    start = time.monotonic()
    while True:
        held = trust.held(BRAND)
        if held is not None and held.sequence >= sequence:
            return time.monotonic() - start
        if time.monotonic() - start > PUSH_SECONDS:
            raise AssertionError(f"BCI {sequence} not pushed within {PUSH_SECONDS:g}s")
        await asyncio.sleep(0.05)


@dataclass
class Ops:
    """The gateway operator's CA link (refresh) and a wallet/merchant identity for new certs."""

    gw_client: CAClient
    wallet: CAClient
    wallet_keys: Any
    merchant: CAClient
    merchant_keys: Any

    async def refresh(self, cache: RevocationCache) -> Offered:
        return await refresh_from_ca(
            self.gw_client, cache, brand=BRAND, requester=EntityKind.GATEWAY,
            id_data=IDData(None, "411111", "P-3001"),
        )  # fmt: skip


@pytest.fixture(scope="module")
async def ops(gateway_env: GatewayEnv) -> AsyncIterator[Ops]:
    gw_client, gw_keys = await gateway_env.ca.requester("gateway.gwrev")
    wallet, wallet_keys = await gateway_env.ca.requester("wallet.wrev")
    # The merchant's own login (the CA binds its merchant id to it), beside its gateway link.
    merchant, merchant_keys = await gateway_env.ca.requester("merchant.m1", queue_suffix="rev")
    try:
        yield Ops(gw_client, wallet, wallet_keys, merchant, merchant_keys)
    finally:
        for client in (gw_client, wallet, merchant):
            await client.close()
        for keys in (gw_keys, wallet_keys, merchant_keys):
            await keys.close()


@pytest.fixture
async def trust(gateway_env: GatewayEnv, tmp_path: Path) -> AsyncIterator[RevocationCache]:
    """A fresh revocation cache put into the running gateway for one test."""
    service = gateway_env.actor.service
    assert service is not None
    cache = RevocationCache(tmp_path / "trust.sqlite", gateway_env.ca.root)
    saved = service.trust
    service.trust = cache
    try:
        yield cache
    finally:
        service.trust = saved
        cache.close()


async def _approved(env: GatewayEnv, card: str, amount: int) -> None:
    p = await env.purchase(card, amount)
    res, _ = await env.authorize(p, card)
    assert res.payload.auth_code is AuthCode.APPROVED


async def _refused(env: GatewayEnv, card: str, amount: int) -> ErrorCode:
    """The gateway's Error code for a purchase; asserts nothing was recorded or sent on."""
    ledger = env.actor.ledger
    assert ledger is not None
    before = ledger.count()
    p = await env.purchase(card, amount)
    _, reply = await env.send(await env.wrap(p.data, p.pi, card))
    assert ledger.count() == before
    assert env.host_count(rrn_of(p.data.auth_tags.rrpid)) == 0
    return error_code(reply)  # type: ignore[no-any-return]


async def test_revoked_cardholder_refused_once_gateway_holds_new_bci(
    gateway_env: GatewayEnv, ops: Ops, trust: RevocationCache
) -> None:
    account = ACCOUNTS["ok"]
    key = await new_key(ops.wallet_keys, "card-rev")
    expiry = gateway_env.cards["ok"].expiry
    reg = await register_cardholder(
        ops.wallet, root=gateway_env.ca.root, brand=BRAND,
        account=pan.Account(pan.AccountKind.CARD, account.reference), expiry=expiry, key=key,
        values={"name": "Taro Revoked", "postal_code": "100-0001"},
    )  # fmt: skip
    gateway_env.cards["rev"] = Card(
        key, reg.cert, list(reg.chain), account.reference, expiry, reg.pan_secret
    )
    assert await ops.refresh(trust) in (Offered.REPLACED, Offered.CURRENT)
    held = trust.held(BRAND)
    assert held is not None
    await _approved(gateway_env, "rev", 1_200)

    assert await gateway_env.ca.hierarchy.revoke(reg.cert.serial_number, "keyCompromise", now_ms())
    # The running CA pushes the new BCI and CRL to the running gateway: no refresh, no restart.
    await pushed(trust, held.sequence + 1)
    assert await ops.refresh(trust) is Offered.CURRENT  # the operator's pull finds it held
    newer = trust.held(BRAND)
    assert newer is not None and newer.sequence >= held.sequence + 1
    assert await _refused(gateway_env, "rev", 1_400) is ErrorCode.REVOKED_CERTIFICATE
    # Other cardholders of the same CCA are still served under the new BCI, and the AuthRes
    # passes that BCI and its CRLs on to the merchant.
    p = await gateway_env.purchase("ok", 1_500)
    _, reply = await gateway_env.send(await gateway_env.wrap(p.data, p.pi))
    body = decode_message(reply, now_ms=now_ms()).body
    assert body.bci == newer.bci and set(body.crls) == set(newer.crls)
    res, _ = await gateway_env.answer(reply)
    assert res.payload.auth_code is AuthCode.APPROVED
    # The same BCI again is current, not a change.
    assert await ops.refresh(trust) is Offered.CURRENT


async def test_revoked_merchant_refused(
    gateway_env: GatewayEnv, ops: Ops, trust: RevocationCache
) -> None:
    sig = await new_key(ops.merchant_keys, "sig-rev")
    kx = await new_key(ops.merchant_keys, "kx-rev", exchange=True)
    reg = await register_entity(
        ops.merchant, root=gateway_env.ca.root, brand=BRAND, requester=EntityKind.MERCHANT,
        id_data=IDData(MERCHANT_ID, "411111", None), sig_key=sig, kx_key=kx,
        values={"merchant_id": MERCHANT_ID, "merchant_name": "Example Books", "mcc": "5942"},
    )  # fmt: skip
    env = dataclasses.replace(
        gateway_env, m_sig=sig, m_kx=kx, m_certs=[reg.sig_cert, reg.kx_cert, *reg.chain]
    )
    await ops.refresh(trust)
    await _approved(env, "ok", 1_100)
    before = trust.held(BRAND)
    assert before is not None
    assert await gateway_env.ca.hierarchy.revoke(reg.sig_cert.serial_number, "superseded", now_ms())
    await pushed(trust, before.sequence + 1)
    assert await _refused(env, "ok", 1_100) is ErrorCode.REVOKED_CERTIFICATE
    await _approved(gateway_env, "ok", 1_100)  # the merchant's other certificate holder


async def test_stale_bci_ignored_forged_refused_missing_crl(
    gateway_env: GatewayEnv, ops: Ops, trust: RevocationCache, tmp_path: Path
) -> None:
    ca = gateway_env.ca
    await ops.refresh(trust)
    old = trust.held(BRAND)
    assert old is not None
    brand_cert = ca.hierarchy.cert(ca_name(BRAND, "brand"))
    # A new CRL of the CCA and a new BCI, nothing revoked: pushed, or the operator's refresh.
    await ca.hierarchy.publish_revocation([ca_name(BRAND, "cca")], [BRAND], now_ms())
    await pushed(trust, old.sequence + 1)
    assert await ops.refresh(trust) is Offered.CURRENT
    new = trust.held(BRAND)
    assert new is not None and new.sequence >= old.sequence + 1
    # The older BCI arriving later (a peer that was not refreshed) changes nothing.
    assert trust.offer([brand_cert], old.bci, old.crls, now_ms()) is Offered.STALE
    assert trust.held(BRAND) == new

    # A forged BCI with a far higher sequence: signed by a key that is not the Brand CA's.
    forged_bci = Bci(
        BCI_VERSION, new.sequence + 100, BRAND, now_ms() - 1000, now_ms() + 86_400_000, []
    )
    signed = await sign_data(
        SoftKey(), cert_thumbprint(brand_cert), BCI_CONTENT_TYPE, codec.encode(forged_bci)
    )
    with pytest.raises(ProtocolError) as info:
        trust.offer([brand_cert], codec.encode(signed), [], now_ms())
    assert info.value.code is ErrorCode.SIGNATURE_FAILURE
    # A genuine BCI with one byte of its signature changed.
    tampered = bytearray(new.bci)
    tampered[-5] ^= 0x01
    with pytest.raises(ProtocolError) as info:
        trust.offer([brand_cert], bytes(tampered), [], now_ms())
    assert info.value.code is ErrorCode.SIGNATURE_FAILURE
    assert trust.held(BRAND) == new

    # Holding the new BCI without the CRLs it names: missingCertificate, until they arrive.
    card = gateway_env.cards["ok"]
    bare = RevocationCache(tmp_path / "bare.sqlite", ca.root)
    try:
        assert bare.offer([brand_cert], new.bci, [], now_ms()) is Offered.REPLACED
        state = bare.state(BRAND, now_ms())
        expect = Expect(CertType.CARDHOLDER, KeyUse.SIGNATURE, BRAND)
        with pytest.raises(ProtocolError) as info:
            validate_path(
                card.cert, card.chain, root=ca.root, now=to_dt(now_ms()), expect=expect,
                revocation=state,
            )  # fmt: skip
        assert info.value.code is ErrorCode.MISSING_CERTIFICATE
        assert bare.offer([], None, new.crls, now_ms()) is Offered.NONE
        validate_path(
            card.cert, card.chain, root=ca.root, now=to_dt(now_ms()), expect=expect,
            revocation=bare.state(BRAND, now_ms()),
        )  # fmt: skip
    finally:
        bare.close()


async def test_require_bci_refuses_without_one(
    gateway_env: GatewayEnv, trust: RevocationCache
) -> None:
    service = gateway_env.actor.service
    assert service is not None and trust.held(BRAND) is None
    previous, service.require_bci = service.require_bci, True
    try:
        assert await _refused(gateway_env, "ok", 1_000) is ErrorCode.MISSING_CERTIFICATE
    finally:
        service.require_bci = previous


async def test_gateway_starts_with_the_bci_of_its_registration(
    gateway_env: GatewayEnv, tmp_path: Path
) -> None:
    """The CA's BCI and CRLs from registration are kept in the identity (and survive
    save/load), and the running gateway holds them from its first request on."""
    from actors.gateway.identity import GatewayIdentity

    identity = gateway_env.identity
    assert identity.bci is not None and identity.crls
    path = tmp_path / "identity.json"
    identity.save(path)
    again = GatewayIdentity.load(path)
    assert (again.bci, again.crls) == (identity.bci, identity.crls)
    held = gateway_env.actor.service.trust.held(BRAND)
    assert held is not None
    assert gateway_env.actor.service.require_bci


async def test_held_view_is_remembered_until_any_connection_changes_it(
    gateway_env: GatewayEnv, ops: Ops, trust: RevocationCache
) -> None:
    """``held`` answers from memory while the trust generation stands (actors/trust.py Rule 4)
    and reads again as soon as any connection, the operator's included, changed the data."""
    ca = gateway_env.ca
    await ops.refresh(trust)
    warm = trust.held(BRAND)
    assert warm is not None and trust.held(BRAND) is warm
    operator = RevocationCache(trust.path, ca.root)  # `setpay` on the same database
    try:
        await ca.hierarchy.publish_revocation([ca_name(BRAND, "cca")], [BRAND], now_ms())
        assert await ops.refresh(operator) in (Offered.REPLACED, Offered.CURRENT)
        new = trust.held(BRAND)
        assert new is not None and new.sequence > warm.sequence
        assert new == operator.held(BRAND)
    finally:
        operator.close()
