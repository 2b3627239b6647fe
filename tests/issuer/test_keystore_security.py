"""``KeystoreIssuerSecurity`` against the real keystore (RabbitMQ + SoftHSM2): the PAN index
is an HMAC key inside the token; PVVs and PIN checks run in the keystore with the zone PIN
key; the host approves the right PIN, declines a wrong one, and neither the PIN nor its block
reaches the audit log or the issuer's database."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors.iso8583.codes import ResponseCode
from actors.iso8583.link import IsoLink, LinkRequest
from actors.iso8583.security import ZPK_LABEL
from actors.issuer.accounts import Store
from actors.issuer.errors import InvalidPinBlock, SecurityUnavailable
from actors.issuer.host import IssuerHost
from actors.issuer.security import PAN_INDEX_KEY, PVK_KEY, KeystoreIssuerSecurity
from actors.issuer.seed import environment_accounts, seed
from keystore import messages as m
from keystore.errors import KeyExists
from protocol import pin

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def issuer_keys(keystore_deployment, hsm, broker_vhost):
    """An issuer identity whose PAN-index key and PVK, and the zone's ZPK, were made by a key
    ceremony on the token (the issuer role may use its keys but not create them)."""
    client = await keystore_deployment.client("issuer.itest")
    hsm.create_key(client.label(PAN_INDEX_KEY), m.KeyKind.HMAC256, m.KeyUsage.SECRET)
    hsm.create_key(client.label(PVK_KEY), m.KeyKind.HMAC256, m.KeyUsage.SECRET)
    zpk = broker_vhost.prefix + ZPK_LABEL
    try:
        hsm.create_key(zpk, m.KeyKind.AES256, m.KeyUsage.SECRET)
    except KeyExists:  # another module of this session made the zone key already
        pass
    security = KeystoreIssuerSecurity(
        client,
        pan_index_label=client.label(PAN_INDEX_KEY),
        pvk_label=client.label(PVK_KEY),
        zpk_label=zpk,
    )
    return client, zpk, security


async def test_pan_index_is_a_keyed_hmac_in_the_token(issuer_keys):
    _, _, security = issuer_keys
    a1 = await security.pan_index("4111111111111111")
    a2 = await security.pan_index("4111111111111111")
    b = await security.pan_index("5555555555554444")
    assert a1 == a2 and len(a1) == 32 and a1 != b
    assert b"4111111111111111" not in a1


def block_under_zpk(hsm, zpk: str, account: str, pin_code: str) -> bytes:
    """A format 4 block as a PIN pad's network would send it, enciphered in the token (the
    keystore serves no PIN block under a caller-chosen PIN over the bus)."""
    return pin.encipher_format4_with(
        lambda b: hsm.aes_block(zpk, b, decrypt=False), pin_code, account
    )


async def test_pvv_and_verify_in_the_keystore(issuer_keys, hsm):
    client, zpk, security = issuer_keys
    block = block_under_zpk(hsm, zpk, "2345671", "1234")
    again = block_under_zpk(hsm, zpk, "2345671", "1234")
    assert len(block) == 16 and block != again  # format 4: random fill each time
    pvv = await security.pvv("2345671", block)
    assert len(pvv) == 8 and pvv == await security.pvv("2345671", again)
    assert pvv == await client.pin_issue(security.pvk_label, "2345671", "1234")  # issuance
    assert await security.verify_pin("2345671", again, pvv)
    wrong = block_under_zpk(hsm, zpk, "2345671", "1235")
    assert not await security.verify_pin("2345671", wrong, pvv)
    assert not await security.verify_pin("7654321", block, pvv)  # bound to the account
    with pytest.raises(InvalidPinBlock):  # no block: a format error, not a wrong PIN
        await security.verify_pin("2345671", b"", pvv)
    with pytest.raises(InvalidPinBlock):
        await security.pvv("2345671", bytes(16))
    unconfigured = KeystoreIssuerSecurity(
        client, pan_index_label=security.pan_index_label, pvk_label=security.pvk_label
    )
    with pytest.raises(SecurityUnavailable):
        await unconfigured.verify_pin("2345671", block, pvv)


async def test_host_over_keystore_security(issuer_keys, keystore_deployment, hsm, tmp_path: Path):
    """Cards and PIN accounts seeded through the keystore; a debit with the right PIN is
    approved, a wrong one declined 55; no PIN or PIN block in the DB or the audit log."""
    client, zpk, security = issuer_keys
    accounts = {a.name: a for a in environment_accounts(datetime.now(UTC))}
    store = Store(tmp_path / "issuer.sqlite")

    async def block_for(binding: str, pin_code: str) -> bytes:
        return block_under_zpk(hsm, zpk, binding, pin_code)

    async def pvv_for(binding: str, pin_code: str) -> bytes:
        return await client.pin_issue(security.pvk_label, binding, pin_code)

    await seed(store, security, list(accounts.values()), pvv_for=pvv_for)
    bank = accounts["bank-ok"]
    assert bank.pin is not None
    host = IssuerHost(store, security)
    await host.start()
    link = IsoLink("127.0.0.1", host.port, tmp_path / "link.sqlite")
    await link.start()
    sent: list[bytes] = []
    try:
        ok = await link.request(LinkRequest("KS0000000001", accounts["visa-ok"].reference, 500))
        assert ok.code is ResponseCode.APPROVED
        right = await block_for(bank.binding, bank.pin)
        wrong = await block_for(bank.binding, "0000")
        sent += [right, wrong]
        debit = await link.request(
            LinkRequest("KS0000000002", bank.reference, 500, mti="0200", pin_block=right)
        )
        assert debit.code is ResponseCode.APPROVED
        bad = await link.request(
            LinkRequest("KS0000000003", bank.reference, 500, mti="0200", pin_block=wrong)
        )
        assert bad.code is ResponseCode.WRONG_PIN
    finally:
        await link.close()
        await host.stop()
        store.close()
    db = b"".join(p.read_bytes() for p in tmp_path.glob("issuer.sqlite*"))
    log = keystore_deployment.log_file.read_text()
    for block in sent:
        assert block not in db and block.hex() not in log
    assert bank.pin.encode() not in db and f'"{bank.pin}"' not in log
