"""Two keystore workers share one audit log: under load every line is whole and none is lost."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import Counter

import pytest

from keystore import messages as m
from tests.fixtures_keystore import KeystoreDeployment

pytestmark = pytest.mark.integration

OPERATIONS = 5000
IN_FLIGHT = 64


async def test_5000_concurrent_ops_leave_5000_whole_audit_lines(
    keystore_deployment: KeystoreDeployment,
) -> None:
    """A mix of cheap audited ops over both workers: every log line parses as JSON and each
    op of this test has exactly one audit line."""
    tag = os.urandom(3).hex()
    merchant = await keystore_deployment.client(f"merchant.log{tag}")
    wallet = await keystore_deployment.client(f"wallet.log{tag}")
    gateway = await keystore_deployment.client(f"gateway.log{tag}")
    sig = (await merchant.create_key("sig", m.KeyKind.P256, m.KeyUsage.SIGN)).label
    dek = (await wallet.create_key("dek", m.KeyKind.AES256, m.KeyUsage.SECRET)).label
    mac = (await gateway.create_key("mac", m.KeyKind.HMAC256, m.KeyUsage.SECRET)).label
    digest = hashlib.sha256(b"audit").digest()
    calls = (
        lambda: merchant.sign(sig, digest),
        lambda: merchant.key_info(sig),
        lambda: wallet.seal(dek, b"card data", b"aad"),
        lambda: gateway.hmac(mac, b"account"),
    )
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with gate:
            await calls[i % len(calls)]()

    await asyncio.gather(*(one(i) for i in range(OPERATIONS)))

    lines = keystore_deployment.log_file.read_bytes().decode().splitlines()
    records = [json.loads(line) for line in lines]  # raises on any torn or merged line
    ours = [
        r for r in records
        if r.get("event") == "keystore_op" and r.get("label") in (sig, dek, mac)
        and r.get("op") != "create"
    ]  # fmt: skip
    assert len(ours) == OPERATIONS
    assert Counter(r["op"] for r in ours) == {
        "sign": OPERATIONS // 4, "public_key": OPERATIONS // 4,
        "seal": OPERATIONS // 4, "hmac": OPERATIONS // 4,
    }  # fmt: skip
    assert {r["outcome"] for r in ours} == {"ok"}
    workers = {p.pid for p in keystore_deployment.pool.processes.values()}
    assert {r["pid"] for r in ours} == workers  # both workers wrote into the one file
