"""No card data, PAN or PIN in clear on the bus or in a dead letter, with the keystore stopped.

The insider here reads everything the broker holds: every queue of the vhost and the
dead-letter queue (through the admin login), and every file outside the keystore's token
(logs, databases). The vhost is set up by the real `setpay broker init` (identities,
permissions, policies from deploy/rabbitmq/definitions.toml); the keystore runs as its own
worker processes on the real SoftHSM2 token; the wallet's vault and the issuer's seeding call
it with their own broker logins.

Before: the wallet's ``seal`` request carried PAN, expiry, PANSecret and CardSecret, the
issuer's PAN-index HMAC the PAN and its PIN issuance the PIN, all in clear; a request that
timed out was dead-lettered into ``setpay.dead`` with its body. Now (keystore/transport.py,
keystore/client.py Rule 5): they travel sealed to the keystore's transport key, keystore
requests are never dead-lettered, and the dead-letter queue is bounded in bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import secrets
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
from structlog.testing import capture_logs

from actors.issuer.accounts import Store as IssuerStore
from actors.issuer.errors import SecurityUnavailable
from actors.issuer.security import PAN_INDEX_KEY, PVK_KEY, KeystoreIssuerSecurity
from actors.issuer.seed import SeedAccount, seed
from actors.wallet.vault import CardSecrets, Vault
from broker import admin
from broker.connection import connect
from broker.provision import identity_url
from broker.topology import DEAD_LETTER_MAX_BYTES, DEAD_LETTER_QUEUE
from cli import main as cli
from keystore import messages as km
from keystore.client import KeystoreClient
from keystore.errors import KeystoreUnavailable
from keystore.hsm import Hsm
from keystore.worker import KeystorePool, WorkerSpec
from protocol import codec, pan
from setpay.config import Settings
from tests.fixtures_broker import amqp_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = "amqp://guest:guest@127.0.0.1:5672/"
CALL_TIMEOUT = 4.0
PAN = "4000056655665556"
EXPIRY = "2911"
PIN = "739146205518"  # 12 digits: distinctive enough to search for
BANK = "0009-001-8765432"


def _forms(secret: bytes) -> list[bytes]:
    """``secret`` as it could appear: plain, hex (both cases) and base64 at each alignment."""
    out = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    for pad in range(3):
        encoded = base64.b64encode(bytes(pad) + secret)
        core = encoded[4 if pad else 0 : -4]  # the characters only ``secret`` determines
        if len(core) >= 8:
            out.append(core)
    return out


def _leaks(blob: bytes, secrets_: dict[str, bytes]) -> list[str]:
    return [name for name, value in secrets_.items() if any(f in blob for f in _forms(value))]


class Deployment:
    """A vhost provisioned by `setpay broker init` and a keystore pool on it."""

    def __init__(self, vhost: str, prefix: str, data_dir: Path, pool: KeystorePool,
                 log_file: Path) -> None:  # fmt: skip
        self.vhost = vhost
        self.prefix = prefix
        self.data_dir = data_dir
        self.pool = pool
        self.log_file = log_file

    def url(self, identity: str) -> str:
        return identity_url(self.data_dir, identity, self.vhost, BASE, user_prefix=self.prefix)


@pytest.fixture(scope="module")
async def deployment(
    keystore_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    vhost = f"setpay-test-nosecret-{secrets.token_hex(4)}"
    prefix = f"t{secrets.token_hex(3)}-"
    data_dir = tmp_path_factory.mktemp("nosecret-data")
    pool: KeystorePool | None = None
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
            mp.setenv("SETPAY_DATA_DIR", str(data_dir))
            command = ["broker", "init", "--vhost", vhost, "--user-prefix", prefix]
            assert await asyncio.to_thread(cli.main, command) == 0  # it runs its own loop
        log_file = data_dir / "keystore.log"
        url = identity_url(data_dir, "keystore.main", vhost, BASE, user_prefix=prefix)
        spec = WorkerSpec(
            keystore_settings.replace(log_format="json", log_level="info"),
            amqp_url=url, identity_prefix=prefix, log_file=str(log_file),
        )  # fmt: skip
        pool = KeystorePool(spec, 1)
        await pool.start()
        yield Deployment(vhost, prefix, data_dir, pool, log_file)
    finally:
        if pool is not None:
            await pool.stop()
        for user in admin.list_users():
            if user.startswith(prefix):
                admin.delete_user(user)
        if vhost in admin.list_vhosts():
            admin.delete_vhost(vhost)


async def _client(dep: Deployment, identity: str, stack: contextlib.AsyncExitStack
                  ) -> KeystoreClient:  # fmt: skip
    bus = await connect(dep.url(identity), name=identity)
    stack.push_async_callback(bus.close)
    client = await KeystoreClient.create(bus, timeout=CALL_TIMEOUT)
    stack.push_async_callback(client.close)
    return client


async def _read_queue(channel: Any, name: str) -> list[bytes]:
    """Every message ready in queue ``name`` (basic.get without ack: they go back after)."""
    queue = await channel.declare_queue(name, passive=True)
    bodies = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        bodies.append(message.body)
    return bodies


async def _read_every_queue(vhost: str) -> dict[str, list[bytes]]:
    """What the admin login sees in every queue of ``vhost``, the dead letters included."""
    connection = await aio_pika.connect(amqp_url("guest", "guest", vhost))
    try:
        out = {}
        for name in sorted(admin.list_names("queues", vhost)):
            channel = await connection.channel()
            try:
                out[name] = await _read_queue(channel, name)
            except aiormq.exceptions.ChannelLockedResource:
                continue  # an exclusive queue of a live connection (none here)
            finally:
                if not channel.is_closed:
                    await channel.close()
        return out
    finally:
        await connection.close()


async def _in_flight(vhost: str, queue: str, timeout: float) -> list[bytes]:
    """The requests waiting in ``queue`` while their caller still waits (read, then returned)."""
    connection = await aio_pika.connect(amqp_url("guest", "guest", vhost))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            channel = await connection.channel()
            bodies = await _read_queue(channel, queue)
            await channel.close()  # unacked: back in the queue for the TTL to drop
            if bodies:
                return bodies
            await asyncio.sleep(0.05)
        return []
    finally:
        await connection.close()


async def _drained(vhost: str, queue: str, timeout: float) -> None:
    """Wait until ``queue`` holds no message (the broker dropped the expired requests)."""
    connection = await aio_pika.connect(amqp_url("guest", "guest", vhost))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        channel = await connection.channel()
        while True:
            declared = await channel.declare_queue(queue, passive=True)
            if not declared.declaration_result.message_count:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{queue} still holds requests after {timeout:g}s")
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


def _files(roots: Iterable[Path], skip: Path) -> Iterable[Path]:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and skip not in path.parents:
                yield path


async def test_keystore_stopped_no_secret_anywhere(
    deployment: Deployment, keystore_settings: Settings, hsm: Hsm
) -> None:
    dep = deployment
    pan_secret, card_secret = os.urandom(32), os.urandom(32)
    card = CardSecrets(pan.Account(pan.AccountKind.CARD, PAN), EXPIRY, pan_secret, card_secret)
    secrets_ = {
        "PAN": PAN.encode(), "PANSecret": pan_secret, "CardSecret": card_secret,
        "PIN": PIN.encode(), "expiry": codec.packb(EXPIRY), "card record": codec.encode(card),
    }  # fmt: skip
    issuer_id = f"{dep.prefix}issuer.host1"
    for name in (PVK_KEY, PAN_INDEX_KEY):  # key ceremony: the issuer's keys are made on the token
        with contextlib.suppress(Exception):
            hsm.create_key(f"{issuer_id}/{name}", km.KeyKind.HMAC256, km.KeyUsage.SECRET)

    async with contextlib.AsyncExitStack() as stack:
        wallet = await _client(dep, "wallet.main", stack)
        issuer = await _client(dep, "issuer.host1", stack)
        vault = Vault(wallet)
        await vault.ensure_key()  # the parties start while the keystore runs: the transport
        await wallet.transport_key()  # key is cached, so what follows does reach the bus
        await issuer.transport_key()
        assert (await vault.open("c0", await vault.seal("c0", card))) == card  # the path works

        await dep.pool.stop()  # the keystore stops; the requests below wait in keystore.rpc
        security = KeystoreIssuerSecurity(
            issuer, pan_index_label=issuer.label(PAN_INDEX_KEY), pvk_label=issuer.label(PVK_KEY)
        )
        store = IssuerStore(dep.data_dir / "issuer.sqlite")
        stack.callback(store.close)

        async def pvv_for(binding: str, pin_code: str) -> bytes:
            return await issuer.pin_issue(security.pvk_label, binding, pin_code)

        async def refused(call: Any) -> tuple[list[bytes], BaseException]:
            """Run ``call`` while the keystore is away: what waited on the bus, and how the
            caller was answered."""
            task = asyncio.create_task(call)
            waited = await _in_flight(dep.vhost, "keystore.rpc", CALL_TIMEOUT)
            with pytest.raises(Exception) as failure:
                await task
            return waited, failure.value

        with capture_logs() as logs:
            waiting, enrol = await refused(vault.seal("c1", card))  # card data at enrolment
            bank = SeedAccount("bank-x", "bank", "ope", BANK, None, 0, 1_000, pin=PIN)
            more, issue = await refused(pvv_for(bank.binding, PIN))  # PIN issuance
            waiting += more
            more, index = await refused(seed(store, security, [SeedAccount(
                "card-x", "card", "visa", PAN, EXPIRY, 1_000, 0)]))  # fmt: skip
            waiting += more
        # Each caller got a clear error once its timeout passed.
        assert isinstance(enrol, KeystoreUnavailable) and "unreachable" in str(enrol)
        assert isinstance(issue, KeystoreUnavailable) and "unreachable" in str(issue)
        assert isinstance(index, SecurityUnavailable) and "pan index failed" in str(index)

        # While their callers waited, the requests were on the bus: sealed, nothing clear.
        ops = sorted({codec.decode(km.Request, body).op.name for body in waiting})
        assert ops == ["HMAC", "PIN_ISSUE", "SEAL"], ops
        for body in waiting:
            assert not _leaks(body, secrets_), _leaks(body, secrets_)
        unanswered = [e for e in logs if e["event"] == "keystore_call_unanswered"]
        assert {e["op"] for e in unanswered} == {"seal", "pin_issue", "hmac"}
        assert all(len(e["request"]) == 32 for e in unanswered)  # id and reason, no data
        assert not _leaks(repr(logs).encode(), secrets_)

    await _drained(dep.vhost, "keystore.rpc", 30)
    queues = await _read_every_queue(dep.vhost)
    assert DEAD_LETTER_QUEUE in queues and "keystore.rpc" in queues
    assert queues[DEAD_LETTER_QUEUE] == [], "a keystore request was dead-lettered"
    for name, bodies in queues.items():
        for body in bodies:
            assert not _leaks(body, secrets_), (name, _leaks(body, secrets_))

    # No log or database outside the token holds any of them (the issuer's store included).
    token_dir = keystore_settings.data_dir / "tokens"
    files = list(_files([dep.data_dir, keystore_settings.data_dir], token_dir))
    assert dep.log_file in files and dep.data_dir / "issuer.sqlite" in files
    for path in files:
        assert not _leaks(path.read_bytes(), secrets_), (path, _leaks(path.read_bytes(), secrets_))


def test_keystore_requests_are_never_dead_lettered_and_dead_letters_are_bounded(
    deployment: Deployment,
) -> None:
    """The broker's own view: keystore.rpc has no dead-letter exchange; setpay.dead is bounded
    in bytes by its declared arguments and by the policy, refusing what would overflow."""
    rows = admin._json_rows(["list_queues", "--vhost", deployment.vhost, "name", "arguments",
                             "policy"])  # fmt: skip
    by_name = {row["name"]: row for row in rows}
    policies = admin.list_policies(deployment.vhost)
    rpc = by_name["keystore.rpc"]
    assert rpc["policy"] == "setpay-rpc-queues"
    assert "dead-letter-exchange" not in policies[rpc["policy"]]["definition"]
    assert not any("dead-letter" in str(k) for k in _args(rpc["arguments"]))
    dead = by_name[DEAD_LETTER_QUEUE]
    assert _args(dead["arguments"]).get("x-max-length-bytes") == DEAD_LETTER_MAX_BYTES
    assert _args(dead["arguments"]).get("x-overflow") == "reject-publish"
    policy = policies[dead["policy"]]["definition"]
    assert policy["max-length-bytes"] == DEAD_LETTER_MAX_BYTES
    assert policy["overflow"] == "reject-publish"


def _args(value: Any) -> dict[str, Any]:
    """rabbitmqctl's JSON for queue arguments: a map, or a list of [key, type, value]."""
    if isinstance(value, dict):
        return value
    out = {}
    for item in value or []:
        if isinstance(item, list) and len(item) == 3:
            out[item[0]] = item[2]
        elif isinstance(item, list) and len(item) == 2:
            out[item[0]] = item[1]
    return out
