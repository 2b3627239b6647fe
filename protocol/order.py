"""The order description both cardholder and merchant hash into HOD.

Rule 1: HOD = H("HOD", {OrderDesc, PurchAmt, ODSalt}): the merchant recomputes it from *its*
order and the cardholder's ODSalt; the gateway only ever sees the digest, and the 32-byte salt
defeats guessing the description from a dictionary.
Rule 2: amounts are integer minor units (``CurrAmt``), never floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from protocol import codec, linkage
from protocol.codec import MaxLen, Nonce
from protocol.messages import CurrAmt

HOD_LABEL = "HOD"


@dataclass(frozen=True, slots=True)
class OrderDescription:
    """What HOD covers: the order text, the amount and the cardholder's salt."""

    description: Annotated[str, MaxLen(4096)]
    purch_amt: CurrAmt
    od_salt: Nonce


codec.validate_schema(OrderDescription)


def hod(description: str, purch_amt: CurrAmt, od_salt: bytes) -> bytes:
    """HOD of an order (Rule 1)."""
    return linkage.digest_of(
        HOD_LABEL, codec.encode(OrderDescription(description, purch_amt, od_salt))
    )
