"""Request/reply over RabbitMQ: ``serve_rpc`` answers a queue, ``RpcClient`` calls one.

Rule 1: requests go through the ``setpay.rpc`` exchange (routing key = the queue's name),
never the default exchange; replies go to the caller's inbox (``broker.inbox``) and are
published with ``mandatory=False``. A server answers only into an inbox of the login that asked
(``topology.reply_allowed``); a caller takes a reply only from the peer it expects.
Rule 2: requests are mandatory and carry ``expiration`` = the call's timeout, so an absent
queue fails fast (``PeerUnavailable``) and a request nobody took in time is dropped by the
broker instead of being served after its caller gave up.
Rule 3: a handler that raises is answered with an error header naming only its exception
type (``RemoteError`` at the caller); the request is acked once its reply is published.
Rule 4: several processes may serve one queue: they are competing consumers.
Rule 5 (failover): a call fails with a broker error, never an aio-pika one. When the link or
the reply inbox's channel goes away mid-call (a broker node died), a call marked
``retriable`` (safe to serve twice) is sent again with the same message and correlation ids
once the inbox consumes again, within its one timeout; any other call raises ``PublishError``
or ``ReplyLost`` at once. A call made while the channels are being restored waits for them,
and so does one whose publish the channel refused before sending anything. A call that timed
out while the broker cannot be asked is an ``RpcTimeout``, not ``PeerUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
)

from broker.connection import TRANSIENT, Bus, is_transient
from broker.draining import DrainingConsumer
from broker.errors import (
    BrokerError,
    PeerUnavailable,
    PublishError,
    RemoteError,
    ReplyLost,
    RpcTimeout,
)
from broker.inbox import Accept, Inbox
from broker.topology import RPC_EXCHANGE, ensure_exchange, reply_allowed
from setpay.durability import GROUP
from setpay.logs import get_logger

log = get_logger(component="broker.rpc")

ERROR_HEADER = "x-setpay-rpc-error"
DEFAULT_TIMEOUT = 10.0
_PROBE_TIMEOUT = 2.0  # asking the broker whether a queue has a consumer
_RESTORE_PAUSE = 0.05  # seconds between two sends refused by a channel being restored


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
        self,
        bus: Bus,
        channel: AbstractRobustChannel,
        queue: AbstractQueue,
        handler: RpcHandler,
        rpc_exchange: AbstractExchange,
    ) -> None:
        super().__init__(bus, channel, queue)
        self._handler = handler
        self._rpc_exchange = rpc_exchange


    async def _process(self, message: AbstractIncomingMessage) -> None:
        if not reply_allowed(message.user_id, message.reply_to):
            # Nobody of its own to answer (no reply_to, or another login's inbox): refuse it
            # without running the handler, and without its body anywhere.
            log.warning("rpc_request_unanswerable", queue=self.queue_name,
                        sender=message.user_id, message_id=message.message_id)  # fmt: skip
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
        await GROUP.barrier()  # setpay/durability.py: the handler's commits first
        try:
            await self._rpc_exchange.publish(reply, message.reply_to or "", mandatory=False)
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
    """Answer each request on ``queue`` with ``handler``'s bytes.

    The queue and its binding on ``setpay.rpc`` are looked up when they exist (``broker init``
    made them: a least-privilege login may not bind), declared and bound otherwise."""
    channel = await bus.channel(confirms=False, prefetch=prefetch)
    try:
        if await _queue_exists(bus, queue):
            declared = await channel.declare_queue(queue, passive=True)
        else:
            await ensure_exchange(channel, RPC_EXCHANGE)
            declared = await channel.declare_queue(
                queue, durable=durable, arguments=dict(arguments) if arguments else None
            )
            await declared.bind(RPC_EXCHANGE, routing_key=queue)
        rpc_exchange = await channel.get_exchange(RPC_EXCHANGE, ensure=False)
    except aiormq.exceptions.ChannelAccessRefused as exc:
        raise BrokerError(f"not allowed to declare or consume queue {queue!r}") from exc
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise BrokerError(f"queue {queue!r} exists with other arguments") from exc
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise BrokerError(f"exchange {RPC_EXCHANGE!r} missing; run `setpay broker init`") from exc
    server = RpcServer(bus, channel, declared, handler, rpc_exchange)
    try:
        await server.start()
    except aiormq.exceptions.ChannelAccessRefused as exc:
        raise BrokerError(f"not allowed to consume queue {queue!r}") from exc
    return server


async def _queue_exists(bus: Bus, queue: str) -> bool:
    """Whether ``queue`` exists (a passive declare on a throw-away channel)."""
    channel = await bus.connection.channel(publisher_confirms=False)
    try:
        await channel.declare_queue(queue, passive=True)
        return True
    except aiormq.exceptions.ChannelClosed:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()


class RpcClient:
    """Calls RPC queues; replies come back to this client's inbox, matched by correlation id
    and accepted only from a login ``accept`` approves (Rule 1)."""

    def __init__(
        self, bus: Bus, channel: AbstractRobustChannel, inbox: Inbox, accept: Accept,
        default_timeout: float,
    ) -> None:  # fmt: skip
        self.bus = bus
        self.default_timeout = default_timeout
        self.accept = accept
        self._channel = channel
        self._inbox = inbox
        self._exchange: AbstractExchange | None = None
        self._closed = False

    @classmethod
    async def create(
        cls, bus: Bus, *, accept: Accept, default_timeout: float = DEFAULT_TIMEOUT
    ) -> RpcClient:
        """Open a channel and this client's inbox. ``accept(user_id)``: whether a reply's
        broker-validated sender is the server this client calls."""
        channel = await bus.channel(confirms=True)
        await ensure_exchange(channel, RPC_EXCHANGE)
        inbox = await Inbox(bus, RPC_EXCHANGE).start()
        client = cls(bus, channel, inbox, accept, default_timeout)
        client._exchange = await channel.get_exchange(RPC_EXCHANGE, ensure=False)
        return client

    @staticmethod
    def _result(queue: str, message: AbstractIncomingMessage) -> bytes:
        error = (message.headers or {}).get(ERROR_HEADER)
        if error is not None:
            name = error.decode() if isinstance(error, bytes) else str(error)
            raise RemoteError(queue, name)
        return message.body

    async def call(
        self,
        queue: str,
        body: bytes,
        *,
        timeout: float | None = None,
        headers: Mapping[str, Any] | None = None,
        retriable: bool = False,
    ) -> bytes:
        """Send ``body`` to ``queue`` and return the reply's bytes.

        ``retriable``: the request is safe to serve twice; a publish the broker lost or a
        reply lost with the inbox's channel sends it again, same ids, once the inbox consumes
        again (Rule 5). Raises PeerUnavailable (no such queue / no consumer), RpcTimeout,
        RemoteError, and for a call that is not retriable PublishError / ReplyLost."""
        timeout = self.default_timeout if timeout is None else timeout
        correlation_id = self.bus.new_id()
        message = self.bus.message(
            body,
            persistent=False,
            headers=headers,
            correlation_id=correlation_id,
            reply_to=self._inbox.key,
            expiration=timeout,
        )
        await GROUP.barrier()  # setpay/durability.py: the caller's commits first
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                try:
                    return await self._ask(queue, message)
                except (PublishError, ReplyLost) as exc:
                    if not (retriable and is_transient(exc)):
                        raise
                    lost = exc
                while True:  # Rule 5: only a retriable call gets here
                    log.info("rpc_resend", queue=queue, message_id=message.message_id,
                             error=type(lost).__name__)  # fmt: skip
                    try:
                        return await self._resend(queue, message, deadline)
                    except ReplyLost as exc:
                        lost = exc
        except TimeoutError:
            if not await self._has_consumer(queue):
                raise PeerUnavailable(f"no consumer on RPC queue {queue!r}") from None
            raise RpcTimeout(f"no reply from {queue!r} within {timeout:g}s") from None
        finally:
            self._inbox.forget(correlation_id)

    async def _ask(self, queue: str, message: aio_pika.Message) -> bytes:
        """The first send, on this client's channel; its reply."""
        assert message.correlation_id is not None
        if self._closed:
            raise BrokerError("RPC client closed")
        while True:
            # Nothing is sent yet: waiting for a channel being restored is safe for any call.
            if not self._inbox.consuming:
                await self._inbox.ready()
            if self._channel.is_closed:
                await self._channel.ready()
            future = self._inbox.expect(message.correlation_id, self.accept, report_loss=True)
            if message.reply_to != self._inbox.key:  # the inbox reopened under a new key
                message = self._addressed(message, message.expiration)
            try:
                await self._publish(queue, message)
            except aiormq.exceptions.ChannelInvalidStateError:
                # Refused before a byte left: the link just died and its channels are not
                # restored yet. Pause (the connection's own callbacks must get to run), retry.
                await asyncio.sleep(_RESTORE_PAUSE)
                continue
            return self._result(queue, await future)

    async def _publish(self, queue: str, message: aio_pika.Message) -> None:
        assert self._exchange is not None
        try:
            # No per-publish timeout: the enclosing asyncio.timeout bounds the confirm
            # too, and a second timer per call is measurable overhead.
            await self._exchange.publish(message, queue, mandatory=True)
        except aiormq.exceptions.PublishError:
            raise PeerUnavailable(f"no RPC queue {queue!r}") from None
        except aiormq.exceptions.DeliveryError as exc:
            await self._new_channel()  # connection.py Rule 7: a nacking channel is replaced
            # not taken by the broker: as transient as a lost link (a retriable call resends)
            raise PublishError(f"RPC request to {queue!r} nacked") from ConnectionError(
                f"nacked ({type(exc).__name__})"
            )
        except aiormq.exceptions.ChannelInvalidStateError:
            raise
        except (*TRANSIENT, RuntimeError) as exc:  # the link died while the request left
            # aio-pika also says "not opened" with a bare RuntimeError: for this publish that
            # is the same lost link, though connection.py Rule 6 keeps RuntimeError out.
            raise PublishError(f"RPC request to {queue!r} not sent ({type(exc).__name__})") from (
                exc if is_transient(exc) else ConnectionError(type(exc).__name__)
            )

    async def _new_channel(self) -> None:
        """Open a fresh confirming channel for this client's requests and close the old."""
        old = self._channel
        with contextlib.suppress(*TRANSIENT, RuntimeError):
            channel = await self.bus.channel(confirms=True)
            self._exchange = await channel.get_exchange(RPC_EXCHANGE, ensure=False)
            self._channel = channel
            log.warning("rpc_channel_replaced")
            with contextlib.suppress(Exception):
                await old.close()

    async def _resend(self, queue: str, message: aio_pika.Message, deadline: float) -> bytes:
        """The same request again, same message and correlation ids, once the inbox consumes
        again, through ``Bus.publish`` (which waits for the link until ``deadline``)."""
        assert message.correlation_id is not None
        await self._inbox.ready()
        future = self._inbox.expect(message.correlation_id, self.accept, report_loss=True)
        remaining = max(0.0, deadline - time.monotonic())
        again = self._addressed(message, max(remaining, 0.001))  # Rule 2: dropped once the
        await self.bus.publish(queue, again, exchange=RPC_EXCHANGE, timeout=remaining)  # caller
        return self._result(queue, await future)  # gave up

    def _addressed(self, message: aio_pika.Message, expiration: Any) -> aio_pika.Message:
        """``message`` again (same ids and body) with ``reply_to`` = the inbox's current key
        (it changes when the inbox reopens after a reconnect: inbox Rule 4)."""
        return self.bus.message(
            message.body, persistent=False, headers=message.headers,
            message_id=message.message_id, correlation_id=message.correlation_id,
            reply_to=self._inbox.key, expiration=expiration,
        )  # fmt: skip

    async def _has_consumer(self, queue: str) -> bool:
        """Whether ``queue`` exists with at least one consumer (a passive declare). True when
        the broker cannot be asked: a link being restored is no proof that the peer is gone."""
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                channel = await self.bus.connection.channel(publisher_confirms=False)
        except (*TRANSIENT, RuntimeError, TimeoutError):
            return True
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                declared = await channel.declare_queue(queue, passive=True)
            return bool(declared.declaration_result.consumer_count)
        except aiormq.exceptions.ChannelClosed as exc:
            # a missing queue (or a refusal) closes the channel: no consumer to be had
            return is_transient(exc)
        except (*TRANSIENT, RuntimeError, TimeoutError):
            return True
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*TRANSIENT, RuntimeError):
                    await channel.close()

    async def close(self) -> None:
        """Fail pending calls and close the client's channels."""
        self._closed = True
        self._inbox.fail_all(BrokerError("RPC client closed"))
        await self._inbox.close()
        if not self._channel.is_closed:
            await self._channel.close()

