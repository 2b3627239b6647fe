"""Acceptance: killing and restarting the keystore under load never yields a wrong answer."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import pytest

from keystore import messages as m
from keystore.errors import KeystoreError
from protocol import primitives
from protocol.errors import ProtocolError
from setpay.config import Settings
from tests.fixtures_keystore import KeystoreDeployment, start_deployment

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
async def restartable(
    broker_vhost: object, keystore_settings: Settings, tmp_path: object
) -> AsyncIterator[KeystoreDeployment]:
    deployment = await start_deployment(
        broker_vhost,
        keystore_settings,
        tmp_path,
        queue="keystore.restart",
        workers=1,  # type: ignore[arg-type]
    )
    try:
        yield deployment
    finally:
        await deployment.close()
        await deployment.pool.stop()


async def test_kill_and_restart_during_a_stream(restartable: KeystoreDeployment) -> None:
    """SIGKILL the worker mid-stream: callers get KeystoreErrors, then recover; all verify."""
    client = await restartable.client(f"merchant.r{os.urandom(3).hex()}", timeout=2.0)
    key = await client.private_key(
        (await client.create_key("sig", m.KeyKind.P256, m.KeyUsage.SIGN)).label
    )
    ok_before, ok_after, errors, wrong = 0, 0, 0, 0
    killed = asyncio.Event()
    restarted = asyncio.Event()
    enough_before = asyncio.Event()
    enough_errors = asyncio.Event()
    done = asyncio.Event()

    async def caller(n: int) -> None:
        nonlocal ok_before, ok_after, errors, wrong
        i = 0
        while not done.is_set():
            digest = hashlib.sha256(f"{n}-{i}".encode()).digest()
            i += 1
            was_restarted = restarted.is_set()
            try:
                signature = await key.sign_digest(digest)
            except KeystoreError:
                errors += 1
                if killed.is_set():
                    enough_errors.set()
                continue
            try:
                primitives.verify_digest(key.public_key(), digest, signature)
            except ProtocolError:
                wrong += 1
                continue
            if was_restarted:
                ok_after += 1
                if ok_after >= 50:
                    done.set()
            else:
                ok_before += 1
                if ok_before >= 50:
                    enough_before.set()

    callers = [asyncio.create_task(caller(n)) for n in range(4)]
    try:
        async with asyncio.timeout(90):
            await enough_before.wait()
            restartable.pool.kill()
            killed.set()
            await enough_errors.wait()
            await restartable.pool.start()
            restarted.set()
            await done.wait()
    finally:
        done.set()
        await asyncio.gather(*callers, return_exceptions=True)
    assert wrong == 0
    assert ok_before >= 50 and errors >= 1 and ok_after >= 50
