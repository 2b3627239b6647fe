"""Account data: Luhn, account kinds, PANData/PANToken/PANOnly records, SET secrets."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec, pan
from protocol.errors import ErrorCode, ProtocolError

CARD = pan.Account(pan.AccountKind.CARD, "4111111111111111")
BANK = pan.Account(pan.AccountKind.BANK, "1234567", bank_code="0005", branch="123")


@pytest.mark.parametrize(
    ("partial", "digit"),
    [("7992739871", "3"), ("411111111111111", "1"), ("401288888888188", "1"), ("0", "0")],
)
def test_luhn_check_digit_known_values(partial: str, digit: str) -> None:
    assert pan.luhn_check_digit(partial) == digit
    assert pan.luhn_valid(partial + digit)


@given(st.text(alphabet="0123456789", min_size=1, max_size=18))
def test_luhn_detects_every_single_digit_error(partial: str) -> None:
    number = partial + pan.luhn_check_digit(partial)
    assert pan.luhn_valid(number)
    for i in range(len(number)):
        for d in "0123456789":
            if d != number[i]:
                assert not pan.luhn_valid(number[:i] + d + number[i + 1 :])


@pytest.mark.parametrize(
    "bad", ["4111111111111112", "41111111111", "41111111111111111111", "4111 1111 1111 1111", ""]
)
def test_invalid_pans_are_refused_without_echoing_them(bad: str) -> None:
    with pytest.raises(ProtocolError) as err:
        pan.validate_pan(bad)
    assert err.value.code is ErrorCode.INVALID_FIELD
    assert bad not in str(err.value) or bad == ""


def test_account_kinds_validate_their_shape() -> None:
    CARD.validate()
    BANK.validate()
    bad = [
        pan.Account(pan.AccountKind.CARD, "4111111111111111", bank_code="0005"),
        pan.Account(pan.AccountKind.BANK, "1234567"),  # no bank code
        pan.Account(pan.AccountKind.BANK, "12a4567", bank_code="0005"),
        pan.Account(pan.AccountKind.BANK, "123", bank_code="0005"),
        pan.Account(pan.AccountKind.BANK, "1234567", bank_code="0005", branch="12x"),
    ]
    for account in bad:
        with pytest.raises(ProtocolError) as err:
            account.validate()
        assert err.value.code is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize("account", [CARD, BANK])
def test_records_round_trip_through_the_codec(account: pan.Account) -> None:
    secret = pan.new_secret()
    data = pan.make_pan_data(account, "2812", secret)
    assert pan.decode_pan_data(codec.encode(data)) == data
    token = pan.make_pan_token(account, "2812")
    assert pan.decode_pan_token(codec.encode(token)) == token
    only = pan.make_pan_only(account)
    assert pan.decode_pan_only(codec.encode(only)) == only
    # Each copy is salted with a fresh EXNonce.
    assert pan.make_pan_data(account, "2812", secret).ex_nonce != data.ex_nonce


def test_reprs_never_show_account_numbers_or_secrets() -> None:
    secret = bytes(range(32))
    data = pan.make_pan_data(CARD, "2812", secret)
    for record in (data, pan.make_pan_token(BANK, "2812"), pan.make_pan_only(CARD), CARD, BANK):
        text = repr(record)
        for needle in ("4111111111111111", "1234567", "2812", repr(secret), secret.hex()):
            assert needle not in text, type(record).__name__
        if hasattr(record, "ex_nonce"):
            assert repr(record.ex_nonce) not in text


def test_decoding_refuses_invalid_content() -> None:
    good = pan.make_pan_data(CARD, "2812", pan.new_secret())
    wire = codec.to_wire(good)
    bad_pan = [[1, "4111111111111112", "", ""], *wire[1:]]
    bad_expiry = [wire[0], "2813", *wire[2:]]
    short_secret = [wire[0], wire[1], b"\0" * 31, wire[3]]
    unknown_kind = [[9, "4111111111111111", "", ""], *wire[1:]]
    for value, code in (
        (bad_pan, ErrorCode.INVALID_FIELD),
        (bad_expiry, ErrorCode.INVALID_FIELD),
        (short_secret, ErrorCode.DECODING_FAILURE),
        (unknown_kind, ErrorCode.DECODING_FAILURE),
    ):
        with pytest.raises(ProtocolError) as err:
            pan.decode_pan_data(codec.packb(value))
        assert err.value.code is code


def test_pan_secret_is_card_secret_xor_nonce_cca() -> None:
    card_secret, nonce_cca = pan.new_secret(), pan.new_secret()
    secret = pan.pan_secret(card_secret, nonce_cca)
    assert bytes(a ^ b for a, b in zip(secret, nonce_cca, strict=True)) == card_secret
    assert secret not in (card_secret, nonce_cca)
    with pytest.raises(ProtocolError):
        pan.pan_secret(card_secret[:20], nonce_cca)


def test_trans_stain_is_keyed_per_transaction() -> None:
    card_secret = pan.new_secret()
    xid1, xid2 = pan.new_secret(), pan.new_secret()
    stain = pan.trans_stain(card_secret, xid1)
    expected = hmac.new(card_secret, b"setpay/v1/TransStain\0" + xid1, hashlib.sha256).digest()
    assert stain == expected
    assert pan.trans_stain(card_secret, xid2) != stain
    assert pan.trans_stain(pan.new_secret(), xid1) != stain


def test_account_hash_covers_account_and_expiry() -> None:
    secret = pan.new_secret()
    h = pan.account_hash(secret, CARD, "2812")
    canonical = codec.packb([1, "4111111111111111", "", "", "2812"])
    assert h == hmac.new(secret, b"setpay/v1/AccountHash\0" + canonical, hashlib.sha256).digest()
    assert pan.account_hash(secret, CARD, "2901") != h
    assert pan.account_hash(secret, BANK, "2812") != h


def test_the_merchant_learns_the_institution_never_a_bank_account_digit() -> None:
    from protocol.pan import Account, AccountKind, merchant_bin

    card = Account(AccountKind.CARD, "4111111111111111")
    assert merchant_bin(card) == "411111"
    bank = Account(AccountKind.BANK, "1234567", bank_code="0001", branch="123")
    assert merchant_bin(bank) == "0001123"
    assert not set(merchant_bin(bank)) & set("4567")  # no account digit beyond the branch's
    assert merchant_bin(Account(AccountKind.BANK, "7654000", bank_code="DEUTDEFF")) == "000000"
    assert merchant_bin(Account(AccountKind.BANK, "99", bank_code="12345678", branch="9876")) == (
        "12345678987")  # at most eleven digits
