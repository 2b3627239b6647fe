"""Round trips and targeted failures of the crypto treatments, on both suites (software keys)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization

from protocol import codec, detached, envelope, keywrap, linkage, primitives, treatments
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import SUITES, PublicKey, Suite
from tests.softkeys import SoftKey

SUITE_NAMES = ["rsa2048", "p256"]


def thumb(public: PublicKey) -> bytes:
    """Stand-in for a certificate thumbprint: SHA-256 of the public key's DER."""
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return primitives.thumbprint(der)


@dataclass
class Party:
    key: SoftKey
    thumb: bytes

    @property
    def public(self) -> PublicKey:
        return self.key.public_key()


@functools.cache
def party(suite_name: str, name: str) -> Party:
    key = SoftKey(SUITES[suite_name], label=f"{name}-{suite_name}")
    return Party(key, thumb(key.public_key()))


@pytest.fixture(params=SUITE_NAMES)
def suite(request: pytest.FixtureRequest) -> Suite:
    return SUITES[request.param]


def trio(suite: Suite) -> tuple[Party, Party, Party]:
    return party(suite.name, "sender"), party(suite.name, "recipient"), party(suite.name, "other")


def code_of(exc: pytest.ExceptionInfo[ProtocolError]) -> ErrorCode:
    return exc.value.code


# --- DD / L / SO ------------------------------------------------------------------------


def test_dd_binds_data_and_label() -> None:
    link = linkage.dd("OIData", b"order")
    linkage.check_dd(link, "OIData", b"order")
    with pytest.raises(ProtocolError) as exc:
        linkage.check_dd(link, "OIData", b"orden")
    assert code_of(exc) is ErrorCode.LINKAGE_FAILURE
    with pytest.raises(ProtocolError) as exc:
        linkage.check_dd(link, "PIData", b"order")
    assert code_of(exc) is ErrorCode.LINKAGE_FAILURE


def test_linked_round_trip_and_mismatch() -> None:
    data = linkage.make_linked(b"head", "OIData", b"order")
    assert linkage.open_linked(data, "OIData", b"order").content == b"head"
    with pytest.raises(ProtocolError) as exc:
        linkage.open_linked(data, "OIData", b"other order")
    assert code_of(exc) is ErrorCode.LINKAGE_FAILURE


async def test_detached_signature(suite: Suite) -> None:
    sender, _, other = trio(suite)
    so = await detached.make_detached(sender.key, sender.thumb, "PI-TBS", b"tbs")
    assert detached.open_detached(so, sender.public, "PI-TBS", b"tbs") == sender.thumb
    for args, code in [
        ((so, sender.public, "PI-TBS", b"tbz"), ErrorCode.SIGNATURE_FAILURE),
        ((so, other.public, "PI-TBS", b"tbs"), ErrorCode.SIGNATURE_FAILURE),
        ((so, sender.public, "OIData", b"tbs"), ErrorCode.DECODING_FAILURE),
    ]:
        with pytest.raises(ProtocolError) as exc:
            detached.open_detached(*args)
        assert code_of(exc) is code


async def test_detached_is_not_an_s_signature(suite: Suite) -> None:
    """SO and S over the same bytes are domain-separated: one never verifies as the other."""
    from protocol.signed import SignedData, open_signed

    sender, _, _ = trio(suite)
    so = codec.decode(
        detached.DetachedSignature,
        await detached.make_detached(sender.key, sender.thumb, "X", b"t"),
    )
    forged = SignedData("X", sender.thumb, b"t", so.signature)
    with pytest.raises(ProtocolError) as exc:
        open_signed(forged, sender.public, "X")
    assert code_of(exc) is ErrorCode.SIGNATURE_FAILURE


# --- E / EH / EX / EXH ------------------------------------------------------------------


async def test_e_and_eh_round_trip(suite: Suite) -> None:
    _, rcpt, _ = trio(suite)
    for make, open_ in [(envelope.make_e, envelope.open_e), (envelope.make_eh, envelope.open_eh)]:
        data = await make(suite, rcpt.public, rcpt.thumb, "CapToken", b"secret", b"rrpid")
        assert b"secret" not in data
        assert await open_(rcpt.key, rcpt.thumb, data, "CapToken", b"rrpid") == b"secret"


async def test_ex_and_exh_round_trip(suite: Suite) -> None:
    _, rcpt, _ = trio(suite)
    for make, open_ in [
        (envelope.make_ex, envelope.open_ex),
        (envelope.make_exh, envelope.open_exh),
    ]:
        data = await make(suite, rcpt.public, rcpt.thumb, "RegFormReq", b"form", b"PAN-ONLY")
        assert b"PAN-ONLY" not in data
        got = await open_(rcpt.key, rcpt.thumb, data, "RegFormReq")
        assert got == (b"form", b"PAN-ONLY")


async def test_envelope_is_fresh_each_time(suite: Suite) -> None:
    _, rcpt, _ = trio(suite)
    a = await envelope.make_e(suite, rcpt.public, rcpt.thumb, "X", b"same")
    b = await envelope.make_e(suite, rcpt.public, rcpt.thumb, "X", b"same")
    ea, eb = codec.decode(envelope.Envelope, a), codec.decode(envelope.Envelope, b)
    assert ea.nonce != eb.nonce and ea.ciphertext != eb.ciphertext
    # RSA: a fresh key under OAEP; EC: a fresh ephemeral point (the key block is empty for E)
    assert ea.ephemeral + ea.key_block != eb.ephemeral + eb.key_block


async def test_envelope_wrong_key_type_context_or_recipient(suite: Suite) -> None:
    _, rcpt, other = trio(suite)
    data = await envelope.make_eh(suite, rcpt.public, rcpt.thumb, "X", b"t", b"ctx")
    cases = [
        # another party's private key, even told it is the recipient
        ((other.key, rcpt.thumb, data, "X", b"ctx"), ErrorCode.DECRYPTION_FAILURE),
        # right key, envelope addressed elsewhere
        ((rcpt.key, other.thumb, data, "X", b"ctx"), ErrorCode.DECRYPTION_FAILURE),
        ((rcpt.key, rcpt.thumb, data, "Y", b"ctx"), ErrorCode.DECODING_FAILURE),
        ((rcpt.key, rcpt.thumb, data, "X", b"other rrpid"), ErrorCode.DECRYPTION_FAILURE),
    ]
    for args, code in cases:
        with pytest.raises(ProtocolError) as exc:
            await envelope.open_eh(*args)
        assert code_of(exc) is code


async def test_treatment_variants_do_not_open_as_each_other(suite: Suite) -> None:
    """An E cannot be passed off as EH, nor EX as EXH: the treatment is bound in the AAD/KDF."""
    _, rcpt, _ = trio(suite)
    e = await envelope.make_e(suite, rcpt.public, rcpt.thumb, "X", b"t")
    with pytest.raises(ProtocolError) as exc:
        await envelope.open_eh(rcpt.key, rcpt.thumb, e, "X")
    assert code_of(exc) is ErrorCode.DECRYPTION_FAILURE
    ex = await envelope.make_ex(suite, rcpt.public, rcpt.thumb, "X", b"t", b"p")
    with pytest.raises(ProtocolError) as exc:
        await envelope.open_exh(rcpt.key, rcpt.thumb, ex, "X")
    assert code_of(exc) is ErrorCode.DECRYPTION_FAILURE


async def test_suite_must_fit_recipient_key() -> None:
    rsa_rcpt = party("rsa2048", "recipient")
    with pytest.raises(ProtocolError) as exc:
        await envelope.make_e(SUITES["p256"], rsa_rcpt.public, rsa_rcpt.thumb, "X", b"t")
    assert code_of(exc) is ErrorCode.UNSUPPORTED_ALGORITHM


# --- wrap capacity ----------------------------------------------------------------------


def realistic_pan_data() -> bytes:
    """PANData shaped as A's record will be: {PAN (19 digits), expiry, PANSecret, EXNonce}."""
    return codec.packb(["4111111111111111111", "203012", bytes(32), bytes(32)])


async def test_pan_data_and_pin_block_fit_rsa2048_oaep_sha1() -> None:
    from protocol import dualsig

    suite = SUITES["rsa2048"]
    rcpt = party("rsa2048", "recipient")
    assert keywrap.oaep_capacity(suite, 2048) == 214
    p = codec.encode(dualsig.AccountPart(realistic_pan_data(), bytes(16)))
    # {k, H(t), p} is the largest block any treatment wraps (EXH)
    block = codec.encode(keywrap.KeyBlock(bytes(32), bytes(32), p))
    assert len(block) <= 214, len(block)
    data = await envelope.make_exh(suite, rcpt.public, rcpt.thumb, "PIUnsigned", b"t", p)
    assert (await envelope.open_exh(rcpt.key, rcpt.thumb, data, "PIUnsigned"))[1] == p


async def test_oversize_extra_fails_clearly() -> None:
    suite = SUITES["rsa2048"]
    rcpt = party("rsa2048", "recipient")
    with pytest.raises(ProtocolError) as exc:
        await envelope.make_exh(suite, rcpt.public, rcpt.thumb, "X", b"t", bytes(150))
    assert code_of(exc) is ErrorCode.INVALID_FIELD
    assert "214-byte OAEP capacity" in exc.value.detail


# --- Enc family -------------------------------------------------------------------------


async def test_enc_round_trip_and_resolver(suite: Suite) -> None:
    sender, rcpt, other = trio(suite)
    data = await treatments.make_enc(
        sender.key, sender.thumb, suite, rcpt.public, rcpt.thumb, "CapRes", b"res", b"rrpid"
    )
    opened = await treatments.open_enc(
        rcpt.key, rcpt.thumb, data, sender.public, "CapRes", b"rrpid"
    )
    assert (opened.content, opened.signer) == (b"res", sender.thumb)

    def resolve(t: bytes) -> PublicKey:
        if t == sender.thumb:
            return sender.public
        raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "unknown signer")

    opened = await treatments.open_enc(rcpt.key, rcpt.thumb, data, resolve, "CapRes", b"rrpid")
    assert opened.content == b"res"
    with pytest.raises(ProtocolError) as exc:
        await treatments.open_enc(rcpt.key, rcpt.thumb, data, other.public, "CapRes", b"rrpid")
    assert code_of(exc) is ErrorCode.SIGNATURE_FAILURE


async def test_enc_signature_names_the_recipient(suite: Suite) -> None:
    """A recipient cannot re-envelope a signed body to a third party (surreptitious forwarding)."""
    sender, rcpt, other = trio(suite)
    data = await treatments.make_enc(
        sender.key, sender.thumb, suite, rcpt.public, rcpt.thumb, "CapRes", b"res"
    )
    body, _, _ = await envelope.unseal(rcpt.key, rcpt.thumb, data, "Enc", "CapRes")
    forwarded = await envelope.seal(suite, other.public, other.thumb, "Enc", "CapRes", body)
    with pytest.raises(ProtocolError) as exc:
        await treatments.open_enc(other.key, other.thumb, forwarded, sender.public, "CapRes")
    assert code_of(exc) is ErrorCode.THUMBS_MISMATCH


async def test_encb_round_trip_and_baggage_swap(suite: Suite) -> None:
    sender, rcpt, _ = trio(suite)
    args = (sender.key, sender.thumb, suite, rcpt.public, rcpt.thumb, "AuthReq")
    one = await treatments.make_encb(*args, b"req1", b"PI-1")
    two = await treatments.make_encb(*args, b"req2", b"PI-2")
    opened = await treatments.open_encb(rcpt.key, rcpt.thumb, one, sender.public, "AuthReq")
    assert (opened.content, opened.baggage) == (b"req1", b"PI-1")
    a, b = codec.decode(treatments.Baggaged, one), codec.decode(treatments.Baggaged, two)
    swapped = codec.encode(treatments.Baggaged(a.envelope, b.baggage))
    with pytest.raises(ProtocolError) as exc:
        await treatments.open_encb(rcpt.key, rcpt.thumb, swapped, sender.public, "AuthReq")
    assert code_of(exc) is ErrorCode.LINKAGE_FAILURE


async def test_encx_and_encbx_round_trip(suite: Suite) -> None:
    sender, rcpt, _ = trio(suite)
    args = (sender.key, sender.thumb, suite, rcpt.public, rcpt.thumb)
    x = await treatments.make_encx(*args, "CertReq", b"req", b"ACCT+SECRET")
    assert b"ACCT+SECRET" not in x
    opened = await treatments.open_encx(rcpt.key, rcpt.thumb, x, sender.public, "CertReq")
    assert (opened.content, opened.extra, opened.baggage) == (b"req", b"ACCT+SECRET", None)
    bx = await treatments.make_encbx(*args, "AuthRes", b"res", b"PANTOKEN", b"captoken")
    opened = await treatments.open_encbx(rcpt.key, rcpt.thumb, bx, sender.public, "AuthRes")
    assert (opened.content, opened.extra, opened.baggage) == (b"res", b"PANTOKEN", b"captoken")


async def test_enc_family_members_are_not_interchangeable(suite: Suite) -> None:
    sender, rcpt, _ = trio(suite)
    args = (sender.key, sender.thumb, suite, rcpt.public, rcpt.thumb, "X")
    enc = await treatments.make_enc(*args, b"t")
    encx = await treatments.make_encx(*args, b"t", b"p")
    with pytest.raises(ProtocolError) as exc:
        await treatments.open_encx(rcpt.key, rcpt.thumb, enc, sender.public, "X")
    assert code_of(exc) is ErrorCode.DECRYPTION_FAILURE
    with pytest.raises(ProtocolError) as exc:
        await treatments.open_enc(rcpt.key, rcpt.thumb, encx, sender.public, "X")
    assert code_of(exc) is ErrorCode.DECRYPTION_FAILURE


async def test_enck_round_trip_and_failures(suite: Suite) -> None:
    sender, _, _ = trio(suite)
    k = bytes(range(32))
    data = await treatments.make_enck(k, sender.key, sender.thumb, "CertRes", b"nonce-cca", b"r1")
    opened = treatments.open_enck(k, data, sender.public, "CertRes", b"r1")
    assert opened.content == b"nonce-cca"
    cases = [
        ((bytes(32), data, sender.public, "CertRes", b"r1"), ErrorCode.DECRYPTION_FAILURE),
        ((k, data, sender.public, "CertRes", b"r2"), ErrorCode.DECRYPTION_FAILURE),
        ((k, data, sender.public, "CertReq", b"r1"), ErrorCode.DECODING_FAILURE),
        ((k[:16], data, sender.public, "CertRes", b"r1"), ErrorCode.INVALID_FIELD),
    ]
    for args, code in cases:
        with pytest.raises(ProtocolError) as exc:
            treatments.open_enck(*args)
        assert code_of(exc) is code
