"""RPC over the real RabbitMQ: round trip, errors, absent peers, identity, competing servers."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from broker.connection import connect
from broker.errors import PeerUnavailable, RemoteError, RpcTimeout
from broker.rpc import RpcClient, RpcRequest, serve_rpc

pytestmark = pytest.mark.integration


def qname(tag: str) -> str:
    return f"rpc.{tag}.{uuid.uuid4().hex[:8]}"


async def test_round_trip_carries_body_headers_and_caller_identity(broker_vhost) -> None:
    url = broker_vhost.add_user("rpc-caller", "pw-caller")
    server_bus = await connect(broker_vhost.url, name="server")
    client_bus = await connect(url, name="client")
    seen: list[RpcRequest] = []

    async def handler(request: RpcRequest) -> bytes:
        seen.append(request)
        return b"echo:" + request.body

    queue = qname("echo")
    server = await serve_rpc(server_bus, queue, handler)
    client = await RpcClient.create(client_bus, accept=lambda login: True)
    try:
        assert await client.call(queue, b"hello", headers={"op": "sign"}, timeout=5) == (
            b"echo:hello"
        )
        assert seen[0].user_id == url.user
        assert client_bus.user_id == url.user
        assert seen[0].headers["op"] == "sign"
        await client.call(queue, b"again", timeout=5)
        assert len(seen[0].correlation_id) >= 16  # 96 random bits plus a counter
        assert seen[0].correlation_id != seen[1].correlation_id
    finally:
        await client.close()
        await server.stop()
        await client_bus.close()
        await server_bus.close()


async def test_handler_error_becomes_remote_error_naming_type_only(broker_vhost) -> None:
    bus = await connect(broker_vhost.url, name="t")

    async def handler(request: RpcRequest) -> bytes:
        raise ValueError("secret detail 4111111111111111")

    queue = qname("fail")
    server = await serve_rpc(bus, queue, handler)
    client = await RpcClient.create(bus, accept=lambda login: True)
    try:
        with pytest.raises(RemoteError) as info:
            await client.call(queue, b"x", timeout=5)
        assert info.value.error_type == "ValueError"
        assert "4111" not in str(info.value) and "secret" not in str(info.value)
        # the server keeps serving after a failure
        with pytest.raises(RemoteError):
            await client.call(queue, b"y", timeout=5)
    finally:
        await client.close()
        await server.stop()
        await bus.close()


async def test_missing_queue_is_peer_unavailable_fast(broker_vhost) -> None:
    bus = await connect(broker_vhost.url, name="t")
    client = await RpcClient.create(bus, accept=lambda login: True)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(PeerUnavailable):
            await client.call(qname("absent"), b"x", timeout=5)
        assert loop.time() - started < 2
        # the client still works afterwards (the return did not break its channel)
        with pytest.raises(PeerUnavailable):
            await client.call(qname("absent"), b"x", timeout=5)
    finally:
        await client.close()
        await bus.close()


async def test_queue_without_consumer_is_peer_unavailable(broker_vhost) -> None:
    bus = await connect(broker_vhost.url, name="t")

    async def handler(request: RpcRequest) -> bytes:
        return b""

    queue = qname("gone")
    server = await serve_rpc(bus, queue, handler)
    await server.stop()  # queue stays, nobody consumes
    client = await RpcClient.create(bus, accept=lambda login: True)
    try:
        with pytest.raises(PeerUnavailable):
            await client.call(queue, b"x", timeout=0.5)
    finally:
        await client.close()
        await bus.close()


async def test_slow_handler_is_rpc_timeout_and_late_reply_is_ignored(broker_vhost) -> None:
    bus = await connect(broker_vhost.url, name="t")
    release = asyncio.Event()

    async def handler(request: RpcRequest) -> bytes:
        if request.body == b"slow":
            await release.wait()
        return request.body

    queue = qname("slow")
    server = await serve_rpc(bus, queue, handler)
    client = await RpcClient.create(bus, accept=lambda login: True)
    try:
        with pytest.raises(RpcTimeout):
            await client.call(queue, b"slow", timeout=0.3)
        release.set()
        assert await client.call(queue, b"fast", timeout=5) == b"fast"
    finally:
        await client.close()
        await server.stop()
        await bus.close()


async def test_competing_servers_share_work_and_stop_finishes_in_flight(broker_vhost) -> None:
    bus_a = await connect(broker_vhost.url, name="a")
    bus_b = await connect(broker_vhost.url, name="b")
    served: dict[str, int] = {"a": 0, "b": 0}
    gate = asyncio.Event()

    def make(tag: str):
        async def handler(request: RpcRequest) -> bytes:
            served[tag] += 1
            await gate.wait()
            return tag.encode()

        return handler

    queue = qname("work")
    server_a = await serve_rpc(bus_a, queue, make("a"), prefetch=4)
    server_b = await serve_rpc(bus_b, queue, make("b"), prefetch=4)
    client = await RpcClient.create(bus_a, accept=lambda login: True)
    try:
        calls = [asyncio.create_task(client.call(queue, b"x", timeout=10)) for _ in range(8)]
        while served["a"] + served["b"] < 8:
            await asyncio.sleep(0.01)
        assert served["a"] == 4 and served["b"] == 4  # prefetch 4 each: both got work
        stopping = asyncio.create_task(server_a.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # waits for its in-flight requests
        gate.set()
        await stopping
        replies = await asyncio.gather(*calls)
        assert sorted(replies) == [b"a"] * 4 + [b"b"] * 4
    finally:
        await client.close()
        await server_b.stop()
        await bus_a.close()
        await bus_b.close()
