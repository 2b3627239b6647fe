"""An Actor and an RpcServer keep serving across a RabbitMQ restart (stop_app/start_app).

Restarts the machine-wide broker: marked slow, kept under 20 s, start_app always runs.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aiormq
import pytest

from actors.runtime_echo import EchoActor
from broker import admin
from broker.connection import connect
from broker.errors import BrokerError
from broker.rpc import RpcClient, RpcRequest, serve_rpc
from broker.topology import SET_EXCHANGE, inbox_prefix

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = "?reconnect_interval=0.3"  # aio-pika reads it from the URL (default 5 s)


async def _until(deadline: float, attempt) -> object:
    """Retry ``attempt`` until it succeeds or ``deadline`` passes (then re-raise its error)."""
    while True:
        try:
            return await asyncio.wait_for(attempt(), 2.0)
        except (BrokerError, aiormq.exceptions.AMQPError, TimeoutError, ConnectionError,
                RuntimeError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_actor_and_rpc_server_serve_again_after_broker_restart(broker_vhost) -> None:
    url = broker_vhost.url + FAST
    actor = EchoActor("echo", uuid.uuid4().hex[:8], url)
    await actor.start()
    server_bus = await connect(url, name="rpc-server")
    client_bus = await connect(url, name="client")

    async def echo(request: RpcRequest) -> bytes:
        return b"rpc:" + request.body

    queue = f"rpc.restart.{uuid.uuid4().hex[:8]}"
    server = await serve_rpc(server_bus, queue, echo)
    client = await RpcClient.create(client_bus, accept=lambda login: True, default_timeout=2.0)
    # a durable reply queue of the client's own login (the runtime answers only into one)
    reply_key = f"{inbox_prefix(client_bus.user_id)}{uuid.uuid4().hex[:8]}"
    replies = await (await client_bus.channel()).declare_queue(reply_key, durable=True)
    await replies.bind(SET_EXCHANGE, routing_key=reply_key)

    async def echo_round_trip(tag: bytes) -> bytes:
        await client_bus.publish(
            f"echo.{actor.instance}",
            client_bus.message(tag, msg_type="Echo", reply_to=reply_key),
            exchange=SET_EXCHANGE, timeout=2.0,
        )
        while True:
            reply = await replies.get(fail=False)
            if reply is not None:
                await reply.ack()
                if reply.body == tag:
                    return reply.body
            await asyncio.sleep(0.05)

    reconnects: list[str] = []
    for name, bus in (("actor", actor.bus), ("server", server_bus), ("client", client_bus)):
        bus.connection.reconnect_callbacks.add(lambda *_, name=name: reconnects.append(name))
    started = time.monotonic()
    try:
        assert await client.call(queue, b"before") == b"rpc:before"
        assert await echo_round_trip(b"before") == b"before"
        handled_before = actor.health()["handled"]
        try:
            await asyncio.to_thread(admin.stop_app)
        finally:
            await asyncio.to_thread(admin.start_app)
        deadline = time.monotonic() + 12
        assert await _until(deadline, lambda: client.call(queue, b"after")) == b"rpc:after"
        assert await _until(deadline, lambda: echo_round_trip(b"after")) == b"after"
        # the links really broke: each robust connection says so once its channels are
        # restored, which can come a moment after its consumers answer again
        while sorted(reconnects) != ["actor", "client", "server"] and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
        assert sorted(reconnects) == ["actor", "client", "server"]
        health = actor.health()
        assert health["ready"] and health["connected"]
        assert health["handled"] > handled_before
        print(f"recovered {time.monotonic() - started:.1f}s after the first call")
    finally:
        await asyncio.to_thread(admin.start_app)  # idempotent: leave the broker running
        await client.close()
        await server.stop()
        await actor.stop()
        await client_bus.close()
        await server_bus.close()
