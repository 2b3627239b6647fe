"""The issuer identity as a PIN oracle, against the real keystore (RabbitMQ + SoftHSM2) with
real broker logins.

Before: the issuer could run plain HMAC with its PIN verification key (PVK); a PVV is that
HMAC, so about 7,400 calls (1.3 s) walked the 4-digit PIN space of any account whose PVV it
held; ``pin_encipher`` (a block for a chosen PIN) fed to ``pin_verify`` was a second oracle;
and a request without a PIN block counted as a wrong PIN. Now (keystore/policy.py Rule 4,
keystore/pinguard.py, keystore/pinops.py Rule 6): a PIN key serves no generic operation for
any identity (``PinKeyMisuse``, audited); issuance answers a PVV, never a block, and counts
3 per account an hour; 3 failed verifications lock an account's PIN for a day; a missing
block is a format error (``PinBlockMissing``) that counts nothing.
"""

from __future__ import annotations

import os
import secrets

import pytest

from keystore import messages as m
from keystore.errors import (
    BadRequest,
    Forbidden,
    KeyExists,
    PinBlockMissing,
    PinKeyMisuse,
    PinLocked,
    RateLimited,
)
from keystore.operations import OPERATIONS
from keystore.pinguard import LIMITS, PIN_TRY_LIMIT, Guarded
from keystore.policy import Policy
from keystore.transport import UNSEALED
from protocol import pin
from tests.fixtures_keystore import KeystoreDeployment

pytestmark = pytest.mark.integration

ROLES = ("issuer", "gateway", "wallet", "merchant", "ca")
PIN = "4821"


def _account() -> str:
    """A fresh account per test: the guard's counts are per account and shared by the
    session's keystore workers."""
    return str(secrets.randbelow(9_000_000) + 1_000_000)


@pytest.fixture(scope="module")
async def keys(keystore_deployment: KeystoreDeployment, hsm, broker_vhost):
    """An issuer whose PVK a key ceremony made, the zone's ZPK, and a client per role."""
    tag = os.urandom(3).hex()
    clients = {role: await keystore_deployment.client(f"{role}.o{tag}") for role in ROLES}
    issuer = clients["issuer"]
    pvk = issuer.label("issuer-pvk")
    hsm.create_key(pvk, m.KeyKind.HMAC256, m.KeyUsage.SECRET)
    zpk = f"{broker_vhost.prefix}zone.main/zpk"
    try:
        hsm.create_key(zpk, m.KeyKind.AES256, m.KeyUsage.SECRET)
    except KeyExists:
        pass
    return clients, pvk, zpk


def block_under_zpk(hsm, zpk: str, account: str, pin_code: str) -> bytes:
    """A format 4 block as the network would carry it (enciphered in the token)."""
    return pin.encipher_format4_with(
        lambda b: hsm.aes_block(zpk, b, decrypt=False), pin_code, account
    )


async def test_pin_keys_serve_no_generic_operation_for_any_identity(keys, keystore_deployment):
    """HMAC, encrypt (seal), decrypt (open, RSA decrypt), derive and sign with the PVK or the
    ZPK: refused ``PinKeyMisuse`` for every role, the key's owner included, and audited."""
    clients, pvk, zpk = keys
    attempts = 0
    for role, client in clients.items():
        for label in (pvk, zpk):
            calls = (
                client.hmac(label, pin.pvv_input("1234567", "1234")),
                client.seal(label, b"x"),
                client.open(label, bytes(40)),
                client.decrypt(label, bytes(256)),
                client.derive(label, bytes(65), b"info", 32),
                client.sign(label, bytes(32)),
            )
            for call in calls:
                with pytest.raises(PinKeyMisuse):
                    await call
                attempts += 1
            (item,) = await client.batch([m.BatchItem(m.Op.DECRYPT, label, bytes(256),
                                                      m.OaepHash.SHA1)])  # fmt: skip
            assert isinstance(item, PinKeyMisuse), role
            attempts += 1
    identities = {c.identity for c in clients.values()}
    refused = [
        e for e in keystore_deployment.audit_events()
        if e["caller"] in identities and e["label"] in (pvk, zpk)
    ]  # fmt: skip
    assert len(refused) == attempts
    assert {e["outcome"] for e in refused} == {"pin_key_misuse"}


async def test_the_7400_call_hmac_oracle_is_gone(keys, hsm):
    """The old attack: PVV(account, guess) by plain HMAC until it equals the stored PVV. The
    first call is refused; the issuance path answers 3 guesses and then nothing."""
    clients, pvk, zpk = keys
    issuer = clients["issuer"]
    victim = _account()
    stored = await issuer.pin_pvv(pvk, zpk, victim, block_under_zpk(hsm, zpk, victim, PIN))
    with pytest.raises(PinKeyMisuse):
        await issuer.hmac(pvk, pin.pvv_input(victim, "0000"))
    answered = []
    for guess in (f"{n:04d}" for n in range(10_000)):
        try:
            answered.append(await issuer.pin_issue(pvk, victim, guess))
        except RateLimited:
            break
    assert len(answered) == LIMITS[Guarded.ISSUE].per_account == 3
    assert stored not in answered  # "0000".."0002": the walk stopped long before "4821"
    # what issuance returns is a PVV, never a block pin_verify could test
    assert all(len(p) == pin.PVV_BYTES for p in answered)
    with pytest.raises(BadRequest):
        await issuer.pin_verify(pvk, zpk, victim, answered[0], stored)


async def test_brute_force_of_one_account_is_locked_out(keys, hsm, keystore_deployment):
    """Wrong PINs for one account: after ``PIN_TRY_LIMIT`` failures every verification is
    refused ``PinLocked``, the right PIN included, from any identity; other accounts work."""
    clients, pvk, zpk = keys
    issuer = clients["issuer"]
    victim, other = _account(), _account()
    right = block_under_zpk(hsm, zpk, victim, PIN)
    pvv = await issuer.pin_pvv(pvk, zpk, victim, right)
    assert await issuer.pin_verify(pvk, zpk, victim, right, pvv)
    tried = 0
    for guess in (f"{n:04d}" for n in range(10_000)):
        try:
            ok = await issuer.pin_verify(
                pvk, zpk, victim, block_under_zpk(hsm, zpk, victim, guess), pvv
            )
        except PinLocked:
            break
        assert not ok
        tried += 1
    assert tried == PIN_TRY_LIMIT == 3
    with pytest.raises(PinLocked):
        await issuer.pin_verify(pvk, zpk, victim, right, pvv)
    # a PVV made by issuance for a guess, tested against the victim's real block, is a
    # verification of that account like any other: locked too
    guess_pvv = await issuer.pin_issue(pvk, victim, "1111")
    with pytest.raises(PinLocked):
        await issuer.pin_verify(pvk, zpk, victim, right, guess_pvv)
    other_block = block_under_zpk(hsm, zpk, other, PIN)
    other_pvv = await issuer.pin_pvv(pvk, zpk, other, other_block)
    assert await issuer.pin_verify(pvk, zpk, other, other_block, other_pvv)
    locked = [
        e for e in keystore_deployment.audit_events()
        if e["caller"] == issuer.identity and e["op"] == "pin_verify"
        and e["outcome"] == "pin_locked"
    ]  # fmt: skip
    assert len(locked) >= 2


async def test_missing_pin_block_is_a_format_error_not_a_wrong_pin(keys, hsm):
    """Requests without a PIN block are answered ``PinBlockMissing`` and count nothing: after
    more of them than the try limit, and two wrong PINs, the right PIN still verifies."""
    clients, pvk, zpk = keys
    issuer = clients["issuer"]
    victim = _account()
    right = block_under_zpk(hsm, zpk, victim, PIN)
    pvv = await issuer.pin_pvv(pvk, zpk, victim, right)
    for _ in range(PIN_TRY_LIMIT + 2):
        with pytest.raises(PinBlockMissing):
            await issuer.pin_verify(pvk, zpk, victim, b"", pvv)
    with pytest.raises(PinBlockMissing):
        await issuer.pin_pvv(pvk, zpk, victim, b"")
    for guess in ("0000", "1111"):
        wrong = block_under_zpk(hsm, zpk, victim, guess)
        assert not await issuer.pin_verify(pvk, zpk, victim, wrong, pvv)
    assert await issuer.pin_verify(pvk, zpk, victim, right, pvv)


async def test_verifications_per_account_are_counted(keys, hsm, keystore_deployment):
    """Right PINs too: an account answers ``per_account`` verifications a window, whoever
    asks; then ``RateLimited``."""
    clients, pvk, zpk = keys
    issuer = clients["issuer"]
    account = _account()
    block = block_under_zpk(hsm, zpk, account, PIN)
    pvv = await issuer.pin_pvv(pvk, zpk, account, block)
    for _ in range(LIMITS[Guarded.VERIFY].per_account):
        assert await issuer.pin_verify(pvk, zpk, account, block, pvv)
    with pytest.raises(RateLimited):
        await issuer.pin_verify(pvk, zpk, account, block, pvv)
    second = await keystore_deployment.client(f"issuer.o{os.urandom(3).hex()}")
    pvk2 = second.label("issuer-pvk")
    hsm.create_key(pvk2, m.KeyKind.HMAC256, m.KeyUsage.SECRET)
    pvv2 = await second.pin_pvv(pvk2, zpk, account, block)
    with pytest.raises(RateLimited):  # counted per account, not only per caller
        await second.pin_verify(pvk2, zpk, account, block, pvv2)


def test_issuance_is_granted_by_identity() -> None:
    """A deployment that names a ceremony identity refuses issuance to the issuer host."""
    policy = Policy(issuance_grants=frozenset({"issuer.ceremony"}))
    issue = OPERATIONS[m.Op.PIN_ISSUE]
    policy.authorize("issuer.ceremony", issue, m.PinIssue("issuer.ceremony/pvk", UNSEALED))
    with pytest.raises(Forbidden, match="issuance"):
        policy.authorize("issuer.host", issue, m.PinIssue("issuer.host/pvk", UNSEALED))
