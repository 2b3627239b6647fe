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


IN_PROGRESS = "this purchase is being finished by another request: ask again shortly"


class PurchaseInProgress(WalletError):
    """Another wallet process holds the started purchase (actors/wallet/store.py Rule 4); the
    thin client asks again, and gets the outcome once that process answered or its lease ran
    out and this one took over."""
