"""OPE PINs and ISO 9564-1 PIN blocks: format 0 (clear, PAN-bound) and format 4 (AES).

Rule 1: a PIN is 4-12 decimal digits; anything else is refused with ``invalidField``.
Rule 2: no PIN, PIN block or PIN key ever appears in ``repr``, logs or error details.
Rule 3: a PIN block is bound to its account number; decoding with another account fails
(format 0: the structure breaks; format 4: the fill check fails) with ``invalidField``.
Rule 4: format 4 is computed over a ``BlockCipher`` (one AES block in, one out), so the key
may stay in a token: the keystore passes CKM_AES_ECB under the ZPK; tests pass key bytes.
Rule 5: the cardholder's thin client seals its format 0 block (8 bytes) to the gateway's
key-exchange certificate (``seal_pin``: content type "PINBlock", the block in the wrap's
sealed part, context = the purchase's XID), so the server wallet never holds a clear PIN.
Only the gateway's keystore opens the seal (``seal_wrap`` + ``finish_open_seal`` with the
token's decrypt/derive) and translates the block (``translate_to_format4``) to format 4
under the ZPK shared with the issuer. A seal opened for another XID fails to decrypt.
A 16-byte (format 4) block in a seal is refused: the cardholder shares no AES key with the HSM.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Annotated

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol import codec, envelope, keywrap
from protocol.codec import MaxLen
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import KeyType, PrivateKey, PublicKey, Suite

_PIN = re.compile(r"[0-9]{4,12}")
_DIGITS = re.compile(r"[0-9]+")
AES_KEY_SIZES = (16, 24, 32)
FORMAT0_BYTES = 8
FORMAT4_BYTES = 16
BlockCipher = Callable[[bytes], bytes]  # one 16-byte AES block under a key held elsewhere


class PinBlockFormat(IntEnum):
    ISO0 = 0
    ISO4 = 4


@dataclass(frozen=True, slots=True)
class PinBlock:
    """A PIN block as it travels in the OAEP-protected part of an OPE payment instruction."""

    format: PinBlockFormat
    block: Annotated[bytes, MaxLen(16)] = field(repr=False)  # 8 (format 0) or 16 (format 4)


codec.validate_schema(PinBlock)


def _invalid(detail: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_FIELD, detail)


def validate_pin(pin: str) -> None:
    """A PIN is 4-12 decimal digits. Raises ``ProtocolError(invalidField)``."""
    if not isinstance(pin, str) or not _PIN.fullmatch(pin):
        raise _invalid("PIN must be 4-12 digits")


def _account_digits(number: str) -> str:
    if not _DIGITS.fullmatch(number) or not 1 <= len(number) <= 19:
        raise _invalid("account number for the PIN block must be 1-19 digits")
    return number


# --- format 0 -------------------------------------------------------------------------------


def _format0_pan_field(number: str) -> bytes:
    # 0000 + the 12 rightmost digits excluding the check digit (ISO 9564-1 §9.3.1).
    digits = _account_digits(number)[:-1][-12:].rjust(12, "0")
    return bytes.fromhex("0000" + digits)


def encode_format0(pin: str, number: str) -> bytes:
    """ISO 9564 format 0 block (8 bytes): PIN field ⊕ PAN field. Clear: encrypt it next."""
    validate_pin(pin)
    pin_field = bytes.fromhex(f"0{len(pin):X}{pin}".ljust(16, "F"))
    return bytes(a ^ b for a, b in zip(pin_field, _format0_pan_field(number), strict=True))


def decode_format0(block: bytes, number: str) -> str:
    """The PIN of a format 0 block bound to ``number``. Raises ``ProtocolError``."""
    if len(block) != FORMAT0_BYTES:
        raise _invalid("format 0 PIN block must be 8 bytes")
    nibbles = bytes(a ^ b for a, b in zip(block, _format0_pan_field(number), strict=True)).hex()
    return _parse_pin_nibbles(nibbles, control="0", fill="f", width=16)


def _parse_pin_nibbles(nibbles: str, *, control: str, fill: str, width: int) -> str:
    if nibbles[0] != control:
        raise _invalid("PIN block has the wrong control field")
    length = int(nibbles[1], 16)
    if not 4 <= length <= 12:
        raise _invalid("PIN block has a bad PIN length")
    pin, padding = nibbles[2 : 2 + length], nibbles[2 + length : width]
    if not pin.isdigit() or padding != fill * len(padding):
        raise _invalid("PIN block does not decode (wrong account or key?)")
    return pin


# --- format 4 -------------------------------------------------------------------------------


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _aes(key: bytes, block: bytes, *, decrypt: bool) -> bytes:
    if len(key) not in AES_KEY_SIZES:
        raise _invalid("PIN key must be an AES key")
    # ECB on exactly one block is the ISO 9564 format 4 construction, not a mode choice.
    cipher = Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(block) + ctx.finalize()


def format4_pin_field(pin: str, random_fill: bytes | None = None) -> bytes:
    """Plain PIN field: 4, length, PIN, 'A' fill to 16 nibbles, then 8 random bytes."""
    validate_pin(pin)
    fill = secrets.token_bytes(8) if random_fill is None else random_fill
    if len(fill) != 8:
        raise _invalid("format 4 random fill must be 8 bytes")
    return bytes.fromhex(f"4{len(pin):X}{pin}".ljust(16, "A")) + fill


def format4_pan_field(number: str) -> bytes:
    """Plain PAN field: M = length - 12, the account digits (left-padded to 12), 0 fill."""
    digits = _account_digits(number)
    m = max(len(digits) - 12, 0)
    return bytes.fromhex(f"{m}{digits.rjust(12, '0')}".ljust(32, "0"))


def _key_cipher(key: bytes, *, decrypt: bool) -> BlockCipher:
    if len(key) not in AES_KEY_SIZES:
        raise _invalid("PIN key must be an AES key")
    return lambda block: _aes(key, block, decrypt=decrypt)


def encipher_format4_with(
    encrypt: BlockCipher, pin: str, number: str, random_fill: bytes | None = None
) -> bytes:
    """Format 4 with the AES encryption of the PIN key given as a block function."""
    intermediate = encrypt(format4_pin_field(pin, random_fill))
    return encrypt(_xor(intermediate, format4_pan_field(number)))


def decipher_format4_with(decrypt: BlockCipher, block: bytes, number: str) -> str:
    """The PIN of a format 4 block, the AES decryption given as a block function."""
    if len(block) != FORMAT4_BYTES:
        raise _invalid("format 4 PIN block must be 16 bytes")
    pan_field = format4_pan_field(number)
    pin_field = decrypt(_xor(decrypt(block), pan_field))
    return _parse_pin_nibbles(pin_field[:8].hex(), control="4", fill="a", width=16)


def encipher_format4(key: bytes, pin: str, number: str, random_fill: bytes | None = None) -> bytes:
    """ISO 9564-1:2017 format 4: AES(K, AES(K, PIN field) ⊕ PAN field), 16 bytes."""
    return encipher_format4_with(_key_cipher(key, decrypt=False), pin, number, random_fill)


def decipher_format4(key: bytes, block: bytes, number: str) -> str:
    """The PIN of a format 4 block for ``number`` under ``key``. Raises ``ProtocolError``."""
    return decipher_format4_with(_key_cipher(key, decrypt=True), block, number)


def translate_to_format4(pi_block: bytes, number: str, encrypt: BlockCipher) -> bytes:
    """A PI's format 0 block for ``number``, re-enciphered as format 4 under ``encrypt``'s key.

    The clear PIN exists only inside this call (the keystore's memory). Raises ``ProtocolError``.
    """
    if len(pi_block) != FORMAT0_BYTES:
        raise _invalid("a payment instruction carries an 8-byte ISO 9564 format 0 PIN block")
    return encipher_format4_with(encrypt, decode_format0(pi_block, number), number)


def make_pin_block(
    fmt: PinBlockFormat, pin: str, number: str, key: bytes | None = None
) -> PinBlock:
    """A ``PinBlock`` record; format 4 needs the AES PIN key."""
    if fmt is PinBlockFormat.ISO0:
        return PinBlock(fmt, encode_format0(pin, number))
    if key is None:
        raise _invalid("format 4 needs a PIN key")
    return PinBlock(fmt, encipher_format4(key, pin, number))


def read_pin_block(record: PinBlock, number: str, key: bytes | None = None) -> str:
    """The PIN inside ``record``; checks the block's length for its format."""
    if record.format is PinBlockFormat.ISO0:
        return decode_format0(record.block, number)
    if key is None:
        raise _invalid("format 4 needs a PIN key")
    return decipher_format4(key, record.block, number)


# --- PIN verification value -----------------------------------------------------------------

PVV_BYTES = 8
PVV_LABEL = b"setpay/pvv/v1\x00"


def pvv_input(account: str, pin: str) -> bytes:
    """The bytes the PVV HMAC runs over: label ‖ len(account) ‖ account ‖ PIN. Only a
    security module builds this (it holds the clear PIN)."""
    validate_pin(pin)
    acct = _account_digits(account).encode("ascii")
    return PVV_LABEL + len(acct).to_bytes(1, "big") + acct + pin.encode("ascii")


# --- the thin client's PIN seal (Rule 5) ------------------------------------------------------

PIN_SEAL = "PINBlock"
_SEAL_TREATMENT = "PIN"


@dataclass(frozen=True, slots=True)
class SealWrap:
    """The parts of a PIN seal the private-key holder needs, and the context they bind."""

    recipient: bytes
    context: bytes
    ephemeral: bytes
    key_block: bytes
    nonce: bytes
    ciphertext: bytes = field(repr=False)


async def seal_pin(
    suite: Suite, gateway_public: PublicKey, gateway: bytes, xid: bytes, pin: str, number: str
) -> bytes:
    """Thin client: the format 0 block of ``pin`` for account ``number``, sealed to the
    gateway key-exchange key (thumbprint ``gateway``) for purchase ``xid`` only."""
    record = codec.encode(PinBlock(PinBlockFormat.ISO0, encode_format0(pin, number)))
    return await envelope.seal(
        suite, gateway_public, gateway, _SEAL_TREATMENT, PIN_SEAL, b"", extra=record, context=xid
    )


def seal_wrap(sealed: bytes, xid: bytes) -> SealWrap:
    """The wrap of a PIN seal, its context bound to ``xid``; refuses another content type."""
    env = codec.decode(envelope.Envelope, sealed)
    if env.content_type != PIN_SEAL:
        raise ProtocolError(ErrorCode.DECODING_FAILURE, "not a PIN seal")
    context = envelope.context_bytes(_SEAL_TREATMENT, PIN_SEAL, env.recipient, xid)
    return SealWrap(
        env.recipient, context, env.ephemeral, env.key_block, env.nonce, env.ciphertext
    )


def finish_open_seal(key_type: KeyType, wrap: SealWrap, secret: bytes) -> bytes:
    """The format 0 block of a PIN seal, given the private-key step's ``secret`` (OAEP
    plaintext or HKDF output, as ``keywrap.finish_unwrap`` takes it). Only a keystore runs
    this. Raises ``ProtocolError`` (DECRYPTION_FAILURE for another XID or a damaged seal)."""
    opened = keywrap.finish_unwrap(key_type, wrap.context, wrap.key_block, secret, False, True)
    if keywrap.aead_open(opened.key, wrap.nonce, wrap.ciphertext, wrap.context) != b"":
        raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "PIN seal has an unexpected body")
    assert opened.extra is not None  # finish_unwrap enforces the block's shape
    record = codec.decode(PinBlock, opened.extra)
    if record.format is not PinBlockFormat.ISO0 or len(record.block) != FORMAT0_BYTES:
        raise _invalid("a PIN seal carries an 8-byte ISO 9564 format 0 PIN block")
    return record.block


async def open_pin_seal(key: PrivateKey, sealed: bytes, xid: bytes) -> bytes:
    """``finish_open_seal`` with a ``PrivateKey`` (software keys in tests and tools)."""
    wrap = seal_wrap(sealed, xid)
    key_type = key.suite.key_type
    keywrap.check_wrap_shape(key_type, wrap.ephemeral)
    if key_type is KeyType.RSA:
        secret = await key.decrypt(wrap.key_block)
    else:
        info = keywrap.ec_info(wrap.context, wrap.ephemeral)
        secret = await key.derive(wrap.ephemeral, info, 2 * keywrap.KEY_BYTES)
    return finish_open_seal(key_type, wrap, secret)


def is_pin_seal_block(extra: bytes) -> bool:
    """True if a wrap's sealed part is a PIN seal's block (keystore guard for plain decrypt)."""
    try:
        codec.decode(PinBlock, extra)
    except ProtocolError:
        return False
    return True
