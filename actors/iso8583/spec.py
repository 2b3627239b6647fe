"""The host's ISO 8583 dialect (pyiso8583 spec) and typed helpers around pack/unpack.

Rule 1: MTIs in use: 0100/0110 authorization, 0200/0210 financial (sale, PIN debit),
0220/0230 financial advice (0221 repeat: the completion of an authorization's hold, or a
refund with processing code 20xxxx; field 90 names the original, field 48 the batch),
0400/0410 reversal (field 95: the replacement amount of a partial reversal), 0420/0430
reversal advice (0401/0421 repeats), 0500/0510 reconciliation of a closed batch (field 48
the batch, 74/76 credit/debit counts, 86/88 credit/debit amounts), 0800/0810 echo. An 0100
with processing code 33xxxx and amount zero is an account verification (the CA's check of a
card or bank account before it certifies it): it holds and posts nothing.
Rule 2: ASCII fields, binary 64-bit bitmaps, no header; field 52 is a 16-byte ISO 9564
format-4 PIN block (binary); field 102 carries an OPE bank account as ``bank-branch-number``.
Rule 3: ``unpack`` turns every decoder failure into ``MessageError`` whose text never quotes
field contents (they may hold a PAN).
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any, Final

import iso8583
import iso8583.specs
from iso8583.decoder import DecodeError
from iso8583.encoder import EncodeError

from actors.iso8583.errors import MessageError

Message = dict[str, Any]

AUTH_REQUEST: Final = "0100"
AUTH_RESPONSE: Final = "0110"
FINANCIAL_REQUEST: Final = "0200"
FINANCIAL_RESPONSE: Final = "0210"
REVERSAL_REQUEST: Final = "0400"
REVERSAL_REPEAT: Final = "0401"
REVERSAL_RESPONSE: Final = "0410"
REVERSAL_ADVICE: Final = "0420"
REVERSAL_ADVICE_REPEAT: Final = "0421"
REVERSAL_ADVICE_RESPONSE: Final = "0430"
ADVICE: Final = "0220"
ADVICE_REPEAT: Final = "0221"
ADVICE_RESPONSE: Final = "0230"
RECONCILIATION_REQUEST: Final = "0500"
RECONCILIATION_RESPONSE: Final = "0510"
ECHO_REQUEST: Final = "0800"
ECHO_RESPONSE: Final = "0810"

REVERSALS: Final = frozenset(
    {REVERSAL_REQUEST, REVERSAL_REPEAT, REVERSAL_ADVICE, REVERSAL_ADVICE_REPEAT}
)
RESPONSE_TO: Final = {
    AUTH_REQUEST: AUTH_RESPONSE,
    FINANCIAL_REQUEST: FINANCIAL_RESPONSE,
    REVERSAL_REQUEST: REVERSAL_RESPONSE,
    REVERSAL_REPEAT: REVERSAL_RESPONSE,
    REVERSAL_ADVICE: REVERSAL_ADVICE_RESPONSE,
    REVERSAL_ADVICE_REPEAT: REVERSAL_ADVICE_RESPONSE,
    ADVICE: ADVICE_RESPONSE,
    ADVICE_REPEAT: ADVICE_RESPONSE,
    RECONCILIATION_REQUEST: RECONCILIATION_RESPONSE,
    ECHO_REQUEST: ECHO_RESPONSE,
}
ADVICES: Final = frozenset({ADVICE, ADVICE_REPEAT})
ECHO_CODE: Final = "301"  # field 70: echo test
CARD_PROCESSING: Final = "000000"  # purchase, default account
DEBIT_PROCESSING: Final = "002000"  # purchase from a checking account (OPE debit)
REFUND_PROCESSING: Final = "200000"  # refund (credit) to the default account
VERIFY_CARD_PROCESSING: Final = "330000"  # account verification, default account
VERIFY_BANK_PROCESSING: Final = "332000"  # account verification, checking account (OPE)
PIN_BLOCK_BYTES: Final = 16


def is_verification(message: Message) -> bool:
    """An account verification: an 0100 whose processing code is 33xxxx (Rule 1)."""
    return message.get("t") == AUTH_REQUEST and str(message.get("3", "")).startswith("33")


def _field(max_len: int, desc: str, *, len_type: int = 0, enc: str = "ascii") -> dict[str, Any]:
    return {
        "data_enc": enc,
        "len_enc": "ascii",
        "len_type": len_type,
        "max_len": max_len,
        "desc": desc,
    }


SPEC: Final[dict[str, Any]] = copy.deepcopy(iso8583.specs.default_ascii)
SPEC.update(
    {
        "h": _field(0, "Message Header"),
        "t": _field(4, "Message Type"),
        "p": _field(8, "Bitmap, Primary", enc="b"),
        "1": _field(8, "Bitmap, Secondary", enc="b"),
        "2": _field(19, "Primary Account Number", len_type=2),
        "52": _field(PIN_BLOCK_BYTES, "PIN Block (ISO 9564 format 4)", enc="b"),
        "90": _field(42, "Original Data Elements"),
        "102": _field(64, "Account ID 1 (bank-branch-number)", len_type=2),
    }
)
# Fields whose value is an account number, PIN block or track data: never logged.
SENSITIVE_FIELDS: Final = frozenset({"2", "14", "35", "36", "45", "52", "102"})


def pack(message: Message) -> bytes:
    """Encode ``message`` (field number -> str) to wire bytes. Raises ``MessageError``."""
    try:
        raw, _ = iso8583.encode(dict(message), SPEC)
    except (EncodeError, TypeError, ValueError) as exc:
        raise MessageError(f"cannot pack message: {_where(exc)}") from None
    return bytes(raw)


def unpack(raw: bytes) -> Message:
    """Decode wire bytes into a message dict. Raises ``MessageError`` (no field contents)."""
    try:
        message, _ = iso8583.decode(raw, SPEC)
    except (DecodeError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"cannot unpack message: {_where(exc)}") from None
    message.pop("p", None)
    message.pop("1", None)
    return message


def _where(exc: Exception) -> str:
    # pyiso8583 errors carry the field id and position; the text may quote data, so
    # only those two attributes are reported.
    field = getattr(exc, "field", "?")
    pos = getattr(exc, "pos", "?")
    return f"field {field} at byte {pos}"


def require(message: Message, *fields: str) -> None:
    """Raise ``MessageError`` naming the first of ``fields`` absent from ``message``."""
    for name in fields:
        if not message.get(name):
            raise MessageError(f"field {name} is required for MTI {message.get('t', '?')}")


def transmission_time(now: datetime) -> str:
    """Field 7, MMDDhhmmss (UTC)."""
    return now.strftime("%m%d%H%M%S")


def original_data(mti: str, stan: str, f7: str, acquirer: str) -> str:
    """Field 90 of a reversal: original MTI, STAN, transmission time, acquirer, forwarder."""
    return f"{mti}{stan}{f7}{acquirer.rjust(11, '0')}{'0' * 11}"


def parse_original_data(value: str) -> tuple[str, str, str, str]:
    """(MTI, STAN, transmission time, acquirer) from field 90. Raises ``MessageError``."""
    if len(value) != 42 or not value.isdigit():
        raise MessageError("field 90 must be 42 digits")
    return value[0:4], value[4:10], value[10:20], value[20:31].lstrip("0") or "0"


def replacement_amount(amount: int) -> str:
    """Field 95 of a partial reversal: the amount that stays (12 digits, then zeros)."""
    return f"{amount:012d}".ljust(42, "0")


def parse_replacement_amount(value: str) -> int:
    """The amount that stays, from field 95. Raises ``MessageError``."""
    if len(value) != 42 or not value.isdigit():
        raise MessageError("field 95 must be 42 digits")
    return int(value[:12])


def pin_block_field(block: bytes) -> str:
    """Field 52's value for a 16-byte PIN block (pyiso8583 carries binary fields as hex)."""
    if len(block) != PIN_BLOCK_BYTES:
        raise MessageError("PIN block must be 16 bytes")
    return block.hex().upper()


def pin_block_of(message: Message) -> bytes | None:
    """The PIN block in field 52, or None."""
    value = message.get("52")
    return bytes.fromhex(value) if value else None


def safe_view(message: Message) -> dict[str, str]:
    """The message for logs: sensitive fields replaced by their length only."""
    return {
        k: (f"<{len(str(v))} chars>" if k in SENSITIVE_FIELDS else str(v))
        for k, v in message.items()
    }
