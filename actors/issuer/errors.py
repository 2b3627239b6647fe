"""The issuer host's exceptions, rooted in ``IssuerError`` (ISO 8583 wire errors are
``actors.iso8583.errors``).

Rule 1: error texts name the check that failed, never an account number, PIN or PIN block.
"""

from __future__ import annotations


class IssuerError(Exception):
    """Base of every error raised by ``actors.issuer``."""


class SecurityUnavailable(IssuerError):
    """The security module cannot perform the operation (down, or the op is not offered)."""


class StoreError(IssuerError):
    """The account store refused a change (unknown account, inconsistent seed data)."""


class InvalidPinBlock(IssuerError):
    """A PIN block does not open under the zone PIN key for the account (no detail given)."""
