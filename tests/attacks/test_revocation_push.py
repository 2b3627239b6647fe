"""Insider attacks on the revocation push (actors/trust.py Rules 5, 6; wallet purchase Rule 4),
against the running gateway actor, the running CA, real RabbitMQ and SoftHSM2.

- A party that is not a CA (a merchant's own broker login) pushing revocation data to the
  gateway, even genuine data, is refused (``unauthorizedSender``) and changes nothing.
- A CA login pushing a forged BCI (a far higher sequence, signed by another key) gets
  ``signatureFailure`` and changes nothing; pushing an older genuine BCI (a rollback to before a
  revocation) changes nothing either: the revoked merchant stays refused.
- A wallet (the server wallet's store) or a thin client that has seen a brand's newer BCI
  refuses an older one a merchant hands it (``staleRevocationData``); the floor survives a
  restart of the wallet.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.ca.hierarchy import ca_name
from actors.trust import RevocationCache, revocation_key
from actors.wallet import purchase
from actors.wallet.api import StartedPurchase, seal_for
from actors.wallet.cli import FileFloors
from actors.wallet.errors import WalletError
from actors.wallet.store import WalletStore
from broker.connection import connect
from broker.peer import PeerLink
from broker.topology import SET_EXCHANGE
from protocol import codec, ids
from protocol.certs import cert_thumbprint, certificate_der
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import BCIDistribution, EntityKind, IDData, MessageType
from protocol.requester import register_entity
from protocol.revocation import BCI_CONTENT_TYPE, BCI_VERSION, Bci
from protocol.set_error import RemoteError, expect_reply
from protocol.signed import sign_data
from protocol.trustview import Trust
from protocol.wrapper import amqp_type, encode_message, make_header
from setpay.config import Settings
from tests.fixtures_ca import new_key
from tests.gateway.conftest import BRAND, MERCHANT_ID, GatewayEnv
from tests.gateway.isolated import isolated_gateway
from tests.gateway.test_revocation import PUSH_SECONDS, _approved, _refused, pushed
from tests.softkeys import SoftKey

pytestmark = pytest.mark.integration


def now_ms() -> int:
    return ids.SystemClock().now_ms()


def _wire(bci: bytes, brand_cert: bytes, crls: list[bytes]) -> bytes:
    body = BCIDistribution([brand_cert], crls, bci)
    return encode_message(make_header(now_ms()), body)


@pytest.fixture(scope="module")
async def gateway_env(
    keystore_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayEnv]:
    """A running CA and gateway of this module's own (tests/gateway/isolated.py)."""
    async with isolated_gateway(keystore_settings, tmp_path_factory, tag="push") as env:
        yield env


@pytest.fixture
async def trust(gateway_env: GatewayEnv, tmp_path: Path) -> AsyncIterator[RevocationCache]:
    """The running gateway's revocation cache, fresh for one test (the push reaches it)."""
    service = gateway_env.actor.service
    assert service is not None
    cache = RevocationCache(tmp_path / "trust.sqlite", gateway_env.ca.root)
    saved, service.trust = service.trust, cache
    try:
        yield cache
    finally:
        service.trust = saved
        cache.close()


async def _push_as(env: GatewayEnv, login: str, wire: bytes, *, expect_error: bool) -> object:
    """Send ``wire`` as BCIDistribution to the gateway instance from broker user ``login``;
    the SET Error code it answers, or None when it answers nothing (as for a taken push)."""
    bus = await connect(env.ca.deployment.url_for(login), name=login)
    role = login.split(".")[0]
    link = await PeerLink(bus, role, f"attack-{ids.new_lid().hex()[:6]}", timeout=5.0).start()
    try:
        try:
            _, reply = await link.request(
                "gateway.gw1", amqp_type(MessageType.BCI_DISTRIBUTION), wire
            )
        except TimeoutError:
            assert not expect_error, "the gateway answered nothing"
            return None
        with pytest.raises(RemoteError) as refused:
            expect_reply(reply, now_ms(), BCIDistribution, who="gateway")
        return refused.value.code
    finally:
        await link.close()
        await bus.close()


async def test_only_a_ca_login_may_push(gateway_env: GatewayEnv, trust: RevocationCache) -> None:
    h = gateway_env.ca.hierarchy
    wire = _wire(
        h.current_bci(BRAND) or b"", certificate_der(h.cert(ca_name(BRAND, "brand"))),
        h.current_crls(BRAND),
    )  # fmt: skip
    # Genuine data, but from the merchant's own login: refused, nothing held.
    code = await _push_as(gateway_env, "merchant.m1", wire, expect_error=True)
    assert code is ErrorCode.UNAUTHORIZED_SENDER
    assert trust.held(BRAND) is None
    # The same bytes from a CA login are taken.
    assert await _push_as(gateway_env, "ca.main", wire, expect_error=False) is None
    held = trust.held(BRAND)
    assert held is not None and held.bci == h.current_bci(BRAND)


async def test_forged_or_older_bci_pushed_changes_nothing(
    gateway_env: GatewayEnv, trust: RevocationCache
) -> None:
    ca = gateway_env.ca
    h = ca.hierarchy
    brand_der = certificate_der(h.cert(ca_name(BRAND, "brand")))
    # A merchant certificate of the merchant's own login, revoked while the gateway runs.
    m_client, m_keys = await ca.requester("merchant.m1", queue_suffix="rollback")
    try:
        sig = await new_key(m_keys, "sig-rollback")
        kx = await new_key(m_keys, "kx-rollback", exchange=True)
        reg = await register_entity(
            m_client, root=ca.root, brand=BRAND, requester=EntityKind.MERCHANT,
            id_data=IDData(MERCHANT_ID, "411111", None), sig_key=sig, kx_key=kx,
            values={"merchant_id": MERCHANT_ID, "merchant_name": "Example Books", "mcc": "5942"},
        )  # fmt: skip
    finally:
        await m_client.close()
    env = dataclasses.replace(
        gateway_env, m_sig=sig, m_kx=kx, m_certs=[reg.sig_cert, reg.kx_cert, *reg.chain]
    )
    old_bci, old_crls = h.current_bci(BRAND), h.current_crls(BRAND)
    assert old_bci is not None
    await _push_as(gateway_env, "ca.main", _wire(old_bci, brand_der, old_crls), expect_error=False)
    old = trust.held(BRAND)
    assert old is not None
    await _approved(env, "ok", 1_100)
    assert await h.revoke(reg.sig_cert.serial_number, "keyCompromise", now_ms())
    await pushed(trust, old.sequence + 1)
    new = trust.held(BRAND)
    assert new is not None
    assert await _refused(env, "ok", 1_100) is ErrorCode.REVOKED_CERTIFICATE

    # Rollback: the older genuine BCI and its CRLs, from a CA login: ignored.
    await _push_as(gateway_env, "ca.main", _wire(old_bci, brand_der, old_crls), expect_error=False)
    assert trust.held(BRAND) == new
    # A forged BCI naming no CRL at all, with a far higher sequence: signatureFailure.
    forged = Bci(BCI_VERSION, new.sequence + 1000, BRAND, now_ms() - 1000, now_ms() + 86_400_000,
                 [])  # fmt: skip
    brand_thumb = cert_thumbprint(h.cert(ca_name(BRAND, "brand")))
    signed = codec.encode(
        await sign_data(SoftKey(), brand_thumb, BCI_CONTENT_TYPE, codec.encode(forged))
    )
    code = await _push_as(gateway_env, "ca.main", _wire(signed, brand_der, []), expect_error=True)
    assert code is ErrorCode.SIGNATURE_FAILURE
    assert trust.held(BRAND) == new
    assert await _refused(env, "ok", 1_100) is ErrorCode.REVOKED_CERTIFICATE


async def test_a_push_on_the_broadcast_key_reaches_the_gateway(
    gateway_env: GatewayEnv, trust: RevocationCache
) -> None:
    """The CA's own path: ``revocation.<brand>`` on the SET exchange is bound to the gateway."""
    h = gateway_env.ca.hierarchy
    wire = _wire(
        h.current_bci(BRAND) or b"", certificate_der(h.cert(ca_name(BRAND, "brand"))),
        h.current_crls(BRAND),
    )  # fmt: skip
    bus = await connect(gateway_env.ca.deployment.url_for("ca.main"), name="ca.main")
    try:
        message = bus.message(wire, msg_type=amqp_type(MessageType.BCI_DISTRIBUTION))
        await bus.publish(revocation_key(BRAND), message, exchange=SET_EXCHANGE)
    finally:
        await bus.close()
    deadline = asyncio.get_running_loop().time() + PUSH_SECONDS
    while trust.held(BRAND) is None:
        assert asyncio.get_running_loop().time() < deadline, "broadcast not taken"
        await asyncio.sleep(0.05)


async def test_wallet_and_thin_client_refuse_an_older_bci(
    gateway_env: GatewayEnv, tmp_path: Path
) -> None:
    ca = gateway_env.ca
    h = ca.hierarchy
    brand_cert = h.cert(ca_name(BRAND, "brand"))
    old_bci, old_crls = h.current_bci(BRAND), h.current_crls(BRAND)
    assert old_bci is not None
    await h.publish_revocation([ca_name(BRAND, "cca")], [BRAND], now_ms())
    new_bci, new_crls = h.current_bci(BRAND), h.current_crls(BRAND)
    assert new_bci is not None and new_bci != old_bci

    def trust_of(bci: bytes, crls: list[bytes]) -> Trust:
        return Trust.load(ca.root, BRAND, [brand_cert], bci, crls, now_ms())

    # The server wallet: its store keeps the floor, across a restart.
    store = WalletStore.open(tmp_path, "floor")
    try:
        floor = purchase.BciFloor(store)
        floor.admit(trust_of(old_bci, old_crls), now_ms())  # first seen: taken
        floor.admit(trust_of(new_bci, new_crls), now_ms())  # newer: the floor rises
        with pytest.raises(ProtocolError) as refused:
            floor.admit(trust_of(old_bci, old_crls), now_ms())
        assert refused.value.code is ErrorCode.STALE_REVOCATION_DATA
    finally:
        store.close()
    store = WalletStore.open(tmp_path, "floor")
    try:
        with pytest.raises(ProtocolError) as refused:
            purchase.BciFloor(store).admit(trust_of(old_bci, old_crls), now_ms())
        assert refused.value.code is ErrorCode.STALE_REVOCATION_DATA
        purchase.BciFloor(store).admit(trust_of(new_bci, new_crls), now_ms())
    finally:
        store.close()

    # The thin client sealing a PIN: the gateway certificate validated with the merchant's BCI.
    identity = gateway_env.identity
    certs = [certificate_der(c) for c in (identity.kx_cert, *identity.chain)]

    def started(bci: bytes, crls: list[bytes]) -> StartedPurchase:
        return StartedPurchase(
            "p1", ids.new_xid(), certificate_der(identity.kx_cert), BRAND, certs, crls, bci,
            "4111111111111111",
        )  # fmt: skip

    floor = purchase.BciFloor()
    assert await seal_for(started(new_bci, new_crls), ca.root, "1234", floor=floor)
    with pytest.raises(WalletError) as stale:
        await seal_for(started(old_bci, old_crls), ca.root, "1234", floor=floor)
    assert "STALE_REVOCATION_DATA" in str(stale.value)
    assert "1234" not in str(stale.value)
    # `setpay wallet buy` keeps its floor in a file: a later run refuses the older BCI too.
    path = tmp_path / "wallet" / "bci-floor.json"
    assert await seal_for(started(new_bci, new_crls), ca.root, "1234",
                          floor=purchase.BciFloor(FileFloors(path)))  # fmt: skip
    with pytest.raises(WalletError, match="STALE_REVOCATION_DATA"):
        await seal_for(started(old_bci, old_crls), ca.root, "1234",
                       floor=purchase.BciFloor(FileFloors(path)))  # fmt: skip
