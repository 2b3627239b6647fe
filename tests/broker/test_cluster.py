"""A three-node RabbitMQ cluster on this machine (tests/fixtures_rabbit_node.py) with quorum
queues: a URL naming the other nodes (broker/connection.py Rule 5) connects past a dead first
node, and when the node a publisher and a consumer are connected to is killed (SIGKILL) in the
middle of a confirmed load, both reconnect to the live nodes and every message takes effect
exactly once: none lost, none twice (the effect store dedupes redeliveries)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from broker.connection import connect, node_urls
from broker.consumer import Delivery, consume
from broker.errors import BrokerError
from broker.topology import SET_EXCHANGE, QueueLimits, declare_actor
from tests.broker.effects import Effects
from tests.fixtures_rabbit_node import Node, start_cluster
from tests.ops.environments import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[Node]]:
    nodes = start_cluster(3)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def url_of(first: int, *others: int) -> str:
    failover = ",".join(f"127.0.0.1:{p}" for p in others)
    return f"amqp://guest:guest@127.0.0.1:{first}/?failover={failover}&heartbeat=5"


def test_node_urls_keep_everything_but_the_node() -> None:
    assert node_urls("amqps://u:p@a:1/v%2Fx?cafile=%2Fca.pem&failover=b:2,[::1]:3") == [
        "amqps://u:p@a:1/v%2Fx?cafile=/ca.pem", "amqps://u:p@b:2/v%2Fx?cafile=/ca.pem",
        "amqps://u:p@[::1]:3/v%2Fx?cafile=/ca.pem"]  # fmt: skip
    assert node_urls("amqp://u:p@a:1/") == ["amqp://u:p@a:1/"]


async def test_the_first_live_node_is_taken(cluster: list[Node]) -> None:
    dead = free_port()
    bus = await connect(url_of(dead, cluster[1].port, cluster[2].port), name="t")
    try:
        assert bus.connection.url.port == cluster[1].port  # type: ignore[attr-defined]
    finally:
        await bus.close()
    with pytest.raises(BrokerError, match="tried 2 nodes"):
        await connect(url_of(dead, free_port()), name="t")


async def test_a_killed_node_loses_no_message_and_runs_none_twice(
    cluster: list[Node], tmp_path: Path,
) -> None:
    first, *others = cluster
    url = url_of(first.port, *(n.port for n in others))
    publisher = await connect(url, name="t-publisher")
    worker = await connect(url, name="t-worker")
    store = Effects(tmp_path / "effects.sqlite")
    total, killed_at = 1500, 500
    confirmed = 0
    delivered = 0
    try:
        role = "clustered"
        await declare_actor(await publisher.channel(), role, "main",
                            QueueLimits(queue_type="quorum"), passive=False)  # fmt: skip

        async def handler(delivery: Delivery) -> None:
            nonlocal delivered
            delivered += 1
            store.once(delivery.message_id or "", delivery.body,
                       msgpack.unpackb(delivery.body)["n"])  # fmt: skip

        consumer = await consume(worker, f"set.{role}", handler, prefetch=64)
        gate = asyncio.Semaphore(64)
        half = asyncio.Event()

        async def send(n: int) -> None:
            nonlocal confirmed
            async with gate:
                message = publisher.message(msgpack.packb({"n": n}), message_id=f"m{n}")
                await publisher.publish(role, message, exchange=SET_EXCHANGE, timeout=120)
                confirmed += 1
                if confirmed == killed_at:
                    half.set()

        sending = asyncio.gather(*(send(n) for n in range(total)))
        await asyncio.wait_for(half.wait(), 120)
        first.kill()  # both clients are connected to it
        await asyncio.wait_for(sending, 300)  # every publish confirmed, by a live node
        for _ in range(1200):
            if store.totals()[1] == total:
                break
            await asyncio.sleep(0.1)
        assert store.totals() == (total, total, sum(range(total)))  # each once, none lost
        assert delivered >= total
        live = {n.port for n in others}
        assert publisher.connection.url.port in live  # type: ignore[attr-defined]
        assert worker.connection.url.port in live  # type: ignore[attr-defined]
        await consumer.stop()
    finally:
        store.close()
        await publisher.close()
        await worker.close()
