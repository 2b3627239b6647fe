"""SET error codes and the one exception type of ``protocol/``.

Rule 1: any malformed, tampered, stale or out-of-state input raises ``ProtocolError`` with a
SET ``ErrorCode``, never another exception type.
Rule 2: ``detail`` is for operators; it names fields and checks, never values of secrets.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """SET Error codes (names after SET Book 2; numbering is setpay's own, stable on the wire)."""

    UNSPECIFIED_FAILURE = 1
    MESSAGE_NOT_SUPPORTED = 2
    DECODING_FAILURE = 3
    INVALID_CERTIFICATE = 4
    EXPIRED_CERTIFICATE = 5
    REVOKED_CERTIFICATE = 6
    MISSING_CERTIFICATE = 7
    SIGNATURE_FAILURE = 8
    BAD_MESSAGE_HEADER = 9
    WRAPPER_MSG_MISMATCH = 10
    VERSION_TOO_OLD = 11
    VERSION_TOO_NEW = 12
    UNRECOGNIZED_EXTENSION = 13
    MESSAGE_TOO_BIG = 14
    SIGNATURE_REQUIRED = 15
    MESSAGE_TOO_OLD = 16
    MESSAGE_TOO_NEW = 17
    THUMBS_MISMATCH = 18
    UNKNOWN_RRPID = 19
    UNKNOWN_XID = 20
    UNKNOWN_LID = 21
    CHALLENGE_MISMATCH = 22
    # setpay additions, for failures SET 1.0 folds into the ones above.
    DECRYPTION_FAILURE = 23  # key transport or AEAD open failed (wrong key, tampered)
    LINKAGE_FAILURE = 24  # a digest that binds two parts does not match
    STATE_VIOLATION = 25  # message not legal in the current state of the exchange
    REPLAY = 26  # an RRPID, XID, PI or challenge seen before
    INVALID_FIELD = 27  # a field is well-formed but its value is not acceptable
    UNSUPPORTED_ALGORITHM = 28  # suite or algorithm not offered here
    UNAUTHORIZED_SENDER = 29  # the broker identity that sent it may not make this request
    STALE_REVOCATION_DATA = 30  # a BCI older than one already seen for the brand (rollback)


class ProtocolError(Exception):
    """A SET protocol failure. ``code`` is what goes into the SET Error message."""

    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        super().__init__(f"{code.name.lower()}: {detail}" if detail else code.name.lower())
        self.code = code
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[ErrorCode, str]]:
        return (type(self), (self.code, self.detail))
