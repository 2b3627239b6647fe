"""Request/reply with SET parties (CA, merchants) over the SET exchange.

Rule 1: the transport of ``actors/ca/requester.CAClient``, with the target chosen per request:
publish to routing key ``target`` with ``reply_to`` = this client's own instance key, wait for
the reply with the same correlation id on this client's own queue, with a deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

from broker.connection import Bus
from broker.consumer import Consumer, Delivery, consume
from broker.topology import SET_EXCHANGE, declare_actor, instance_key


class PeerClient:
    """Sends wrapped SET requests to any party and awaits the replies (Rule 1)."""

    def __init__(self, bus: Bus, role: str, instance: str, timeout: float = 15.0) -> None:
        self.bus = bus
        self.role = role
        self.instance = instance
        self.timeout = timeout
        self._waiting: dict[str, asyncio.Future[tuple[str, bytes]]] = {}
        self._consumer: Consumer | None = None

    async def start(self) -> PeerClient:
        declared = await declare_actor(await self.bus.channel(), self.role, self.instance)
        self._consumer = await consume(self.bus, declared.instance.name, self._on_reply)
        return self

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _on_reply(self, delivery: Delivery) -> None:
        future = self._waiting.pop(delivery.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result((delivery.msg_type or "", delivery.body))

    async def request(self, target: str, msg_type: str, data: bytes) -> tuple[str, bytes]:
        """Send ``data`` to ``target``; (reply type, reply bytes). ``TimeoutError`` if silent."""
        correlation = self.bus.new_id()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        message = self.bus.message(
            data,
            msg_type=msg_type,
            correlation_id=correlation,
            reply_to=instance_key(self.role, self.instance),
        )
        try:
            await self.bus.publish(target, message, exchange=SET_EXCHANGE)
            return await asyncio.wait_for(future, self.timeout)
        finally:
            self._waiting.pop(correlation, None)
