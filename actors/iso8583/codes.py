"""ISO 8583 response codes (field 39) the host answers and the link reports.

Rule 1: one enum; callers compare against members, never against string literals.
Rule 2: ``retryable`` says whether the same purchase may be tried again later (the network,
not the cardholder, was the cause).
"""

from __future__ import annotations

from enum import StrEnum


class ResponseCode(StrEnum):
    APPROVED = "00"
    INVALID_TRANSACTION = "12"
    INVALID_AMOUNT = "13"
    INVALID_CARD = "14"
    FORMAT_ERROR = "30"
    STOLEN_CARD = "43"
    INSUFFICIENT_FUNDS = "51"
    EXPIRED_CARD = "54"
    WRONG_PIN = "55"
    VELOCITY_EXCEEDED = "61"
    PIN_TRIES_EXCEEDED = "75"
    ISSUER_UNAVAILABLE = "91"
    DUPLICATE_TRANSMISSION = "94"
    RECONCILE_ERROR = "95"  # 0510: the batch's totals do not balance with the host's
    SYSTEM_MALFUNCTION = "96"

    @property
    def approved(self) -> bool:
        return self is ResponseCode.APPROVED

    @property
    def retryable(self) -> bool:
        """True where the decline came from the network, so a later retry may succeed."""
        return self in (ResponseCode.ISSUER_UNAVAILABLE, ResponseCode.SYSTEM_MALFUNCTION)


def parse(value: str) -> ResponseCode:
    """The member for ``value``; an unknown code counts as a system malfunction."""
    try:
        return ResponseCode(value)
    except ValueError:
        return ResponseCode.SYSTEM_MALFUNCTION
