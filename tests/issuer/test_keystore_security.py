"""``KeystoreIssuerSecurity`` against the real keystore (RabbitMQ + SoftHSM2): the PAN index
comes from an HMAC key inside the token; PIN operations, not offered by the keystore yet,
decline with a retryable 96 and store nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors.issuer.accounts import AccountRecord, Store
from actors.issuer.codes import ResponseCode
from actors.issuer.errors import SecurityUnavailable
from actors.issuer.host import IssuerHost
from actors.issuer.link import IsoLink, LinkRequest
from actors.issuer.security import PAN_INDEX_KEY, PVK_KEY, KeystoreIssuerSecurity
from actors.issuer.seed import environment_accounts, seed
from keystore import messages as m

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def keystore_security(keystore_deployment, hsm, broker_vhost):
    """An issuer identity whose PAN-index key was made by a key ceremony on the token
    (the issuer role may use its keys but not create them)."""
    client = await keystore_deployment.client("issuer.itest")
    hsm.create_key(client.label(PAN_INDEX_KEY), m.KeyKind.HMAC256, m.KeyUsage.SECRET)
    return KeystoreIssuerSecurity(
        client, pan_index_label=client.label(PAN_INDEX_KEY), pvk_label=client.label(PVK_KEY)
    )


async def test_pan_index_is_a_keyed_hmac_in_the_token(keystore_security):
    a1 = await keystore_security.pan_index("4111111111111111")
    a2 = await keystore_security.pan_index("4111111111111111")
    b = await keystore_security.pan_index("5555555555554444")
    assert a1 == a2 and len(a1) == 32 and a1 != b
    assert b"4111111111111111" not in a1


async def test_pin_operations_are_unavailable_until_the_keystore_offers_them(
    keystore_security,
):
    with pytest.raises(SecurityUnavailable):
        await keystore_security.pvv("1234567", bytes(16))
    with pytest.raises(SecurityUnavailable):
        await keystore_security.verify_pin("1234567", bytes(16), bytes(8))


async def test_host_over_keystore_security(keystore_security, tmp_path: Path):
    """Cards seeded and authorized with the HSM-held index; a PIN debit is a retryable 96
    that leaves nothing behind, so it can be retried once the keystore offers PIN ops."""
    accounts = {a.name: a for a in environment_accounts(datetime.now(UTC))}
    cards = [a for a in accounts.values() if a.pin is None]
    store = Store(tmp_path / "issuer.sqlite")
    await seed(store, keystore_security, cards)
    bank = accounts["bank-ok"]
    # A PIN-protected account; its PVV is a stand-in (the keystore cannot compute one yet).
    store.put_account(
        AccountRecord(
            pan_index=await keystore_security.pan_index(bank.reference),
            kind="bank",
            brand="ope",
            last4="4567",
            expiry=None,
            credit_limit=0,
            balance=10_000,
            pvv=bytes(8),
        )
    )
    host = IssuerHost(store, keystore_security)
    await host.start()
    link = IsoLink("127.0.0.1", host.port, tmp_path / "link.sqlite")
    await link.start()
    try:
        ok = await link.request(LinkRequest("KS0000000001", accounts["visa-ok"].reference, 500))
        assert ok.code is ResponseCode.APPROVED
        stolen = await link.request(
            LinkRequest("KS0000000002", accounts["mc-stolen"].reference, 500)
        )
        assert stolen.code is ResponseCode.STOLEN_CARD
        debit = await link.request(
            LinkRequest("KS0000000003", bank.reference, 500, mti="0200", pin_block=bytes(16))
        )
        assert debit.code is ResponseCode.SYSTEM_MALFUNCTION and debit.retryable
        n = store.db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]
        assert n == 2  # the 96 left no trace: a retry is decided afresh
        snap = store.snapshot(await keystore_security.pan_index(bank.reference))
        assert snap is not None and snap.account.pin_tries == 0
    finally:
        await link.close()
        await host.stop()
        store.close()
