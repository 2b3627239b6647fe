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
from protocol.messages import PIKind
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


async def purchase(
    suite: Suite, n: int, pin_block: bytes | None = None
) -> tuple[dualsig.PurchaseParts, bytes, bytes]:
    ch, cht = party(suite.name, "cardholder")
    gw, gwt = party(suite.name, "gateway")
    _, mt = party(suite.name, "merchant")
    pi_head, oi_data = order(n)
    parts = await dualsig.make_dual_signed(
        ch, cht, suite, gw.public_key(), gwt, mt, pi_head, pan_data(), oi_data, pin_block
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


async def test_ope_pin_block_reaches_the_gateway_only_under_the_zpk(suite: Suite) -> None:
    """The PI carries a format 0 block; the opener (the keystore's construction) answers
    with format 4 under the ZPK; the cardholder's block is nowhere in what the gateway gets;
    a plain key refuses the PIN-bearing PI."""
    ch, cht = party(suite.name, "cardholder")
    ch_pub, gw, gwt, mt = keys(suite)
    block0 = pin.encode_format0("1234", BANK.pin_binding_number)
    pi_head, oi_data = order(2)
    parts = await dualsig.make_dual_signed(
        ch, cht, suite, gw.public_key(), gwt, mt, pi_head, bank_pan_data(), oi_data, block0
    )
    assert block0 not in parts.pi and block0 not in parts.oi
    with pytest.raises(ProtocolError) as exc:
        await dualsig.open_at_gateway(parts.pi, gw, gwt, ch_pub, mt)
    assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM
    zpk = secrets.token_bytes(32)
    cipher = Cipher(algorithms.AES(zpk), modes.ECB()).encryptor()
    opener = dualsig.KeyAccountOpener(gw, cipher.update)
    opened = await opener.open_pi_account(
        PIKind.DUAL_SIGNED, codec.decode(dualsig.PIDualSigned, parts.pi).envelope
    )
    assert block0 not in codec.encode(opened)
    view = await dualsig.open_at_gateway(
        parts.pi, opener, gwt, ch_pub, mt, dualsig.oi_digest(oi_data)
    )
    assert view.pi_head == pi_head and view.pin_block is not None and len(view.pin_block) == 16
    assert block0 not in view.pin_block
    assert pin.decipher_format4(zpk, view.pin_block, BANK.pin_binding_number) == "1234"
    # the merchant still verifies the same signature with H(PIData) alone
    dualsig.verify_at_merchant(parts.pi, parts.oi, ch_pub, mt, gwt)


async def test_pin_block_bound_to_another_account_is_refused(suite: Suite) -> None:
    ch, cht = party(suite.name, "cardholder")
    _, gw, gwt, mt = keys(suite)
    block0 = pin.encode_format0("1234", "7654321")  # another account's binding
    pi_head, oi_data = order(3)
    parts = await dualsig.make_dual_signed(
        ch, cht, suite, gw.public_key(), gwt, mt, pi_head, bank_pan_data(), oi_data, block0
    )
    opener = dualsig.KeyAccountOpener(gw, lambda b: b)
    env = codec.decode(dualsig.PIDualSigned, parts.pi).envelope
    with pytest.raises(ProtocolError) as exc:
        await opener.open_pi_account(PIKind.DUAL_SIGNED, env)
    assert exc.value.code is ErrorCode.INVALID_FIELD


async def test_only_format0_blocks_travel_in_a_pi(suite: Suite) -> None:
    ch, cht = party(suite.name, "cardholder")
    _, gw, gwt, mt = keys(suite)
    with pytest.raises(ProtocolError) as exc:
        await dualsig.make_dual_signed(
            ch, cht, suite, gw.public_key(), gwt, mt, b"h", bank_pan_data(), b"o", bytes(16)
        )
    assert exc.value.code is ErrorCode.INVALID_FIELD


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
async def test_real_pan_data_and_pin_block_fit(suite_name: str) -> None:
    """PANData of the longest PAN and of the largest OPE bank account, with a format 0 PIN
    block, fit every suite (RSA-2048 OAEP-SHA-256 included: 184 of 190 bytes)."""
    suite = SUITES[suite_name]
    ch, cht = party(suite_name, "cardholder")
    gw, gwt = party(suite_name, "gateway")
    _, mt = party(suite_name, "merchant")
    card = pan.Account(pan.AccountKind.CARD, PAN)
    bank = pan.Account(pan.AccountKind.BANK, "9" * 34, bank_code="9" * 11, branch="9" * 8)
    for account in (card, bank):
        data = codec.encode(pan.make_pan_data(account, "3012", secrets.token_bytes(32)))
        pi_head, oi_data = order(9)
        parts = await dualsig.make_dual_signed(
            ch, cht, suite, gw.public_key(), gwt, mt, pi_head, data, oi_data, bytes(8)
        )
        # the wrap opens (a plain key then refuses the PIN-bearing account part)
        with pytest.raises(ProtocolError) as exc:
            await dualsig.open_at_gateway(parts.pi, gw, gwt, ch.public_key(), mt)
        assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM
