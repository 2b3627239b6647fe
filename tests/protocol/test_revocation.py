"""CRLs and the BCI: issuance, openssl interop, revocation during path validation."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protocol import codec, primitives
from protocol.certs import CertType, KeyUse
from protocol.chain import Expect, validate_path
from protocol.errors import ErrorCode, ProtocolError
from protocol.revocation import (
    RevocationState,
    certificate_crl_id,
    crl_number,
    issue_bci,
    issue_crl,
    load_crl,
    open_bci,
)
from protocol.signed import SignedData
from tests.protocol.pki import NOW, Party, Pki, pem, revocation_material, shared_pki
from tests.softkeys import SoftKey

GATEWAY_KX = Expect(CertType.GATEWAY, KeyUse.KEY_EXCHANGE, "visa")


@pytest.fixture(params=["rsa2048", "p256"])
async def pki(request: pytest.FixtureRequest) -> Pki:
    return await shared_pki(request.param)


def _validate(pki: Pki, leaf: Party, state: RevocationState, expect: Expect = GATEWAY_KX) -> None:
    b = pki.brands["visa"]
    validate_path(
        leaf.cert, b.chain_for(leaf), root=pki.root.cert, now=NOW, expect=expect, revocation=state
    )


async def test_clean_bci_accepts_all_roles(pki: Pki) -> None:
    b = pki.brands["visa"]
    bci, crls = await revocation_material(pki, "visa")
    state = RevocationState.load(bci, b.brand.cert, crls, NOW)
    assert state.sequence == 1
    assert state.required() == {
        primitives.thumbprint(c.cert.public_bytes(serialization.Encoding.DER)): 1
        for c in (pki.root, b.brand, b.pca)
    }
    _validate(pki, b.gateway_kx, state)
    _validate(pki, b.gateway_sig, state, Expect(CertType.GATEWAY, KeyUse.SIGNATURE))
    _validate(pki, b.merchant_sig, state, Expect(CertType.MERCHANT, KeyUse.SIGNATURE))
    _validate(pki, b.cardholder, state, Expect(CertType.CARDHOLDER, KeyUse.SIGNATURE))


async def test_revoked_gateway_certificate_is_refused(pki: Pki) -> None:
    b = pki.brands["visa"]
    bci, crls = await revocation_material(
        pki, "visa", revoked_by_pca=[b.gateway_kx.cert.serial_number], sequence=2
    )
    state = RevocationState.load(bci, b.brand.cert, crls, NOW)
    with pytest.raises(ProtocolError) as err:
        _validate(pki, b.gateway_kx, state)
    assert err.value.code is ErrorCode.REVOKED_CERTIFICATE
    # The gateway's signature certificate, not on the CRL, still passes.
    _validate(pki, b.gateway_sig, state, Expect(CertType.GATEWAY, KeyUse.SIGNATURE))


async def test_revoked_ca_refuses_everything_below_it(pki: Pki) -> None:
    b = pki.brands["visa"]
    bci, crls = await revocation_material(
        pki, "visa", revoked_by_brand=[b.pca.cert.serial_number], sequence=3
    )
    state = RevocationState.load(bci, b.brand.cert, crls, NOW)
    for leaf, use in ((b.gateway_kx, KeyUse.KEY_EXCHANGE), (b.gateway_sig, KeyUse.SIGNATURE)):
        expect = Expect(CertType.GATEWAY, use, "visa")
        with pytest.raises(ProtocolError) as err:
            _validate(pki, leaf, state, expect)
        assert err.value.code is ErrorCode.REVOKED_CERTIFICATE
    _validate(pki, b.merchant_sig, state, Expect(CertType.MERCHANT, KeyUse.SIGNATURE))


async def test_named_crl_that_is_not_held_is_missing(pki: Pki) -> None:
    b = pki.brands["visa"]
    bci, crls = await revocation_material(pki, "visa")
    state = RevocationState.load(bci, b.brand.cert, crls[:2], NOW)  # PCA's CRL left out
    with pytest.raises(ProtocolError) as err:
        _validate(pki, b.gateway_kx, state)
    assert err.value.code is ErrorCode.MISSING_CERTIFICATE
    # An older CRL of the right CA does not stand in for the named number.
    old_bci, old_crls = await revocation_material(pki, "visa", sequence=5)
    mixed = RevocationState.load(old_bci, b.brand.cert, [*old_crls[:2], crls[2]], NOW)
    with pytest.raises(ProtocolError) as err:
        _validate(pki, b.gateway_kx, mixed)
    assert err.value.code is ErrorCode.MISSING_CERTIFICATE


async def test_forged_crl_is_refused(pki: Pki) -> None:
    b = pki.brands["visa"]
    bci, crls = await revocation_material(pki, "visa")
    # Same issuer name and number, signed by another key: it must not count as the PCA's CRL.
    rogue = Party(SoftKey(b.pca.key.suite), b.pca.cert)
    with pytest.raises(ProtocolError) as err:
        await issue_crl(
            issuer_key=rogue.key,
            issuer_cert=rogue.cert,
            number=1,
            revoked=[],
            this_update=NOW,
            next_update=NOW + timedelta(days=1),
        )
    assert err.value.code is ErrorCode.SIGNATURE_FAILURE
    forged_state = RevocationState.load(bci, b.brand.cert, [*crls[:2], _resign(crls[2])], NOW)
    with pytest.raises(ProtocolError) as err:
        _validate(pki, b.gateway_kx, forged_state)
    assert err.value.code is ErrorCode.SIGNATURE_FAILURE
    # A forged copy held beside the genuine CRL neither hides nor replaces it.
    revoking_bci, revoking = await revocation_material(
        pki, "visa", revoked_by_pca=[b.gateway_kx.cert.serial_number], sequence=9
    )
    both = RevocationState.load(
        revoking_bci, b.brand.cert, [*revoking[:2], _resign(revoking[2]), revoking[2]], NOW
    )
    with pytest.raises(ProtocolError) as err:
        _validate(pki, b.gateway_kx, both)
    assert err.value.code is ErrorCode.REVOKED_CERTIFICATE


def _resign(crl_der: bytes) -> bytes:
    """The same CRL with one signature bit flipped (last byte of the DER is signature)."""
    return crl_der[:-1] + bytes([crl_der[-1] ^ 1])


async def test_bci_must_come_from_the_paths_brand(pki: Pki) -> None:
    visa, jcb = pki.brands["visa"], pki.brands["jcb"]
    jcb_bci, jcb_crls = await revocation_material(pki, "jcb")
    with pytest.raises(ProtocolError) as err:
        open_bci(jcb_bci, visa.brand.cert, NOW)
    assert err.value.code is ErrorCode.SIGNATURE_FAILURE
    jcb_state = RevocationState.load(jcb_bci, jcb.brand.cert, jcb_crls, NOW)
    with pytest.raises(ProtocolError) as err:
        _validate(pki, visa.gateway_kx, jcb_state)
    assert err.value.code is ErrorCode.INVALID_CERTIFICATE


async def test_bci_window_and_tampering(pki: Pki) -> None:
    b = pki.brands["visa"]
    bci, _ = await revocation_material(pki, "visa")
    for when in (NOW - timedelta(hours=2), NOW + timedelta(days=8)):
        with pytest.raises(ProtocolError) as err:
            open_bci(bci, b.brand.cert, when)
        assert err.value.code is ErrorCode.EXPIRED_CERTIFICATE
    signed = codec.decode(SignedData, bci)
    # Flip every bit of the signed content: the signature must catch each one.
    for i in range(len(signed.content) * 8):
        content = bytearray(signed.content)
        content[i // 8] ^= 1 << (i % 8)
        tampered = codec.encode(
            SignedData(signed.content_type, signed.signer, bytes(content), signed.signature)
        )
        with pytest.raises(ProtocolError) as err:
            open_bci(tampered, b.brand.cert, NOW)
        assert err.value.code is ErrorCode.SIGNATURE_FAILURE, i
    with pytest.raises(ProtocolError) as err:
        open_bci(bci[:-3], b.brand.cert, NOW)
    assert err.value.code is ErrorCode.DECODING_FAILURE


async def test_only_a_brand_ca_signs_a_bci(pki: Pki) -> None:
    b = pki.brands["visa"]
    with pytest.raises(ProtocolError) as err:
        await issue_bci(
            brand_key=b.pca.key,
            brand_cert=b.pca.cert,
            sequence=1,
            crls=[],
            not_before=NOW,
            not_after=NOW + timedelta(days=1),
        )
    assert err.value.code is ErrorCode.INVALID_CERTIFICATE


async def test_crl_fields_and_openssl(pki: Pki, tmp_path: Path) -> None:
    b = pki.brands["visa"]
    revoked = b.gateway_kx.cert.serial_number
    crl_der = await issue_crl(
        issuer_key=b.pca.key,
        issuer_cert=b.pca.cert,
        number=42,
        revoked=[(revoked, NOW - timedelta(hours=1))],
        this_update=NOW - timedelta(hours=1),
        next_update=NOW + timedelta(days=7),
    )
    crl = load_crl(crl_der, b.pca.cert)
    assert crl_number(crl) == 42
    assert crl.get_revoked_certificate_by_serial_number(revoked) is not None
    assert certificate_crl_id(b.pca.cert, 42).number == 42
    # The real tool: the CRL verifies under the PCA, and a CRL-checking verify refuses the cert.
    crl_pem = x509.load_der_x509_crl(crl_der).public_bytes(serialization.Encoding.PEM)
    (tmp_path / "crl.pem").write_bytes(crl_pem)
    (tmp_path / "root.pem").write_bytes(pem(pki.root.cert))
    (tmp_path / "chain.pem").write_bytes(pem(b.pca.cert) + pem(b.brand.cert))
    (tmp_path / "pca.pem").write_bytes(pem(b.pca.cert))
    for name, party in (("revoked", b.gateway_kx), ("fine", b.gateway_sig)):
        (tmp_path / f"{name}.pem").write_bytes(pem(party.cert))
    check = subprocess.run(
        ["openssl", "crl", "-in", str(tmp_path / "crl.pem"), "-noout", "-CAfile",
         str(tmp_path / "pca.pem")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert check.returncode == 0 and "verify OK" in check.stderr + check.stdout
    base = [
        "openssl", "verify", "-crl_check", "-attime", str(int(NOW.timestamp())),
        "-CAfile", str(tmp_path / "root.pem"), "-untrusted", str(tmp_path / "chain.pem"),
        "-CRLfile", str(tmp_path / "crl.pem"),
    ]  # fmt: skip
    revoked_run = subprocess.run(
        [*base, str(tmp_path / "revoked.pem")], capture_output=True, text=True, timeout=30
    )
    assert revoked_run.returncode != 0
    assert "certificate revoked" in revoked_run.stdout + revoked_run.stderr
    fine_run = subprocess.run(
        [*base, str(tmp_path / "fine.pem")], capture_output=True, text=True, timeout=30
    )
    assert fine_run.returncode == 0, fine_run.stdout + fine_run.stderr


async def test_garbage_crl_is_refused(pki: Pki) -> None:
    b = pki.brands["visa"]
    with pytest.raises(ProtocolError) as err:
        load_crl(b"\x30\x03\x02\x01\x01", b.pca.cert)
    assert err.value.code is ErrorCode.INVALID_CERTIFICATE
