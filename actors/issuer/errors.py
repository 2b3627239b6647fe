"""The issuer package's exceptions, rooted in ``IssuerError``.

Rule 1: error texts name the check that failed, never an account number, PIN or PIN block.
"""

from __future__ import annotations


class IssuerError(Exception):
    """Base of every error raised by ``actors.issuer``."""


class FramingError(IssuerError):
    """A length-prefixed frame is empty, too long, or cut short."""


class MessageError(IssuerError):
    """An ISO 8583 message cannot be packed or unpacked, or lacks a required field."""


class SecurityUnavailable(IssuerError):
    """The security module cannot perform the operation (down, or the op is not offered)."""


class StoreError(IssuerError):
    """The account store refused a change (unknown account, inconsistent seed data)."""


class LinkClosed(IssuerError):
    """The link is closed or not connected; the request was not sent."""


class InvalidPinBlock(IssuerError):
    """A PIN block does not open under the zone PIN key for the account (no detail given)."""
