"""RabbitMQ itself refuses impersonation and reads outside a user's permissions."""

from __future__ import annotations

import uuid

import aio_pika
import aiormq
import pytest

from broker.connection import connect
from broker.consumer import consume
from broker.errors import BrokerError
from broker.topology import SET_EXCHANGE, TRACE_EXCHANGE, declare_actor

pytestmark = pytest.mark.integration


async def test_publishing_with_someone_elses_user_id_is_refused(broker_vhost) -> None:
    url = broker_vhost.add_user("merchant.pos1", "pw-m")
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        forged = aio_pika.Message(b"x", user_id="gateway.pg1")
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await channel.default_exchange.publish(forged, "anything", mandatory=False)
        # the same user publishing as itself is accepted
        channel = await connection.channel(publisher_confirms=True)
        honest = aio_pika.Message(b"x", user_id=url.user)
        await channel.default_exchange.publish(honest, "anything", mandatory=False)
    finally:
        await connection.close()


async def test_bus_stamps_its_own_login_even_on_a_foreign_message(broker_vhost) -> None:
    url = broker_vhost.add_user("wallet.main", "pw-w")
    bus = await connect(url, name="w")
    try:
        message = aio_pika.Message(b"x", user_id="ca.main")
        await bus.publish("anything", message, mandatory=False)
        assert message.user_id == url.user
    finally:
        await bus.close()


async def test_reading_a_queue_outside_permissions_is_refused(broker_vhost) -> None:
    role = f"g{uuid.uuid4().hex[:6]}"
    admin_bus = await connect(broker_vhost.url, name="admin")
    channel = await admin_bus.channel()
    await declare_actor(channel, role, "pg1")
    url = broker_vhost.add_user("merchant.pos2", "pw-m2", configure="^$", write="^$",
                                read="^set\\.merchant\\..*$")
    bus = await connect(url, name="m")

    async def handler(delivery) -> None:
        raise AssertionError("must never receive")

    try:
        with pytest.raises(BrokerError, match="not allowed to consume"):
            await consume(bus, f"set.{role}", handler)
    finally:
        await bus.close()
        await admin_bus.close()


async def test_trace_tap_copies_set_envelopes_only_when_bound(broker_vhost) -> None:
    role = f"t{uuid.uuid4().hex[:6]}"
    bus = await connect(broker_vhost.url, name="t")
    channel = await bus.channel()
    await declare_actor(channel, role, "main")
    recorder = await channel.declare_queue(exclusive=True)
    await recorder.bind(TRACE_EXCHANGE)
    try:
        await bus.publish(role, b"envelope-1", exchange=SET_EXCHANGE)
        await bus.publish("keystore.rpc", b"keys", mandatory=False)  # default exchange: not traced
        copy = await recorder.get(timeout=5)
        assert copy is not None and copy.body == b"envelope-1"
        await copy.ack()
        assert await recorder.get(fail=False) is None
    finally:
        await bus.close()
