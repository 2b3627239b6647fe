"""Quorum queues (broker/topology.py Rule 8) on the real broker: declared with the
at-least-once dead-letter strategy and a delivery limit, they carry confirmed traffic, dead-
letter what a handler refuses, and dead-letter a message whose consumers keep dying on it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator

import aio_pika
import msgpack
import pytest
from aio_pika.abc import AbstractChannel

from broker.admin import rabbitmqctl_path
from broker.connection import Bus, connect
from broker.consumer import Delivery, Rejected, consume
from broker.topology import (
    DEAD_LETTER_QUEUE,
    QUORUM_DELIVERY_LIMIT,
    SET_EXCHANGE,
    QueueLimits,
    declare_actor,
)
from tests.fixtures_broker import BrokerVhost, make_vhost

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vhost() -> Iterator[BrokerVhost]:
    """A vhost of its own: its dead-letter queue is declared quorum here, not by others."""
    v = make_vhost()
    try:
        yield v
    finally:
        v.cleanup()


def queue_types(vhost: str) -> dict[str, tuple[str, dict[str, object]]]:
    out = subprocess.run(
        [rabbitmqctl_path(), "-q", "list_queues", "-p", vhost, "name", "type", "arguments",
         "--formatter", "json"], capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return {q["name"]: (q["type"], {k: v for k, _t, v in q["arguments"]})
            for q in json.loads(out.stdout)}  # fmt: skip


async def quorum_actor(vhost: BrokerVhost) -> tuple[Bus, AbstractChannel, str]:
    """A connection, a channel, and a fresh role whose queues were declared quorum on it."""
    role = f"q{uuid.uuid4().hex[:6]}"
    bus = await connect(vhost.url, name="t")
    channel = await bus.channel()
    await declare_actor(channel, role, "main", QueueLimits(queue_type="quorum"), passive=False)
    return bus, channel, role


async def test_quorum_queues_carry_traffic_and_dead_letter_at_least_once(
    vhost: BrokerVhost,
) -> None:
    bus, channel, role = await quorum_actor(vhost)
    try:
        found = await asyncio.to_thread(queue_types, vhost.name)
        for name in (f"set.{role}", f"set.{role}.main"):
            kind, args = found[name]
            assert kind == "quorum"
            assert args["x-dead-letter-strategy"] == "at-least-once"
            assert args["x-delivery-limit"] == QUORUM_DELIVERY_LIMIT
        assert found[DEAD_LETTER_QUEUE][0] == "quorum"

        seen: list[int] = []
        done = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            n = msgpack.unpackb(delivery.body)["n"]
            if n == 13:
                raise Rejected("unlucky", "unlucky")
            seen.append(n)
            if len(seen) == 199:
                done.set()

        consumer = await consume(bus, f"set.{role}", handler, prefetch=64)
        try:
            await asyncio.gather(*(bus.publish(role, bus.message(
                msgpack.packb({"n": n}), message_id=f"m{n}"), exchange=SET_EXCHANGE)
                for n in range(200)))  # fmt: skip
            await asyncio.wait_for(done.wait(), 60)
        finally:
            await consumer.stop()
        assert sorted(seen) == [n for n in range(200) if n != 13]
        dead = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
        letter = await dead.get(timeout=10)
        assert letter is not None and msgpack.unpackb(letter.body)["n"] == 13
        await letter.ack()
    finally:
        await bus.close()


async def test_a_message_that_kills_its_consumers_is_dead_lettered_after_the_limit(
    vhost: BrokerVhost,
) -> None:
    bus, channel, role = await quorum_actor(vhost)
    try:
        await bus.publish(role, bus.message(b"poison", message_id="p1"), exchange=SET_EXCHANGE)
        deliveries = 0
        for _ in range(QUORUM_DELIVERY_LIMIT + 5):
            # a consumer takes it and dies before its ack (its channel closes)
            doomed = await (await connect(vhost.url, name="t")).channel()
            queue = await doomed.declare_queue(f"set.{role}", passive=True)
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            await doomed.close()
            if message is None:
                break
            deliveries += 1
        assert deliveries == QUORUM_DELIVERY_LIMIT + 1  # the first and the limit's redeliveries
        dead = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
        letter: aio_pika.abc.AbstractIncomingMessage | None = None
        for _ in range(50):
            letter = await dead.get(fail=False, timeout=5)
            if letter is not None:
                break
            await asyncio.sleep(0.1)
        assert letter is not None and letter.body == b"poison"
        death = (letter.headers or {}).get("x-death") or []
        assert death and death[0]["reason"] == "delivery_limit"  # type: ignore[index]
        await letter.ack()
    finally:
        await bus.close()
