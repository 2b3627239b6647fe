"""The keystore actor over the real RabbitMQ: two spawned workers, real SoftHSM2 token."""

from __future__ import annotations

import asyncio
import hashlib
import os

import aio_pika
import aiormq
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keystore import messages as m
from keystore.errors import DecryptionFailed, Forbidden, KeystoreError
from protocol import primitives
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PrivateKey
from tests.fixtures_keystore import KeystoreDeployment

pytestmark = pytest.mark.integration


def _uniq(role: str) -> str:
    return f"{role}.t{os.urandom(3).hex()}"


async def test_private_keys_work_for_protocol(keystore_deployment: KeystoreDeployment) -> None:
    """Signatures verify through cryptography; OAEP ciphertexts decrypt through the keystore."""
    client = await keystore_deployment.client(_uniq("merchant"))
    await client.create_key("sig", m.KeyKind.RSA2048, m.KeyUsage.SIGN)
    await client.create_key("kex", m.KeyKind.RSA2048, m.KeyUsage.EXCHANGE)
    await client.create_key("ecsig", m.KeyKind.P256, m.KeyUsage.SIGN)
    await client.create_key("ecdh", m.KeyKind.P256, m.KeyUsage.EXCHANGE)
    for name in ("sig", "ecsig"):
        key = await client.private_key(client.label(name))
        assert isinstance(key, PrivateKey)
        signature = await primitives.sign(key, "PI-TBS", b"order 42")
        primitives.verify(key.public_key(), "PI-TBS", b"order 42", signature)
        with pytest.raises(ProtocolError):
            primitives.verify(key.public_key(), "PI-TBS", b"order 43", signature)

    kex = await client.private_key(client.label("kex"))
    h = kex.suite.oaep_hash_algorithm()
    ct = kex.public_key().encrypt(b"k" * 32, padding.OAEP(padding.MGF1(h), h, None))  # type: ignore[union-attr]
    assert await kex.decrypt(ct) == b"k" * 32
    with pytest.raises(ProtocolError) as bad:
        await kex.decrypt(ct[:-1] + bytes([ct[-1] ^ 1]))
    assert bad.value.code is ErrorCode.DECRYPTION_FAILURE

    ecdh = await client.private_key(client.label("ecdh"))
    eph = ec.generate_private_key(ec.SECP256R1())
    point = eph.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    want = HKDF(hashes.SHA256(), 32, salt=None, info=b"EXH").derive(
        eph.exchange(ec.ECDH(), ecdh.public_key())  # type: ignore[arg-type]
    )
    assert await ecdh.derive(point, b"EXH", 32) == want
    assert sorted(k.label for k in await client.list_keys()) == sorted(
        client.label(n) for n in ("sig", "kex", "ecsig", "ecdh")
    )


async def test_secret_keys_per_role(keystore_deployment: KeystoreDeployment) -> None:
    """Wallet seals and opens; gateway HMACs; each refused what its role lacks."""
    wallet = await keystore_deployment.client(_uniq("wallet"))
    await wallet.create_key("dek", m.KeyKind.AES256, m.KeyUsage.SECRET)
    sealed = await wallet.seal(wallet.label("dek"), b"PANData", b"wallet-7")
    assert await wallet.open(wallet.label("dek"), sealed, b"wallet-7") == b"PANData"
    with pytest.raises(DecryptionFailed):
        await wallet.open(wallet.label("dek"), sealed, b"wallet-8")
    with pytest.raises(Forbidden, match="may not hmac"):
        await wallet.hmac(wallet.label("dek"), b"x")
    gateway = await keystore_deployment.client(_uniq("gateway"))
    await gateway.create_key("mac", m.KeyKind.HMAC256, m.KeyUsage.SECRET)
    tag = await gateway.hmac(gateway.label("mac"), b"account|ref")
    assert len(tag) == 32 and tag == await gateway.hmac(gateway.label("mac"), b"account|ref")
    with pytest.raises(Forbidden, match="may not seal"):
        await gateway.seal(gateway.label("mac"), b"x")


async def test_other_actors_keys_and_roles_refused(keystore_deployment: KeystoreDeployment) -> None:
    """Another actor's key, or an operation outside the role, is refused and audited."""
    merchant = await keystore_deployment.client(_uniq("merchant"))
    info = await merchant.create_key("sig", m.KeyKind.P256, m.KeyUsage.SIGN)
    thief = await keystore_deployment.client(_uniq("gateway"))
    digest = hashlib.sha256(b"steal").digest()
    with pytest.raises(Forbidden, match="does not own"):
        await thief.sign(info.label, digest)
    with pytest.raises(Forbidden, match="does not own"):
        await thief.key_info(info.label)
    issuer = await keystore_deployment.client(_uniq("issuer"))
    with pytest.raises(Forbidden, match="may not create"):
        await issuer.create_key("k", m.KeyKind.RSA2048, m.KeyUsage.SIGN)
    results = await thief.sign_many(info.label, [digest])
    assert isinstance(results[0], Forbidden)
    events = [e for e in keystore_deployment.audit_events() if e.get("label") == info.label]
    outcomes = {(e["caller"], e["op"], e["outcome"]) for e in events}
    assert (thief.identity, "sign", "forbidden") in outcomes
    assert (thief.identity, "public_key", "forbidden") in outcomes
    assert (merchant.identity, "create", "ok") in outcomes


async def test_spoofed_user_id_is_rejected_by_rabbitmq(
    keystore_deployment: KeystoreDeployment,
) -> None:
    """A message whose user_id is not its connection's login never reaches the keystore."""
    victim = await keystore_deployment.client(_uniq("merchant"))
    info = await victim.create_key("sig", m.KeyKind.P256, m.KeyUsage.SIGN)
    attacker_id = _uniq("merchant")
    connection = await aio_pika.connect(keystore_deployment.url_for(attacker_id))
    try:
        channel = await connection.channel(publisher_confirms=True)
        body = m.encode_request(m.Op.SIGN, m.Sign(info.label, hashlib.sha256(b"x").digest()))
        forged = aio_pika.Message(body, user_id=victim.identity, reply_to="amq.rabbitmq.reply-to")
        with pytest.raises((aiormq.exceptions.ChannelPreconditionFailed,
                            aiormq.exceptions.ChannelClosed)) as refused:  # fmt: skip
            await channel.default_exchange.publish(forged, keystore_deployment.queue)
            await channel.get_queue(keystore_deployment.queue, ensure=False)
        assert "user_id" in str(refused.value) or "PRECONDITION_FAILED" in str(refused.value)
    finally:
        await connection.close()
    # A genuine request after the forged one: it is served, and the forged one never was.
    await victim.sign(info.label, hashlib.sha256(b"y").digest())
    signs = [e for e in keystore_deployment.audit_events() if e.get("label") == info.label]
    assert [(e["op"], e["caller"]) for e in signs] == [
        ("create", victim.identity),
        ("sign", victim.identity),
    ]


async def test_batch_sign_and_decrypt(keystore_deployment: KeystoreDeployment) -> None:
    """A batch of N items answers N results in order, each verifiable."""
    client = await keystore_deployment.client(_uniq("ca"))
    sig = await client.private_key(
        (await client.create_key("sig", m.KeyKind.RSA2048, m.KeyUsage.SIGN)).label
    )
    kex = await client.private_key(
        (await client.create_key("kex", m.KeyKind.RSA2048, m.KeyUsage.EXCHANGE)).label
    )
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(40)]
    signatures = await client.sign_many(sig.key_id, digests)
    for digest, signature in zip(digests, signatures, strict=True):
        assert isinstance(signature, bytes)
        primitives.verify_digest(sig.public_key(), digest, signature)
    h = kex.suite.oaep_hash_algorithm()
    plains = [os.urandom(32) for _ in range(10)]
    cts = [kex.public_key().encrypt(p, padding.OAEP(padding.MGF1(h), h, None)) for p in plains]  # type: ignore[union-attr]
    cts[3] = b"\0" * 256
    opened = await client.decrypt_many(kex.key_id, cts)
    assert isinstance(opened[3], DecryptionFailed)
    assert [o for i, o in enumerate(opened) if i != 3] == [
        p for i, p in enumerate(plains) if i != 3
    ]


async def test_concurrent_calls_use_both_workers(keystore_deployment: KeystoreDeployment) -> None:
    """Many requests in flight are served by both worker processes, each answer correct."""
    client = await keystore_deployment.client(_uniq("merchant"))
    key = await client.private_key(
        (await client.create_key("sig", m.KeyKind.P256, m.KeyUsage.SIGN)).label
    )
    digests = [hashlib.sha256(os.urandom(8)).digest() for _ in range(200)]
    sigs = await asyncio.gather(*(key.sign_digest(d) for d in digests))
    for d, s in zip(digests, sigs, strict=True):
        primitives.verify_digest(key.public_key(), d, s)
    events = [e for e in keystore_deployment.audit_events() if e["label"] == key.key_id]
    ops = [e["op"] for e in events]
    assert (ops.count("create"), ops.count("public_key"), ops.count("sign")) == (1, 1, 200)
    workers = {p.pid for p in keystore_deployment.pool.processes.values()}
    assert {e["pid"] for e in events if e["op"] == "sign"} == workers


async def test_errors_are_keystore_errors(keystore_deployment: KeystoreDeployment) -> None:
    """Unknown key and wrong usage come back as specific KeystoreError subclasses."""
    client = await keystore_deployment.client(_uniq("merchant"))
    with pytest.raises(KeystoreError, match="no key"):
        await client.sign(client.label("absent"), b"\0" * 32)
