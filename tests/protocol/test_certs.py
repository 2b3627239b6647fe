"""Certificates: issuance through an external key, openssl interop, path validation."""

from __future__ import annotations

import random
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import certs, pan
from protocol.certs import CertType, KeyUse
from protocol.chain import Expect, validate_path
from protocol.errors import ErrorCode, ProtocolError
from tests.protocol.pki import (
    CARD_EXPIRY,
    CARD_PAN,
    NOW,
    YEAR,
    Party,
    Pki,
    ext,
    issue,
    pem,
    shared_pki,
)
from tests.softkeys import SoftKey

SUITES = ["rsa2048", "p256"]
AT_NOW = str(int(NOW.timestamp()))  # openssl checks validity at the tests' clock


@pytest.fixture(params=SUITES)
async def pki(request: pytest.FixtureRequest) -> Pki:
    return await shared_pki(request.param)


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)


def _leaves(pki: Pki) -> list[tuple[str, Party, list[x509.Certificate]]]:
    out = []
    for name, b in pki.brands.items():
        for role in ("cardholder", "merchant_sig", "merchant_kx", "gateway_sig", "gateway_kx"):
            party = getattr(b, role)
            out.append((f"{name}-{role}", party, b.chain_for(party)))
    return out


# --- openssl, the real tool -----------------------------------------------------------------


async def test_openssl_verifies_every_end_entity_chain(pki: Pki, tmp_path: Path) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(pem(pki.root.cert))
    leaves = _leaves(pki)
    assert len(leaves) == 10
    for label, party, chain in leaves:
        chain_file = tmp_path / f"{label}-chain.pem"
        chain_file.write_bytes(b"".join(pem(c) for c in chain))
        ee = tmp_path / f"{label}.pem"
        ee.write_bytes(pem(party.cert))
        done = _openssl(
            "verify",
            "-attime",
            AT_NOW,
            "-CAfile",
            str(root),
            "-untrusted",
            str(chain_file),
            str(ee),
        )
        assert done.returncode == 0, (label, done.stdout, done.stderr)
        assert done.stdout.strip() == f"{ee}: OK"


async def test_openssl_refuses_chain_without_intermediate(pki: Pki, tmp_path: Path) -> None:
    b = pki.brands["visa"]
    (tmp_path / "root.pem").write_bytes(pem(pki.root.cert))
    (tmp_path / "chain.pem").write_bytes(pem(b.brand.cert))  # MCA left out
    (tmp_path / "ee.pem").write_bytes(pem(b.merchant_sig.cert))
    done = _openssl(
        "verify",
        "-attime",
        AT_NOW,
        "-CAfile",
        str(tmp_path / "root.pem"),
        "-untrusted",
        str(tmp_path / "chain.pem"),
        str(tmp_path / "ee.pem"),
    )
    assert done.returncode != 0
    assert "unable to get local issuer certificate" in done.stdout + done.stderr


async def test_openssl_text_shows_the_set_role(pki: Pki, tmp_path: Path) -> None:
    expected = {
        "merchant_kx": "setpay certType=merchant brand=jcb keyUse=key-exchange merchantId=M-1001",
        "gateway_sig": "setpay certType=gateway brand=jcb keyUse=signature",
        "cardholder": "setpay certType=cardholder brand=jcb keyUse=signature",
    }
    for role, text in expected.items():
        path = tmp_path / f"{role}.pem"
        path.write_bytes(pem(getattr(pki.brands["jcb"], role).cert))
        done = _openssl("x509", "-in", str(path), "-noout", "-text")
        assert done.returncode == 0, done.stderr
        assert certs.SETPAY_ARC + ".1:" in done.stdout
        assert text in done.stdout
    root = tmp_path / "root.pem"
    root.write_bytes(pem(pki.root.cert))
    text = _openssl("x509", "-in", str(root), "-noout", "-text").stdout
    assert "setpay certType=root brand=setpay-root keyUse=signature" in text
    assert "CA:TRUE, pathlen:2" in text
    assert "Certificate Sign, CRL Sign" in text


async def test_rsa_certificates_use_pss_with_salt_32(tmp_path: Path) -> None:
    pki = await shared_pki("rsa2048")
    path = tmp_path / "m.pem"
    path.write_bytes(pem(pki.brands["visa"].merchant_sig.cert))
    text = _openssl("x509", "-in", str(path), "-noout", "-text").stdout
    assert "Signature Algorithm: rsassaPss" in text
    assert "Salt Length: 0x20" in text
    assert "Mask Algorithm: mgf1 with sha256" in text


# --- what the certificates hold ------------------------------------------------------------


async def test_extensions_follow_the_role(pki: Pki) -> None:
    b = pki.brands["visa"]
    cases = [
        (b.merchant_sig, False, dict(digital_signature=True, key_cert_sign=False)),
        (b.cca, True, dict(digital_signature=True, key_cert_sign=True, crl_sign=True)),
        (b.cardholder, False, dict(digital_signature=True, key_encipherment=False)),
    ]
    for party, is_ca, usage in cases:
        basic = party.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert basic.ca is is_ca
        ku = party.cert.extensions.get_extension_for_class(x509.KeyUsage).value
        for attr, value in usage.items():
            assert getattr(ku, attr) is value, attr
    kx = b.gateway_kx.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert kx.digital_signature is False
    if pki.suite == "rsa2048":
        assert kx.key_encipherment is True and kx.key_agreement is False
    else:
        assert kx.key_agreement is True and kx.key_encipherment is False
    pca = b.pca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert pca.path_length == 0
    set_ext = b.pca.cert.extensions.get_extension_for_oid(certs.SET_EXTENSION_OID)
    assert set_ext.critical is False
    ski = b.pca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = b.gateway_kx.cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest


async def test_set_extension_round_trips(pki: Pki) -> None:
    b = pki.brands["jcb"]
    m = certs.set_extension(b.merchant_kx.cert)
    assert (m.cert_type, m.brand, m.key_use) == (CertType.MERCHANT, "jcb", KeyUse.KEY_EXCHANGE)
    assert m.merchant == certs.MerchantData("M-1001", "Example Books", "5942")
    g = certs.set_extension(b.gateway_sig.cert)
    assert g.gateway == certs.GatewayCaps(["JPY", "USD"], pin_debit=True, sale=True)
    ch = certs.set_extension(b.cardholder.cert)
    assert ch.account_hash == pan.account_hash(b.pan_secret, b.account, CARD_EXPIRY)
    r = certs.set_extension(pki.root.cert)
    assert r.hashed_root == certs.spki_hash(pki.next_root_key.public_key())


async def test_cardholder_certificate_never_holds_the_pan(pki: Pki, tmp_path: Path) -> None:
    cert = pki.brands["visa"].cardholder.cert
    der = certs.certificate_der(cert)
    assert CARD_PAN.encode() not in der
    assert bytes.fromhex(CARD_PAN) not in der  # nor as packed BCD
    path = tmp_path / "ch.pem"
    path.write_bytes(pem(cert))
    assert CARD_PAN not in _openssl("x509", "-in", str(path), "-noout", "-text").stdout


async def test_account_hash_is_unlinkable_across_pan_secrets() -> None:
    account = pan.Account(pan.AccountKind.CARD, CARD_PAN)
    a = pan.account_hash(pan.new_secret(), account, CARD_EXPIRY)
    b = pan.account_hash(pan.new_secret(), account, CARD_EXPIRY)
    assert a != b and len(a) == 32


async def test_gateway_checks_account_hash_against_the_cardholder_cert(pki: Pki) -> None:
    b = pki.brands["visa"]
    expected = certs.set_extension(b.cardholder.cert).account_hash
    assert expected is not None
    good = pan.make_pan_data(b.account, CARD_EXPIRY, b.pan_secret)
    pan.check_account_hash(good, expected)
    for wrong in (
        pan.make_pan_data(b.account, CARD_EXPIRY, pan.new_secret()),
        pan.make_pan_data(b.account, "2911", b.pan_secret),
        pan.make_pan_data(
            pan.Account(pan.AccountKind.CARD, "4012888888881881"), CARD_EXPIRY, b.pan_secret
        ),
    ):
        with pytest.raises(ProtocolError) as err:
            pan.check_account_hash(wrong, expected)
        assert err.value.code is ErrorCode.LINKAGE_FAILURE


@pytest.mark.parametrize(
    ("cert_type", "use", "kw", "fragment"),
    [
        (CertType.CARDHOLDER, KeyUse.KEY_EXCHANGE, {"account_hash": b"\0" * 32}, "cannot hold"),
        (CertType.CARDHOLDER, KeyUse.SIGNATURE, {}, "account_hash missing"),
        (CertType.MERCHANT, KeyUse.SIGNATURE, {}, "merchant missing"),
        (
            CertType.GATEWAY,
            KeyUse.SIGNATURE,
            {"account_hash": b"\0" * 32},
            "account_hash not allowed",
        ),
        (CertType.BRAND, KeyUse.SIGNATURE, {"hashed_root": b"\0" * 32}, "hashed_root"),
        (CertType.ROOT, KeyUse.KEY_EXCHANGE, {}, "cannot hold"),
    ],
)
async def test_inconsistent_profiles_are_not_issued(
    cert_type: CertType, use: KeyUse, kw: dict[str, object], fragment: str
) -> None:
    pki = await shared_pki("p256")
    with pytest.raises(ProtocolError) as err:
        await issue(pki.brands["visa"].cca, ext(cert_type, "visa", use, **kw), "x", "p256")
    assert err.value.code is ErrorCode.INVALID_CERTIFICATE
    assert fragment in err.value.detail


def test_set_extension_decoding_refuses_garbage() -> None:
    good = certs.encode_set_extension(ext(CertType.BRAND, "visa"))
    for bad in (
        b"",
        b"\x30\x00",
        good[:-1],
        good + b"\0",
        b"\x04\x03abc",
        good.replace(b"\x0c", b"\x13", 1),
    ):
        with pytest.raises(ProtocolError) as err:
            certs.decode_set_extension(bad)
        assert err.value.code is ErrorCode.INVALID_CERTIFICATE


async def test_tampered_certificate_is_refused(pki: Pki) -> None:
    b = pki.brands["visa"]
    der = bytearray(certs.certificate_der(b.gateway_kx.cert))
    rng = random.Random(7)
    positions = rng.sample(range(len(der)), 40)
    for pos in positions:
        flipped = bytearray(der)
        flipped[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(ProtocolError) as err:
            cert = certs.load_certificate(bytes(flipped))
            validate_path(
                cert,
                b.chain_for(b.gateway_kx),
                root=pki.root.cert,
                now=NOW,
                expect=Expect(CertType.GATEWAY, KeyUse.KEY_EXCHANGE),
                revocation=None,
            )
        assert err.value.code in {
            ErrorCode.INVALID_CERTIFICATE,
            ErrorCode.SIGNATURE_FAILURE,
            ErrorCode.MISSING_CERTIFICATE,
            ErrorCode.EXPIRED_CERTIFICATE,
            ErrorCode.UNSUPPORTED_ALGORITHM,
        }, pos


# --- path validation ---------------------------------------------------------------------


async def test_valid_paths_for_each_role(pki: Pki) -> None:
    b = pki.brands["visa"]
    cases = [
        (b.cardholder, CertType.CARDHOLDER, KeyUse.SIGNATURE),
        (b.merchant_sig, CertType.MERCHANT, KeyUse.SIGNATURE),
        (b.merchant_kx, CertType.MERCHANT, KeyUse.KEY_EXCHANGE),
        (b.gateway_sig, CertType.GATEWAY, KeyUse.SIGNATURE),
        (b.gateway_kx, CertType.GATEWAY, KeyUse.KEY_EXCHANGE),
    ]
    for party, cert_type, use in cases:
        others = [*reversed(b.chain_for(party)), pki.root.cert]  # any order, root too
        path = validate_path(
            party.cert,
            others,
            root=pki.root.cert,
            now=NOW,
            expect=Expect(cert_type, use, "visa"),
            revocation=None,
        )
        assert path.leaf == party.cert
        assert [certs.set_extension(c).cert_type for c in path.certificates][1:] == [
            certs.ISSUER_TYPE[cert_type],
            CertType.BRAND,
            CertType.ROOT,
        ]
        assert path.brand == "visa"


async def _refused(
    pki: Pki, leaf: x509.Certificate, others: list[x509.Certificate], expect: Expect, now=NOW
) -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        validate_path(leaf, others, root=pki.root.cert, now=now, expect=expect, revocation=None)
    return err.value


async def test_wrong_role_is_refused(pki: Pki) -> None:
    b = pki.brands["visa"]
    chain = b.chain_for(b.merchant_sig)
    cases = [
        Expect(CertType.GATEWAY, KeyUse.SIGNATURE),  # a merchant posing as gateway
        Expect(CertType.MERCHANT, KeyUse.KEY_EXCHANGE),  # signature cert as encryption cert
        Expect(CertType.MERCHANT, KeyUse.SIGNATURE, "jcb"),  # another brand
    ]
    for expect in cases:
        err = await _refused(pki, b.merchant_sig.cert, chain, expect)
        assert err.code is ErrorCode.INVALID_CERTIFICATE, expect


async def test_expired_and_not_yet_valid_are_refused(pki: Pki) -> None:
    b = pki.brands["visa"]
    merchant = certs.MerchantData("M", "n", "5999")
    old = await issue(
        b.mca,
        ext(CertType.MERCHANT, "visa", merchant=merchant),
        "old",
        pki.suite,
        not_before=NOW - 2 * YEAR,
        not_after=NOW - YEAR,
    )
    expect = Expect(CertType.MERCHANT, KeyUse.SIGNATURE)
    err = await _refused(pki, old.cert, b.chain_for(b.merchant_sig), expect)
    assert err.code is ErrorCode.EXPIRED_CERTIFICATE
    # A valid leaf under CAs that have expired by then.
    err = await _refused(
        pki, b.merchant_sig.cert, b.chain_for(b.merchant_sig), expect, now=NOW + 2 * YEAR
    )
    assert err.code is ErrorCode.EXPIRED_CERTIFICATE
    err = await _refused(
        pki, b.merchant_sig.cert, b.chain_for(b.merchant_sig), expect, now=NOW - timedelta(days=2)
    )
    assert err.code is ErrorCode.EXPIRED_CERTIFICATE


async def test_missing_intermediate_is_refused(pki: Pki) -> None:
    b = pki.brands["visa"]
    err = await _refused(
        pki, b.gateway_sig.cert, [b.brand.cert], Expect(CertType.GATEWAY, KeyUse.SIGNATURE)
    )
    assert err.code is ErrorCode.MISSING_CERTIFICATE


async def test_wrong_position_is_refused(pki: Pki) -> None:
    b = pki.brands["visa"]
    # A merchant CA issuing a cardholder certificate.
    wrong = await issue(
        b.mca, ext(CertType.CARDHOLDER, "visa", account_hash=b"\1" * 32), "w", pki.suite
    )
    err = await _refused(
        pki, wrong.cert, [b.mca.cert, b.brand.cert], Expect(CertType.CARDHOLDER, KeyUse.SIGNATURE)
    )
    assert err.code is ErrorCode.INVALID_CERTIFICATE and "issued by mca" in err.detail
    # An end entity acting as a CA (its certificate is not a CA certificate).
    merchant = certs.MerchantData("M-2", "n", "5999")
    under_ee = await issue(
        b.merchant_sig, ext(CertType.MERCHANT, "visa", merchant=merchant), "sub", pki.suite
    )
    err = await _refused(
        pki,
        under_ee.cert,
        [b.merchant_sig.cert, *b.chain_for(b.merchant_sig)],
        Expect(CertType.MERCHANT, KeyUse.SIGNATURE),
    )
    assert err.code is ErrorCode.INVALID_CERTIFICATE


async def test_crossing_brands_is_refused(pki: Pki) -> None:
    jcb = pki.brands["jcb"]
    merchant = certs.MerchantData("M-3", "n", "5999")
    crossed = await issue(
        jcb.mca, ext(CertType.MERCHANT, "visa", merchant=merchant), "x", pki.suite
    )
    err = await _refused(
        pki,
        crossed.cert,
        [jcb.mca.cert, jcb.brand.cert],
        Expect(CertType.MERCHANT, KeyUse.SIGNATURE, "visa"),
    )
    assert err.code is ErrorCode.INVALID_CERTIFICATE and "crosses brands" in err.detail


async def test_forged_issuer_and_foreign_root_are_refused(pki: Pki) -> None:
    b = pki.brands["visa"]
    # A rogue CA with the MCA's exact name but its own key.
    rogue_key = SoftKey(b.mca.key.suite)
    rogue_mca = Party(rogue_key, b.mca.cert)
    merchant = certs.MerchantData("M-4", "n", "5999")
    # issue_certificate checks its own output against the issuer cert, so a forgery fails there.
    with pytest.raises(ProtocolError) as err:
        await issue(rogue_mca, ext(CertType.MERCHANT, "visa", merchant=merchant), "f", pki.suite)
    assert err.value.code is ErrorCode.SIGNATURE_FAILURE
    # A foreign root with our root's name and its own key: its brands do not chain to ours.
    fake_root = await issue(None, ext(CertType.ROOT, "setpay-root"), "setpay Root CA", pki.suite)
    fake_brand = await issue(fake_root, ext(CertType.BRAND, "visa"), "visa Brand CA", pki.suite)
    fake_mca = await issue(fake_brand, ext(CertType.MCA, "visa"), "visa MCA", pki.suite)
    fake_m = await issue(
        fake_mca, ext(CertType.MERCHANT, "visa", merchant=merchant), "m", pki.suite
    )
    err2 = await _refused(
        pki,
        fake_m.cert,
        [fake_mca.cert, fake_brand.cert],
        Expect(CertType.MERCHANT, KeyUse.SIGNATURE),
    )
    assert err2.code is ErrorCode.SIGNATURE_FAILURE
    # A certificate of the other suite's hierarchy: key type and algorithm do not match.
    other = await shared_pki("p256" if pki.suite == "rsa2048" else "rsa2048")
    ob = other.brands["visa"]
    err3 = await _refused(
        pki,
        ob.merchant_sig.cert,
        ob.chain_for(ob.merchant_sig),
        Expect(CertType.MERCHANT, KeyUse.SIGNATURE),
    )
    assert err3.code is ErrorCode.SIGNATURE_FAILURE


async def test_root_rollover_needs_the_committed_key(pki: Pki) -> None:
    new_root = await issue(
        None,
        ext(CertType.ROOT, "setpay-root"),
        "setpay Root CA 2",
        pki.suite,
        key=pki.next_root_key,
    )
    certs.check_root_rollover(pki.root.cert, new_root.cert)
    impostor = await issue(None, ext(CertType.ROOT, "setpay-root"), "setpay Root CA 2", pki.suite)
    with pytest.raises(ProtocolError) as err:
        certs.check_root_rollover(pki.root.cert, impostor.cert)
    assert err.value.code is ErrorCode.INVALID_CERTIFICATE


async def test_issued_certificates_verify_directly(pki: Pki) -> None:
    b = pki.brands["jcb"]
    b.gateway_kx.cert.verify_directly_issued_by(b.pca.cert)
    b.pca.cert.verify_directly_issued_by(b.brand.cert)
    b.brand.cert.verify_directly_issued_by(pki.root.cert)
    pki.root.cert.verify_directly_issued_by(pki.root.cert)


async def test_ca_key_exchange_certificate_is_an_end_entity(pki: Pki) -> None:
    b = pki.brands["visa"]
    cca_kx = await issue(
        b.brand, ext(CertType.CCA, "visa", KeyUse.KEY_EXCHANGE), "CCA kx", pki.suite
    )
    basic = cca_kx.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is False
    path = validate_path(
        cca_kx.cert,
        [b.brand.cert],
        root=pki.root.cert,
        now=NOW,
        expect=Expect(CertType.CCA, KeyUse.KEY_EXCHANGE, "visa"),
        revocation=None,
    )
    assert path.leaf_ext.key_use is KeyUse.KEY_EXCHANGE
    # It cannot issue: a cardholder certificate under it is refused.
    under = await issue(
        cca_kx, ext(CertType.CARDHOLDER, "visa", account_hash=b"\2" * 32), "c", pki.suite
    )
    with pytest.raises(ProtocolError) as err:
        validate_path(
            under.cert,
            [cca_kx.cert, b.brand.cert],
            root=pki.root.cert,
            now=NOW,
            expect=Expect(CertType.CARDHOLDER, KeyUse.SIGNATURE),
            revocation=None,
        )
    assert err.value.code is ErrorCode.INVALID_CERTIFICATE


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_parsers_raise_only_protocol_errors_on_random_bytes(data: bytes) -> None:
    for parse in (certs.load_certificate, certs.decode_set_extension):
        try:
            parse(data)
        except ProtocolError as err:
            assert err.code in {ErrorCode.INVALID_CERTIFICATE, ErrorCode.UNSUPPORTED_ALGORITHM}
