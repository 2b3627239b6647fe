"""The cache of accepted certificate paths and of verified revocation views
(protocol/chain.py Rule 4, protocol/revocation.py ``RevocationState.load``).

A warm cache must never accept what the full check refuses: a certificate revoked by a new
BCI and CRL, a path outside its validity, another expectation; and it stays bounded.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from protocol.certs import CertType, GatewayCaps, KeyUse
from protocol.chain import PATHS, Expect, PathCache, validate_path
from protocol.errors import ErrorCode, ProtocolError
from protocol.revocation import RevocationState
from tests.protocol.pki import NOW, YEAR, Pki, ext, issue, revocation_material, shared_pki

GATEWAY_KX = Expect(CertType.GATEWAY, KeyUse.KEY_EXCHANGE, "visa")
CARDHOLDER = Expect(CertType.CARDHOLDER, KeyUse.SIGNATURE, "visa")
CAPS = GatewayCaps(["JPY", "USD"], pin_debit=True, sale=True)


@pytest.fixture(params=["rsa2048", "p256"])
async def pki(request: pytest.FixtureRequest) -> Pki:
    return await shared_pki(request.param)


async def test_revoked_certificate_is_refused_after_the_cache_was_warm(pki: Pki) -> None:
    b = pki.brands["visa"]
    bci, crls = await revocation_material(pki, "visa", sequence=11)
    clean = RevocationState.load(bci, b.brand.cert, crls, NOW)
    leaf, pool = b.gateway_kx.cert, b.chain_for(b.gateway_kx)
    before = PATHS.hits
    for _ in range(3):  # warm: the second and third are answered from the cache
        validate_path(leaf, pool, root=pki.root.cert, now=NOW, expect=GATEWAY_KX,
                      revocation=clean)  # fmt: skip
    assert PATHS.hits >= before + 2
    # The next BCI names a CRL of the PCA that lists the gateway's certificate.
    bci2, crls2 = await revocation_material(
        pki, "visa", revoked_by_pca=[leaf.serial_number], sequence=12
    )
    revoked = RevocationState.load(bci2, b.brand.cert, crls2, NOW)
    assert revoked.fingerprint != clean.fingerprint
    for _ in range(2):
        with pytest.raises(ProtocolError) as err:
            validate_path(leaf, pool, root=pki.root.cert, now=NOW, expect=GATEWAY_KX,
                          revocation=revoked)  # fmt: skip
        assert err.value.code is ErrorCode.REVOKED_CERTIFICATE


async def test_revoked_ca_refuses_a_cached_leaf_below_it(pki: Pki) -> None:
    b = pki.brands["visa"]
    bci, crls = await revocation_material(pki, "visa", sequence=21)
    clean = RevocationState.load(bci, b.brand.cert, crls, NOW)
    leaf, pool = b.cardholder.cert, b.chain_for(b.cardholder)
    validate_path(leaf, pool, root=pki.root.cert, now=NOW, expect=CARDHOLDER, revocation=clean)
    bci2, crls2 = await revocation_material(
        pki, "visa", revoked_by_brand=[b.cca.cert.serial_number], sequence=22
    )
    revoked = RevocationState.load(bci2, b.brand.cert, crls2, NOW)
    with pytest.raises(ProtocolError) as err:
        validate_path(leaf, pool, root=pki.root.cert, now=NOW, expect=CARDHOLDER,
                      revocation=revoked)  # fmt: skip
    assert err.value.code is ErrorCode.REVOKED_CERTIFICATE


async def test_cached_path_is_checked_again_outside_its_validity(pki: Pki) -> None:
    b = pki.brands["visa"]
    bci, crls = await revocation_material(pki, "visa", sequence=31)
    state = RevocationState.load(bci, b.brand.cert, crls, NOW)
    short = await issue(b.pca, ext(CertType.GATEWAY, "visa", KeyUse.KEY_EXCHANGE, gateway=CAPS),
                        "short-lived gateway", pki.suite, not_after=NOW + timedelta(hours=2),
                        key=b.gateway_kx.key)  # fmt: skip
    cache = PathCache()
    pool = [b.pca.cert, b.brand.cert]
    cache.validate(short.cert, pool, pki.root.cert, NOW, GATEWAY_KX, state)
    cache.validate(short.cert, pool, pki.root.cert, NOW + timedelta(hours=1), GATEWAY_KX, state)
    assert cache.hits == 1
    with pytest.raises(ProtocolError) as err:
        cache.validate(short.cert, pool, pki.root.cert, NOW + timedelta(hours=3), GATEWAY_KX,
                       state)  # fmt: skip
    assert err.value.code is ErrorCode.EXPIRED_CERTIFICATE


async def test_cached_path_does_not_answer_another_expectation(pki: Pki) -> None:
    b = pki.brands["visa"]
    bci, crls = await revocation_material(pki, "visa", sequence=41)
    state = RevocationState.load(bci, b.brand.cert, crls, NOW)
    cache = PathCache()
    leaf, pool = b.gateway_kx.cert, b.chain_for(b.gateway_kx)
    cache.validate(leaf, pool, pki.root.cert, NOW, GATEWAY_KX, state)
    for other in (Expect(CertType.GATEWAY, KeyUse.SIGNATURE, "visa"),
                  Expect(CertType.MERCHANT, KeyUse.KEY_EXCHANGE, "visa"),
                  Expect(CertType.GATEWAY, KeyUse.KEY_EXCHANGE, "jcb")):  # fmt: skip
        with pytest.raises(ProtocolError) as err:
            cache.validate(leaf, pool, pki.root.cert, NOW, other, state)
        assert err.value.code is ErrorCode.INVALID_CERTIFICATE


async def test_refusals_are_not_cached_and_the_cache_stays_bounded(pki: Pki) -> None:
    b = pki.brands["visa"]
    bci, crls = await revocation_material(pki, "visa", sequence=51)
    state = RevocationState.load(bci, b.brand.cert, crls, NOW)
    cache = PathCache(size=3)
    leaves = [
        await issue(
            b.pca,
            ext(CertType.GATEWAY, "visa", KeyUse.KEY_EXCHANGE, gateway=CAPS),
            f"gw {i}",
            pki.suite,
            not_after=NOW + YEAR,
            key=b.gateway_kx.key,
        )
        for i in range(5)
    ]
    pool = [b.pca.cert, b.brand.cert]
    for party in leaves:
        cache.validate(party.cert, pool, pki.root.cert, NOW, GATEWAY_KX, state)
        assert len(cache) <= 3
    assert len(cache) == 3
    with pytest.raises(ProtocolError):
        cache.validate(leaves[0].cert, pool, pki.root.cert, NOW, CARDHOLDER, state)
    assert len(cache) == 3  # the refusal added nothing
    # The oldest were dropped first: the newest is still a hit, the first a miss again.
    hits = cache.hits
    cache.validate(leaves[-1].cert, pool, pki.root.cert, NOW, GATEWAY_KX, state)
    assert cache.hits == hits + 1
    misses = cache.misses
    cache.validate(leaves[0].cert, pool, pki.root.cert, NOW, GATEWAY_KX, state)
    assert cache.misses == misses + 1


async def test_revocation_view_is_verified_once_and_its_window_checked_every_time(
    pki: Pki,
) -> None:
    b = pki.brands["visa"]
    bci, crls = await revocation_material(pki, "visa", sequence=61)
    first = RevocationState.load(bci, b.brand.cert, crls, NOW)
    assert RevocationState.load(bci, b.brand.cert, crls, NOW) is first
    # Another set of CRLs is another view, with another fingerprint.
    fewer = RevocationState.load(bci, b.brand.cert, crls[:2], NOW)
    assert fewer is not first and fewer.fingerprint != first.fingerprint
    # The BCI lives 7 days (tests/protocol/pki.py): past it, even a remembered view is refused.
    with pytest.raises(ProtocolError) as err:
        RevocationState.load(bci, b.brand.cert, crls, NOW + timedelta(days=8))
    assert err.value.code is ErrorCode.EXPIRED_CERTIFICATE
