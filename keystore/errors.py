"""The one exception family of ``keystore/``: ``KeystoreError`` and a subclass per ``Fault``.

Rule 1: every failure a caller can see is a ``KeystoreError`` carrying a ``Fault`` code; the
same code crosses the bus in a response record and is rebuilt into the same class here.
Rule 2: error texts name the operation, the key label and the check; never data, digests,
PINs or key material.
"""

from __future__ import annotations

from enum import IntEnum


class Fault(IntEnum):
    """Outcome codes on the wire (0 = success); stable numbering."""

    OK = 0
    BAD_REQUEST = 1  # malformed record, bad label, wrong kind/usage combination
    FORBIDDEN = 2  # caller's role or ownership does not allow this
    NO_SUCH_KEY = 3
    KEY_EXISTS = 4
    KEY_USAGE = 5  # the key exists but was not created for this operation
    DECRYPTION_FAILED = 6  # OAEP, GCM open or ECDH input rejected
    UNSUPPORTED = 7  # the token lacks the mechanism (e.g. OAEP-SHA256 on SoftHSM2)
    TOKEN_UNAVAILABLE = 8  # token/session trouble that survived one reconnect; retry later
    TOKEN_LOCKED = 9  # PIN locked or login refused: needs a security officer
    INTERNAL = 10
    UNAVAILABLE = 11  # client side: keystore not reachable or did not answer in time
    INVALID_PIN_BLOCK = 12  # a PIN block does not decode for its account (no detail given)
    PI_USED = 13  # a PIN-bearing payment instruction was opened before (piPreviouslyUsed)
    RATE_LIMITED = 14  # a PIN operation's window count for this caller or account is spent
    PIN_LOCKED = 15  # the account's PIN is locked after too many failed verifications
    PIN_KEY_MISUSE = 16  # a PIN key (PVK, ZPK) asked for anything but its PIN operations
    PIN_BLOCK_MISSING = 17  # format error: a PIN operation without its PIN block
    SEAL_INVALID = 18  # a sealed request that does not open for this op, caller and record
    STALE_REQUEST = 19  # a sealed request past its deadline (its caller gave up on it)


class KeystoreError(Exception):
    """Base of every keystore failure. ``fault`` is the wire code, ``text`` a short reason."""

    fault: Fault = Fault.INTERNAL
    retryable: bool = False

    def __init__(self, text: str = "") -> None:
        super().__init__(text or self.fault.name.lower())
        self.text = text or self.fault.name.lower()


class BadRequest(KeystoreError):
    fault = Fault.BAD_REQUEST


class Forbidden(KeystoreError):
    fault = Fault.FORBIDDEN


class NoSuchKey(KeystoreError):
    fault = Fault.NO_SUCH_KEY


class KeyExists(KeystoreError):
    fault = Fault.KEY_EXISTS


class KeyUsageError(KeystoreError):
    fault = Fault.KEY_USAGE


class DecryptionFailed(KeystoreError):
    fault = Fault.DECRYPTION_FAILED


class Unsupported(KeystoreError):
    fault = Fault.UNSUPPORTED


class TokenUnavailable(KeystoreError):
    fault = Fault.TOKEN_UNAVAILABLE
    retryable = True


class TokenLocked(KeystoreError):
    fault = Fault.TOKEN_LOCKED


class InternalError(KeystoreError):
    fault = Fault.INTERNAL


class KeystoreUnavailable(KeystoreError):
    fault = Fault.UNAVAILABLE
    retryable = True


class InvalidPinBlock(KeystoreError):
    fault = Fault.INVALID_PIN_BLOCK


class PiPreviouslyUsed(KeystoreError):
    fault = Fault.PI_USED


class RateLimited(KeystoreError):
    fault = Fault.RATE_LIMITED


class PinLocked(KeystoreError):
    fault = Fault.PIN_LOCKED


class PinKeyMisuse(KeystoreError):
    fault = Fault.PIN_KEY_MISUSE


class PinBlockMissing(KeystoreError):
    """A format error, never a wrong PIN: it does not count toward the PIN lockout."""

    fault = Fault.PIN_BLOCK_MISSING


class SealInvalid(KeystoreError):
    """A sealed request tampered with, or made for another operation, identity, key or
    request: nothing was done (keystore/transport.py)."""

    fault = Fault.SEAL_INVALID


class StaleRequest(KeystoreError):
    """A sealed request past its ``not_after_ms``: refused, nothing was done."""

    fault = Fault.STALE_REQUEST


_BY_FAULT: dict[Fault, type[KeystoreError]] = {
    cls.fault: cls
    for cls in (
        BadRequest,
        Forbidden,
        NoSuchKey,
        KeyExists,
        KeyUsageError,
        DecryptionFailed,
        Unsupported,
        TokenUnavailable,
        TokenLocked,
        InternalError,
        KeystoreUnavailable,
        InvalidPinBlock,
        PiPreviouslyUsed,
        RateLimited,
        PinLocked,
        PinKeyMisuse,
        PinBlockMissing,
        SealInvalid,
        StaleRequest,
    )
}


def error_for(fault: Fault, text: str) -> KeystoreError:
    """Rebuild the exception a response record describes (unknown codes become internal)."""
    return _BY_FAULT.get(fault, InternalError)(text)
