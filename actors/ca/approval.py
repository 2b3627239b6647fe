"""Who may ask for a merchant or gateway certificate, and what the operator grants.

Rule 1: a merchant certificate is asked for by a ``merchant.*`` broker identity only, a
gateway certificate by a ``gateway.*`` one (``requester_role``); the identity is the
broker-validated sender, never a field of the request.
Rule 2: what a gateway certificate says it offers (currencies, PIN debit, sale) is the
operator's grant, never the request's: a request asking for anything the grant does not
contain is refused (``excess``), and the certificate carries the grant.
Rule 3: auto-approval is an explicit operator policy recorded in the CA database (``setpay
ca init --auto-approve SPEC``), empty (off) by default. SPEC is entries separated by ``;``
or whitespace: ``merchant:ID`` or ``merchant:*``; ``gateway:ID=GRANTS`` or
``gateway:*=GRANTS`` where GRANTS is a comma list of ISO 4217 codes, ``sale``,
``pin-debit``. A request not matched by an entry waits for ``setpay ca approve``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocol.certs import GatewayCaps
from protocol.messages import FailedItem

POLICY_KEY: Final = "auto_approve"  # the CA meta row holding the policy SPEC
ROLE_OF_KIND: Final = {"merchant": "merchant", "gateway": "gateway"}


class PolicyError(ValueError):
    """An auto-approve SPEC or an operator grant that cannot be read."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One auto-approve entry: ``kind`` (merchant | gateway), ``entity_id`` or ``*``."""

    kind: str
    entity_id: str
    caps: GatewayCaps | None  # gateways: what is granted; merchants: None


def parse_caps(grants: str) -> GatewayCaps:
    """A grant from ``JPY,USD,sale,pin-debit``; ``PolicyError`` if a word is unknown."""
    currencies: list[str] = []
    sale = pin_debit = False
    for word in (w.strip() for w in grants.split(",") if w.strip()):
        if word == "sale":
            sale = True
        elif word == "pin-debit":
            pin_debit = True
        elif len(word) == 3 and word.isalpha():
            currencies.append(word.upper())
        else:
            raise PolicyError(f"unknown grant {word!r} (ISO 4217 code, sale or pin-debit)")
    return make_caps(currencies, pin_debit=pin_debit, sale=sale)


def make_caps(currencies: list[str], *, pin_debit: bool, sale: bool) -> GatewayCaps:
    """A gateway grant; ``PolicyError`` without at least one ISO 4217 currency."""
    codes = [c.strip().upper() for c in currencies if c.strip()]
    if not codes or any(len(c) != 3 or not c.isalpha() for c in codes):
        raise PolicyError("a gateway grant names its currencies (ISO 4217 codes)")
    return GatewayCaps(codes, pin_debit, sale)


def parse_policy(spec: str) -> tuple[Rule, ...]:
    """The rules of an auto-approve SPEC (Rule 3); ``PolicyError`` if malformed."""
    rules = []
    for entry in spec.replace(";", " ").split():
        head, eq, grants = entry.partition("=")
        kind, colon, entity_id = head.partition(":")
        if kind not in ROLE_OF_KIND or not colon or not entity_id:
            raise PolicyError(f"auto-approve entry {entry!r}: merchant:ID or gateway:ID=GRANTS")
        if kind == "merchant":
            if eq:
                raise PolicyError(f"auto-approve entry {entry!r}: merchants take no grants")
            rules.append(Rule(kind, entity_id, None))
        else:
            rules.append(Rule(kind, entity_id, parse_caps(grants)))
    return tuple(rules)


def match(rules: tuple[Rule, ...], kind: str, entity_id: str) -> Rule | None:
    """The first rule approving ``kind`` ``entity_id`` (an exact id before ``*``)."""
    for wanted in (entity_id, "*"):
        for rule in rules:
            if rule.kind == kind and rule.entity_id == wanted:
                return rule
    return None


def requester_role(identity: str) -> str:
    """The role part of a ``role.instance`` identity."""
    return identity.partition(".")[0]


def excess(asked: GatewayCaps, granted: GatewayCaps) -> tuple[FailedItem, ...]:
    """What ``asked`` wants beyond ``granted`` (Rule 2), one failed item each."""
    items = []
    if asked.pin_debit and not granted.pin_debit:
        items.append(FailedItem("pin_debit", "not granted by the operator"))
    if asked.sale and not granted.sale:
        items.append(FailedItem("sale", "not granted by the operator"))
    extra = sorted(set(asked.currencies) - set(granted.currencies))
    if extra:
        items.append(FailedItem("currencies", f"not granted: {','.join(extra)}"[:64]))
    return tuple(items)
