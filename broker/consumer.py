"""Consuming with manual acknowledgement and dead-lettering.

Rule 1: a message is acked only after its handler returned, i.e. after the handler committed
its effects; a crash or lost link before that means redelivery (at-least-once).
Rule 2: a message that cannot be handled (oversized, undecodable, unknown type, handler
rejected it, handler failed twice) is republished -- confirmed -- to the dead-letter exchange
with ``x-setpay-reason`` and ``x-setpay-error-code`` headers, logged, then acked; the consumer
keeps going. If the dead-letter publish fails the message is requeued, never dropped.
Rule 3: an unexpected handler exception is retried once (requeue); the redelivery that fails
again is dead-lettered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from broker.connection import Bus
from broker.draining import DrainingConsumer
from broker.errors import BrokerError
from broker.topology import DEAD_LETTER_EXCHANGE
from setpay import metrics
from setpay.durability import GROUP
from setpay.logs import get_logger

log = get_logger(component="broker.consumer")

REASON_HEADER = "x-setpay-reason"
CODE_HEADER = "x-setpay-error-code"
QUEUE_HEADER = "x-setpay-queue"


class Rejected(BrokerError):
    """Raised by a handler: the message is permanently unusable; dead-letter it with ``reason``."""

    def __init__(self, reason: str, code: str | int = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True, slots=True)
class Delivery:
    """One consumed message as a handler sees it."""

    body: bytes
    message_id: str | None
    msg_type: str | None
    user_id: str | None
    routing_key: str | None
    correlation_id: str | None
    reply_to: str | None
    redelivered: bool
    headers: Mapping[str, Any] = field(default_factory=dict)


Handler = Callable[[Delivery], Awaitable[None]]


class Consumer(DrainingConsumer):
    """A running consumer of one queue; ``stop()`` stops it after in-flight messages finish."""

    def __init__(
        self,
        bus: Bus,
        channel: AbstractRobustChannel,
        queue: AbstractQueue,
        handler: Handler,
        max_message_bytes: int,
    ) -> None:
        super().__init__(bus, channel, queue)
        self._handler = handler
        self._max = max_message_bytes
        self.handled = 0
        self.dead_lettered = 0

    async def _process(self, message: AbstractIncomingMessage) -> None:
        if len(message.body) > self._max:
            await self._dead_letter(message, f"oversized: {len(message.body)} bytes", "oversized")
            return
        delivery = Delivery(
            body=message.body,
            message_id=message.message_id,
            msg_type=message.type,
            user_id=message.user_id,
            routing_key=message.routing_key,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            redelivered=bool(message.redelivered),
            headers=dict(message.headers or {}),
        )
        try:
            await self._handler(delivery)
        except asyncio.CancelledError:
            raise
        except Rejected as exc:
            await self._dead_letter(message, exc.reason, exc.code)
            return
        except Exception as exc:
            if not message.redelivered:
                log.warning("handler_failed_requeue", queue=self.queue_name,
                            error=type(exc).__name__, message_id=message.message_id)
                await self._settle(message.nack(requeue=True))
                return
            await self._dead_letter(message, f"handler failed twice: {type(exc).__name__}",
                                    "handler-error")
            return
        try:
            await GROUP.barrier()  # setpay/durability.py: the handler's commits before the ack
        except OSError as exc:
            log.error("commit_sync_failed", queue=self.queue_name, error=type(exc).__name__)
            await self._settle(message.nack(requeue=True))
            return
        self.handled += 1
        await self._settle(message.ack())

    async def _settle(self, settle: Awaitable[Any]) -> None:
        try:
            await settle
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            # The channel died: the broker requeues the message and redelivers it.
            log.warning("settle_failed", queue=self.queue_name, error=type(exc).__name__)

    async def _dead_letter(
        self, message: AbstractIncomingMessage, reason: str, code: str | int
    ) -> None:
        headers = dict(message.headers or {})
        headers.update({REASON_HEADER: reason, CODE_HEADER: str(code),
                        QUEUE_HEADER: self.queue_name})
        record = self.bus.message(
            message.body,
            headers=headers,
            message_id=message.message_id,
            msg_type=message.type,
            correlation_id=message.correlation_id,
            content_type=message.content_type,
        )
        try:
            await self.bus.publish(self.queue_name, record, exchange=DEAD_LETTER_EXCHANGE,
                                   mandatory=False)
        except BrokerError as exc:
            log.error("dead_letter_failed", queue=self.queue_name, error=type(exc).__name__)
            await self._settle(message.nack(requeue=True))
            return
        self.dead_lettered += 1
        metrics.DEAD_LETTERED.labels(queue=self.queue_name, code=str(code)[:40]).inc()
        log.warning("dead_lettered", queue=self.queue_name, reason=reason, code=str(code),
                    message_id=message.message_id, msg_type=message.type)
        await self._settle(message.ack())


async def consume(
    bus: Bus,
    queue: str,
    handler: Handler,
    *,
    prefetch: int = 64,
    max_message_bytes: int = 1_048_576,
) -> Consumer:
    """Consume the existing ``queue`` with ``handler`` (declare it first with ``topology``)."""
    channel = await bus.channel(confirms=False, prefetch=prefetch)
    try:
        # passive + robust: the channel re-attaches this consumer after a reconnect
        declared = await channel.declare_queue(queue, passive=True)
        consumer = Consumer(bus, channel, declared, handler, max_message_bytes)
        await consumer.start()
    except aiormq.exceptions.ChannelAccessRefused as exc:
        raise BrokerError(f"not allowed to consume queue {queue!r}") from exc
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise BrokerError(f"queue {queue!r} does not exist") from exc
    return consumer
