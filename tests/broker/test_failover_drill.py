"""The failover drill on a three-node RabbitMQ cluster of the tests' own: RPC callers connected
to a node that is killed (SIGKILL) in the middle of their calls. Every retriable call is
answered (resent by the caller when its reply died with the node); a call that is not
retriable fails, if at all, with a broker error, never an aio-pika one (broker/rpc.py Rule 5).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from broker.connection import connect
from broker.errors import BrokerError
from broker.rpc import RpcClient, RpcRequest, serve_rpc
from broker.topology import type_arguments
from tests.fixtures_rabbit_node import Node, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[Node]]:
    nodes = start_cluster(3)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def url_of(first: int, *others: int) -> str:
    failover = ",".join(f"127.0.0.1:{p}" for p in others)
    return f"amqp://guest:guest@127.0.0.1:{first}/?failover={failover}&heartbeat=5"


async def test_rpc_callers_on_a_killed_node_get_answers_or_broker_errors(
    cluster: list[Node],
) -> None:
    doomed, survivor, third = cluster
    server_bus = await connect(url_of(survivor.port, third.port), name="t-server")
    client_bus = await connect(url_of(doomed.port, survivor.port, third.port), name="t-client")
    served = 0

    async def handler(request: RpcRequest) -> bytes:
        nonlocal served
        served += 1
        await asyncio.sleep(0.01)  # a keystore signature takes a moment
        return b"signed:" + request.body

    queue = "rpc.drill"
    server = await serve_rpc(server_bus, queue, handler,
                             arguments=type_arguments("quorum", dead_letters=False))  # fmt: skip
    client = await RpcClient.create(client_bus, accept=lambda login: True)
    answered = 0
    unretriable_errors: list[BaseException] = []
    half = asyncio.Event()
    stop = asyncio.Event()

    async def caller(n: int, retriable: bool) -> None:
        nonlocal answered
        i = 0
        while not stop.is_set():
            body = f"{n}.{i}".encode()
            i += 1
            try:
                reply = await client.call(queue, body, timeout=60, retriable=retriable)
            except Exception as exc:
                if retriable:
                    raise  # fails the test: a retriable call must be answered
                unretriable_errors.append(exc)
                await asyncio.sleep(0.05)  # a caller backs off before it asks again
                continue
            assert reply == b"signed:" + body
            answered += 1
            if answered == 200:
                half.set()

    callers = [asyncio.create_task(caller(n, retriable=n % 4 != 0)) for n in range(8)]
    try:
        await asyncio.wait_for(half.wait(), 60)
        doomed.kill()  # the client's node dies with requests and replies in flight
        killed_at = answered
        async with asyncio.timeout(120):
            while answered < killed_at + 200:  # served again, through a live node
                await asyncio.sleep(0.1)
                for task in callers:
                    if task.done():
                        task.result()  # a retriable caller's failure fails the test here
        stop.set()
        await asyncio.wait_for(asyncio.gather(*callers), 120)
        assert client_bus.connection.url.port != doomed.port  # type: ignore[attr-defined]
        # the calls that were not retriable failed, if at all, as broker errors
        assert all(isinstance(e, BrokerError) for e in unretriable_errors), {
            type(e).__name__ for e in unretriable_errors
        }
        assert served >= answered
    finally:
        stop.set()
        for task in callers:
            task.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        async with asyncio.timeout(60):
            await client.close()
            await server.stop()
            await client_bus.close()
            await server_bus.close()
