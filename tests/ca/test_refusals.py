"""Tampered, replayed and malformed registration messages get specific errors, create nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import sqlalchemy as sa

from actors.ca.store import CHALLENGES
from actors.entrypoint import SetEntry
from protocol import codec, ids, pan
from protocol.certreq import CERT_REQ, pop_signer, renewal_content, spki_der
from protocol.certs import cert_thumbprint, certificate_der, public_key_of
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (
    AccountKind,
    CardCInitReq,
    CardCInitRes,
    CertReq,
    CertReqData,
    CertRes,
    CertStatusCode,
    EntityKind,
    Error,
    IDData,
    KeyUse,
    MessageType,
    PublicKeyInfo,
    RegFieldValue,
    RegFormReq,
    RegFormRes,
    RequestType,
)
from protocol.requester import (
    CAClient,
    CARequestError,
    build_cardholder_cert_req,
    build_me_aq_cert_req,
    build_reg_form_req,
    card_cinit,
    check_cardholder_cert_res,
    check_reg_form_res,
    decode_reply,
    me_aq_init,
    register_entity,
)
from protocol.set_error import read_error
from protocol.signed import SignedData
from protocol.treatments import make_enc
from protocol.wrapper import decode_message, encode_message, make_header
from tests.fixtures_ca import CAEnv, new_key

PAN = "4000000000000002"  # alpha BIN 400000
EXPIRY = "3101"
COUNT_CHALLENGES = sa.select(sa.func.count()).select_from(CHALLENGES)
FORM = {"name": "Taro Test", "postal_code": "530-0001"}


def counts(ca_env: CAEnv) -> tuple[int, int]:
    certs = len(ca_env.store.certs())
    return certs, ca_env.store.replies.count()


def wrap(client: CAClient, body: object, rrpid: bytes) -> bytes:
    return encode_message(make_header(client.clock.now_ms(), rrpid=rrpid), body)


async def send(client: CAClient, t: MessageType, data: bytes, expect: type) -> object:
    _, reply = await client.request_raw(t, data)
    return decode_reply(reply, client.clock.now_ms(), expect)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


async def error_code(client: CAClient, t: MessageType, data: bytes) -> ErrorCode:
    with pytest.raises(CARequestError) as info:
        await send(client, t, data, object)
    assert info.value.code is not None
    return info.value.code


@pytest.fixture
async def cardholder(ca_env: CAEnv) -> tuple[CAClient, object]:
    client, keystore = await ca_env.requester(f"wallet.r{ids.new_lid().hex()[:8]}")
    return client, keystore


async def test_cert_req_tampered_replayed_duplicated(ca_env: CAEnv, cardholder: tuple) -> None:
    client, keystore = cardholder
    key = await new_key(keystore, "card")
    account = pan.Account(pan.AccountKind.CARD, PAN)
    lid = ids.new_lid()
    ca = await card_cinit(client, ca_env.root, "alpha", lid)
    req2, data2 = await build_reg_form_req(ca, lid, account)
    form = check_reg_form_res(await client.request(req2, data2.rrpid, RegFormRes), data2, ca)
    pending = await build_cardholder_cert_req(
        ca, form, key=key, account=account, expiry=EXPIRY, values=FORM, lid=lid
    )
    good = wrap(client, pending.req, pending.data.rrpid)
    before = counts(ca_env)

    # Tampered: a flipped bit anywhere in the protected part fails and changes nothing.
    enc = pending.req.enc
    for at in (len(enc) // 3, len(enc) - 5):
        bad = wrap(client, CertReq(flip(enc, at), []), pending.data.rrpid)
        code = await error_code(client, MessageType.CERT_REQ, bad)
        assert code in (ErrorCode.DECRYPTION_FAILURE, ErrorCode.DECODING_FAILURE)
    # Header RRPID not the body's: wrapperMsgMismatch.
    other = wrap(client, pending.req, ids.new_rrpid())
    assert await error_code(client, MessageType.CERT_REQ, other) is ErrorCode.WRAPPER_MSG_MISMATCH
    # Malformed bytes and a body of the wrong shape.
    assert await error_code(client, MessageType.CERT_REQ, b"\x93\x01") in (
        ErrorCode.DECODING_FAILURE,
    )
    assert counts(ca_env) == before

    res = await send(client, MessageType.CERT_REQ, good, CertRes)
    reg = check_cardholder_cert_res(
        res, pending, ca, key=key, account=account, expiry=EXPIRY, now_ms=client.clock.now_ms()
    )
    after = counts(ca_env)
    assert after == (before[0] + 1, before[1] + 1)
    # The same request again (a redelivery): the stored answer, no new certificate.
    again = await send(client, MessageType.CERT_REQ, good, CertRes)
    assert again == res and counts(ca_env) == after
    # The same Chall-CA under a new RRPID: a replay, refused.
    replay = await build_cardholder_cert_req(
        ca, form, key=await new_key(keystore, "card-b"), account=account, expiry=EXPIRY,
        values=FORM, lid=lid,
    )  # fmt: skip
    code = await error_code(
        client, MessageType.CERT_REQ, wrap(client, replay.req, replay.data.rrpid)
    )
    assert code is ErrorCode.REPLAY
    assert counts(ca_env) == after
    assert reg.cert.serial_number == max(r.serial for r in ca_env.store.certs())


async def test_reg_form_checks(ca_env: CAEnv, cardholder: tuple) -> None:
    client, _ = cardholder
    lid = ids.new_lid()
    ca = await card_cinit(client, ca_env.root, "alpha", lid)
    before = counts(ca_env)
    challenges_before = ca_env.store.db.scalar(COUNT_CHALLENGES)
    # BIN of the other brand (beta) at the alpha CCA.
    req, data = await build_reg_form_req(
        ca, lid, pan.Account(pan.AccountKind.CARD, "5555555555554444")
    )
    assert (
        await error_code(client, MessageType.REG_FORM_REQ, wrap(client, req, data.rrpid))
        is ErrorCode.INVALID_FIELD
    )
    # A Luhn-invalid PAN (the requester's own helper refuses it, so build the record by hand).
    bad_pan = pan.PANOnly(pan.Account(pan.AccountKind.CARD, "4111111111111112"), bytes(32))
    from protocol.certs import cert_thumbprint, public_key_of
    from protocol.envelope import make_exh

    enc = await make_exh(
        ca.suite, public_key_of(ca.kx_cert), cert_thumbprint(ca.kx_cert), "RegFormReq",
        codec.encode(data), codec.encode(bad_pan),
    )  # fmt: skip
    assert (
        await error_code(
            client, MessageType.REG_FORM_REQ, wrap(client, RegFormReq(enc), data.rrpid)
        )
        is ErrorCode.INVALID_FIELD
    )
    # Tampered EXH.
    bad = wrap(client, RegFormReq(flip(req.enc, len(req.enc) - 3)), data.rrpid)
    assert await error_code(client, MessageType.REG_FORM_REQ, bad) is ErrorCode.DECRYPTION_FAILURE
    # A message the CA does not take, inside a wrapper sent to it: messageNotSupported.
    res_body = CertRes(b"x", [], [], None)
    data_bytes = wrap(client, res_body, data.rrpid)
    code = await error_code(client, MessageType.CERT_RES, data_bytes)
    assert code is ErrorCode.MESSAGE_NOT_SUPPORTED
    # The same bytes under another AMQP type: the entrypoint refuses the disagreement first.
    code = await error_code(client, MessageType.CERT_REQ, data_bytes)
    assert code is ErrorCode.WRAPPER_MSG_MISMATCH
    assert counts(ca_env) == before
    challenges_after = ca_env.store.db.scalar(COUNT_CHALLENGES)
    assert challenges_after == challenges_before


async def test_cert_req_content_refusals(ca_env: CAEnv, cardholder: tuple) -> None:
    client, keystore = cardholder
    account = pan.Account(pan.AccountKind.CARD, PAN)
    lid = ids.new_lid()
    ca = await card_cinit(client, ca_env.root, "alpha", lid)
    req2, data2 = await build_reg_form_req(ca, lid, account)
    form = check_reg_form_res(await client.request(req2, data2.rrpid, RegFormRes), data2, ca)
    key = await new_key(keystore, "card")
    before = counts(ca_env)
    cases = [
        ({"name": "Only Name"}, EXPIRY, CertStatusCode.INVALID_FORM_FIELDS),  # postal_code
        ({**FORM, "shoe_size": "27"}, EXPIRY, CertStatusCode.INVALID_FORM_FIELDS),
        (FORM, "2001", CertStatusCode.REJECTED_BY_CA),  # card expired in January 2020
    ]
    for values, expiry, status in cases:
        pending = await build_cardholder_cert_req(
            ca, form, key=key, account=account, expiry=expiry, values=values, lid=lid
        )
        res = await client.request(pending.req, pending.data.rrpid, CertRes)
        with pytest.raises(CARequestError) as info:
            check_cardholder_cert_res(
                res, pending, ca, key=key, account=account, expiry=expiry,
                now_ms=client.clock.now_ms(),
            )  # fmt: skip
        assert info.value.status is status
    assert counts(ca_env) == before  # refusals store nothing, the Chall-CA stays usable
    pending = await build_cardholder_cert_req(
        ca, form, key=key, account=account, expiry=EXPIRY, values=FORM, lid=lid
    )
    res = await client.request(pending.req, pending.data.rrpid, CertRes)
    check_cardholder_cert_res(
        res, pending, ca, key=key, account=account, expiry=EXPIRY, now_ms=client.clock.now_ms()
    )
    # The same public key again: keyAlreadyCertified.
    lid2 = ids.new_lid()
    req3, data3 = await build_reg_form_req(ca, lid2, account)
    form2 = check_reg_form_res(await client.request(req3, data3.rrpid, RegFormRes), data3, ca)
    pending = await build_cardholder_cert_req(
        ca, form2, key=key, account=account, expiry=EXPIRY, values=FORM, lid=lid2
    )
    res = await client.request(pending.req, pending.data.rrpid, CertRes)
    with pytest.raises(CARequestError) as info:
        check_cardholder_cert_res(
            res, pending, ca, key=key, account=account, expiry=EXPIRY, now_ms=client.clock.now_ms()
        )
    assert info.value.status is CertStatusCode.KEY_ALREADY_CERTIFIED


async def test_merchant_cert_req_signed_by_another_key(ca_env: CAEnv) -> None:
    client, keystore = await ca_env.requester("merchant.forger")
    ca, init = await me_aq_init(
        client, root=ca_env.root, brand="alpha", requester=EntityKind.MERCHANT,
        id_data=IDData("M-9", None, None),
    )  # fmt: skip
    assert init.form is not None
    sig, kx = await new_key(keystore, "sig"), await new_key(keystore, "kx", exchange=True)
    other = await new_key(keystore, "other")
    # Signed with ``other`` but asking to certify ``sig``: no proof of possession.
    req, data = await build_me_aq_cert_req(
        ca, init.form.reg_form_id, sig_key=other, kx_key=kx,
        values={"merchant_id": "M-9", "merchant_name": "Forger", "mcc": "5999"},
    )  # fmt: skip
    from protocol.certreq import spki_der
    from protocol.messages import KeyUse, PublicKeyInfo

    assert data.public_keys[0] == PublicKeyInfo(KeyUse.SIGNATURE, spki_der(other.public_key()))
    before = counts(ca_env)
    # Swap the envelope of one request into another's wrapper RRPID: mismatch.
    bad = wrap(client, req, ids.new_rrpid())
    assert await error_code(client, MessageType.CERT_REQ, bad) is ErrorCode.WRAPPER_MSG_MISMATCH
    # Unknown brand at initiation.
    with pytest.raises(CARequestError) as info:
        await me_aq_init(
            client, root=ca_env.root, brand="gamma", requester=EntityKind.MERCHANT,
            id_data=IDData("M-9", None, None),
        )  # fmt: skip
    assert info.value.code is ErrorCode.INVALID_FIELD
    assert counts(ca_env) == before
    del sig


async def test_keystore_refusal_is_answered(ca_env: CAEnv) -> None:
    """A CA whose keystore identity may not use the CA keys answers an Error, not silence."""
    from actors.ca.hierarchy import Hierarchy
    from actors.ca.service import CAService
    from keystore.keyring import KeyRing
    from protocol.keys import get_suite
    from protocol.messages import AccountKind, CardCInitReq, Error, ErrorTBS
    from protocol.wrapper import decode_message

    intruder = await ca_env.deployment.client("wallet.intruder")
    keys = KeyRing(intruder, get_suite(ca_env.settings.suite))
    service = CAService(Hierarchy(ca_env.store, keys))
    rrpid = ids.new_rrpid()
    body = CardCInitReq(rrpid, ids.new_lid(), ids.new_challenge(), "alpha", AccountKind.CARD, [])
    data = encode_message(make_header(ids.SystemClock().now_ms(), rrpid=rrpid), body)
    before = counts(ca_env)
    msg_type, reply = await SetEntry(service).handle(None, data)
    assert msg_type == str(int(MessageType.ERROR))
    error = decode_message(reply, now_ms=ids.SystemClock().now_ms()).body
    assert isinstance(error, Error)
    assert codec.decode(ErrorTBS, error.content).code is ErrorCode.UNSPECIFIED_FAILURE
    assert counts(ca_env) == before


MERCHANT_FORM = {"merchant_id": "M-77", "merchant_name": "Thumbs Test", "mcc": "5999"}


async def test_renewal_naming_another_cert_is_thumbs_mismatch(ca_env: CAEnv) -> None:
    """A renewal whose EEThumb names someone else's certificate (signed with the requester's
    own old key) is refused with thumbsMismatch, in an Error the MCA signed; nothing changes."""
    victim_client, victim_ks = await ca_env.requester("merchant.victim")
    victim = await register_entity(
        victim_client, root=ca_env.root, brand="alpha", requester=EntityKind.MERCHANT,
        id_data=IDData("M-77", None, None), sig_key=await new_key(victim_ks, "sig"),
        kx_key=await new_key(victim_ks, "kx", exchange=True), values=MERCHANT_FORM,
    )  # fmt: skip
    client, keystore = await ca_env.requester("merchant.thief")
    ca, init = await me_aq_init(
        client, root=ca_env.root, brand="alpha", requester=EntityKind.MERCHANT,
        id_data=IDData("M-77", None, None), request_type=RequestType.RENEWAL,
    )  # fmt: skip
    assert init.form is not None
    own_old = await new_key(keystore, "old")
    sig, kx = await new_key(keystore, "sig"), await new_key(keystore, "kx", exchange=True)
    victim_thumb = cert_thumbprint(victim.sig_cert)
    data = CertReqData(
        ids.new_rrpid(), ids.new_lid(), ids.new_challenge(), None, RequestType.RENEWAL,
        init.form.reg_form_id, [RegFieldValue(k, v) for k, v in MERCHANT_FORM.items()], None,
        [PublicKeyInfo(KeyUse.SIGNATURE, spki_der(sig.public_key())),
         PublicKeyInfo(KeyUse.KEY_EXCHANGE, spki_der(kx.public_key()))],
        victim_thumb, [],
    )  # fmt: skip
    content = await renewal_content(own_old, pop_signer(own_old.public_key()), codec.encode(data))
    enc = await make_enc(
        sig, pop_signer(sig.public_key()), sig.suite, public_key_of(ca.kx_cert),
        cert_thumbprint(ca.kx_cert), CERT_REQ, content,
    )  # fmt: skip
    chain = [certificate_der(c) for c in (victim.sig_cert, *victim.chain)]
    before = counts(ca_env)
    with pytest.raises(CARequestError) as info:
        await client.request(CertReq(enc, chain), data.rrpid, CertRes, ca=ca)
    assert info.value.code is ErrorCode.THUMBS_MISMATCH
    assert info.value.verified  # S(MCA, ErrorTBS), checked under the MCA certificate we hold
    assert counts(ca_env) == before


async def test_errors_signed_where_the_requester_can_verify(
    ca_env: CAEnv, cardholder: tuple
) -> None:
    client, _ = cardholder
    # CardCInit for a bank account under a brand that takes none: the beta CCA signs; the
    # requester has no CA view yet and verifies the attached CCA certificate up to the root.
    rrpid = ids.new_rrpid()
    body = CardCInitReq(rrpid, ids.new_lid(), ids.new_challenge(), "beta", AccountKind.BANK, [])
    with pytest.raises(CARequestError) as info:
        await client.request(body, rrpid, CardCInitRes, root=ca_env.root)
    assert info.value.code is ErrorCode.INVALID_FIELD and info.value.verified
    _, reply = await client.request_raw(
        MessageType.CARD_CINIT_REQ, wrap(client, body, rrpid)
    )  # same RRPID, same body: refused again (refusals are not stored), same signer
    error = decode_message(reply, now_ms=client.clock.now_ms()).body
    assert isinstance(error, Error) and error.signed
    signed = codec.decode(SignedData, error.content)
    assert signed.signer == cert_thumbprint(ca_env.hierarchy.cert("beta.cca"))
    # A tampered signature no longer verifies: the requester does not take it as the CA's.
    forged = Error(True, codec.encode(replace(signed, signature=flip(signed.signature, 3))),
                   error.certs)  # fmt: skip
    with pytest.raises(ProtocolError) as bad:
        read_error(forged, client.clock.now_ms(), root=ca_env.root)
    assert bad.value.code is ErrorCode.SIGNATURE_FAILURE
    # Unreadable bytes name no CA: the Error is unsigned, and says so.
    with pytest.raises(CARequestError) as info:
        await send(client, MessageType.CARD_CINIT_REQ, b"\x93\x01", object)
    assert info.value.code is ErrorCode.DECODING_FAILURE and not info.value.verified
