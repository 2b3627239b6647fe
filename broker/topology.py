"""The RabbitMQ topology of setpay, declared idempotently by every process at start.

Rule 1: one topic exchange carries all SET traffic; routing key ``<role>.<instance>`` reaches
one actor instance's queue, routing key ``<role>`` the role's shared work queue, which all
processes of that role consume (competing consumers).
Rule 2: every SET queue dead-letters into one dead-letter exchange/queue, is bounded (max
length with ``reject-publish``, so an overfull queue nacks the publisher instead of dropping
messages) and may carry a request TTL. Keystore RPC requests are never dead-lettered (their
policy has no dead-letter exchange: a body may carry a sealed secret).
Rule 3: the trace exchange is NOT bound to the SET exchange (a bound recorder would make
every SET message routable and defeat ``mandatory``): publishers copy SET envelopes to it
themselves, only while a recorder is bound (see ``broker.trace``). Keystore RPC does not pass
the SET exchange and is never traced.
Rule 4: an instance queue may also be bound to extra routing keys (``bindings``: broadcast
keys such as ``revocation.*``, which reach every instance of the roles bound to them); like
every binding, they are made by whoever declares the topology (``setpay broker init``, as the
admin, from ``deploy/rabbitmq/definitions.toml``). An actor that finds its queue already
declared (passive) still asks for them, on a throw-away channel: where its login may not bind
(least privilege) that is refused and `broker init` must have made them.
Rule 5: declaring is idempotent. When everything already exists (``setpay broker init``
created it) actors only look it up with passive declares, which need no configure rights on
the shared exchanges, so least-privilege identities can start.
Rule 6: nothing travels through the default exchange. RPC requests (the keystore) go through
the ``setpay.rpc`` topic exchange; every reply, SET or RPC, goes to the asker's own inbox: an
exclusive queue ``reply.<login>.<token>`` bound on the exchange the request used with routing
key ``reply.<login>.<token>``. RabbitMQ topic permissions (``broker.provision``) let a login
bind only ``reply.<own login>.*`` keys, so nobody can read another's replies, and let each role
write only the routing keys of the peers it may address (``deploy/rabbitmq/definitions.toml``).
Rule 7: the dead-letter queue is bounded in bytes as well as in messages
(``DEAD_LETTER_ARGUMENTS``, and the same in the broker policy), refusing what would overflow.
Rule 8 (queue type): the durable queues (SET work and instance queues, RPC request queues, the
dead-letter queue) are classic queues by default, quorum queues (Raft-replicated over the
cluster's nodes) with ``queue_type="quorum"`` (``broker_queue_type``, applied by `broker
init`). A quorum queue dead-letters *at least once* (``x-dead-letter-strategy``, which needs
``reject-publish`` overflow, as every setpay queue has): a message leaves it only when the
dead-letter queue confirmed it; and a message delivered ``QUORUM_DELIVERY_LIMIT`` times without
an ack (a handler that kills its process every time) is dead-lettered instead of looping.
Inboxes stay classic: they are exclusive and live as long as their connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, ExchangeType

from setpay.config import QUEUE_TYPES

SET_EXCHANGE = "setpay.set"
DEAD_LETTER_EXCHANGE = "setpay.dlx"
DEAD_LETTER_QUEUE = "setpay.dead"
TRACE_EXCHANGE = "setpay.trace"
RPC_EXCHANGE = "setpay.rpc"
REPLY_PREFIX = "reply."
DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024
DEAD_LETTER_ARGUMENTS: dict[str, Any] = {
    "x-max-length-bytes": DEAD_LETTER_MAX_BYTES,
    "x-overflow": "reject-publish",
}


QUORUM_DELIVERY_LIMIT = 10


def type_arguments(queue_type: str, *, dead_letters: bool = True) -> dict[str, Any]:
    """The declare arguments that make a durable queue of ``queue_type`` (Rule 8)."""
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"queue type {queue_type!r} is not one of {', '.join(QUEUE_TYPES)}")
    if queue_type == "classic":
        return {}
    args: dict[str, Any] = {"x-queue-type": "quorum"}
    if dead_letters:
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-delivery-limit"] = QUORUM_DELIVERY_LIMIT
    return args


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Per-queue limits; ``message_ttl`` in seconds (None: messages never expire)."""

    max_length: int = 100_000
    max_message_bytes: int = 1_048_576
    message_ttl: float | None = None
    queue_type: str = "classic"  # Rule 8

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-max-length": self.max_length,
            "x-overflow": "reject-publish",
            **type_arguments(self.queue_type),
        }
        if self.message_ttl is not None:
            args["x-message-ttl"] = int(self.message_ttl * 1000)
        return args


def instance_queue(role: str, instance: str) -> str:
    """Queue name of one actor instance (``set.<role>.<instance>``)."""
    return f"set.{role}.{instance}"


def role_queue(role: str) -> str:
    """Name of the work queue shared by every process of ``role``."""
    return f"set.{role}"


def instance_key(role: str, instance: str) -> str:
    """Routing key that reaches one actor instance."""
    return f"{role}.{instance}"


def inbox_prefix(login: str) -> str:
    """The routing keys and queue names of ``login``'s reply inboxes start with this (Rule 5)."""
    return f"{REPLY_PREFIX}{login}."


def reply_allowed(login: str | None, reply_to: str | None) -> bool:
    """Whether ``reply_to`` names an inbox of the broker-validated ``login`` (Rule 5): a
    request may not direct its answer into somebody else's inbox."""
    return bool(login and reply_to and reply_to.startswith(inbox_prefix(login))
                and "*" not in reply_to and "#" not in reply_to)


@dataclass(slots=True)
class Declared:
    """What ``declare_actor`` declared: the exchanges and this actor's two queues."""

    exchange: AbstractExchange
    dead_letters: AbstractQueue
    instance: AbstractQueue
    role: AbstractQueue


async def _exists(channel: AbstractChannel, exchanges: list[str], queues: list[str]) -> bool:
    """Whether all these exist, probed on a throw-away channel (a failed probe closes it)."""
    underlay = await channel.get_underlay_channel()
    probe = await underlay.connection.channel()
    try:
        for name in exchanges:
            await probe.exchange_declare(name, passive=True)
        for name in queues:
            await probe.queue_declare(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        if not probe.is_closed:
            await probe.close()
    return True


async def ensure_exchange(channel: AbstractChannel, name: str) -> None:
    """Declare topic exchange ``name`` unless it exists (a least-privilege login, which may not
    declare it, finds the one ``broker init`` made)."""
    if not await _exists(channel, [name], []):
        await channel.declare_exchange(name, ExchangeType.TOPIC, durable=True)


async def _bind_if_allowed(channel: AbstractChannel, queue: str, key: str) -> bool:
    """Bind ``queue`` to ``key`` on the SET exchange on a throw-away channel (Rule 4); False
    if the broker refuses this login (a refusal closes the channel it happened on)."""
    underlay = await channel.get_underlay_channel()
    probe = await underlay.connection.channel()
    try:
        await probe.queue_bind(queue, SET_EXCHANGE, routing_key=key)
    except aiormq.exceptions.ChannelAccessRefused:
        return False
    finally:
        if not probe.is_closed:
            await probe.close()
    return True


COMMON_EXCHANGES = [SET_EXCHANGE, RPC_EXCHANGE, DEAD_LETTER_EXCHANGE, TRACE_EXCHANGE]


async def declare_common(
    channel: AbstractChannel, *, passive: bool = False, queue_type: str = "classic"
) -> tuple[AbstractExchange, AbstractQueue]:
    """Declare (or, ``passive``, look up) the SET, dead-letter and trace exchanges and the
    dead-letter queue."""
    if passive:
        exchange = await channel.declare_exchange(SET_EXCHANGE, passive=True)
        return exchange, await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
    exchange = await channel.declare_exchange(SET_EXCHANGE, ExchangeType.TOPIC, durable=True)
    await channel.declare_exchange(RPC_EXCHANGE, ExchangeType.TOPIC, durable=True)
    dlx = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, ExchangeType.FANOUT, durable=True)
    if await _exists(channel, [], [DEAD_LETTER_QUEUE]):
        # Redeclaring with other arguments would fail: one made before Rule 5 keeps its
        # arguments, and the broker policy bounds it in bytes.
        dead = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
    else:
        dead = await channel.declare_queue(
            DEAD_LETTER_QUEUE, durable=True,
            arguments={**DEAD_LETTER_ARGUMENTS, **type_arguments(queue_type, dead_letters=False)},
        )  # fmt: skip
    await dead.bind(dlx)
    trace = await channel.declare_exchange(TRACE_EXCHANGE, ExchangeType.FANOUT, durable=True)
    # Older topologies bound the tap to the SET exchange; that binding broke `mandatory`.
    await trace.unbind(exchange, routing_key="#")
    return exchange, dead


async def declare_actor(
    channel: AbstractChannel,
    role: str,
    instance: str,
    limits: QueueLimits | None = None,
    *,
    passive: bool | None = None,
    bindings: tuple[str, ...] = (),
) -> Declared:
    """Declare the common topology plus ``role``'s work queue and this instance's queue,
    bound to its instance key and to ``bindings`` (Rule 4).

    ``passive=None`` looks everything up when it all exists and declares it otherwise."""
    limits = limits or QueueLimits()
    names = [instance_queue(role, instance), role_queue(role)]
    if passive is None:
        passive = await _exists(channel, COMMON_EXCHANGES, [DEAD_LETTER_QUEUE, *names])
    exchange, dead = await declare_common(channel, passive=passive, queue_type=limits.queue_type)
    if passive:
        mine = await channel.declare_queue(names[0], passive=True)
        shared = await channel.declare_queue(names[1], passive=True)
        for key in bindings:
            await _bind_if_allowed(channel, names[0], key)
        return Declared(exchange=exchange, dead_letters=dead, instance=mine, role=shared)
    mine = await channel.declare_queue(names[0], durable=True, arguments=limits.arguments())
    await mine.bind(exchange, routing_key=instance_key(role, instance))
    for key in bindings:
        await mine.bind(exchange, routing_key=key)
    shared = await channel.declare_queue(names[1], durable=True, arguments=limits.arguments())
    await shared.bind(exchange, routing_key=role)
    return Declared(exchange=exchange, dead_letters=dead, instance=mine, role=shared)
