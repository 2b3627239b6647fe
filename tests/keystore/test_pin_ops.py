"""OPE at the HSM boundary, against the real keystore (RabbitMQ + SoftHSM2): the gateway opens
a PIN-bearing PI only through ``open_pi_account``, gets the PIN block only as format 4 under
the zone PIN key, never the cardholder's block; a PIN-bearing PI opens once; plain
decrypt/derive of a PI wrap is refused; zone keys follow their grant list. (PIN keys doing
one job, the guard's limits and lockout: tests/attacks/test_pin_oracle.py.)"""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives import serialization

from keystore import messages as m
from keystore.client import HsmAccountOpener
from keystore.errors import Forbidden, InvalidPinBlock, KeyExists, PinKeyMisuse
from keystore.operations import OPERATIONS
from keystore.policy import Policy
from keystore.transport import UNSEALED
from protocol import codec, dualsig, pan, pin, primitives
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import SUITES
from protocol.messages import CurrAmt, PIHead, PIKind, PinEntry, PurchaseInputs, TransIDs
from tests.softkeys import SoftKey

pytestmark = pytest.mark.integration

BANK = pan.Account(pan.AccountKind.BANK, "1234567", bank_code="0001", branch="123")
PIN = "48260739"  # long enough that a match in a log line cannot be a timestamp
PIN_FIELD = bytes.fromhex(f"{len(PIN):02d}" + PIN)  # the PIN field of its format-0 block


def zone_zpk(hsm, prefix: str) -> str:
    """The deployment's zone PIN key, made once by a key ceremony on the token."""
    label = f"{prefix}zone.main/zpk"
    try:
        hsm.create_key(label, m.KeyKind.AES256, m.KeyUsage.SECRET)
    except KeyExists:
        pass
    return label


@pytest.fixture(scope="module")
async def ope(keystore_deployment, hsm, broker_vhost):
    gateway = await keystore_deployment.client("gateway.pintest")
    issuer = await keystore_deployment.client("issuer.pintest")
    zpk = zone_zpk(hsm, broker_vhost.prefix)
    hsm.create_key(issuer.label("issuer-pvk"), m.KeyKind.HMAC256, m.KeyUsage.SECRET)
    keys = {}
    for name, kind in (("rsa2048", m.KeyKind.RSA2048), ("p256", m.KeyKind.P256)):
        info = await gateway.create_key(f"ke-{name}", kind, m.KeyUsage.EXCHANGE)
        keys[name] = info
    return gateway, issuer, zpk, keys


def pi_head(xid: bytes) -> bytes:
    trans = TransIDs(b"lid-c", None, xid, 1_700_000_000_000, None, "en")
    return codec.encode(PIHead(
        trans, PurchaseInputs(bytes(32), CurrAmt("JPY", 1)), "M-1", bytes(32), bytes(32), None,
        bytes(32), "t", None, pan.AccountKind.BANK, PinEntry.PIN_ANY,
    ))  # fmt: skip


async def make_pi(suite_name: str, info: m.KeyInfo, pin_code: str | None, number: str = ""):
    """A PI to the keystore's gateway key; with ``pin_code`` the thin client's seal of it
    (bound to ``number``, the bank account by default) rides beside the PI."""
    suite = SUITES[suite_name]
    public = serialization.load_der_public_key(info.public_key)
    gwt = primitives.thumbprint(info.public_key)
    ch = SoftKey(suite)
    cht, mt = secrets.token_bytes(32), secrets.token_bytes(32)
    data = codec.encode(pan.make_pan_data(BANK, "3012", secrets.token_bytes(32)))
    oi_data = codec.packb(["OIData", secrets.token_bytes(8)])
    xid = secrets.token_bytes(32)
    seal = None
    if pin_code is not None:
        seal = await pin.seal_pin(suite, public, gwt, xid, pin_code, number or BANK.number)
    parts = await dualsig.make_dual_signed(
        ch, cht, suite, public, gwt, mt, pi_head(xid), data, oi_data, seal
    )
    return parts, ch.public_key(), gwt, mt, data


@pytest.mark.parametrize("suite_name", ["rsa2048", "p256"])
async def test_gateway_gets_the_pin_only_under_the_zpk(ope, suite_name, keystore_deployment):
    gateway, issuer, zpk, keys = ope
    info = keys[suite_name]
    block0 = pin.encode_format0(PIN, BANK.number)
    parts, ch_pub, gwt, mt, data = await make_pi(suite_name, info, PIN)
    opener = HsmAccountOpener(gateway, info.label, zpk)
    view = await dualsig.open_at_gateway(parts.pi, opener, gwt, ch_pub, mt)
    assert view.pan_data == data and view.pin_block is not None and len(view.pin_block) == 16
    # nothing the gateway process received holds the cardholder's block or the clear PIN:
    # the keystore's answer for a second, fresh PI, checked as the bytes that crossed the bus
    fresh, *_ = await make_pi(suite_name, info, PIN)
    pid = codec.decode(dualsig.PIDualSigned, fresh.pi)
    answer = codec.encode(
        await gateway.open_pi_account(
            info.label, PIKind.DUAL_SIGNED, pid.envelope, zpk, pin_seal=pid.pin_seal
        )
    )
    assert block0 not in answer and PIN_FIELD not in answer
    assert block0 not in view.pin_block and block0 not in view.pan_data
    assert PIN.encode() not in view.pin_block and PIN_FIELD not in view.pin_block
    # the issuer verifies it through its own keystore ops
    pvk = issuer.label("issuer-pvk")
    pvv = await issuer.pin_pvv(pvk, zpk, BANK.number, view.pin_block)
    assert await issuer.pin_verify(pvk, zpk, BANK.number, view.pin_block, pvv)
    if suite_name == "rsa2048":  # issuance counts 3 per account an hour (keystore/pinguard)
        assert pvv == await issuer.pin_issue(pvk, BANK.number, PIN)  # the same PVV
        wrong = await issuer.pin_issue(pvk, BANK.number, "4827")
        assert not await issuer.pin_verify(pvk, zpk, BANK.number, view.pin_block, wrong)
    # a PIN-bearing PI opens once
    with pytest.raises(ProtocolError) as exc:
        await dualsig.open_at_gateway(parts.pi, opener, gwt, ch_pub, mt)
    assert exc.value.code is ErrorCode.REPLAY
    # the audit trail names ops and labels only
    log = keystore_deployment.log_file.read_text()
    for secret in (PIN, block0.hex(), view.pin_block.hex(), BANK.number):
        assert secret not in log
    ops = {e["op"] for e in keystore_deployment.audit_events()}
    assert {"open_pi_account", "pin_pvv", "pin_verify", "pin_issue"} <= ops


async def test_same_transaction_may_reopen_with_its_use_key(ope):
    gateway, _, zpk, keys = ope
    info = keys["p256"]
    parts, ch_pub, gwt, mt, _ = await make_pi("p256", info, PIN)
    first = HsmAccountOpener(gateway, info.label, zpk, use_key=b"\x01" * 32)
    a = await dualsig.open_at_gateway(parts.pi, first, gwt, ch_pub, mt)
    b = await dualsig.open_at_gateway(parts.pi, first, gwt, ch_pub, mt)  # crash-retry
    assert a.pan_data == b.pan_data
    other = HsmAccountOpener(gateway, info.label, zpk, use_key=b"\x02" * 32)
    with pytest.raises(ProtocolError) as exc:
        await dualsig.open_at_gateway(parts.pi, other, gwt, ch_pub, mt)
    assert exc.value.code is ErrorCode.REPLAY


@pytest.mark.parametrize("suite_name", ["rsa2048", "p256"])
async def test_plain_private_key_path(ope, suite_name):
    """Card-only PIs still open with the plain key; a PIN-bearing one is refused there."""
    gateway, _, _, keys = ope
    info = keys[suite_name]
    key = await gateway.private_key(info.label)
    card_only, ch_pub, gwt, mt, data = await make_pi(suite_name, info, None)
    if suite_name == "rsa2048":
        view = await dualsig.open_at_gateway(card_only.pi, key, gwt, ch_pub, mt)
        assert view.pan_data == data and view.pin_block is None
    else:  # EC: a PI's ECDH-ES context would hand out k_extra; open_pi_account it is
        with pytest.raises(Forbidden):
            await dualsig.open_at_gateway(card_only.pi, key, gwt, ch_pub, mt)
    opener = HsmAccountOpener(gateway, info.label)  # card-only needs no ZPK
    view = await dualsig.open_at_gateway(card_only.pi, opener, gwt, ch_pub, mt)
    assert view.pan_data == data and view.pin_block is None
    pin_pi, *_ = await make_pi(suite_name, info, PIN)
    with pytest.raises(Forbidden):
        await dualsig.open_at_gateway(pin_pi.pi, key, gwt, ch_pub, mt)
    # nor does the seal itself open with a plain decrypt/derive (it holds the clear block)
    xid = secrets.token_bytes(32)
    seal = await pin.seal_pin(SUITES[suite_name], key.public_key(), gwt, xid, PIN, BANK.number)
    with pytest.raises(Forbidden):
        await pin.open_pin_seal(key, seal, xid)


async def test_bad_pin_block_and_foreign_keys_are_refused(ope):
    gateway, issuer, zpk, keys = ope
    info = keys["rsa2048"]
    parts, ch_pub, gwt, mt, _ = await make_pi("rsa2048", info, PIN, "7654321")
    opener = HsmAccountOpener(gateway, info.label, zpk)
    with pytest.raises(ProtocolError) as exc:
        await dualsig.open_at_gateway(parts.pi, opener, gwt, ch_pub, mt)
    assert exc.value.code is ErrorCode.INVALID_FIELD
    # refused, so not claimed: the register changed nothing (a right block would still open)
    pvk = issuer.label("issuer-pvk")
    with pytest.raises(InvalidPinBlock):
        await issuer.pin_pvv(pvk, zpk, BANK.number, bytes(16))
    assert not await issuer.pin_verify(pvk, zpk, BANK.number, bytes(16), bytes(8))
    with pytest.raises(Forbidden):  # the issuer may not open PIs
        await issuer.open_pi_account(info.label, PIKind.DUAL_SIGNED, b"x", zpk)
    with pytest.raises(Forbidden):  # nor use the gateway's key as a ZPK
        await issuer.pin_pvv(pvk, info.label, BANK.number, bytes(16))
    with pytest.raises(PinKeyMisuse):  # nor a key that is no PVK as one
        await issuer.pin_issue(issuer.label("pan-index"), BANK.number, PIN)
    with pytest.raises(Forbidden):  # the gateway may not compute PVVs
        await gateway.pin_pvv(pvk, zpk, BANK.number, bytes(16))


def test_zone_grants() -> None:
    policy = Policy(identity_prefix="p-", zone_grants={"zone.a": frozenset({"gateway.one"})})
    policy.check_zone_key("p-gateway.one", "p-zone.a/zpk")
    for caller, label in [
        ("p-gateway.two", "p-zone.a/zpk"),  # not granted
        ("p-gateway.one", "p-zone.b/zpk"),  # another zone
        ("p-gateway.one", "p-issuer.one/zpk"),  # not a zone key
    ]:
        with pytest.raises(Forbidden):
            policy.check_zone_key(caller, label)
    seal = OPERATIONS[m.Op.SEAL]  # a zone key serves no operation but as a PIN op's ZPK
    with pytest.raises(PinKeyMisuse):
        policy.authorize("p-gateway.one", seal, m.Seal("p-zone.a/zpk", b"", UNSEALED))
