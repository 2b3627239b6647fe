"""Revocation, CRL/BCI freshness, expiry, wrong roles, renewal and restart persistence."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from actors.ca.hierarchy import Hierarchy
from actors.ca.service import CAService
from actors.ca.store import CAStore
from actors.entrypoint import SetEntry
from protocol import ids
from protocol.certs import CertType, KeyUse
from protocol.chain import Expect, validate_path
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import to_dt
from protocol.messages import (
    AccountKind,
    CardCInitReq,
    CardCInitRes,
    EntityKind,
    IDData,
    MeAqCInitReq,
    MeAqCInitRes,
    RequestType,
)
from protocol.requester import (
    CARequestError,
    _held,
    me_aq_init,
    register_entity,
)
from protocol.revocation import RevocationState, open_bci
from protocol.wrapper import decode_message, encode_message, make_header
from tests.fixtures_ca import CAEnv, new_key

FORM = {"merchant_id": "M-3101", "merchant_name": "Revoked Books", "mcc": "5942"}


def now_ms() -> int:
    return ids.SystemClock().now_ms()


async def merchant(ca_env: CAEnv, identity: str, merchant_id: str) -> tuple:
    client, keystore = await ca_env.requester(identity)
    sig, kx = await new_key(keystore, "sig"), await new_key(keystore, "kx", exchange=True)
    reg = await register_entity(
        client, root=ca_env.root, brand="alpha", requester=EntityKind.MERCHANT,
        id_data=IDData(merchant_id, None, None), sig_key=sig, kx_key=kx,
        values={**FORM, "merchant_id": merchant_id},
    )  # fmt: skip
    return client, keystore, sig, reg


def check(reg_cert: object, chain: list, ca_env: CAEnv, revocation: object, **kw: object) -> None:
    validate_path(
        reg_cert,  # type: ignore[arg-type]
        chain,
        root=ca_env.root,
        now=kw.get("now", to_dt(now_ms())),  # type: ignore[arg-type]
        expect=kw.get("expect", Expect(CertType.MERCHANT, KeyUse.SIGNATURE, "alpha")),  # type: ignore[arg-type]
        revocation=revocation,  # type: ignore[arg-type]
    )


async def test_revoked_merchant_refused_with_new_crl_and_bci(ca_env: CAEnv) -> None:
    client, _, _, reg = await merchant(ca_env, "merchant.rev1", "M-3101")
    old_view = reg.ca
    old_state = old_view.revocation(now_ms())
    assert old_state is not None
    check(reg.sig_cert, reg.chain, ca_env, old_state)
    bci_before = ca_env.store.latest_bci("alpha")
    assert await ca_env.hierarchy.revoke(reg.sig_cert.serial_number, "keyCompromise", now_ms())
    assert not await ca_env.hierarchy.revoke(reg.sig_cert.serial_number, "keyCompromise", now_ms())
    bci_after = ca_env.store.latest_bci("alpha")
    assert bci_before is not None and bci_after is not None and bci_after[0] == bci_before[0] + 1
    # Beta's BCI is untouched: the MCA of alpha revoked, not the root.
    # Any response now carries the new BCI and the CRLs it names.
    view, _ = await me_aq_init(
        client, root=ca_env.root, brand="alpha", requester=EntityKind.MERCHANT,
        id_data=IDData("M-3101", None, None),
    )  # fmt: skip
    assert view.bci == bci_after[1]
    new_state = view.revocation(now_ms())
    assert new_state is not None and new_state.sequence == bci_after[0]
    with pytest.raises(ProtocolError) as info:
        check(reg.sig_cert, reg.chain, ca_env, new_state)
    assert info.value.code is ErrorCode.REVOKED_CERTIFICATE
    # The key-exchange certificate was not revoked.
    check(reg.kx_cert, reg.chain, ca_env, new_state,
          expect=Expect(CertType.MERCHANT, KeyUse.KEY_EXCHANGE, "alpha"))  # fmt: skip
    # A party that holds the new BCI but not the new CRL cannot be fooled by the old one.
    stale_crls = RevocationState.load(bci_after[1], view.brand_cert, old_view.crls, to_dt(now_ms()))
    with pytest.raises(ProtocolError) as info:
        check(reg.sig_cert, reg.chain, ca_env, stale_crls)
    assert info.value.code is ErrorCode.MISSING_CERTIFICATE


async def test_expired_and_wrong_role_refused(ca_env: CAEnv) -> None:
    _, _, _, reg = await merchant(ca_env, "merchant.exp1", "M-3002")
    late = reg.sig_cert.not_valid_after_utc + timedelta(days=1)
    with pytest.raises(ProtocolError) as info:
        check(reg.sig_cert, reg.chain, ca_env, None, now=late)
    assert info.value.code is ErrorCode.EXPIRED_CERTIFICATE
    state = reg.ca.revocation(now_ms())
    for expect in (
        Expect(CertType.GATEWAY, KeyUse.SIGNATURE, "alpha"),  # a merchant acting as gateway
        Expect(CertType.CARDHOLDER, KeyUse.SIGNATURE, "alpha"),
        Expect(CertType.MERCHANT, KeyUse.SIGNATURE, "beta"),  # another brand
    ):
        with pytest.raises(ProtocolError) as info:
            check(reg.sig_cert, reg.chain, ca_env, state, expect=expect)
        assert info.value.code is ErrorCode.INVALID_CERTIFICATE
    with pytest.raises(ProtocolError) as info:  # a key-exchange cert used to sign
        check(reg.kx_cert, reg.chain, ca_env, state)
    assert info.value.code is ErrorCode.INVALID_CERTIFICATE


async def test_renewal_signed_with_old_key(ca_env: CAEnv) -> None:
    client, keystore, old_sig, reg = await merchant(ca_env, "merchant.ren1", "M-3003")
    sig2, kx2 = await new_key(keystore, "sig2"), await new_key(keystore, "kx2", exchange=True)
    renewed = await register_entity(
        client, root=ca_env.root, brand="alpha", requester=EntityKind.MERCHANT,
        id_data=IDData("M-3003", None, None), sig_key=sig2, kx_key=kx2,
        values={**FORM, "merchant_id": "M-3003"}, renew=(old_sig, [reg.sig_cert, *reg.chain]),
    )  # fmt: skip
    assert renewed.sig_cert.serial_number > reg.kx_cert.serial_number
    # Renewal with a key that is not the old one's: the old-key signature fails.
    sig3, kx3 = await new_key(keystore, "sig3"), await new_key(keystore, "kx3", exchange=True)
    before = len(ca_env.store.certs())
    with pytest.raises(CARequestError) as info:
        await register_entity(
            client, root=ca_env.root, brand="alpha", requester=EntityKind.MERCHANT,
            id_data=IDData("M-3003", None, None), sig_key=sig3, kx_key=kx3,
            values={**FORM, "merchant_id": "M-3003"}, renew=(sig2, [reg.sig_cert, *reg.chain]),
        )  # fmt: skip
    assert info.value.code is ErrorCode.SIGNATURE_FAILURE
    # Renewal of a revoked certificate is refused.
    await ca_env.hierarchy.revoke(renewed.sig_cert.serial_number, "superseded", now_ms())
    with pytest.raises(CARequestError) as info:
        await register_entity(
            client, root=ca_env.root, brand="alpha", requester=EntityKind.MERCHANT,
            id_data=IDData("M-3003", None, None), sig_key=sig3, kx_key=kx3,
            values={**FORM, "merchant_id": "M-3003"},
            renew=(sig2, [renewed.sig_cert, *renewed.chain]),
        )  # fmt: skip
    assert info.value.code is ErrorCode.REVOKED_CERTIFICATE
    assert len(ca_env.store.certs()) == before


async def test_thumbprints_skip_what_is_held(ca_env: CAEnv) -> None:
    client, _ = await ca_env.requester("merchant.thumbs")
    view, _ = await me_aq_init(
        client, root=ca_env.root, brand="alpha", requester=EntityKind.MERCHANT,
        id_data=IDData("M-1", None, None),
    )  # fmt: skip
    rrpid = ids.new_rrpid()
    req = MeAqCInitReq(
        rrpid, ids.new_lid(), ids.new_challenge(), RequestType.INITIAL, EntityKind.MERCHANT,
        IDData("M-1", None, None), "alpha", "en", _held(view),
    )  # fmt: skip
    res: MeAqCInitRes = await client.request(req, rrpid, MeAqCInitRes)
    assert res.certs == [] and res.crls == [] and res.bci is None


async def test_restart_keeps_revocations_and_serials(ca_env: CAEnv) -> None:
    _, _, _, reg = await merchant(ca_env, "merchant.rst1", "M-3004")
    serial = reg.sig_cert.serial_number
    await ca_env.hierarchy.revoke(serial, "affiliationChanged", now_ms())
    top = max(r.serial for r in ca_env.store.certs())
    reopened = CAStore.open(ca_env.settings.data_dir)
    try:
        row = reopened.cert(serial)
        assert row is not None and row.reason == "affiliationChanged" and row.revoked_at
        assert (serial, row.revoked_at) in reopened.revoked("alpha.mca")
        assert reopened.next_serial() > top
        h = Hierarchy(reopened, ca_env.hierarchy.keys)
        latest = reopened.latest_bci("alpha")
        assert latest is not None
        bci = open_bci(latest[1], h.cert("alpha.brand"), to_dt(now_ms()))
        state = RevocationState.load(
            latest[1], h.cert("alpha.brand"), h.current_crls("alpha"), to_dt(now_ms())
        )
        assert state.bci == bci
        with pytest.raises(ProtocolError) as info:
            check(reg.sig_cert, reg.chain, ca_env, state)
        assert info.value.code is ErrorCode.REVOKED_CERTIFICATE
    finally:
        reopened.close()


async def test_stale_bci_is_refreshed(ca_env: CAEnv, tmp_path: Path) -> None:
    """Four days on (BCIs live seven), the next request publishes fresh CRLs and BCI."""
    ca_env.store.db.checkpoint()
    (tmp_path / "ca").mkdir()
    shutil.copy(ca_env.store.path, tmp_path / "ca" / "ca.sqlite")
    copy = CAStore.open(tmp_path)  # a copy: the session's CA stays at the real time
    try:
        clock = ids.FixedClock(now_ms() + 4 * 86_400_000)
        service = CAService(Hierarchy(copy, ca_env.hierarchy.keys), clock=clock)
        before = {b: copy.latest_bci(b) for b in ("alpha", "beta")}
        rrpid = ids.new_rrpid()
        body = CardCInitReq(rrpid, ids.new_lid(), ids.new_challenge(), "beta", AccountKind.CARD, [])
        _, reply = await SetEntry(service).handle(None,
            encode_message(make_header(clock.now_ms(), rrpid=rrpid), body)
        )
        res = decode_message(reply, now_ms=clock.now_ms()).body
        assert isinstance(res, CardCInitRes)
        for brand in ("alpha", "beta"):
            latest = copy.latest_bci(brand)
            assert latest is not None and latest[0] == before[brand][0] + 1  # type: ignore[index]
        later = to_dt(clock.now_ms())
        beta_brand = Hierarchy(copy, ca_env.hierarchy.keys).cert("beta.brand")
        assert res.bci is not None and open_bci(res.bci, beta_brand, later).sequence > 1
        # The old BCI would have expired three days later; the new one has not.
        with pytest.raises(ProtocolError):
            open_bci(before["beta"][1], beta_brand, later + timedelta(days=3))  # type: ignore[index]
        open_bci(res.bci, beta_brand, later + timedelta(days=3))
    finally:
        copy.close()
