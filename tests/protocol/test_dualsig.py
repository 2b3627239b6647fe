"""The dual signature: merchant and gateway checks, swaps between purchases, least knowledge."""

from __future__ import annotations

import base64
import functools
import secrets

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol import codec, dualsig, pan, pin, primitives
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import SUITES, PublicKey, Suite
from protocol.messages import CurrAmt, PIHead, PIKind, PinEntry, PurchaseInputs, TransIDs
from tests.softkeys import SoftKey

PAN = "4111111111111111110"  # 19 digits, Luhn-valid: the longest PAN


@functools.cache
def party(suite_name: str, name: str) -> tuple[SoftKey, bytes]:
    key = SoftKey(SUITES[suite_name], label=f"{name}-{suite_name}")
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, primitives.thumbprint(der)


@pytest.fixture(params=["rsa2048", "p256"])
def suite(request: pytest.FixtureRequest) -> Suite:
    return SUITES[request.param]


def pan_data() -> bytes:
    # Shaped like PANData {PAN, expiry, PANSecret, EXNonce}; EXNonce salts each copy.
    return codec.packb([PAN, "203012", secrets.token_bytes(32), secrets.token_bytes(32)])


def order(n: int) -> tuple[bytes, bytes]:
    """(PIHead, OIData) of purchase ``n`` (opaque bytes here; C's records in the product)."""
    xid = secrets.token_bytes(32)
    return codec.packb(["PIHead", xid, 1000 + n]), codec.packb(["OIData", xid, f"order {n}"])


async def purchase(suite: Suite, n: int) -> tuple[dualsig.PurchaseParts, bytes, bytes]:
    ch, cht = party(suite.name, "cardholder")
    gw, gwt = party(suite.name, "gateway")
    _, mt = party(suite.name, "merchant")
    pi_head, oi_data = order(n)
    parts = await dualsig.make_dual_signed(
        ch, cht, suite, gw.public_key(), gwt, mt, pi_head, pan_data(), oi_data
    )
    return parts, pi_head, oi_data


def keys(suite: Suite) -> tuple[PublicKey, SoftKey, bytes, bytes]:
    ch, _ = party(suite.name, "cardholder")
    gw, gwt = party(suite.name, "gateway")
    _, mt = party(suite.name, "merchant")
    return ch.public_key(), gw, gwt, mt


async def test_merchant_and_gateway_verify_the_same_purchase(suite: Suite) -> None:
    parts, pi_head, oi_data = await purchase(suite, 1)
    ch_pub, gw, gwt, mt = keys(suite)
    seen = dualsig.verify_at_merchant(parts.pi, parts.oi, ch_pub, mt, gwt)
    assert seen.oi_data == oi_data
    assert seen.signer == party(suite.name, "cardholder")[1]
    opened = await dualsig.open_at_gateway(
        parts.pi, gw, gwt, ch_pub, mt, dualsig.oi_digest(seen.oi_data)
    )
    assert opened.pi_head == pi_head
    assert codec.unpackb(opened.pan_data)[0] == PAN
    assert opened.pin_block is None
    assert opened.oi_digest == dualsig.oi_digest(oi_data)
    # OIDualSigned carried as two message fields verifies the same way
    assert parts.oi_data == oi_data
    split = dualsig.verify_oi_at_merchant(parts.pi, oi_data, parts.pi_digest, ch_pub, mt, gwt)
    assert split == seen


BANK = pan.Account(pan.AccountKind.BANK, "1234567", bank_code="0001", branch="123")


def bank_pan_data() -> bytes:
    return codec.encode(pan.make_pan_data(BANK, "3012", secrets.token_bytes(32)))


def real_head(xid: bytes, kind: pan.AccountKind = pan.AccountKind.BANK) -> bytes:
    """A PIHead record (the keystore reads the XID a PIN seal is bound to from it)."""
    trans = TransIDs(b"lid-c", None, xid, 1_700_000_000_000, None, "en")
    head = PIHead(
        trans, PurchaseInputs(bytes(32), CurrAmt("JPY", 1_000)), "M-1", bytes(32), bytes(32),
        None, bytes(32), "test", None, kind, PinEntry.PIN_ANY,
    )  # fmt: skip
    return codec.encode(head)


async def pin_purchase(
    suite: Suite, pin_code: str, number: str, seal_xid: bytes | None = None
) -> tuple[dualsig.PurchaseParts, bytes, bytes, bytes]:
    """A PIN-bearing purchase: (parts, PIHead, OIData, seal). ``seal_xid``: seal for another."""
    ch, cht = party(suite.name, "cardholder")
    _, gw, gwt, mt = keys(suite)
    xid = secrets.token_bytes(32)
    pi_head, oi_data = real_head(xid), codec.packb(["OIData", xid])
    seal = await pin.seal_pin(suite, gw.public_key(), gwt, seal_xid or xid, pin_code, number)
    parts = await dualsig.make_dual_signed(
        ch, cht, suite, gw.public_key(), gwt, mt, pi_head, bank_pan_data(), oi_data, seal
    )
    return parts, pi_head, oi_data, seal


def zpk_opener(gw: SoftKey, zpk: bytes) -> dualsig.KeyAccountOpener:
    return dualsig.KeyAccountOpener(gw, Cipher(algorithms.AES(zpk), modes.ECB()).encryptor().update)


async def test_ope_pin_block_reaches_the_gateway_only_under_the_zpk(suite: Suite) -> None:
    """The thin client's seal rides beside the PI; the opener (the keystore's construction)
    answers with format 4 under the ZPK; the clear block is nowhere in the PI, the OI or
    what the gateway gets; a plain key refuses the PIN-bearing PI."""
    ch_pub, gw, gwt, mt = keys(suite)
    parts, pi_head, oi_data, seal = await pin_purchase(suite, "1234", BANK.pin_binding_number)
    block0 = pin.encode_format0("1234", BANK.pin_binding_number)
    for data in (parts.pi, parts.oi, seal):
        assert block0 not in data and b"1234" not in data
    assert codec.decode(dualsig.PIDualSigned, parts.pi).pin_seal == seal
    with pytest.raises(ProtocolError) as exc:
        await dualsig.open_at_gateway(parts.pi, gw, gwt, ch_pub, mt)
    assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM
    zpk = secrets.token_bytes(32)
    opener = zpk_opener(gw, zpk)
    pid = codec.decode(dualsig.PIDualSigned, parts.pi)
    opened = await opener.open_pi_account(PIKind.DUAL_SIGNED, pid.envelope, pid.pin_seal)
    assert block0 not in codec.encode(opened)
    view = await dualsig.open_at_gateway(
        parts.pi, opener, gwt, ch_pub, mt, dualsig.oi_digest(oi_data)
    )
    assert view.pi_head == pi_head and view.pin_block is not None and len(view.pin_block) == 16
    assert block0 not in view.pin_block
    assert pin.decipher_format4(zpk, view.pin_block, BANK.pin_binding_number) == "1234"
    # the merchant still verifies the same signature with H(PIData) alone
    dualsig.verify_at_merchant(parts.pi, parts.oi, ch_pub, mt, gwt)


async def test_pin_seal_is_bound_to_the_purchase(suite: Suite) -> None:
    """A seal made for another XID does not decrypt; a stripped, swapped or added seal
    breaks the dual signature (PIData holds H(seal)) or the keystore's shape check."""
    ch_pub, gw, gwt, mt = keys(suite)
    opener = zpk_opener(gw, secrets.token_bytes(32))
    moved, _, _, _ = await pin_purchase(suite, "1234", BANK.number, secrets.token_bytes(32))
    with pytest.raises(ProtocolError) as exc:
        await dualsig.open_at_gateway(moved.pi, opener, gwt, ch_pub, mt)
    assert exc.value.code is ErrorCode.DECRYPTION_FAILURE
    one, _, _, seal_one = await pin_purchase(suite, "1234", BANK.number)
    _, _, _, seal_two = await pin_purchase(suite, "1234", BANK.number)
    pid = codec.decode(dualsig.PIDualSigned, one.pi)
    swapped = codec.encode(dualsig.PIDualSigned(pid.signature, pid.envelope, seal_two))
    stripped = codec.encode(dualsig.PIDualSigned(pid.signature, pid.envelope, None))
    for pi, code in ((swapped, ErrorCode.DECRYPTION_FAILURE), (stripped, ErrorCode.INVALID_FIELD)):
        with pytest.raises(ProtocolError) as exc:
            await dualsig.open_at_gateway(pi, opener, gwt, ch_pub, mt)
        assert exc.value.code is code
    plain, _, _ = await purchase(suite, 4)
    pid = codec.decode(dualsig.PIDualSigned, plain.pi)
    added = codec.encode(dualsig.PIDualSigned(pid.signature, pid.envelope, seal_one))
    with pytest.raises(ProtocolError) as exc:
        await dualsig.open_at_gateway(added, opener, gwt, ch_pub, mt)
    assert exc.value.code is ErrorCode.INVALID_FIELD


async def test_pin_block_bound_to_another_account_is_refused(suite: Suite) -> None:
    _, gw, _, _ = keys(suite)
    parts, _, _, _ = await pin_purchase(suite, "1234", "7654321")  # another account's binding
    pid = codec.decode(dualsig.PIDualSigned, parts.pi)
    with pytest.raises(ProtocolError) as exc:
        await zpk_opener(gw, secrets.token_bytes(32)).open_pi_account(
            PIKind.DUAL_SIGNED, pid.envelope, pid.pin_seal
        )
    assert exc.value.code is ErrorCode.INVALID_FIELD


async def test_only_pin_seals_to_this_gateway_travel_in_a_pi(suite: Suite) -> None:
    ch, cht = party(suite.name, "cardholder")
    _, gw, gwt, mt = keys(suite)
    other = await pin.seal_pin(suite, gw.public_key(), bytes(32), b"x" * 32, "1234", "1234567")
    for bad in (bytes(16), other):
        with pytest.raises(ProtocolError) as exc:
            await dualsig.make_dual_signed(
                ch, cht, suite, gw.public_key(), gwt, mt, b"h", bank_pan_data(), b"o", bad
            )
        assert exc.value.code in (ErrorCode.INVALID_FIELD, ErrorCode.DECODING_FAILURE)


async def test_swapped_halves_fail_at_the_merchant(suite: Suite) -> None:
    one, _, _ = await purchase(suite, 1)
    two, _, _ = await purchase(suite, 2)
    ch_pub, _, gwt, mt = keys(suite)
    for pi, oi in [(one.pi, two.oi), (two.pi, one.oi)]:
        with pytest.raises(ProtocolError) as exc:
            dualsig.verify_at_merchant(pi, oi, ch_pub, mt, gwt)
        assert exc.value.code is ErrorCode.SIGNATURE_FAILURE


async def test_swapped_halves_fail_at_the_gateway(suite: Suite) -> None:
    """The gateway compares H(OIData) in the PI's linkage with the HOIData of the AuthReq."""
    one, _, oi1 = await purchase(suite, 1)
    two, _, oi2 = await purchase(suite, 2)
    ch_pub, gw, gwt, mt = keys(suite)
    for pi, oi_data in [(one.pi, oi2), (two.pi, oi1)]:
        with pytest.raises(ProtocolError) as exc:
            await dualsig.open_at_gateway(pi, gw, gwt, ch_pub, mt, dualsig.oi_digest(oi_data))
        assert exc.value.code is ErrorCode.LINKAGE_FAILURE


async def test_pi_bound_to_merchant_and_gateway(suite: Suite) -> None:
    parts, _, _ = await purchase(suite, 3)
    ch_pub, gw, gwt, mt = keys(suite)
    _, other_t = party(suite.name, "other merchant")
    with pytest.raises(ProtocolError) as exc:
        dualsig.verify_at_merchant(parts.pi, parts.oi, ch_pub, other_t, gwt)
    assert exc.value.code is ErrorCode.SIGNATURE_FAILURE
    with pytest.raises(ProtocolError) as exc:  # another merchant forwards the PI
        await dualsig.open_at_gateway(parts.pi, gw, gwt, ch_pub, other_t)
    assert exc.value.code is ErrorCode.SIGNATURE_FAILURE
    with pytest.raises(ProtocolError) as exc:  # merchant expects another gateway key
        dualsig.verify_at_merchant(parts.pi, parts.oi, ch_pub, mt, other_t)
    assert exc.value.code is ErrorCode.THUMBS_MISMATCH


async def test_wrong_keys_fail(suite: Suite) -> None:
    parts, _, _ = await purchase(suite, 4)
    ch_pub, gw, gwt, mt = keys(suite)
    other, _ = party(suite.name, "other gateway")
    with pytest.raises(ProtocolError) as exc:
        await dualsig.open_at_gateway(parts.pi, other, gwt, ch_pub, mt)
    assert exc.value.code is ErrorCode.DECRYPTION_FAILURE
    impostor, _ = party(suite.name, "impostor cardholder")
    with pytest.raises(ProtocolError) as exc:
        dualsig.verify_at_merchant(parts.pi, parts.oi, impostor.public_key(), mt, gwt)
    assert exc.value.code is ErrorCode.SIGNATURE_FAILURE
    with pytest.raises(ProtocolError) as exc:
        await dualsig.open_at_gateway(parts.pi, gw, gwt, impostor.public_key(), mt)
    assert exc.value.code is ErrorCode.SIGNATURE_FAILURE


async def test_merchant_cannot_read_pan_data(suite: Suite) -> None:
    """Nothing the merchant receives shows the PAN, and its own key does not open the PI."""
    parts, _, _ = await purchase(suite, 5)
    ch_pub, _, gwt, mt = keys(suite)
    merchant_key, _ = party(suite.name, "merchant")
    for blob in (parts.pi, parts.oi):
        for form in (PAN.encode(), PAN.encode().hex().encode(), base64.b64encode(PAN.encode())):
            assert form not in blob
    seen = dualsig.verify_at_merchant(parts.pi, parts.oi, ch_pub, mt, gwt)
    assert PAN.encode() not in seen.oi_data
    with pytest.raises(ProtocolError) as exc:
        await dualsig.open_at_gateway(parts.pi, merchant_key, gwt, ch_pub, mt)
    assert exc.value.code is ErrorCode.DECRYPTION_FAILURE


async def test_unsigned_purchase(suite: Suite) -> None:
    _, gw, gwt, _ = keys(suite)
    pi_head, oi_data = order(6)
    token = codec.packb([PAN, "203012", secrets.token_bytes(32)])
    parts = await dualsig.make_unsigned(suite, gw.public_key(), gwt, pi_head, token, oi_data)
    assert PAN.encode() not in parts.pi and PAN.encode() not in parts.oi
    seen = dualsig.read_unsigned_oi(parts.oi)
    assert seen.oi_data == oi_data and seen.signer is None
    opened = await dualsig.open_unsigned_at_gateway(
        parts.pi, gw, gwt, dualsig.oi_digest(seen.oi_data)
    )
    assert (opened.pi_head, opened.pan_data, opened.pin_block) == (pi_head, token, None)
    _, other_oi = order(7)
    with pytest.raises(ProtocolError) as exc:
        await dualsig.open_unsigned_at_gateway(parts.pi, gw, gwt, dualsig.oi_digest(other_oi))
    assert exc.value.code is ErrorCode.LINKAGE_FAILURE


async def test_dual_signed_pi_is_not_an_unsigned_pi(suite: Suite) -> None:
    parts, _, _ = await purchase(suite, 8)
    _, gw, gwt, _ = keys(suite)
    with pytest.raises(ProtocolError) as exc:
        await dualsig.open_unsigned_at_gateway(parts.pi, gw, gwt)
    assert exc.value.code is ErrorCode.DECODING_FAILURE


async def test_oversize_account_part_is_refused(suite: Suite) -> None:
    ch, cht = party(suite.name, "cardholder")
    _, gw, gwt, mt = keys(suite)
    with pytest.raises(ProtocolError) as exc:
        await dualsig.make_dual_signed(
            ch, cht, suite, gw.public_key(), gwt, mt, b"h", bytes(200), b"o"
        )
    assert exc.value.code is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize("suite_name", ["rsa2048", "rsa2048-oaep256", "p256"])
async def test_real_pan_data_and_pin_seal_fit(suite_name: str) -> None:
    """PANData of the longest PAN and of the largest OPE bank account, PIN-sealed, fit every
    suite (RSA-2048 OAEP-SHA-256 included: the seal rides beside the wrap, not in it)."""
    suite = SUITES[suite_name]
    ch, cht = party(suite_name, "cardholder")
    gw, gwt = party(suite_name, "gateway")
    _, mt = party(suite_name, "merchant")
    card = pan.Account(pan.AccountKind.CARD, PAN)
    # a PIN block binds at most 19 account digits (ISO 9564), so that is the longest here
    bank = pan.Account(pan.AccountKind.BANK, "9" * 19, bank_code="9" * 11, branch="9" * 8)
    for account in (card, bank):
        data = codec.encode(pan.make_pan_data(account, "3012", secrets.token_bytes(32)))
        xid = secrets.token_bytes(32)
        pi_head, oi_data = real_head(xid, account.kind), b"oi"
        seal = await pin.seal_pin(suite, gw.public_key(), gwt, xid, "123456789012", account.number)
        parts = await dualsig.make_dual_signed(
            ch, cht, suite, gw.public_key(), gwt, mt, pi_head, data, oi_data, seal
        )
        # the wrap opens (a plain key then refuses the PIN-bearing account part)
        with pytest.raises(ProtocolError) as exc:
            await dualsig.open_at_gateway(parts.pi, gw, gwt, ch.public_key(), mt)
        assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM
        view = await dualsig.open_at_gateway(
            parts.pi, zpk_opener(gw, bytes(32)), gwt, ch.public_key(), mt
        )
        assert pin.decipher_format4(bytes(32), view.pin_block or b"", account.number) == (
            "123456789012"
        )
