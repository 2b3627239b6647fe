"""keystore/coalesce.py and KeystoreClient Rule 8: calls made while the client is busy go to
the keystore together as one batch, and each caller still gets its own outcome.

The first half drives the coalescer's scheduling with in-process senders (what it sends,
when, and who gets what); the second half runs it against two real keystore workers on
SoftHSM2 over RabbitMQ, including a caller who slips another identity's key into a batch."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from keystore import messages as m
from keystore.coalesce import Coalescer
from keystore.errors import Forbidden, KeystoreError, KeystoreUnavailable, NoSuchKey
from protocol import primitives
from tests.fixtures_keystore import KeystoreDeployment


class Keystore:
    """Records what the coalescer sends; a request waits on ``gate`` when one is set."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.fail_batches: Exception | None = None

    async def one(self, item: str) -> str:
        self.sent.append([item])
        if self.gate is not None:
            await self.gate.wait()
        if item.startswith("bad"):
            raise NoSuchKey(item)
        return item.upper()

    async def many(self, items: Sequence[str]) -> list[str | Exception]:
        self.sent.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_batches is not None:
            raise self.fail_batches
        return [NoSuchKey(i) if i.startswith("bad") else i.upper() for i in items]


def coalescer(ks: Keystore, limit: int = 1, max_items: int = 32, max_waiting: int = 4096
              ) -> Coalescer[str, str]:  # fmt: skip
    return Coalescer(ks.one, ks.many, limit=limit, max_items=max_items, max_waiting=max_waiting,
                     overloaded=lambda: KeystoreUnavailable("too many waiting"))  # fmt: skip


async def test_an_idle_client_sends_a_call_alone_and_at_once() -> None:
    ks = Keystore()
    c = coalescer(ks)
    assert await c.submit("a") == "A"
    assert await c.submit("b") == "B"
    assert ks.sent == [["a"], ["b"]]  # no batch of one, nobody waited for company
    assert (c.requests, c.items, c.in_flight) == (2, 2, 0)


async def test_calls_of_one_turn_leave_together() -> None:
    ks = Keystore()
    c = coalescer(ks, limit=4)
    results = await asyncio.gather(*(c.submit(x) for x in "abcde"))
    assert results == ["A", "B", "C", "D", "E"]
    assert ks.sent == [list("abcde")]  # one request for five calls


async def test_calls_made_while_busy_wait_and_go_as_one_batch() -> None:
    ks = Keystore()
    ks.gate = asyncio.Event()
    c = coalescer(ks, limit=1)
    first = asyncio.ensure_future(c.submit("a"))
    await asyncio.sleep(0.01)
    assert ks.sent == [["a"]] and c.in_flight == 1
    later = [asyncio.ensure_future(c.submit(x)) for x in ("b", "c", "d")]
    await asyncio.sleep(0.01)
    assert ks.sent == [["a"]]  # the limit holds: they wait
    ks.gate.set()
    assert await first == "A"
    assert await asyncio.gather(*later) == ["B", "C", "D"]
    assert ks.sent == [["a"], ["b", "c", "d"]]


async def test_a_batch_never_exceeds_max_items() -> None:
    ks = Keystore()
    c = coalescer(ks, limit=8, max_items=3)
    results = await asyncio.gather(*(c.submit(str(i)) for i in range(8)))
    assert results == [str(i) for i in range(8)]
    assert [len(s) for s in ks.sent] == [3, 3, 2]


async def test_each_caller_gets_its_own_items_error() -> None:
    ks = Keystore()
    c = coalescer(ks, limit=4)
    outcomes = await asyncio.gather(
        c.submit("a"), c.submit("bad-key"), c.submit("c"), return_exceptions=True
    )
    assert outcomes[0] == "A" and outcomes[2] == "C"
    assert isinstance(outcomes[1], NoSuchKey)
    assert ks.sent == [["a", "bad-key", "c"]]


async def test_a_batch_that_fails_as_a_whole_fails_each_of_its_callers() -> None:
    ks = Keystore()
    ks.fail_batches = KeystoreUnavailable("keystore unreachable")
    c = coalescer(ks, limit=4)
    outcomes = await asyncio.gather(*(c.submit(x) for x in "abc"), return_exceptions=True)
    assert all(isinstance(o, KeystoreUnavailable) for o in outcomes)
    assert c.in_flight == 0
    ks.fail_batches = None
    assert await c.submit("d") == "D"  # the client goes on


async def test_a_cancelled_caller_is_not_sent_and_the_others_are_answered() -> None:
    ks = Keystore()
    ks.gate = asyncio.Event()
    c = coalescer(ks, limit=1)
    first = asyncio.ensure_future(c.submit("a"))
    await asyncio.sleep(0.01)
    waiting = {x: asyncio.ensure_future(c.submit(x)) for x in ("b", "c")}
    await asyncio.sleep(0.01)
    waiting["b"].cancel()
    ks.gate.set()
    assert await first == "A" and await waiting["c"] == "C"
    assert ks.sent == [["a"], ["c"]]
    with pytest.raises(asyncio.CancelledError):
        await waiting["b"]


async def test_waiting_calls_are_bounded() -> None:
    ks = Keystore()
    ks.gate = asyncio.Event()
    c = coalescer(ks, limit=1, max_waiting=3)
    calls = [asyncio.ensure_future(c.submit("0"))]
    await asyncio.sleep(0.01)  # in flight
    calls += [asyncio.ensure_future(c.submit(str(i))) for i in range(1, 4)]
    await asyncio.sleep(0.01)  # three waiting
    with pytest.raises(KeystoreUnavailable):
        await c.submit("one too many")
    ks.gate.set()
    assert await asyncio.gather(*calls) == ["0", "1", "2", "3"]
    await c.close()


# --- against two keystore workers on SoftHSM2 ------------------------------------------------


@pytest.mark.integration
async def test_concurrent_signs_and_decrypts_batch_and_each_answer_is_right(
    keystore_deployment: KeystoreDeployment,
) -> None:
    tag = os.urandom(3).hex()
    client = await keystore_deployment.client(f"merchant.c{tag}")
    assert client.coalescer is not None
    sig = await client.private_key(
        (await client.create_key("sig", m.KeyKind.RSA2048, m.KeyUsage.SIGN)).label
    )
    kx = await client.create_key("kx", m.KeyKind.RSA2048, m.KeyUsage.EXCHANGE)
    kx_public = serialization.load_der_public_key(kx.public_key)
    assert isinstance(kx_public, rsa.RSAPublicKey)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
    digests = [hashlib.sha256(f"order {i}".encode()).digest() for i in range(40)]
    secrets_ = [os.urandom(32) for _ in range(20)]
    before = (client.coalescer.requests, client.coalescer.items)

    signed, opened = await asyncio.gather(
        asyncio.gather(*(sig.sign_digest(d) for d in digests)),
        asyncio.gather(*(client.decrypt(kx.label, kx_public.encrypt(s, oaep)) for s in secrets_)),
    )
    for digest, signature in zip(digests, signed, strict=True):
        primitives.verify_digest(sig.public_key(), digest, signature)  # raises if wrong
    assert list(opened) == secrets_
    requests = client.coalescer.requests - before[0]
    items = client.coalescer.items - before[1]
    assert items == 60 and requests < items / 4  # 60 calls in a handful of round trips
    # Every item was performed and audited as the single operation it names (service Rule 1).
    ours = (sig.key_id, kx.label)
    audited = [e for e in keystore_deployment.audit_events()
               if e.get("label") in ours and e["op"] in ("sign", "decrypt")]  # fmt: skip
    assert sum(e["outcome"] == "ok" for e in audited) >= 60


@pytest.mark.integration
async def test_a_foreign_or_missing_key_in_a_batch_fails_only_its_own_caller(
    keystore_deployment: KeystoreDeployment,
) -> None:
    """An insider with the merchant's login slips the gateway's key into a batch among its
    own signatures: that item is refused (and audited as refused), the others are signed."""
    tag = os.urandom(3).hex()
    victim = await keystore_deployment.client(f"gateway.v{tag}")
    foreign = (await victim.create_key("sig", m.KeyKind.RSA2048, m.KeyUsage.SIGN)).label
    insider = await keystore_deployment.client(f"merchant.i{tag}")
    own = await insider.private_key(
        (await insider.create_key("sig", m.KeyKind.RSA2048, m.KeyUsage.SIGN)).label
    )
    digest = hashlib.sha256(b"pay me").digest()
    before = insider.coalescer.requests if insider.coalescer else 0
    outcomes = await asyncio.gather(
        own.sign_digest(digest),
        insider.sign(foreign, digest),
        insider.sign(insider.label("no-such-key"), digest),
        own.sign_digest(digest),
        return_exceptions=True,
    )
    assert insider.coalescer is not None and insider.coalescer.requests - before == 1
    primitives.verify_digest(own.public_key(), digest, outcomes[0])
    primitives.verify_digest(own.public_key(), digest, outcomes[3])
    assert isinstance(outcomes[1], Forbidden)
    assert isinstance(outcomes[2], KeystoreError) and not isinstance(outcomes[2], Forbidden)
    refused = [e for e in keystore_deployment.audit_events()
               if e.get("label") == foreign and e["caller"].endswith(f"i{tag}")]  # fmt: skip
    assert [e["outcome"] for e in refused] == ["forbidden"]
    assert digest.hex() not in keystore_deployment.log_file.read_text()  # no data in the audit
