"""CA fixtures over the real RabbitMQ and SoftHSM2: a keystore, an initialised hierarchy, a
running CA actor (in this process, on the session's test vhost) and requesters.

Rule 1: everything lives in the session's own vhost and token directory and is removed after.
Rule 2: requesters get their keys from the keystore as their own broker identities.
Rule 3: the session's CA (``ca_env``) auto-approves merchants and gateways (``TEST_POLICY``)
and runs without an issuer host (``ca_verify_cards=False``, the explicit test setting);
tests/attacks/test_ca_decides.py starts its own CA with neither.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.ca.actor import CAActor
from actors.ca.approval import POLICY_KEY
from actors.ca.brands import TEST_BRANDS
from actors.ca.hierarchy import Hierarchy, init_hierarchy
from actors.ca.store import CAStore
from broker.peer import PeerLink
from keystore import messages as km
from keystore.client import KeystoreClient
from keystore.keyring import KeyRing
from protocol import ids
from protocol.keys import PrivateKey, get_suite
from protocol.requester import CAClient
from setpay.config import Settings
from tests.fixtures_keystore import KeystoreDeployment

CA_IDENTITY = "ca.main"
TEST_POLICY = "merchant:* gateway:*=JPY,USD,sale,pin-debit"


@dataclass
class CAEnv:
    settings: Settings
    deployment: KeystoreDeployment
    store: CAStore
    hierarchy: Hierarchy
    actor: CAActor
    created: list[str]

    @property
    def root(self) -> Any:
        return self.hierarchy.root

    async def requester(
        self, identity: str, *, record: bool = False, queue_suffix: str = ""
    ) -> tuple[CAClient, Any]:
        """A CA client and a keystore client, both as broker user ``identity``; the CA client's
        reply queue is the identity's own, or ``<identity>-<queue_suffix>`` beside another
        link of the same identity."""
        keystore = await self.deployment.client(identity)
        role, _, instance = identity.partition(".")
        if queue_suffix:
            instance = f"{instance}-{queue_suffix}"
        client = CAClient(await PeerLink(keystore.rpc.bus, role, instance, record=record).start())
        return client, keystore


def files_bytes(folder: Path) -> list[bytes]:
    """The bytes of every file in ``folder``, read by a child process: opening and closing a
    database file in this process would drop SQLite's POSIX locks on it (a later open of the
    same database then fails with a disk I/O error)."""
    out = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        out.append(subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout)
    return out


async def new_key(
    keystore: KeystoreClient,
    name: str,
    exchange: bool = False,
    kind: km.KeyKind = km.KeyKind.RSA2048,
) -> PrivateKey:
    """A key pair created in the token for the keystore client's identity."""
    usage = km.KeyUsage.EXCHANGE if exchange else km.KeyUsage.SIGN
    info = await keystore.create_key(name, kind, usage)
    return await keystore.private_key(info.label)


async def start_ca(
    deployment: KeystoreDeployment,
    settings: Settings,
    *,
    auto_approve: str = TEST_POLICY,
    clock: ids.Clock | None = None,
) -> CAEnv:
    """Initialise a hierarchy in ``settings.data_dir`` (suite ``settings.suite``), record the
    ``auto_approve`` policy and start the CA actor ``ca.main`` on the deployment's vhost (its
    time from ``clock``); stop it with ``stop_ca``."""
    keystore = await deployment.client(CA_IDENTITY)
    store = CAStore.open(settings.data_dir)
    h = Hierarchy(store, KeyRing(keystore, get_suite(settings.suite)))
    created = await init_hierarchy(h, TEST_BRANDS, (clock or ids.SystemClock()).now_ms())
    store.set_meta(POLICY_KEY, auto_approve)
    actor = CAActor(
        settings, "main", url=deployment.url_for(CA_IDENTITY), keystore_queue=deployment.queue,
        clock=clock,
    )  # fmt: skip
    await actor.start()
    return CAEnv(settings, deployment, store, h, actor, created)


async def stop_ca(env: CAEnv) -> None:
    await env.actor.stop()
    env.store.close()


@pytest.fixture(scope="session")
async def ca_env(
    keystore_deployment: KeystoreDeployment,
    keystore_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[CAEnv]:
    data_dir: Path = tmp_path_factory.mktemp("ca-var")
    settings = keystore_settings.replace(
        data_dir=data_dir, suite="rsa2048", issuer_host="", ca_verify_cards=False,
        broker_user_prefix=keystore_deployment.vhost.prefix,
    )
    env = await start_ca(keystore_deployment, settings)
    try:
        yield env
    finally:
        await stop_ca(env)
