"""A RabbitMQ restart (stop_app/start_app) in the middle of 10,000 confirmed messages.

Affects the whole machine's broker: marked slow, kept short, always restarts the app.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from broker import admin
from broker.connection import connect
from broker.consumer import Delivery, consume
from broker.topology import SET_EXCHANGE, declare_actor
from tests.broker.effects import Effects

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_broker_restart_mid_stream_loses_nothing_and_commits_once(
    broker_vhost, tmp_path
) -> None:
    total = 10_000
    role = f"restart{uuid.uuid4().hex[:6]}"
    publisher = await connect(broker_vhost.url, name="pub", reconnect_interval=0.5)
    subscriber = await connect(broker_vhost.url, name="sub", reconnect_interval=0.5)
    channel = await publisher.channel()
    await declare_actor(channel, role, "main")
    store = Effects(tmp_path / "dedupe.sqlite")
    deliveries = 0
    committed = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        nonlocal deliveries
        deliveries += 1
        store.once(delivery.message_id or "", delivery.body, int(delivery.body))
        if store.totals()[0] == total:
            committed.set()

    consumer = await consume(subscriber, f"set.{role}", handler, prefetch=128)
    gate = asyncio.Semaphore(128)
    confirmed = 0
    restart_point = asyncio.Event()

    async def send(n: int) -> None:
        nonlocal confirmed
        async with gate:
            message = publisher.message(b"%d" % n, message_id=f"m{n}")
            await publisher.publish(role, message, exchange=SET_EXCHANGE, timeout=90)
            confirmed += 1
            if confirmed == 3_000:
                restart_point.set()

    async def restart() -> None:
        await restart_point.wait()
        try:
            await asyncio.to_thread(admin.stop_app)
            await asyncio.sleep(1.0)
        finally:
            await asyncio.to_thread(admin.start_app)

    try:
        await asyncio.wait_for(
            asyncio.gather(restart(), *(send(n) for n in range(total))), 180
        )
        await asyncio.wait_for(committed.wait(), 120)
        assert store.totals() == (total, total, sum(range(total)))
        assert deliveries >= total
        print(f"deliveries={deliveries} (duplicates absorbed: {deliveries - total})")
    finally:
        await asyncio.to_thread(admin.start_app)  # idempotent: the broker must be left running
        await consumer.stop()
        store.close()
        await publisher.close()
        await subscriber.close()
