"""setpay/lifecycle.py: what a service opens is closed last-first at stop, also after a failed
start, and a service never started closes what it opened without a lifecycle log line."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from setpay.lifecycle import Service, State


class Opening(Service):
    def __init__(self, fail: bool = False) -> None:
        super().__init__("test.main")
        self.closed: list[str] = []
        self.fail = fail

    async def on_start(self) -> None:
        for name in ("store", "bus", "api"):
            self.closing(lambda n=name: self.closed.append(n), name)
        if self.fail:
            raise RuntimeError("cannot start")


async def test_stop_closes_last_opened_first() -> None:
    service = Opening()
    await service.start()
    assert service.state is State.READY and service.health()["ready"]
    await service.stop()
    assert service.closed == ["api", "bus", "store"] and service.state is State.STOPPED


async def test_a_failed_start_closes_what_it_opened() -> None:
    service = Opening(fail=True)
    with pytest.raises(RuntimeError):
        await service.start()
    assert service.closed == ["api", "bus", "store"] and service.state is State.STOPPED


async def test_a_service_never_started_closes_quietly() -> None:
    service = Opening()
    service.closing(lambda: service.closed.append("one-off"), "one-off")
    with capture_logs() as logs:
        await service.stop()
    assert service.closed == ["one-off"] and service.state is State.STOPPED
    assert not [entry for entry in logs if entry["event"].startswith("service_")]


def test_run_loop_runs_on_the_configured_event_loop() -> None:
    import asyncio

    from setpay.lifecycle import run_loop

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run_loop(loop_module(), "asyncio").startswith("asyncio")
    try:
        import uvloop  # noqa: F401 - the `fast` extra
    except ImportError:
        assert run_loop(loop_module(), "auto").startswith("asyncio")
    else:
        assert run_loop(loop_module(), "auto").startswith("uvloop")
        assert run_loop(loop_module(), "uvloop").startswith("uvloop")
