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
Rule 4: when the inbox's channel closes (its connection or broker node went away) every reply
due is lost with its queue: a caller that registered with ``report_loss`` gets ``ReplyLost``
at once instead of waiting for its timeout; ``ready()`` returns once the inbox consumes
again. Other waiters keep waiting. The inbox does not let the robust channel re-declare its
queue under the old name: on a cluster the dead node's exclusive queue of that name is
deleted once the node is declared down, taking a re-declared namesake and its binding with
it. After a reconnect it opens a queue under a new ``key`` (retrying until it can), so a
resend names the current ``key`` as its ``reply_to``.
Rule 5: ``close()`` fails every waiting caller and closes the channel; no loss is reported.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from broker.connection import Bus
from broker.errors import BrokerError, ReplyLost
from broker.topology import inbox_prefix
from setpay.logs import get_logger

log = get_logger(component="broker.inbox")

Accept = Callable[[str | None], bool]


@dataclass(slots=True)
class _Waiting:
    accept: Accept
    future: asyncio.Future[AbstractIncomingMessage]
    report_loss: bool


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
        self._channel: AbstractRobustChannel | None = None
        self._consuming = asyncio.Event()
        self._closed = False
        self._reopening: asyncio.Task[None] | None = None

    @property
    def consuming(self) -> bool:
        """Whether replies can arrive now (started, not closed, channel not being restored)."""
        return self._consuming.is_set() and not self._closed

    async def start(self) -> Inbox:
        channel = await self.bus.channel(confirms=False)
        channel.close_callbacks.add(self._on_channel_closed)
        channel.reopen_callbacks.add(self._on_channel_reopened)
        self._channel = channel
        await self._open(channel)
        return self

    async def _open(self, channel: AbstractRobustChannel) -> None:
        """Declare, bind and consume the queue ``self.key``, none of it restored by the robust
        channel (Rule 4: after a reconnect ``_reopen`` opens a new one)."""
        queue = await channel.declare_queue(
            self.key, exclusive=True, auto_delete=True, robust=False,
            arguments={"x-max-length": self.max_length, "x-overflow": "drop-head"},
        )  # fmt: skip
        await queue.bind(self.exchange, routing_key=self.key, robust=False)
        await queue.consume(self._on_message, no_ack=True, robust=False)
        self._queue = queue
        self._consuming.set()

    async def _reopen(self, channel: AbstractRobustChannel) -> None:
        """Rule 4: a new queue under a new key on the restored channel, until it works."""
        pause = 0.1
        while not self._closed and not channel.is_closed:
            self.key = f"{inbox_prefix(self.bus.user_id)}{secrets.token_hex(8)}"
            try:
                await self._open(channel)
            except Exception as exc:  # the cluster is still settling: the next try
                log.warning("inbox_reopen_failed", error=type(exc).__name__, pause=pause)
                await asyncio.sleep(pause)
                pause = min(2.0, pause * 2)
                continue
            log.info("inbox_channel_restored", inbox=self.key)
            return

    async def ready(self) -> None:
        """Return once the inbox consumes: at once, or after its channel was restored (Rule 4).
        Raises ``BrokerError`` when the inbox is closed."""
        await self._consuming.wait()
        if self._closed:
            raise BrokerError("reply inbox closed")

    def expect(
        self, correlation_id: str, accept: Accept, *, report_loss: bool = False
    ) -> asyncio.Future[AbstractIncomingMessage]:
        """A future for the reply with ``correlation_id`` from a sender ``accept`` approves;
        with ``report_loss`` it fails with ``ReplyLost`` when the channel closes (Rule 4)."""
        future: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = _Waiting(accept, future, report_loss)
        return future

    def forget(self, correlation_id: str) -> None:
        """Stop waiting for ``correlation_id`` (the caller has its answer or gave up)."""
        waiting = self._waiting.pop(correlation_id, None)
        if waiting is not None and not waiting.future.done():
            waiting.future.cancel()

    def _on_channel_closed(self, channel: Any, exc: BaseException | None) -> None:
        if self._closed or self.bus.connection.close_called or not channel.is_closed:
            return  # closing (the inbox or its connection), or a late word of a past channel
        self._consuming.clear()
        lost = [cid for cid, waiting in self._waiting.items() if waiting.report_loss]
        log.warning("inbox_channel_lost", inbox=self.key, waiting=len(self._waiting),
                    lost=len(lost), error=type(exc).__name__ if exc else None)  # fmt: skip
        for cid in lost:
            future = self._waiting.pop(cid).future
            if not future.done():
                future.set_exception(ReplyLost(f"reply inbox {self.key} lost its channel"))

    def _on_channel_reopened(self, channel: Any) -> None:
        if not self._closed and self._channel is not None:
            task = asyncio.get_running_loop().create_task(self._reopen(self._channel))
            self._reopening = task  # referenced until done

    async def close(self) -> None:
        """Fail every waiting caller and close the inbox's channel (Rule 5)."""
        self._closed = True
        self._consuming.set()  # wakes ``ready()``, which then raises
        self.fail_all(BrokerError("reply inbox closed"))
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

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
