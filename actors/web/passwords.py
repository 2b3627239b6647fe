"""Passphrases at rest: an scrypt hash with a per-account salt, compared in constant time.

Rule 1: a passphrase is kept only as ``(salt, scrypt hash, N)``; never stored, logged or
returned. Rule 2: checking runs the same scrypt whether the account exists or not
(``DUMMY_RECORD`` stands in for an unknown one), so an unknown name costs the same work.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
MIN_LENGTH = 8
MAX_LENGTH = 256

PassphraseRecord = tuple[bytes, bytes, int]


def hash_passphrase(passphrase: str, salt: bytes, n: int = SCRYPT_N) -> bytes:
    """scrypt(passphrase, salt) -> 32 bytes (Rule 1)."""
    return hashlib.scrypt(
        passphrase.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
        maxmem=64 * 1024 * 1024, dklen=32,
    )  # fmt: skip


def new_passphrase_record(passphrase: str) -> PassphraseRecord:
    """(salt, hash, n) for a new account; ``ValueError`` for a passphrase out of bounds."""
    if not MIN_LENGTH <= len(passphrase) <= MAX_LENGTH:
        raise ValueError(f"passphrase must have {MIN_LENGTH}-{MAX_LENGTH} characters")
    salt = secrets.token_bytes(SALT_BYTES)
    return salt, hash_passphrase(passphrase, salt), SCRYPT_N


def passphrase_matches(passphrase: str, salt: bytes, stored: bytes, n: int) -> bool:
    return hmac.compare_digest(hash_passphrase(passphrase, salt, n), stored)


# An unknown account is checked against this record: same N, so the same work (Rule 2).
DUMMY_RECORD: PassphraseRecord = (secrets.token_bytes(SALT_BYTES), secrets.token_bytes(32),
                                  SCRYPT_N)  # fmt: skip


def check(passphrase: str, record: PassphraseRecord | None) -> bool:
    """One scrypt, account or not (Rule 2); True only for a known account's passphrase."""
    salt, stored, n = record if record is not None else DUMMY_RECORD
    ok = passphrase_matches(passphrase[:MAX_LENGTH], salt, stored, n)
    return ok and record is not None
