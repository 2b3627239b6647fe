"""The dialect, response codes and masking, without a host: what both ends rely on."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from actors.iso8583 import codes, spec
from actors.iso8583.codes import ResponseCode
from actors.iso8583.errors import Iso8583Error, MessageError
from actors.iso8583.security import mask_account

PAN = "4111111111111111"
BLOCK = bytes(range(16))


def auth(**extra: str) -> spec.Message:
    message: spec.Message = {
        "t": spec.AUTH_REQUEST,
        "2": PAN,
        "3": spec.CARD_PROCESSING,
        "4": "000000012345",
        "7": "1124120000",
        "11": "000042",
        "32": "4321",
        "37": "GW0000000042",
        "41": "SETPAYGW",
        "49": "392",
    }
    message.update(extra)
    return message


def test_pack_unpack_round_trip_with_a_binary_pin_block() -> None:
    message = auth(**{"52": spec.pin_block_field(BLOCK), "102": "0001-123-1234567"})
    raw = spec.pack(message)
    assert raw[:4] == b"0100"
    back = spec.unpack(raw)
    assert back == message  # bitmaps are dropped, every field comes back as sent
    assert spec.pin_block_of(back) == BLOCK
    assert BLOCK in raw  # field 52 travels as 16 binary bytes, not as hex text


def test_unpack_errors_never_quote_field_contents() -> None:
    raw = spec.pack(auth())
    cut = raw[: raw.index(PAN.encode()) + 6]  # ends inside field 2
    with pytest.raises(MessageError) as caught:
        spec.unpack(cut)
    assert "field 2" in str(caught.value)
    assert PAN[:6] not in str(caught.value)
    assert isinstance(caught.value, Iso8583Error)


def test_pack_refuses_a_field_over_its_length() -> None:
    with pytest.raises(MessageError):
        spec.pack(auth(**{"2": "4" * 20}))  # a PAN is at most 19 digits
    with pytest.raises(MessageError):
        spec.pin_block_field(BLOCK[:8])


def test_require_names_the_missing_field() -> None:
    spec.require(auth(), "2", "4", "11")
    with pytest.raises(MessageError, match="field 90 is required for MTI 0100"):
        spec.require(auth(), "11", "90")


def test_original_data_round_trip() -> None:
    f7 = spec.transmission_time(datetime(2026, 11, 24, 12, 0, 5, tzinfo=UTC))
    assert f7 == "1124120005"
    f90 = spec.original_data(spec.FINANCIAL_REQUEST, "000042", f7, "4321")
    assert len(f90) == 42
    assert spec.parse_original_data(f90) == (spec.FINANCIAL_REQUEST, "000042", f7, "4321")
    with pytest.raises(MessageError):
        spec.parse_original_data(f90[:-1])


def test_every_request_has_its_response_mti() -> None:
    assert spec.RESPONSE_TO[spec.REVERSAL_ADVICE_REPEAT] == spec.REVERSAL_ADVICE_RESPONSE
    assert spec.REVERSALS <= set(spec.RESPONSE_TO)


def test_safe_view_keeps_no_account_or_pin_block() -> None:
    message = auth(**{"14": "2912", "52": spec.pin_block_field(BLOCK), "102": "0001-1-99"})
    view = spec.safe_view(message)
    text = repr(view)
    for secret in (PAN, "2912", BLOCK.hex().upper(), "0001-1-99"):
        assert secret not in text
    assert view["2"] == "<16 chars>"
    assert view["4"] == "000000012345"


def test_unknown_response_code_is_a_retryable_malfunction() -> None:
    assert codes.parse("00") is ResponseCode.APPROVED
    assert codes.parse("55") is ResponseCode.WRONG_PIN
    unknown = codes.parse("Z9")
    assert unknown is ResponseCode.SYSTEM_MALFUNCTION
    assert unknown.retryable and not unknown.approved
    assert not ResponseCode.INSUFFICIENT_FUNDS.retryable


def test_mask_account_shows_the_last_four_digits_only() -> None:
    assert mask_account(PAN) == "…1111"
    assert mask_account("0001-123-1234567") == "…4567"
    assert mask_account("12") == "…"
