"""A process's own reply queue: every reply it waits for, SET or RPC, arrives here.

Rule 1: an inbox is an exclusive, auto-deleted queue ``reply.<login>.<token>`` bound on one
exchange with the routing key equal to its name (``broker.topology`` Rule 5); only this
connection can consume it, and RabbitMQ's topic permissions let nobody else bind to its key.
Several processes of one identity each have their own inbox, so a reply always reaches the
process that asked.
Rule 2: a caller registers what it waits for with ``expect(correlation_id, accept)``; a reply
is taken only if ``accept`` approves its broker-validated ``user_id`` (the peer the caller
addressed). A reply from anyone else, or one nobody waits for (late, foreign), is dropped with
a log line and never reaches a waiting caller.
Rule 3: the inbox moves bytes and knows nothing of SET or RPC.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from broker.connection import Bus
from broker.topology import inbox_prefix
from setpay.logs import get_logger

log = get_logger(component="broker.inbox")

Accept = Callable[[str | None], bool]


@dataclass(slots=True)
class _Waiting:
    accept: Accept
    future: asyncio.Future[AbstractIncomingMessage]


class Inbox:
    """The reply queue of one connection on ``exchange`` (Rule 1)."""

    def __init__(self, bus: Bus, exchange: str, *, max_length: int = 10_000) -> None:
        self.bus = bus
        self.exchange = exchange
        self.key = f"{inbox_prefix(bus.user_id)}{secrets.token_hex(8)}"
        self.max_length = max_length
        self.dropped = 0
        self._waiting: dict[str, _Waiting] = {}
        self._queue: AbstractQueue | None = None  # referenced: robust channels restore it

    async def start(self) -> Inbox:
        channel = await self.bus.channel(confirms=False)
        queue = await channel.declare_queue(
            self.key, exclusive=True, auto_delete=True,
            arguments={"x-max-length": self.max_length, "x-overflow": "drop-head"},
        )  # fmt: skip
        await queue.bind(self.exchange, routing_key=self.key)
        await queue.consume(self._on_message, no_ack=True)
        self._queue = queue
        return self

    def expect(self, correlation_id: str, accept: Accept) -> asyncio.Future[AbstractIncomingMessage]:
        """A future for the reply with ``correlation_id`` from a sender ``accept`` approves."""
        future: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = _Waiting(accept, future)
        return future

    def forget(self, correlation_id: str) -> None:
        self._waiting.pop(correlation_id, None)

    def fail_all(self, error: BaseException) -> None:
        """Fail every waiting caller with ``error`` (the owner is closing)."""
        for waiting in self._waiting.values():
            if not waiting.future.done():
                waiting.future.set_exception(error)
        self._waiting.clear()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        waiting = self._waiting.get(message.correlation_id or "")
        if waiting is None or waiting.future.done():
            self.dropped += 1
            log.info("reply_unmatched", msg_type=message.type)  # Rule 2
            return
        if not waiting.accept(message.user_id):
            self.dropped += 1
            log.warning("reply_from_unexpected_sender", sender=message.user_id,
                        msg_type=message.type)  # fmt: skip
            return
        del self._waiting[message.correlation_id or ""]
        waiting.future.set_result(message)
