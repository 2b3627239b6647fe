"""Request/reply over RabbitMQ: ``serve_rpc`` answers a queue, ``RpcClient`` calls one.

Rule 1: replies travel over direct reply-to (``amq.rabbitmq.reply-to``) and are published
with ``mandatory=False`` (a mandatory reply to the pseudo-queue comes back as "returned").
Rule 2: requests are mandatory and carry ``expiration`` = the call's timeout, so an absent
queue fails fast (``PeerUnavailable``) and a request nobody took in time is dropped by the
broker instead of being served after its caller gave up.
Rule 3: a handler that raises is answered with an error header naming only its exception
type (``RemoteError`` at the caller); the request is acked once its reply is published.
Rule 4: several processes may serve one queue: they are competing consumers.
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
from broker.errors import BrokerError, PeerUnavailable, PublishError, RemoteError, RpcTimeout
from setpay.logs import get_logger

log = get_logger(component="broker.rpc")

REPLY_TO = "amq.rabbitmq.reply-to"
ERROR_HEADER = "x-setpay-rpc-error"
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class RpcRequest:
    """One request as the handler sees it; ``user_id`` is the caller's broker-validated login."""

    body: bytes
    user_id: str | None
    correlation_id: str
    headers: Mapping[str, Any] = field(default_factory=dict)


RpcHandler = Callable[[RpcRequest], Awaitable[bytes]]


class RpcServer(DrainingConsumer):
    """Consumes one RPC queue; ``stop()`` stops consuming and waits for in-flight requests."""

    def __init__(
        self, bus: Bus, channel: AbstractRobustChannel, queue: AbstractQueue, handler: RpcHandler
    ) -> None:
        super().__init__(bus, channel, queue)
        self._handler = handler

    async def _process(self, message: AbstractIncomingMessage) -> None:
        if not message.reply_to:
            # Nobody to answer: dead-letter it (when the queue has a DLX) rather than requeue.
            log.warning("rpc_request_without_reply_to", queue=self.queue_name)
            await message.reject(requeue=False)
            return
        request = RpcRequest(
            body=message.body,
            user_id=message.user_id,
            correlation_id=message.correlation_id or "",
            headers=dict(message.headers or {}),
        )
        headers: dict[str, Any] = {}
        try:
            body = await self._handler(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Only the type crosses the wire and the log: the text may quote secret input.
            log.warning("rpc_handler_failed", queue=self.queue_name, error=type(exc).__name__)
            headers[ERROR_HEADER] = type(exc).__name__
            body = b""
        reply = self.bus.message(
            body, persistent=False, headers=headers, correlation_id=message.correlation_id
        )
        try:
            await self._channel.default_exchange.publish(
                reply, message.reply_to, mandatory=False
            )
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            # The link broke: leave the request unacked so the broker redelivers it.
            log.warning("rpc_reply_failed", queue=self.queue_name, error=type(exc).__name__)
            return
        await message.ack()


async def serve_rpc(
    bus: Bus,
    queue: str,
    handler: RpcHandler,
    *,
    prefetch: int = 64,
    durable: bool = True,
    arguments: Mapping[str, Any] | None = None,
) -> RpcServer:
    """Declare ``queue`` and answer each request on it with ``handler``'s bytes."""
    channel = await bus.channel(confirms=False, prefetch=prefetch)
    try:
        declared = await channel.declare_queue(
            queue, durable=durable, arguments=dict(arguments) if arguments else None
        )
    except aiormq.exceptions.ChannelAccessRefused as exc:
        raise BrokerError(f"not allowed to declare or consume queue {queue!r}") from exc
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise BrokerError(f"queue {queue!r} exists with other arguments") from exc
    server = RpcServer(bus, channel, declared, handler)
    try:
        await server.start()
    except aiormq.exceptions.ChannelAccessRefused as exc:
        raise BrokerError(f"not allowed to consume queue {queue!r}") from exc
    return server


class RpcClient:
    """Calls RPC queues; replies come back on direct reply-to, matched by correlation id."""

    def __init__(self, bus: Bus, channel: AbstractRobustChannel, default_timeout: float) -> None:
        self.bus = bus
        self.default_timeout = default_timeout
        self._channel = channel
        self._pending: dict[str, tuple[str, asyncio.Future[bytes]]] = {}
        self._reply_queue: AbstractQueue | None = None

    @classmethod
    async def create(cls, bus: Bus, *, default_timeout: float = DEFAULT_TIMEOUT) -> RpcClient:
        """Open a channel and start consuming direct replies on it."""
        channel = await bus.channel(confirms=True)
        client = cls(bus, channel, default_timeout)
        # Keep a reference: the robust channel restores only queues still referenced.
        client._reply_queue = await channel.declare_queue(REPLY_TO, passive=True)
        await client._reply_queue.consume(client._on_reply, no_ack=True)
        return client

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        entry = self._pending.pop(message.correlation_id or "", None)
        if entry is None or entry[1].done():
            return  # the caller already timed out
        queue, future = entry
        error = (message.headers or {}).get(ERROR_HEADER)
        if error is not None:
            name = error.decode() if isinstance(error, bytes) else str(error)
            future.set_exception(RemoteError(queue, name))
        else:
            future.set_result(message.body)

    async def call(
        self,
        queue: str,
        body: bytes,
        *,
        timeout: float | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> bytes:
        """Send ``body`` to ``queue`` and return the reply's bytes.

        Raises PeerUnavailable (no such queue / no consumer), RpcTimeout, RemoteError."""
        timeout = self.default_timeout if timeout is None else timeout
        correlation_id = self.bus.new_id()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = (queue, future)
        message = self.bus.message(
            body,
            persistent=False,
            headers=headers,
            correlation_id=correlation_id,
            reply_to=REPLY_TO,
            expiration=timeout,
        )
        try:
            async with asyncio.timeout(timeout):
                try:
                    # No per-publish timeout: the enclosing asyncio.timeout bounds the confirm
                    # too, and a second timer per call is measurable overhead.
                    await self._channel.default_exchange.publish(message, queue, mandatory=True)
                except aiormq.exceptions.PublishError:
                    raise PeerUnavailable(f"no RPC queue {queue!r}") from None
                except aiormq.exceptions.DeliveryError:
                    raise PublishError(f"RPC request to {queue!r} nacked") from None
                return await future
        except TimeoutError:
            if not await self._has_consumer(queue):
                raise PeerUnavailable(f"no consumer on RPC queue {queue!r}") from None
            raise RpcTimeout(f"no reply from {queue!r} within {timeout:g}s") from None
        finally:
            self._pending.pop(correlation_id, None)

    async def _has_consumer(self, queue: str) -> bool:
        """Whether ``queue`` exists with at least one consumer (a passive declare)."""
        channel = await self.bus.connection.channel(publisher_confirms=False)
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return bool(declared.declaration_result.consumer_count)
        except aiormq.exceptions.ChannelClosed:
            return False  # passive declare of a missing queue closes the channel
        finally:
            if not channel.is_closed:
                await channel.close()

    async def close(self) -> None:
        """Fail pending calls and close the client's channel."""
        for _queue, future in self._pending.values():
            if not future.done():
                future.set_exception(BrokerError("RPC client closed"))
        self._pending.clear()
        if not self._channel.is_closed:
            await self._channel.close()

