"""Requests sealed to the keystore's transport key, against the real SoftHSM2 token.

What is checked: the transport key lives in the token (RSA-3072, sensitive, not extractable);
a secret travels only sealed, and every seal moved to another operation, identity, key,
at-rest AAD or request id, tampered with, or past its deadline is refused with its specific
fault before anything is done; the old clear records are refused; ``open``'s answer comes
back under the caller's reply key only.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from collections.abc import AsyncIterator

import pytest
from pkcs11 import Attribute, ObjectClass
from structlog.testing import capture_logs

from keystore import messages as m
from keystore import transport
from keystore.errors import DecryptionFailed, Fault
from keystore.hsm import Hsm, TokenConfig
from keystore.pinguard import PinGuard
from keystore.policy import Policy
from keystore.service import KeystoreService
from protocol import codec, pin
from tests.fixtures_keystore import KeystoreDeployment

pytestmark = pytest.mark.integration

PAN = b"4111111111111111"
CARD = PAN + b"|2912|" + bytes(range(32))


@pytest.fixture(scope="module")
async def service(token_config: TokenConfig, tmp_path_factory: pytest.TempPathFactory
                  ) -> AsyncIterator[KeystoreService]:  # fmt: skip
    guard = PinGuard(tmp_path_factory.mktemp("transport-guard") / "guard.sqlite")
    svc = KeystoreService(Hsm(token_config), Policy(), guard=guard)
    await svc.start()
    yield svc
    await svc.close()


async def _ask(svc: KeystoreService, caller: str, op: m.Op, record: object) -> m.Response:
    raw = await svc.handle_bytes(caller, m.encode_request(op, record))
    return codec.decode(m.Response, raw)


async def _transport(svc: KeystoreService, caller: str) -> transport.TransportPublic:
    answer = await _ask(svc, caller, m.Op.TRANSPORT_KEY, m.TransportKeyRequest())
    assert answer.fault is Fault.OK, answer.text
    return transport.TransportPublic.of(codec.decode(m.TransportKey, answer.body))


def _seal(tk: transport.TransportPublic, op: m.Op, caller: str, record: object,
          secret: bytes, ttl_ms: int = 10_000, now: int | None = None) -> object:  # fmt: skip
    return transport.seal_request(tk, op, caller, record, secret, ttl_ms=ttl_ms, now=now)


def _uniq(role: str) -> str:
    return f"{role}.x{os.urandom(3).hex()}"


def test_transport_key_is_generated_in_the_token_and_never_extractable(
    service: KeystoreService, hsm: Hsm
) -> None:
    info = hsm.key_info(transport.TRANSPORT_LABEL)
    assert info.kind is m.KeyKind.RSA3072 and info.usage is m.KeyUsage.EXCHANGE
    key = hsm.session.get_key(label=transport.TRANSPORT_LABEL, object_class=ObjectClass.PRIVATE_KEY)
    assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
    assert key[Attribute.DECRYPT] and not key[Attribute.SIGN] and not key[Attribute.UNWRAP]
    again = transport.ensure_key(hsm)  # idempotent: a second worker's start reuses it
    assert again.public_key == info.public_key


async def test_sealed_seal_and_open_round_trip_and_wire_holds_no_clear_data(
    service: KeystoreService,
) -> None:
    wallet = _uniq("wallet")
    label = f"{wallet}/vault"
    made = await _ask(service, wallet, m.Op.CREATE,
                      m.CreateKey(label, m.KeyKind.AES256, m.KeyUsage.SECRET))  # fmt: skip
    assert made.fault is Fault.OK
    tk = await _transport(service, wallet)
    record = _seal(tk, m.Op.SEAL, wallet, m.Seal(label, b"card-1", transport.UNSEALED), CARD)
    wire = m.encode_request(m.Op.SEAL, record)
    for form in (PAN, PAN.hex().encode(), base64.b64encode(PAN), bytes(range(32))):
        assert form not in wire
    at_rest = await _ask(service, wallet, m.Op.SEAL, record)
    assert at_rest.fault is Fault.OK, at_rest.text
    stored = codec.decode(m.Blob, at_rest.body).data

    reply_key = os.urandom(32)
    ask = _seal(tk, m.Op.OPEN, wallet, m.Open(label, stored, b"card-1", transport.UNSEALED),
                reply_key)  # fmt: skip
    opened = await _ask(service, wallet, m.Op.OPEN, ask)
    assert opened.fault is Fault.OK, opened.text
    data = codec.decode(m.SealedReply, opened.body).data
    assert PAN not in opened.body and PAN not in data
    clear = transport.open_reply(reply_key, ask.secret.request_id, data)  # type: ignore[attr-defined]
    assert codec.decode(m.Blob, clear).data == CARD


async def test_decrypt_and_batch_answers_travel_under_the_reply_key(
    service: KeystoreService,
) -> None:
    """What a decrypt recovers (a bulk key, a CertReq's account part) is never in the answer's
    clear bytes; only the reply key sealed in the request opens it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    ca = _uniq("ca")
    made = await _ask(service, ca, m.Op.CREATE, m.CreateKey(f"{ca}/kex", m.KeyKind.RSA2048,
                                                            m.KeyUsage.EXCHANGE))  # fmt: skip
    assert made.fault is Fault.OK
    public = load_der_public_key(codec.decode(m.KeyInfo, made.body).public_key)
    secret = os.urandom(32) + PAN
    oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
    ct = public.encrypt(secret, oaep)  # type: ignore[union-attr]
    tk = await _transport(service, ca)
    reply_key = os.urandom(32)
    ask = _seal(tk, m.Op.DECRYPT, ca, m.Decrypt(f"{ca}/kex", ct, m.OaepHash.SHA1,
                                                transport.UNSEALED), reply_key)  # fmt: skip
    answer = await _ask(service, ca, m.Op.DECRYPT, ask)
    assert answer.fault is Fault.OK, answer.text
    assert not any(form in answer.body for form in (secret[:32], PAN, secret.hex().encode()))
    data = codec.decode(m.SealedReply, answer.body).data
    clear = transport.open_reply(reply_key, ask.secret.request_id, data)  # type: ignore[attr-defined]
    assert codec.decode(m.Blob, clear).data == secret
    with pytest.raises(DecryptionFailed):  # another key, or the answer bound to another request
        transport.open_reply(os.urandom(32), ask.secret.request_id, data)  # type: ignore[attr-defined]
    with pytest.raises(DecryptionFailed):
        transport.open_reply(reply_key, os.urandom(16), data)

    item = m.BatchItem(m.Op.DECRYPT, f"{ca}/kex", ct, m.OaepHash.SHA1)
    batch = _seal(tk, m.Op.BATCH, ca, m.Batch([item, item], transport.UNSEALED), reply_key)
    answer = await _ask(service, ca, m.Op.BATCH, batch)
    assert answer.fault is Fault.OK and PAN not in answer.body
    data = codec.decode(m.SealedReply, answer.body).data
    clear = transport.open_reply(reply_key, batch.secret.request_id, data)  # type: ignore[attr-defined]
    assert [r.data for r in codec.decode(m.BatchResult, clear).results] == [secret, secret]
    unsealed = await _ask(service, ca, m.Op.DECRYPT,
                          m.Decrypt(f"{ca}/kex", ct, m.OaepHash.SHA1, transport.UNSEALED))
    # The placeholder (deadline 0) is refused before any decrypt: no reply key, no answer.
    assert unsealed.fault is Fault.STALE_REQUEST and unsealed.body == b""


async def test_seal_moved_to_another_identity_op_key_or_request_is_refused(
    service: KeystoreService,
) -> None:
    """Each variation of a valid sealed request is SEAL_INVALID, logged with its request id,
    and does nothing (no at-rest blob, no MAC, no PVV)."""
    wallet, other = _uniq("wallet"), _uniq("wallet")
    issuer = _uniq("issuer")
    for name in ("vault", "vault2"):
        made = await _ask(service, wallet, m.Op.CREATE, m.CreateKey(
            f"{wallet}/{name}", m.KeyKind.AES256, m.KeyUsage.SECRET))  # fmt: skip
        assert made.fault is Fault.OK
    hsm = service.hsm  # the issuer's keys come from a key ceremony
    await _run(service, lambda: hsm.create_key(f"{issuer}/pan-index", m.KeyKind.HMAC256,
                                               m.KeyUsage.SECRET))  # fmt: skip
    await _run(service, lambda: hsm.create_key(f"{issuer}/mac2", m.KeyKind.HMAC256,
                                               m.KeyUsage.SECRET))  # fmt: skip
    tk = await _transport(service, wallet)
    good = _seal(tk, m.Op.SEAL, wallet, m.Seal(f"{wallet}/vault", b"c1", transport.UNSEALED),
                 CARD)  # fmt: skip
    assert isinstance(good, m.Seal)
    sealed = good.secret
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    wrapped = bytes([sealed.wrapped_key[5] ^ 1]).join([sealed.wrapped_key[:5],
                                                       sealed.wrapped_key[6:]])  # fmt: skip
    variants: list[tuple[str, str, m.Op, object]] = [
        ("another identity", other, m.Op.SEAL,
         m.Seal(f"{other}/vault", b"c1", sealed)),
        ("another key", wallet, m.Op.SEAL, m.Seal(f"{wallet}/vault2", b"c1", sealed)),
        ("another at-rest aad", wallet, m.Op.SEAL, m.Seal(f"{wallet}/vault", b"c2", sealed)),
        ("another request id", wallet, m.Op.SEAL,
         dataclasses.replace(good, secret=dataclasses.replace(sealed, request_id=os.urandom(16)))),
        ("an extended deadline", wallet, m.Op.SEAL,
         dataclasses.replace(good, secret=dataclasses.replace(
             sealed, not_after_ms=sealed.not_after_ms + 60_000))),
        ("a tampered ciphertext", wallet, m.Op.SEAL,
         dataclasses.replace(good, secret=dataclasses.replace(sealed, ciphertext=flipped))),
        ("a tampered key wrap", wallet, m.Op.SEAL,
         dataclasses.replace(good, secret=dataclasses.replace(sealed, wrapped_key=wrapped))),
    ]  # fmt: skip
    # The issuer's PAN-index seal replayed into another operation, or against another key.
    pan_ix = _seal(tk, m.Op.HMAC, issuer, m.Hmac(f"{issuer}/pan-index", transport.UNSEALED),
                   b"setpay/pan-index/v1\x00" + PAN)  # fmt: skip
    assert isinstance(pan_ix, m.Hmac)
    variants += [
        ("another operation", issuer, m.Op.PIN_ISSUE, m.PinIssue(f"{issuer}/pvk", pan_ix.secret)),
        ("another HMAC key", issuer, m.Op.HMAC, m.Hmac(f"{issuer}/mac2", pan_ix.secret)),
    ]
    with capture_logs() as logs:
        for why, caller, op, record in variants:
            answer = await _ask(service, caller, op, record)
            assert answer.fault is Fault.SEAL_INVALID, (why, answer)
            assert answer.body == b"", why
    refused = [e for e in logs if e["event"] == "keystore_sealed_request_refused"]
    assert len(refused) == len(variants)
    assert all(len(e["request"]) == 32 and "reason" in e for e in refused)
    assert PAN.decode() not in repr(logs)
    audit = [e for e in logs if e["event"] == "keystore_op"]
    assert [e["outcome"] for e in audit] == ["seal_invalid"] * len(variants)
    # The originals still work: the refusals changed nothing and spent nothing.
    assert (await _ask(service, wallet, m.Op.SEAL, good)).fault is Fault.OK
    assert (await _ask(service, issuer, m.Op.HMAC, pan_ix)).fault is Fault.OK


async def _run(service: KeystoreService, fn: object) -> None:
    """Run ``fn`` (a key ceremony) on the service's PKCS#11 thread; an existing key is fine."""
    import asyncio

    from keystore.errors import KeyExists

    def step() -> None:
        try:
            fn()  # type: ignore[operator]
        except KeyExists:
            pass

    await asyncio.get_running_loop().run_in_executor(service._executor, step)


async def test_stale_sealed_request_is_refused_and_logged(service: KeystoreService) -> None:
    wallet = _uniq("wallet")
    label = f"{wallet}/vault"
    await _ask(service, wallet, m.Op.CREATE, m.CreateKey(label, m.KeyKind.AES256,
                                                         m.KeyUsage.SECRET))  # fmt: skip
    tk = await _transport(service, wallet)
    past = transport.now_ms() - transport.SKEW_MS - 60_000
    old = _seal(tk, m.Op.SEAL, wallet, m.Seal(label, b"c", transport.UNSEALED), CARD,
                ttl_ms=10_000, now=past)  # fmt: skip
    assert isinstance(old, m.Seal)
    with capture_logs() as logs:
        answer = await _ask(service, wallet, m.Op.SEAL, old)
    assert answer.fault is Fault.STALE_REQUEST and answer.body == b""
    refused = [e for e in logs if e["event"] == "keystore_sealed_request_refused"]
    assert refused and refused[0]["request"] == old.secret.request_id.hex()
    assert refused[0]["reason"] == "past its deadline"
    far = _seal(tk, m.Op.SEAL, wallet, m.Seal(label, b"c", transport.UNSEALED), CARD,
                ttl_ms=transport.MAX_TTL_MS + 60_000)  # fmt: skip
    assert (await _ask(service, wallet, m.Op.SEAL, far)).fault is Fault.SEAL_INVALID


async def test_old_clear_records_are_refused(service: KeystoreService) -> None:
    """The records that carried a secret, or asked for one back, in clear no longer decode:
    BAD_REQUEST, nothing done."""
    wallet, issuer, ca = _uniq("wallet"), _uniq("issuer"), _uniq("ca")
    label = f"{wallet}/vault"
    await _ask(service, wallet, m.Op.CREATE, m.CreateKey(label, m.KeyKind.AES256,
                                                         m.KeyUsage.SECRET))  # fmt: skip
    clear = [
        (wallet, m.Op.SEAL, [label, CARD, b"card-1"]),  # Seal(label, plaintext, aad)
        (wallet, m.Op.OPEN, [label, bytes(40), b"card-1"]),  # Open(label, sealed, aad)
        (issuer, m.Op.HMAC, [f"{issuer}/pan-index", PAN]),  # Hmac(label, data)
        (issuer, m.Op.PIN_ISSUE, [f"{issuer}/pvk", "1234567", "1234"]),  # PinIssue(l, acc, pin)
        # and those whose clear answer held a secret: Decrypt, Derive, Batch of decrypts
        (ca, m.Op.DECRYPT, [f"{ca}/kex", bytes(256), "sha1"]),
        (ca, m.Op.DERIVE, [f"{ca}/kex", b"\x04" + bytes(64), b"i", 32]),
        (ca, m.Op.BATCH, [[[int(m.Op.DECRYPT), f"{ca}/kex", bytes(256), "sha1"]]]),
    ]
    with capture_logs() as logs:
        for caller, op, fields in clear:
            body = codec.packb([int(op), codec.packb(fields)])
            answer = codec.decode(m.Response, await service.handle_bytes(caller, body))
            assert answer.fault is Fault.BAD_REQUEST, (op, answer)
            assert answer.body == b""
    assert [e["op"] for e in logs if e["event"] == "keystore_op"] == ["decode"] * len(clear)
    assert PAN.decode() not in repr(logs) and "1234567" not in repr(logs)


async def test_pin_issue_sealed_gives_the_pvv_and_the_pin_never_travels(
    service: KeystoreService,
) -> None:
    issuer = _uniq("issuer")
    pvk = f"{issuer}/pvk"
    await _run(service, lambda: service.hsm.create_key(pvk, m.KeyKind.HMAC256,
                                                       m.KeyUsage.SECRET))  # fmt: skip
    tk = await _transport(service, issuer)
    issued = codec.encode(m.IssuedPin("7654321", "4826"))
    record = _seal(tk, m.Op.PIN_ISSUE, issuer, m.PinIssue(pvk, transport.UNSEALED), issued)
    wire = m.encode_request(m.Op.PIN_ISSUE, record)
    assert b"4826" not in wire and b"7654321" not in wire
    answer = await _ask(service, issuer, m.Op.PIN_ISSUE, record)
    assert answer.fault is Fault.OK, answer.text
    pvv = codec.decode(m.Blob, answer.body).data
    want = service.hsm.hmac(pvk, pin.pvv_input("7654321", "4826"))[: pin.PVV_BYTES]
    assert pvv == want


async def test_client_seals_over_the_bus(keystore_deployment: KeystoreDeployment) -> None:
    """The client's hmac/seal/open/pin_issue go sealed through the real workers; the
    transport key is read once; a reply meant for one caller is useless to another."""
    wallet = await keystore_deployment.client(_uniq("wallet"))
    await wallet.create_key("vault", m.KeyKind.AES256, m.KeyUsage.SECRET)
    first = await wallet.transport_key()
    assert await wallet.transport_key() is first  # cached
    stored = await wallet.seal(wallet.label("vault"), CARD, b"card-9")
    assert await wallet.open(wallet.label("vault"), stored, b"card-9") == CARD
    thief = await keystore_deployment.client(_uniq("wallet"))
    victim_ask = await wallet.sealed(
        m.Op.OPEN, m.Open(wallet.label("vault"), stored, b"card-9", transport.UNSEALED),
        os.urandom(32),
    )  # fmt: skip
    from keystore.errors import Forbidden, SealInvalid

    with pytest.raises(Forbidden):  # the label names the wallet's key: not the thief's
        await thief._call(m.Op.OPEN, victim_ask)
    moved = dataclasses.replace(victim_ask, label=thief.label("vault"))
    await thief.create_key("vault", m.KeyKind.AES256, m.KeyUsage.SECRET)
    with pytest.raises(SealInvalid):
        await thief._call(m.Op.OPEN, moved)


async def test_a_session_key_is_unwrapped_once_per_caller(service: KeystoreService) -> None:
    """One token decrypt per client session; the same wrapped key from another identity is
    unwrapped afresh, refused, and never kept for it."""
    wallet, other = _uniq("wallet"), _uniq("wallet")
    for who in (wallet, other):
        await _ask(service, who, m.Op.CREATE, m.CreateKey(f"{who}/vault", m.KeyKind.AES256,
                                                          m.KeyUsage.SECRET))  # fmt: skip
    session = (await _transport(service, wallet)).session()
    before = service.opener.unwraps
    for i in range(3):
        record = _seal(session, m.Op.SEAL, wallet,  # type: ignore[arg-type]
                       m.Seal(f"{wallet}/vault", b"c%d" % i, transport.UNSEALED), CARD)
        assert (await _ask(service, wallet, m.Op.SEAL, record)).fault is Fault.OK
    assert service.opener.unwraps - before == 1
    for _ in range(2):  # the wallet's session presented by another identity
        theirs = _seal(session, m.Op.SEAL, wallet,  # type: ignore[arg-type]
                       m.Seal(f"{other}/vault", b"c", transport.UNSEALED), CARD)
        assert (await _ask(service, other, m.Op.SEAL, theirs)).fault is Fault.SEAL_INVALID
    assert service.opener.unwraps - before == 3
