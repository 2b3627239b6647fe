"""`setpay broker init` against the real RabbitMQ: idempotent, least privilege, no secrets out."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import secrets
import stat

import aio_pika
import aiormq
import pytest

from broker import admin
from broker.connection import connect
from broker.consumer import consume
from broker.credentials import CredentialStore, credentials_path
from broker.errors import BrokerError
from broker.provision import identity_url, init, load_definitions
from broker.rpc import RpcClient, RpcRequest, serve_rpc
from broker.topology import SET_EXCHANGE, declare_actor
from cli import main as cli

pytestmark = pytest.mark.integration

BASE = "amqp://guest:guest@127.0.0.1:5672/"
IDENTITIES = ("keystore.main", "ca.main", "gateway.pg1", "issuer.host1", "merchant.pos1",
              "wallet.main", "operator.main")


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory):
    """A fresh vhost set up by `setpay broker init` (the CLI), run twice; removed afterwards."""
    vhost = f"setpay-test-init-{secrets.token_hex(4)}"
    prefix = f"t{secrets.token_hex(3)}-"
    data_dir = tmp_path_factory.mktemp("data")
    outputs = []
    try:
        for _ in range(2):
            out = io.StringIO()
            with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
                mp.setenv("SETPAY_DATA_DIR", str(data_dir))
                assert cli.main(["broker", "init", "--vhost", vhost,
                                 "--user-prefix", prefix]) == 0
            outputs.append(out.getvalue())
        yield vhost, prefix, data_dir, outputs
    finally:
        for name in IDENTITIES:
            admin.delete_user(prefix + name)
        admin.delete_vhost(vhost)


def url_of(provisioned, identity: str) -> str:
    vhost, prefix, data_dir, _ = provisioned
    return identity_url(data_dir, identity, vhost, BASE, user_prefix=prefix)


def test_first_run_creates_everything_second_run_changes_nothing(provisioned) -> None:
    vhost, prefix, _data_dir, (first, second) = provisioned
    assert f"vhost        {vhost:<28} created" in first
    for name in IDENTITIES:
        assert f"user         {prefix + name:<28} created" in first
        assert f"user         {prefix + name:<28} unchanged" in second
    assert "queue        set.gateway.pg1" in first
    summary = second.strip().splitlines()
    assert summary[-1].startswith("total: ") and "unchanged" in summary[-1]
    assert "created" not in second and "updated" not in second and "reset" not in second
    # the broker holds exactly the wanted permissions and policies
    perms = admin.list_permissions(vhost)
    defs = load_definitions()
    for identity in defs.identities:
        assert perms[prefix + identity.name] == defs.permissions(identity, prefix)
    configure, write, read = perms[prefix + "merchant.pos1"]
    login = re.escape(prefix + "merchant.pos1")
    assert read == (r"^(set\.merchant|set\.merchant\.pos1|"
                    r"reply\." + login + r"\.[^.#*]+|setpay\.set|setpay\.rpc)$")
    assert "amq" not in write and "amq" not in read  # nobody writes to the default exchange
    topics = admin.list_topic_permissions(vhost)
    assert len(topics) == 2 * len(defs.identities)  # every login, both topic exchanges
    assert set(admin.list_policies(vhost)) == {p.name for p in load_definitions().policies}


def test_passwords_are_stored_0600_reused_and_never_printed(provisioned) -> None:
    _vhost, prefix, data_dir, outputs = provisioned
    path = credentials_path(data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert set(stored) == {prefix + n for n in IDENTITIES}
    for user, password in stored.items():
        assert len(password) >= 32
        assert admin.authenticate(user, password)  # the second run did not rotate it
        assert all(password not in out for out in outputs)
    assert len(set(stored.values())) == len(stored)


async def test_rerun_repairs_a_drifted_password_and_permission(provisioned) -> None:
    vhost, prefix, data_dir, _ = provisioned
    user = prefix + "ca.main"
    admin.change_password(user, "drifted")
    admin.set_permissions(vhost, user, ".*", ".*", ".*")
    report = await init(vhost=vhost, data_dir=data_dir, base_url=BASE, admin_user="guest",
                        admin_password="guest", user_prefix=prefix)
    changed = {(c.kind, c.name, c.outcome) for c in report.changed()}
    assert changed == {("user", user, "password reset"), ("permissions", user, "updated")}
    assert admin.authenticate(user, CredentialStore(credentials_path(data_dir)).get(user))


async def test_actor_identity_starts_with_least_privilege_and_is_confined(provisioned) -> None:
    merchant = await connect(url_of(provisioned, "merchant.pos1"), name="m")
    gateway = await connect(url_of(provisioned, "gateway.pg1"), name="g")
    try:
        # the runtime's topology step works without configure rights on the shared exchanges
        declared = await declare_actor(await merchant.channel(), "merchant", "pos1")
        assert declared.instance.name == "set.merchant.pos1"
        await declare_actor(await gateway.channel(), "gateway", "pg1")
        got: asyncio.Queue = asyncio.Queue()

        async def on_gateway(delivery) -> None:
            await got.put(delivery)

        consumer = await consume(gateway, "set.gateway.pg1", on_gateway)
        # merchant may send to the gateway; RabbitMQ vouches for the sender
        await merchant.publish("gateway.pg1", b"PReq", exchange=SET_EXCHANGE)
        delivery = await asyncio.wait_for(got.get(), 5)
        assert delivery.user_id == merchant.user_id == provisioned[1] + "merchant.pos1"
        await consumer.stop()

        # ... but may not read the gateway's queue
        with pytest.raises(BrokerError, match="not allowed to consume"):
            await consume(merchant, "set.gateway.pg1", on_gateway)
    finally:
        await merchant.close()
        await gateway.close()


async def test_identity_cannot_impersonate_or_reconfigure(provisioned) -> None:
    connection = await aio_pika.connect(url_of(provisioned, "merchant.pos1"))
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(SET_EXCHANGE, ensure=False)
        forged = aio_pika.Message(b"x", user_id=provisioned[1] + "gateway.pg1")
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await exchange.publish(forged, "gateway.pg1")
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_exchange("setpay.evil", durable=True)
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_queue("set.gateway.pg1", durable=True)
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_queue("set.merchant.pos1", passive=True)
            await (await channel.get_exchange(SET_EXCHANGE, ensure=False)).delete()
    finally:
        await connection.close()


async def test_identities_reach_the_keystore_over_rpc(provisioned) -> None:
    keystore = await connect(url_of(provisioned, "keystore.main"), name="keystore.main")
    wallet = await connect(url_of(provisioned, "wallet.main"), name="wallet.main")

    async def sign(request: RpcRequest) -> bytes:
        return request.user_id.encode()

    server = await serve_rpc(keystore, "keystore.rpc", sign)
    client = await RpcClient.create(wallet, accept=lambda login: wallet.role_of(login) == "keystore")
    try:
        assert await client.call("keystore.rpc", b"digest", timeout=5) == (
            wallet.user_id.encode()
        )
        with pytest.raises(BrokerError, match="not allowed"):
            await serve_rpc(wallet, "keystore.rpc", sign)  # only the keystore serves it
    finally:
        await client.close()
        await server.stop()
        await keystore.close()
        await wallet.close()


# -- deploy/rabbitmq/definitions.json: RabbitMQ's own format, generated from the TOML ----------


def test_the_generated_definitions_file_is_up_to_date() -> None:
    from broker.provision import GENERATED_JSON, definitions_json

    assert GENERATED_JSON.read_text() == definitions_json(), (
        "deploy/rabbitmq/definitions.json is stale: run `setpay broker definitions --write`")
    doc = json.loads(GENERATED_JSON.read_text())
    assert all(u["password_hash"] == "" for u in doc["users"])  # no secret in the file


def _topology(doc: dict) -> dict[str, object]:
    """What both a generated document and a broker export say about the topology."""
    ours = lambda name: name.startswith(("set.", "setpay.", "keystore."))  # noqa: E731
    return {
        "queues": sorted((q["name"], q["durable"], q["auto_delete"],
                          json.dumps(q["arguments"], sort_keys=True))
                         for q in doc["queues"] if ours(q["name"])),
        "exchanges": sorted((e["name"], e["type"], e["durable"])
                            for e in doc["exchanges"] if ours(e["name"])),
        "bindings": sorted((b["source"], b["destination"], b["routing_key"])
                           for b in doc["bindings"] if b["source"]),
        "policies": sorted((p["name"], p["pattern"], p["apply-to"], p["priority"],
                            json.dumps(p["definition"], sort_keys=True))
                           for p in doc["policies"]),
    }


def test_the_definitions_json_is_what_broker_init_made(provisioned) -> None:
    from broker.provision import rabbitmq_definitions

    vhost, prefix, _data_dir, _ = provisioned
    generated = rabbitmq_definitions(vhost=vhost, user_prefix=prefix)
    assert _topology(generated) == _topology(admin.export_definitions(vhost))
    assert {p["user"]: (p["configure"], p["write"], p["read"])
            for p in generated["permissions"]} == admin.list_permissions(vhost)
    assert {(t["user"], t["exchange"]): (t["write"], t["read"])
            for t in generated["topic_permissions"]} == admin.list_topic_permissions(vhost)


def test_rabbitmq_imports_the_definitions_json() -> None:
    """The broker itself takes the document (POST /api/definitions, as import_definitions):
    vhost, users without a password login, permissions, topic permissions, topology."""
    from broker.provision import rabbitmq_definitions

    vhost, prefix = f"setpay-test-defs-{secrets.token_hex(4)}", f"t{secrets.token_hex(3)}-"
    generated = rabbitmq_definitions(vhost=vhost, user_prefix=prefix)
    try:
        admin.import_definitions(generated)
        assert _topology(generated) == _topology(admin.export_definitions(vhost))
        assert {p["user"]: (p["configure"], p["write"], p["read"])
                for p in generated["permissions"]} == admin.list_permissions(vhost)
        assert len(admin.list_topic_permissions(vhost)) == len(generated["topic_permissions"])
        user = prefix + "merchant.pos1"
        assert user in admin.list_users() and not admin.authenticate(user, "")
    finally:
        for name in IDENTITIES:
            admin.delete_user(prefix + name)
        admin.delete_vhost(vhost)
