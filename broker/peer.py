"""The correlated request/reply link every party uses to reach another party.

Rule 1: a request is published on the SET exchange to routing key ``target`` (a role's shared
queue, e.g. ``ca``, or one instance, ``merchant.pos1``) with ``reply_to`` = this link's own
instance key and a fresh correlation id; the reply is taken from this link's own queue by that
correlation id, within a deadline (``TimeoutError`` otherwise).
Rule 2: a reply nobody waits for (late, after the deadline, or foreign) is acked and dropped
with a log line; it never reaches another request.
Rule 3: the link moves bytes and knows nothing of SET: callers wrap and check messages
(``protocol.requester``, the parties' own checks). ``record=True`` keeps a copy of every body
sent and received in ``traffic`` (tests look for secrets in it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from broker.connection import Bus
from broker.consumer import Consumer, Delivery, consume
from broker.topology import SET_EXCHANGE, declare_actor, instance_key
from setpay.logs import get_logger

log = get_logger(component="peer")


class PeerLink:
    """Sends requests to ``target`` (or any routing key per call) and awaits their replies."""

    def __init__(
        self,
        bus: Bus,
        role: str,
        instance: str,
        *,
        target: str = "ca",
        timeout: float = 15.0,
        record: bool = False,
    ) -> None:
        self.bus = bus
        self.role = role
        self.instance = instance
        self.target = target
        self.timeout = timeout
        self.record = record
        self.traffic: list[bytes] = []
        self._waiting: dict[str, asyncio.Future[tuple[str, bytes]]] = {}
        self._consumer: Consumer | None = None

    async def start(self) -> PeerLink:
        """Declare this link's own queue and consume the replies (Rule 1)."""
        declared = await declare_actor(await self.bus.channel(), self.role, self.instance)
        self._consumer = await consume(self.bus, declared.instance.name, self._on_reply)
        return self

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _on_reply(self, delivery: Delivery) -> None:
        future = self._waiting.pop(delivery.correlation_id or "", None)
        if future is None or future.done():
            log.info("peer_reply_unmatched", msg_type=delivery.msg_type)  # Rule 2
            return
        future.set_result((delivery.msg_type or "", delivery.body))

    async def request_raw(
        self, msg_type: str, data: bytes, *, target: str | None = None
    ) -> tuple[str, bytes]:
        """Send ``data`` as AMQP type ``msg_type``; (reply type, reply bytes)."""
        correlation = self.bus.new_id()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        message = self.bus.message(
            data,
            msg_type=msg_type,
            correlation_id=correlation,
            reply_to=instance_key(self.role, self.instance),
        )
        if self.record:
            self.traffic.append(data)
        try:
            await self.bus.publish(target or self.target, message, exchange=SET_EXCHANGE)
            reply: tuple[str, bytes] = await asyncio.wait_for(future, self.timeout)
        finally:
            self._waiting.pop(correlation, None)
        if self.record:
            self.traffic.append(reply[1])
        return reply

    async def request(self, target: str, msg_type: str, data: bytes) -> tuple[str, bytes]:
        """``request_raw`` to an explicit ``target`` (a merchant instance, another role)."""
        return await self.request_raw(msg_type, data, target=target)
