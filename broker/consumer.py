"""Consuming with manual acknowledgement and dead-lettering.

Rule 1: a message is acked only after its handler returned, i.e. after the handler committed
its effects; a crash or lost link before that means redelivery (at-least-once).
Rule 2: a message that cannot be handled (oversized, undecodable, unknown type, handler
rejected it, handler failed twice) is republished -- confirmed -- to the dead-letter exchange
with ``x-setpay-reason`` and ``x-setpay-error-code`` headers, logged, then acked; the consumer
keeps going. If the dead-letter publish fails the message is requeued, never dropped.
Rule 3: an unexpected handler exception is retried once (requeue); the redelivery that fails
again is dead-lettered.
Rule 4 (failover): a handler failure whose exception, or what it was raised ``from``, means the
broker went away (``broker.connection.is_transient``; a bare ``RuntimeError`` never does) is
not the handler's fault: the message is requeued after 0.5·2^n s, up to ``TRANSIENT_RETRIES``
times per message id (remembered in a bounded map), and only then handled by Rule 3.
Rule 5: a message whose channel died while its handler ran is neither settled nor
dead-lettered: the broker redelivers it on its own (a dead-letter copy would double it).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from broker.connection import Bus, is_transient
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
TRANSIENT_RETRIES = 5  # Rule 4: per message id, before Rule 3 takes over
TRANSIENT_DELAY = 0.5  # seconds before the first transient requeue; doubled each time
TRANSIENT_REMEMBERED = 10_000  # message ids whose transient retries are counted


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
        self.transient_requeued = 0
        self._transient: OrderedDict[str, int] = OrderedDict()  # Rule 4: message key -> retries

    @property
    def transient_remembered(self) -> int:
        """How many message ids Rule 4 counts transient retries for now (at most
        ``TRANSIENT_REMEMBERED``)."""
        return len(self._transient)

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
        except Exception as exc:
            await self._failed(message, exc)
            return
        if self._transient:  # the common case pays nothing for Rule 4
            self._transient.pop(_key(message), None)
        try:
            await GROUP.barrier()  # setpay/durability.py: the handler's commits before the ack
        except OSError as exc:
            log.error("commit_sync_failed", queue=self.queue_name, error=type(exc).__name__)
            await self._settle(message.nack(requeue=True))
            return
        self.handled += 1
        await self._settle(message.ack())

    async def _failed(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        """Settle a message whose handler raised ``exc`` (Rules 2 to 5)."""
        if _channel_lost(message):  # Rule 5
            log.warning("handler_interrupted", queue=self.queue_name,
                        error=type(exc).__name__, message_id=message.message_id)  # fmt: skip
            return
        if isinstance(exc, Rejected):
            await self._dead_letter(message, exc.reason, exc.code)
            return
        if is_transient(exc) and await self._requeue_transient(message, exc):
            return
        self._transient.pop(_key(message), None)
        if not message.redelivered:
            log.warning("handler_failed_requeue", queue=self.queue_name,
                        error=type(exc).__name__, message_id=message.message_id)
            await self._settle(message.nack(requeue=True))
            return
        await self._dead_letter(message, f"handler failed twice: {type(exc).__name__}",
                                "handler-error")

    async def _requeue_transient(self, message: AbstractIncomingMessage, exc: Exception) -> bool:
        """Requeue after a back-off unless this message used up its transient retries (Rule 4)."""
        key = _key(message)
        retries = self._transient.pop(key, 0)
        if retries >= TRANSIENT_RETRIES:
            return False
        self._transient[key] = retries + 1
        while len(self._transient) > TRANSIENT_REMEMBERED:
            self._transient.popitem(last=False)
        delay = TRANSIENT_DELAY * 2**retries
        log.warning("handler_transient_requeue", queue=self.queue_name, error=type(exc).__name__,
                    message_id=message.message_id, retry=retries + 1, delay=delay)  # fmt: skip
        await asyncio.sleep(delay)
        if _channel_lost(message):
            return True  # Rule 5: the broker redelivers it
        self.transient_requeued += 1
        await self._settle(message.nack(requeue=True))
        return True

    async def _settle(self, settle: Awaitable[Any]) -> None:
        try:
            await settle
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            # The channel died: the broker requeues the message and redelivers it.
            log.warning("settle_failed", queue=self.queue_name, error=type(exc).__name__)

    async def _dead_letter(
        self, message: AbstractIncomingMessage, reason: str, code: str | int
    ) -> None:
        self._transient.pop(_key(message), None)
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


def _key(message: AbstractIncomingMessage) -> str:
    """What Rule 4 counts retries by: the message id (setpay always sets one), else the body."""
    return message.message_id or hashlib.sha256(message.body).hexdigest()


def _channel_lost(message: AbstractIncomingMessage) -> bool:
    """Whether the channel ``message`` arrived on has closed: it can no longer be settled, and
    the broker has requeued it (Rule 5)."""
    try:
        return message.channel.is_closed
    except aiormq.exceptions.ChannelInvalidStateError:  # aio-pika's way of saying "closed"
        return True


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
