"""A robust AMQP connection (``Bus``) and the one way setpay publishes.

Rule 1: every message setpay publishes carries ``user_id`` = the login of the connection, so
RabbitMQ itself refuses a party that claims to be another (build messages with
``Bus.message`` or publish with ``Bus.publish``).
Rule 2: a state-changing publish is persistent, confirmed and mandatory; a publish that is
nacked, returned or not confirmed in time is retried until its deadline and then raised as
``PublishError`` -- never dropped silently.
Rule 3: connections and channels are aio-pika robust objects: after a broker restart they are
reopened and their queues and consumers restored.
Rule 4: a confirmed publish to the SET exchange is copied to the trace exchange while a
recorder is bound (``broker.trace``), on a channel of its own; tracing never fails a publish.
Rule 5 (cluster failover): a URL may name the other nodes of a RabbitMQ cluster in its
``failover`` option (``amqp://u:p@node1:5672/setpay?failover=node2:5672,node3:5672``); being an
option of the URL, it travels in every per-identity URL made from the configured one
(``setpay.config.login_url``). The first connection tries the nodes in order; afterwards each
reconnection attempt moves to the next node, round robin, so a process whose node died
reconnects to a live one and its robust channels restore their consumers there (with quorum
queues the messages survive the node). The rotation hooks aio-pika's ``RobustConnection`` at
the one point every attempt passes, clearing ``transport`` (``FailoverConnection``); the tests
pin that behaviour (tests/broker/test_cluster.py). An orderly ``close()`` moves nowhere and
logs no ``broker_failover``.
Rule 6: ``TRANSIENT`` names the errors that mean "the broker or the channel went away, try
again" (a lost link, a channel closed or being restored, a lost reply); ``is_transient``
also follows an exception's explicit ``__cause__``, so an error a layer translated ``from``
one of them stays transient. Refusals (login, permission, missing entity) and a bare
``RuntimeError`` never are.
Rule 7: a publish channel nacking ``NACKS_BEFORE_NEW_CHANNEL`` publishes in a row is closed
and a new one opened: after a failover a channel opened while quorum queues elected new
leaders can nack every publish to them for good (seen on RabbitMQ 3.10 clusters).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
    DeliveryMode,
)
from yarl import URL

from broker.errors import BrokerError, PeerUnavailable, PublishError, PublishRefused, ReplyLost
from broker.topology import SET_EXCHANGE, TRACE_EXCHANGE
from broker.trace import TraceTap
from setpay import metrics
from setpay.durability import GROUP
from setpay.logs import get_logger

log = get_logger(component="broker")

# Rule 6: what "the broker or the channel went away, try again" is. The permanent refusals
# among their subclasses (a login, a permission, a missing entity, a mismatched declaration)
# are not: trying again changes nothing.
TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,  # aiormq.exceptions.AMQPConnectionError and ConnectionClosed are ones too
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.ChannelInvalidStateError,  # aio_pika.exceptions re-exports these four
    ReplyLost,
)
_PERMANENT: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.IncompatibleProtocolError,
    aiormq.exceptions.ConnectionNotAllowed,
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.ChannelNotFoundEntity,
    aiormq.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.DuplicateConsumerTag,
)
# A publish also retries its own confirm timeout and aio-pika's "Connection was not opened"
# (a bare RuntimeError while reconnecting): both are about this publish only (Rule 2).
_PUBLISH_RETRY = (*TRANSIENT, asyncio.TimeoutError, RuntimeError)
_CAUSES = 8  # how far down an explicit ``__cause__`` chain ``is_transient`` looks


def is_transient(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was explicitly raised ``from``, means the broker or
    a channel went away (Rule 6). A bare ``RuntimeError`` never is, whatever its cause."""
    for _ in range(_CAUSES):
        if exc is None or type(exc) is RuntimeError:
            return False
        if isinstance(exc, TRANSIENT) and not isinstance(exc, _PERMANENT):
            return True
        exc = exc.__cause__
    return False


NO_ROUTE = 312
NACKS_BEFORE_NEW_CHANNEL = 3


FAILOVER_OPTION = "failover"


def node_urls(url: str) -> list[str]:
    """The URL without its ``failover`` option, then the same URL at each failover node
    (Rule 5)."""
    parsed = URL(url)
    others = [n.strip() for n in parsed.query.get(FAILOVER_OPTION, "").split(",") if n.strip()]
    base = parsed.with_query({k: v for k, v in parsed.query.items() if k != FAILOVER_OPTION})
    urls = [base]
    for node in others:
        host, _, port = node.rpartition(":") if ":" in node else (node, "", "")
        urls.append(base.with_host(host.strip("[]")).with_port(int(port) if port else None))
    return [str(u) for u in urls]


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection that moves to the next cluster node on every reconnection attempt
    (Rule 5). aio-pika clears ``transport`` at the start of each attempt (and once when the
    object is made): from the second attempt on, that is where the URL moves on."""

    def __init__(self, url: Any, *, nodes: list[str], **kwargs: Any) -> None:
        self._nodes = [URL(n) for n in nodes] or [URL(str(url))]
        self._node = next((i for i, n in enumerate(self._nodes) if n == URL(str(url))), 0)
        self._clears = 0
        super().__init__(url, **kwargs)

    @property
    def transport(self) -> Any:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None and not self._closing:  # Rule 5: an orderly close is no failover
            self._clears += 1
            if self._clears > 2 and len(self._nodes) > 1:  # not construction, not the first try
                self._node = (self._node + 1) % len(self._nodes)
                self.url = self._nodes[self._node]
                log.warning("broker_failover", node=f"{self.url.host}:{self.url.port}")
        self.__dict__["_transport"] = value

    @property
    def _closing(self) -> bool:
        """``close()`` clears ``transport`` too, and says so only in these two attributes."""
        closing = getattr(self, "_close_in_progress", False)
        return bool(closing or getattr(self, "_close_called", False))


def login_of(url: str) -> str:
    """The user name of an AMQP URL (RabbitMQ's default ``guest`` when absent)."""
    return unquote(urlsplit(url).username or "guest")


class Bus:
    """One robust connection of one identity; hands out channels and publishes as that identity."""

    def __init__(
        self, connection: AbstractRobustConnection, *, user_id: str, name: str, prefix: str = ""
    ) -> None:
        self.connection = connection
        self.user_id = user_id
        self.name = name
        self.prefix = prefix  # every identity login of this environment starts with it
        self._publish_channel: AbstractRobustChannel | None = None
        self._nacks_in_a_row = 0
        self._channel_lock = asyncio.Lock()
        self._exchanges: dict[str, AbstractExchange] = {}
        self.trace = TraceTap()
        self._trace_exchange: AbstractExchange | None = None
        # Ids: a random 96-bit prefix per connection plus a counter -- unique like uuid4 but
        # without a urandom call and a UUID object per message (measurable at 4,000 msg/s).
        # Base64 letters and a dot, so an id never looks like a card number to mask_secrets.
        self._id_prefix = secrets.token_urlsafe(12)
        self._id_counter = itertools.count()

    def role_of(self, login: str | None) -> str | None:
        """The role of a broker-validated ``login`` of this environment (``<prefix><role>.<inst>``),
        or None for a login that is not an identity of it (the admin, another environment)."""
        if not login or not login.startswith(self.prefix):
            return None
        role, dot, instance = login[len(self.prefix):].partition(".")
        return role if dot and role and instance else None

    def new_id(self) -> str:
        """A fresh id, unique across connections and processes (message and correlation ids)."""
        return f"{self._id_prefix}.{next(self._id_counter):x}"

    async def channel(
        self, *, confirms: bool = True, prefetch: int | None = None
    ) -> AbstractRobustChannel:
        """A new robust channel; with ``confirms`` a returned mandatory publish raises."""
        kwargs: dict[str, Any] = {"publisher_confirms": confirms}
        if confirms:
            kwargs["on_return_raises"] = True
        channel = await self.connection.channel(**kwargs)
        if prefetch is not None:
            await channel.set_qos(prefetch_count=prefetch)
        return channel  # type: ignore[return-value]

    def message(
        self,
        body: bytes,
        *,
        persistent: bool = True,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration: float | None = None,
        msg_type: str | None = None,
        content_type: str | None = "application/msgpack",
    ) -> aio_pika.Message:
        """An AMQP message stamped with this connection's ``user_id`` and a message id.

        No AMQP timestamp: SET messages carry their own dates, and converting one to a
        datetime on both ends costs more than anything else in the publish path."""
        return aio_pika.Message(
            body,
            headers=dict(headers) if headers else None,
            content_type=content_type,
            delivery_mode=DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT,
            message_id=message_id or self.new_id(),
            correlation_id=correlation_id,
            reply_to=reply_to,
            expiration=expiration,
            type=msg_type,
            user_id=self.user_id,
        )

    async def _publisher(self) -> AbstractRobustChannel:
        async with self._channel_lock:
            if self._publish_channel is not None and self._publish_channel.is_closed:
                # During a reconnect the robust channel reopens itself: wait for the link
                # instead of opening a second channel on a connection that is not up.
                await self.connection.connected.wait()  # type: ignore[attr-defined]
            if self._publish_channel is None or self._publish_channel.is_closed:
                self._publish_channel = await self.channel(confirms=True)
                self._exchanges.clear()
            return self._publish_channel

    async def _after_nack(self) -> None:
        """Rule 7: a publish channel whose publishes keep being nacked is replaced. After a
        node failover a channel opened while the quorum queues elected new leaders can go on
        nacking every publish to them (its per-queue clients still aim at the dead leader);
        a new channel starts with fresh ones."""
        self._nacks_in_a_row += 1
        channel = self._publish_channel
        if self._nacks_in_a_row < NACKS_BEFORE_NEW_CHANNEL or channel is None:
            return
        self._nacks_in_a_row = 0
        async with self._channel_lock:
            if self._publish_channel is channel:
                self._publish_channel = None
                self._exchanges.clear()
        log.warning("publish_channel_replaced")
        with contextlib.suppress(Exception):
            await channel.close()

    async def _exchange(self, name: str) -> AbstractExchange:
        channel = await self._publisher()
        exchange = self._exchanges.get(name)
        if exchange is None:
            exchange = (
                channel.default_exchange
                if name == ""
                else await channel.get_exchange(name, ensure=False)
            )
            self._exchanges[name] = exchange
        return exchange

    async def publish(
        self,
        routing_key: str,
        message: aio_pika.Message | bytes,
        *,
        exchange: str = "",
        mandatory: bool = True,
        timeout: float = 10.0,
        attempt_timeout: float = 2.0,
    ) -> None:
        """Publish and wait for the broker's confirm; retry transient failures until
        ``timeout``. Raises ``PeerUnavailable`` when unroutable, ``PublishError`` otherwise."""
        if isinstance(message, bytes | bytearray):
            message = self.message(bytes(message))
        elif message.user_id != self.user_id:
            message.user_id = self.user_id
        await GROUP.barrier()  # setpay/durability.py: nothing leaves before its commits are on disk
        deadline = time.monotonic() + timeout
        started = time.perf_counter()
        delay = 0.05
        last: BaseException | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                metrics.PUBLISHES.labels(outcome="failed").inc()
                raise PublishError(
                    f"publish to {exchange or '(default)'}/{routing_key} not confirmed within "
                    f"{timeout:g}s ({type(last).__name__ if last else 'no attempt'})"
                ) from last  # Rule 6: a link that stayed down keeps the failure transient
            try:
                target = self._exchanges.get(exchange)
                if target is None or self._publish_channel is None or (
                    self._publish_channel.is_closed
                ):
                    target = await asyncio.wait_for(self._exchange(exchange), remaining)
                await target.publish(
                    message,
                    routing_key,
                    mandatory=mandatory,
                    timeout=min(attempt_timeout, remaining),
                )
                metrics.PUBLISHES.labels(outcome="confirmed").inc()
                self._nacks_in_a_row = 0
                metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
                if exchange == SET_EXCHANGE and self.trace.wanted():
                    await self._trace_copy(message, routing_key)
                return
            except aiormq.exceptions.PublishError as exc:
                metrics.PUBLISHES.labels(outcome="returned").inc()
                code = getattr(exc.frame, "reply_code", None)
                if code == NO_ROUTE:
                    raise PeerUnavailable(
                        f"no queue bound for {exchange or '(default)'}/{routing_key}"
                    ) from None
                raise PublishError(
                    f"publish to {exchange or '(default)'}/{routing_key} returned ({code})"
                ) from None
            except aiormq.exceptions.DeliveryError as exc:
                last = exc  # nacked: the broker could not take it; try again
                metrics.PUBLISHES.labels(outcome="nacked").inc()
                log.warning("publish_nacked", exchange=exchange, routing_key=routing_key)
                await self._after_nack()
            except aiormq.exceptions.ChannelAccessRefused as exc:
                metrics.PUBLISHES.labels(outcome="refused").inc()
                raise PublishRefused(
                    f"publish to {exchange or '(default)'}/{routing_key} refused by broker"
                ) from exc
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                raise PublishError(f"exchange {exchange!r} does not exist") from exc
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                raise PublishError(
                    f"publish to {exchange or '(default)'}/{routing_key} refused (precondition)"
                ) from exc
            except _PUBLISH_RETRY as exc:
                last = exc
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    async def _trace_copy(self, message: aio_pika.Message, routing_key: str) -> None:
        # A channel of its own: aiormq matches a basic.return to a publish by message id, and
        # the copy shares its id with the original (and with a dead-letter record of it).
        try:
            tap = self._trace_exchange
            if tap is None or tap.channel.is_closed:
                channel = await self.channel(confirms=True)
                tap = self._trace_exchange = await channel.get_exchange(
                    TRACE_EXCHANGE, ensure=False
                )
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            log.warning("trace_copy_failed", error=type(exc).__name__)
            return
        await self.trace.copy(tap, message, routing_key)

    async def close(self) -> None:
        """Close every channel and the connection."""
        if not self.connection.is_closed:
            await self.connection.close()


def _prefix(login: str, name: str) -> str:
    """The environment's login prefix, when ``name`` is an identity ``<role>.<instance>``:
    the login is ``<prefix><role>.<some instance>`` (a process may serve another instance
    name than its login's). Otherwise none."""
    role, dot, _instance = name.partition(".")
    if not dot or not role:
        return ""
    if login.endswith(name):
        return login[: -len(name)]
    at = login.rfind(f"{role}.")
    return login[:at] if at >= 0 and "." not in login[:at] else ""


async def connect(url: str, *, name: str, prefix: str | None = None, **kw: Any) -> Bus:
    """Open a robust connection named ``name`` (shown in the management UI) as the URL's user.

    ``prefix``: the environment's login prefix (``Bus.role_of``); by default derived from the
    login and a ``name`` of the form ``<role>.<instance>`` (the identity's role; processes
    name their connection so)."""
    client_properties = dict(kw.pop("client_properties", {}) or {})
    client_properties.setdefault("connection_name", name)
    nodes = node_urls(url)
    failure: BaseException | None = None
    for node in nodes:  # Rule 5: the first node that answers
        try:
            connection = await aio_pika.connect_robust(
                node, client_properties=client_properties,
                connection_class=functools.partial(FailoverConnection, nodes=nodes), **kw,
            )  # fmt: skip
            break
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            raise BrokerError(f"broker refused login of {login_of(url)!r}") from exc
        except (ConnectionError, aiormq.exceptions.AMQPConnectionError) as exc:
            failure = exc
    else:
        where = f" (tried {len(nodes)} nodes)" if len(nodes) > 1 else ""
        raise BrokerError(
            f"cannot connect to broker ({type(failure).__name__}){where}") from failure
    login = login_of(url)
    return Bus(connection, user_id=login, name=name,  # type: ignore[arg-type]
               prefix=_prefix(login, name) if prefix is None else prefix)
