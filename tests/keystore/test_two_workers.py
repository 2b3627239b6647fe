"""Keys created on one keystore worker are usable at once on the other (no NoSuchKey)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from keystore import messages as m
from keystore.errors import KeystoreError
from protocol import primitives
from tests.fixtures_keystore import KeystoreDeployment

pytestmark = pytest.mark.integration

# RSA key generation is slow, which widens the window of the race this test looks for.
KEYS = 160
IN_FLIGHT = 16


async def test_create_then_use_across_workers(keystore_deployment: KeystoreDeployment) -> None:
    """Concurrent creates, each followed at once by public_key and sign: zero failures, and
    creates and uses landed on different workers."""
    tag = os.urandom(3).hex()
    # Creation is serialised across workers (hsm.py Rule 5) and RSA keygen is slow on a busy
    # machine: a generous deadline, since this test is about NoSuchKey, not speed.
    clients = [
        await keystore_deployment.client(f"wallet.w{tag}{i}", timeout=300) for i in range(4)
    ]
    gate = asyncio.Semaphore(IN_FLIGHT)
    failures: list[str] = []
    digest = hashlib.sha256(b"use at once").digest()

    async def create_and_use(i: int) -> None:
        client = clients[i % len(clients)]
        async with gate:
            try:
                info = await client.create_key(f"card{i}", m.KeyKind.RSA2048, m.KeyUsage.SIGN)
                key = await client.private_key(info.label)
                primitives.verify_digest(key.public_key(), digest, await key.sign_digest(digest))
            except KeystoreError as exc:
                failures.append(f"card{i}: {type(exc).__name__}: {exc.text}")

    await asyncio.gather(*(create_and_use(i) for i in range(KEYS)))
    assert failures == []
    labels = {clients[i % len(clients)].label(f"card{i}") for i in range(KEYS)}
    events = [e for e in keystore_deployment.audit_events() if e.get("label") in labels]
    created_on = {e["label"]: e["pid"] for e in events if e["op"] == "create"}
    crossed = {
        e["label"] for e in events if e["op"] != "create" and e["pid"] != created_on[e["label"]]
    }
    assert len(created_on) == KEYS and len(crossed) >= KEYS // 10  # the race was exercised
