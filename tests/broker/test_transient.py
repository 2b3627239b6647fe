"""A broker link that goes away mid-work (what a client sees when its cluster node dies), on the
real RabbitMQ: what counts as transient, RPC calls whose reply was lost with the caller's
inbox, consumers whose handler failed because the broker went away, and an orderly close that
is no failover."""

from __future__ import annotations

import asyncio
import uuid

import aiormq
import msgpack
import pytest
from structlog.testing import capture_logs

from broker import consumer as consumer_mod
from broker.connection import Bus, connect, is_transient
from broker.consumer import CODE_HEADER, REASON_HEADER, Delivery, consume
from broker.errors import PublishError, ReplyLost, RpcTimeout
from broker.rpc import RpcClient, RpcRequest, serve_rpc
from broker.topology import SET_EXCHANGE, declare_actor
from tests.broker.effects import Effects
from tests.broker.test_delivery import dead_letters_for

pytestmark = pytest.mark.integration

RECONNECT = 0.5  # seconds between a lost link and the robust connection's next attempt


async def cut_link(bus: Bus) -> None:
    """Drop ``bus``'s connection as a dying node does; the robust connection reconnects and
    restores its channels, queues and consumers (the exclusive reply inbox is gone meanwhile)."""
    transport = bus.connection.transport  # type: ignore[attr-defined]
    assert transport is not None
    await transport.connection.close(ConnectionError("node killed (test)"))


def link_down() -> ConnectionError:
    return ConnectionError("link down (test)")


def test_transient_follows_explicit_causes_but_never_a_bare_runtime_error() -> None:
    assert is_transient(aiormq.exceptions.ChannelInvalidStateError("restoring"))
    assert is_transient(aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"))
    assert is_transient(ReplyLost("lost"))
    try:
        try:
            raise link_down()
        except ConnectionError as exc:
            raise PublishError("not confirmed") from exc
    except PublishError as translated:
        assert is_transient(translated)
    assert not is_transient(PublishError("nacked"))
    assert not is_transient(RuntimeError("boom"))
    bare = RuntimeError("boom")
    bare.__cause__ = link_down()
    assert not is_transient(bare)
    assert not is_transient(aiormq.exceptions.ChannelAccessRefused("403"))
    assert not is_transient(aiormq.exceptions.ChannelNotFoundEntity("404"))
    assert not is_transient(aiormq.exceptions.ProbableAuthenticationError("login"))
    assert not is_transient(ValueError("bad input"))


async def test_orderly_close_logs_no_failover(broker_vhost) -> None:
    url = f"{broker_vhost.url}?failover=127.0.0.1:5672"  # two nodes (the same broker twice)
    with capture_logs() as logs:
        bus = await connect(url, name="t")
        await bus.close()
    assert [e for e in logs if e["event"] == "broker_failover"] == []


def qname(tag: str) -> str:
    return f"rpc.{tag}.{uuid.uuid4().hex[:8]}"


class HeldServer:
    """An RPC server that holds the first request until told, and counts what it serves."""

    def __init__(self) -> None:
        self.seen: list[RpcRequest] = []
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.second = asyncio.Event()

    async def handle(self, request: RpcRequest) -> bytes:
        self.seen.append(request)
        if len(self.seen) == 1:
            self.held.set()
            await self.release.wait()
        else:
            self.second.set()
        return b"answer:" + request.body


async def test_retriable_call_whose_reply_is_lost_is_resent_and_answered_once(
    broker_vhost,
) -> None:
    server_bus = await connect(broker_vhost.url, name="server")
    client_bus = await connect(broker_vhost.url, name="client", reconnect_interval=RECONNECT)
    held = HeldServer()
    queue = qname("lost")
    server = await serve_rpc(server_bus, queue, held.handle)
    client = await RpcClient.create(client_bus, accept=lambda login: True)
    try:
        call = asyncio.create_task(client.call(queue, b"sign", timeout=30, retriable=True))
        await asyncio.wait_for(held.held.wait(), 10)
        await cut_link(client_bus)  # the inbox the reply was due in is gone
        await asyncio.wait_for(held.second.wait(), 20)  # the same request came again
        held.release.set()  # the first reply now arrives too: it must not answer twice
        assert await asyncio.wait_for(call, 20) == b"answer:sign"
        first, again = held.seen
        assert again.correlation_id == first.correlation_id and again.body == first.body
        assert len(held.seen) == 2
        # the client keeps working on the restored link
        assert await client.call(queue, b"more", timeout=10) == b"answer:more"
    finally:
        held.release.set()
        await client.close()
        await server.stop()
        await client_bus.close()
        await server_bus.close()


async def test_call_that_is_not_retriable_gets_reply_lost_at_once(broker_vhost) -> None:
    server_bus = await connect(broker_vhost.url, name="server")
    client_bus = await connect(broker_vhost.url, name="client", reconnect_interval=RECONNECT)
    held = HeldServer()
    queue = qname("once")
    server = await serve_rpc(server_bus, queue, held.handle)
    client = await RpcClient.create(client_bus, accept=lambda login: True)
    try:
        call = asyncio.create_task(client.call(queue, b"create", timeout=30))
        await asyncio.wait_for(held.held.wait(), 10)
        await cut_link(client_bus)
        with pytest.raises(ReplyLost):
            await asyncio.wait_for(call, 20)  # long before the call's own timeout
        held.release.set()
        assert await client.call(queue, b"next", timeout=20) == b"answer:next"
        assert [r.body for r in held.seen] == [b"create", b"next"]  # never sent twice
    finally:
        held.release.set()
        await client.close()
        await server.stop()
        await client_bus.close()
        await server_bus.close()


async def test_call_timing_out_while_the_broker_cannot_be_asked_is_rpc_timeout(
    broker_vhost,
) -> None:
    """During an outage nobody can say the peer is gone: no ``PeerUnavailable``."""
    server_bus = await connect(broker_vhost.url, name="server")
    client_bus = await connect(broker_vhost.url, name="client", reconnect_interval=60)
    queue = qname("outage")
    server = await serve_rpc(server_bus, queue, HeldServer().handle)
    client = await RpcClient.create(client_bus, accept=lambda login: True)
    try:
        await cut_link(client_bus)  # and no reconnection within this test
        with pytest.raises(RpcTimeout):
            await client.call(queue, b"x", timeout=1, retriable=True)
    finally:
        await client.close()
        await server.stop()
        await client_bus.close()
        await server_bus.close()


def role_name() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Transient requeues after 10 ms instead of 0.5 s (the counting is what is tested)."""
    monkeypatch.setattr(consumer_mod, "TRANSIENT_DELAY", 0.01)


async def test_transient_failure_is_requeued_then_handled_exactly_once(
    broker_vhost, tmp_path
) -> None:
    bus = await connect(broker_vhost.url, name="t")
    role = role_name()
    channel = await bus.channel()
    await declare_actor(channel, role, "main")
    store = Effects(tmp_path / "effects.sqlite")
    attempts: list[bool] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.redelivered)
        if len(attempts) <= 2:  # the keystore's channel was being restored, say
            try:
                raise aiormq.exceptions.ChannelInvalidStateError("restoring")
            except RuntimeError as exc:
                raise PublishError("not sent") from exc
        store.once(delivery.message_id or "", delivery.body, msgpack.unpackb(delivery.body))
        done.set()

    consumer = await consume(bus, f"set.{role}", handler)
    try:
        await bus.publish(role, bus.message(msgpack.packb(7), message_id="m7"),
                          exchange=SET_EXCHANGE)  # fmt: skip
        await asyncio.wait_for(done.wait(), 20)
        assert attempts == [False, True, True]
        assert store.totals() == (1, 1, 7)
        assert consumer.transient_requeued == 2 and consumer.dead_lettered == 0
        assert consumer.handled == 1
    finally:
        await consumer.stop()
        store.close()
        await bus.close()


async def test_transient_failures_beyond_the_retries_and_permanent_ones_are_dead_lettered(
    broker_vhost, quick_backoff
) -> None:
    bus = await connect(broker_vhost.url, name="t")
    role = role_name()
    channel = await bus.channel()
    await declare_actor(channel, role, "main")
    attempts: dict[str, int] = {"transient": 0, "permanent": 0}

    async def handler(delivery: Delivery) -> None:
        kind = delivery.body.decode()
        attempts[kind] += 1
        if kind == "transient":
            raise link_down()
        try:
            raise link_down()
        except ConnectionError as exc:
            raise RuntimeError("a bug, whatever caused it") from exc

    queue = f"set.{role}"
    consumer = await consume(bus, queue, handler)
    try:
        await bus.publish(role, b"transient", exchange=SET_EXCHANGE)
        await bus.publish(role, b"permanent", exchange=SET_EXCHANGE)
        found = await asyncio.wait_for(dead_letters_for(channel, queue, 2), 30)
        reasons = sorted(m.headers[REASON_HEADER] for m in found)
        assert reasons == ["handler failed twice: ConnectionError",
                           "handler failed twice: RuntimeError"]  # fmt: skip
        assert {m.headers[CODE_HEADER] for m in found} == {"handler-error"}
        # five transient requeues, then the once-retry of Rule 3; a RuntimeError: Rule 3 only
        assert attempts == {"transient": consumer_mod.TRANSIENT_RETRIES + 1, "permanent": 2}
        assert consumer.transient_requeued == consumer_mod.TRANSIENT_RETRIES
    finally:
        await consumer.stop()
        await bus.close()


async def test_transient_retry_memory_stays_bounded(
    broker_vhost, tmp_path, quick_backoff, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_mod, "TRANSIENT_REMEMBERED", 3)
    bus = await connect(broker_vhost.url, name="t")
    role = role_name()
    channel = await bus.channel()
    await declare_actor(channel, role, "main")
    store = Effects(tmp_path / "effects.sqlite")
    failed: set[str] = set()
    remembered: list[int] = []
    total = 20
    done = asyncio.Event()
    consumer = None

    async def handler(delivery: Delivery) -> None:
        assert consumer is not None
        remembered.append(consumer.transient_remembered)
        message_id = delivery.message_id or ""
        if message_id not in failed:
            failed.add(message_id)
            raise link_down()
        store.once(message_id, delivery.body, int(delivery.body))
        if store.totals()[0] == total:
            done.set()

    consumer = await consume(bus, f"set.{role}", handler, prefetch=total)
    try:
        for n in range(total):
            await bus.publish(role, bus.message(b"%d" % n, message_id=f"b{n}"),
                              exchange=SET_EXCHANGE)  # fmt: skip
        await asyncio.wait_for(done.wait(), 30)
        assert store.totals() == (total, total, sum(range(total)))
        assert max(remembered) <= 3
        assert consumer.dead_lettered == 0
    finally:
        await consumer.stop()
        store.close()
        await bus.close()


async def test_handler_cut_off_by_a_lost_link_is_redelivered_and_runs_once(
    broker_vhost, tmp_path
) -> None:
    """The drill: a SET handler waits on an RPC (the keystore, say) when its node dies. The
    message comes back on the restored channel, the handler's RPC works again (its channel
    restored or waited for), and the effect is committed once; nothing is dead-lettered."""
    bus = await connect(broker_vhost.url, name="t", reconnect_interval=RECONNECT)
    setup = await connect(broker_vhost.url, name="setup")  # the server's link survives
    role = role_name()
    channel = await setup.channel()
    await declare_actor(channel, role, "main")
    held = HeldServer()
    queue = qname("keystore")
    server = await serve_rpc(setup, queue, held.handle)
    rpc = await RpcClient.create(bus, accept=lambda login: True)
    store = Effects(tmp_path / "effects.sqlite")
    attempts: list[bool] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.redelivered)
        answer = await rpc.call(queue, delivery.body, timeout=20)  # not retriable
        store.once(delivery.message_id or "", answer, 1)
        done.set()

    consumer = await consume(bus, f"set.{role}", handler)
    try:
        await setup.publish(role, setup.message(b"x", message_id="d1"), exchange=SET_EXCHANGE)
        await asyncio.wait_for(held.held.wait(), 10)
        await cut_link(bus)
        await asyncio.wait_for(done.wait(), 30)
        held.release.set()
        assert store.totals() == (1, 1, 1)
        assert attempts[0] is False and all(attempts[1:]) and len(attempts) >= 2
        assert consumer.dead_lettered == 0
    finally:
        held.release.set()
        await consumer.stop()
        await rpc.close()
        await server.stop()
        store.close()
        await bus.close()
        await setup.close()
