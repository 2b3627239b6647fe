"""`setpay down` stops an environment at any point of its start-up and loses no process.

Rule 1: one provisioned data dir and vhost (`keystore init`, `broker init`) serve every case;
each case starts `setpay up` (or `setpay demo`) in the background, runs `setpay down` at one
moment of its start-up, then checks through /proc that no process of the environment remains
(every pid ever recorded under run/, and every process carrying the data dir in its
environment) and that no pid file is left.
Rule 2: the roles are those that start without CA registration (keystore, wallet, merchant),
so the moments are real: supervisor recorded, keystore ready, some roles ready.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ops.environments import Env, alive, new_env, remove_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLES = "keystore,wallet,merchant"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A provisioned environment with nothing running; removed (processes, users, vhost)."""
    env = new_env(tmp_path_factory.mktemp("ops-down"), "down")
    try:
        for command in (("keystore", "init"), ("broker", "init")):
            done = env.setpay(*command)
            assert done.returncode == 0, done.stdout + done.stderr
        yield env
    finally:
        remove_env(env)


def _states(env: Env) -> dict[str, str]:
    try:
        return dict(json.loads((env.run_dir / "supervisor.health").read_text())["children"])
    except (OSError, ValueError, KeyError):
        return {}


def _down_at(env: Env, starter: subprocess.Popen[str], moment: Callable[[], bool],
             what: str, *, starter_fails: bool = True) -> dict[str, int]:  # fmt: skip
    """Wait for ``moment``, watching the pid files; run `setpay down`; return every pid seen.
    ``starter_fails``: the start-up cannot have finished, so the starter must fail."""
    seen: dict[str, int] = {}

    def reached() -> bool:
        seen.update(env.recorded_pids())
        if starter.poll() is not None:
            raise AssertionError(f"the starter ended before {what}: {starter.returncode}")
        return moment()

    try:
        wait_for(reached, 240, what)
        seen.update(env.recorded_pids())
        down = env.setpay("down", "--grace", "10", timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "nothing was running" not in down.stdout
        assert "supervisor: terminated" in down.stdout
        # The starter learns that its supervisor is gone and ends, instead of waiting on.
        code = starter.wait(timeout=60)
        assert code != 0 or not starter_fails
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
    return seen


def _assert_nothing_left(env: Env, seen: dict[str, int]) -> None:
    assert "supervisor" in seen
    still = {name: pid for name, pid in seen.items() if alive(pid)}
    assert still == {}, f"processes of the environment still running: {still}"
    assert env.processes() == []
    assert sorted(p.name for p in env.run_dir.glob("*.pid")) == []


@pytest.mark.parametrize("moment", ["supervisor recorded", "keystore ready", "roles ready"])
def test_down_during_setpay_up_leaves_no_process(env: Env, moment: str) -> None:
    """Down right after `setpay up` records its supervisor, once the keystore is ready, and
    once the keystore and a second role are ready while a third may still be starting."""
    checks: dict[str, Callable[[], bool]] = {
        "supervisor recorded": lambda: (env.run_dir / "supervisor.pid").exists(),
        "keystore ready": lambda: _states(env).get("keystore.main") == "ready",
        "roles ready": lambda: list(_states(env).values()).count("ready") >= 2,
    }
    starter = env.start("up", "--roles", ROLES, "--timeout", "240")
    # By the time two roles are ready the third may be too, and `up` may have succeeded.
    seen = _down_at(env, starter, checks[moment], moment, starter_fails=moment != "roles ready")
    if moment != "supervisor recorded":
        assert "keystore.main" in seen
    if moment == "roles ready":
        assert len(seen) >= 3  # supervisor and at least two children were running
    _assert_nothing_left(env, seen)


def test_down_during_the_demos_start_up_leaves_no_process(env: Env) -> None:
    """`setpay demo` brings its environment up through one supervisor: a down once the
    keystore serves stops it all, and the demo fails saying so."""
    starter = env.start("demo")
    seen = _down_at(env, starter, lambda: _states(env).get("keystore.main") == "ready",
                    "the demo's keystore")  # fmt: skip
    _assert_nothing_left(env, seen)
    out = Path(env.data_dir / "demo.out").read_text()
    assert "supervisor" in out or "keystore" in out
