"""setpay/metrics.py and lifecycle Rule 4: a process serves /healthz, /readyz and /metrics on
its own port from before ``on_start`` until it has stopped; its port is in its health file."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from setpay.lifecycle import Service
from setpay.metrics import METRIC_NAMES


class Slow(Service):
    def __init__(self, health_file) -> None:
        super().__init__("slow.main", health_file=health_file)
        self.go = asyncio.Event()

    async def on_start(self) -> None:
        await self.go.wait()


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


async def test_live_before_ready_then_ready_then_gone(tmp_path) -> None:
    service = Slow(tmp_path / "slow.health")
    service.metrics_port = 0  # ephemeral
    starting = asyncio.create_task(service.start())
    while service.metrics is None or service.metrics.port is None:
        await asyncio.sleep(0.01)
    port = service.metrics.port
    assert json.loads((tmp_path / "slow.health").read_text())["metrics_port"] == port
    assert (await get(port, "/healthz"))[0] == 200
    status, body = await get(port, "/readyz")
    assert status == 503 and json.loads(body)["state"] == "starting"
    service.go.set()
    await starting
    status, body = await get(port, "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    status, text = await get(port, "/metrics")
    assert status == 200
    assert 'setpay_process_info{identity="slow.main"} 1.0' in text
    assert "setpay_ready 1.0" in text
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    await service.drain()
    assert (await get(port, "/readyz"))[0] == 503  # draining: not ready, still live
    assert (await get(port, "/healthz"))[0] == 200
    await service.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(port, "/healthz")


async def test_no_port_no_server(tmp_path) -> None:
    for port in (None, -1):
        service = Slow(tmp_path / "x.health")
        service.metrics_port = port
        service.go.set()
        await service.start()
        assert service.metrics is None and service.health()["metrics_port"] is None
        await service.stop()
