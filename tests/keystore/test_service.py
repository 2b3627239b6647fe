"""The request handler in-process: policy, strict decoding, one audit event per operation."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from keystore import messages as m
from keystore import transport
from keystore.errors import Fault
from keystore.hsm import Hsm, TokenConfig
from keystore.policy import Policy
from keystore.service import KeystoreService
from protocol import codec

pytestmark = pytest.mark.integration

DIGEST = hashlib.sha256(b"service").digest()


@pytest.fixture(scope="module")
async def service(token_config: TokenConfig) -> AsyncIterator[KeystoreService]:
    svc = KeystoreService(Hsm(token_config), Policy())
    await svc.start()
    yield svc
    await svc.close()


async def _ask(svc: KeystoreService, caller: str | None, op: m.Op, record: object) -> m.Response:
    raw = await svc.handle_bytes(caller, m.encode_request(op, record))
    return codec.decode(m.Response, raw)


async def test_owner_and_role_rules(service: KeystoreService) -> None:
    """Own keys only, role's operations only, no identity no service."""
    merchant = f"merchant.s{os.urandom(3).hex()}"
    label = f"{merchant}/sig"
    created = await _ask(service, merchant, m.Op.CREATE, m.CreateKey(label, m.KeyKind.P256,
                                                                     m.KeyUsage.SIGN))  # fmt: skip
    assert created.fault is Fault.OK
    assert (await _ask(service, merchant, m.Op.SIGN, m.Sign(label, DIGEST))).fault is Fault.OK
    other = await _ask(service, "gateway.pg9", m.Op.SIGN, m.Sign(label, DIGEST))
    assert other.fault is Fault.FORBIDDEN and "does not own" in other.text
    issuer = await _ask(service, "issuer.h1", m.Op.SIGN, m.Sign("issuer.h1/x", DIGEST))
    assert issuer.fault is Fault.FORBIDDEN and "may not sign" in issuer.text
    nobody = await _ask(service, None, m.Op.LIST, m.ListKeys())
    assert nobody.fault is Fault.FORBIDDEN
    stranger = await _ask(service, "root", m.Op.LIST, m.ListKeys())
    assert stranger.fault is Fault.FORBIDDEN
    bad_label = await _ask(service, merchant, m.Op.SIGN, m.Sign("no-owner", DIGEST))
    assert bad_label.fault is Fault.BAD_REQUEST


async def test_malformed_requests_get_bad_request(service: KeystoreService) -> None:
    """Garbage, wrong field types and short digests are refused without touching the token."""
    for body in (b"\xc1", codec.packb([3]), codec.packb([3, b"\x90"]), b""):
        response = codec.decode(m.Response, await service.handle_bytes("merchant.a", body))
        assert response.fault is Fault.BAD_REQUEST
    short = codec.encode(m.Request(m.Op.SIGN, codec.packb(["merchant.a/k", b"\0" * 31])))
    response = codec.decode(m.Response, await service.handle_bytes("merchant.a", short))
    assert response.fault is Fault.BAD_REQUEST and "digest" in response.text


async def test_every_operation_is_audited_without_data(service: KeystoreService) -> None:
    """One audit event per operation (batch items included) naming caller/label/op/outcome."""
    gw = f"gateway.a{os.urandom(3).hex()}"
    label = f"{gw}/sig"
    await _ask(service, gw, m.Op.CREATE, m.CreateKey(label, m.KeyKind.RSA2048, m.KeyUsage.SIGN))
    answer = await _ask(service, gw, m.Op.TRANSPORT_KEY, m.TransportKeyRequest())
    tk = transport.TransportPublic.of(codec.decode(m.TransportKey, answer.body))
    reply_key = os.urandom(32)
    items = [m.BatchItem(m.Op.SIGN, label, DIGEST, None),
             m.BatchItem(m.Op.SIGN, "merchant.z/k", DIGEST, None)]  # fmt: skip
    with capture_logs() as logs:
        single = await _ask(service, gw, m.Op.SIGN, m.Sign(label, DIGEST))
        asked = transport.seal_request(tk, m.Op.BATCH, gw, m.Batch(items, transport.UNSEALED),
                                       reply_key, ttl_ms=10_000)  # fmt: skip
        batch = await _ask(service, gw, m.Op.BATCH, asked)
    assert single.fault is Fault.OK and batch.fault is Fault.OK
    sealed = codec.decode(m.SealedReply, batch.body).data
    clear = transport.open_reply(reply_key, asked.secret.request_id, sealed)
    results = codec.decode(m.BatchResult, clear).results
    assert [r.fault for r in results] == [Fault.OK, Fault.FORBIDDEN]
    events = [e for e in logs if e["event"] == "keystore_op"]
    assert [(e["op"], e["label"], e["outcome"]) for e in events] == [
        ("sign", label, "ok"),
        ("sign", label, "ok"),
        ("sign", "merchant.z/k", "forbidden"),
    ]
    assert all(e["caller"] == gw and e["duration_ms"] >= 0 for e in events)
    text = repr(logs)
    assert DIGEST.hex() not in text and repr(DIGEST) not in text
    signature = codec.decode(m.Blob, single.body).data
    assert signature.hex() not in text
