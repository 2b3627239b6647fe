"""`setpay bench broker`: broker/ against raw aio-pika, measured in the same run.

Rule 1: every figure is printed next to raw aio-pika doing the same work, with the ratio.
Rule 2: the benchmark works in its own throw-away vhost and deletes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import aio_pika
from hdrh.histogram import HdrHistogram

from broker import admin
from broker.connection import connect
from broker.rpc import RpcClient, RpcRequest, serve_rpc
from setpay.config import Settings

REPLY_TO = "amq.rabbitmq.reply-to"  # the raw baseline: plain aio-pika direct reply-to

BODY = secrets.token_bytes(2048)


def _acking_counter(
    n: int,
) -> tuple[Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]], asyncio.Event]:
    """A consumer callback that acks each message, and the event set at the ``n``-th."""
    done = asyncio.Event()
    got = 0

    async def on(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal got
        await message.ack()
        got += 1
        if got == n:
            done.set()

    return on, done


async def _throughput_setpay(url: str, n: int, window: int) -> float:
    bus = await connect(url, name="bench")
    channel = await bus.channel(confirms=False, prefetch=window)
    queue = await channel.declare_queue(f"bench.{uuid.uuid4().hex}", durable=True)
    on, done = _acking_counter(n)
    await queue.consume(on)
    gate = asyncio.Semaphore(window)

    async def send() -> None:
        async with gate:
            await bus.publish(queue.name, bus.message(BODY))

    started = time.perf_counter()
    await asyncio.gather(*(send() for _ in range(n)))
    await done.wait()
    elapsed = time.perf_counter() - started
    await queue.delete(if_unused=False)
    await bus.close()
    return n / elapsed


async def throughput_raw(
    url: str, n: int, window: int, bodies: Sequence[bytes] = (BODY,)
) -> float:
    """Messages/s of raw aio-pika: persistent publishes with confirms, ``window`` in flight,
    consumed with manual ack; bodies cycle through ``bodies`` (one purchase's sizes, say)."""
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=True)
    consume_channel = await connection.channel(publisher_confirms=False)
    await consume_channel.set_qos(prefetch_count=window)
    queue = await consume_channel.declare_queue(f"bench.{uuid.uuid4().hex}", durable=True)
    on, done = _acking_counter(n)
    await queue.consume(on)
    gate = asyncio.Semaphore(window)

    async def send(i: int) -> None:
        async with gate:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    bodies[i % len(bodies)], delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                queue.name,
            )

    started = time.perf_counter()
    await asyncio.gather(*(send(i) for i in range(n)))
    await done.wait()
    elapsed = time.perf_counter() - started
    await queue.delete(if_unused=False)
    await connection.close()
    return n / elapsed


async def _drive(call: Callable[[], Awaitable[bytes]], n: int, in_flight: int
                 ) -> tuple[float, HdrHistogram]:
    hist = HdrHistogram(1, 60_000_000, 3)
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await call()
            hist.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return n / (time.perf_counter() - started), hist


async def _rpc_setpay(url: str, n: int, in_flight: int) -> tuple[float, HdrHistogram]:
    bus = await connect(url, name="bench-rpc")

    async def echo(request: RpcRequest) -> bytes:
        return request.body

    queue = f"bench.rpc.{uuid.uuid4().hex}"
    server = await serve_rpc(bus, queue, echo, prefetch=max(64, in_flight))
    client = await RpcClient.create(bus, accept=lambda login: login == bus.user_id)
    try:
        return await _drive(lambda: client.call(queue, BODY, timeout=30), n, in_flight)
    finally:
        await client.close()
        await server.stop()
        await bus.close()


async def rpc_raw(url: str, n: int, in_flight: int) -> tuple[float, HdrHistogram]:
    connection = await aio_pika.connect_robust(url)
    server_channel = await connection.channel(publisher_confirms=False)
    await server_channel.set_qos(prefetch_count=max(64, in_flight))
    queue = await server_channel.declare_queue(f"bench.rpc.{uuid.uuid4().hex}", durable=True)

    async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await server_channel.default_exchange.publish(
            aio_pika.Message(message.body, correlation_id=message.correlation_id),
            message.reply_to or "", mandatory=False,
        )
        await message.ack()

    await queue.consume(serve)
    channel = await connection.channel(publisher_confirms=True)
    replies = await channel.declare_queue(REPLY_TO, passive=True)
    pending: dict[str, asyncio.Future[bytes]] = {}

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = pending.pop(message.correlation_id or "", None)
        if future is not None:
            future.set_result(message.body)

    await replies.consume(on_reply, no_ack=True)

    async def call() -> bytes:
        cid = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        pending[cid] = future
        await channel.default_exchange.publish(
            aio_pika.Message(BODY, correlation_id=cid, reply_to=REPLY_TO), queue.name
        )
        return await future

    try:
        return await _drive(call, n, in_flight)
    finally:
        await queue.delete(if_unused=False)
        await connection.close()


def _line(name: str, ours: float, raw: float, extra: str = "") -> str:
    return f"{name:<34} {ours:>10,.0f} {raw:>10,.0f} {ours / raw:>7.0%}  {extra}"


async def run(url: str, messages: int, calls: int) -> list[str]:
    """Run every measurement against raw aio-pika; return the printed table's lines."""
    lines = [f"{'measure (2 KB bodies)':<34} {'broker/':>10} {'raw':>10} {'ratio':>7}"]
    for window in (256,):
        raw = await throughput_raw(url, messages, window)
        ours = await _throughput_setpay(url, messages, window)
        lines.append(_line(f"persistent+confirms msg/s, {window} win", ours, raw))
    for in_flight in (1, 64):
        raw_rate, raw_h = await rpc_raw(url, calls, in_flight)
        our_rate, our_h = await _rpc_setpay(url, calls, in_flight)
        pct = (
            f"p50 {our_h.get_value_at_percentile(50) / 1000:.1f}/"
            f"{raw_h.get_value_at_percentile(50) / 1000:.1f} ms, "
            f"p99 {our_h.get_value_at_percentile(99) / 1000:.1f}/"
            f"{raw_h.get_value_at_percentile(99) / 1000:.1f} ms"
        )
        lines.append(_line(f"RPC req/s, {in_flight} in flight", our_rate, raw_rate, pct))
    return lines


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    vhost = f"setpay-bench-{secrets.token_hex(4)}"
    admin.create_vhost(vhost)
    try:
        admin.set_permissions(vhost, settings.broker_admin_user, ".*", ".*", ".*")
        from urllib.parse import quote

        url = (f"amqp://{quote(settings.broker_admin_user, safe='')}:"
               f"{quote(settings.broker_admin_password, safe='')}@127.0.0.1:5672/{vhost}")
        for line in asyncio.run(run(url, args.messages, args.calls)):
            print(line)
    finally:
        admin.delete_vhost(vhost)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `setpay bench broker`."""
    parser = sub.add_parser("broker", help="broker/ throughput and RPC against raw aio-pika")
    parser.add_argument("--messages", type=int, default=10_000, help="messages per run")
    parser.add_argument("--calls", type=int, default=3_000, help="RPC calls per run")
    parser.set_defaults(func=_cmd)
