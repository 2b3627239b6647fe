"""The consume loop every queue reader shares: in-flight accounting and a draining stop.

Rule 1: ``stop()`` cancels the consumer first, then waits until every message already being
processed has been settled, then closes the channel — nothing in flight is cut off.
Rule 2: subclasses implement ``_process(message)`` and settle (ack/nack/reject) the message.
Rule 3: a delivery the broker marks redelivered is counted (``setpay_redeliveries_total``).
"""

from __future__ import annotations

import asyncio

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from broker.connection import Bus
from setpay import metrics


class DrainingConsumer:
    """A running reader of one queue; ``stop()`` stops it after in-flight messages finish."""

    def __init__(self, bus: Bus, channel: AbstractRobustChannel, queue: AbstractQueue) -> None:
        self.bus = bus
        self.queue_name = queue.name
        self._channel = channel
        self._queue = queue
        self._tag: str | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def running(self) -> bool:
        """Consuming: started, not stopped, its channel open."""
        return self._tag is not None and not self._channel.is_closed

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if message.redelivered:
            metrics.REDELIVERIES.labels(queue=self.queue_name).inc()
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._process(message)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _process(self, message: AbstractIncomingMessage) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop consuming, wait for in-flight messages to be settled, close the channel."""
        if self._tag is not None:
            try:
                await self._queue.cancel(self._tag)
            except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError):
                pass  # channel already gone: nothing more will be delivered
            self._tag = None
        await self._idle.wait()
        if not self._channel.is_closed:
            await self._channel.close()
