"""Weeks past provisioning the gateway still authorizes: revocation data was refreshed in time.

A BCI lives 7 days (actors/ca/hierarchy.py ``CRL_LIFETIME``). Here a CA actor and a gateway
actor run (real RabbitMQ in their own vhost, every key in SoftHSM2 behind its own keystore
workers, a live issuer host) on one injected clock, the parties' ``clock``; the test's merchant
and cardholder messages are dated by it too. The clock is moved weeks ahead while they run:
- the CA actor renews the brand's BCI (past half its life) and pushes it; the gateway takes it
  and authorizes (without the push it would refuse: its BCI has expired);
- with the CA's push stopped, the gateway's own schedule pulls a BCI past three quarters of its
  window from the CA (Me-AqCInit over its own reply queue) and keeps authorizing; a gateway
  holding none (restarted after its registration BCI expired) pulls one at its next round.
Which clock: an injected one (``protocol.ids.Clock``) in every party, not libfaketime: see the
README (libfaketime under SoftHSM2 and the broker is not needed for this property).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from actors.trust import RevocationCache, window_of
from protocol import ids
from protocol.messages import AuthCode
from setpay.config import Settings
from tests.gateway import conftest
from tests.gateway.conftest import BRAND, GatewayEnv
from tests.gateway.isolated import isolated_gateway

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
WAIT_SECONDS = 30.0  # the CA polls every 2 s; a renewal signs 6 CRLs and a BCI in the HSM


class MovedClock:
    """The wall clock plus an offset the test moves: one clock for every party here."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return ids.SystemClock().now_ms() + self.offset_ms


@dataclass
class Moved:
    env: GatewayEnv
    clock: MovedClock


@pytest.fixture(scope="module")
async def moved(
    keystore_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Moved]:
    clock = MovedClock()
    async with isolated_gateway(keystore_settings, tmp_path_factory, tag="weeks",
                                clock=clock) as env:  # fmt: skip
        yield Moved(env, clock)


@pytest.fixture
def dated(moved: Moved, monkeypatch: pytest.MonkeyPatch) -> Moved:
    """The test's merchant and cardholder (tests/gateway/conftest.py) date by the moved clock."""
    shim = SimpleNamespace(**{n: getattr(ids, n) for n in dir(ids) if not n.startswith("__")})
    shim.SystemClock = lambda: moved.clock
    monkeypatch.setattr(conftest, "ids", shim)
    return moved


async def _approved(env: GatewayEnv) -> None:
    p = await env.purchase("ok", 1_500)
    res, _ = await env.authorize(p)
    assert res.payload.auth_code is AuthCode.APPROVED


def _held_window(env: GatewayEnv) -> tuple[int, int]:
    service = env.actor.service
    assert service is not None
    held = service.trust.held(BRAND)
    assert held is not None
    return window_of(held.bci)


async def _current_at(env: GatewayEnv, now_ms: int) -> float:
    """Seconds until the gateway holds a BCI in date at ``now_ms``."""
    start = time.monotonic()
    while True:
        start_ms, end_ms = _held_window(env)
        if start_ms <= now_ms <= end_ms:
            return time.monotonic() - start
        assert time.monotonic() - start < WAIT_SECONDS, "no BCI in date reached the gateway"
        await asyncio.sleep(0.1)


async def test_weeks_ahead_the_push_keeps_the_gateway_authorizing(dated: Moved) -> None:
    env, clock = dated.env, dated.clock
    await _approved(env)
    first = _held_window(env)
    for weeks in (3, 6, 9):
        clock.offset_ms = weeks * 7 * DAY_MS
        assert clock.now_ms() > first[1]  # what the gateway held at provisioning has expired
        took = await _current_at(env, clock.now_ms())
        print(f"{weeks} weeks ahead: a BCI in date held after {took:.1f} s")
        await _approved(env)


async def test_without_the_push_the_gateway_pulls_before_expiry(dated: Moved) -> None:
    env, clock = dated.env, dated.clock
    ca_actor = env.ca.actor
    assert ca_actor.publisher is not None and env.actor.feed is not None
    await ca_actor.publisher.stop()  # the CA's push is down (as if missed)
    try:
        start_ms, end_ms = _held_window(env)
        # Past three quarters of the window: due for the gateway's schedule, still in date.
        clock.offset_ms += (start_ms + (end_ms - start_ms) * 8 // 10) - clock.now_ms()
        assert env.actor.feed.due(env.actor.service.trust, BRAND, clock.now_ms())
        assert await env.actor.feed.refresh_due() == 1  # the scheduled round, run now
        new_start, new_end = _held_window(env)
        assert new_end > end_ms and new_start <= clock.now_ms() <= new_end
        clock.offset_ms += (end_ms - clock.now_ms()) + DAY_MS  # past the old BCI's end
        await _approved(env)
    finally:
        ca_actor.publisher.start()


async def test_a_gateway_holding_no_bci_pulls_one_at_its_next_round(
    dated: Moved, tmp_path: Path
) -> None:
    """A gateway restarted long after its registration (whose BCI is out of date) holds none:
    the round its feed runs at start pulls one (actors/trust.py Rule 6)."""
    env = dated.env
    service, feed = env.actor.service, env.actor.feed
    assert service is not None and feed is not None
    publisher = env.ca.actor.publisher
    assert publisher is not None
    await publisher.stop()  # only the gateway's own round may bring it
    cache = RevocationCache(tmp_path / "trust.sqlite", env.ca.root)
    saved, service.trust = service.trust, cache
    try:
        assert feed.due(cache, BRAND, dated.clock.now_ms())
        assert await feed.refresh_due() == 1
        start_ms, end_ms = _held_window(env)
        assert start_ms <= dated.clock.now_ms() <= end_ms
        await _approved(env)
    finally:
        service.trust = saved
        cache.close()
        publisher.start()
