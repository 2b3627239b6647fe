"""pytest fixtures for the keystore: a private SoftHSM2 token and an open ``Hsm`` on it.

The token lives under pytest's temporary directory (never the system token dir) and
``SOFTHSM2_CONF`` points at it for the test session and every process it spawns.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.connection import connect
from keystore.client import KeystoreClient
from keystore.hsm import Hsm, TokenConfig
from keystore.token import init_token, use_softhsm_conf
from keystore.worker import KeystorePool, WorkerSpec
from setpay.config import Settings, load


@pytest.fixture(scope="session")
def keystore_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings whose data_dir holds a freshly initialised SoftHSM2 token."""
    data_dir = tmp_path_factory.mktemp("keystore-var")
    settings = load(env={}).replace(
        data_dir=data_dir, keystore_token_label="setpay-test", keystore_pin="4321-test"
    )
    before = os.environ.get("SOFTHSM2_CONF")
    init_token(settings)
    use_softhsm_conf(settings)
    yield settings
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before


@pytest.fixture(scope="session")
def token_config(keystore_settings: Settings) -> TokenConfig:
    return TokenConfig(
        keystore_settings.keystore_module,
        keystore_settings.keystore_token_label,
        keystore_settings.keystore_pin,
    )


@pytest.fixture(scope="session")
def hsm(token_config: TokenConfig) -> Iterator[Hsm]:
    """One logged-in session for direct (in-process, main-thread) tests."""
    h = Hsm(token_config)
    h.open()
    yield h
    h.close()


class KeystoreDeployment:
    """A running keystore pool on the test vhost and a way to make callers of any identity."""

    def __init__(self, vhost: Any, pool: KeystorePool, queue: str) -> None:
        self.vhost = vhost
        self.pool = pool
        self.queue = queue
        self.log_file = Path(str(pool.spec.log_file))
        self._buses: list[Any] = []
        self._clients: list[KeystoreClient] = []
        self._urls: dict[str, str] = {}

    def url_for(self, identity: str) -> str:
        """The AMQP URL of broker user ``<prefix><identity>`` (created on first use)."""
        if identity not in self._urls:
            self._urls[identity] = self.vhost.add_user(identity, secrets.token_hex(8))
        return self._urls[identity]

    async def client(self, identity: str, timeout: float = 10.0) -> KeystoreClient:
        """A keystore client connected as ``identity``."""
        bus = await connect(self.url_for(identity), name=identity)
        self._buses.append(bus)
        client = await KeystoreClient.create(bus, queue=self.queue, timeout=timeout)
        self._clients.append(client)
        return client

    def audit_events(self) -> list[dict[str, Any]]:
        """Audit events the workers have logged so far."""
        out = []
        for line in self.log_file.read_text().splitlines():
            if '"keystore_op"' in line:
                out.append(json.loads(line))
        return out

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        for bus in self._buses:
            await bus.close()


async def start_deployment(
    vhost: Any, settings: Settings, tmp_dir: Path, *, queue: str, workers: int
) -> KeystoreDeployment:
    """Start ``workers`` keystore processes logged in as broker user ``keystore.main``."""
    url = vhost.add_user(f"keystore.{queue.replace('.', '-')}", secrets.token_hex(8))
    spec = WorkerSpec(
        settings.replace(log_format="json", log_level="info"),
        amqp_url=str(url),  # plain str: the fixture's UserUrl subclass does not unpickle
        queue=queue,
        identity_prefix=vhost.prefix,
        log_file=str(tmp_dir / f"{queue}.log"),
    )
    pool = KeystorePool(spec, workers)
    await pool.start()
    return KeystoreDeployment(vhost, pool, queue)


@pytest.fixture(scope="session")
async def keystore_deployment(
    broker_vhost: Any, keystore_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[KeystoreDeployment]:
    """Two keystore worker processes serving ``keystore.rpc`` on the session's test vhost."""
    deployment = await start_deployment(
        broker_vhost,
        keystore_settings,
        tmp_path_factory.mktemp("keystore-logs"),
        queue="keystore.rpc",
        workers=2,
    )
    try:
        yield deployment
    finally:
        await deployment.close()
        await deployment.pool.stop()
