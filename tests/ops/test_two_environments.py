"""Environments side by side on one RabbitMQ: beside each other with their own vhost and user
prefix they both work; two on one vhost are refused, because they would consume each other's
messages.

Rule 1: the first environment is brought up once for the module by `setpay demo` and stays up;
the second runs its whole demo while the first is up; the third (the first's vhost) must
refuse at once, touching neither the broker nor the first environment.
Rule 2: every environment is removed (processes, users, vhost) even when a check fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.environments import Env, new_env, remove_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLES = ("keystore.main", "ca.main", "gateway.pg1", "issuer.host1", "merchant.pos1", "wallet.main")


def _all_rows_as_expected(out: str) -> None:
    match = re.search(r"(\d+) of (\d+) rows as expected", out)
    assert match, out
    assert match.group(1) == match.group(2) and int(match.group(2)) >= 10, out


def _states(env: Env) -> dict[str, str]:
    try:
        return dict(json.loads((env.run_dir / "supervisor.health").read_text())["children"])
    except (OSError, ValueError, KeyError):
        return {}


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """An environment brought up by its demo (all rows as expected), left running."""
    env = new_env(tmp_path_factory.mktemp("ops-first"), "first")
    try:
        done = env.setpay("demo", timeout=900)
        _all_rows_as_expected(done.stdout + done.stderr)
        yield env
    finally:
        remove_env(env)


def test_a_second_environment_runs_its_demo_beside_the_first(
    first: Env, tmp_path: Path
) -> None:
    """The README's advice (own vhost, user prefix, issuer port, data dir) is enough: the
    second's demo shows every row as expected while the first is up, and the first's still
    does afterwards."""
    second = new_env(tmp_path / "var", "second")
    try:
        done = second.setpay("demo", timeout=900)
        assert "no broker password stored" not in done.stderr
        _all_rows_as_expected(done.stdout + done.stderr)
        # Both up at the same time, each with its own processes.
        assert {r: "ready" for r in ROLES} == _states(first) == _states(second)
        assert set(first.processes()).isdisjoint(second.processes())
        again = first.setpay("demo", timeout=900)
        assert "using the environment" in again.stdout
        _all_rows_as_expected(again.stdout + again.stderr)
    finally:
        remove_env(second)


def test_an_environment_on_a_taken_vhost_refuses_to_start(first: Env, tmp_path: Path) -> None:
    """Same vhost as the first (own data dir, prefix and port): `setpay up` and `setpay demo`
    refuse with a message naming the vhost and the lock; nothing of theirs keeps running and
    the first environment is untouched."""
    third = new_env(tmp_path / "var", "third", SETPAY_BROKER_VHOST=first.vhost)
    before = sorted(first.processes())
    try:
        for command in (("up", "--timeout", "120"), ("demo",)):
            done = third.setpay(*command, timeout=600)
            assert done.returncode == 2, done.stdout + done.stderr
            assert f"another environment is running on vhost {first.vhost!r}" in done.stderr
            assert "setpay.environment.lock" in done.stderr
            # the refused supervisor may still be exiting when the command returns
            wait_for(lambda: third.processes() == [], 60, "the refused environment's processes")
            assert list(third.run_dir.glob("*.pid")) == []
        assert not (third.data_dir / "broker" / "credentials.json").exists()  # no broker init
        assert sorted(first.processes()) == before
        assert _states(first) == {r: "ready" for r in ROLES}
    finally:
        remove_env(third, vhost=False)
