"""PINs and ISO 9564 PIN blocks (format 0 and format 4) against published vectors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec, pin
from protocol.errors import ErrorCode, ProtocolError

PIN_KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF")


@pytest.mark.parametrize("good", ["1234", "0000", "123456789012"])
def test_valid_pins(good: str) -> None:
    pin.validate_pin(good)


@pytest.mark.parametrize(
    "bad", ["123", "1234567890123", "12a4", " 1234", "", "\uff11\uff12\uff13\uff14"]
)
def test_invalid_pins_are_refused(bad: str) -> None:
    with pytest.raises(ProtocolError) as err:
        pin.validate_pin(bad)
    assert err.value.code is ErrorCode.INVALID_FIELD
    assert bad not in err.value.detail or bad == ""


def test_format0_published_vector() -> None:
    # ISO 9564-1 format 0 worked example (PIN 1234, PAN 43219876543210987).
    block = pin.encode_format0("1234", "43219876543210987")
    assert block.hex().upper() == "0412AC89ABCDEF67"
    assert pin.decode_format0(block, "43219876543210987") == "1234"


def test_format4_published_vector() -> None:
    # ISO 9564-1:2017 format 4 with a fixed random fill (vector published with the psec and
    # paysec PIN-block libraries): PIN 1234, PAN 1234567890123456789, fill FF*8.
    block = pin.encipher_format4(PIN_KEY, "1234", "1234567890123456789", b"\xff" * 8)
    assert block.hex().upper() == "28B41FDDD29B743E93124BD8E32D921E"
    assert pin.decipher_format4(PIN_KEY, block, "1234567890123456789") == "1234"


def test_format4_fields_have_the_iso_layout() -> None:
    field = pin.format4_pin_field("12345", b"\x11" * 8)
    assert field.hex().upper() == "45" + "12345" + "A" * 9 + "11" * 8
    assert pin.format4_pan_field("4111111111111111").hex() == "44111111111111111" + "0" * 15
    assert pin.format4_pan_field("123").hex() == "0000000000123" + "0" * 19


def test_format4_is_randomised() -> None:
    a = pin.encipher_format4(PIN_KEY, "1234", "4111111111111111")
    b = pin.encipher_format4(PIN_KEY, "1234", "4111111111111111")
    assert a != b
    assert pin.decipher_format4(PIN_KEY, a, "4111111111111111") == "1234"


@given(
    st.text(alphabet="0123456789", min_size=4, max_size=12),
    st.text(alphabet="0123456789", min_size=12, max_size=19),
    st.sampled_from([16, 24, 32]),
)
def test_blocks_round_trip(p: str, number: str, key_len: int) -> None:
    key = bytes(range(key_len))
    assert pin.decode_format0(pin.encode_format0(p, number), number) == p
    assert pin.decipher_format4(key, pin.encipher_format4(key, p, number), number) == p


def test_blocks_are_bound_to_the_account_and_key() -> None:
    number, other = "4111111111111111", "4012888888881881"
    block0 = pin.encode_format0("1234", number)
    with pytest.raises(ProtocolError) as err:
        pin.decode_format0(block0, other)
    assert err.value.code is ErrorCode.INVALID_FIELD
    block4 = pin.encipher_format4(PIN_KEY, "1234", number)
    for key, acct in ((PIN_KEY, other), (bytes(16), number)):
        with pytest.raises(ProtocolError) as err:
            pin.decipher_format4(key, block4, acct)
        assert err.value.code is ErrorCode.INVALID_FIELD


def test_malformed_blocks_and_keys_are_refused() -> None:
    cases = [
        lambda: pin.decode_format0(b"\0" * 7, "4111111111111111"),
        lambda: pin.decode_format0(bytes.fromhex("1412ac89abcdef67"), "43219876543210987"),
        lambda: pin.decipher_format4(PIN_KEY, b"\0" * 15, "4111111111111111"),
        lambda: pin.encipher_format4(b"short", "1234", "4111111111111111"),
        lambda: pin.encipher_format4(PIN_KEY, "1234", "41111111111111111111"),
        lambda: pin.encode_format0("1234", "4111x11111111111"),
    ]
    for case in cases:
        with pytest.raises(ProtocolError) as err:
            case()
        assert err.value.code is ErrorCode.INVALID_FIELD


def test_pin_block_record_round_trips_and_hides_the_block() -> None:
    for fmt, key in ((pin.PinBlockFormat.ISO0, None), (pin.PinBlockFormat.ISO4, PIN_KEY)):
        record = pin.make_pin_block(fmt, "9876", "4111111111111111", key)
        decoded = codec.decode(pin.PinBlock, codec.encode(record))
        assert decoded == record
        assert pin.read_pin_block(decoded, "4111111111111111", key) == "9876"
        assert record.block.hex() not in repr(record) and "9876" not in repr(record)
    with pytest.raises(ProtocolError):
        pin.make_pin_block(pin.PinBlockFormat.ISO4, "9876", "4111111111111111")


def test_translation_from_a_pi_block_to_format4_under_a_block_cipher() -> None:
    """The keystore's translation: a format 0 block becomes format 4 under the ZPK, given
    only as an AES block function (the key may stay in a token)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    number = "1234567"
    encrypt = Cipher(algorithms.AES(PIN_KEY), modes.ECB()).encryptor().update
    decrypt = Cipher(algorithms.AES(PIN_KEY), modes.ECB()).decryptor().update
    block0 = pin.encode_format0("24680", number)
    block4 = pin.translate_to_format4(block0, number, encrypt)
    assert len(block4) == 16 and block0 not in block4
    assert pin.decipher_format4(PIN_KEY, block4, number) == "24680"
    assert pin.decipher_format4_with(decrypt, block4, number) == "24680"
    fill = bytes(range(8))
    assert pin.encipher_format4_with(encrypt, "1234", number, fill) == pin.encipher_format4(
        PIN_KEY, "1234", number, fill
    )
    for bad in (block4, pin.encode_format0("24680", "7654321")):
        with pytest.raises(ProtocolError) as err:  # format 4 in a PI; another account
            pin.translate_to_format4(bad, number, encrypt)
        assert err.value.code is ErrorCode.INVALID_FIELD
