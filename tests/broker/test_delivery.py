"""Confirmed publish, acked consume, dead-lettering and exactly-once effects on real RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid

import msgpack
import pytest

from broker.connection import connect
from broker.consumer import CODE_HEADER, QUEUE_HEADER, REASON_HEADER, Delivery, Rejected, consume
from broker.errors import PeerUnavailable, PublishError
from broker.topology import DEAD_LETTER_QUEUE, SET_EXCHANGE, QueueLimits, declare_actor
from tests.broker.effects import Effects

pytestmark = pytest.mark.integration


def role_name() -> str:
    return f"r{uuid.uuid4().hex[:8]}"


async def dead_letters_for(channel, queue: str, expected: int) -> list:
    """Drain the shared dead-letter queue until ``expected`` records of ``queue`` were seen."""
    dead = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
    found = []
    async with dead.iterator() as messages:
        async for message in messages:
            async with message.process():
                if (message.headers or {}).get(QUEUE_HEADER) == queue:
                    found.append(message)
            if len(found) == expected:
                break
    return found


async def test_ten_thousand_confirmed_messages_all_arrive_and_commit_once(
    broker_vhost, tmp_path
) -> None:
    bus = await connect(broker_vhost.url, name="t")
    role = role_name()
    channel = await bus.channel()
    await declare_actor(channel, role, "main")
    store = Effects(tmp_path / "dedupe.sqlite")
    total = 10_000
    done = asyncio.Event()
    deliveries = 0
    ran = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal deliveries, ran
        deliveries += 1
        n = msgpack.unpackb(delivery.body)["n"]
        ran += store.once(delivery.message_id or "", delivery.body, n)
        if ran == total:  # counted in memory: a table scan per message made this quadratic
            done.set()

    consumer = await consume(bus, f"set.{role}", handler, prefetch=256)
    gate = asyncio.Semaphore(256)

    async def send(n: int) -> None:
        async with gate:
            message = bus.message(msgpack.packb({"n": n}), message_id=f"m{n}")
            # a loaded CI machine may hold a confirm for seconds: the test is about arrival
            # and exactly-once, not about how fast the broker confirms
            await bus.publish(role, message, exchange=SET_EXCHANGE, timeout=120)

    try:
        await asyncio.gather(*(send(n) for n in range(total)))
        # a redelivered duplicate (same message id) must not commit a second effect
        await bus.publish(role, bus.message(msgpack.packb({"n": 7}), message_id="m7"),
                          exchange=SET_EXCHANGE)
        await asyncio.wait_for(done.wait(), 180)
        while deliveries < total + 1:
            await asyncio.sleep(0.01)
        # a publish whose confirm is late on a loaded machine is sent again (at least once),
        # so there may be more deliveries than messages: every extra one must have run nothing
        assert store.totals() == (total, total, sum(range(total)))
        assert ran == total
        assert consumer.handled >= total + 1
    finally:
        await consumer.stop()
        store.close()
        await bus.close()


async def test_bad_messages_are_dead_lettered_with_reason_and_consumer_keeps_going(
    broker_vhost,
) -> None:
    bus = await connect(broker_vhost.url, name="t")
    role = role_name()
    channel = await bus.channel()
    await declare_actor(channel, role, "main")
    answered: list[int] = []
    good = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        try:
            record = msgpack.unpackb(delivery.body, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as exc:
            raise Rejected("malformed body", "malformed") from exc
        if delivery.msg_type != "Ping":
            raise Rejected(f"unknown type {delivery.msg_type!r}", "unknown-type")
        answered.append(record["n"])
        good.set()

    queue = f"set.{role}"
    consumer = await consume(bus, queue, handler, max_message_bytes=1024)
    try:
        await bus.publish(role, bus.message(b"\xc1\xc1 not msgpack", msg_type="Ping"),
                          exchange=SET_EXCHANGE)
        await bus.publish(role, bus.message(b"\x00" * 4096, msg_type="Ping"),
                          exchange=SET_EXCHANGE)
        await bus.publish(role, bus.message(msgpack.packb({"n": 1}), msg_type="Bogus"),
                          exchange=SET_EXCHANGE)
        await bus.publish(role, bus.message(msgpack.packb({"n": 2}), msg_type="Ping"),
                          exchange=SET_EXCHANGE)
        await asyncio.wait_for(good.wait(), 10)
        assert answered == [2]
        found = await asyncio.wait_for(dead_letters_for(channel, queue, 3), 10)
        codes = sorted(m.headers[CODE_HEADER] for m in found)
        assert codes == ["malformed", "oversized", "unknown-type"]
        reasons = {m.headers[CODE_HEADER]: m.headers[REASON_HEADER] for m in found}
        assert reasons["oversized"] == "oversized: 4096 bytes"
        assert "Bogus" in reasons["unknown-type"]
        assert consumer.dead_lettered == 3
    finally:
        await consumer.stop()
        await bus.close()


async def test_handler_crash_is_retried_once_then_dead_lettered(broker_vhost) -> None:
    bus = await connect(broker_vhost.url, name="t")
    role = role_name()
    channel = await bus.channel()
    await declare_actor(channel, role, "main")
    attempts: list[bool] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.redelivered)
        raise RuntimeError("boom")

    queue = f"set.{role}"
    consumer = await consume(bus, queue, handler)
    try:
        await bus.publish(role, b"x", exchange=SET_EXCHANGE)
        found = await asyncio.wait_for(dead_letters_for(channel, queue, 1), 10)
        assert attempts == [False, True]
        assert found[0].headers[CODE_HEADER] == "handler-error"
        assert "RuntimeError" in found[0].headers[REASON_HEADER]
    finally:
        await consumer.stop()
        await bus.close()


async def test_unroutable_publish_is_reported_not_dropped(broker_vhost) -> None:
    bus = await connect(broker_vhost.url, name="t")
    channel = await bus.channel()
    await declare_actor(channel, role_name(), "main")
    try:
        with pytest.raises(PeerUnavailable):
            await bus.publish("nobody.listens", b"x", exchange=SET_EXCHANGE)
        with pytest.raises(PublishError):
            await bus.publish("k", b"x", exchange="no-such-exchange")
        # the bus keeps working after both failures
        await bus.publish("nobody.listens", b"x", exchange=SET_EXCHANGE, mandatory=False)
    finally:
        await bus.close()


async def test_full_queue_nacks_the_publisher(broker_vhost) -> None:
    bus = await connect(broker_vhost.url, name="t")
    role = role_name()
    channel = await bus.channel()
    await declare_actor(channel, role, "main", QueueLimits(max_length=2))
    try:
        await bus.publish(role, b"1", exchange=SET_EXCHANGE)
        await bus.publish(role, b"2", exchange=SET_EXCHANGE)
        with pytest.raises(PublishError):
            await bus.publish(role, b"3", exchange=SET_EXCHANGE, timeout=1.0)
    finally:
        await bus.close()
