"""Account data: PAN (Luhn), OPE bank accounts, PANData/PANToken/PANOnly, SET secrets.

Rule 1: records holding a PAN, account number or secret never show it in ``repr``; error
details name the check that failed, never the value.
Rule 2: the cardholder certificate holds ``account_hash`` = HMAC-SHA-256 keyed by PANSecret
over the canonical account and expiry; without PANSecret it links to nothing.
Rule 3: every secret (EXNonce, CardSecret, Nonce-CCA) is 32 bytes from ``secrets``; HMAC
inputs are domain-separated by a label, as in ``protocol.primitives``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Annotated

from protocol import codec
from protocol.codec import Bytes32, MaxLen
from protocol.errors import ErrorCode, ProtocolError
from protocol.primitives import DOMAIN

SECRET_BYTES = 32
_DIGITS = re.compile(r"[0-9]+")
_EXPIRY = re.compile(r"[0-9]{2}(0[1-9]|1[0-2])")  # YYMM, as on the card and in ISO 8583


class AccountKind(IntEnum):
    """What identifies the account: a payment card, or an OPE bank account."""

    CARD = 1
    BANK = 2


def _invalid(detail: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_FIELD, detail)


# --- Luhn ---------------------------------------------------------------------------------


def _luhn_sum(digits: str) -> int:
    # Doubling starts at the rightmost digit of ``digits`` (the check digit is not in it).
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total


def luhn_check_digit(partial: str) -> str:
    """The Luhn check digit to append to ``partial`` (digits only)."""
    if not _DIGITS.fullmatch(partial):
        raise _invalid("Luhn input must be digits")
    return str((10 - _luhn_sum(partial) % 10) % 10)


def luhn_valid(number: str) -> bool:
    """True if ``number`` is at least two digits and its last digit is its Luhn check digit."""
    return (
        _DIGITS.fullmatch(number) is not None
        and len(number) >= 2
        and luhn_check_digit(number[:-1]) == number[-1]
    )


def validate_pan(pan: str) -> None:
    """A PAN is 12-19 digits with a valid Luhn check digit. Raises ``ProtocolError``."""
    if not _DIGITS.fullmatch(pan) or not 12 <= len(pan) <= 19:
        raise _invalid("PAN must be 12-19 digits")
    if not luhn_valid(pan):
        raise _invalid("PAN fails the Luhn check")


def validate_expiry(expiry: str) -> None:
    if not _EXPIRY.fullmatch(expiry):
        raise _invalid("expiry must be YYMM")


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    """A card (``number`` = PAN) or an OPE bank account (bank code, branch, account number)."""

    kind: AccountKind
    number: Annotated[str, MaxLen(34)] = field(repr=False)  # PAN, or account/cash-card no.
    bank_code: Annotated[str, MaxLen(11)] = ""  # BANK only (e.g. 4-digit Zengin code, BIC)
    branch: Annotated[str, MaxLen(8)] = ""  # BANK only

    def validate(self) -> None:
        """Check the account's shape for its kind. Raises ``ProtocolError(invalidField)``."""
        if self.kind is AccountKind.CARD:
            validate_pan(self.number)
            if self.bank_code or self.branch:
                raise _invalid("a card account has no bank code or branch")
            return
        if not self.bank_code or not _DIGITS.fullmatch(self.bank_code):
            raise _invalid("bank code must be digits")
        if self.branch and not _DIGITS.fullmatch(self.branch):
            raise _invalid("branch must be digits")
        if not _DIGITS.fullmatch(self.number) or not 4 <= len(self.number) <= 34:
            raise _invalid("account number must be 4-34 digits")

    @property
    def pin_binding_number(self) -> str:
        """The digits a PIN block is bound to (PAN, or the bank account number)."""
        return self.number


@dataclass(frozen=True, slots=True)
class PANData:
    """Account, expiry, PANSecret and a fresh EXNonce: the gateway-only part of a PI."""

    account: Account
    expiry: Annotated[str, MaxLen(4)] = field(repr=False)
    pan_secret: Bytes32 = field(repr=False)
    ex_nonce: Bytes32 = field(repr=False)


@dataclass(frozen=True, slots=True)
class PANToken:
    """Account and expiry without PANSecret (unsigned PI, CapToken, AuthToken)."""

    account: Account
    expiry: Annotated[str, MaxLen(4)] = field(repr=False)
    ex_nonce: Bytes32 = field(repr=False)


@dataclass(frozen=True, slots=True)
class PANOnly:
    """The account alone (RegFormReq, to pick the registration form)."""

    account: Account
    ex_nonce: Bytes32 = field(repr=False)


for _record in (Account, PANData, PANToken, PANOnly):
    codec.validate_schema(_record)


def _check(account: Account, expiry: str | None) -> None:
    account.validate()
    if expiry is not None:
        validate_expiry(expiry)


def new_secret() -> bytes:
    """32 random bytes: EXNonce, CardSecret, Nonce-CCA."""
    return secrets.token_bytes(SECRET_BYTES)


def make_pan_data(account: Account, expiry: str, pan_secret: bytes) -> PANData:
    """A PANData with a fresh EXNonce, after checking the account and expiry."""
    _check(account, expiry)
    _secret_len(pan_secret, "PANSecret")
    return PANData(account, expiry, pan_secret, new_secret())


def make_pan_token(account: Account, expiry: str) -> PANToken:
    _check(account, expiry)
    return PANToken(account, expiry, new_secret())


def make_pan_only(account: Account) -> PANOnly:
    _check(account, None)
    return PANOnly(account, new_secret())


def decode_pan_data(data: bytes) -> PANData:
    """Decode and check received PANData bytes. Raises ``ProtocolError``."""
    record = codec.decode(PANData, data)
    _check(record.account, record.expiry)
    return record


def decode_pan_token(data: bytes) -> PANToken:
    record = codec.decode(PANToken, data)
    _check(record.account, record.expiry)
    return record


def decode_pan_only(data: bytes) -> PANOnly:
    record = codec.decode(PANOnly, data)
    _check(record.account, None)
    return record


# --- secrets and hashes -------------------------------------------------------------------


def _secret_len(value: bytes, name: str) -> None:
    if len(value) != SECRET_BYTES:
        raise _invalid(f"{name} must be {SECRET_BYTES} bytes")


def _labelled_hmac(key: bytes, label: str, data: bytes) -> bytes:
    return hmac.new(key, DOMAIN + label.encode("ascii") + b"\0" + data, hashlib.sha256).digest()


def pan_secret(card_secret: bytes, nonce_cca: bytes) -> bytes:
    """PANSecret = CardSecret ⊕ Nonce-CCA (SET registration; neither side alone knows it)."""
    _secret_len(card_secret, "CardSecret")
    _secret_len(nonce_cca, "Nonce-CCA")
    return bytes(a ^ b for a, b in zip(card_secret, nonce_cca, strict=True))


def trans_stain(card_secret: bytes, xid: bytes) -> bytes:
    """TransStain = HMAC-SHA-256(CardSecret, XID): per-transaction, unlinkable without it."""
    _secret_len(card_secret, "CardSecret")
    return _labelled_hmac(card_secret, "TransStain", xid)


def canonical_account(account: Account, expiry: str) -> bytes:
    """The exact bytes the account hash covers: msgpack [kind, number, bank, branch, expiry]."""
    return codec.packb(
        [int(account.kind), account.number, account.bank_code, account.branch, expiry]
    )


def account_hash(pan_secret_value: bytes, account: Account, expiry: str) -> bytes:
    """The cardholder certificate's account hash: HMAC-SHA-256 keyed by PANSecret."""
    _secret_len(pan_secret_value, "PANSecret")
    _check(account, expiry)
    return _labelled_hmac(pan_secret_value, "AccountHash", canonical_account(account, expiry))


def check_account_hash(pan_data: PANData, expected: bytes) -> None:
    """The gateway's check that a PI's account is the one certified. Raises ``ProtocolError``."""
    actual = account_hash(pan_data.pan_secret, pan_data.account, pan_data.expiry)
    if not hmac.compare_digest(actual, expected):
        raise ProtocolError(
            ErrorCode.LINKAGE_FAILURE, "account does not match the cardholder certificate"
        )


def merchant_bin(account: Account) -> str:
    """What the cardholder tells the merchant about the account in PInitReq's BIN, and no
    more: a card's issuer identification number (the PAN's first six digits, as SET has it);
    for an OPE bank account the institution (bank code and branch digits, zero-padded to six,
    at most eleven), never a digit of the account number. With a bank account of seven digits,
    "its first six" would hand the merchant the account number but for one digit."""
    if account.kind is AccountKind.CARD:
        return account.number[:6]
    digits = "".join(ch for ch in account.bank_code + account.branch if ch.isdigit())
    return digits[:11].rjust(6, "0")
