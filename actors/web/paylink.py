"""A pay link: the order a POS operator hands a cardholder, as a link to the web wallet.

Rule 1: ``<wallet URL>/#pay=<base64url(JSON)>``; the JSON names the POS routing key, the
merchant, the LID-M (hex), the description, currency and amount. The fragment never leaves
the browser (no server log, no Referer).
Rule 2: the link is not trusted: the cardholder sees its terms before paying, and the
merchant checks them against the order it recorded (the order digest in the dual signature),
so an altered link pays nothing; ``parse`` only checks its shape.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import asdict, dataclass

ROUTE = re.compile(r"^merchant\.[A-Za-z0-9_-]{1,32}$")
HEX = re.compile(r"^[0-9a-f]{2,128}$")


class PayLinkError(ValueError):
    """Not a pay link this wallet can read."""


@dataclass(frozen=True)
class Offer:
    merchant: str  # the POS routing key (``merchant.<instance>``)
    merchant_id: str
    order: str  # LID-M, hex
    description: str
    currency: str
    amount: int

    def check(self) -> Offer:
        if not ROUTE.match(self.merchant) or not HEX.match(self.order):
            raise PayLinkError("pay link: bad merchant or order")
        if not 0 < len(self.description) <= 4096 or not re.fullmatch(r"[A-Z]{3}", self.currency):
            raise PayLinkError("pay link: bad description or currency")
        if isinstance(self.amount, bool) or not isinstance(self.amount, int) or self.amount <= 0:
            raise PayLinkError("pay link: bad amount")
        if not 0 < len(self.merchant_id) <= 64:
            raise PayLinkError("pay link: bad merchant id")
        return self


def make(wallet_url: str, offer: Offer) -> str:
    raw = json.dumps(asdict(offer.check()), separators=(",", ":")).encode()
    return f"{wallet_url.rstrip('/')}/#pay={base64.urlsafe_b64encode(raw).decode().rstrip('=')}"


def parse(link: str) -> Offer:
    _, sep, fragment = link.partition("#pay=")
    if not sep or len(fragment) > 12_000:
        raise PayLinkError("not a pay link")
    try:
        raw = base64.urlsafe_b64decode(fragment + "=" * (-len(fragment) % 4))
        data = json.loads(raw)
        return Offer(**{k: data[k] for k in Offer.__dataclass_fields__}).check()
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise PayLinkError("pay link unreadable") from None
