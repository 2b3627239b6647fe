"""PIN and payment-instruction operations inside the keystore (the HSM boundary).

Rule 1: a clear PIN or PIN block exists only inside these functions' frames on the PKCS#11
thread; results are a format 4 block under the ZPK, a PVV, or a yes/no. (Python cannot wipe
``str`` buffers; the frames are short-lived and nothing is logged, audited or returned.)
Rule 2: every cipher step under the ZPK runs in the token (CKM_AES_ECB); the PVV is
CKM_SHA256_HMAC under the PVK, truncated to ``pin.PVV_BYTES``. No key is exported.
Rule 3: ``open_pi_account`` answers with ``dualsig.OpenedAccount``: bulk key, [H(t)], DD(p),
PANData and the translated block (the thin client's PIN seal, named by its digest in p, is
opened here with the same key-exchange key for the XID of the PI's own PIHead); a
PIN-bearing PI is claimed in the used-PI register after every check passed, so a refused
request changes nothing.
Rule 4: protocol failures map to faults without detail that could leak data: a PIN block
that does not decode is ``InvalidPinBlock``; a wrap that does not open is ``DecryptionFailed``;
a PIN operation without its block is ``PinBlockMissing`` (a format error, never a wrong PIN).
Rule 5: PIN verification, PVV creation, issuance and translation run under the PIN guard
(keystore/pinguard.py: per caller and per account window counts, lockout of an account's
PIN after failed verifications).
Rule 6: issuance answers a PVV, never a PIN block. ``pin_issue`` takes a PIN and returns its
PVV under the PVK: no block under a key the caller names ever comes back, so nothing it
returns can be fed to ``pin_verify`` (the old ``pin_encipher`` + ``pin_verify`` oracle). What is
left, PIN -> PVV for an account, is granted only to the identities ``Policy.issuance_grants``
lists (the test environment's issuer seeds its accounts; a production deployment names a
ceremony identity) and counted at 3 per account per hour (pinguard Rule 1).
"""

from __future__ import annotations

import hmac

from keystore import messages as m
from keystore.errors import (
    BadRequest,
    DecryptionFailed,
    InvalidPinBlock,
    KeyUsageError,
    PinBlockMissing,
    Unsupported,
)
from keystore.hsm import Hsm
from keystore.pinguard import Guarded, PinGuard
from keystore.register import UsedPiRegister
from protocol import dualsig, keywrap, pin
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import KeyType


def _encrypt(hsm: Hsm, zpk: str) -> pin.BlockCipher:
    return lambda block: hsm.aes_block(zpk, block, decrypt=False)


def _decrypt(hsm: Hsm, zpk: str) -> pin.BlockCipher:
    return lambda block: hsm.aes_block(zpk, block, decrypt=True)


def _guard(guard: PinGuard | None) -> PinGuard:
    if guard is None:
        raise Unsupported("this keystore has no PIN guard for PIN operations")
    return guard


def open_pi_account(
    hsm: Hsm,
    register: UsedPiRegister | None,
    guard: PinGuard | None,
    caller: str,
    r: m.OpenPiAccount,
) -> dualsig.OpenedAccount:
    """Unwrap a PI with the caller's key-exchange key and translate its PIN block (Rule 3)."""
    info = hsm.key_info(r.label)
    if info.usage is not m.KeyUsage.EXCHANGE:
        raise KeyUsageError(f"key {r.label} is not a key-exchange key")
    key_type = KeyType.EC if info.kind is m.KeyKind.P256 else KeyType.RSA
    try:
        wrap = dualsig.pi_wrap(r.kind, r.envelope)
        keywrap.check_wrap_shape(key_type, wrap.ephemeral)
    except ProtocolError as exc:
        raise _fault(exc) from None
    if key_type is KeyType.RSA:
        secret = hsm.decrypt(r.label, wrap.key_block, r.oaep_hash)
    else:
        info_bytes = keywrap.ec_info(wrap.context, wrap.ephemeral)
        secret = hsm.derive(r.label, wrap.ephemeral, info_bytes, 2 * keywrap.KEY_BYTES)
    zpk = r.zpk_label

    def open_pin(xid: bytes, sealed: bytes, number: str) -> bytes:
        if zpk is None:
            raise BadRequest("a PIN-bearing PI needs a zpk_label")
        _guard(guard).run(Guarded.TRANSLATE, caller, number, lambda: None)
        seal = pin.seal_wrap(sealed, xid)
        if seal.recipient != wrap.recipient:
            raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "PIN seal for another gateway")
        keywrap.check_wrap_shape(key_type, seal.ephemeral)
        if key_type is KeyType.RSA:
            seal_secret = hsm.decrypt(r.label, seal.key_block, r.oaep_hash)
        else:
            seal_info = keywrap.ec_info(seal.context, seal.ephemeral)
            seal_secret = hsm.derive(r.label, seal.ephemeral, seal_info, 2 * keywrap.KEY_BYTES)
        block = pin.finish_open_seal(key_type, seal, seal_secret)
        return pin.translate_to_format4(block, number, _encrypt(hsm, zpk))

    try:
        unwrapped = keywrap.finish_unwrap(
            key_type, wrap.context, wrap.key_block, secret, wrap.with_digest, True
        )
        opened = dualsig.open_account(r.kind, wrap, unwrapped, r.pin_seal, open_pin)
    except ProtocolError as exc:
        raise _fault(exc) from None
    if opened.pin_block is not None:
        if register is None:
            raise Unsupported("this keystore has no used-PI register for PIN-bearing PIs")
        register.claim(opened.account_digest, caller, r.use_key)
    return opened


def _pin_of(hsm: Hsm, zpk: str, account: str, block: bytes) -> str:
    try:
        return pin.decipher_format4_with(_decrypt(hsm, zpk), block, account)
    except ProtocolError:
        raise InvalidPinBlock("PIN block does not decode") from None


def _block(block: bytes) -> bytes:
    if not block:
        raise PinBlockMissing("the request carries no PIN block")
    if len(block) != pin.FORMAT4_BYTES:
        raise BadRequest("a format 4 PIN block is 16 bytes")
    return block


def _pvv_of_block(hsm: Hsm, pvk: str, zpk: str, account: str, block: bytes) -> bytes:
    clear = _pin_of(hsm, zpk, account, block)
    return hsm.hmac(pvk, pin.pvv_input(account, clear))[: pin.PVV_BYTES]


def pin_pvv(hsm: Hsm, guard: PinGuard | None, caller: str, r: m.PinPvv) -> bytes:
    """PVV of the PIN in a format 4 block under the ZPK (``InvalidPinBlock`` if it won't open)."""
    block = _block(r.pin_block)
    return _guard(guard).run(
        Guarded.PVV,
        caller,
        r.account,
        lambda: _pvv_of_block(hsm, r.label, r.zpk_label, r.account, block),
    )


def pin_verify(hsm: Hsm, guard: PinGuard | None, caller: str, r: m.PinVerify) -> bool:
    """Constant-time: does the block's PIN have PVV ``r.pvv``? A block that won't open: False.
    Refused ``PinLocked`` while the account is locked (pinguard Rule 2)."""
    block = _block(r.pin_block)

    def verify() -> bool:
        try:
            candidate = _pvv_of_block(hsm, r.label, r.zpk_label, r.account, block)
        except InvalidPinBlock:
            # Still spend one HMAC so a bad block and a wrong PIN cost about the same.
            hsm.hmac(r.label, pin.PVV_LABEL)
            return False
        return hmac.compare_digest(candidate, r.pvv)

    return _guard(guard).run(Guarded.VERIFY, caller, r.account, verify, verdict=bool)


def pin_issue(hsm: Hsm, guard: PinGuard | None, caller: str, r: m.PinIssue, secret: bytes) -> bytes:
    """The PVV of a new PIN for an account (issuance, seeding; Rule 6): no block comes back.
    ``secret`` is the ``IssuedPin`` the request sealed to the transport key."""
    issued = m.decode(m.IssuedPin, secret)
    try:
        data = pin.pvv_input(issued.account, issued.pin)
    except ProtocolError:
        raise BadRequest("PIN or account number malformed") from None
    return _guard(guard).run(
        Guarded.ISSUE, caller, issued.account, lambda: hsm.hmac(r.label, data)[: pin.PVV_BYTES]
    )


def _fault(exc: ProtocolError) -> Exception:
    if exc.code is ErrorCode.DECRYPTION_FAILURE:
        return DecryptionFailed("payment instruction wrap does not open")
    if exc.code is ErrorCode.INVALID_FIELD:
        return InvalidPinBlock("PIN block does not decode for the account")
    if exc.code is ErrorCode.UNSUPPORTED_ALGORITHM:
        return BadRequest("a PIN-bearing PI needs a zpk_label")
    return BadRequest(f"payment instruction malformed ({exc.code.name.lower()})")
