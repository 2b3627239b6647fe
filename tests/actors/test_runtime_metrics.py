"""The runtime's metrics on the real broker (actors/runtime.py Rule 5): an actor's /metrics
counts its messages by type and outcome, times them, counts confirms and dead letters;
/readyz follows its consumers."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.runtime_echo import EchoActor
from broker.topology import SET_EXCHANGE
from tests.actors.test_runtime import _get, requester

pytestmark = pytest.mark.integration


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def status(port: int, path: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status


async def test_messages_by_type_and_outcome_confirms_and_dead_letters(broker_vhost) -> None:
    actor = EchoActor("echo", uuid.uuid4().hex[:8], broker_vhost.url)
    actor.metrics_port = 0
    await actor.start()
    port = actor.metrics.port
    bus, reply_key, replies = await requester(broker_vhost.url)
    try:
        assert await status(port, "/healthz") == 200 and await status(port, "/readyz") == 200
        before = await scrape(port)
        target = f"echo.{actor.instance}"
        for msg_type in ("Echo", "Echo", "Echo", "Fail", "Nobody"):
            await bus.publish(target, bus.message(b"x", msg_type=msg_type, reply_to=reply_key),
                              exchange=SET_EXCHANGE)
        for _ in range(4):  # three echoes and one SET Error; the unknown type is dead-lettered
            await asyncio.wait_for(_get(replies), 10)
        for _ in range(100):
            after = await scrape(port)
            dead = ("setpay_dead_lettered_total", (("code", "unknown-type"),
                                                   ("queue", f"set.{target}")))
            if after.get(dead, 0.0) > before.get(dead, 0.0):
                break
            await asyncio.sleep(0.05)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("setpay_messages_total", type="Echo", outcome="ok") == 3
        assert delta("setpay_messages_total", type="Fail", outcome="error") == 1
        assert delta("setpay_messages_total", type="other", outcome="rejected") == 1
        assert delta("setpay_handler_seconds_count", type="Echo") == 3
        assert delta("setpay_dead_lettered_total", queue=f"set.{target}", code="unknown-type") == 1
        # the replies (4), the dead letter (1) and the tester's own publishes (5), one process
        assert delta("setpay_publishes_total", outcome="confirmed") == 10
        assert value(after, "setpay_ready") == 1
        await actor.drain()
        assert await status(port, "/readyz") == 503
        assert await status(port, "/healthz") == 200
    finally:
        await bus.close()
        await actor.stop()
