"""The one exception base of the wallet service.

Rule 1: a ``WalletError`` message is shown to the cardholder: it names what failed, never a
PAN, passphrase or secret. Protocol failures of a peer stay ``ProtocolError`` inside and
become a ``WalletError`` naming the SET code at the API boundary.
"""

from __future__ import annotations


class WalletError(Exception):
    """A wallet request failed; the message says why (no secrets)."""


class AuthenticationFailed(WalletError):
    """Unknown cardholder or wrong passphrase (one message for both: no user enumeration)."""
