"""The actor base every SET party runs on: lifecycle, handler registry, replies, health.

Rule 1: the lifecycle is ``setpay.lifecycle.Service``'s, the one every process has: start
(connect, declare the topology, the actor's ``setup``, consume) -> ready -> drain (stop
consuming, finish in-flight work) -> stop (close what ``setup`` declared with ``closing``,
last first, then the bus); SIGTERM/SIGINT trigger drain and stop.
Rule 2: handlers are registered by AMQP message type (a plain ``str``); a party serves every
type through its one SET entrypoint (``serve_set``, ``actors/entrypoint.py``), which is given
the delivery's broker-validated ``user_id`` as the sender; a type nobody handles is
dead-lettered with its reason, never crashes the actor.
Rule 3: a handler's ``ProtocolError`` becomes the one SET Error record
(``protocol.set_error.build_error``); the message is then acked -- a failed check changes no
state and is answered, not retried.
Rule 4: every log line of a handled message carries ``actor`` and the AMQP ``msg_type``; the
SET entrypoint adds the wrapper's verified type, ``xid`` and ``rrpid``.
Rule 5: every dispatched message is counted (``setpay.metrics``: ``setpay_messages_total`` by
the SET message type's name -- ``other`` for a type the protocol does not know -- and outcome
ok / error (answered with a SET Error) / rejected / failed) and timed
(``setpay_handler_seconds``); ready means started, connected, and every consumer running.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from actors.entrypoint import SetEntry, SetService
from broker.connection import Bus, connect
from broker.consumer import Consumer, Delivery, Rejected, consume
from broker.errors import PublishRefused
from broker.topology import SET_EXCHANGE, QueueLimits, declare_actor, reply_allowed
from protocol.errors import ProtocolError
from protocol.messages import MessageType
from protocol.set_error import ERROR_TYPE, build_error
from setpay import metrics
from setpay.clock import CLOCK
from setpay.lifecycle import Service, State

Reply = tuple[str, bytes]  # (message type, body)
MessageHandler = Callable[[Delivery], Awaitable[Reply | None]]


def type_name(msg_type: str, handlers: dict[str, Any]) -> str:
    """The metrics label of an AMQP type (Rule 5): the SET message type's name for a decimal
    type the protocol knows, a registered handler's own key, else ``other``."""
    if msg_type.isdigit():
        try:
            return MessageType(int(msg_type)).name
        except ValueError:
            return "other"
    return msg_type if msg_type in handlers else "other"


class Actor(Service):
    """One actor instance ``<role>.<instance>`` consuming its own queue and its role's queue."""

    # Broadcast routing keys bound to this instance's queue when the actor declares the
    # topology itself (broker/topology.py Rule 4; in an environment `broker init` binds them).
    subscriptions: tuple[str, ...] = ()

    def __init__(
        self,
        role: str,
        instance: str,
        url: str,
        *,
        prefetch: int = 64,
        limits: QueueLimits | None = None,
        health_file: Path | None = None,
    ) -> None:
        super().__init__(f"{role}.{instance}", health_file=health_file)
        self.role = role
        self.instance = instance
        self.url = url
        self.prefetch = prefetch
        self.limits = limits or QueueLimits()
        self.bus: Bus | None = None
        self.handlers: dict[str, MessageHandler] = {}
        self.default_handler: MessageHandler | None = None
        self._consumers: list[Consumer] = []

    # -- registry ---------------------------------------------------------------------------

    def on(self, msg_type: str | enum.Enum, handler: MessageHandler) -> None:
        """Route messages of ``msg_type`` to ``handler`` (its reply, if any, goes to reply_to)."""
        key = str(msg_type.value if isinstance(msg_type, enum.Enum) else msg_type)
        if key in self.handlers:
            raise ValueError(f"a handler for {key!r} is already registered")
        self.handlers[key] = handler

    def serve_set(self, service: SetService) -> SetEntry:
        """Route every message on this actor's queues through one SET entrypoint (Rule 2)."""
        entry = SetEntry(service, role_of=lambda login: self.bus.role_of(login) if self.bus else None)

        async def on_message(delivery: Delivery) -> Reply | None:
            return await entry.handle(
                delivery.msg_type or "", delivery.body, sender=delivery.user_id
            )

        self.default_handler = on_message
        return entry

    # -- lifecycle (setpay.lifecycle.Service) ---------------------------------------------------

    async def setup(self) -> None:
        """Hook: open stores and clients (each declared with ``closing``), register handlers.
        Runs after the bus is up and before consuming starts."""

    async def on_start(self) -> None:
        """Connect, declare the topology, run ``setup``, start consuming."""
        self.bus = await connect(self.url, name=self.identity)
        self.closing(self.bus.close, "bus")  # closed last: after everything ``setup`` opened
        channel = await self.bus.channel()
        declared = await declare_actor(
            channel, self.role, self.instance, self.limits, bindings=self.subscriptions
        )
        await self.setup()
        for queue in (declared.instance, declared.role):
            self._consumers.append(
                await consume(
                    self.bus,
                    queue.name,
                    self._dispatch,
                    prefetch=self.prefetch,
                    max_message_bytes=self.limits.max_message_bytes,
                )
            )

    async def on_drain(self) -> None:
        """Stop taking messages and wait until every in-flight one is settled."""
        await asyncio.gather(*(c.stop() for c in self._consumers))

    def is_ready(self) -> bool:
        return (self.state is State.READY and self._connected() and bool(self._consumers)
                and all(c.running for c in self._consumers))  # fmt: skip

    def health_extra(self) -> dict[str, Any]:
        """Connection, in-flight, handled and dead-lettered counts."""
        return {
            "connected": self._connected(),
            "in_flight": sum(c.in_flight for c in self._consumers),
            "handled": sum(c.handled for c in self._consumers),
            "dead_lettered": sum(c.dead_lettered for c in self._consumers),
        }

    def _connected(self) -> bool:
        return bool(self.bus and not self.bus.connection.is_closed)

    # -- dispatch ---------------------------------------------------------------------------

    async def _dispatch(self, delivery: Delivery) -> None:
        msg_type = delivery.msg_type or ""
        context: dict[str, Any] = {"actor": self.identity, "msg_type": msg_type}
        label = type_name(msg_type, self.handlers)
        outcome = "failed"
        started = time.perf_counter()
        metrics.IN_FLIGHT.inc()
        try:
            with structlog.contextvars.bound_contextvars(**context):
                handler = self.handlers.get(msg_type, self.default_handler)
                if handler is None:
                    outcome = "rejected"
                    raise Rejected(f"unknown message type {msg_type!r}", "unknown-type")
                try:
                    reply = await handler(delivery)
                except ProtocolError as exc:
                    self.log.info("protocol_error", code=exc.code.name)
                    reply = ERROR_TYPE, await build_error(exc, delivery.body, CLOCK.now_ms())
                except Rejected:
                    outcome = "rejected"
                    raise
                if reply is not None:
                    await self._reply(delivery, reply)
                outcome = "error" if reply is not None and reply[0] == ERROR_TYPE else "ok"
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.MESSAGES.labels(type=label, outcome=outcome).inc()
            metrics.HANDLER_SECONDS.labels(type=label).observe(time.perf_counter() - started)

    async def _reply(self, delivery: Delivery, reply: Reply) -> None:
        """Send ``reply`` to the requester's inbox (its routing key is in ``reply_to``), and
        only to an inbox of the login that asked (``topology.reply_allowed``)."""
        if self.bus is None or not reply_allowed(delivery.user_id, delivery.reply_to):
            self.log.warning("reply_not_sent", reply_type=reply[0], sender=delivery.user_id,
                             has_reply_to=bool(delivery.reply_to))  # fmt: skip
            return
        msg_type, body = reply
        message = self.bus.message(
            body, msg_type=msg_type, correlation_id=delivery.correlation_id or delivery.message_id
        )
        # A BrokerError here propagates: the request is not acked, so it is redelivered
        # and (handlers being idempotent) answered again.
        try:
            await self.bus.publish(delivery.reply_to or "", message, exchange=SET_EXCHANGE)
        except PublishRefused:
            # This role may not answer the sender's role (broker topic permissions): a
            # request from a login that may not address us. Nothing to answer; acked.
            self.log.warning("reply_refused_by_broker", reply_type=msg_type,
                             sender=delivery.user_id)  # fmt: skip
