"""Brands the CA serves: BIN ranges and registration form templates.

Rule 1: a cardholder's BIN (the PAN's first six digits) picks the brand and the form; a PAN
whose BIN no brand lists is refused (``invalidField``), never registered under a guess. An OPE
bank account is registered only under a brand that lists its bank code (``bank_codes``); Luhn
and BIN apply to cards only.
Rule 2: templates name fields only; values arrive in CertReq and are checked against the
template (required fields present, lengths within ``max_len``, no unknown fields).
Rule 3: a cardholder request under a BIN in ``review_bins`` is pended for the issuer's review
(``setpay ca approve|reject``), as merchants of a ``review_mccs`` category are for the acquirer.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import pan
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import RegField, RegFieldValue, RegForm

CARDHOLDER_FORM_ID = 1
MERCHANT_FORM_ID = 2
GATEWAY_FORM_ID = 3

POLICY = "setpay test CA: certificates for testing only; no liability."

CARDHOLDER_FORM = RegForm(
    CARDHOLDER_FORM_ID,
    [
        RegField("name", None, True, 64),
        RegField("postal_code", None, True, 16),
        RegField("email", None, False, 128),
    ],
    POLICY,
)
MERCHANT_FORM = RegForm(
    MERCHANT_FORM_ID,
    [
        RegField("merchant_id", None, True, 32),
        RegField("merchant_name", None, True, 64),
        RegField("mcc", None, True, 4),
    ],
    POLICY,
)
GATEWAY_FORM = RegForm(
    GATEWAY_FORM_ID,
    [
        RegField("gateway_id", None, True, 32),
        RegField("currencies", "JPY,USD", True, 64),
        RegField("pin_debit", "yes", False, 3),
        RegField("sale", "yes", False, 3),
    ],
    POLICY,
)


@dataclass(frozen=True, slots=True)
class Brand:
    name: str
    bins: tuple[str, ...]  # 6-digit BIN prefixes issued under this brand
    review_mccs: tuple[str, ...] = ()  # merchant categories the acquirer approves by hand
    review_bins: tuple[str, ...] = ()  # BINs whose issuer reviews cardholder requests by hand
    bank_codes: tuple[str, ...] = ()  # OPE: banks whose accounts this brand registers


TEST_BRANDS: tuple[Brand, ...] = (
    # 7995: betting; bank 0001: the issuer host's OPE bank (actors/issuer/seed.py)
    Brand("alpha", ("411111", "400000"), review_mccs=("7995",), bank_codes=("0001",)),
    Brand("beta", ("555555", "510000", "520000"), review_bins=("520000",)),
)


def brand_named(brands: tuple[Brand, ...], name: str) -> Brand:
    for brand in brands:
        if brand.name == name:
            return brand
    raise ProtocolError(ErrorCode.INVALID_FIELD, f"brand {name!r} is not served here")


def check_bin(brand: Brand, pan_digits: str) -> None:
    """The PAN's BIN belongs to ``brand`` (Rule 1). Raises ``ProtocolError(invalidField)``."""
    if not any(pan_digits.startswith(b) for b in brand.bins):
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"BIN not issued under brand {brand.name}")


def check_account(brand: Brand, account: pan.Account) -> None:
    """A card's BIN, or a bank account's bank code, belongs to ``brand`` (Rule 1). Raises
    ``ProtocolError(invalidField)``."""
    if account.kind is pan.AccountKind.CARD:
        check_bin(brand, account.number)
    elif account.bank_code not in brand.bank_codes:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"bank not served under brand {brand.name}")


def takes_banks(brand: Brand) -> bool:
    """Whether ``brand`` registers any OPE bank account."""
    return bool(brand.bank_codes)


def check_form(form: RegForm, reg_form_id: int, values: list[RegFieldValue]) -> dict[str, str]:
    """Values against the template (Rule 2); returns them by name. Raises ``ProtocolError``."""
    if reg_form_id != form.reg_form_id:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "CertReq names another registration form")
    fields = {f.name: f for f in form.fields}
    out: dict[str, str] = {}
    for value in values:
        spec = fields.get(value.name)
        if spec is None:
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"unknown form field {value.name!r}")
        if value.name in out:
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"form field {value.name!r} repeated")
        if len(value.value) > spec.max_len:
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"form field {value.name!r} too long")
        out[value.name] = value.value
    for spec in form.fields:
        if spec.required and not out.get(spec.name):
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"required form field {spec.name!r}")
        if spec.name not in out and spec.default is not None:
            out[spec.name] = spec.default
    return out


def reviewed_bin(brand: Brand, account: pan.Account) -> bool:
    """The issuer of this card's BIN reviews cardholder requests by hand (Rule 3)."""
    if account.kind is not pan.AccountKind.CARD:
        return False
    return any(account.number.startswith(b) for b in brand.review_bins)
