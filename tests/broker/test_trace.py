"""The trace tap against the real RabbitMQ: copies only while a recorder is bound, and an
unroutable SET message is reported whether or not a recorder is bound."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from broker.connection import connect
from broker.errors import PeerUnavailable
from broker.topology import SET_EXCHANGE, TRACE_EXCHANGE, declare_actor

pytestmark = pytest.mark.integration


async def test_unroutable_set_message_is_reported_with_and_without_a_recorder(
    broker_vhost,
) -> None:
    role = f"u{uuid.uuid4().hex[:6]}"
    bus = await connect(broker_vhost.url, name="t")
    bus.trace.probe_interval = 0.0  # probe on every publish: no waiting in the test
    channel = await bus.channel()
    await declare_actor(channel, role, "main")
    try:
        with pytest.raises(PeerUnavailable):
            await bus.publish("nobody.here", b"lost-1", exchange=SET_EXCHANGE)
        assert not bus.trace.recording
        recorder = await channel.declare_queue(exclusive=True)
        await recorder.bind(TRACE_EXCHANGE)
        await bus.publish(role, b"routed", exchange=SET_EXCHANGE)
        assert bus.trace.recording
        with pytest.raises(PeerUnavailable):
            await bus.publish("nobody.here", b"lost-2", exchange=SET_EXCHANGE)
        copy = await recorder.get(timeout=5)
        assert copy.body == b"routed" and copy.routing_key == role
        assert copy.user_id == bus.user_id
        await copy.ack()
        # an unroutable message was not delivered anywhere, so it is not in the trace either
        assert await recorder.get(fail=False) is None
        assert bus.trace.copies == 1
    finally:
        await bus.close()


async def until(condition, timeout: float = 5.0) -> None:
    """Wait for ``condition`` to hold (checked on every loop turn), failing after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_tap_stops_copying_when_the_recorder_leaves(broker_vhost) -> None:
    role = f"l{uuid.uuid4().hex[:6]}"
    bus = await connect(broker_vhost.url, name="t")
    channel = await bus.channel()
    await declare_actor(channel, role, "main")
    recorder = await channel.declare_queue(exclusive=True)
    await recorder.bind(TRACE_EXCHANGE)
    try:
        await bus.publish(role, b"one", exchange=SET_EXCHANGE)
        assert bus.trace.recording and bus.trace.copies == 1
        await recorder.delete(if_unused=False, if_empty=False)
        await bus.publish(role, b"two", exchange=SET_EXCHANGE)  # its copy is returned
        await until(lambda: not bus.trace.recording)  # the return arrives asynchronously
        await bus.publish(role, b"three", exchange=SET_EXCHANGE)  # no probe due: no copy
        assert bus.trace.copies == 1
    finally:
        await bus.close()
