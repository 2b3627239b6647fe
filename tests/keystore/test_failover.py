"""The keystore across a broker failover and a killed keystore process, on the real RabbitMQ
and SoftHSM2: a call whose reply was lost with the caller's link is sent again only when its
operation is safe to repeat (sign is, create key is not: client Rule 7), and keystore workers
die with their parent (worker Rule 4)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker.connection import connect
from broker.errors import ReplyLost
from broker.rpc import RpcRequest, serve_rpc
from keystore import messages as m
from keystore.client import KeystoreClient
from keystore.errors import KeystoreUnavailable
from keystore.hsm import Hsm, TokenConfig
from keystore.operations import changes_state
from keystore.policy import Policy
from keystore.service import KeystoreService
from keystore.worker import WorkerSpec
from protocol import primitives
from setpay.config import Settings
from tests.broker.test_transient import RECONNECT, cut_link

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_only_operations_that_change_nothing_are_resent() -> None:
    changing = {m.Op.CREATE, m.Op.OPEN_PI_ACCOUNT, m.Op.PIN_PVV, m.Op.PIN_VERIFY, m.Op.PIN_ISSUE}
    assert {op for op in m.Op if changes_state(op)} == changing


class HoldingKeystore:
    """The real keystore service, in process, whose first request of an operation in ``hold``
    waits until the same operation is asked again or ``release`` is set."""

    def __init__(self, service: KeystoreService, hold: set[m.Op]) -> None:
        self.service = service
        self.hold = hold
        self.ops: list[m.Op] = []
        self.held = asyncio.Event()
        self.again = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: RpcRequest) -> bytes:
        op = m.decode(m.Request, request.body).op
        self.ops.append(op)
        if op in self.hold:
            if self.ops.count(op) == 1:
                self.held.set()
                done = asyncio.ensure_future(self.again.wait())
                release = asyncio.ensure_future(self.release.wait())
                await asyncio.wait({done, release}, return_when=asyncio.FIRST_COMPLETED)
                done.cancel()
                release.cancel()
            else:
                self.again.set()
        return await self.service.handle(request)


@pytest.fixture
async def service(token_config: TokenConfig, broker_vhost: Any) -> AsyncIterator[KeystoreService]:
    svc = KeystoreService(Hsm(token_config), Policy(identity_prefix=broker_vhost.prefix))
    await svc.start()
    yield svc
    await svc.close()


async def serve_holding(
    broker_vhost: Any, service: KeystoreService, hold: set[m.Op]
) -> tuple[HoldingKeystore, Any, Any, KeystoreClient, Any]:
    tag = os.urandom(3).hex()
    queue = f"keystore.failover.{tag}"
    keystore_url = broker_vhost.add_user(f"keystore.f{tag}", "pw-" + tag)
    keystore_bus = await connect(keystore_url, name=f"keystore.f{tag}")
    holding = HoldingKeystore(service, hold)
    server = await serve_rpc(keystore_bus, queue, holding.handle)
    merchant = f"merchant.f{tag}"
    client_bus = await connect(broker_vhost.add_user(merchant, "pw-" + tag), name=merchant,
                               reconnect_interval=RECONNECT)  # fmt: skip
    client = await KeystoreClient.create(client_bus, queue=queue, timeout=30)
    return holding, (keystore_bus, server), client_bus, client, queue


async def close_all(parts: tuple[Any, ...]) -> None:
    holding, (keystore_bus, server), client_bus, client, _queue = parts
    holding.release.set()
    await client.close()
    await server.stop()
    await client_bus.close()
    await keystore_bus.close()


async def test_sign_whose_reply_was_lost_is_resent(broker_vhost, service) -> None:
    parts = await serve_holding(broker_vhost, service, {m.Op.SIGN})
    holding, _server, client_bus, client, _queue = parts
    try:
        info = await client.create_key("sig", m.KeyKind.P256, m.KeyUsage.SIGN)
        key = await client.private_key(info.label)
        digest = hashlib.sha256(b"failover").digest()
        signing = asyncio.create_task(key.sign_digest(digest))
        await asyncio.wait_for(holding.held.wait(), 10)
        await cut_link(client_bus)  # the caller's node died with the reply due
        signature = await asyncio.wait_for(signing, 30)
        primitives.verify_digest(key.public_key(), digest, signature)
        assert holding.ops.count(m.Op.SIGN) == 2  # answered once, from the resend
    finally:
        await close_all(parts)


async def test_create_key_whose_reply_was_lost_is_not_resent(broker_vhost, service) -> None:
    parts = await serve_holding(broker_vhost, service, {m.Op.CREATE})
    holding, _server, client_bus, client, _queue = parts
    try:
        creating = asyncio.create_task(client.create_key("kex", m.KeyKind.P256, m.KeyUsage.SIGN))
        await asyncio.wait_for(holding.held.wait(), 10)
        await cut_link(client_bus)
        with pytest.raises(KeystoreUnavailable) as lost:
            await asyncio.wait_for(creating, 20)
        assert isinstance(lost.value.__cause__, ReplyLost)
        assert lost.value.retryable
        holding.release.set()  # the held request runs: the key is made once
        for _ in range(100):
            labels = [k.label for k in await client.list_keys()]
            if client.label("kex") in labels:
                break
            await asyncio.sleep(0.1)
        assert labels.count(client.label("kex")) == 1
        assert holding.ops.count(m.Op.CREATE) == 1
    finally:
        await close_all(parts)


PARENT = """
import asyncio, pickle, sys
from keystore.worker import KeystorePool

async def main() -> None:
    with open(sys.argv[1], "rb") as f:
        spec = pickle.load(f)
    pool = KeystorePool(spec, 1)
    await pool.start()
    print(pool.processes[0].pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
def test_worker_dies_with_its_killed_parent(
    broker_vhost: Any, keystore_settings: Settings, tmp_path: Path
) -> None:
    tag = os.urandom(3).hex()
    url = broker_vhost.add_user(f"keystore.p{tag}", "pw-" + tag)
    spec = WorkerSpec(
        keystore_settings.replace(log_format="json", log_level="info"),
        amqp_url=str(url),
        queue=f"keystore.pdeath.{tag}",
        identity_prefix=broker_vhost.prefix,
        log_file=str(tmp_path / "worker.log"),
    )
    spec_file = tmp_path / "spec.pickle"
    spec_file.write_bytes(pickle.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(spec_file)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    worker = 0
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        assert alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker), "the keystore worker outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if worker and alive(worker):
            os.kill(worker, signal.SIGKILL)
