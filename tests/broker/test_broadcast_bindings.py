"""Broadcast bindings made by `setpay broker init` (broker/topology.py Rule 4), real RabbitMQ.

``revocation.*`` (the CA's BCIDistribution, actors/trust.py Rule 5) is bound by the admin to
the instance queues the definitions name -- the gateway's and the merchant POS's, not the
wallet's -- so a message the CA login publishes under ``revocation.<brand>`` reaches exactly
those; a least-privilege identity starting with the same bindings finds its queue declared and
its own bind refused without failing (its replies come to its inbox, broker/inbox.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
from collections.abc import Iterator

import pytest

from broker import admin
from broker.connection import connect
from broker.consumer import Delivery, consume
from broker.provision import identity_url, load_definitions
from broker.topology import SET_EXCHANGE, declare_actor
from cli import main as cli

pytestmark = pytest.mark.integration

BASE = "amqp://guest:guest@127.0.0.1:5672/"
KEY = "revocation.*"


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, object]]:
    vhost = f"setpay-test-bcast-{secrets.token_hex(4)}"
    prefix = f"t{secrets.token_hex(3)}-"
    data_dir = tmp_path_factory.mktemp("data")
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
            mp.setenv("SETPAY_DATA_DIR", str(data_dir))
            assert cli.main(["broker", "init", "--vhost", vhost, "--user-prefix", prefix]) == 0
        yield vhost, prefix, data_dir
    finally:
        for identity in load_definitions().identities:
            with contextlib.suppress(admin.AdminError):
                admin.delete_user(prefix + identity.name)
        admin.delete_vhost(vhost)


def _url(provisioned: tuple[str, str, object], identity: str) -> str:
    vhost, prefix, data_dir = provisioned
    return identity_url(data_dir, identity, vhost, BASE, user_prefix=prefix)  # type: ignore[arg-type]


def test_definitions_bind_the_revocation_key_to_gateway_and_merchant_only() -> None:
    bound = {i.name for i in load_definitions().identities if KEY in i.bindings}
    assert bound == {"gateway.pg1", "merchant.pos1"}


async def test_a_ca_broadcast_reaches_gateway_and_merchant_instances(provisioned) -> None:
    ca = await connect(_url(provisioned, "ca.main"), name="ca")
    parties = {name: await connect(_url(provisioned, name), name=name)
               for name in ("gateway.pg1", "merchant.pos1", "wallet.main")}  # fmt: skip
    got: dict[str, asyncio.Queue[Delivery]] = {name: asyncio.Queue() for name in parties}
    consumers = []
    try:
        for name, bus in parties.items():
            role, _, instance = name.partition(".")
            # The actor's own start: its queue exists, its own bind is refused, no failure.
            declared = await declare_actor(await bus.channel(), role, instance, bindings=(KEY,))
            assert declared.instance.name == f"set.{name}"

            async def on(delivery: Delivery, name: str = name) -> None:
                await got[name].put(delivery)

            consumers.append(await consume(bus, f"set.{name}", on))
        await ca.publish("revocation.alpha", b"BCIDistribution", exchange=SET_EXCHANGE)
        for name in ("gateway.pg1", "merchant.pos1"):
            delivery = await asyncio.wait_for(got[name].get(), 10)
            assert delivery.body == b"BCIDistribution" and delivery.user_id == ca.user_id
        await asyncio.sleep(0.5)
        assert got["wallet.main"].empty()  # the wallet holds no revocation cache
    finally:
        for consumer in consumers:
            await consumer.stop()
        for bus in (ca, *parties.values()):
            await bus.close()
