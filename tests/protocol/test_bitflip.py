"""Exhaustive single-bit flips: every bit of one sample of each treatment, on both suites.

Each flipped encoding must raise ``ProtocolError`` with one of the codes the treatment may
give — never another exception, never success. Payloads are small so the RSA samples (one OAEP
decrypt per flip that survives decoding) stay fast.

Not here, on purpose: a bare L(t1, t2) protects nothing about t1 by itself; it is tested inside
the structures that protect it (OIDualSigned through the dual signature, EX/EXH bulk parts).
OIUnsigned likewise carries no protection of its own (the cardholder has no key).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol import codec, detached, dualsig, envelope, linkage, pan, pin, primitives, treatments
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import SUITES, Suite
from protocol.messages import CurrAmt, PIHead, PinEntry, PurchaseInputs, TransIDs
from tests.softkeys import SoftKey

E = ErrorCode
ENVELOPE_CODES = {E.DECODING_FAILURE, E.DECRYPTION_FAILURE, E.LINKAGE_FAILURE}
SIGNED_ENVELOPE_CODES = ENVELOPE_CODES | {E.SIGNATURE_FAILURE, E.THUMBS_MISMATCH}

Opener = Callable[[bytes], Awaitable[object]]


@dataclass
class Sample:
    data: bytes
    open: Opener
    codes: set[ErrorCode]


@functools.cache
def party(suite_name: str, name: str) -> tuple[SoftKey, bytes]:
    key = SoftKey(SUITES[suite_name], label=f"{name}-{suite_name}")
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, primitives.thumbprint(der)


def _sync(fn: Callable[[bytes], object]) -> Opener:
    async def run(data: bytes) -> object:
        return fn(data)

    return run


async def make_sample(suite: Suite, name: str) -> Sample:
    s, st = party(suite.name, "sender")
    r, rt = party(suite.name, "recipient")
    _, mt = party(suite.name, "merchant")
    sp, rp = s.public_key(), r.public_key()
    enc_args = (s, st, suite, rp, rt, "T")
    t, p, b = b"t", b"p", b"b"

    if name == "DD":
        data = codec.encode(linkage.dd("OIData", t))
        return Sample(
            data,
            _sync(lambda d: linkage.check_dd(codec.decode(linkage.DigestedData, d), "OIData", t)),
            {E.DECODING_FAILURE, E.LINKAGE_FAILURE},
        )
    if name == "SO":
        data = await detached.make_detached(s, st, "T", t)
        return Sample(
            data,
            _sync(lambda d: detached.open_detached(d, sp, "T", t)),
            {E.DECODING_FAILURE, E.SIGNATURE_FAILURE},
        )
    if name in ("E", "EH"):
        make, open_ = {
            "E": (envelope.make_e, envelope.open_e),
            "EH": (envelope.make_eh, envelope.open_eh),
        }[name]
        data = await make(suite, rp, rt, "T", t, b"ctx")
        return Sample(data, lambda d: open_(r, rt, d, "T", b"ctx"), ENVELOPE_CODES)
    if name in ("EX", "EXH"):
        make, open_ = {
            "EX": (envelope.make_ex, envelope.open_ex),
            "EXH": (envelope.make_exh, envelope.open_exh),
        }[name]
        data = await make(suite, rp, rt, "T", t, p)
        return Sample(data, lambda d: open_(r, rt, d, "T"), ENVELOPE_CODES)
    if name == "Enc":
        data = await treatments.make_enc(*enc_args, t)
        return Sample(data, lambda d: treatments.open_enc(r, rt, d, sp, "T"), SIGNED_ENVELOPE_CODES)
    if name == "EncB":
        data = await treatments.make_encb(*enc_args, t, b)
        return Sample(
            data, lambda d: treatments.open_encb(r, rt, d, sp, "T"), SIGNED_ENVELOPE_CODES
        )
    if name == "EncX":
        data = await treatments.make_encx(*enc_args, t, p)
        return Sample(
            data, lambda d: treatments.open_encx(r, rt, d, sp, "T"), SIGNED_ENVELOPE_CODES
        )
    if name == "EncBX":
        data = await treatments.make_encbx(*enc_args, t, p, b)
        return Sample(
            data, lambda d: treatments.open_encbx(r, rt, d, sp, "T"), SIGNED_ENVELOPE_CODES
        )
    if name == "EncK":
        k = bytes(range(32))
        data = await treatments.make_enck(k, s, st, "T", t, b"rrpid")
        return Sample(
            data,
            _sync(lambda d: treatments.open_enck(k, d, sp, "T", b"rrpid")),
            {E.DECODING_FAILURE, E.DECRYPTION_FAILURE, E.SIGNATURE_FAILURE, E.THUMBS_MISMATCH},
        )
    if name in ("PIDualSigned", "OIDualSigned"):
        parts = await dualsig.make_dual_signed(s, st, suite, rp, rt, mt, b"h", b"pan", b"oi")
        if name == "PIDualSigned":  # only the gateway can check the sealed half
            return Sample(
                parts.pi,
                lambda d: dualsig.open_at_gateway(d, r, rt, sp, mt, dualsig.oi_digest(b"oi")),
                SIGNED_ENVELOPE_CODES,
            )
        return Sample(
            parts.oi,
            _sync(lambda d: dualsig.verify_at_merchant(parts.pi, d, sp, mt, rt)),
            {E.DECODING_FAILURE, E.SIGNATURE_FAILURE},
        )
    if name == "PIDualSigned+PIN":  # OPE: opened the keystore's way, PIN block to the ZPK
        account = pan.Account(pan.AccountKind.BANK, "1234567", bank_code="0001")
        data = codec.encode(pan.make_pan_data(account, "3012", bytes(32)))
        xid = bytes(range(32))
        head = codec.encode(PIHead(
            TransIDs(b"lid-c", None, xid, 1_700_000_000_000, None, "en"),
            PurchaseInputs(bytes(32), CurrAmt("JPY", 1)), "M-1", bytes(32), bytes(32), None,
            bytes(32), "t", None, pan.AccountKind.BANK, PinEntry.PIN_ANY,
        ))  # fmt: skip
        seal = await pin.seal_pin(suite, rp, rt, xid, "1234", "1234567")
        parts = await dualsig.make_dual_signed(s, st, suite, rp, rt, mt, head, data, b"oi", seal)
        zpk = Cipher(algorithms.AES(bytes(32)), modes.ECB()).encryptor().update
        opener = dualsig.KeyAccountOpener(r, zpk)
        return Sample(
            parts.pi,
            lambda d: dualsig.open_at_gateway(d, opener, rt, sp, mt, dualsig.oi_digest(b"oi")),
            SIGNED_ENVELOPE_CODES,
        )
    if name == "PIUnsigned":
        parts = await dualsig.make_unsigned(suite, rp, rt, b"h", b"pan", b"oi")
        return Sample(
            parts.pi,
            lambda d: dualsig.open_unsigned_at_gateway(d, r, rt, dualsig.oi_digest(b"oi")),
            ENVELOPE_CODES,
        )
    raise AssertionError(name)


TREATMENTS = [
    "DD", "SO", "E", "EH", "EX", "EXH", "Enc", "EncB", "EncX", "EncBX", "EncK",
    "PIDualSigned", "PIDualSigned+PIN", "OIDualSigned", "PIUnsigned",
]  # fmt: skip


@pytest.mark.parametrize("name", TREATMENTS)
@pytest.mark.parametrize("suite_name", ["rsa2048", "p256"])
async def test_every_single_bit_flip_is_rejected(suite_name: str, name: str) -> None:
    sample = await make_sample(SUITES[suite_name], name)
    await sample.open(sample.data)  # the untouched sample opens
    buf = bytearray(sample.data)
    seen: set[ErrorCode] = set()
    for i in range(len(buf) * 8):
        buf[i // 8] ^= 1 << (i % 8)
        try:
            await sample.open(bytes(buf))
        except ProtocolError as exc:
            assert exc.code in sample.codes, (i, exc)
            seen.add(exc.code)
        else:
            raise AssertionError(f"{name}: flip of bit {i} of {len(buf)} bytes was accepted")
        finally:
            buf[i // 8] ^= 1 << (i % 8)
    # the flips reach past the decoder into the check that guards each part
    assert MUST_SEE[name] <= seen, seen


MUST_SEE = {
    "DD": {E.LINKAGE_FAILURE},
    "SO": {E.SIGNATURE_FAILURE},
    "E": {E.DECRYPTION_FAILURE},
    "EH": {E.DECRYPTION_FAILURE},
    "EX": {E.DECRYPTION_FAILURE},
    "EXH": {E.DECRYPTION_FAILURE},
    "Enc": {E.DECRYPTION_FAILURE},
    "EncB": {E.DECRYPTION_FAILURE, E.LINKAGE_FAILURE},  # baggage flips: the signed DD(b)
    "EncX": {E.DECRYPTION_FAILURE},
    "EncBX": {E.DECRYPTION_FAILURE, E.LINKAGE_FAILURE},
    "EncK": {E.DECRYPTION_FAILURE},
    "PIDualSigned": {E.DECRYPTION_FAILURE, E.SIGNATURE_FAILURE},
    "PIDualSigned+PIN": {E.DECRYPTION_FAILURE, E.SIGNATURE_FAILURE},
    "OIDualSigned": {E.SIGNATURE_FAILURE},
    "PIUnsigned": {E.DECRYPTION_FAILURE},
}
